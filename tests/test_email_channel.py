"""Email as a channel of the inbox, end to end: a private Dovecot holds the mailbox, the worker's
receiver threads read it over IMAP, the worker turns the mail into conversations, agents answer
through the REST API and the worker sends through SMTP to an aiosmtpd sink
(shared/platforms/PROTOCOLS.md §D, EMAIL-TEST-SERVER.md)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from madoguchi.actions.channels import do_create_channel, do_set_channel_active
from madoguchi.actions.conversations import do_set_status
from madoguchi.models import AuditEvent, Channel, Conversation, Message, RawEvent, ReceiverLease
from madoguchi.providers import email_wire as wire
from madoguchi.providers.email_imap import ImapSettings, close, connect
from madoguchi.queries.threads import conversation_id_for_key, conversation_key
from madoguchi.receivers import Receivers
from tests import email_servers
from tests.email_servers import MAILBOX, Dovecot, customer_mail
from tests.email_servers import MAILBOX_PASSWORD as PASSWORD
from tests.helpers import run_worker_until, wait_for
from tests.test_outbound import database_url

FIXTURES = Path(__file__).parent / "fixtures" / "email"
GMAIL_ID = "<CAJx8pLm+V9r2Qk1Zb7tXyd3nW0fA1c4sEo=hG6uR5yTq@mail.gmail.com>"

# The mail servers, as tests/providers have them.
dovecot = email_servers.dovecot
smtp_sink = email_servers.smtp_sink


@pytest.fixture
def mailbox(server, dovecot, smtp_sink) -> Channel:
    """An email channel on the private Dovecot and the SMTP sink (saved without the platform
    check: the set-up check has its own tests)."""
    return do_create_channel(
        None,
        kind="email",
        name="Support mail",
        business_handle=MAILBOX,
        secrets={"imap_password": PASSWORD},
        options={
            "imap_host": "127.0.0.1",
            "imap_port": dovecot.port,
            "imap_username": MAILBOX,
            "imap_security": "none",
            # A safety net only: IDLE wakes the receiver as soon as mail arrives.
            "imap_idle_seconds": 5,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_sink.port,
            "smtp_security": "none",
            "from_name": "Example Support",
            "timeout": 5,
        },
    )


@pytest.fixture
def receiving() -> Iterator[Any]:
    """Start a Receivers supervisor (as a worker process runs one) in a thread."""
    started: list[tuple[Receivers, threading.Event]] = []

    def start(name: str = "test-receivers") -> Receivers:
        receivers = Receivers(name, lease_seconds=10, check_seconds=0.1)
        stop = threading.Event()
        receivers.start(stop)
        started.append((receivers, stop))
        return receivers

    yield start
    for receivers, stop in started:
        stop.set()
        assert receivers.thread is not None
        receivers.thread.join(timeout=30)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def deliver(dovecot: Dovecot, *mails: bytes) -> None:
    """Mail arriving in the mailbox (IMAP APPEND, which also wakes a client in IDLE)."""
    client = connect(
        ImapSettings(
            host="127.0.0.1",
            port=dovecot.port,
            username=MAILBOX,
            password=PASSWORD,
            security="none",
        )
    )
    try:
        for raw in mails:
            client.append("INBOX", raw)
    finally:
        close(client)


def answering(raw: bytes, ours: str, key: str) -> bytes:
    """A fixture mail turned into an answer to our mail ``ours``: the threading headers and the
    plus-address name our Message-ID and conversation key; a mail without In-Reply-To gets one
    (as a client adds it when the customer presses Reply)."""
    raw = re.sub(rb"<mg\.[A-Za-z0-9]*\.[0-9a-f]+@example\.test>", ours.encode(), raw)
    raw = re.sub(rb"support\+c[A-Za-z0-9]+@", b"support+c" + key.encode() + b"@", raw)
    if not re.search(rb"(?im)^in-reply-to:", raw):
        raw = b"In-Reply-To: " + ours.encode() + b"\r\n" + raw
    return raw


def receiving_ready(channel: Channel) -> dict[str, Any]:
    """The receiver's first connection recorded where it starts (UIDNEXT)."""
    return wait_for(
        lambda: Channel.objects.get(pk=channel.pk).receive_state.get("uidvalidity") and True,
        timeout=30,
    )


def stored(platform_id: str) -> Message | None:
    return Message.objects.filter(platform_message_id=platform_id).first()


