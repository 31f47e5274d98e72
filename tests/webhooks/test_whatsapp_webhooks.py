"""WhatsApp webhooks through the real HTTP stack (uvicorn) and the worker."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from madoguchi.models import Conversation, Message, RawEvent
from tests.helpers import (
    SHARED,
    VERIFY_TOKEN,
    compact,
    load_fixture,
    post_webhook,
    sign,
)

OFFICIAL = json.loads((SHARED / "whatsapp" / "webhook_examples.json").read_text())


def handshake(server: Any, channel: Any, **params: str) -> httpx.Response:
    return httpx.get(f"{server.url}{channel.webhook_path}", params=params, timeout=10)


def test_it_answers_the_handshake_with_the_challenge_verbatim(server, channel):
    response = handshake(
        server,
        channel,
        **{
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.text == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_it_refuses_a_handshake_with_a_wrong_token_or_mode(server, channel, params):
    assert handshake(server, channel, **params).status_code == 403


def test_it_stores_a_signed_message_before_answering_and_processes_it(server, channel, worker):
    response = post_webhook(server, channel, load_fixture("text.json"))
    assert response.status_code == 200
    assert RawEvent.objects.count() == 1  # stored before the 200
    worker.run_until_idle()
    message = Message.objects.get()
    assert message.direction == "in"
    assert message.kind == "text"
    assert message.text
    assert RawEvent.objects.get().processed_at is not None


@pytest.mark.parametrize("signature", ["", "sha256=" + "0" * 64, "sha1=abc", "garbage"])
def test_it_refuses_a_forged_or_missing_signature_and_stores_nothing(server, channel, signature):
    response = post_webhook(server, channel, load_fixture("text.json"), signature=signature)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert RawEvent.objects.count() == 0


def test_it_refuses_a_body_signed_with_another_secret(server, channel):
    response = post_webhook(server, channel, load_fixture("text.json"), secret="not-ours")
    assert response.status_code == 401
    assert RawEvent.objects.count() == 0


def test_it_checks_the_signature_over_the_raw_bytes_not_a_reserialization(server, channel):
    # The same JSON with other whitespace has another signature: verifying a re-serialized
    # body would wrongly accept or refuse it.
    payload = load_fixture("non_ascii.json")
    raw = json.dumps(payload, ensure_ascii=False, indent=1).encode()
    assert post_webhook(server, channel, None, raw=raw).status_code == 200
    forged = post_webhook(server, channel, None, raw=raw, signature=sign(compact(payload)))
    assert forged.status_code == 401


def test_it_stores_one_message_for_a_duplicate_delivery(server, channel, worker):
    payload = load_fixture("text.json")
    for _ in range(3):
        assert post_webhook(server, channel, payload).status_code == 200
    worker.run_until_idle()
    assert Message.objects.count() == 1
    assert RawEvent.objects.filter(processed_at__isnull=True).count() == 0


def test_it_refuses_an_oversized_body_with_413_and_stores_nothing(server, channel, settings):
    body = (
        b'{"object":"whatsapp_business_account","entry":[],"pad":"'
        + b"x" * (3 * 1024 * 1024)
        + b'"}'
    )
    response = post_webhook(server, channel, None, raw=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert RawEvent.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1,2,3]", b'{"object":"page","entry":[]}', b"", b'{"entry":"nope"}'],
)
def test_it_refuses_a_malformed_signed_body_with_400_and_stores_nothing(server, channel, raw):
    response = post_webhook(server, channel, None, raw=raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"]
    assert RawEvent.objects.count() == 0


def test_it_answers_404_for_an_unknown_channel(server, channel):
    response = httpx.post(f"{server.url}/webhooks/whatsapp/999999", content=b"{}", timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_it_accepts_and_renders_every_official_example(server, channel, worker, name):
    payload = OFFICIAL[name]
    assert post_webhook(server, channel, payload).status_code == 200
    worker.run_until_idle()
    raw = RawEvent.objects.get()
    assert raw.processed_at is not None and raw.error == ""
    expected = sum(
        len(change["value"].get("messages", []))
        for entry in payload["entry"]
        for change in entry["changes"]
    )
    messages = list(Message.objects.all())
    assert len(messages) == expected
    for message in messages:
        assert message.text.strip(), message.kind


def test_it_handles_every_entry_change_message_and_status_of_a_batch(server, channel, worker):
    payload = load_fixture("batch_two_entries.json")
    assert post_webhook(server, channel, payload).status_code == 200
    worker.run_until_idle()
    expected = sum(
        len(change["value"].get("messages", []))
        for entry in payload["entry"]
        for change in entry["changes"]
    )
    assert expected >= 2
    assert Message.objects.filter(direction="in").count() == expected


def test_a_reply_with_context_is_linked_to_the_quoted_message(server, channel, worker):
    original = load_fixture("text.json")
    reply = load_fixture("reply_with_context.json")
    quoted_id = reply["entry"][0]["changes"][0]["value"]["messages"][0]["context"]["id"]
    original["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = quoted_id
    post_webhook(server, channel, original)
    post_webhook(server, channel, reply)
    worker.run_until_idle()
    replying = Message.objects.exclude(platform_message_id=quoted_id).get()
    assert replying.reply_to is not None
    assert replying.reply_to.platform_message_id == quoted_id


def test_an_unknown_message_type_is_stored_as_unsupported(server, channel, worker):
    post_webhook(server, channel, load_fixture("unknown_type_poll.json"))
    worker.run_until_idle()
    message = Message.objects.get()
    assert message.kind == "unsupported"
    assert message.text


def test_a_new_contact_opens_an_unassigned_conversation(server, channel, worker, users):
    post_webhook(server, channel, load_fixture("text.json"))
    worker.run_until_idle()
    conversation = Conversation.objects.get()
    assert conversation.assignee is None
    assert conversation.unread_count == 1
