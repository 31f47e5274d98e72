"""The Facebook Messenger Platform wire format, as pure code (no Django, no network).

This module implements, against ``/work/shared/platforms/PROTOCOLS.md`` section C:

- validating models of the page webhook (C3: ``object: "page"``, ``entry[].messaging[]``) and
  ``parse_webhook``, which turns one delivery into the plain events of ``providers/base.py``:

  ============================  ==============================================================
  messaging event               event(s)
  ============================  ==============================================================
  ``message``                   ``InboundMessage`` (one per attachment, see below)
  ``message`` + ``is_echo``     dropped when ``app_id`` is ours, else ``OutboundEcho``
  ``postback``                  ``InboundMessage`` of kind ``button`` (title, payload)
  ``reaction``                  ``InboundMessage`` of kind ``reaction`` (a reaction opens the
                                window, C5, so the core must see it)
  ``delivery``                  ``ReceiptWatermark("delivered")`` and, for each listed mid,
                                a ``StatusUpdate("delivered")``
  ``read``                      ``ReceiptWatermark("read")``
  anything else                 nothing (referral, optin, handover, standby, edits: reported
                                as ``ignored`` by ``parse_webhook_report``)
  ============================  ==============================================================

- the Send API bodies (C5): ``messaging_type: RESPONSE`` inside the standard window,
  ``MESSAGE_TAG`` + ``tag: HUMAN_AGENT`` when the caller passes ``tag="HUMAN_AGENT"``,
  ``reply_to``, attachments by URL, by ``attachment_id`` or uploaded with the request
  (multipart ``filedata``), and ``sender_action`` bodies;
- the classification of Send API errors (C6) into permanent or transient ones, keyed on the
  (code, subcode) pair, and a short agent-friendly reason for each;
- the User Profile API's answer (``GET /{PSID}?fields=first_name,last_name,profile_pic``,
  Meta's "User Profile API" page, updated Mar 18 2026,
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/identity/user-profile)
  read into a ``ContactProfile`` by ``parse_profile``; its errors have the Graph shape and go
  through ``classify_error`` like a send's.

Own echoes. Messenger echoes every message the page sends (``message_echoes``) with
``is_echo: true`` and the ``app_id`` (a JSON number) of the app that sent it; sender and
recipient are swapped (sender = page). Like Chatwoot, an echo whose ``app_id`` equals our own
app id (``own_app_id``: the channel's ``options["app_id"]``, which ``MessengerProvider.
check_credentials`` learns from the platform) is dropped; every other echo (the Page inbox,
another tool) becomes an ``OutboundEcho``. When our app id is not known every echo is kept: the
core's unique (channel, platform message id) constraint then meets our own sends' mids.

Several attachments. A person can send several photos in one message; each attachment becomes
its own ``InboundMessage`` (the first keeps the ``mid``, the others get ``mid#1``, ``mid#2``...,
stable across redeliveries) so that no media is lost. Text sent with attachments is the first
one's caption. Shared links (``fallback``) stay in a text message (``data["links"]``).

Media. Messenger webhooks carry no media id, only a pre-signed ``payload.url`` on Meta's CDN:
``MediaRef.url`` holds it and ``MediaRef.platform_media_id`` is ``attachment_id`` when given,
else the URL itself. Which hosts may be fetched is the provider's rule (``messenger.py``).

Leniency, as for WhatsApp: Meta redelivers anything not answered 200, so one odd item never
sinks its siblings. Containers are validated as lists of raw items and every item on its own;
a message that cannot be read but has a ``mid`` becomes ``"unsupported"``; anything else that
cannot be read is reported as a ``SkippedItem``. Only a body that is not a page webhook at all
raises ``WebhookPayloadError``.

``InboundMessage.data`` per kind (JSON-safe; absent keys mean "not sent"):

============  ===========================================================================
kind          data keys
============  ===========================================================================
text          quick_reply_payload, links ([{title, url}])
image, ...    attachment_type, attachment_id, sticker_id, reel_video_id, title
location      latitude, longitude, name, url
button        payload, title (a postback)
reaction      emoji, reaction, removed
template      attachment_type, payload (echoes of structured messages)
unsupported   unsupported_type, reason ("unknown_type" | "invalid")
============  ===========================================================================
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import Field, PlainValidator, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from madoguchi.providers.base import (
    ContactProfile,
    InboundEvent,
    InboundMessage,
    MediaRef,
    MessageKind,
    OutboundEcho,
    PlatformError,
    ReceiptWatermark,
    SendError,
    StatusUpdate,
)
from madoguchi.providers.payloads import (
    LOCAL_ERROR_CODE,
    Transient,
    WireModel,
    http_error,
    load_json,
    local_reason,
)
from madoguchi.providers.payloads import network_error as network_error  # re-exported
from madoguchi.providers.payloads import summarize as _summarize
from madoguchi.providers.payloads import timeout_error as timeout_error  # re-exported

logger = logging.getLogger(__name__)

PAGE_OBJECT = "page"
HUMAN_AGENT = "HUMAN_AGENT"
# C5: "Effective April 27th, 2026, all API requests containing the Message Tags
# CONFIRMED_EVENT_UPDATE, ACCOUNT_UPDATE, and POST_PURCHASE_UPDATE will receive error code 100."
DEPRECATED_TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE"})
MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen"})
# "Must be UTF-8 and has a 2000 character limit."
MAX_TEXT_LENGTH = 2000
# Our media kinds and the Send API attachment type that carries each.
ATTACHMENT_TYPES: dict[str, str] = {
    "image": "image",
    "sticker": "image",
    "video": "video",
    "audio": "audio",
    "document": "file",
}

# ---------------------------------------------------------------------------------------------
# Errors raised by the parser and the body builders
# ---------------------------------------------------------------------------------------------


class WebhookPayloadError(ValueError):
    """The body is not a Messenger page webhook payload at all.

    ``code`` is stable and meant for logs and metrics: ``"malformed_json"`` (not UTF-8 JSON, or
    JSON with NaN/Infinity or absurd nesting), ``"invalid_payload"`` (JSON, but not the envelope
    ``{"object": "page", "entry": [...]}``), ``"unexpected_object"`` (another product's
    envelope: ``"instagram"``, ``"whatsapp_business_account"``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UnsupportedTag(ValueError):
    """A send asked for a message tag other than HUMAN_AGENT (the others are deprecated or not
    meant for a human inbox, C5)."""


# ---------------------------------------------------------------------------------------------
# Validating models of the page webhook (C3)
# ---------------------------------------------------------------------------------------------


_MS_DIGITS = re.compile(r"[0-9]{1,15}")


def unix_ms_to_utc(value: object) -> datetime:
    """A Messenger timestamp (Unix milliseconds, a JSON number) as an aware UTC datetime.

    Digit strings and integral floats are accepted too. Raises ``ValueError`` (reported by
    pydantic as a validation error) for anything else or out of range.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be Unix milliseconds")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        millis = value
    elif isinstance(value, str) and _MS_DIGITS.fullmatch(value):
        millis = int(value)
    else:
        raise ValueError("timestamp must be Unix milliseconds")
    if not 0 <= millis < 10**14:
        raise ValueError("timestamp out of range")
    seconds, rest = divmod(millis, 1000)
    try:
        return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(milliseconds=rest)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError("timestamp out of range") from exc


def utc_to_unix_ms(moment: datetime) -> int:
    """The inverse of ``unix_ms_to_utc`` for aware datetimes (sub-millisecond parts dropped)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def normalize_app_id(value: object) -> str:
    """An app id as decimal digits, whatever JSON made of it (number, string, integral float);
    "" when it is not one. Meta's app ids exceed 2**53, so they are compared as text."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else ""
    text = str(value).strip()
    return text if text.isascii() and text.isdigit() else ""


UnixMs = Annotated[datetime, PlainValidator(unix_ms_to_utc)]
AppId = Annotated[str, PlainValidator(normalize_app_id)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
RawItems = list[Any] | None


class MsParty(WireModel):
    id: NonEmptyStr


class MsCoordinates(WireModel):
    lat: float
    long: float


class MsAttachmentPayload(WireModel):
    url: str = ""
    title: str = ""
    attachment_id: str = ""
    sticker_id: str = ""
    reel_video_id: str = ""
    coordinates: MsCoordinates | None = None


class MsAttachment(WireModel):
    """An entry of ``message.attachments[]``. ``fallback`` (a shared link) has ``payload:
    null`` and the link as ``title`` / ``URL`` (or ``url``) beside it."""

    type: NonEmptyStr
    payload: MsAttachmentPayload | None = None
    title: str = ""
    url: str = ""
    url_upper: str = Field(default="", alias="URL")


class MsQuickReply(WireModel):
    payload: str = ""


class MsReplyTo(WireModel):
    mid: str = ""


class MsMessage(WireModel):
    """``message`` of a messaging event (C3 and [CODE jgorset])."""

    mid: NonEmptyStr
    text: str | None = None
    is_echo: bool = False
    app_id: AppId = ""
    metadata: str = ""
    quick_reply: MsQuickReply | None = None
    reply_to: MsReplyTo | None = None
    sticker_id: str = ""
    attachments: RawItems = None


class MsPostback(WireModel):
    title: str = ""
    payload: str = ""
    mid: str = ""


class MsDelivery(WireModel):
    watermark: UnixMs
    mids: list[str] = Field(default_factory=list)


class MsRead(WireModel):
    watermark: UnixMs


class MsReaction(WireModel):
    mid: NonEmptyStr
    action: str = "react"
    emoji: str = ""
    reaction: str = ""


class MsEvent(WireModel):
    """One item of ``entry[].messaging[]``: ``sender``, ``recipient`` and (nearly always)
    ``timestamp`` (Unix ms), plus one event body kept raw until its type is known."""

    sender: MsParty
    recipient: MsParty
    timestamp: UnixMs | None = None
    message: dict[str, Any] | None = None
    postback: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None
    read: dict[str, Any] | None = None
    reaction: dict[str, Any] | None = None


class MsEntry(WireModel):
    id: NonEmptyStr  # the page id
    time: UnixMs | None = None
    messaging: RawItems = None


class MsEnvelope(WireModel):
    object: str
    entry: list[Any]


# ---------------------------------------------------------------------------------------------
# parse_webhook
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedItem:
    """An item that produced no event; ``path`` locates it (``entry[0].messaging[2]``),
    ``reason`` is short and contains no payload content (safe to log)."""

    path: str
    reason: str


@dataclass(frozen=True)
class WebhookParse:
    """What one delivery yielded: its events in payload order, the items that could not be read
    (``skipped``), the event types deliberately not handled (``ignored``) and how many echoes of
    our own sends were dropped."""

    events: list[InboundEvent]
    skipped: list[SkippedItem]
    ignored: list[SkippedItem] = field(default_factory=list)
    own_echoes: int = 0


# The event bodies this module reads, in the order they are looked for.
_EVENT_TYPES = ("message", "postback", "reaction", "delivery", "read")


def parse_webhook(body: bytes, *, own_app_id: str = "") -> list[InboundEvent]:
    """Parse one webhook delivery (the raw request bytes) into events, in payload order.

    ``own_app_id``: our app's id; echoes sent by it are dropped. Unreadable items are skipped
    and logged at WARNING (``parse_webhook_report`` returns them). Raises
    ``WebhookPayloadError`` only when the body is not a page webhook at all.
    """
    result = parse_webhook_report(body, own_app_id=own_app_id)
    for item in result.skipped:
        logger.warning("messenger webhook: skipped %s (%s)", item.path, item.reason)
    return result.events


def check_envelope(body: bytes) -> None:
    """The webhook hot path's check before the body is stored: JSON, ``object: "page"`` and an
    ``entry`` list of objects. Raises WebhookPayloadError like ``parse_webhook``."""
    _checked_document(body)


def _checked_document(body: bytes) -> dict[str, Any]:
    document = load_json(body, WebhookPayloadError)
    if not isinstance(document, dict):
        raise WebhookPayloadError("invalid_payload", "the body is not a JSON object")
    if document.get("object") != PAGE_OBJECT:
        raise WebhookPayloadError("unexpected_object", f"object is not {PAGE_OBJECT!r}")
    entries = document.get("entry")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise WebhookPayloadError("invalid_payload", "entry must be a list of objects")
    return document


def parse_webhook_report(body: bytes, *, own_app_id: str = "") -> WebhookParse:
    """Like ``parse_webhook``, returning the skipped and ignored items instead of logging."""
    envelope = MsEnvelope.model_validate(_checked_document(body))
    own = normalize_app_id(own_app_id)
    result = WebhookParse(events=[], skipped=[], ignored=[])
    own_echoes = 0
    for i, raw_entry in enumerate(envelope.entry):
        path = f"entry[{i}]"
        try:
            entry = MsEntry.model_validate(raw_entry)
        except PydanticValidationError as exc:
            result.skipped.append(SkippedItem(path, _summarize(exc)))
            continue
        if entry.messaging is None:
            # ``standby`` (handover protocol) or ``changes`` (feed): not for the inbox.
            other = sorted(k for k in raw_entry if k not in ("id", "time"))
            result.ignored.append(SkippedItem(path, "no messaging: " + ",".join(other)))
            continue
        for j, raw_event in enumerate(entry.messaging):
            item_path = f"{path}.messaging[{j}]"
            try:
                own_echoes += _parse_event(entry, raw_event, item_path, own, result)
            except _Unreadable as exc:
                result.skipped.append(SkippedItem(item_path, exc.reason))
            except Exception as exc:  # a bug must not make Meta redeliver the whole batch
                logger.exception("messenger webhook: internal error on %s", item_path)
                result.skipped.append(
                    SkippedItem(item_path, f"internal error: {type(exc).__name__}")
                )
    return replace(result, own_echoes=own_echoes)


class _Unreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_event(entry: MsEntry, raw: Any, path: str, own_app_id: str, result: WebhookParse) -> int:
    """Append the events of one messaging item; returns 1 for a dropped own echo, else 0."""
    try:
        event = MsEvent.model_validate(raw)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    kind = next((name for name in _EVENT_TYPES if getattr(event, name) is not None), None)
    if kind is None:
        other = sorted(k for k in raw if k not in ("sender", "recipient", "timestamp"))
        result.ignored.append(SkippedItem(path, "unhandled event: " + ",".join(other)))
        return 0
    if kind == "delivery":
        result.events.extend(_delivery_events(event))
        return 0
    if kind == "read":
        result.events.append(_read_event(event))
        return 0
    timestamp = event.timestamp or entry.time
    if timestamp is None:
        raise _Unreadable("no timestamp")
    if kind == "postback":
        result.events.append(_postback_event(event, timestamp))
    elif kind == "reaction":
        result.events.append(_reaction_event(event, timestamp))
    else:
        return _message_events(event, timestamp, own_app_id, result.events)
    return 0


def _delivery_events(event: MsEvent) -> list[InboundEvent]:
    try:
        delivery = MsDelivery.model_validate(event.delivery)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    # sender = the person, recipient = the page (C3).
    page, person = event.recipient.id, event.sender.id
    events: list[InboundEvent] = [
        ReceiptWatermark(
            business_handle=page,
            recipient_handle=person,
            status="delivered",
            watermark=delivery.watermark,
        )
    ]
    for mid in dict.fromkeys(m for m in delivery.mids if m):
        events.append(
            StatusUpdate(
                platform_message_id=mid,
                business_handle=page,
                recipient_handle=person,
                status="delivered",
                timestamp=event.timestamp or delivery.watermark,
            )
        )
    return events


def _read_event(event: MsEvent) -> ReceiptWatermark:
    try:
        read = MsRead.model_validate(event.read)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    return ReceiptWatermark(
        business_handle=event.recipient.id,
        recipient_handle=event.sender.id,
        status="read",
        watermark=read.watermark,
    )


def _postback_event(event: MsEvent, timestamp: datetime) -> InboundMessage:
    try:
        postback = MsPostback.model_validate(event.postback)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    # A postback has a mid only in some versions ([CODE chatwoot]); without one, the sender and
    # the platform timestamp identify it, and stay the same when Meta redelivers it.
    message_id = postback.mid or f"postback.{event.sender.id}.{utc_to_unix_ms(timestamp)}"
    return InboundMessage(
        platform_message_id=message_id,
        business_handle=event.recipient.id,
        sender_handle=event.sender.id,
        sender_name="",
        timestamp=timestamp,
        kind="button",
        text=postback.title or postback.payload or "[Button]",
        data={"payload": postback.payload, "title": postback.title},
    )


def _reaction_event(event: MsEvent, timestamp: datetime) -> InboundMessage:
    try:
        reaction = MsReaction.model_validate(event.reaction)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    removed = reaction.action.lower() == "unreact"
    emoji = "" if removed else reaction.emoji
    millis = utc_to_unix_ms(timestamp)
    return InboundMessage(
        platform_message_id=f"reaction.{reaction.mid}.{event.sender.id}.{millis}",
        business_handle=event.recipient.id,
        sender_handle=event.sender.id,
        sender_name="",
        timestamp=timestamp,
        kind="reaction",
        text=emoji or ("Reaction removed" if removed else reaction.reaction or "Reaction"),
        reaction_to_platform_id=reaction.mid,
        data={"emoji": emoji, "reaction": reaction.reaction, "removed": removed},
    )


@dataclass
class _Part:
    kind: MessageKind
    text: str
    media: MediaRef | None = None
    data: dict[str, Any] = field(default_factory=dict)


_PLACEHOLDERS: dict[str, str] = {
    "text": "[Empty message]",
    "image": "[Image]",
    "audio": "[Audio]",
    "video": "[Video]",
    "document": "[Document]",
    "sticker": "[Sticker]",
    "location": "[Location]",
    "template": "[Template]",
    "unsupported": "[Unsupported message type]",
}


def _message_events(
    event: MsEvent, timestamp: datetime, own_app_id: str, events: list[InboundEvent]
) -> int:
    raw = event.message or {}
    try:
        message = MsMessage.model_validate(raw)
    except PydanticValidationError as exc:
        mid = raw.get("mid")
        if not isinstance(mid, str) or not mid or raw.get("is_echo") is True:
            raise _Unreadable(_summarize(exc)) from None
        # A message we cannot read is kept (as unsupported) rather than lost.
        parts = [_Part("unsupported", "[Unreadable message]", data={"reason": "invalid"})]
        events.append(_inbound(event, timestamp, mid, parts[0], None))
        return 0
    if message.is_echo:
        if own_app_id and message.app_id == own_app_id:
            return 1
        for index, part in enumerate(_render(message)):
            events.append(
                OutboundEcho(
                    platform_message_id=_part_id(message.mid, index),
                    # An echo goes from the page (sender) to the person (recipient).
                    business_handle=event.sender.id,
                    recipient_handle=event.recipient.id,
                    timestamp=timestamp,
                    kind=part.kind,
                    text=part.text,
                    media=part.media,
                )
            )
        return 0
    reply_to = message.reply_to.mid if message.reply_to and message.reply_to.mid else None
    for index, part in enumerate(_render(message)):
        if message.quick_reply is not None:
            part.data["quick_reply_payload"] = message.quick_reply.payload
        mid = _part_id(message.mid, index)
        events.append(_inbound(event, timestamp, mid, part, reply_to if index == 0 else None))
    return 0


def _part_id(mid: str, index: int) -> str:
    return mid if index == 0 else f"{mid}#{index}"


def _inbound(
    event: MsEvent, timestamp: datetime, mid: str, part: _Part, reply_to: str | None
) -> InboundMessage:
    return InboundMessage(
        platform_message_id=mid,
        business_handle=event.recipient.id,
        sender_handle=event.sender.id,
        sender_name="",  # page webhooks carry no names
        timestamp=timestamp,
        kind=part.kind,
        text=part.text,
        media=part.media,
        reply_to_platform_id=reply_to,
        data=part.data,
    )


def _render(message: MsMessage) -> list[_Part]:
    """The parts of one message: one per media/location/unsupported attachment, or one text
    part. Never empty; every part has a readable ``text``."""
    parts: list[_Part] = []
    links: list[dict[str, str]] = []
    for raw in message.attachments or []:
        try:
            attachment = MsAttachment.model_validate(raw)
        except PydanticValidationError:
            parts.append(_Part("unsupported", "", data={"reason": "invalid"}))
            continue
        if attachment.type == "fallback":
            payload = attachment.payload
            url = attachment.url or attachment.url_upper or (payload.url if payload else "")
            title = attachment.title or (payload.title if payload else "")
            links.append({"title": title, "url": url})
            continue
        parts.append(_render_attachment(attachment, message.sticker_id))
    text = message.text or ""
    lines = (" ".join(p for p in (link["title"], link["url"]) if p) for link in links)
    link_text = "\n".join(line for line in lines if line)
    if not parts:
        data: dict[str, Any] = {"links": links} if links else {}
        if text and link_text and all(link["url"] in text for link in links if link["url"]):
            link_text = ""
        body = "\n".join(p for p in (text, link_text) if p)
        return [_Part("text", body if body.strip() else _PLACEHOLDERS["text"], data=data)]
    if links:
        parts[0].data["links"] = links
    if text:
        # Text sent together with attachments reads as the first one's caption.
        first = parts[0]
        first.text = text
        if first.media is not None:
            first.media = replace(first.media, caption=text)
    for part in parts:
        if not part.text.strip():
            part.text = _PLACEHOLDERS.get(part.kind, "[Message]")
    return parts


_MEDIA_KINDS: dict[str, MessageKind] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "file": "document",
    "reel": "video",
    "ig_reel": "video",
}


def _render_attachment(attachment: MsAttachment, sticker_id: str) -> _Part:
    payload = attachment.payload or MsAttachmentPayload()
    kind_name = attachment.type
    if kind_name == "location":
        coordinates = payload.coordinates
        if coordinates is None:
            return _Part(
                "unsupported", "", data={"unsupported_type": "location", "reason": "invalid"}
            )
        name = attachment.title or payload.title
        where = f"({_coordinate(coordinates.lat)}, {_coordinate(coordinates.long)})"
        data: dict[str, Any] = {"latitude": coordinates.lat, "longitude": coordinates.long}
        if name:
            data["name"] = name
        if payload.url or attachment.url:
            data["url"] = payload.url or attachment.url
        return _Part("location", f"📍 {name} {where}" if name else f"📍 {where}", data=data)
    if kind_name == "template":
        # Structured messages (generic, button, receipt templates) sent by a bot: echoes only.
        title = attachment.title or payload.title
        return _Part(
            "template",
            f"[Template: {title}]" if title else "",
            data={
                "attachment_type": kind_name,
                "payload": payload.model_dump(exclude_defaults=True),
            },
        )
    kind = _MEDIA_KINDS.get(kind_name)
    if kind is None:
        return _Part(
            "unsupported",
            f"[Unsupported message type: {kind_name}]",
            data={"unsupported_type": kind_name, "reason": "unknown_type"},
        )
    url = payload.url or attachment.url
    media_id = payload.attachment_id or url
    if not media_id:
        return _Part("unsupported", "", data={"unsupported_type": kind_name, "reason": "invalid"})
    data = {"attachment_type": kind_name}
    sticker = payload.sticker_id or (sticker_id if kind_name == "image" else "")
    if sticker:
        kind = "sticker"
        data["sticker_id"] = sticker
    for key in ("attachment_id", "reel_video_id", "title"):
        if getattr(payload, key):
            data[key] = getattr(payload, key)
    media = MediaRef(platform_media_id=media_id, url=url, filename=_filename(url, kind))
    return _Part(
        kind, payload.title if kind == "video" and kind_name != "video" else "", media, data
    )


def _filename(url: str, kind: str) -> str:
    """A file's name from its CDN URL path, for documents only (the rest are named by us)."""
    if kind != "document" or not url:
        return ""
    path = url.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1][:255] if "/" in path else ""


