"""Messenger through the real HTTP stack (uvicorn), the worker and the Messenger simulator: the
handshake, signatures, every page event, echoes, watermarks, sends, mapped errors, the 24-hour
window and the HUMAN_AGENT tag, and media both ways."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from madoguchi.models import ContactIdentity, Conversation, Job, Message, RawEvent
from madoguchi.simulators.common import tiny_png
from tests.channels_helpers import (
    APP_ID,
    PAGE_ID,
    PAGE_VERIFY_TOKEN,
    fixture_bytes,
    fixture_json,
    media_file,
    meta_signature,
    post_messenger,
)
from tests.helpers import run_worker_until, wait_for

PSID = "7302184659238471"
HOUR = 3600


def status_of(message_id: int) -> str:
    return Message.objects.get(pk=message_id).status


def claimed(users: dict[str, Any], psid: str = PSID) -> Conversation:
    from madoguchi.actions.conversations import check_claim

    return check_claim(users["aiko"], Conversation.objects.get(identity__handle=psid))


@pytest.fixture
def conversation(messenger_sim, worker, users) -> Conversation:
    """A person wrote to the page just now (through the simulator); Aiko owns the conversation."""
    messenger_sim.customer_sends(PSID, "Bonjour, ma commande n'est pas arrivée.", name="Chloé")
    worker.run_until_idle()
    return claimed(users)


def send_text(
    api_as, conversation: Conversation, text: str = "Je regarde tout de suite.", status=202
):
    return api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": text}, status)


def failed_item(api_as, worker, conversation, sent) -> dict[str, Any]:
    run_worker_until(worker, lambda: status_of(sent["id"]) == "failed")
    items = api_as("aiko").get(f"/conversations/{conversation.pk}/messages")["items"]
    return next(item for item in items if item["id"] == sent["id"])


# -- handshake and signatures -----------------------------------------------------------------


def test_the_get_handshake_answers_the_challenge(server, messenger_sim):
    assert messenger_sim.simulator.verify_subscription(PAGE_ID, PAGE_VERIFY_TOKEN)
    url = f"{server.url}{messenger_sim.channel.webhook_path}"
    params = {"hub.mode": "subscribe", "hub.verify_token": PAGE_VERIFY_TOKEN, "hub.challenge": "9"}
    response = httpx.get(url, params=params)
    assert response.status_code == 200 and response.text == "9"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": PAGE_VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_a_handshake_with_a_wrong_token_or_mode_is_refused(server, messenger_channel, params):
    response = httpx.get(f"{server.url}{messenger_channel.webhook_path}", params=params)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "signature",
    ["", "sha256=" + "0" * 64, "sha1=abc", meta_signature(b"{}"), "junk"],
    ids=["missing", "zeros", "sha1", "other-body", "junk"],
)
def test_a_forged_signature_is_refused_and_nothing_stored(server, messenger_channel, signature):
    body = fixture_bytes("messenger", "text")
    response = post_messenger(server, messenger_channel, body, signature=signature)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert RawEvent.objects.count() == 0


def test_a_body_signed_with_another_app_secret_is_refused(server, messenger_channel):
    body = fixture_bytes("messenger", "text")
    forged = meta_signature(body, "another-app-secret")
    assert post_messenger(server, messenger_channel, body, signature=forged).status_code == 401
    assert RawEvent.objects.count() == 0


def test_a_whatsapp_body_is_refused_on_a_messenger_channel(server, messenger_channel):
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert post_messenger(server, messenger_channel, body).status_code == 400
    assert RawEvent.objects.count() == 0


# -- every page event -------------------------------------------------------------------------

KINDS = {
    "text": ["text"],
    "text_full_fields": ["text"],
    "non_ascii": ["text"],
    "reply_to": ["text"],
    "fallback_link": ["text"],
    "image": ["image"],
    "two_images": ["image", "image"],
    "audio": ["audio"],
    "video": ["video"],
    "file": ["document"],
    "sticker": ["sticker"],
    "location": ["location"],
    "postback": ["button"],
    "postback_with_mid": ["button"],
    "reaction": ["reaction"],
    "reaction_removed": ["reaction"],
    "unknown_attachment": ["unsupported"],
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_message_event_is_stored(server, messenger_channel, worker, name):
    assert post_messenger(server, messenger_channel, fixture_bytes("messenger", name)).is_success
    worker.run_until_idle()
    messages = list(Message.objects.order_by("id"))
    assert [m.kind for m in messages] == KINDS[name]
    for message in messages:
        assert message.direction == "in"
        assert message.text.strip()
        assert message.conversation.identity.handle == "5127349273929834"
    sender = ContactIdentity.objects.get()
    assert sender.last_inbound_at == max(m.platform_timestamp for m in messages)
    assert RawEvent.objects.get().error == ""


def test_attachment_urls_are_kept_for_fetching(server, messenger_channel, worker):
    payload = fixture_json("messenger", "image")
    url = payload["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"]
    post_messenger(server, messenger_channel, fixture_bytes("messenger", "image"))
    worker.run_until_idle()
    message = Message.objects.get()
    assert message.data["media_url"] == url
    # Not Meta's CDN nor the channel's API host: refused, never fetched.
    assert message.media_state == "failed"


def test_a_postback_from_the_simulator_is_a_button_message(messenger_sim, worker):
    messenger_sim.simulator.customer_postback(PAGE_ID, PSID, "Talk to an agent", "AGENT")
    worker.run_until_idle()
    message = Message.objects.get()
    assert message.kind == "button"
    assert "Talk to an agent" in message.text
    assert message.data["payload"] == "AGENT"


def test_a_duplicate_delivery_stores_one_message(server, messenger_sim, worker):
    mid = messenger_sim.customer_sends(PSID, "once")
    messenger_sim.customer_sends(PSID, "once", mid=mid)  # Meta's redelivery
    for _ in range(3):
        assert post_messenger(server, messenger_sim.channel, fixture_bytes("messenger", "text"))
    worker.run_until_idle()
    assert Message.objects.filter(platform_message_id=mid).count() == 1
    assert Message.objects.count() == 2
    assert RawEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_echoes_of_other_apps_are_stored_as_outbound(messenger_sim, worker, conversation):
    mid = messenger_sim.simulator.page_inbox_reply(PAGE_ID, PSID, "Mika here, from the shop.")
    worker.run_until_idle()
    echo = Message.objects.get(platform_message_id=mid)
    assert echo.direction == "out"
    assert echo.status == "sent"
    assert echo.author is None
    assert echo.text == "Mika here, from the shop."
    assert echo.conversation_id == conversation.pk
    conversation.refresh_from_db()
    assert conversation.last_message_preview == "Mika here, from the shop."


def test_an_echo_of_another_apps_image_is_stored_and_its_media_kept(
    server, messenger_channel, worker
):
    post_messenger(server, messenger_channel, fixture_bytes("messenger", "echo_other_app_image"))
    post_messenger(server, messenger_channel, fixture_bytes("messenger", "echo_page_inbox"))
    worker.run_until_idle()
    kinds = sorted(Message.objects.values_list("kind", "direction"))
    assert kinds == [("image", "out"), ("text", "out")]
    assert Message.objects.get(kind="image").data["media_url"].startswith("https://")


def test_our_own_echoes_are_dropped(api_as, server, messenger_sim, worker, conversation):
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    wait_for(lambda: any(b"is_echo" in a.body for a in messenger_sim.simulator.webhook_log))
    worker.run_until_idle()
    assert Message.objects.filter(direction="out").count() == 1
    # The same once more, as a stored payload: still nothing new.
    assert post_messenger(server, messenger_sim.channel, own_echo()).is_success
    worker.run_until_idle()
    assert Message.objects.filter(direction="out").count() == 1


def test_an_echo_that_may_be_of_a_send_in_flight_waits_for_its_answer(
    api_as, server, messenger_sim, worker, conversation
):
    """Without our app id (it could not be learned at set-up) our own echoes are kept, and one
    can arrive before the send's answer is recorded: it waits, then is a duplicate."""
    from madoguchi.actions.outbound import do_record_sent
    from madoguchi.providers.base import SentMessage

    channel = messenger_sim.channel
    channel.options = {}
    channel.save(update_fields=["options"])
    sent = send_text(api_as, conversation)  # queued; its job does not run in this test
    echo = own_echo()
    event = echo["entry"][0]["messaging"][0]
    event["recipient"]["id"] = PSID
    event["message"]["mid"] = "m_inflight1"
    assert post_messenger(server, channel, echo).is_success
    worker.process_raw_events(worker.claim_raw_events())
    raw = RawEvent.objects.latest("id")
    assert raw.processed_at is None and "echoes" in raw.error
    assert not Message.objects.filter(platform_message_id="m_inflight1").exists()

    do_record_sent(sent["id"], SentMessage(platform_message_id="m_inflight1"))
    RawEvent.objects.filter(pk=raw.pk).update(lease_until=None)
    worker.process_raw_events(worker.claim_raw_events())
    raw.refresh_from_db()
    assert raw.processed_at is not None
    assert Message.objects.filter(direction="out").count() == 1
    assert Message.objects.get(platform_message_id="m_inflight1").pk == sent["id"]