def start_thread(api_as, dovecot, smtp_sink, worker, mailbox) -> tuple[Message, Message, str]:
    """The customer writes (Gmail, with quoted history), aiko claims and answers through the
    API, the worker sends it: (the customer's message, our answer, its Message-ID)."""
    receiving_ready(mailbox)
    deliver(dovecot, fixture("gmail_reply.eml"))
    first = run_worker_until(worker, lambda: stored(GMAIL_ID), timeout=30)
    aiko = api_as("aiko")
    aiko.post(f"/conversations/{first.conversation_id}/claim")
    sent = aiko.post(
        f"/conversations/{first.conversation_id}/messages", {"text": "Here is the invoice."}, 202
    )
    answer = run_worker_until(
        worker,
        lambda: Message.objects.filter(pk=sent["id"], status="sent").first(),
        timeout=30,
    )
    return first, answer, answer.platform_message_id


def test_it_threads_an_email_conversation_both_ways(
    api_as, mailbox, dovecot, smtp_sink, worker, receiving
):
    receiving()
    first, _answer, ours = start_thread(api_as, dovecot, smtp_sink, worker, mailbox)
    conversation = first.conversation
    # The customer's mail: the new part shown, the whole mail kept.
    assert first.text == (
        "Thanks, the parcel arrived today.\nCould you send the invoice as well?\n\nTaro"
    )
    assert "Your order #4411 has shipped" in first.data["full_text"]
    assert conversation.identity.handle == "taro.yamada@gmail.example"

    # Our answer threads in the customer's client and routes the next mail back here.
    (captured,) = smtp_sink.received
    assert captured.rcpt_tos == ["taro.yamada@gmail.example"]
    sent = captured.message
    key = conversation_key(conversation.pk)
    assert conversation_id_for_key(key) == conversation.pk
    assert str(sent["Message-ID"]) == ours and wire.is_our_message_id(ours, "example.test")
    assert str(sent["In-Reply-To"]) == GMAIL_ID
    assert wire.message_ids(str(sent["References"])) == (
        "<mg.Q7x2Kp.5f1c2a9e0b7d4c3e@example.test>",
        GMAIL_ID,
    )
    assert str(sent["Subject"]) == "Re: Your order #4411"
    assert str(sent["Reply-To"]) == f"Example Support <support+c{key}@example.test>"
    assert sent.get_content().strip() == "Here is the invoice."

    # The customer (and colleagues of theirs, from other addresses) answer from several
    # clients: HTML only (Apple Mail), Outlook with its quoted history, ISO-2022-JP from a
    # Japanese phone, a mail with attachments; every one lands in this conversation.
    deliver(
        dovecot,
        *(
            answering(fixture(name), ours, key)
            for name in (
                "apple_html_only.eml",
                "outlook_reply.eml",
                "iso2022jp_reply.eml",
                "attachments.eml",
            )
        ),
    )
    inbound = Message.objects.filter(direction="in")
    run_worker_until(worker, lambda: inbound.count() == 7, timeout=60)
    assert Conversation.objects.count() == 1
    assert set(inbound.values_list("conversation_id", flat=True)) == {conversation.pk}
    by_sender = {m.data.get("from"): m for m in inbound.filter(kind="text")}
    apple = by_sender["claire.martin@icloud.example"]
    assert apple.data["html_only"] is True
    assert apple.text.startswith("Are you open on Saturday?")
    assert "We are open" not in apple.text and "We are open" in apple.data["full_text"]
    assert "<script" not in apple.data["html"]
    outlook = by_sender["jose.garcia@outlook.example"]
    assert "Please find your booking confirmation" not in outlook.text
    assert "Please find your booking confirmation" in outlook.data["full_text"]
    japanese = by_sender["hanako.yamada@docomo.example"]
    assert japanese.text == (
        "お世話になっております。\n商品が届きました。ありがとうございました。\n\n山田"
    )
    with_files = by_sender["minjun.lee@naver.example"]
    assert with_files.text == "The box was damaged, photo and invoice attached."
    files = {m.media_filename: m for m in inbound.exclude(kind="text")}
    assert set(files) == {"請求書.pdf", "damage.jpg"}
    photo = files["damage.jpg"]
    assert (photo.kind, photo.media_state, photo.media_mime) == ("image", "stored", "image/jpeg")
    content = (Path(settings.MEDIA_ROOT) / photo.media_path).read_bytes()
    assert content.startswith(b"\xff\xd8") and photo.media_size == len(content)
    assert files["請求書.pdf"].kind == "document"

    # An attachment from the agent goes out as one, threaded after the latest mail.
    aiko = api_as("aiko")
    response = aiko.client.post(
        f"/api/v1/conversations/{conversation.pk}/attachments",
        files={"file": ("quote.pdf", b"%PDF-1.4 quote", "application/pdf")},
        data={"caption": "Our quote"},
    )
    assert response.status_code == 202, response.text
    run_worker_until(worker, lambda: len(smtp_sink.received) == 2, timeout=30)
    second = smtp_sink.received[1].message
    (attachment,) = list(second.iter_attachments())
    assert attachment.get_filename() == "quote.pdf"
    assert attachment.get_content() == b"%PDF-1.4 quote"
    assert str(second["In-Reply-To"]) == with_files.platform_message_id
    assert str(second["Reply-To"]) == f"Example Support <support+c{key}@example.test>"


