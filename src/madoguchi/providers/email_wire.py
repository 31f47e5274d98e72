"""Email (RFC 5322 / MIME) as pure code: parse inbound mail, compose outbound mail.

No Django, no network. Follows ``/work/shared/platforms/PROTOCOLS.md`` §D:

- ``parse_message`` turns one raw message (bytes, as IMAP ``BODY[]`` gives it) into a
  ``ParsedEmail``: its category (a customer ``"message"``, an ``"auto_reply"`` or a
  ``"bounce"``), the events of ``providers/base.py`` for the core, the threading facts (D1, D2)
  and every attachment with its bytes;
- ``compose_message`` builds the MIME message of an agent's answer with ``Message-ID`` (our
  domain), ``In-Reply-To`` and ``References`` built from the thread (D1), a ``Reply-To`` that
  routes the customer's answer back to its conversation (D2), text and attachments;
- ``extract_attachment`` finds one attachment's bytes again in a stored raw message.

Contracts of ``parse_message``:

- A customer message yields one ``InboundMessage`` (kind ``"text"``, ``platform_message_id`` =
  the ``Message-ID`` with its angle brackets, ``sender_handle`` = the From address lower-cased,
  ``business_handle`` = the channel's address, ``text`` = the new part of the mail with the
  quoted history stripped, never empty) followed by one ``InboundMessage`` per attachment
  (kind image / audio / video / document by MIME type, ``platform_message_id`` =
  ``"<message-id>#<n>"``, ``media.platform_media_id`` = ``"sha256:<hex of the bytes>"``,
  ``media.content`` = the bytes: nothing is fetched later).
  ``thread_hints``: In-Reply-To, then References newest first (an attachment's start with its
  own mail's id); ``conversation_key``: the routing token, "" when none.
  Inline images that the HTML shows by ``cid:`` (signature logos) are listed in
  ``data["inline"]``, not sent as messages.
- ``data`` of the text message: subject, message_id, in_reply_to, references, routing_token,
  from, to, cc, reply_to, full_text (the whole plain text, quotes included), html (sanitised
  with nh3, "" when the mail had none), html_only, attachments, inline.
- An auto-reply yields a ``PlatformNotice`` (code ``AUTO_REPLY_CODE``), never a message.
- A bounce (a ``multipart/report`` delivery-status notification, or mail from MAILER-DAEMON /
  postmaster) that names one of our Message-IDs (``is_our_message_id``) with a failed
  recipient yields a ``StatusUpdate`` "failed" for it; any other bounce (a delay notice, one
  about mail we did not send) yields a ``PlatformNotice`` (code ``BOUNCE_CODE``).
- A mail without a Message-ID gets a stable one derived from its bytes (PROTOCOLS D1: some
  MTAs omit it), so that a second delivery of the same bytes is still a duplicate.
- Only ``EmailParseError`` is raised: for bytes that are not a mail with a sender at all.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.policy
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, formataddr, getaddresses, parseaddr, parsedate_to_datetime
from typing import Any, Literal

import nh3
from inscriptis import get_text
from mailparser_reply import EmailReplyParser
from mailparser_reply.constants import MAIL_LANGUAGES

from madoguchi.providers.base import (
    InboundEvent,
    InboundMessage,
    MediaRef,
    MessageKind,
    PlatformError,
    PlatformNotice,
    StatusUpdate,
)

AUTO_REPLY_CODE = 3834  # RFC 3834, "Recommendations for Automatic Responses to Electronic Mail"
BOUNCE_CODE = 3464  # RFC 3464, "An Extensible Message Format for Delivery Status Notifications"

# References grow with every exchange; keep the root and the most recent ids (D1).
MAX_REFERENCES = 20
# Reply stripping is regular-expression work: a pathological body must not stall the worker.
MAX_REPLY_SCAN = 50_000

Category = Literal["message", "auto_reply", "bounce"]


class EmailParseError(ValueError):
    """The bytes are not a mail that Madoguchi can read (no sender address at all)."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """One attachment of a parsed mail, with its bytes (the core stores them)."""

    part: str  # position in the MIME tree, e.g. "2" or "1.3"
    filename: str
    mime_type: str
    content: bytes = field(repr=False)
    content_id: str = ""
    inline: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def platform_media_id(self) -> str:
        return f"sha256:{self.sha256}"


@dataclass(frozen=True)
class ThreadInfo:
    """What the core needs to route a mail to its conversation (PROTOCOLS D2, in that order:
    the routing token of a plus-address, then In-Reply-To, then References)."""

    message_id: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    routing_token: str = ""
    subject: str = ""


@dataclass(frozen=True)
class ParsedEmail:
    category: Category
    events: tuple[InboundEvent, ...]
    thread: ThreadInfo
    attachments: tuple[Attachment, ...] = ()
    reason: str = ""  # why a mail is an auto-reply or a bounce


@dataclass(frozen=True)
class Thread:
    """The conversation an outbound mail belongs to.

    ``token``: the conversation's routing token (letters and digits), put in the Reply-To
    plus-address and in the Message-ID. ``parent_*``: the mail answered (normally the
    customer's latest), whose ids build In-Reply-To and References."""

    token: str = ""
    subject: str = ""
    parent_message_id: str = ""
    parent_references: tuple[str, ...] = ()
    parent_in_reply_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboundAttachment:
    filename: str
    mime_type: str
    content: bytes = field(repr=False)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

MESSAGE_ID_RE = re.compile(r"<[^<>\s]{1,250}>")
TOKEN_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
# Our own Message-IDs: <mg.{token}.{random}@{domain}> (token may be empty).
OUR_ID_RE = re.compile(r"^<mg\.([A-Za-z0-9]{0,64})\.[0-9a-f]{8,64}@[^<>@\s]+>$")
ROUTING_LOCAL_RE = re.compile(r"^(?P<base>[^+@]+)\+c(?P<token>[A-Za-z0-9]{1,64})$")

# Charsets as mail clients label them, read with the superset that the clients really use.
CHARSET_ALIASES = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "csiso2022jp": "iso2022_jp_ext",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
}