def test_an_old_echo_is_stored_even_while_a_send_waits(
    api_as, server, messenger_sim, worker, conversation
):
    from datetime import timedelta

    from django.utils import timezone

    send_text(api_as, conversation)  # queued, never sent in this test
    assert post_messenger(server, messenger_sim.channel, page_inbox_echo()).is_success
    RawEvent.objects.update(received_at=timezone.now() - timedelta(hours=1))
    worker.process_raw_events(worker.claim_raw_events())
    assert Message.objects.get(platform_message_id="m_inboxReply1").author is None


def page_inbox_echo() -> dict[str, Any]:
    payload = fixture_json("messenger", "echo_page_inbox")
    payload["entry"][0]["messaging"][0]["recipient"]["id"] = PSID
    return payload


def own_echo() -> dict[str, Any]:
    payload = fixture_json("messenger", "echo_own_app")
    payload["entry"][0]["messaging"][0]["message"]["app_id"] = APP_ID
    return payload


# -- sending, receipts and watermarks ---------------------------------------------------------


def test_a_reply_is_sent_as_a_response_and_its_receipts_arrive(
    api_as, messenger_sim, worker, conversation
):
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    bodies = [s.body for s in messenger_sim.sent_to(PSID)]
    assert len(bodies) == 1
    assert bodies[0]["messaging_type"] == "RESPONSE"
    assert "tag" not in bodies[0]
    assert bodies[0]["message"] == {"text": "Je regarde tout de suite."}
    message = Message.objects.get(pk=sent["id"])
    assert message.platform_message_id == messenger_sim.sent_to(PSID)[0].message_id


