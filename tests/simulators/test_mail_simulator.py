"""The mail simulator against real clients: Madoguchi's own ImapReceiver and IMAPClient over
IMAP, EmailProvider and smtplib over SMTP, all on the loopback. What happens on other threads
is awaited with a deadline, never a fixed sleep."""

from __future__ import annotations

import base64
import email
import email.policy
import socket
import threading
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from madoguchi.providers import email_wire as wire
from madoguchi.providers.base import ChannelConfig, InboundMessage, SendError
from madoguchi.providers.email import EmailProvider
from madoguchi.providers.email_imap import (
    FetchedMail,
    ImapReceiver,
    ImapSettings,
    MailboxState,
)
from madoguchi.simulators.mail import MailChatter, MailSimulator, RunningMailServer
from tests.helpers import wait_for

MAILBOX = "support@shop.example"
PASSWORD = "mailbox-secret"


@pytest.fixture
def sim() -> Iterator[MailSimulator]:
    simulator = MailSimulator()
    simulator.add_mailbox(MAILBOX, PASSWORD)
    yield simulator
    simulator.close()


@pytest.fixture
def server(sim: MailSimulator) -> RunningMailServer:
    return sim.serve_in_thread()


def customer_mail(number: int) -> bytes:
    return (
        f"From: Customer {number} <c{number}@customer.example>\r\nTo: {MAILBOX}\r\n"
        f"Subject: Question {number}\r\nMessage-ID: <q{number}@customer.example>\r\n"
        "Date: Mon, 3 Jun 2024 10:05:00 +0900\r\n\r\n"
        f"Hello, this is question {number}.\r\n"
    ).encode()


def imap(server: RunningMailServer, *, login: bool = True) -> IMAPClient:
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=5)
    if login:
        client.login(MAILBOX, PASSWORD)
    return client


def settings(server: RunningMailServer, **overrides) -> ImapSettings:
    values = {
        "host": server.host,
        "port": server.imap_port,
        "username": MAILBOX,
        "password": PASSWORD,
        "security": "none",
        "timeout": 5,
        "tick": 0.1,
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
        **overrides,
    }
    return ImapSettings(**values)