def clean_text(value: str) -> str:
    """A str safe for JSON and every database: no lone surrogates (from undecodable 8-bit
    headers) and no NUL."""
    return (
        value.encode("utf-8", "surrogateescape")
        .decode("utf-8", "replace")
        .encode("utf-8", "replace")
        .decode("utf-8")
        .replace("\x00", "")
    )


def decode_bytes(payload: bytes, charset: str | None) -> str:
    """Text of a MIME part: its declared charset (or the superset clients really use), then
    UTF-8, then Windows-1252, which decodes anything."""
    candidates = []
    if charset:
        name = charset.strip().strip('"').lower()
        candidates.append(CHARSET_ALIASES.get(name, name))
    candidates += ["utf-8", "cp1252"]
    for name in candidates:
        try:
            codecs.lookup(name)
            return clean_text(payload.decode(name))
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return clean_text(payload.decode("utf-8", "replace"))


def header(msg: Message, name: str) -> str:
    """A header's decoded value ("" when absent or unreadable); RFC 2047 words decoded."""
    try:
        value = msg.get(name)
    except (ValueError, LookupError, TypeError, IndexError, AttributeError):
        value = None
    if value is None:
        try:  # the structured parser gave up: read the raw value
            raw = msg.get_all(name, failobj=[]) if hasattr(msg, "get_all") else []
            value = str(raw[0]) if raw else ""
        except (ValueError, LookupError, TypeError, IndexError, AttributeError):
            value = ""
    return clean_text(" ".join(str(value).split()))


def message_ids(value: str) -> tuple[str, ...]:
    """The ``<id>`` tokens of a Message-ID / In-Reply-To / References value, in order, once."""
    seen: dict[str, None] = {}
    for match in MESSAGE_ID_RE.findall(value):
        seen.setdefault(match, None)
    return tuple(seen)


def addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    """(display name, lower-cased address) pairs of an address header."""
    values = []
    for raw in msg.get_all(name, failobj=[]) or []:
        values.append(clean_text(str(raw)))
    result = []
    for display, address in getaddresses(values):
        address = address.strip().lower()
        if "@" in address:
            result.append((display.strip(), address))
    return result