def test_watermarks_apply_to_every_earlier_message(api_as, messenger_sim, worker, conversation):
    messenger_sim.simulator.receipt_delays = (0.01, 600.0, 600.0)  # no receipts of its own
    first = send_text(api_as, conversation, "un")
    second = send_text(api_as, conversation, "deux")
    run_worker_until(worker, lambda: status_of(second["id"]) == "sent")
    watermark = int(time.time() * 1000) + 1
    time.sleep(0.01)
    third = send_text(api_as, conversation, "trois")  # after the watermark
    run_worker_until(worker, lambda: status_of(third["id"]) == "sent")
    delivery = fixture_json("messenger", "delivery_watermark_only")
    event = delivery["entry"][0]["messaging"][0]
    event["sender"]["id"] = PSID
    event["delivery"]["watermark"] = watermark
    messenger_sim.simulator.deliver_raw(PAGE_ID, delivery)
    worker.run_until_idle()
    assert [status_of(m["id"]) for m in (first, second, third)] == ["delivered"] * 2 + ["sent"]
    messenger_sim.simulator.customer_reads(PAGE_ID, PSID)  # a read watermark of now
    worker.run_until_idle()
    assert [status_of(m["id"]) for m in (first, second, third)] == ["read"] * 3


def test_a_watermark_for_another_person_changes_nothing(
    api_as, messenger_sim, worker, conversation
):
    messenger_sim.simulator.receipt_delays = (0.01, 600.0, 600.0)
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "sent")
    messenger_sim.simulator.customer_reads(PAGE_ID, "9990001112223334")
    worker.run_until_idle()
    assert status_of(sent["id"]) == "sent"


# -- mapped errors ----------------------------------------------------------------------------


def test_the_platforms_window_refusal_fails_the_message(
    api_as, messenger_sim, worker, conversation
):
    messenger_sim.simulator.inject_faults(PAGE_ID, [("graph", 10, 2018278)])
    item = failed_item(api_as, worker, conversation, send_text(api_as, conversation))
    assert item["error"]["code"] == 10
    assert "24 hours" in item["error"]["reason"]
    assert not Job.objects.filter(kind="send_message").exists()


def test_551_a_person_who_is_unavailable_fails_the_message(
    api_as, messenger_sim, worker, conversation
):
    messenger_sim.simulator.add_user(PAGE_ID, PSID, available=False)  # blocked the page since
    item = failed_item(api_as, worker, conversation, send_text(api_as, conversation))
    assert item["error"]["code"] == 551
    assert item["error"]["reason"]
    assert messenger_sim.sent_to(PSID) == []


def test_613_the_rate_limit_is_retried_and_recorded_when_attempts_run_out(
    api_as, messenger_sim, worker, conversation, settings
):
    settings.MADOGUCHI_SEND_MAX_ATTEMPTS = 1
    messenger_sim.simulator.inject_faults(PAGE_ID, [("graph", 613)])
    item = failed_item(api_as, worker, conversation, send_text(api_as, conversation))
    assert item["error"]["code"] == 613
    assert item["error"]["reason"]