def _coordinate(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------
# Send API bodies (C5)
# ---------------------------------------------------------------------------------------------


def messaging_fields(tag: str | None) -> dict[str, str]:
    """``messaging_type`` (and ``tag``) of a send: RESPONSE inside the standard window,
    MESSAGE_TAG + HUMAN_AGENT when the window rule asked for the tag. Raises UnsupportedTag for
    any other tag."""
    if tag is None:
        return {"messaging_type": "RESPONSE"}
    if tag == HUMAN_AGENT:
        return {"messaging_type": "MESSAGE_TAG", "tag": HUMAN_AGENT}
    raise UnsupportedTag(f"message tag {tag!r} is not supported (only {HUMAN_AGENT})")


def text_body(
    psid: str, text: str, *, reply_to: str | None = None, tag: str | None = None
) -> dict[str, Any]:
    """``POST /{page-id}/messages`` body of a text message. Raises ValueError for an empty text
    or one longer than ``MAX_TEXT_LENGTH`` characters, UnsupportedTag for a tag but HUMAN_AGENT."""
    if not text.strip():
        raise ValueError("a text message needs text")
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"a text message has at most {MAX_TEXT_LENGTH} characters")
    body: dict[str, Any] = {"recipient": {"id": psid}, **messaging_fields(tag)}
    body["message"] = {"text": text}
    if reply_to:
        body["reply_to"] = {"mid": reply_to}
    return body


