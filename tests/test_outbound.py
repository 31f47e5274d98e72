"""Outbound delivery against the WhatsApp simulator on 127.0.0.1, through the real HTTP stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from madoguchi.models import Job, Message, Template
from tests.helpers import (
    PHONE_NUMBER_ID,
    WABA_ID,
    post_webhook,
    run_worker_until,
    text_payload,
    wait_for,
)

CUSTOMER = "819012345678"


@pytest.fixture
def conversation(sim, worker, users):
    """A customer wrote through the simulator (so its window is open there too); Aiko owns it."""
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "こんにちは、注文について質問があります")
    worker.run_until_idle()
    conversation = Conversation.objects.get(identity__handle=CUSTOMER)
    return check_claim(users["aiko"], conversation)


def message_status(message_id: int) -> str:
    return Message.objects.get(pk=message_id).status


def test_a_reply_is_sent_once_and_its_ticks_arrive(api_as, sim, worker, conversation):
    sent = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages",
        {"text": "お問い合わせありがとうございます"},
        202,
    )
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    bodies = [s.body for s in sim.sent_to(CUSTOMER)]
    assert len(bodies) == 1
    assert bodies[0]["type"] == "text"
    assert bodies[0]["text"]["body"] == "お問い合わせありがとうございます"
    message = Message.objects.get(pk=sent["id"])
    assert message.platform_message_id == sim.sent_to(CUSTOMER)[0].wamid


def test_queueing_a_reply_reads_its_audience_once(users, conversation, events, monkeypatch):
    """The message's event and the conversation's go to the same audience, read once."""
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.rules import access

    read = []
    recipients_for = access.recipients_for
    monkeypatch.setattr(access, "recipients_for", lambda c: read.append(c.pk) or recipients_for(c))
    check_send_text(users["aiko"], conversation, "on its way")
    assert read == [conversation.pk]
    [(_message, to_message)] = events.of_type("message")
    [(_conversation, to_conversation)] = events.of_type("conversation")
    assert to_message == to_conversation == recipients_for(conversation)


def test_a_reply_with_context_quotes_the_customer_message(api_as, sim, worker, conversation):
    inbound = Message.objects.get(direction="in")
    sent = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages",
        {"text": "Sure", "reply_to": inbound.pk},
        202,
    )
    run_worker_until(worker, lambda: message_status(sent["id"]) in ("sent", "delivered", "read"))
    body = sim.sent_to(CUSTOMER)[0].body
    assert body["context"] == {"message_id": inbound.platform_message_id}


def test_a_late_delivered_never_overwrites_read(api_as, server, sim, worker, conversation):
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    wamid = Message.objects.get(pk=sent["id"]).platform_message_id
    from tests.helpers import status_payload

    post_webhook(server, sim.channel, status_payload(wamid, "delivered", recipient=CUSTOMER))
    post_webhook(server, sim.channel, status_payload(wamid, "sent", recipient=CUSTOMER))
    worker.run_until_idle()
    assert message_status(sent["id"]) == "read"


def test_a_platform_window_refusal_shows_as_failed_with_the_reason(
    api_as, server, sim, worker, users
):
    """Our record says the window is open (the customer wrote through a webhook the simulator
    never saw), the platform disagrees: it accepts, then reports 131047 asynchronously."""
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    post_webhook(server, sim.channel, text_payload("4915112345678", "Lena", "Hallo"))
    worker.run_until_idle()
    conversation = check_claim(users["aiko"], Conversation.objects.get())
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) == "failed")
    message = api_as("aiko").get(f"/conversations/{conversation.pk}/messages")["items"][-1]
    assert message["error"]["code"] == 131047
    assert "24 hours" in message["error"]["reason"]


def test_a_synchronous_window_refusal_fails_the_message_without_retrying(
    api_as, server, sim, worker, users
):
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    sim.simulator.sync_window_errors = True
    post_webhook(server, sim.channel, text_payload("4915112345678", "Lena", "Hallo"))
    worker.run_until_idle()
    conversation = check_claim(users["aiko"], Conversation.objects.get())
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) == "failed")
    assert Message.objects.get(pk=sent["id"]).error_code == 131047
    assert not Job.objects.filter(kind="send_message").exists()


@pytest.mark.parametrize(
    "faults",
    [
        [("http", 429)],
        [("http", 500), ("http", 503)],
        [("graph", 130429)],
        [("graph", 131000), ("graph", 131016)],
    ],
    ids=["http-429", "http-5xx", "throughput-130429", "transient-codes"],
)
def test_transient_platform_errors_are_retried_then_delivered(
    api_as, sim, worker, conversation, faults
):
    sim.simulator.inject_faults(PHONE_NUMBER_ID, faults)
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    assert len(sim.sent_to(CUSTOMER)) == 1


def test_a_timeout_is_retried_then_delivered(api_as, sim, worker, conversation, settings):
    # The platform may have accepted a request whose answer timed out (WhatsApp has no
    # idempotency key), so a timeout can cost a duplicate; it must never cost the message.
    settings.HTTP_TIMEOUT_SECONDS = 0.3
    settings.SEND_RECONCILE_SECONDS = 0  # no receipt names the dropped request: retry at once
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("timeout", 1.0)])
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) in ("delivered", "read"))
    assert 1 <= len(sim.sent_to(CUSTOMER)) <= 2


@pytest.mark.parametrize("code", [131026, 131050, 190, 0])
def test_permanent_platform_errors_fail_the_message_with_the_reason(
    api_as, sim, worker, conversation, code
):
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("graph", code)])
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, 202)
    run_worker_until(worker, lambda: message_status(sent["id"]) == "failed")
    message = Message.objects.get(pk=sent["id"])
    assert message.error_code == code
    assert message.data["error_reason"]
    assert sim.sent_to(CUSTOMER) == []


def test_the_pair_limit_delays_only_that_recipient(api_as, server, sim, worker, users):
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    sim.simulator.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number="15550783881",
        access_token="test-access-token",
        app_secret="test-app-secret-0123456789",
        webhook_url=f"{server.url}{sim.channel.webhook_path}",
        pair_burst=1,
        pair_interval=1.5,  # the second send always comes sooner than this
    )
    sim.customer_sends("34600111222", "Lucía", "Hola")
    sim.customer_sends("5511988887777", "João", "Olá")
    worker.run_until_idle()
    lucia = check_claim(users["aiko"], Conversation.objects.get(identity__handle="34600111222"))
    joao = check_claim(users["aiko"], Conversation.objects.get(identity__handle="5511988887777"))
    first = api_as("aiko").post(f"/conversations/{lucia.pk}/messages", {"text": "uno"}, 202)
    second = api_as("aiko").post(f"/conversations/{lucia.pk}/messages", {"text": "dos"}, 202)
    other = api_as("aiko").post(f"/conversations/{joao.pk}/messages", {"text": "oi"}, 202)
    run_worker_until(
        worker,
        lambda: all(message_status(m["id"]) == "read" for m in (first, second, other)),
        timeout=30,
    )
    texts = [s.body["text"]["body"] for s in sim.sent_to("34600111222")]
    assert texts == ["uno", "dos"]  # in order, each once
    assert [s.body["text"]["body"] for s in sim.sent_to("5511988887777")] == ["oi"]
    errors = sim.simulator.stats()["errors_by_code"]
    assert errors.get(131056, errors.get("131056", 0)) >= 1


def kill_a_worker_holding_the_send(lease_seconds: int) -> Job:
    """Start a worker process that claims the queued send and pauses before sending it, SIGKILL
    it, and return the job as that worker left it."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MADOGUCHI_FAULT_PAUSE_AFTER_CLAIM": "60",
        "MADOGUCHI_JOB_LEASE_SECONDS": str(lease_seconds),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "madoguchi.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: Job.objects.filter(kind="send_message").exclude(claimed_by="").exists(),
            timeout=30,
        )
        claim = Job.objects.get(kind="send_message")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    return claim


