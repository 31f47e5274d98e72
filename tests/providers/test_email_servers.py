"""The email provider against real servers: aiosmtpd as the outbound smart host, a private
Dovecot as the customer-facing mailbox (PROTOCOLS.md §D3, §D4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from madoguchi.errors import Invalid
from madoguchi.providers import email_wire as wire
from madoguchi.providers.base import ChannelConfig, InboundMessage, SendError
from madoguchi.providers.email import EmailProvider
from tests.email_servers import SmtpSink, free_port

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