def attachment_type(kind: str) -> str:
    """The Send API attachment type for one of our media kinds; ValueError for other kinds."""
    try:
        return ATTACHMENT_TYPES[kind]
    except KeyError:
        raise ValueError(f"Messenger cannot send a {kind!r} attachment") from None


def attachment_body(
    psid: str,
    kind: str,
    *,
    url: str = "",
    attachment_id: str = "",
    is_reusable: bool = False,
    reply_to: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """The body of an attachment send: by ``url`` (Meta downloads it), by a saved
    ``attachment_id``, or neither when the file travels in the same multipart request
    (``filedata``, see ``upload_form``). Raises ValueError / UnsupportedTag."""
    payload: dict[str, Any]
    if url and attachment_id:
        raise ValueError("give a url or an attachment_id, not both")
    if attachment_id:
        payload = {"attachment_id": attachment_id}
    elif url:
        payload = {"url": url, "is_reusable": is_reusable}
    else:
        payload = {"is_reusable": is_reusable}
    body: dict[str, Any] = {"recipient": {"id": psid}, **messaging_fields(tag)}
    body["message"] = {"attachment": {"type": attachment_type(kind), "payload": payload}}
    if reply_to:
        body["reply_to"] = {"mid": reply_to}
    return body


def upload_form(
    psid: str, kind: str, *, reply_to: str | None = None, tag: str | None = None
) -> dict[str, str]:
    """The form fields of a multipart send that uploads its file as ``filedata``: every
    top-level field of ``attachment_body`` encoded as JSON text, as the Graph API reads forms."""
    body = attachment_body(psid, kind, reply_to=reply_to, tag=tag)
    return {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in body.items()
    }


def sender_action_body(psid: str, action: str) -> dict[str, Any]:
    """``{"recipient": {"id"}, "sender_action"}``: mark_seen, typing_on or typing_off (sent
    alone, never with a message). ValueError for another action."""
    if action not in SENDER_ACTIONS:
        raise ValueError(f"unknown sender_action {action!r}")
    return {"recipient": {"id": psid}, "sender_action": action}


# ---------------------------------------------------------------------------------------------
# User Profile API
# ---------------------------------------------------------------------------------------------

# The fields the User Profile page documents for every app (locale, timezone and gender need
# permissions granted by App Review, so they are not asked for: an ungranted field could fail
# the whole request).
PROFILE_FIELDS = "first_name,last_name,profile_pic"
MAX_PROFILE_NAME = 200

# Scripts whose names read family name first (田中 花子, not 花子 田中): kana, Han, Hangul.
_EAST_ASIAN_NAME = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
)