def is_our_message_id(message_id: str, domain: str = "") -> bool:
    """Whether ``message_id`` is one ``make_message_id`` made (for ``domain`` when given)."""
    if not OUR_ID_RE.match(message_id):
        return False
    return not domain or message_id[:-1].lower().endswith("@" + domain.lower())


def token_of_message_id(message_id: str) -> str:
    match = OUR_ID_RE.match(message_id)
    return match.group(1) if match else ""


def routing_token(recipients: Sequence[str], business_handle: str) -> str:
    """The conversation token of a ``local+c<token>@domain`` address of the channel."""
    base_local, _, base_domain = business_handle.lower().partition("@")
    for address in recipients:
        local, _, domain = address.lower().partition("@")
        match = ROUTING_LOCAL_RE.match(local)
        if match and domain == base_domain and match.group("base") == base_local:
            # The token keeps its case from the original address.
            original_local = address.partition("@")[0]
            return original_local.split("+c", 1)[1]
    return ""


def routing_address(business_handle: str, token: str) -> str:
    """``support+c<token>@example.com`` for ``support@example.com`` (the channel's address)."""
    if not token:
        return business_handle
    if not TOKEN_RE.match(token):
        raise ValueError("A routing token is letters and digits only")
    local, _, domain = business_handle.partition("@")
    return f"{local}+c{token}@{domain}"


def make_message_id(domain: str, token: str = "") -> str:
    """A new Message-ID on our domain, carrying the conversation token (D2's second route)."""
    if token and not TOKEN_RE.match(token):
        raise ValueError("A routing token is letters and digits only")
    return f"<mg.{token}.{secrets.token_hex(12)}@{domain}>"


def kind_for_mime(mime_type: str) -> MessageKind:
    family = mime_type.split("/", 1)[0].lower()
    if family in ("image", "audio", "video"):
        return family  # type: ignore[return-value]
    return "document"


# ---------------------------------------------------------------------------------------------
# MIME walking
# ---------------------------------------------------------------------------------------------


@dataclass
class Body:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


def part_bytes(part: Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, LookupError, TypeError, AssertionError):
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def part_filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except (ValueError, LookupError, TypeError, IndexError, AttributeError):
        name = ""
    name = clean_text(str(name)).replace("/", "_").replace("\\", "_").strip()
    return name[:255]


def walk(part: Message, number: str, body: Body) -> None:
    """Collect the inline text bodies and the attachments of ``part`` (depth first)."""
    ctype = part.get_content_type().lower()
    disposition = (part.get_content_disposition() or "").lower()
    if part.is_multipart() and not ctype.startswith("message/"):
        payload = part.get_payload()
        if isinstance(payload, list):
            for index, child in enumerate(payload, start=1):
                if isinstance(child, Message):
                    walk(child, f"{number}.{index}" if number else str(index), body)
        return
    filename = part_filename(part)
    is_text = ctype in ("text/plain", "text/html")
    if is_text and disposition != "attachment" and not filename:
        text = decode_bytes(part_bytes(part), part.get_content_charset())
        (body.plain if ctype == "text/plain" else body.html).append(text)
        return
    if ctype.startswith("message/"):
        # A forwarded mail (message/rfc822) is kept whole, as a file the agent can open.
        inner = part.get_payload()
        content = b""
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            try:
                content = inner[0].as_bytes(policy=email.policy.compat32)
            except (ValueError, LookupError, TypeError, UnicodeError, IndexError):
                content = b""
        else:
            content = part_bytes(part)
        filename = filename or ("forwarded.eml" if ctype == "message/rfc822" else "message.txt")
    else:
        content = part_bytes(part)
    content_id = header(part, "Content-ID")
    body.attachments.append(
        Attachment(
            part=number or "1",
            filename=filename or f"attachment-{number or '1'}",
            mime_type=ctype,
            content=content,
            content_id=content_id.strip("<>"),
            inline=disposition == "inline" or (bool(content_id) and disposition != "attachment"),
        )
    )


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

# Every language mail-parser-reply knows: Madoguchi's customers write in many (ja, en, de, ...).
REPLY_PARSER = EmailReplyParser(languages=list(MAIL_LANGUAGES))


def sanitize_html(html: str) -> str:
    """HTML safe to show in the console: nh3 (ammonia) keeps formatting tags and drops
    scripts, styles, event handlers and dangerous URLs."""
    return nh3.clean(html)