class Collected:
    """Stands in for the core's store: the Message-IDs and the last state, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.state = MailboxState()

    def __call__(self, mail: FetchedMail, state: MailboxState) -> None:
        parsed = wire.parse_message(mail.raw, business_handle=MAILBOX)
        with self.lock:
            self.ids.append(parsed.thread.message_id)
            self.state = state

    def count(self) -> int:
        with self.lock:
            return len(self.ids)


class Running:
    def __init__(self, receiver: ImapReceiver, state: MailboxState) -> None:
        self.stop = threading.Event()
        self.result: MailboxState | None = None
        self.thread = threading.Thread(target=self.main, args=(receiver, state), daemon=True)
        self.thread.start()

    def main(self, receiver: ImapReceiver, state: MailboxState) -> None:
        self.result = receiver.run(state, self.stop)

    def finish(self) -> MailboxState:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive() and self.result is not None
        return self.result


@pytest.fixture
def running() -> Iterator:
    started: list[Running] = []

    def start(receiver: ImapReceiver, state: MailboxState | None = None) -> Running:
        handle = Running(receiver, state or MailboxState())
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop.set()
        handle.thread.join(timeout=20)


# -- the real receiver ------------------------------------------------------------------------


def test_it_wakes_the_receiver_by_idle_when_mail_arrives(sim, server, running):
    store = Collected()
    # Neither a poll nor an IDLE renewal can happen during the test: only EXISTS wakes it.
    receiver = ImapReceiver(settings(server, idle_seconds=3600, poll_seconds=3600), store)
    handle = running(receiver)
    wait_for(lambda: sim.idle_sessions() == 1)
    sim.deliver(customer_mail(1))
    sim.deliver(customer_mail(2))
    wait_for(lambda: store.count() == 2)
    assert store.ids == ["<q1@customer.example>", "<q2@customer.example>"]
    assert receiver.polls == 0 and receiver.connects == 1 and receiver.failures == 0
    state = handle.finish()
    assert state == MailboxState(uidvalidity=sim.uidvalidity, last_uid=2)


def test_the_receiver_reads_news_the_server_sends_with_its_idle_answer(sim, server, running):
    """A server may write "+ idling" and an EXISTS in one packet: imaplib then holds the EXISTS
    in its buffer, where IMAPClient's idle_check never looks. The receiver must not idle past
    it (here: mail 2 arrives while mail 1 is being stored, so it is news when IDLE starts)."""
    sim.idle_news_delay = 0
    sim.deliver(customer_mail(1))

    class DeliversWhileStoring(Collected):
        def __call__(self, mail: FetchedMail, state: MailboxState) -> None:
            super().__call__(mail, state)
            if self.count() == 1:
                sim.deliver(customer_mail(2))

    store = DeliversWhileStoring()
    running(ImapReceiver(settings(server, idle_seconds=3600, poll_seconds=3600), store))
    wait_for(lambda: store.count() == 2)
    assert store.ids == ["<q1@customer.example>", "<q2@customer.example>"]


def test_it_serves_the_receiver_that_polls(sim, server, running):
    store = Collected()
    receiver = ImapReceiver(settings(server, use_idle=False, poll_seconds=0.1), store)
    running(receiver)
    for number in (1, 2, 3):
        sim.deliver(customer_mail(number))
    wait_for(lambda: store.count() == 3)
    assert store.ids == [f"<q{n}@customer.example>" for n in (1, 2, 3)]
    assert receiver.idles == 0 and receiver.polls >= 1 and receiver.failures == 0


def test_it_lets_the_receiver_resume_from_its_state_and_start_from_uidnext(sim, server, running):
    sim.deliver(customer_mail(1))
    sim.deliver(customer_mail(2))
    # A first connection that starts "new" counts everything below UIDNEXT as read.
    saved: list[MailboxState] = []
    store = Collected()
    receiver = ImapReceiver(
        settings(server, start="new", idle_seconds=3600), store, save_state=saved.append
    )
    handle = running(receiver)
    wait_for(lambda: sim.idle_sessions() == 1)
    assert saved == [MailboxState(uidvalidity=sim.uidvalidity, last_uid=2)]
    sim.deliver(customer_mail(3))
    wait_for(lambda: store.count() == 1)
    persisted = handle.finish()
    assert store.ids == ["<q3@customer.example>"] and persisted.last_uid == 3
    # Mail that arrives while nobody reads is read by the next process, and only that mail.
    sim.deliver(customer_mail(4))
    again = Collected()
    running(ImapReceiver(settings(server, idle_seconds=3600), again), persisted)
    wait_for(lambda: again.count() == 1)
    assert again.ids == ["<q4@customer.example>"]


def test_a_new_simulator_has_a_new_uidvalidity_so_the_receiver_reads_it_again(server, running):
    old = MailboxState(uidvalidity=12345, last_uid=40)  # a previous demo run's state
    store = Collected()
    server.sim.deliver(customer_mail(1))
    running(ImapReceiver(settings(server, idle_seconds=3600), store), old)
    wait_for(lambda: store.count() == 1)
    assert server.sim.uidvalidity != 12345
    assert store.state == MailboxState(uidvalidity=server.sim.uidvalidity, last_uid=1)


# -- IMAPClient -------------------------------------------------------------------------------


def test_it_answers_select_status_and_search_as_rfc_3501_says(sim, server):
    sim.deliver(customer_mail(1))
    sim.deliver(customer_mail(2))
    client = imap(server)
    try:
        assert client.has_capability("IDLE") and client.has_capability("IMAP4REV1")
        selected = client.select_folder("INBOX")
        assert selected[b"EXISTS"] == 2 and selected[b"RECENT"] == 2
        assert selected[b"UIDVALIDITY"] == sim.uidvalidity
        assert selected[b"UIDNEXT"] == 3
        assert selected[b"READ-WRITE"] is True
        client.append("INBOX", customer_mail(3), flags=["\\Seen"])
        assert client.folder_status("INBOX") == {
            b"MESSAGES": 3,
            b"RECENT": 3,  # appended by this session: recent to it
            b"UIDNEXT": 4,
            b"UIDVALIDITY": sim.uidvalidity,
            b"UNSEEN": 2,
        }
        assert client.search(["ALL"]) == [1, 2, 3]
        assert client.search(["UID", "2:*"]) == [2, 3]
        assert client.search(["UID", "9:*"]) == [3]  # "n:*" always holds the highest UID
        assert client.search(["UNSEEN"]) == [1, 2]
        assert client.search(["NOT", "SEEN", "SUBJECT", "question 2"]) == [2]
        assert client.search(["OR", "FROM", "c1@customer.example", "SEEN"]) == [1, 3]
        answer = client.fetch([2], ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"])
        assert answer[2][b"RFC822.SIZE"] == len(customer_mail(2))
        assert answer[2][b"FLAGS"] == (b"\\Recent",)
        other = imap(server)
        assert other.select_folder("INBOX", readonly=True)[b"RECENT"] == 0  # never twice
        other.logout()
    finally:
        client.logout()


def test_body_peek_keeps_seen_off_and_body_sets_it(sim, server):
    sim.deliver(customer_mail(1))
    client = imap(server)
    try:
        client.select_folder("INBOX", readonly=True)
        assert client.fetch([1], ["BODY[]"])[1][b"BODY[]"] == customer_mail(1)
        assert client.get_flags([1])[1] == (b"\\Recent",)  # EXAMINE changes nothing
        client.select_folder("INBOX")
        fetched = client.fetch([1], ["BODY.PEEK[]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        assert fetched[1][b"BODY[]"] == customer_mail(1)
        assert fetched[1][b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: Question 1\r\n\r\n"
        assert client.search(["UNSEEN"]) == [1]
        assert b"\\Seen" in client.fetch([1], ["BODY[TEXT]"])[1][b"FLAGS"]
        assert client.search(["UNSEEN"]) == []
        client.remove_flags([1], ["\\Seen"])
        assert client.fetch([1], ["RFC822"])[1][b"RFC822"] == customer_mail(1)
        assert client.search(["SEEN"]) == [1]
    finally:
        client.logout()


def test_idle_pushes_exists_and_expunge_reaches_other_sessions(sim, server):
    first, second = imap(server), imap(server)
    try:
        first.select_folder("INBOX")
        second.select_folder("INBOX")
        first.idle()
        wait_for(lambda: sim.idle_sessions() == 1)
        sim.deliver(customer_mail(1))
        responses = wait_for(lambda: first.idle_check(timeout=0.5))
        assert (1, b"EXISTS") in responses
        first.idle_done()
        second.noop()
        second.add_flags([1], ["\\Deleted"])
        second.expunge()
        _text, untagged = first.noop()
        assert (1, b"EXPUNGE") in untagged
        assert first.search(["ALL"]) == []
    finally:
        first.logout()
        second.logout()


def test_it_refuses_wrong_logins_and_answers_bad_to_what_it_does_not_know(server):
    client = imap(server, login=False)
    with pytest.raises(LoginError):
        client.login(MAILBOX, "wrong")
    client.plain_login(MAILBOX, PASSWORD)  # AUTHENTICATE PLAIN with a continuation
    client.logout()
    with socket.create_connection((server.host, server.imap_port), timeout=5) as raw:
        stream = raw.makefile("rwb")

        def command(line: bytes, tag: bytes = b"") -> list[bytes]:
            stream.write(line + b"\r\n")
            stream.flush()
            tag = tag or line.split(b" ", 1)[0]
            lines = [stream.readline()]
            while not lines[-1].startswith(tag + b" "):
                lines.append(stream.readline())
            return lines

        assert stream.readline().startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        assert command(b"a1 SELECT INBOX")[-1].startswith(b"a1 BAD")  # not logged in
        initial = base64.b64encode(f"\0{MAILBOX}\0{PASSWORD}".encode())
        assert command(b"a2 AUTHENTICATE PLAIN " + initial)[-1].startswith(b"a2 OK")  # SASL-IR
        assert command(b"a3 XYZZY")[-1].startswith(b"a3 BAD")
        assert command(b"a4 SELECT Nowhere")[-1].startswith(b"a4 NO [NONEXISTENT]")
        assert command(b"a5 FETCH 1 BODY[]")[-1].startswith(b"a5 BAD")  # nothing selected
        # A synchronising literal: the server says "+" before the bytes follow.
        mail = customer_mail(7)
        stream.write(b"a6 APPEND INBOX (\\Flagged) {%d}\r\n" % len(mail))
        stream.flush()
        assert stream.readline().startswith(b"+ ")
        assert command(mail, b"a6")[-1].startswith(b"a6 OK")
        assert command(b"a7 EXAMINE INBOX")[-1].startswith(b"a7 OK [READ-ONLY]")
        lines = command(b"a8 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert lines[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) BODY[")
        assert lines[0].endswith(b"{37}\r\n")  # the header comes back as a literal
        assert lines[1:3] == [b"Message-ID: <q7@customer.example>\r\n", b"\r\n"]
        assert command(b"a9 FETCH 1 ENVELOPE")[-1].startswith(b"a9 BAD")
        assert command(b"b1 STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"b1 NO")  # read-only
        assert command(b"b2 LOGOUT")[0] == b"* BYE Logging out\r\n"


# -- SMTP and the customers -------------------------------------------------------------------


def provider(server: RunningMailServer, password: str = PASSWORD) -> EmailProvider:
    return EmailProvider(
        ChannelConfig(
            id=1,
            kind="email",
            business_handle=MAILBOX,
            secrets={"imap_password": PASSWORD, "smtp_password": password},
            options={
                "smtp_host": server.host,
                "smtp_port": server.smtp_port,
                "smtp_security": "none",
                "imap_host": server.host,
                "imap_port": server.imap_port,
                "imap_security": "none",
                "from_name": "Shop Support",
                "timeout": 5,
            },
        )
    )


def test_it_captures_what_the_email_provider_sends_and_checks_its_login(sim, server):
    assert provider(server).check_credentials() == {"name": MAILBOX}
    sent = provider(server).send_text(
        "c1@customer.example", "Your parcel ships today.", thread=wire.Thread(subject="Parcel")
    )
    (captured,) = sim.sent_to("c1@customer.example")
    assert captured.mail_from == MAILBOX
    assert str(captured.message["Message-ID"]) == sent.platform_message_id
    assert captured.message.get_content().strip() == "Your parcel ships today."
    with pytest.raises(SendError) as refused:
        provider(server, password="wrong").send_text("c1@customer.example", "Hi")
    assert refused.value.permanent is True and refused.value.error.code == 535
    assert len(sim.sent_to()) == 1


def test_mail_to_a_plus_address_of_the_mailbox_is_delivered_into_it(sim, server):
    import smtplib

    with smtplib.SMTP(server.host, server.smtp_port, timeout=5) as session:
        session.login(MAILBOX, PASSWORD)
        session.sendmail("c1@customer.example", ["support+cAb1@shop.example"], customer_mail(1))
    (stored,) = sim.inbox(MAILBOX).mails
    assert stored.raw == customer_mail(1) and sim.sent_to() == []


def test_a_customer_answers_our_reply_threaded_as_a_mail_client(sim, server):
    chatter = MailChatter(sim, MAILBOX, seed=1, languages=["en"], shop_name="Shop")
    (first_id,) = chatter.seed_mailbox(1)
    first = wire.parse_message(sim.inbox(MAILBOX).mails[0].raw, business_handle=MAILBOX)
    customer = chatter.customers[0]
    assert first.thread.message_id == first_id
    ours = provider(server).send_text(
        customer.address,
        "Hello Sheena,\nyour parcel left our warehouse today.",
        thread=wire.Thread(token="Tk9", subject=first.thread.subject, parent_message_id=first_id),
    )
    (answer_id,) = chatter.answer_all()
    raw = sim.inbox(MAILBOX).mails[-1].raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(msg["Message-ID"]) == answer_id
    assert str(msg["To"]) == "Shop <support+cTk9@shop.example>"  # our Reply-To
    assert str(msg["Subject"]) == "Re: " + first.thread.subject
    assert str(msg["In-Reply-To"]) == ours.platform_message_id
    assert wire.message_ids(str(msg["References"])) == (first_id, ours.platform_message_id)
    parsed = wire.parse_message(raw, business_handle=MAILBOX, our_domain="shop.example")
    (event,) = parsed.events
    assert isinstance(event, InboundMessage)
    assert parsed.thread.routing_token == "Tk9"
    assert event.reply_to_platform_id == ours.platform_message_id
    assert "> your parcel left our warehouse today." in event.data["full_text"]
    assert "wrote:" in event.data["full_text"]
    assert "warehouse" not in event.text and event.text.endswith("Sheena")
    assert chatter.answer_all() == []  # one answer per mail of ours


@pytest.mark.parametrize(
    ("language", "charset", "html_only"),
    [("ja", "iso-2022-jp", False), ("fr", "utf-8", True), ("es", "utf-8", False)],
)
def test_customers_write_as_their_mail_clients_do(sim, language, charset, html_only):
    chatter = MailChatter(sim, MAILBOX, seed=3, languages=[language])
    customer = chatter.customers[0]
    photo = ("photo.png", "image/png", b"\x89PNG\r\n\x1a\nrest")
    message_id = chatter.write(customer, customer.persona.script[0], "Subject", attachment=photo)
    raw = sim.inbox(MAILBOX).mails[-1].raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain", "html"))
    assert body is not None and body.get_content_charset() == charset
    assert msg["Date"] is not None and str(msg["Message-ID"]) == message_id
    parsed = wire.parse_message(raw, business_handle=MAILBOX)
    text, attachment = parsed.events
    assert text.sender_name == customer.persona.name
    assert text.text.startswith(customer.persona.script[0])
    assert text.data["html_only"] is html_only
    assert attachment.kind == "image" and attachment.media.content == photo[2]