class _Profile(WireModel):
    id: str = ""
    first_name: str = ""
    last_name: str = ""
    profile_pic: str = ""


def profile_name(first_name: str, last_name: str) -> str:
    """The name as people read it: "First Last", or "Family Given" with a space when both
    parts are written in an East Asian script (田中 花子)."""
    first, last = " ".join(first_name.split()), " ".join(last_name.split())
    if first and last and _EAST_ASIAN_NAME.fullmatch(first + last):
        return f"{last} {first}"
    return " ".join(part for part in (first, last) if part)


def parse_profile(payload: Any) -> ContactProfile | None:
    """The ``ContactProfile`` in a User Profile API answer (``{"first_name", "last_name",
    "profile_pic", "id"}``); None when it carries no name or is not such an answer. The
    picture is kept only as an http(s) URL."""
    try:
        profile = _Profile.model_validate(payload)
    except PydanticValidationError:
        return None
    name = profile_name(profile.first_name, profile.last_name).replace("\x00", "")
    if not name:
        return None
    pic = profile.profile_pic if profile.profile_pic.startswith(("https://", "http://")) else ""
    return ContactProfile(name=name[:MAX_PROFILE_NAME], avatar_url=pic)


# ---------------------------------------------------------------------------------------------
# Error classification (C6)
# ---------------------------------------------------------------------------------------------