def html_to_text(html: str) -> str:
    """Readable text of (sanitised) HTML: inscriptis lays out blocks, lists and tables."""
    try:
        text = get_text(html)
    except (ValueError, LookupError, TypeError, AssertionError):
        text = nh3.clean(html, tags=set())
    return "\n".join(line.strip() for line in text.splitlines()).strip()


LONG_LINE_RE = re.compile(r"(?m)^[^\n]{160,}$")
PLACEHOLDER_RE = re.compile(r"MADOGUCHILONGLINE(\d+)X")


def strip_quoted(text: str) -> str:
    """The new part of a reply: the history under "On ... wrote:" / "From: ... Sent: ..." /
    "-----Original Message-----" and trailing "> " lines removed.

    Reply stripping is done by ``mail-parser-reply`` (maintained, MIT, multi-language headers
    including Japanese; ``email-reply-parser`` has been unmaintained since 2020 and ``talon``
    since 2017). The whole text is kept when nothing would remain (a mail that is all quote, a
    forward)."""
    if not text.strip():
        return ""
    scanned = text[:MAX_REPLY_SCAN]
    # The library's header patterns backtrack badly on long lines ("On x x x ... " without
    # "wrote:" took minutes): no quote header is that long, so long lines are hidden from it
    # behind placeholders and put back afterwards.
    long_lines: list[str] = []

    def hide(match: re.Match[str]) -> str:
        long_lines.append(match.group(0))
        return f"MADOGUCHILONGLINE{len(long_lines) - 1}X"

    masked = LONG_LINE_RE.sub(hide, scanned)
    try:
        reply = REPLY_PARSER.parse_reply(masked) or ""
    except (RecursionError, ValueError, IndexError):
        reply = masked
    if long_lines:
        reply = PLACEHOLDER_RE.sub(lambda m: long_lines[int(m.group(1))].strip(), reply)
    if len(text) > MAX_REPLY_SCAN and len(reply) >= len(scanned.strip()) * 0.9:
        # No quote header in the part scanned: the new text goes on past it, keep it all.
        reply = text
    lines = reply.replace("\r\n", "\n").split("\n")
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith(">")):
        lines.pop()
    result = "\n".join(lines).strip()
    return result or text.strip()


# ---------------------------------------------------------------------------------------------
# Auto-replies and bounces
# ---------------------------------------------------------------------------------------------

AUTO_SUBJECT_RE = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|autoreply|out of (the )?office|"
    r"vacation|abwesenheit|automatische antwort|r[ée]ponse automatique|"
    r"respuesta autom[áa]tica|自動応答|自動返信|不在)",
    re.IGNORECASE,
)
BOUNCE_SENDER_RE = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-Auto-Response-Suppress")


def auto_reply_reason(msg: Message) -> str:
    """Why this mail was written by a machine (RFC 3834 and the headers that clients use in
    practice), or "" for a person's mail."""
    submitted = header(msg, "Auto-Submitted").lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    for name in AUTO_HEADERS:
        if header(msg, name):
            return f"{name}: {header(msg, name)}"
    precedence = header(msg, "Precedence").lower()
    if precedence in ("bulk", "auto_reply", "list", "junk"):
        return f"Precedence: {precedence}"
    subject = header(msg, "Subject")
    if AUTO_SUBJECT_RE.match(subject):
        return f"Subject: {subject[:80]}"
    return ""


@dataclass(frozen=True)
class Delivery:
    recipient: str
    action: str
    status: str
    diagnostic: str