def test_it_keeps_auto_replies_and_bounces_out_of_the_conversation(
    api_as, mailbox, dovecot, smtp_sink, worker, receiving
):
    receiving()
    first, answer, ours = start_thread(api_as, dovecot, smtp_sink, worker, mailbox)
    key = conversation_key(first.conversation_id)
    deliver(
        dovecot,
        answering(fixture("auto_reply.eml"), ours, key),
        answering(fixture("bounce_dsn.eml"), ours, key),
    )
    run_worker_until(
        worker,
        lambda: (
            Message.objects.filter(pk=answer.pk, status="failed").exists()
            and not RawEvent.objects.filter(processed_at__isnull=True).exists()
        ),
        timeout=30,
    )
    assert Message.objects.filter(direction="in").count() == 1  # only the customer's mail
    # The bounce's reason is on our message, as the agent reads it through the API.
    messages = api_as("aiko").get(f"/conversations/{first.conversation_id}/messages")["items"]
    failed = next(m for m in messages if m["id"] == answer.pk)
    assert failed["status"] == "failed"
    assert "550" in str(failed["error"]) and "no-such-user" in str(failed["error"]).lower()
    # The auto-reply is kept for operators, never shown as the customer's words.
    notices = AuditEvent.objects.filter(action="channel.platform_error")
    assert [n.data["code"] for n in notices] == [wire.AUTO_REPLY_CODE]


def test_it_reopens_a_resolved_conversation_when_the_customer_answers_it(
    api_as, mailbox, dovecot, smtp_sink, worker, receiving
):
    receiving()
    first, _answer, ours = start_thread(api_as, dovecot, smtp_sink, worker, mailbox)
    do_set_status(None, first.conversation, "resolved")
    # A reply that keeps only In-Reply-To (no plus-address): the Message-ID routes it.
    reply = (
        "From: Taro Yamada <taro.yamada@gmail.example>\r\nTo: support@example.test\r\n"
        f"Subject: Re: Your order #4411\r\nMessage-ID: <again@gmail.example>\r\n"
        f"In-Reply-To: {ours}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "One more question about the invoice.\r\n"
    ).encode()
    deliver(dovecot, reply)
    again = run_worker_until(worker, lambda: stored("<again@gmail.example>"), timeout=30)
    assert again.conversation_id == first.conversation_id
    assert Conversation.objects.get(pk=first.conversation_id).status == "open"
    # A new mail without any thread from the same customer goes to that open conversation too.
    deliver(
        dovecot,
        customer_mail(1).replace(b"customer1@customer.example", b"taro.yamada@gmail.example"),
    )
    run_worker_until(worker, lambda: Message.objects.filter(direction="in").count() == 3)
    assert Conversation.objects.count() == 1


def test_it_starts_from_now_and_loses_nothing_across_a_dovecot_restart(
    mailbox, dovecot, worker, receiving
):
    # Mail that was in the mailbox before the channel existed stays out of the inbox.
    deliver(dovecot, customer_mail(0))
    receiving()
    receiving_ready(mailbox)
    state = Channel.objects.get(pk=mailbox.pk).receive_state
    assert state["last_uid"] == 1
    deliver(dovecot, customer_mail(1), customer_mail(2))
    wait_for(lambda: RawEvent.objects.count() == 2, timeout=30)
    dovecot.stop()
    deliver_later = [customer_mail(3), customer_mail(4)]
    dovecot.start()
    deliver(dovecot, *deliver_later)
    wait_for(lambda: RawEvent.objects.count() == 4, timeout=60)
    run_worker_until(worker, lambda: Message.objects.count() == 4, timeout=30)
    senders = sorted(Message.objects.values_list("data__from", flat=True))
    assert senders == [f"customer{n}@customer.example" for n in (1, 2, 3, 4)]
    assert Channel.objects.get(pk=mailbox.pk).receive_state["last_uid"] == 5


def test_it_stops_reading_a_deactivated_channel_and_gives_its_lease_back(
    mailbox, dovecot, receiving
):
    receivers = receiving()
    receiving_ready(mailbox)
    assert set(receivers.running) == {mailbox.pk}
    do_set_channel_active(None, mailbox, False)
    wait_for(lambda: not receivers.running and not receivers.stopping, timeout=30)
    assert ReceiverLease.objects.get(pk=mailbox.pk).lease_until is None
    do_set_channel_active(None, mailbox, True)
    wait_for(lambda: set(receivers.running) == {mailbox.pk}, timeout=30)


