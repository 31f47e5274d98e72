"""Viber through the real HTTP stack (uvicorn), the worker and the Viber simulator: the probe,
signatures, every callback, sends and their receipts, mapped errors, the subscribers-only rule,
inbound media and outbound media by a signed public URL."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

import httpx
import pytest

from madoguchi.models import Contact, ContactIdentity, Conversation, Job, Message, RawEvent
from madoguchi.providers.registry import provider_for
from madoguchi.simulators.common import tiny_png
from tests.channels_helpers import (
    VIBER_BOT_ID,
    VIBER_TOKEN,
    VIBER_WELCOME,
    fixture_bytes,
    fixture_json,
    media_file,
    post_viber,
    viber_signature,
)
from tests.helpers import run_worker_until

USER = "3SQNc4FPUQmysaM/AQEhXg=="


def status_of(message_id: int) -> str:
    return Message.objects.get(pk=message_id).status


def identity(handle: str = USER) -> ContactIdentity:
    return ContactIdentity.objects.get(handle=handle)


@pytest.fixture
def conversation(viber_sim, worker, users) -> Conversation:
    """A subscribed Viber user wrote (through the simulator); Aiko owns the conversation."""
    from madoguchi.actions.conversations import check_claim

    viber_sim.user(USER, name="Olena Kovalenko", language="uk")
    viber_sim.user_sends(USER, "Добрий день! Чи є доставка до Львова?")
    worker.run_until_idle()
    return check_claim(users["aiko"], Conversation.objects.get(identity__handle=USER))


def send_text(api_as, conversation: Conversation, text: str = "Так, доставляємо.", status=202):
    return api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": text}, status)


# -- the probe and signatures ---------------------------------------------------------------


def test_set_webhook_is_probed_through_the_live_server_and_registered(server, viber_sim, worker):
    url = f"{server.url}{viber_sim.channel.webhook_path}"
    viber_sim.simulator.add_account(VIBER_TOKEN, account_id=VIBER_BOT_ID)  # no webhook yet
    provider_for(viber_sim.channel).register_webhook(url)
    assert viber_sim.simulator.webhook_of(VIBER_TOKEN) == url
    probe = RawEvent.objects.get()  # the signed {"event": "webhook"} was answered 200
    worker.run_until_idle()
    probe.refresh_from_db()
    assert probe.processed_at is not None and probe.error == ""
    assert Message.objects.count() == 0 and Contact.objects.count() == 0


def test_set_webhook_fails_when_the_probe_is_refused(server, viber_sim):
    from madoguchi.providers.base import SendError

    viber_sim.simulator.add_account(VIBER_TOKEN, account_id=VIBER_BOT_ID)
    wrong = f"{server.url}/webhooks/viber/999999"  # answers 404
    with pytest.raises(SendError) as refused:
        provider_for(viber_sim.channel).register_webhook(wrong)
    assert refused.value.error.code == 1 and refused.value.permanent
    assert viber_sim.simulator.webhook_of(VIBER_TOKEN) == ""


def test_there_is_no_get_handshake(server, viber_channel):
    response = httpx.get(f"{server.url}{viber_channel.webhook_path}")
    assert response.status_code == 405


@pytest.mark.parametrize(
    "signature",
    ["", "0" * 64, "sha256=" + viber_signature(fixture_bytes("viber", "message_text")), "junk"],
    ids=["missing", "zeros", "meta-prefix", "junk"],
)
def test_a_forged_signature_is_refused_and_nothing_stored(server, viber_channel, signature):
    response = post_viber(
        server, viber_channel, fixture_bytes("viber", "message_text"), signature=signature
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert RawEvent.objects.count() == 0


def test_a_body_signed_with_another_token_is_refused(server, viber_channel):
    body = fixture_bytes("viber", "message_text")
    response = post_viber(
        server, viber_channel, body, signature=viber_signature(body, "another-bot-token")
    )
    assert response.status_code == 401
    assert RawEvent.objects.count() == 0


def test_the_signature_covers_the_exact_bytes(server, viber_channel, worker):
    # Viber signs the bytes it sends: the same JSON with other whitespace is another body.
    pretty = fixture_bytes("viber", "message_text_japanese")
    assert post_viber(server, viber_channel, pretty).status_code == 200
    compact = fixture_json("viber", "message_text_japanese")
    forged = post_viber(server, viber_channel, compact, signature=viber_signature(pretty))
    assert forged.status_code == 401


# -- every callback ---------------------------------------------------------------------------

KINDS = {
    "message_text": "text",
    "message_text_japanese": "text",
    "message_doc_example": "text",
    "message_extra_fields": "text",
    "message_keyboard_reply": "text",
    "message_silent": "text",
    "message_url": "text",
    "message_picture": "image",
    "message_video": "video",
    "message_file": "document",
    "message_sticker": "sticker",
    "message_contact": "contacts",
    "message_location": "location",
    "message_location_address": "location",
    "message_rich_media": "unsupported",
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_message_type_is_stored_and_subscribes_its_sender(
    server, viber_channel, worker, name
):
    payload = fixture_json("viber", name)
    assert post_viber(server, viber_channel, fixture_bytes("viber", name)).status_code == 200
    worker.run_until_idle()
    message = Message.objects.get()
    assert message.kind == KINDS[name]
    assert message.direction == "in"
    assert message.text.strip()
    assert message.platform_message_id == str(payload["message_token"])
    assert message.data["viber_type"] == payload["message"]["type"]
    if payload["message"].get("media") and KINDS[name] in ("image", "video", "document"):
        assert message.data["media_url"] == payload["message"]["media"]
    sender = identity(payload["sender"]["id"])
    assert sender.subscribed is True  # a user's message subscribes them (B6)
    assert sender.last_inbound_at == message.platform_timestamp
    assert sender.contact.name == payload["sender"]["name"]
    assert RawEvent.objects.get().error == ""


def test_a_duplicate_callback_stores_one_message(server, viber_sim, worker):
    viber_sim.user(USER)
    token = viber_sim.user_sends(USER, "once")
    viber_sim.user_sends(USER, "once", message_token=token)  # Viber's redelivery
    assert post_viber(server, viber_sim.channel, fixture_bytes("viber", "message_text")).is_success
    assert post_viber(server, viber_sim.channel, fixture_bytes("viber", "message_text")).is_success
    worker.run_until_idle()
    assert Message.objects.filter(platform_message_id=str(token)).count() == 1
    assert Message.objects.count() == 2
    assert RawEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_subscribed_and_unsubscribed_change_the_contact_in_platform_order(
    server, viber_sim, worker
):
    viber_sim.user(USER, name="Marek")
    viber_sim.simulator.subscribe(VIBER_TOKEN, USER)
    worker.run_until_idle()
    assert identity().subscribed is True
    assert identity().contact.name == "Marek"
    viber_sim.simulator.unsubscribe(VIBER_TOKEN, USER)
    worker.run_until_idle()
    assert identity().subscribed is False
    # A message written before the unsubscription, delivered late, does not resubscribe.
    late = fixture_json("viber", "message_text")
    late["sender"]["id"] = USER
    late["timestamp"] = int((time.time() - 3600) * 1000)
    assert post_viber(server, viber_sim.channel, late).status_code == 200
    worker.run_until_idle()
    assert Message.objects.filter(direction="in").count() == 1
    assert identity().subscribed is False


def test_conversation_started_is_answered_with_the_welcome_message(viber_sim, worker):
    viber_sim.user(USER, name="Ayşe Yılmaz", language="tr")
    started = viber_sim.simulator.open_conversation(VIBER_TOKEN, USER, context="ad-campaign-7")
    assert started.problem == ""
    assert started.welcome["type"] == "text"
    assert started.welcome["text"] == VIBER_WELCOME
    assert started.welcome["sender"]["name"] == "Madoguchi Shop"
    assert "receiver" not in started.welcome
    worker.run_until_idle()
    # The user is known, but has not subscribed: nothing may be sent yet, no conversation.
    assert identity().subscribed is None
    assert identity().contact.name == "Ayşe Yılmaz"
    assert Conversation.objects.count() == 0
    assert Message.objects.count() == 0


def test_a_first_message_after_opening_the_chat_subscribes_the_same_contact(viber_sim, worker):
    viber_sim.user(USER, name="Nguyễn Văn An", language="vi")
    viber_sim.simulator.open_conversation(VIBER_TOKEN, USER)
    viber_sim.user_sends(USER, "Xin chào")
    worker.run_until_idle()
    assert Contact.objects.count() == 1
    assert identity().subscribed is True
    conversation = Conversation.objects.get()
    assert conversation.contact.name == "Nguyễn Văn An"
    assert conversation.last_message_preview == "Xin chào"


def test_other_callbacks_get_an_empty_answer(server, viber_channel):
    for name in ("subscribed", "unsubscribed", "delivered", "seen", "message_text"):
        response = post_viber(server, viber_channel, fixture_bytes("viber", name))
        assert response.status_code == 200
        assert response.content == b""


def test_without_a_welcome_text_conversation_started_gets_no_welcome(viber_sim, worker):
    viber_sim.channel.options = {"sender_name": "Madoguchi Shop"}
    viber_sim.channel.save(update_fields=["options"])
    viber_sim.user(USER)
    started = viber_sim.simulator.open_conversation(VIBER_TOKEN, USER)
    assert started.welcome is None and started.problem == ""


# -- sending ----------------------------------------------------------------------------------


def test_a_reply_is_sent_once_and_its_receipts_arrive(api_as, viber_sim, worker, conversation):
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    bodies = [s.body for s in viber_sim.sent_to(USER)]
    assert len(bodies) == 1
    assert bodies[0]["type"] == "text"
    assert bodies[0]["text"] == "Так, доставляємо."
    assert bodies[0]["sender"]["name"] == "Madoguchi Shop"
    message = Message.objects.get(pk=sent["id"])
    assert message.platform_message_id == str(viber_sim.sent_to(USER)[0].message_token)


def test_a_seen_then_a_late_delivered_keeps_read(api_as, viber_sim, worker, conversation):
    viber_sim.simulator.auto_receipts = False
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "sent")
    token = viber_sim.sent_to(USER)[0].message_token
    viber_sim.simulator.emit_receipt(VIBER_TOKEN, token, "seen")
    viber_sim.simulator.emit_receipt(VIBER_TOKEN, token, "delivered")
    viber_sim.simulator.emit_receipt(VIBER_TOKEN, token, "delivered")  # a second device
    worker.run_until_idle()
    assert status_of(sent["id"]) == "read"


def test_a_failed_callback_fails_the_message_with_its_description(
    api_as, viber_sim, worker, conversation
):
    viber_sim.user(USER, fail_delivery="User's device is unreachable")
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "failed")
    item = api_as("aiko").get(f"/conversations/{conversation.pk}/messages")["items"][-1]
    assert "User's device is unreachable" in item["error"]["reason"]


def failed_message(api_as, worker, conversation, sent) -> dict[str, Any]:
    run_worker_until(worker, lambda: status_of(sent["id"]) == "failed")
    items = api_as("aiko").get(f"/conversations/{conversation.pk}/messages")["items"]
    return next(item for item in items if item["id"] == sent["id"])


def test_status_5_a_user_no_longer_on_viber_fails_the_message(
    api_as, viber_sim, worker, conversation
):
    viber_sim.user(USER, registered=False)  # deleted their Viber account since
    sent = send_text(api_as, conversation)
    item = failed_message(api_as, worker, conversation, sent)
    assert item["error"]["code"] == 5
    assert "not registered on Viber" in item["error"]["reason"]
    assert viber_sim.sent_to(USER) == []
    assert not Job.objects.filter(kind="send_message").exists()  # not retried


def test_status_6_from_the_platform_fails_the_message(api_as, viber_sim, worker, conversation):
    # Our record says subscribed (the unsubscribed callback was lost); Viber disagrees.
    viber_sim.simulator.inject_faults(VIBER_TOKEN, [("status", 6, "receiverNotSubscribed")])
    sent = send_text(api_as, conversation)
    item = failed_message(api_as, worker, conversation, sent)
    assert item["error"]["code"] == 6
    assert "not subscribed" in item["error"]["reason"]


def test_status_12_is_retried_then_delivered(api_as, viber_sim, worker, conversation):
    viber_sim.simulator.inject_faults(VIBER_TOKEN, [("status", 12, "Too many requests")])
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    assert len(viber_sim.sent_to(USER)) == 1


def test_status_12_past_the_unanswered_cap_fails_after_the_last_attempt(
    api_as, viber_sim, worker, conversation, settings
):
    settings.MADOGUCHI_SEND_MAX_ATTEMPTS = 2
    viber_sim.simulator.unanswered_cap = 1  # the simulator's own B5 rule, with a cap of 1
    first = send_text(api_as, conversation, "one")
    second = send_text(api_as, conversation, "two")
    run_worker_until(worker, lambda: status_of(first["id"]) == "read")
    item = failed_message(api_as, worker, conversation, second)
    assert item["error"]["code"] == 12
    assert "without a reply" in item["error"]["reason"]
    assert [s.body["text"] for s in viber_sim.sent_to(USER)] == ["one"]


def test_an_unsubscribed_user_is_refused_before_sending(api_as, viber_sim, worker, conversation):
    viber_sim.simulator.unsubscribe(VIBER_TOKEN, USER)
    worker.run_until_idle()
    refused = send_text(api_as, conversation, status=422)
    assert refused["error"]["code"] == "not_subscribed"
    assert Message.objects.filter(direction="out").count() == 0
    window = api_as("aiko").get(f"/conversations/{conversation.pk}")["window"]
    assert window["open"] is False
    # Subscribing again opens it.
    viber_sim.simulator.subscribe(VIBER_TOKEN, USER)
    worker.run_until_idle()
    sent = send_text(api_as, conversation)
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")


# -- media ------------------------------------------------------------------------------------


def test_inbound_media_is_fetched_from_the_simulated_url(viber_sim, worker):
    png = tiny_png()
    url = viber_sim.simulator.user_uploads(png, "image/png", "photo.png")
    viber_sim.user(USER)
    viber_sim.user_sends(USER, {"type": "picture", "media": url, "text": "this one"})
    run_worker_until(worker, lambda: Message.objects.get().media_state == "stored")
    message = Message.objects.get()
    assert message.kind == "image"
    assert message.text == "this one"
    assert media_file(message.media_path) == png


def test_an_outbound_picture_is_fetched_by_viber_from_a_signed_public_url(
    api_as, server, viber_sim, worker, conversation, send_attachment, settings
):
    settings.PUBLIC_URL = server.url
    png = tiny_png()
    sent = send_attachment(
        "aiko", conversation.pk, png, filename="catalogue.png", mime_type="image/png"
    )
    run_worker_until(worker, lambda: status_of(sent["id"]) == "read")
    body = viber_sim.sent_to(USER)[0].body
    assert body["type"] == "picture"
    assert body["media"].startswith(f"{server.url}/public/media/")
    assert viber_sim.simulator.fetched_media(body["media"]) == png
    message = Message.objects.get(pk=sent["id"])
    assert message.media_path not in body["media"]  # the storage path stays private


def test_an_outbound_file_that_viber_cannot_fetch_fails(
    api_as, viber_sim, worker, conversation, send_attachment, settings
):
    settings.PUBLIC_URL = "http://127.0.0.1:9"  # nothing listens there
    sent = send_attachment(
        "aiko",
        conversation.pk,
        b"%PDF-1.4 tiny",
        filename="invoice.pdf",
        mime_type="application/pdf",
    )
    item = failed_message(api_as, worker, conversation, sent)
    assert "download" in item["error"]["reason"].lower()


def public_url_of(server, message_id: int) -> str:
    from madoguchi.media_links import public_media_url

    return public_media_url(Message.objects.get(pk=message_id))


def test_the_public_media_url_serves_only_outbound_files_with_a_valid_token(
    api_as, server, viber_sim, worker, conversation, send_attachment, settings
):
    settings.PUBLIC_URL = server.url
    png = tiny_png()
    sent = send_attachment("aiko", conversation.pk, png, filename="a.png", mime_type="image/png")
    url = public_url_of(server, sent["id"])
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == png
    assert response.headers["x-content-type-options"] == "nosniff"

    token = url.rsplit("/", 2)[-2]
    tampered = url.replace(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert httpx.get(tampered).status_code == 404
    other_id = url.replace(token, token.replace(f"{sent['id']}:", "1:", 1))
    assert httpx.get(other_id).status_code == 404
    assert httpx.get(url.rsplit("/", 1)[0] + "/other.png").status_code == 404

    with mock.patch("time.time", return_value=time.time() - 8 * 24 * 3600):
        expired = public_url_of(server, sent["id"])
    assert httpx.get(expired).status_code == 404


def test_inbound_files_are_never_served_publicly(server, viber_sim, worker, settings):
    from madoguchi.media_links import public_media_url

    settings.PUBLIC_URL = server.url
    url = viber_sim.simulator.user_uploads(tiny_png(), "image/png", "photo.png")
    viber_sim.user(USER)
    viber_sim.user_sends(USER, {"type": "picture", "media": url, "text": ""})
    run_worker_until(worker, lambda: Message.objects.get().media_state == "stored")
    inbound = Message.objects.get()
    assert httpx.get(public_media_url(inbound)).status_code == 404


def test_opening_the_conversation_calls_nothing_on_viber(api_as, viber_sim, worker, conversation):
    requests_before = len(viber_sim.simulator.requests)
    seen = api_as("aiko").post(f"/conversations/{conversation.pk}/seen")
    assert seen["unread_count"] == 0
    worker.run_until_idle()
    assert len(viber_sim.simulator.requests) == requests_before  # Viber has no read receipts
    assert not Job.objects.exists()


def test_a_receipt_for_a_message_never_stored_here_ends_processed(server, viber_channel, worker):
    """Viber's receipts of the welcome message (sent in a callback answer, never stored) name a
    token we do not know: retried for a while, then the body is done, not left pending."""
    assert post_viber(server, viber_channel, fixture_bytes("viber", "delivered")).is_success
    raw = RawEvent.objects.get()
    for _attempt in range(40):
        worker.process_raw_events(worker.claim_raw_events())
        raw.refresh_from_db()
        if raw.processed_at is not None:
            break
        assert raw.attempts < 20  # the worker's last claim: it must be done by then
        RawEvent.objects.filter(pk=raw.pk).update(lease_until=None)
    assert raw.processed_at is not None
    assert Message.objects.count() == 0
