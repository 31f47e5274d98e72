"""email_wire: real clients' mails parsed, auto-replies and bounces told apart, replies composed
so that they thread (PROTOCOLS.md §D)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madoguchi.providers import email_wire as wire
from madoguchi.providers.base import InboundMessage, PlatformNotice, StatusUpdate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "email"
CHANNEL = "support@example.test"


def parse(name: str, **kwargs) -> wire.ParsedEmail:
    raw = (FIXTURES / name).read_bytes()
    return wire.parse_message(raw, business_handle=CHANNEL, **kwargs)


def main_message(parsed: wire.ParsedEmail) -> InboundMessage:
    assert parsed.category == "message"
    first = parsed.events[0]
    assert isinstance(first, InboundMessage)
    return first


def test_it_keeps_only_the_new_part_of_a_gmail_reply():
    parsed = parse("gmail_reply.eml")
    message = main_message(parsed)
    assert message.text == (
        "Thanks, the parcel arrived today.\nCould you send the invoice as well?\n\nTaro"
    )
    assert "Your order #4411 has shipped" in message.data["full_text"]
    assert "wrote:" not in message.text
    assert message.platform_message_id == (
        "<CAJx8pLm+V9r2Qk1Zb7tXyd3nW0fA1c4sEo=hG6uR5yTq@mail.gmail.com>"
    )
    assert message.sender_handle == "taro.yamada@gmail.example"
    assert message.sender_name == "Taro Yamada"
    assert message.business_handle == CHANNEL
    assert message.timestamp == datetime(2024, 6, 3, 10, 12, 44, tzinfo=UTC)
    assert message.data["html"].startswith("<div><div>Thanks, the parcel arrived today.</div>")


def test_it_exposes_the_threading_headers_and_the_routing_token():
    parsed = parse("gmail_reply.eml")
    message = main_message(parsed)
    assert parsed.thread.in_reply_to == ("<mg.Q7x2Kp.5f1c2a9e0b7d4c3e@example.test>",)
    assert parsed.thread.references == ("<mg.Q7x2Kp.5f1c2a9e0b7d4c3e@example.test>",)
    # The token keeps its case: it is read from the plus-address, not from the lower-cased one.
    assert parsed.thread.routing_token == "Q7x2Kp"
    assert message.data["routing_token"] == "Q7x2Kp"
    assert message.reply_to_platform_id == "<mg.Q7x2Kp.5f1c2a9e0b7d4c3e@example.test>"


def test_it_finds_the_token_in_our_message_id_when_the_reply_went_to_the_plain_address():
    parsed = parse("apple_html_only.eml")
    assert parsed.thread.routing_token == "Zz9"
    # ... but not in a Message-ID of another domain when ours is given.
    parsed = parse("apple_html_only.eml", our_domain="other.example")
    assert parsed.thread.routing_token == ""


def test_it_strips_an_outlook_history_block_and_reads_windows_1252():
    message = main_message(parse("outlook_reply.eml"))
    assert message.text == (
        "Hello,\n\nThe résumé you sent is for the wrong café – please check.\n\n"
        "Regards,\nJosé García"
    )
    assert "Please find your booking confirmation" in message.data["full_text"]
    assert message.sender_name == "José García"  # RFC 2047 encoded display name
    assert message.data["routing_token"] == "Bk42"


def test_it_converts_and_sanitises_an_html_only_mail():
    message = main_message(parse("apple_html_only.eml"))
    assert message.data["html_only"] is True
    assert message.text.startswith("Are you open on Saturday?\n\nClaire")
    assert "We are open" not in message.text  # the blockquote type=cite history
    assert "We are open" in message.data["full_text"]
    html = message.data["html"]
    assert "<b>Saturday</b>" in html
    for dangerous in ("<script", "alert(1)", "onerror", "javascript:", "<style"):
        assert dangerous not in html


def test_it_decodes_iso_2022_jp_and_strips_a_japanese_quote_header():
    parsed = parse("iso2022jp_reply.eml")
    message = main_message(parsed)
    assert (
        message.text
        == "お世話になっております。\n商品が届きました。ありがとうございました。\n\n山田"
    )
    assert message.sender_name == "山田 花子"
    assert parsed.thread.subject == "Re: 発送のお知らせ"
    assert parsed.thread.routing_token == "Jp7"


def test_it_decodes_base64_shift_jis_with_windows_extensions():
    parsed = parse("shift_jis_base64.eml")
    message = main_message(parsed)
    assert message.text == "髙橋です。\n①の商品の在庫はありますか？"
    assert parsed.thread.subject == "在庫の確認"
    assert message.sender_name == ""


def test_it_returns_attachments_as_media_messages_with_their_bytes():
    raw = (FIXTURES / "attachments.eml").read_bytes()
    parsed = wire.parse_message(raw, business_handle=CHANNEL)
    text, pdf, photo = parsed.events
    assert isinstance(text, InboundMessage) and text.kind == "text"
    assert text.text == "The box was damaged, photo and invoice attached."
    assert [a["filename"] for a in text.data["attachments"]] == ["請求書.pdf", "damage.jpg"]
    # The signature logo shown by cid: in the HTML is not a message of its own.
    assert [a["filename"] for a in text.data["inline"]] == ["logo.png"]
    assert isinstance(pdf, InboundMessage) and isinstance(photo, InboundMessage)
    assert (pdf.kind, pdf.text, pdf.platform_message_id) == (
        "document",
        "請求書.pdf",
        "<att-20240606120000-9f8e7d@naver.example>#1",
    )
    assert photo.kind == "image" and photo.media is not None
    assert photo.media.mime_type == "image/jpeg"
    by_id = {a.platform_media_id: a for a in parsed.attachments}
    assert pdf.media is not None
    assert by_id[pdf.media.platform_media_id].content.startswith(b"%PDF-1.4")
    # The core can find the bytes again in the stored raw mail.
    again = wire.extract_attachment(raw, photo.media.platform_media_id)
    assert again.content.startswith(b"\xff\xd8") and again.content.endswith(b"\xff\xd9")
    assert again.sha256 == photo.media.sha256
    with pytest.raises(wire.EmailParseError):
        wire.extract_attachment(raw, "sha256:" + "0" * 64)


def test_it_reports_an_auto_reply_as_a_notice_never_a_message():
    parsed = parse("auto_reply.eml")
    assert parsed.category == "auto_reply"
    assert parsed.reason == "Auto-Submitted: auto-replied"
    (notice,) = parsed.events
    assert isinstance(notice, PlatformNotice)
    assert notice.error.code == wire.AUTO_REPLY_CODE
    assert not any(isinstance(event, InboundMessage) for event in parsed.events)


@pytest.mark.parametrize(
    "extra",
    [
        "X-Autoreply: yes",
        "X-Auto-Response-Suppress: All",
        "Precedence: bulk",
        "Precedence: list",
        "Subject: Out of Office: back on Monday",
        "Subject: 自動返信: 休暇中です",
    ],
)
def test_it_recognises_each_auto_reply_marker(extra):
    raw = (
        "From: someone@customer.example\r\nTo: support@example.test\r\n"
        f"Message-ID: <x1@customer.example>\r\n{extra}\r\n\r\nI am away.\r\n"
    ).encode()
    parsed = wire.parse_message(raw, business_handle=CHANNEL)
    assert parsed.category == "auto_reply"
    assert isinstance(parsed.events[0], PlatformNotice)


def test_it_lets_an_explicit_auto_submitted_no_through():
    raw = (
        b"From: someone@customer.example\r\nTo: support@example.test\r\n"
        b"Auto-Submitted: no\r\nSubject: Question\r\n\r\nHello\r\n"
    )
    assert wire.parse_message(raw, business_handle=CHANNEL).category == "message"


def test_it_turns_a_bounce_of_our_mail_into_a_failed_status():
    parsed = parse("bounce_dsn.eml")
    assert parsed.category == "bounce"
    (status,) = parsed.events
    assert isinstance(status, StatusUpdate)
    assert status.platform_message_id == "<mg.R2d2.1f2e3d4c5b6a7980@example.test>"
    assert status.status == "failed"
    assert status.recipient_handle == "no-such-user@customer.example"
    assert status.error is not None and status.error.code == 550
    assert "User unknown" in status.error.details


def test_it_keeps_a_bounce_of_someone_elses_mail_as_a_notice():
    raw = (FIXTURES / "bounce_dsn.eml").read_bytes()
    parsed = wire.parse_message(raw, business_handle=CHANNEL, our_domain="elsewhere.example")
    assert parsed.category == "bounce"
    (notice,) = parsed.events
    assert isinstance(notice, PlatformNotice) and notice.error.code == wire.BOUNCE_CODE


def test_it_treats_a_mailer_daemon_text_bounce_as_a_bounce():
    raw = (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.test>\r\n"
        b"To: support@example.test\r\nSubject: Delivery Status Notification (Failure)\r\n\r\n"
        b"Your message wasn't delivered.\r\n\r\n----- Original message -----\r\n"
        b"Message-ID: <mg.Ab1.00112233445566778899@example.test>\r\nSubject: hi\r\n"
    )
    parsed = wire.parse_message(raw, business_handle=CHANNEL)
    assert parsed.category == "bounce"
    (status,) = parsed.events
    assert isinstance(status, StatusUpdate)
    assert status.platform_message_id == "<mg.Ab1.00112233445566778899@example.test>"


def test_it_gives_a_mail_without_message_id_a_stable_one():
    raw = b"From: a@customer.example\r\nTo: support@example.test\r\n\r\nHello\r\n"
    first = main_message(wire.parse_message(raw, business_handle=CHANNEL))
    second = main_message(wire.parse_message(raw, business_handle=CHANNEL))
    assert first.platform_message_id == second.platform_message_id
    assert first.platform_message_id.endswith("@madoguchi.invalid>")


def test_it_falls_back_to_the_receive_time_for_a_bad_date():
    raw = b"From: a@customer.example\r\nDate: not a date\r\n\r\nHello\r\n"
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = main_message(wire.parse_message(raw, business_handle=CHANNEL, received_at=when))
    assert message.timestamp == when


def test_it_refuses_bytes_without_a_sender():
    with pytest.raises(wire.EmailParseError):
        wire.parse_message(b"Subject: hi\r\n\r\nbody", business_handle=CHANNEL)


def test_it_composes_a_reply_that_threads():
    thread = wire.Thread(
        token="Q7x2Kp",
        subject="Re: Your order #4411",
        parent_message_id="<c@mail.gmail.com>",
        parent_references=("<a@example.test>", "<b@example.test>"),
    )
    msg = wire.compose_message(
        from_address=CHANNEL,
        from_name="Example Support",
        to="taro.yamada@gmail.example",
        text="こんにちは、請求書を添付します。",
        thread=thread,
        attachments=[wire.OutboundAttachment("invoice.pdf", "application/pdf", b"%PDF-1.4 x")],
    )
    raw = msg.as_bytes()
    again = email.message_from_bytes(raw, policy=email.policy.default)
    assert again["In-Reply-To"] == "<c@mail.gmail.com>"
    assert wire.message_ids(str(again["References"])) == (
        "<a@example.test>",
        "<b@example.test>",
        "<c@mail.gmail.com>",
    )
    assert again["Subject"] == "Re: Your order #4411"  # no second "Re:"
    assert again["Reply-To"] == "Example Support <support+cQ7x2Kp@example.test>"
    message_id = str(again["Message-ID"])
    assert wire.is_our_message_id(message_id, "example.test")
    assert wire.token_of_message_id(message_id) == "Q7x2Kp"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    body = again.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().strip() == "こんにちは、請求書を添付します。"
    (attachment,) = list(again.iter_attachments())
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content() == b"%PDF-1.4 x"


def test_it_builds_references_from_in_reply_to_and_keeps_long_chains_bounded():
    thread = wire.Thread(parent_message_id="<p@x>", parent_in_reply_to=("<gp@x>",))
    assert wire.references_for(thread) == ["<gp@x>", "<p@x>"]
    chain = tuple(f"<{n}@x>" for n in range(50))
    thread = wire.Thread(parent_message_id="<p@x>", parent_references=chain)
    refs = wire.references_for(thread)
    assert len(refs) == wire.MAX_REFERENCES
    assert refs[0] == "<0@x>" and refs[-1] == "<p@x>" and refs[-2] == "<49@x>"
    assert wire.references_for(wire.Thread()) == []


def test_it_reads_back_its_own_composed_mail_as_a_customer_would_answer_it():
    sent = wire.compose_message(
        from_address=CHANNEL, to="c@customer.example", text="Hi", thread=wire.Thread(token="T1")
    )
    answer = (
        f"From: c@customer.example\r\nTo: {sent['Reply-To']}\r\n"
        f"In-Reply-To: {sent['Message-ID']}\r\nReferences: {sent['Message-ID']}\r\n"
        "Subject: Re: hello\r\n\r\nThanks!\r\n"
    ).encode()
    parsed = wire.parse_message(answer, business_handle=CHANNEL)
    assert parsed.thread.routing_token == "T1"
    assert parsed.thread.in_reply_to == (str(sent["Message-ID"]),)


def test_it_refuses_a_token_that_could_break_an_address():
    with pytest.raises(ValueError):
        wire.routing_address(CHANNEL, "a@b")
    with pytest.raises(ValueError):
        wire.make_message_id("example.test", "x y")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_it_never_raises_anything_but_its_parse_error_on_arbitrary_bytes(raw):
    try:
        parsed = wire.parse_message(raw, business_handle=CHANNEL)
    except wire.EmailParseError:
        return
    assert parsed.events


HEADERS = st.sampled_from(
    [
        b"From: a@b.example\r\n",
        b"From: =?utf-8?B?5bGx?= <x@y.example>\r\n",
        b"From: =?bogus-charset?Q?x?= <x@y.example>\r\n",
        b"Content-Type: multipart/mixed; boundary=zz\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=zz\r\n",
        b"Content-Type: text/plain; charset=unknown-8bit\r\n",
        b"Content-Type: text/html; charset=iso-2022-jp\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Message-ID: <\xff\xfe@x>\r\n",
        b"Date: Mon, 99 Foo 20240 25:61:61 +9999\r\n",
        b"Subject: =?iso-2022-jp?B?GyRCJDMbKEI=?=\r\n",
        b"In-Reply-To: <mg..deadbeef@example.test>\r\n",
        b"To: support+cABC@example.test\r\n",
        b"Auto-Submitted: auto-replied\r\n",
    ]
)
PARTS = st.sampled_from(
    [
        b"--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
        b"--zz\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n",
        b"--zz\r\nContent-Type: message/rfc822\r\n\r\nFrom: q@q\r\n\r\nx\r\n",
        b"--zz\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <mg.A.0011223344@x>\r\n",
        b"--zz\r\nContent-Type: application/pdf; name*=UTF-8''%ZZ\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n",
        b"--zz--\r\n",
        b"<html><script>x</script><p>On Mon wrote:</p></html>\r\n",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HEADERS, max_size=8), st.lists(PARTS, max_size=8), st.binary(max_size=200))
def test_it_never_raises_anything_but_its_parse_error_on_mangled_mime(headers, parts, noise):
    raw = b"".join(headers) + b"\r\n" + b"".join(parts) + noise
    try:
        parsed = wire.parse_message(raw, business_handle=CHANNEL)
    except wire.EmailParseError:
        return
    assert parsed.events


def test_it_keeps_long_lines_and_survives_pathological_quote_headers():
    paragraph = "This paragraph is long. " * 20
    text = f"{paragraph}\n\nOn Mon, 3 Jun 2024 at 10:05, A <a@example.test> wrote:\n> old\n"
    assert wire.strip_quoted(text) == paragraph.strip()
    # "On ... " lines that never say "wrote:" made the library's pattern backtrack for
    # minutes; such lines are hidden from it and come back unchanged.
    nasty = ("On Mon " + "x " * 5000 + "\n") * 20
    assert wire.strip_quoted(nasty) == nasty.strip()


def test_it_keeps_a_long_mail_whole_when_it_quotes_nothing():
    text = "a line of text\n" * 10_000  # past the part scanned for quote headers
    assert wire.strip_quoted(text) == text.strip()