# "Outside the allowed window": Messenger's (10, 2018278) and Instagram's (10, 2534022).
WINDOW_ERRORS = frozenset({(10, 2018278), (10, 2534022)})
# "This person isn't available right now" (blocked the page, deactivated): 551, and subcode
# 1545041 which a newer Meta page labels "Messaging window closed" (C6).
UNAVAILABLE_CODE = 551
UNAVAILABLE_SUBCODE = 1545041
TEMPORARY_SUBCODE = 2018344


def is_window_error(error: PlatformError) -> bool:
    """True for "sent outside of allowed window" (keyed on the code and subcode pair)."""
    return (error.code, error.subcode) in WINDOW_ERRORS


def is_unavailable_error(error: PlatformError) -> bool:
    """True when the person cannot be messaged at all right now (551 / 1545041)."""
    return error.code == UNAVAILABLE_CODE or error.subcode == UNAVAILABLE_SUBCODE


# Codes a retry can fix. Rate limits hold the whole page ("number": Messenger has no finer
# limit the platform reports); everything unknown is permanent, because retrying a send can
# double it while a wrongly permanent error only costs a manual resend.
_TRANSIENT: dict[int, Transient] = {
    613: Transient("number", 30.0),  # Send API rate limit
    4: Transient("number", 60.0),  # app-wide call limit
    17: Transient("number", 60.0),  # user-level call limit
    32: Transient("number", 60.0),  # page-level call limit
    1: Transient("request"),  # unknown Graph error
    2: Transient("request"),  # service temporarily unavailable
    1200: Transient("request"),  # temporary send message failure
}