def test_a_worker_killed_between_claiming_and_sending_sends_once_after_restart(
    api_as, sim, worker, conversation
):
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "once"}, 202)
    kill_a_worker_holding_the_send(lease_seconds=1)
    assert message_status(sent["id"]) == "queued"
    time.sleep(1.1)  # let the dead worker's lease run out
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    worker.run_until_idle()
    assert [s.body["text"]["body"] for s in sim.sent_to(CUSTOMER)] == ["once"]


def test_a_killed_workers_claims_go_to_another_worker_without_waiting_for_the_lease(
    api_as, sim, worker, conversation
):
    sent = api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": "now"}, 202)
    claim = kill_a_worker_holding_the_send(lease_seconds=600)
    assert claim.lease_until > timezone.now() + timedelta(minutes=9)  # held for ten minutes
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    assert [s.body["text"]["body"] for s in sim.sent_to(CUSTOMER)] == ["now"]


def database_url() -> str:
    """The test database as a DATABASE_URL, for worker subprocesses."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(settings['NAME']).resolve()}"
    return (
        f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}"
    )


def test_templates_are_synced_from_every_page(api_as, sim, worker, users):
    for i in range(120):
        sim.simulator.add_template(
            WABA_ID,
            f"bulk_{i:03d}",
            "en_US",
            "UTILITY",
            [{"type": "BODY", "text": "Hello {{1}}", "example": {"body_text": [["A"]]}}],
        )
    api_as("sora").post(f"/channels/{sim.channel.pk}/templates/sync", status=202)
    worker.run_until_idle()
    expected = len(sim.simulator.templates(WABA_ID))
    assert expected > 120
    assert Template.objects.filter(channel=sim.channel).count() == expected


@pytest.fixture
def synced(api_as, sim, worker):
    api_as("sora").post(f"/channels/{sim.channel.pk}/templates/sync", status=202)
    worker.run_until_idle()
    assert Template.objects.filter(name="order_update").exists()


def test_a_template_is_sent_with_its_parameters(api_as, sim, worker, conversation, synced):
    sent = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages",
        {
            "template": {
                "name": "order_update",
                "language": "en_US",
                "parameters": ["Yuki", "#48213"],
            }
        },
        202,
    )
    assert sent["kind"] == "template"
    assert "Yuki" in sent["text"] and "#48213" in sent["text"]
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    body = sim.sent_to(CUSTOMER)[0].body
    assert body["type"] == "template"
    assert body["template"]["name"] == "order_update"
    params = body["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == ["Yuki", "#48213"]


@pytest.mark.parametrize(
    "template,field",
    [
        ({"name": "order_update", "language": "en_US", "parameters": ["only one"]}, "body.2"),
        ({"name": "order_update", "language": "en_US", "parameters": ["a", "b", "c"]}, "body"),
        ({"name": "order_update", "language": "en_US", "parameters": ["a\nb", "c"]}, "body.1"),
        ({"name": "no_such_template", "language": "en_US", "parameters": []}, "name"),
    ],
)
def test_template_parameter_errors_are_refused_before_sending(
    api_as, sim, worker, conversation, synced, template, field
):
    error = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages", {"template": template}, 422
    )["error"]
    assert error["code"] == "template_invalid"
    assert any(p["field"].startswith(field) for p in error["problems"]), error
    assert not Job.objects.filter(kind="send_message").exists()


def test_a_paused_template_cannot_be_sent(api_as, sim, worker, conversation, synced):
    sim.simulator.set_template_status(WABA_ID, "order_update", "en_US", "PAUSED")
    worker.run_until_idle()
    assert Template.objects.get(name="order_update", language="en_US").status == "PAUSED"
    error = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages",
        {"template": {"name": "order_update", "language": "en_US", "parameters": ["a", "b"]}},
        422,
    )["error"]
    assert error["code"] == "template_invalid"


def test_a_business_initiated_conversation_starts_with_a_template(api_as, sim, worker, synced):
    started = api_as("ben").post(
        "/conversations",
        {
            "channel": sim.channel.pk,
            "to": "+44 7911 123456",
            "template": {"name": "order_update", "language": "en_US", "parameters": ["Sam", "#1"]},
        },
        202,
    )
    assert started["conversation"]["assignee"]["username"] == "ben"
    assert started["conversation"]["contact"]["handle"] == "447911123456"
    run_worker_until(worker, lambda: message_status(started["message"]["id"]) == "read")
    assert sim.sent_to("447911123456")[0].body["type"] == "template"


def test_inbound_media_is_fetched_with_the_token_into_storage(sim, worker, settings):
    from madoguchi.simulators.whatsapp import tiny_png

    data = tiny_png()
    media_id = sim.simulator.customer_uploads(PHONE_NUMBER_ID, data, "image/png")
    sim.customer_sends(
        CUSTOMER, "Yuki", {"type": "image", "image": {"id": media_id, "caption": "壊れていました"}}
    )
    run_worker_until(worker, lambda: Message.objects.filter(media_state="stored").exists())
    message = Message.objects.get()
    assert message.kind == "image"
    assert message.text == "壊れていました"
    assert (Path(settings.MEDIA_ROOT) / message.media_path).read_bytes() == data


def test_inbound_media_never_follows_a_url_from_the_payload(sim, worker, server):
    """A payload may carry a media ``url``; only the configured API host is ever asked."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    hits = []

    class Trap(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    trap = HTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    try:
        from madoguchi.simulators.whatsapp import tiny_png

        media_id = sim.simulator.customer_uploads(PHONE_NUMBER_ID, tiny_png(), "image/png")
        trap_url = f"http://127.0.0.1:{trap.server_address[1]}/steal"
        sim.customer_sends(
            CUSTOMER, "Eve", {"type": "image", "image": {"id": media_id, "url": trap_url}}
        )
        run_worker_until(worker, lambda: Message.objects.filter(media_state="stored").exists())
    finally:
        trap.shutdown()
    assert hits == []


def test_an_attachment_is_uploaded_then_sent_by_id(api_as, sim, worker, conversation):
    from madoguchi.simulators.whatsapp import tiny_png

    response = api_as("aiko").client.post(
        f"/api/v1/conversations/{conversation.pk}/attachments",
        files={"file": ("photo.png", tiny_png(), "image/png")},
        data={"caption": "こちらです"},
    )
    assert response.status_code == 202, response.text
    sent = response.json()
    run_worker_until(worker, lambda: message_status(sent["id"]) == "read")
    body = sim.sent_to(CUSTOMER)[0].body
    assert body["type"] == "image"
    assert body["image"]["id"]
    assert body["image"]["caption"] == "こちらです"


def test_opening_a_conversation_sends_a_read_receipt(api_as, sim, worker, conversation):
    api_as("aiko").post(f"/conversations/{conversation.pk}/seen")
    worker.run_until_idle()
    inbound = Message.objects.get(direction="in")
    assert [read[1] for read in sim.simulator.reads] == [inbound.platform_message_id]


def test_sends_are_paced_to_the_numbers_throughput_cap(api_as, server, sim, worker, conversation):
    """With the channel capped at the number's rate, the platform never answers 130429."""
    sim.simulator.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number="15550783881",
        access_token="test-access-token",
        app_secret="test-app-secret-0123456789",
        webhook_url=f"{server.url}{sim.channel.webhook_path}",
        mps=5,
    )
    sim.channel.outbound_mps = 5
    sim.channel.save(update_fields=["outbound_mps"])
    sent = [
        api_as("aiko").post(f"/conversations/{conversation.pk}/messages", {"text": f"#{i}"}, 202)
        for i in range(15)
    ]
    run_worker_until(
        worker,
        lambda: Message.objects.filter(pk__in=[m["id"] for m in sent], status="read").count() == 15,
        timeout=30,
    )
    assert [s.body["text"]["body"] for s in sim.sent_to(CUSTOMER)] == [f"#{i}" for i in range(15)]
    errors = sim.simulator.stats()["errors_by_code"]
    assert not errors.get(130429) and not errors.get("130429")