def test_it_lets_one_of_two_supervisors_read_a_channel(mailbox, dovecot, receiving):
    one, two = receiving("one"), receiving("two")
    receiving_ready(mailbox)
    deliver(dovecot, *(customer_mail(n) for n in range(5)))
    wait_for(lambda: RawEvent.objects.count() == 5, timeout=30)
    assert len(one.running) + len(two.running) == 1
    holder = ReceiverLease.objects.get(pk=mailbox.pk).holder
    assert holder.startswith("one#") or holder.startswith("two#")


def test_it_receives_each_mail_once_across_two_worker_processes_and_a_kill(mailbox, dovecot):
    """Two `madoguchi worker` processes: one reads the mailbox; it is killed (SIGKILL) while
    mail keeps arriving; the other takes the channel over when the lease runs out, from the
    state the first committed. Every mail becomes one message."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MADOGUCHI_RECEIVER_LEASE_SECONDS": "2",
        "MADOGUCHI_RECEIVER_CHECK_SECONDS": "0.2",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "madoguchi.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        receiving_ready(mailbox)
        deliver(dovecot, *(customer_mail(n) for n in range(4)))
        wait_for(lambda: Message.objects.count() == 4, timeout=60)
        holder = ReceiverLease.objects.get(pk=mailbox.pk).holder
        reader = next(w for w in workers if holder.startswith(f"{w.pid}."))
        reader.send_signal(signal.SIGKILL)
        reader.wait(timeout=10)
        deliver(dovecot, *(customer_mail(n) for n in range(4, 8)))
        wait_for(lambda: Message.objects.count() == 8, timeout=90)
        survivor = next(w for w in workers if w is not reader)
        assert ReceiverLease.objects.get(pk=mailbox.pk).holder.startswith(f"{survivor.pid}.")
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    assert RawEvent.objects.count() == 8
    senders = sorted(Message.objects.values_list("data__from", flat=True))
    assert senders == sorted(f"customer{n}@customer.example" for n in range(8))


# -- routing rules, without servers -------------------------------------------------------------


def inbound_mail(pid: str, sender: str, *, hints=(), key: str = "") -> Any:
    from datetime import UTC, datetime

    from madoguchi.providers.base import InboundMessage

    return InboundMessage(
        platform_message_id=pid,
        business_handle=MAILBOX,
        sender_handle=sender,
        sender_name="",
        timestamp=datetime.now(UTC),
        kind="text",
        text=f"mail {pid}",
        thread_hints=tuple(hints),
        conversation_key=key,
    )


@pytest.fixture
def offline_mailbox(db) -> Channel:
    return do_create_channel(
        None, kind="email", name="Mail", business_handle=MAILBOX, secrets={}, options={}
    )


def test_it_routes_by_conversation_key_and_ignores_a_forged_one(offline_mailbox):
    from madoguchi.actions.inbound import do_receive_message

    first = do_receive_message(offline_mailbox, inbound_mail("<a@x>", "a@customer.example"))
    key = conversation_key(first.conversation_id)
    keyed = do_receive_message(
        offline_mailbox, inbound_mail("<b@x>", "colleague@customer.example", key=key)
    )
    assert keyed.conversation_id == first.conversation_id
    forged = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert conversation_id_for_key(forged) is None
    other = do_receive_message(
        offline_mailbox, inbound_mail("<c@x>", "stranger@elsewhere.example", key=forged)
    )
    assert other.conversation_id != first.conversation_id


def test_it_routes_hinted_messages_of_a_bulk_batch_one_by_one(offline_mailbox):
    from django.db import transaction

    from madoguchi.actions.inbound import do_receive_message, do_receive_messages

    first = do_receive_message(offline_mailbox, inbound_mail("<a@x>", "a@customer.example"))
    with transaction.atomic():
        stored_now = do_receive_messages(
            offline_mailbox,
            [
                inbound_mail("<n@x>", "new@customer.example"),
                inbound_mail("<r@x>", "other@customer.example", hints=("<zz@x>", "<a@x>")),
            ],
        )
    by_id = {m.platform_message_id: m for m in stored_now}
    assert by_id["<r@x>"].conversation_id == first.conversation_id
    assert by_id["<n@x>"].conversation_id != first.conversation_id
    # A hint to nothing we know: the sender's own conversation, as for any channel.
    lone = do_receive_message(
        offline_mailbox, inbound_mail("<l@x>", "new@customer.example", hints=("<unknown@x>",))
    )
    assert lone.conversation_id == by_id["<n@x>"].conversation_id