_REASONS: dict[int, str] = {
    LOCAL_ERROR_CODE: "Messenger could not be reached; the message will be retried.",
    1: "Messenger reported an unknown error; the message will be retried.",
    2: "Messenger is temporarily unavailable; the message will be retried.",
    4: "The app reached Messenger's API call limit; the message will be retried.",
    10: "The page lacks the permission to send this message (the Human Agent permission for "
    "replies after 24 hours); an admin must check the app's permissions.",
    17: "Messenger's call limit was reached; the message will be retried.",
    32: "The page reached Messenger's call limit; the message will be retried.",
    100: "Messenger refused the request as invalid (a wrong parameter or a message tag that is "
    "no longer allowed).",
    190: "The page access token is invalid or has expired; an admin must update the channel.",
    200: "The page lacks the permission to send messages (pages_messaging); an admin must check "
    "the app's permissions.",
    368: "The page is temporarily blocked from sending for violating a Messenger policy.",
    551: "This person isn't available right now (they may have blocked the page or "
    "deactivated their account).",
    613: "Too many messages are being sent from this page right now; the message will be "
    "retried shortly.",
    1200: "Messenger could not send the message for now; it will be retried.",
}

_WINDOW_REASON = (
    "More than 24 hours have passed since the customer last wrote (7 days with the Human Agent "
    "tag); Messenger refuses the message until they write again."
)