def test_613_is_transient(api_as, messenger_sim, worker, conversation):
    from madoguchi.models import Throttle

    messenger_sim.simulator.inject_faults(PAGE_ID, [("graph", 613)])
    sent = send_text(api_as, conversation)
    worker.run_until_idle()
    job = Job.objects.get(kind="send_message")
    assert "613" in job.last_error
    assert status_of(sent["id"]) == "queued"
    # The whole page waits (scope "number"); once it may send again, the message goes out.
    Throttle.objects.all().update(next_free=0)
    Job.objects.update(run_at=job.created_at)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")


def test_190_a_revoked_page_token_fails_the_message(api_as, messenger_sim, worker, conversation):
    channel = messenger_sim.channel
    channel.secrets = {**channel.secrets, "page_access_token": "EAAGrevoked"}
    channel.save(update_fields=["secrets"])
    item = failed_item(api_as, worker, conversation, send_text(api_as, conversation))
    assert item["error"]["code"] == 190
    assert item["error"]["reason"]


# -- the 24-hour window and HUMAN_AGENT -------------------------------------------------------


def wrote_ago(messenger_sim, worker, users, hours: float) -> Conversation:
    messenger_sim.customer_sends(PSID, "Hello?", timestamp=time.time() - hours * HOUR)
    worker.run_until_idle()
    return claimed(users)


def test_outside_24_hours_a_reply_is_refused_before_sending(api_as, messenger_sim, worker, users):
    conversation = wrote_ago(messenger_sim, worker, users, 25)
    refused = send_text(api_as, conversation, status=422)
    assert refused["error"]["code"] == "window_closed"
    assert Message.objects.filter(direction="out").count() == 0
    assert api_as("aiko").get(f"/conversations/{conversation.pk}")["window"]["open"] is False


def test_with_human_agent_a_reply_within_7_days_carries_the_tag(
    api_as, messenger_sim, worker, users
):
    channel = messenger_sim.channel
    channel.options = {**channel.options, "human_agent_tag": True}
    channel.save(update_fields=["options"])
    conversation = wrote_ago(messenger_sim, worker, users, 3 * 24)
    assert api_as("aiko").get(f"/conversations/{conversation.pk}")["window"]["open"] is True
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    body = messenger_sim.sent_to(PSID)[0].body
    assert body["messaging_type"] == "MESSAGE_TAG"
    assert body["tag"] == "HUMAN_AGENT"


def test_with_human_agent_a_reply_within_24_hours_is_a_plain_response(
    api_as, messenger_sim, worker, users
):
    channel = messenger_sim.channel
    channel.options = {**channel.options, "human_agent_tag": True}
    channel.save(update_fields=["options"])
    conversation = wrote_ago(messenger_sim, worker, users, 2)
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    assert messenger_sim.sent_to(PSID)[0].body["messaging_type"] == "RESPONSE"


def test_with_human_agent_a_reply_after_7_days_is_refused(api_as, messenger_sim, worker, users):
    channel = messenger_sim.channel
    channel.options = {**channel.options, "human_agent_tag": True}
    channel.save(update_fields=["options"])
    conversation = wrote_ago(messenger_sim, worker, users, 7 * 24 + 1)
    refused = send_text(api_as, conversation, status=422)
    assert refused["error"]["code"] == "window_closed"
    assert messenger_sim.sent_to(PSID) == []


# -- media ------------------------------------------------------------------------------------


def test_inbound_media_is_fetched_from_the_simulated_cdn(messenger_sim, worker):
    png = tiny_png()
    url = messenger_sim.simulator.customer_uploads(png, "image/png", "photo.png")
    messenger_sim.customer_sends(
        PSID, {"attachments": [{"type": "image", "payload": {"url": url}}]}
    )
    run_worker_until(worker, lambda: Message.objects.get().media_state == "stored")
    message = Message.objects.get()
    assert message.kind == "image"
    assert media_file(message.media_path) == png


def test_an_outbound_file_is_uploaded_with_the_send(
    api_as, messenger_sim, worker, conversation, send_attachment
):
    png = tiny_png()
    sent = send_attachment("aiko", conversation.pk, png, filename="a.png", mime_type="image/png")
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    record = messenger_sim.sent_to(PSID)[0]
    assert record.upload == ("image/png", len(png))
    assert record.body["message"]["attachment"]["type"] == "image"


# -- read receipts from the business ----------------------------------------------------------


def test_opening_the_conversation_marks_the_thread_seen(
    api_as, messenger_sim, worker, conversation
):
    api_as("aiko").post(f"/conversations/{conversation.pk}/seen")
    worker.run_until_idle()
    actions = [(psid, action) for _page, psid, action, _t in messenger_sim.simulator.sender_actions]
    assert actions == [(PSID, "mark_seen")]
    assert not Job.objects.exists()
