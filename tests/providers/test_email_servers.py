"""The email provider against real servers: aiosmtpd as the outbound smart host, a private
Dovecot as the customer-facing mailbox (PROTOCOLS.md §D3, §D4)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from django.conf import settings

from madoguchi.errors import Invalid
from madoguchi.providers import email_wire as wire
from madoguchi.providers.base import ChannelConfig, InboundMessage, SendError
from madoguchi.providers.email import EmailProvider
from madoguchi.providers.email_imap import (
    FetchedMail,
    ImapReceiver,
    ImapSettings,
    MailboxState,
    close,
    connect,
)
from tests.email_servers import SmtpSink, customer_mail, free_port

from .conftest import MAILBOX, MAILBOX_PASSWORD

# The SMTP sink takes AUTH without TLS on purpose (loopback only).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "email"


def provider_for(sink: SmtpSink | None = None, *, dovecot=None, **options) -> EmailProvider:
    config = ChannelConfig(
        id=1,
        kind="email",
        business_handle=MAILBOX,
        secrets={"imap_password": MAILBOX_PASSWORD, **options.pop("secrets", {})},
        options={
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port if sink else free_port(),
            "smtp_security": "none",
            "imap_host": "127.0.0.1",
            "imap_port": dovecot.port if dovecot else free_port(),
            "imap_security": "none",
            "from_name": "Example Support",
            "timeout": 5,
            **options,
        },
    )
    return EmailProvider(config)


# -- SMTP -------------------------------------------------------------------------------------


def test_it_sends_a_reply_that_threads_with_the_customers_mail(smtp_sink):
    customer = wire.parse_message(
        (FIXTURES / "gmail_reply.eml").read_bytes(), business_handle=MAILBOX
    )
    thread = wire.Thread(
        token=customer.thread.routing_token,
        subject=customer.thread.subject,
        parent_message_id=customer.thread.message_id,
        parent_references=customer.thread.references,
    )
    sent = provider_for(smtp_sink).send_text(
        "taro.yamada@gmail.example", "Here is your invoice.", thread=thread
    )
    (captured,) = smtp_sink.received
    assert captured.mail_from == MAILBOX
    assert captured.rcpt_tos == ["taro.yamada@gmail.example"]
    msg = captured.message
    assert str(msg["Message-ID"]) == sent.platform_message_id
    assert wire.is_our_message_id(sent.platform_message_id, "example.test")
    assert str(msg["In-Reply-To"]) == customer.thread.message_id
    assert wire.message_ids(str(msg["References"])) == (
        "<mg.Q7x2Kp.5f1c2a9e0b7d4c3e@example.test>",
        customer.thread.message_id,
    )
    assert str(msg["Subject"]) == "Re: Your order #4411"
    assert str(msg["Reply-To"]) == "Example Support <support+cQ7x2Kp@example.test>"
    assert str(msg["From"]) == "Example Support <support@example.test>"
    assert msg.get_content().strip() == "Here is your invoice."


def test_it_threads_on_the_replied_message_when_the_core_gives_no_thread(smtp_sink):
    provider = provider_for(smtp_sink, subject="Your enquiry")
    provider.send_text("c@customer.example", "Hi", reply_to="<p@customer.example>#2")
    msg = smtp_sink.received[0].message
    assert str(msg["In-Reply-To"]) == "<p@customer.example>"
    assert str(msg["Subject"]) == "Re: Your enquiry"


def test_it_sends_media_as_an_attachment_with_its_caption(smtp_sink):
    media_root = Path(settings.MEDIA_ROOT)
    (media_root / "outbound").mkdir(parents=True, exist_ok=True)
    (media_root / "outbound" / "x.pdf").write_bytes(b"%PDF-1.4 invoice")
    provider_for(smtp_sink).send_media(
        "c@customer.example",
        "document",
        "outbound/x.pdf",
        "application/pdf",
        filename="請求書.pdf",
        caption="The invoice",
        thread=wire.Thread(subject="Invoice", token="Ab1"),
    )
    msg = smtp_sink.received[0].message
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().strip() == "The invoice"
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "請求書.pdf"
    assert attachment.get_content() == b"%PDF-1.4 invoice"
    assert msg["In-Reply-To"] is None  # a first mail starts a thread


@pytest.mark.parametrize(
    ("where", "reply", "permanent", "scope"),
    [
        ("rcpt", "550 5.1.1 No such user here", True, "pair"),
        ("rcpt", "452 4.2.2 Mailbox full, try later", False, "pair"),
        ("data", "554 5.7.1 Message rejected as spam", True, "request"),
        ("data", "451 4.3.0 Temporary local problem", False, "request"),
        ("data", "421 4.7.0 Too many messages, slow down", False, "number"),
    ],
)
def test_it_maps_smtp_refusals(smtp_sink, where, reply, permanent, scope):
    setattr(smtp_sink.handler, f"{where}_reply", reply)
    with pytest.raises(SendError) as caught:
        provider_for(smtp_sink).send_text("c@customer.example", "Hi")
    assert caught.value.permanent is permanent
    assert caught.value.scope == scope
    assert caught.value.error.code == int(reply[:3])
    assert reply[4:] in caught.value.error.details
    assert smtp_sink.received == []


def test_it_treats_an_unreachable_smtp_server_as_transient():
    with pytest.raises(SendError) as caught:
        provider_for(None).send_text("c@customer.example", "Hi")
    assert caught.value.permanent is False
    assert caught.value.error.title == "Mail server unreachable"


def test_it_refuses_starttls_on_a_server_without_it(smtp_sink):
    with pytest.raises(SendError) as caught:
        provider_for(smtp_sink, smtp_security="starttls").send_text("c@customer.example", "Hi")
    assert caught.value.permanent is True


def test_it_logs_in_to_smtp_with_the_channel_secret(smtp_auth_sink):
    good = provider_for(smtp_auth_sink, secrets={"smtp_password": "smtp-secret"})
    good.send_text("c@customer.example", "Hi")
    assert len(smtp_auth_sink.received) == 1
    bad = provider_for(smtp_auth_sink, secrets={"smtp_password": "wrong"})
    with pytest.raises(SendError) as caught:
        bad.send_text("c@customer.example", "Hi")
    assert caught.value.permanent is True and caught.value.error.code == 535


def test_it_reads_a_stored_mail_as_the_channels_events():
    provider = provider_for(None)
    events = provider.parse_webhook((FIXTURES / "bounce_dsn.eml").read_bytes())
    assert [type(e).__name__ for e in events] == ["StatusUpdate"]
    assert provider.verify_signature({}, b"anything") is False
    assert provider.capabilities.window_hours is None
    assert provider.capabilities.has_webhooks is False


def test_it_stores_an_attachment_from_the_raw_mail():
    raw = (FIXTURES / "attachments.eml").read_bytes()
    provider = provider_for(None)
    photo = provider.parse_webhook(raw)[2]
    assert isinstance(photo, InboundMessage) and photo.media is not None
    stored = provider.store_attachment(raw, photo.media, "inbound/test-photo.jpg", kind="image")
    assert stored.mime_type == "image/jpeg"
    assert (Path(settings.MEDIA_ROOT) / stored.path).read_bytes().startswith(b"\xff\xd8")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Taro.Yamada@Gmail.COM ", "taro.yamada@gmail.com"),
        ("info@bücher.example", "info@bücher.example"),
    ],
)
def test_it_normalizes_addresses(raw, expected):
    assert EmailProvider.normalize_handle(raw) == expected


@pytest.mark.parametrize("raw", ["", "taro", "taro@", "a b@example.com", "x@-bad-.example"])
def test_it_refuses_what_is_not_an_address(raw):
    with pytest.raises(Invalid):
        EmailProvider.normalize_handle(raw)


# -- IMAP -------------------------------------------------------------------------------------


class Mailstore:
    """Stands in for the core: stores each mail and the receiver's state in one step (as one
    transaction would), refuses a second mail with a known Message-ID, and can be told to fail
    (a database outage)."""

    def __init__(self, state: MailboxState | None = None) -> None:
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.duplicates: list[str] = []
        self.state = state or MailboxState()
        self.fail_next = 0
        self.calls = 0

    def __call__(self, mail: FetchedMail, state: MailboxState) -> None:
        with self.lock:
            self.calls += 1
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("database unavailable")
            parsed = wire.parse_message(mail.raw, business_handle=MAILBOX)
            if parsed.thread.message_id in self.ids:
                self.duplicates.append(parsed.thread.message_id)
            else:
                self.ids.append(parsed.thread.message_id)
            self.state = state

    def count(self) -> int:
        with self.lock:
            return len(self.ids)


def imap_settings(dovecot, **overrides) -> ImapSettings:
    values = {
        "host": "127.0.0.1",
        "port": dovecot.port,
        "username": MAILBOX,
        "password": MAILBOX_PASSWORD,
        "security": "none",
        "timeout": 5,
        "tick": 0.1,
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
        **overrides,
    }
    return ImapSettings(**values)


def append(dovecot, *numbers: int) -> list[str]:
    """Customer mails delivered into the mailbox (IMAP APPEND); their Message-IDs in order."""
    client = connect(imap_settings(dovecot))
    try:
        ids = []
        for number in numbers:
            raw = customer_mail(number)
            ids.append(wire.parse_message(raw, business_handle=MAILBOX).thread.message_id)
            client.append("INBOX", raw)
        return ids
    finally:
        close(client)


def wait_until(predicate, seconds: float = 30.0) -> None:
    """Wait for something another thread does (bounded, never a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the condition was not reached")
        time.sleep(0.02)


class Running:
    def __init__(self, receiver: ImapReceiver, state: MailboxState) -> None:
        self.receiver = receiver
        self.stop = threading.Event()
        self.result: MailboxState | None = None
        self.thread = threading.Thread(target=self.main, args=(state,), daemon=True)
        self.thread.start()

    def main(self, state: MailboxState) -> None:
        self.result = self.receiver.run(state, self.stop)

    def finish(self) -> MailboxState:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        assert self.result is not None
        return self.result


@pytest.fixture
def running():
    started: list[Running] = []

    def start(receiver: ImapReceiver, state: MailboxState | None = None) -> Running:
        handle = Running(receiver, state or MailboxState())
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop.set()
        handle.thread.join(timeout=20)


def test_it_receives_new_mail_when_idle_wakes_it(dovecot, running):
    store = Mailstore()
    # Neither a poll nor an IDLE renewal can happen during the test: only EXISTS wakes it.
    receiver = ImapReceiver(imap_settings(dovecot, idle_seconds=3600, poll_seconds=3600), store)
    handle = running(receiver)
    wait_until(lambda: receiver.idles >= 1)
    ids = append(dovecot, 1, 2)
    wait_until(lambda: store.count() == 2)
    assert store.ids == ids
    assert receiver.polls == 0 and receiver.connects == 1
    state = handle.finish()
    assert state == store.state and state.last_uid == 2


def test_mail_that_arrives_while_it_fetches_is_not_left_for_the_next_idle(dovecot, running):
    """Dovecot announces a mail that arrives during a FETCH inside that FETCH's answer, and
    not again once IDLE starts: the receiver must read it before idling."""
    ids = append(dovecot, 1, 2)
    arrived: list[str] = []

    class DeliversDuringTheFetch(Mailstore):
        def __call__(self, mail: FetchedMail, state: MailboxState) -> None:
            super().__call__(mail, state)
            if not arrived:  # between the first mail's FETCH and the second's
                arrived.extend(append(dovecot, 3))

    store = DeliversDuringTheFetch()
    settings = imap_settings(dovecot, idle_seconds=3600, poll_seconds=3600, batch_size=1)
    running(ImapReceiver(replace(settings, start="all"), store))
    wait_until(lambda: store.count() == 3)
    assert store.ids == ids + arrived


def test_it_polls_when_idle_is_not_used(dovecot, running):
    store = Mailstore()
    receiver = ImapReceiver(imap_settings(dovecot, use_idle=False, poll_seconds=0.1), store)
    running(receiver)
    ids = append(dovecot, 1, 2, 3)
    wait_until(lambda: store.count() == 3)
    assert store.ids == ids
    assert receiver.idles == 0 and receiver.polls >= 1


def test_it_reissues_idle_when_its_timer_runs_out(dovecot, running):
    """RFC 2177's 29 minutes, shortened: the same connection idles again and still hears."""
    store = Mailstore()
    receiver = ImapReceiver(imap_settings(dovecot, idle_seconds=0.3, poll_seconds=3600), store)
    running(receiver)
    wait_until(lambda: receiver.idles >= 3)
    ids = append(dovecot, 7)
    wait_until(lambda: store.count() == 1)
    assert store.ids == ids
    assert receiver.connects == 1 and receiver.failures == 0


def test_it_loses_nothing_and_doubles_nothing_across_a_dovecot_restart(dovecot, running):
    store = Mailstore()
    receiver = ImapReceiver(imap_settings(dovecot, idle_seconds=3600, poll_seconds=3600), store)
    handle = running(receiver)
    first = append(dovecot, 1, 2, 3)
    wait_until(lambda: store.count() == 3)
    dovecot.stop()
    wait_until(lambda: receiver.failures >= 1)  # it noticed, and keeps trying
    dovecot.start()
    wait_until(lambda: receiver.connects >= 2 and receiver.idles >= 2)
    second = append(dovecot, 4, 5)
    wait_until(lambda: store.count() == 5)
    state = handle.finish()
    assert store.ids == first + second
    assert store.duplicates == []
    assert state.last_uid == 5


def test_it_reads_again_only_what_the_store_did_not_commit(dovecot):
    ids = append(dovecot, 1, 2, 3)
    store = Mailstore()
    store.fail_next = 0
    receiver = ImapReceiver(imap_settings(dovecot), store)
    client = connect(receiver.settings)
    try:
        # The store commits mail 1, then fails on mail 2 (the database went away).
        original = store.__call__

        def failing_on_second(mail, state):
            if mail.uid == 2 and store.calls == 1:
                store.calls += 1
                raise RuntimeError("database unavailable")
            original(mail, state)

        receiver.store = failing_on_second
        with pytest.raises(RuntimeError):
            receiver.sync(client, store.state)
        assert store.ids == ids[:1] and store.state.last_uid == 1
        # The next round (a restarted process) starts from the committed state.
        receiver.store = store
        state = receiver.sync(client, store.state)
    finally:
        close(client)
    assert store.ids == ids and store.duplicates == []
    assert state.last_uid == 3


def test_it_resumes_after_a_process_restart_from_the_persisted_state(dovecot, running):
    store = Mailstore()
    handle = running(ImapReceiver(imap_settings(dovecot, idle_seconds=3600), store))
    first = append(dovecot, 1, 2)
    wait_until(lambda: store.count() == 2)
    persisted = handle.finish()
    assert persisted == store.state
    later = append(dovecot, 3)  # arrives while no receiver runs
    again = Mailstore(persisted)
    receiver = ImapReceiver(imap_settings(dovecot, idle_seconds=3600), again)
    running(receiver, persisted)
    wait_until(lambda: again.count() == 1)
    assert again.ids == later and again.calls == 1  # mails 1 and 2 were not fetched again
    assert first[0] not in again.ids


def test_it_reads_the_folder_again_when_uidvalidity_changes(dovecot):
    ids = append(dovecot, 1, 2)
    store = Mailstore()
    receiver = ImapReceiver(imap_settings(dovecot), store)
    client = connect(receiver.settings)
    try:
        state = receiver.sync(client, store.state)
        old_validity = state.uidvalidity
        assert store.ids == ids
        dovecot.doveadm("mailbox", "update", "--uid-validity", "4242", "-u", MAILBOX, "INBOX")
        newer = append(dovecot, 3)
        state = receiver.sync(client, state)
    finally:
        close(client)
    assert old_validity != 4242 and state.uidvalidity == 4242
    # Every mail was offered again; the store's Message-ID check stopped the two it had.
    assert store.ids == ids + newer
    assert sorted(store.duplicates) == sorted(ids)
    assert state.last_uid == 3


def test_it_checks_imap_and_smtp_credentials(dovecot, smtp_auth_sink):
    good = provider_for(smtp_auth_sink, dovecot=dovecot, secrets={"smtp_password": "smtp-secret"})
    assert good.check_credentials() == {"name": MAILBOX}
    bad_imap = provider_for(
        smtp_auth_sink,
        dovecot=dovecot,
        secrets={"imap_password": "wrong", "smtp_password": "smtp-secret"},
    )
    with pytest.raises(SendError) as caught:
        bad_imap.check_credentials()
    assert caught.value.permanent is True
    bad_smtp = provider_for(smtp_auth_sink, dovecot=dovecot, secrets={"smtp_password": "x"})
    with pytest.raises(SendError) as caught:
        bad_smtp.check_credentials()
    assert caught.value.permanent is True and caught.value.error.code == 535


def test_it_reports_an_unreachable_imap_server_as_transient(smtp_sink):
    with pytest.raises(SendError) as caught:
        provider_for(smtp_sink).check_credentials()  # nothing listens on the IMAP port
    assert caught.value.permanent is False


def test_it_delivers_a_sent_reply_that_the_customer_answers_back_into_the_conversation(
    dovecot, smtp_sink
):
    """The whole loop: our mail out through SMTP, the customer's answer (as their client
    writes it) into the mailbox, read back by IMAP and routed by token and In-Reply-To."""
    provider = provider_for(smtp_sink, dovecot=dovecot)
    sent = provider.send_text(
        "c@customer.example",
        "Your parcel ships today.",
        thread=wire.Thread(token="Tk9", subject="Parcel"),
    )
    ours = smtp_sink.received[0].message
    answer = (
        f"From: C <c@customer.example>\r\nTo: {ours['Reply-To']}\r\n"
        f"Subject: Re: {ours['Subject']}\r\nMessage-ID: <ans1@customer.example>\r\n"
        f"In-Reply-To: {ours['Message-ID']}\r\nReferences: {ours['Message-ID']}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Great, thanks!\r\n\r\nOn Mon, 3 Jun 2024 at 10:05, Example Support <{MAILBOX}> wrote:\r\n"
        "> Your parcel ships today.\r\n"
    ).encode()
    client = connect(imap_settings(dovecot))
    try:
        client.append("INBOX", answer)
    finally:
        close(client)
    store = Mailstore()
    raws: list[bytes] = []
    receiver = ImapReceiver(
        imap_settings(dovecot), lambda mail, state: (raws.append(mail.raw), store(mail, state))
    )
    client = connect(receiver.settings)
    try:
        receiver.sync(client, MailboxState())
    finally:
        close(client)
    (event,) = provider.parse_webhook(raws[0])
    assert isinstance(event, InboundMessage)
    assert event.text == "Great, thanks!"
    assert event.reply_to_platform_id == sent.platform_message_id
    assert event.data["routing_token"] == "Tk9"