class _GraphErrorBody(WireModel):
    message: str = ""
    type: str = ""
    code: int
    error_subcode: int | None = None
    is_transient: bool = False
    error_user_title: str = ""
    error_user_msg: str = ""
    fbtrace_id: str = ""


_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")


def classify_error(http_status: int | None, payload: Any) -> SendError:
    """The ``SendError`` for a failed Graph call.

    ``payload`` is the decoded body (``{"error": {...}}``) or None. Keys on (code, subcode):
    the window pairs and 551 / 1545041 are permanent (nothing a retry can change), rate limits
    (613, 4, 17, 32) transient for the whole page, 1 / 2 / 1200 and subcode 2018344 transient
    for this request, everything else permanent. Without a readable Graph error, HTTP 5xx / 408
    / 429 (or no status at all) is transient and anything else permanent.
    """
    graph = _graph_error(payload)
    if graph is None:
        return http_error(http_status)
    error = PlatformError(
        code=graph.code,
        title=_CODE_PREFIX.sub("", graph.message) or graph.error_user_title or graph.type,
        details=graph.error_user_msg,
        subcode=graph.error_subcode,
    )
    rule = None
    if not (is_window_error(error) or is_unavailable_error(error)):
        rule = _TRANSIENT.get(graph.code)
        if rule is None and graph.error_subcode == TEMPORARY_SUBCODE:
            rule = Transient("request")
        if rule is None and graph.is_transient and graph.code not in _REASONS:
            rule = Transient("request")  # Meta flags a generic Graph error as retryable
    if rule is None:
        return SendError(error, permanent=True, http_status=http_status)
    return SendError(
        error,
        permanent=False,
        scope=rule.scope,
        retry_after=rule.retry_after,
        http_status=http_status,
    )


def _graph_error(payload: Any) -> _GraphErrorBody | None:
    if not isinstance(payload, Mapping):
        return None
    inner = payload.get("error", payload)
    try:
        return _GraphErrorBody.model_validate(inner)
    except PydanticValidationError:
        return None


def readable_reason(error: PlatformError) -> str:
    """A short English explanation for agents; falls back to the platform's own words."""
    if is_window_error(error):
        return _WINDOW_REASON
    if is_unavailable_error(error):
        return _REASONS[UNAVAILABLE_CODE]
    if error.subcode == TEMPORARY_SUBCODE:
        return _REASONS[2]
    local = local_reason(error, "Messenger")
    if local:
        return local
    reason = _REASONS.get(error.code)
    if reason:
        return reason
    return error.details or error.title or f"Messenger error {error.code}."
