"""The Viber REST Bot API wire format, as pure code (no Django, no network).

This module implements, against ``/work/shared/platforms/PROTOCOLS.md`` section B:

- validating models of every callback Viber POSTs to the webhook (B2, B4): the ``webhook``
  availability probe, ``message`` (text, picture, video, file, sticker, contact, url, location,
  and any other type kept as unsupported), ``subscribed``, ``unsubscribed``,
  ``conversation_started``, ``delivered``, ``seen`` and ``failed``; and ``parse_webhook``, which
  turns one callback into the plain events of ``providers/base.py``;
- the callback signature (B3): lowercase hex HMAC-SHA256 of the raw body keyed with the auth
  token, no prefix;
- the request bodies of ``/pa/send_message`` (B5), ``/pa/set_webhook`` (B2) and the welcome
  message answered to ``conversation_started`` (B6);
- the ``status`` codes of every API answer (B5) classified as permanent or transient, with a
  short, agent-friendly reason per code.

Events per callback (``business_handle`` is the channel's, passed in: Viber callbacks do not
name the bot they are for):

=======================  ===================================================================
callback                 events
=======================  ===================================================================
webhook                  none (the probe sent after set_webhook; it must only be answered 200)
message                  InboundMessage, then SubscriptionUpdate(subscribed=True): a user's
                         message subscribes them without a ``subscribed`` callback (B6)
subscribed               SubscriptionUpdate(subscribed=True)
unsubscribed             SubscriptionUpdate(subscribed=False)
conversation_started     SubscriptionUpdate(subscribed=True if the callback says so, else None;
                         ``context`` = the deep link's context)
delivered / seen         StatusUpdate("delivered" / "read")
failed                   StatusUpdate("failed", error=PlatformError(FAILED_CALLBACK_CODE, desc))
anything else            none (logged): Viber adds event types without notice
=======================  ===================================================================

Callbacks are not ordered (B7): every event carries the platform's timestamp (milliseconds),
which is what the core must compare, e.g. an ``unsubscribed`` that arrives before an older
``message``.

``InboundMessage`` for a ``message`` callback: ``platform_message_id`` is the decimal
``message_token`` (a 64-bit integer on the wire, B1). ``kind`` by Viber type: text → text,
picture → image, video → video, file → document, sticker → sticker, contact → contacts,
location → location, url → text (the link), anything else → unsupported. ``data`` keys (absent
means "not sent"): ``viber_type`` (always), ``tracking_data`` (echoed back from our send,
e.g. keyboard replies), ``silent``, ``sender_language``, ``sender_country``,
``sender_api_version``, ``media_url`` (picture/video/file/sticker: the temporary download URL,
see below), ``thumbnail``, ``size``, ``duration``, ``sticker_id``, ``url`` (url), ``latitude``,
``longitude``, ``address`` (location), ``contacts`` (a contact, in the card shape WhatsApp uses:
``[{"name": {"formatted_name"}, "phones": [{"phone"}]}]``), ``unsupported_type``.

Media. Viber gives media only as a temporary URL (``message.media``), never as an id. The
``MediaRef`` of a picture, video, file or sticker has ``url`` = that URL and
``platform_media_id`` = the URL too when it fits 128 characters, else the message token (the
core stores at most 128 characters; ``data["media_url"]`` always holds the whole URL, and the
provider downloads ``MediaRef.url`` first). ``mime_type`` is guessed from the file name or URL.

Leniency: a ``message`` callback whose message cannot be read but whose token, sender and
timestamp can becomes an ``"unsupported"`` message (never lost); any other callback that cannot
be read is skipped and logged without payload content. Only a body that is not a Viber callback
at all (not a JSON object with a string ``event``) raises ``ViberPayloadError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from madoguchi.providers.base import (
    InboundEvent,
    InboundMessage,
    MediaRef,
    MessageKind,
    PlatformError,
    SendError,
    StatusUpdate,
    SubscriptionUpdate,
)
from madoguchi.providers.payloads import (
    LOCAL_ERROR_CODE,
    WireModel,
    http_error,
    load_json,
    local_reason,
)
from madoguchi.providers.payloads import network_error as network_error  # re-exported
from madoguchi.providers.payloads import summarize as _summarize
from madoguchi.providers.payloads import timeout_error as timeout_error  # re-exported

logger = logging.getLogger(__name__)

# B5 field limits.
SENDER_NAME_MAX = 28
TEXT_MAX = 7000
TRACKING_DATA_MAX = 4000
FILE_NAME_MAX = 256
# B1: the largest JSON body any API request may carry.
REQUEST_MAX_BYTES = 30 * 1024

# Events Madoguchi asks for in set_webhook (B2). ``message``, ``subscribed`` and
# ``unsubscribed`` are always sent; the others are opt-in filters.
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (
    "delivered",
    "seen",
    "failed",
    "subscribed",
    "unsubscribed",
    "conversation_started",
)

# ---------------------------------------------------------------------------------------------
# Errors raised by the parser
# ---------------------------------------------------------------------------------------------


class ViberPayloadError(ValueError):
    """The body is not a Viber callback at all.

    ``code`` is stable and meant for logs and metrics: ``"malformed_json"`` (not UTF-8 JSON, or
    JSON with NaN/Infinity or absurd nesting) or ``"invalid_payload"`` (JSON, but not an object
    with a string ``event``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# Signature (B3)
# ---------------------------------------------------------------------------------------------


def signature(body: bytes, auth_token: str) -> str:
    """The ``X-Viber-Content-Signature`` value of ``body``: lowercase hex, no prefix."""
    return hmac.new(auth_token.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(header: str, body: bytes, auth_token: str) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``auth_token``; constant time.
    An empty token or header never matches. Upper-case hex is accepted."""
    if not auth_token or not header:
        return False
    given = header.strip().lower()
    return hmac.compare_digest(given.encode(), signature(body, auth_token).encode())


# ---------------------------------------------------------------------------------------------
# Validating models of the callbacks (B4)
# ---------------------------------------------------------------------------------------------


def _unix_ms_to_utc(value: object) -> datetime:
    """Viber's timestamps: Unix milliseconds (an integer), as an aware UTC datetime.

    Raises ``ValueError`` (reported by pydantic as a validation error) for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("timestamp must be Unix milliseconds")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 14):
            raise ValueError("timestamp must be Unix milliseconds")
        value = int(value)
    if not 0 <= value < 10**14:
        raise ValueError("timestamp out of range")
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _token(value: object) -> str:
    """``message_token``: a non-negative 64-bit integer, kept as its decimal string."""
    if isinstance(value, bool):
        raise ValueError("message_token must be an integer")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError("message_token must be a 64-bit integer")
    return str(value)


UnixMs = Annotated[datetime, PlainValidator(_unix_ms_to_utc)]
Token = Annotated[str, PlainValidator(_token)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]


class ViberUser(WireModel):
    """``user`` / ``sender`` of a callback."""

    id: NonEmptyStr
    name: str = ""
    avatar: str = ""
    country: str = ""
    language: str = ""
    api_version: int | None = None


class ViberLocation(WireModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    address: str = ""


class ViberContact(WireModel):
    name: str = ""
    phone_number: str = ""
    avatar: str = ""


class ViberMessage(WireModel):
    """``message`` of a message callback; what is set depends on ``type`` (B4)."""

    type: NonEmptyStr
    text: str = ""
    media: str = ""
    thumbnail: str = ""
    file_name: str = ""
    size: int | None = Field(default=None, ge=0)
    duration: float | None = Field(default=None, ge=0)
    sticker_id: int | None = None
    contact: ViberContact | None = None
    location: ViberLocation | None = None
    tracking_data: str = ""


class CallbackHead(WireModel):
    """What every callback has."""

    event: NonEmptyStr
    timestamp: UnixMs
    message_token: Token | None = None
    chat_hostname: str = ""


class WebhookCallback(CallbackHead):
    event: Literal["webhook"]


class MessageCallback(CallbackHead):
    event: Literal["message"]
    message_token: Token
    sender: ViberUser
    message: dict[str, Any]  # validated on its own (ViberMessage), so a bad body keeps its head
    silent: bool = False


class SubscribedCallback(CallbackHead):
    event: Literal["subscribed"]
    user: ViberUser


class UnsubscribedCallback(CallbackHead):
    event: Literal["unsubscribed"]
    user_id: NonEmptyStr


class ConversationStartedCallback(CallbackHead):
    event: Literal["conversation_started"]
    user: ViberUser
    type: str = ""  # "open"
    context: str = ""
    subscribed: bool = False


class DeliveryCallback(CallbackHead):
    """``delivered``, ``seen`` and ``failed`` (the latter with ``desc``)."""

    event: Literal["delivered", "seen", "failed"]
    message_token: Token
    user_id: NonEmptyStr
    desc: str = ""


# ---------------------------------------------------------------------------------------------
# parse_webhook
# ---------------------------------------------------------------------------------------------

# Not a Viber status code: an asynchronous ``failed`` callback, which only carries ``desc``.
FAILED_CALLBACK_CODE = -10

_STATUS_BY_EVENT: dict[str, Literal["delivered", "read", "failed"]] = {
    "delivered": "delivered",
    "seen": "read",
    "failed": "failed",
}

_KNOWN_EVENTS = frozenset(
    {"webhook", "message", "subscribed", "unsubscribed", "conversation_started", *_STATUS_BY_EVENT}
)


def load_callback(body: bytes) -> dict[str, Any]:
    """Decode a callback body: a JSON object with a string ``event``. Raises
    ``ViberPayloadError``. This is the hot path's check, before the body is stored."""
    document = load_json(body, ViberPayloadError)
    if not isinstance(document, dict):
        raise ViberPayloadError("invalid_payload", "the body is not a JSON object")
    if not isinstance(document.get("event"), str) or not document["event"]:
        raise ViberPayloadError("invalid_payload", "event must be a non-empty string")
    return document


def parse_webhook(body: bytes, business_handle: str) -> list[InboundEvent]:
    """The events of one callback (the raw request bytes), as in the table of the module
    docstring. Raises ``ViberPayloadError`` only when the body is not a Viber callback at all;
    a callback that cannot be read is skipped (logged at WARNING without payload content)."""
    document = load_callback(body)
    event = document["event"]
    if event not in _KNOWN_EVENTS:
        logger.info("viber callback: ignored event type %r", event[:40])
        return []
    try:
        return _parse_known(document, business_handle)
    except PydanticValidationError as exc:
        logger.warning("viber callback: skipped %s (%s)", event, _summarize(exc))
        return []


def _parse_known(document: dict[str, Any], business: str) -> list[InboundEvent]:
    event = document["event"]
    if event == "webhook":
        WebhookCallback.model_validate(document)
        return []
    if event == "message":
        callback = MessageCallback.model_validate(document)
        message = _message_event(callback, business)
        return [
            message,
            SubscriptionUpdate(
                business_handle=business,
                contact_handle=callback.sender.id,
                contact_name=callback.sender.name,
                subscribed=True,
                timestamp=callback.timestamp,
            ),
        ]
    if event == "subscribed":
        sub = SubscribedCallback.model_validate(document)
        return [_subscription(business, sub.user, True, sub.timestamp)]
    if event == "unsubscribed":
        unsub = UnsubscribedCallback.model_validate(document)
        return [
            SubscriptionUpdate(
                business_handle=business,
                contact_handle=unsub.user_id,
                contact_name="",
                subscribed=False,
                timestamp=unsub.timestamp,
            )
        ]
    if event == "conversation_started":
        started = ConversationStartedCallback.model_validate(document)
        # subscribed=false says the user has not subscribed *yet*, not that they left: None.
        return [
            _subscription(
                business,
                started.user,
                True if started.subscribed else None,
                started.timestamp,
                context=started.context,
            )
        ]
    delivery = DeliveryCallback.model_validate(document)
    error = None
    if delivery.event == "failed":
        error = PlatformError(
            code=FAILED_CALLBACK_CODE, title="Delivery failed", details=delivery.desc
        )
    return [
        StatusUpdate(
            platform_message_id=delivery.message_token,
            business_handle=business,
            recipient_handle=delivery.user_id,
            status=_STATUS_BY_EVENT[delivery.event],
            timestamp=delivery.timestamp,
            error=error,
        )
    ]


def _subscription(
    business: str, user: ViberUser, subscribed: bool | None, when: datetime, context: str = ""
) -> SubscriptionUpdate:
    return SubscriptionUpdate(
        business_handle=business,
        contact_handle=user.id,
        contact_name=user.name,
        subscribed=subscribed,
        timestamp=when,
        context=context,
    )


def is_conversation_started(body: bytes) -> bool:
    """Whether a (verified) body is a ``conversation_started`` callback; never raises."""
    # Cheap on the hot path: a substring test first, the JSON decode only when it may be one.
    if b"conversation_started" not in body:
        return False
    try:
        document = load_callback(body)
    except ViberPayloadError:
        return False
    return document["event"] == "conversation_started"


# -- messages ---------------------------------------------------------------------------------

_KIND_BY_TYPE: dict[str, MessageKind] = {
    "text": "text",
    "picture": "image",
    "video": "video",
    "file": "document",
    "sticker": "sticker",
    "contact": "contacts",
    "location": "location",
    "url": "text",
}

# Short English placeholders; the console translates them by kind, so keep them stable (the
# same strings as WhatsApp's).
_PLACEHOLDERS: dict[str, str] = {
    "text": "[Empty message]",
    "image": "[Image]",
    "video": "[Video]",
    "document": "[Document]",
    "sticker": "[Sticker]",
    "location": "[Location]",
    "contacts": "[Contact]",
}

MEDIA_PLATFORM_ID_MAX = 128


@dataclass
class _Rendered:
    kind: MessageKind
    text: str
    media: MediaRef | None
    data: dict[str, Any]


def _message_event(callback: MessageCallback, business: str) -> InboundMessage:
    data: dict[str, Any] = {}
    raw_type = callback.message.get("type")
    type_name = raw_type if isinstance(raw_type, str) else ""
    try:
        message = ViberMessage.model_validate(callback.message)
    except PydanticValidationError:
        text = f"[Unreadable {type_name} message]" if type_name else "[Unreadable message]"
        rendered = _Rendered(
            "unsupported", text, None, {"unsupported_type": type_name, "reason": "invalid"}
        )
    else:
        rendered = _render(message, callback.message_token)
        if message.tracking_data:
            data["tracking_data"] = message.tracking_data
    data["viber_type"] = type_name
    data.update(rendered.data)
    if callback.silent:
        data["silent"] = True
    sender = callback.sender
    if sender.language:
        data["sender_language"] = sender.language
    if sender.country:
        data["sender_country"] = sender.country
    if sender.api_version is not None:
        data["sender_api_version"] = sender.api_version
    return InboundMessage(
        platform_message_id=callback.message_token,
        business_handle=business,
        sender_handle=sender.id,
        sender_name=sender.name,
        timestamp=callback.timestamp,
        kind=rendered.kind,
        text=rendered.text if rendered.text.strip() else _PLACEHOLDERS.get(rendered.kind, "[?]"),
        media=rendered.media,
        data=data,
    )


def _render(message: ViberMessage, token: str) -> _Rendered:
    kind = _KIND_BY_TYPE.get(message.type)
    if kind is None:
        return _Rendered(
            "unsupported",
            f"[Unsupported message type: {message.type[:40]}]",
            None,
            {"unsupported_type": message.type[:40], "reason": "unknown_type"},
        )
    data: dict[str, Any] = {}
    media = None
    text = message.text
    if message.type in ("picture", "video", "file", "sticker") and message.media:
        media = _media_ref(message, token)
        data["media_url"] = message.media
    if message.thumbnail:
        data["thumbnail"] = message.thumbnail
    if message.size is not None:
        data["size"] = message.size
    if message.duration is not None:
        data["duration"] = message.duration
    if message.type == "file":
        text = message.text or (f"[Document: {message.file_name}]" if message.file_name else "")
    elif message.type == "sticker":
        text = ""
        if message.sticker_id is not None:
            data["sticker_id"] = message.sticker_id
    elif message.type == "url":
        text = message.media or message.text
        data["url"] = message.media
    elif message.type == "location":
        if message.location is None:
            return _invalid(message.type)
        text, location_data = _render_location(message.location)
        data.update(location_data)
    elif message.type == "contact":
        if message.contact is None:
            return _invalid(message.type)
        text, card = _render_contact(message.contact)
        data["contacts"] = [card]
    elif message.type in ("picture", "video") and not message.media:
        return _invalid(message.type)
    return _Rendered(kind, text, media, data)


def _invalid(type_name: str) -> _Rendered:
    return _Rendered(
        "unsupported",
        f"[Unreadable {type_name} message]",
        None,
        {"unsupported_type": type_name, "reason": "invalid"},
    )


def _media_ref(message: ViberMessage, token: str) -> MediaRef:
    filename = message.file_name
    guessed = mimetypes.guess_type(filename or urlsplit(message.media).path)[0] or ""
    defaults = {"picture": "image/jpeg", "video": "video/mp4", "sticker": "image/png"}
    mime = guessed or defaults.get(message.type, "application/octet-stream")
    url = message.media
    return MediaRef(
        platform_media_id=url if len(url) <= MEDIA_PLATFORM_ID_MAX else token,
        mime_type=mime,
        filename=filename,
        caption=message.text if message.type == "picture" else "",
        url=url,
    )


def _coordinate(value: float) -> str:
    """Six decimals (about 10 cm) without trailing zeros."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _render_location(location: ViberLocation) -> tuple[str, dict[str, Any]]:
    coordinates = f"({_coordinate(location.lat)}, {_coordinate(location.lon)})"
    text = f"📍 {location.address} {coordinates}" if location.address else f"📍 {coordinates}"
    data: dict[str, Any] = {"latitude": location.lat, "longitude": location.lon}
    if location.address:
        data["address"] = location.address
    return text, data


def _render_contact(contact: ViberContact) -> tuple[str, dict[str, Any]]:
    card: dict[str, Any] = {"name": {"formatted_name": contact.name}, "phones": []}
    if contact.phone_number:
        card["phones"].append({"phone": contact.phone_number})
    line = " ".join(part for part in (contact.name, contact.phone_number) if part)
    return (f"👤 {line}" if line else ""), card


# ---------------------------------------------------------------------------------------------
# Request bodies (B2, B5, B6)
# ---------------------------------------------------------------------------------------------

# Madoguchi media kinds -> Viber message types (B5). Viber has no audio type (files carry it) and
# cannot send a sticker from a file (stickers are ids of Viber's own packs): a sticker image
# goes as a picture.
VIBER_TYPE_BY_KIND: dict[str, str] = {
    "image": "picture",
    "sticker": "picture",
    "video": "video",
    "document": "file",
    "audio": "file",
}

# Which media kinds carry a caption: only a picture has a ``text`` (B5).
CAPTION_KINDS = frozenset({"image"})


def sender_object(name: str, avatar: str = "") -> dict[str, str]:
    """``sender``: the name shown to the user (required, cut to 28 characters) and an avatar."""
    sender = {"name": (name.strip() or "Madoguchi")[:SENDER_NAME_MAX]}
    if avatar:
        sender["avatar"] = avatar
    return sender


def text_body(
    receiver: str,
    text: str,
    *,
    sender: Mapping[str, str],
    tracking_data: str = "",
    keyboard: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``send_message`` body for text. Raises ``ValueError`` for an empty text or one over
    7000 characters (Viber would answer badData)."""
    if not text.strip():
        raise ValueError("a text message needs text")
    if len(text) > TEXT_MAX:
        raise ValueError(f"Viber texts are limited to {TEXT_MAX} characters")
    body: dict[str, Any] = {"receiver": receiver, "type": "text", "text": text}
    return _with_common(body, sender, tracking_data, keyboard)


def media_body(
    receiver: str,
    kind: str,
    url: str,
    *,
    sender: Mapping[str, str],
    size: int,
    filename: str = "",
    caption: str = "",
    thumbnail: str = "",
    duration: int | None = None,
    tracking_data: str = "",
) -> dict[str, Any]:
    """A ``send_message`` body for media given by a public URL (Viber downloads it).

    ``kind`` is a Madoguchi kind (image, video, document, audio, sticker; see
    ``VIBER_TYPE_BY_KIND``). ``size`` (bytes) is required for video and file; ``filename`` for
    a file (cut to 256 characters). Raises ``ValueError`` for an unknown kind, a caption on
    anything but an image (dropping it silently would lose the agent's words), or a missing
    file name.
    """
    viber_type = VIBER_TYPE_BY_KIND.get(kind)
    if viber_type is None:
        raise ValueError(f"unknown media kind {kind!r}")
    if caption and kind not in CAPTION_KINDS:
        raise ValueError(f"a {kind} cannot carry a caption on Viber")
    body: dict[str, Any] = {"receiver": receiver, "type": viber_type, "media": url}
    if viber_type == "picture":
        body["text"] = caption  # required by the API; may be empty
    if thumbnail and viber_type in ("picture", "video"):
        body["thumbnail"] = thumbnail
    if viber_type in ("video", "file"):
        body["size"] = int(size)
    if viber_type == "video" and duration is not None:
        body["duration"] = int(duration)
    if viber_type == "file":
        if not filename.strip():
            raise ValueError("a file needs a file name")
        body["file_name"] = filename[:FILE_NAME_MAX]
    return _with_common(body, sender, tracking_data, None)


def _with_common(
    body: dict[str, Any],
    sender: Mapping[str, str],
    tracking_data: str,
    keyboard: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body["sender"] = dict(sender)
    if tracking_data:
        body["tracking_data"] = tracking_data[:TRACKING_DATA_MAX]
    if keyboard is not None:
        body["keyboard"] = dict(keyboard)
    return body


def welcome_body(text: str, *, sender: Mapping[str, str]) -> dict[str, Any]:
    """The welcome message answered to ``conversation_started`` (B6): a send_message body
    without ``receiver``. Raises ``ValueError`` like ``text_body``."""
    body = text_body("", text, sender=sender, tracking_data="welcome")
    del body["receiver"]
    return body


def set_webhook_body(
    url: str, event_types: tuple[str, ...] = WEBHOOK_EVENT_TYPES
) -> dict[str, Any]:
    """``set_webhook``: ``url`` ("" removes the webhook), the event types, names and photos."""
    return {"url": url, "event_types": list(event_types), "send_name": True, "send_photo": True}


# ---------------------------------------------------------------------------------------------
# Status codes (B5)
# ---------------------------------------------------------------------------------------------

STATUS_NAMES: dict[int, str] = {
    0: "ok",
    1: "invalidUrl",
    2: "invalidAuthToken",
    3: "badData",
    4: "missingData",
    5: "receiverNotRegistered",
    6: "receiverNotSubscribed",
    7: "publicAccountBlocked",
    8: "publicAccountNotFound",
    9: "publicAccountSuspended",
    10: "webhookNotSet",
    11: "receiverNoSuitableDevice",
    12: "tooManyRequests",
    13: "apiVersionNotSupported",
    14: "incompatibleWithVersion",
    15: "publicAccountNotAuthorized",
    16: "inchatReplyMessageNotAllowed",
    17: "publicAccountIsNotInline",
    18: "noPublicChat",
    19: "cannotSendBroadcast",
    20: "broadcastNotAllowed",
    21: "unsupportedCountry",
    22: "paymentUnsupported",
    23: "freeMessagesExceeded",
    24: "noBalance",
}

RECEIVER_NOT_SUBSCRIBED = 6
TOO_MANY_REQUESTS = 12

# 12 is the only code a retry can fix. B5 documents it as the cap of 100 messages to one user
# within an hour without a reply, reset when the user replies: only that recipient must wait
# ("pair"), not the whole bot. A minute is a polite first wait; the worker backs off further.
TOO_MANY_REQUESTS_RETRY_AFTER = 60.0

_REASONS: dict[int, str] = {
    LOCAL_ERROR_CODE: "Viber could not be reached; the message will be retried.",
    1: "Viber refused the webhook or media URL (it must be a public HTTPS address).",
    2: "Viber refused the bot's authentication token; an admin must check the channel.",
    3: "Viber refused the request as invalid (a field is malformed or too long).",
    4: "The request to Viber is missing a required field.",
    5: "This user is not registered on Viber.",
    6: "The user is not subscribed to this bot (or has unsubscribed); Viber allows messages "
    "only to subscribed users.",
    7: "The bot's Viber account is blocked.",
    8: "The bot's Viber account was not found; an admin must check the channel.",
    9: "The bot's Viber account is suspended.",
    10: "No webhook is set for the bot, and Viber sends nothing without one; an admin must "
    "reconnect the channel.",
    11: "The user has no Viber device that can receive this message.",
    12: "Too many messages were sent to this user without a reply; the message will be retried "
    "later.",
    13: "Viber does not support the API version this message needs.",
    14: "This message is not compatible with the user's Viber version.",
    15: "The bot's Viber account is not authorized to do this.",
    16: "Viber does not allow this in-chat reply.",
    17: "The bot's Viber account is not an inline account.",
    18: "The bot has no public chat.",
    19: "Viber cannot send this broadcast.",
    20: "Broadcasts are not allowed for this bot.",
    21: "Viber does not serve the user's country for this bot.",
    22: "Viber payments are not supported here.",
    23: "The bot used up its free messages; a Viber billing plan is needed.",
    24: "The bot's Viber account has no balance left.",
    FAILED_CALLBACK_CODE: "Viber could not deliver the message.",
}


@dataclass(frozen=True)
class ApiAnswer:
    """A decoded API answer: ``status`` 0 means ok; the rest of the JSON in ``payload``."""

    status: int
    status_message: str
    payload: dict[str, Any]


class _AnswerHead(WireModel):
    status: int
    status_message: str = ""


def read_answer(http_status: int, content: bytes) -> ApiAnswer:
    """Decode an API answer; raises the classified ``SendError`` when it is not ``status: 0``
    (HTTP is 200 even for logical errors, B1) or cannot be read at all."""
    if http_status != 200:
        raise classify_error(http_status, None)
    try:
        document = json.loads(content)
        head = _AnswerHead.model_validate(document)
    except (ValueError, RecursionError, PydanticValidationError):
        raise classify_error(http_status, None) from None
    if head.status != 0:
        raise classify_error(http_status, head.status, head.status_message)
    return ApiAnswer(head.status, head.status_message, document)


def classify_error(http_status: int | None, status: int | None, message: str = "") -> SendError:
    """The ``SendError`` for a failed API call.

    ``status`` is Viber's code (None when the answer had none). Every listed code but 12 is
    permanent: they name a wrong request, recipient or account, which a retry cannot change;
    an unlisted code ("General error") is permanent too, since retrying an unknown error risks
    a duplicate message while a wrongly permanent one only costs a manual resend. Without a
    code, HTTP 5xx/408/429 (or no answer at all) is transient and anything else permanent.
    """
    if status is None:
        return http_error(http_status)
    error = PlatformError(
        code=status, title=STATUS_NAMES.get(status, "generalError"), details=message[:500]
    )
    if status == TOO_MANY_REQUESTS:
        return SendError(
            error,
            permanent=False,
            scope="pair",
            retry_after=TOO_MANY_REQUESTS_RETRY_AFTER,
            http_status=http_status,
        )
    return SendError(error, permanent=True, http_status=http_status)


def readable_reason(error: PlatformError) -> str:
    """A short English explanation for agents; falls back to the platform's details or title."""
    local = local_reason(error, "Viber")
    if local:
        return local
    if error.code == FAILED_CALLBACK_CODE and error.details:
        return f"Viber could not deliver the message: {error.details}"
    reason = _REASONS.get(error.code)
    if reason:
        return reason
    return error.details or error.title or f"Viber error {error.code}."


# ---------------------------------------------------------------------------------------------
# User ids (B1)
# ---------------------------------------------------------------------------------------------

# Per-bot, stable, base64-ish: "01234567890A=", "3SQNc4FPUQmysaM/AQEhXg==".
_USER_ID = re.compile(r"[A-Za-z0-9+/]{4,64}={0,2}")


def is_user_id(value: str) -> bool:
    """Whether ``value`` is shaped like a Viber user id."""
    return bool(_USER_ID.fullmatch(value))