def dsn_details(msg: Message, raw: bytes) -> tuple[list[Delivery], tuple[str, ...]]:
    """The per-recipient results of a delivery-status notification and the Message-IDs of the
    original mail (from its returned headers, else from any Message-ID line in the bounce)."""
    deliveries: list[Delivery] = []
    original: tuple[str, ...] = ()
    for part in msg.walk():
        ctype = part.get_content_type().lower()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks = part.get_payload()
            if not isinstance(blocks, list):
                parsed = email.message_from_string(str(blocks), policy=email.policy.compat32)
                blocks = [parsed]
            for block in blocks:
                if not isinstance(block, Message):
                    continue
                recipient = header(block, "Final-Recipient") or header(block, "Original-Recipient")
                if not recipient:
                    continue
                recipient = recipient.split(";", 1)[-1].strip().strip("<>").lower()
                deliveries.append(
                    Delivery(
                        recipient=recipient,
                        action=header(block, "Action").lower(),
                        status=header(block, "Status"),
                        diagnostic=header(block, "Diagnostic-Code"),
                    )
                )
        elif ctype in ("text/rfc822-headers", "message/rfc822", "message/global-headers"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = original or message_ids(header(inner[0], "Message-ID"))
            else:
                text = decode_bytes(part_bytes(part), part.get_content_charset())
                headers_msg = email.message_from_string(text, policy=email.policy.compat32)
                original = original or message_ids(header(headers_msg, "Message-ID"))
    if not original:
        # Bounces without a report part quote the original headers in their text.
        found = re.findall(rb"(?im)^message-id:\s*(<[^<>\s]{1,250}>)", raw[:MAX_REPLY_SCAN])
        ids = [item.decode("ascii", "replace") for item in found]
        own = header(msg, "Message-ID")
        original = tuple(item for item in ids if item != own.strip())[:1]
    return deliveries, original


def smtp_code(delivery: Delivery) -> int:
    match = re.search(r"\b([245]\d\d)\b", delivery.diagnostic)
    if match:
        return int(match.group(1))
    return {"5": 550, "4": 450}.get(delivery.status[:1], 550)


def bounce_reason(msg: Message, sender: str) -> str:
    ctype = msg.get_content_type().lower()
    report_type = str(msg.get_param("report-type", "") or "").lower()
    if ctype == "multipart/report" and report_type == "delivery-status":
        return "multipart/report; report-type=delivery-status"
    if BOUNCE_SENDER_RE.match(sender):
        return f"From: {sender}"
    return ""


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def message_time(msg: Message, received_at: datetime | None) -> datetime:
    value = header(msg, "Date")
    if value:
        try:
            stamp = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            stamp = None
        if stamp is not None:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            try:
                return stamp.astimezone(UTC)
            except (OverflowError, ValueError):
                pass
    return (received_at or datetime.now(UTC)).astimezone(UTC)


def parse_message(
    raw: bytes,
    *,
    business_handle: str,
    received_at: datetime | None = None,
    our_domain: str = "",
) -> ParsedEmail:
    """Read one raw mail for the channel whose address is ``business_handle``.

    ``received_at`` (the IMAP INTERNALDATE) stands in for a missing or unreadable Date.
    ``our_domain`` restricts which Message-IDs count as ours in a bounce (any id of our form
    when empty). Raises ``EmailParseError`` only; see the module docstring for the result."""
    if not isinstance(raw, bytes | bytearray):
        raise EmailParseError("A mail is bytes")
    try:
        return parse_checked(bytes(raw), business_handle.lower(), received_at, our_domain)
    except EmailParseError:
        raise
    except (
        ValueError,
        LookupError,
        TypeError,
        IndexError,
        AttributeError,
        UnicodeError,
        RecursionError,
        email.errors.MessageError,
    ) as exc:
        # The stdlib parser is lenient but some malformed headers still raise deep inside it.
        raise EmailParseError(f"Unreadable mail: {type(exc).__name__}") from None


def parse_checked(
    raw: bytes, business_handle: str, received_at: datetime | None, our_domain: str
) -> ParsedEmail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    senders = addresses(msg, "From") or addresses(msg, "Sender") or addresses(msg, "Return-Path")
    if not senders:
        # An empty Return-Path (<>) marks a bounce; its From may still be readable by parseaddr.
        display, address = parseaddr(header(msg, "From"))
        if "@" not in address:
            raise EmailParseError("The mail has no sender address")
        senders = [(display, address.lower())]
    sender_name, sender = senders[0]
    sender_name = sender_name[:255]
    sender = sender[:255]

    message_id = (message_ids(header(msg, "Message-ID")) or ("",))[0]
    if not message_id:
        message_id = f"<{hashlib.sha256(raw).hexdigest()}@madoguchi.invalid>"
    in_reply_to = message_ids(header(msg, "In-Reply-To"))
    references = message_ids(header(msg, "References"))
    to = addresses(msg, "To")
    cc = addresses(msg, "Cc")
    recipients = [address for _name, address in to + cc]
    for name in ("Delivered-To", "X-Original-To"):
        recipients += [address for _n, address in addresses(msg, name)]
    # The original case of the token is in the raw header, not in the lower-cased address.
    raw_recipients = [
        address
        for _n, address in getaddresses(
            [
                clean_text(str(v))
                for n in ("To", "Cc", "Delivered-To", "X-Original-To")
                for v in (msg.get_all(n, failobj=[]) or [])
            ]
        )
    ]
    token = routing_token(raw_recipients or recipients, business_handle)
    if not token:
        for candidate in in_reply_to + references[::-1]:
            if is_our_message_id(candidate, our_domain):
                token = token_of_message_id(candidate)
                if token:
                    break
    subject = header(msg, "Subject")[:998]
    thread = ThreadInfo(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        routing_token=token,
        subject=subject,
    )
    timestamp = message_time(msg, received_at)

    bounce = bounce_reason(msg, sender)
    if bounce:
        deliveries, original = dsn_details(msg, raw)
        failed = [d for d in deliveries if d.action == "failed" or d.status.startswith("5")]
        ours = [mid for mid in original if is_our_message_id(mid, our_domain)]
        if ours and (failed or not deliveries):
            delivery = failed[0] if failed else None
            event: InboundEvent = StatusUpdate(
                platform_message_id=ours[0],
                business_handle=business_handle,
                recipient_handle=delivery.recipient if delivery else "",
                status="failed",
                timestamp=timestamp,
                error=PlatformError(
                    code=smtp_code(delivery) if delivery else 550,
                    title="Mail could not be delivered",
                    details=(delivery.diagnostic or delivery.status) if delivery else subject,
                ),
            )
        else:
            event = PlatformNotice(
                business_handle=business_handle,
                error=PlatformError(
                    code=BOUNCE_CODE, title="Delivery status notification", details=subject
                ),
            )
        return ParsedEmail(category="bounce", events=(event,), thread=thread, reason=bounce)

    auto = auto_reply_reason(msg)
    if auto:
        notice = PlatformNotice(
            business_handle=business_handle,
            error=PlatformError(
                code=AUTO_REPLY_CODE, title=f"Automatic reply from {sender}", details=subject
            ),
        )
        return ParsedEmail(category="auto_reply", events=(notice,), thread=thread, reason=auto)

    body = Body()
    walk(msg, "", body)
    html_raw = "\n".join(body.html)
    html = sanitize_html(html_raw) if html_raw.strip() else ""
    full_text = "\n".join(body.plain).replace("\r\n", "\n").strip()
    html_only = not full_text and bool(html)
    if html_only:
        full_text = html_to_text(html)
    text = strip_quoted(full_text)

    referenced = set(re.findall(r"cid:([^\"'\s>)]+)", html_raw, flags=re.IGNORECASE))
    files = [a for a in body.attachments if not (a.inline and a.content_id in referenced)]
    inline = [a for a in body.attachments if a.inline and a.content_id in referenced]

    def describe(item: Attachment) -> dict[str, Any]:
        return {
            "platform_media_id": item.platform_media_id,
            "filename": item.filename,
            "mime_type": item.mime_type,
            "size": len(item.content),
            "content_id": item.content_id,
        }

    if not text:
        text = ", ".join(a.filename for a in files) or subject or "(empty mail)"
    data: dict[str, Any] = {
        "subject": subject,
        "message_id": message_id,
        "in_reply_to": list(in_reply_to),
        "references": list(references),
        "routing_token": token,
        "from": sender,
        "to": [address for _n, address in to],
        "cc": [address for _n, address in cc],
        "reply_to": [address for _n, address in addresses(msg, "Reply-To")],
        "full_text": full_text,
        "html": html,
        "html_only": html_only,
        "attachments": [describe(a) for a in files],
        "inline": [describe(a) for a in inline],
    }
    # Nearest first: the mail answered, then the thread from its newest end (D2's order).
    hints = tuple(dict.fromkeys(in_reply_to + references[::-1]))
    events: list[InboundEvent] = [
        InboundMessage(
            platform_message_id=message_id,
            business_handle=business_handle,
            sender_handle=sender,
            sender_name=sender_name,
            timestamp=timestamp,
            kind="text",
            text=text,
            reply_to_platform_id=in_reply_to[0] if in_reply_to else None,
            data=data,
            thread_hints=hints,
            conversation_key=token,
        )
    ]
    for index, item in enumerate(files, start=1):
        events.append(
            InboundMessage(
                platform_message_id=f"{message_id}#{index}",
                business_handle=business_handle,
                sender_handle=sender,
                sender_name=sender_name,
                timestamp=timestamp,
                kind=kind_for_mime(item.mime_type),
                text=item.filename,
                media=MediaRef(
                    platform_media_id=item.platform_media_id,
                    mime_type=item.mime_type,
                    sha256=item.sha256,
                    filename=item.filename,
                    content=item.content,
                ),
                data={"email_message_id": message_id, "part": item.part},
                # The attachment goes where its mail goes.
                thread_hints=(message_id, *hints),
                conversation_key=token,
            )
        )
    return ParsedEmail(
        category="message",
        events=tuple(events),
        thread=thread,
        attachments=tuple(body.attachments),
    )


def extract_attachment(raw: bytes, platform_media_id: str) -> Attachment:
    """The attachment of a stored raw mail whose ``platform_media_id`` is given; raises
    ``EmailParseError`` when the mail has no such attachment."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = Body()
        walk(msg, "", body)
    except (ValueError, LookupError, TypeError, IndexError, AttributeError, UnicodeError) as exc:
        raise EmailParseError(f"Unreadable mail: {type(exc).__name__}") from None
    for item in body.attachments:
        if item.platform_media_id == platform_media_id:
            return item
    raise EmailParseError("No such attachment in this mail")


# ---------------------------------------------------------------------------------------------
# Composing
# ---------------------------------------------------------------------------------------------

REPLY_PREFIX_RE = re.compile(r"^\s*(re|aw|sv|antw|返信|回复)\s*:", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    subject = " ".join(subject.split())
    if not subject:
        return ""
    return subject if REPLY_PREFIX_RE.match(subject) else f"Re: {subject}"


def references_for(thread: Thread) -> list[str]:
    """RFC 5322 §3.6.4: the parent's References (or, lacking them, its single In-Reply-To)
    followed by the parent's Message-ID; the root and the latest ids when it grows long."""
    if not thread.parent_message_id:
        return []
    chain = list(thread.parent_references)
    if not chain and len(thread.parent_in_reply_to) == 1:
        chain = list(thread.parent_in_reply_to)
    chain = [item for item in chain if item != thread.parent_message_id]
    chain.append(thread.parent_message_id)
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[-(MAX_REFERENCES - 1) :]
    return chain


def compose_message(
    *,
    from_address: str,
    to: str,
    text: str,
    thread: Thread,
    from_name: str = "",
    domain: str = "",
    attachments: Sequence[OutboundAttachment] = (),
    now: datetime | None = None,
) -> EmailMessage:
    """The MIME message of an agent's answer. Its ``Message-ID`` is new, on ``domain`` (the
    channel address's domain when empty), and carries ``thread.token``; ``Reply-To`` is the
    channel's plus-address for the token, so the customer's answer finds its conversation even
    when their client drops the threading headers."""
    domain = domain or from_address.rpartition("@")[2]
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = formataddr((from_name, from_address)) if from_name else from_address
    msg["To"] = to
    msg["Subject"] = reply_subject(thread.subject) if thread.parent_message_id else thread.subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = make_message_id(domain, thread.token)
    if thread.token:
        address = routing_address(from_address, thread.token)
        msg["Reply-To"] = formataddr((from_name, address)) if from_name else address
    if thread.parent_message_id:
        msg["In-Reply-To"] = thread.parent_message_id
        msg["References"] = " ".join(references_for(thread))
    msg.set_content(text)
    for item in attachments:
        maintype, _, subtype = (item.mime_type or "application/octet-stream").partition("/")
        msg.add_attachment(
            item.content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=item.filename,
        )
    return msg
