"""The WhatsApp Cloud API wire format, as pure code (no Django, no network).

This module implements, against ``/work/shared/platforms/PROTOCOLS.md`` section A and Meta's own
examples (``whatsapp/webhook_examples.json``, ``send_examples.json``):

- validating models of the webhook payload (A3-A6) and ``parse_webhook``, which turns one
  delivery into the plain events of ``providers/base.py``;
- the request bodies of ``POST /{phone-number-id}/messages`` (A7);
- a model of a message template as the Graph API lists it, what a send of it needs, and a check
  of the values an agent supplied (SPEC §2.5);
- the classification of send errors into permanent or transient ones (A8) and a short,
  agent-friendly reason per error code.

Leniency. Meta batches up to 1000 updates per delivery and redelivers for 7 days anything that
is not answered 200, so one odd item must never sink its siblings: the containers (``entry[]``,
``changes[]``, ``messages[]``, ``statuses[]``, ``contacts[]``, ``errors[]``) are validated as
lists of raw items and every item is then validated on its own. A message that fails validation
but still has ``id``/``from``/``timestamp`` becomes an ``"unsupported"`` message (never lost);
anything else that cannot be read is skipped and reported as a ``SkippedItem`` by
``parse_webhook_report`` (``parse_webhook`` logs them at WARNING, without payload content).
Only a body that is not a WhatsApp Business Account payload at all raises
``WebhookPayloadError``.

``InboundMessage.data`` per kind (all JSON-safe; absent keys mean "not sent"):

============  ===========================================================================
kind          data keys
============  ===========================================================================
location      latitude, longitude, name, address, url
contacts      contacts (Meta's contact cards, as sent)
interactive   interactive_type, reply_id, title, description; nfm_reply: name, body,
              response_json
button        payload, button_text
reaction      emoji, removed
order         catalog_id, items, note, currency, total (a decimal string)
system        system_type, body, new_wa_id, identity, original_message_id (revoke/edit)
unsupported   unsupported_type, reason ("unknown_type" | "platform" | "invalid")
any           referral (click-to-WhatsApp ad), referred_product, frequently_forwarded,
              from_user_id, group_id
============  ===========================================================================
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from madoguchi.providers.base import (
    InboundEvent,
    InboundMessage,
    MediaRef,
    MessageKind,
    PlatformError,
    PlatformNotice,
    SendError,
    StatusUpdate,
    TemplateStatusUpdate,
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

WHATSAPP_OBJECT = "whatsapp_business_account"

# ---------------------------------------------------------------------------------------------
# Errors raised by the parser
# ---------------------------------------------------------------------------------------------


class WebhookPayloadError(ValueError):
    """The body is not a WhatsApp Business Account webhook payload at all.

    ``code`` is stable and meant for logs and metrics:

    - ``"malformed_json"``: not UTF-8 JSON, or JSON with NaN/Infinity or absurd nesting;
    - ``"invalid_payload"``: JSON, but not the envelope ``{"object": ..., "entry": [...]}``;
    - ``"unexpected_object"``: the envelope of another product (``"page"``, ``"instagram"``...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# Validating models of the webhook payload (A3-A6)
# ---------------------------------------------------------------------------------------------


_UNIX_SECONDS = re.compile(r"[0-9]{1,11}")


def _unix_seconds_to_utc(value: object) -> datetime:
    """Meta's timestamps: a string (sometimes an int) of Unix seconds, as an aware UTC datetime.

    Raises ``ValueError`` (which pydantic reports as a validation error) for anything else,
    including values ``datetime`` cannot represent.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be Unix seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and _UNIX_SECONDS.fullmatch(value):
        seconds = int(value)
    else:
        raise ValueError("timestamp must be a string of Unix seconds")
    if not 0 <= seconds < 10**11:
        raise ValueError("timestamp out of range")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:  # platform limits of fromtimestamp
        raise ValueError("timestamp out of range") from exc


UnixTime = Annotated[datetime, PlainValidator(_unix_seconds_to_utc)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
RawItems = list[Any] | None  # a container whose items are validated one by one


class WaErrorData(WireModel):
    details: str = ""


class WaError(WireModel):
    """An error object, as found in ``value.errors``, ``messages[].errors`` and
    ``statuses[].errors`` (and, with more keys, in synchronous Graph errors)."""

    code: int
    title: str = ""
    message: str = ""
    error_data: WaErrorData | None = None
    href: str = ""

    def to_platform_error(self) -> PlatformError:
        details = self.error_data.details if self.error_data else ""
        return PlatformError(
            code=self.code, title=_strip_code_prefix(self.title or self.message), details=details
        )


class WaMetadata(WireModel):
    display_phone_number: str = ""
    phone_number_id: NonEmptyStr


class WaProfile(WireModel):
    name: str = ""


class WaContact(WireModel):
    """An entry of ``value.contacts[]``: who sent the messages of this change."""

    profile: WaProfile | None = None
    wa_id: str = ""
    user_id: str | None = None  # business-scoped user id (2026)


class WaReferredProduct(WireModel):
    catalog_id: str = ""
    product_retailer_id: str = ""


class WaContext(WireModel):
    id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: WaReferredProduct | None = None


class WaText(WireModel):
    body: str


class WaMedia(WireModel):
    """image, audio, video, document, sticker (and on-premises ``voice``)."""

    id: NonEmptyStr
    mime_type: str = ""
    sha256: str = ""
    caption: str = ""
    filename: str = ""
    url: str = ""
    voice: bool = False
    animated: bool = False


class WaLocation(WireModel):
    latitude: float
    longitude: float
    name: str = ""
    address: str = ""
    url: str = ""


class WaSharedName(WireModel):
    formatted_name: str = ""
    first_name: str = ""
    last_name: str = ""


class WaSharedPhone(WireModel):
    phone: str = ""
    wa_id: str = ""
    type: str = ""


class WaSharedContact(WireModel):
    """A contact card the customer shared (``type: contacts``)."""

    name: WaSharedName | None = None
    phones: list[WaSharedPhone] = Field(default_factory=list)


class WaReply(WireModel):
    id: str = ""
    title: str = ""
    description: str = ""


class WaFlowReply(WireModel):
    name: str = ""
    body: str = ""
    response_json: str = ""


class WaInteractive(WireModel):
    type: str = ""
    button_reply: WaReply | None = None
    list_reply: WaReply | None = None
    nfm_reply: WaFlowReply | None = None


class WaButton(WireModel):
    payload: str = ""
    text: str = ""


class WaReaction(WireModel):
    message_id: NonEmptyStr
    emoji: str | None = None  # "" or absent: the reaction was removed


class WaProductItem(WireModel):
    product_retailer_id: str = ""
    quantity: int = 1
    item_price: float = 0
    currency: str = ""


class WaOrder(WireModel):
    catalog_id: str = ""
    text: str = ""
    product_items: list[WaProductItem] = Field(default_factory=list)


class WaSystem(WireModel):
    body: str = ""
    type: str = ""
    wa_id: str = ""  # user_changed_number: the new number
    new_wa_id: str = ""  # older spelling


class WaUnsupported(WireModel):
    type: str = ""


class WaOriginalRef(WireModel):
    """``revoke`` / ``edit`` [CODE pywa, 2026]; only the reference is read."""

    original_message_id: str = ""


class WaMessage(WireModel):
    """One entry of ``value.messages[]``; ``id``, ``from``, ``timestamp`` and ``type`` are what
    Meta always sends, everything else depends on ``type``."""

    id: NonEmptyStr
    from_: NonEmptyStr = Field(alias="from")
    timestamp: UnixTime
    type: NonEmptyStr
    from_user_id: str | None = None
    group_id: str | None = None
    context: WaContext | None = None
    errors: list[WaError] = Field(default_factory=list)
    text: WaText | None = None
    image: WaMedia | None = None
    audio: WaMedia | None = None
    voice: WaMedia | None = None
    video: WaMedia | None = None
    document: WaMedia | None = None
    sticker: WaMedia | None = None
    location: WaLocation | None = None
    contacts: list[WaSharedContact] | None = None
    interactive: WaInteractive | None = None
    button: WaButton | None = None
    reaction: WaReaction | None = None
    order: WaOrder | None = None
    system: WaSystem | None = None
    unsupported: WaUnsupported | None = None
    revoke: WaOriginalRef | None = None
    edit: WaOriginalRef | None = None


class WaMessageHead(WireModel):
    """The least a message needs to be kept (as ``"unsupported"``) when the rest is unreadable."""

    id: NonEmptyStr
    from_: NonEmptyStr = Field(alias="from")
    timestamp: UnixTime


class WaConversation(WireModel):
    id: str = ""
    expiration_timestamp: str = ""
    origin: dict[str, Any] | None = None


class WaPricing(WireModel):
    """Both shapes: PMP (``type`` + ``category``) and the pre-July-2025 CBP (``category``)."""

    billable: bool | None = None
    pricing_model: str = ""
    type: str = ""
    category: str = ""


class WaStatus(WireModel):
    """One entry of ``value.statuses[]`` (A5)."""

    id: NonEmptyStr
    status: NonEmptyStr
    timestamp: UnixTime
    recipient_id: str = ""
    recipient_user_id: str = ""
    recipient_type: str = ""
    biz_opaque_callback_data: str = ""
    conversation: WaConversation | None = None
    pricing: WaPricing | None = None
    errors: list[WaError] = Field(default_factory=list)


class WaMessagesValue(WireModel):
    """``changes[].value`` of the ``messages`` field; the lists hold raw items on purpose."""

    messaging_product: str = ""
    metadata: WaMetadata
    contacts: RawItems = None
    messages: RawItems = None
    statuses: RawItems = None
    errors: RawItems = None


class WaRejectionInfo(WireModel):
    reason: str = ""
    recommendation: str = ""


class WaOtherInfo(WireModel):
    title: str = ""
    description: str = ""


class WaTemplateStatusValue(WireModel):
    """``changes[].value`` of ``message_template_status_update`` (A6)."""

    event: NonEmptyStr
    message_template_id: NonEmptyStr  # an integer on the wire; coerced to str
    message_template_name: str = ""
    message_template_language: str = ""
    reason: str | None = None
    message_template_category: str = ""
    rejection_info: WaRejectionInfo | None = None
    other_info: WaOtherInfo | None = None


class WaChange(WireModel):
    field: NonEmptyStr
    value: dict[str, Any]


class WaEntry(WireModel):
    id: NonEmptyStr  # the WABA id
    changes: list[Any]


class WaEnvelope(WireModel):
    object: str
    entry: list[Any]


# ---------------------------------------------------------------------------------------------
# parse_webhook
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedItem:
    """An item of a delivery that produced no event; ``path`` locates it in the payload
    (``entry[0].changes[1].value.statuses[2]``); ``reason`` is short and contains no payload
    content (safe to log)."""

    path: str
    reason: str


@dataclass(frozen=True)
class WebhookParse:
    """What one delivery yielded: its events in payload order, and what had to be skipped."""

    events: list[InboundEvent]
    skipped: list[SkippedItem]


def parse_webhook(body: bytes) -> list[InboundEvent]:
    """Parse one webhook delivery (the raw request bytes) into events.

    Returns the events of all entries, changes, messages and statuses, in payload order.
    Items that cannot be read are skipped and logged at WARNING (use ``parse_webhook_report``
    to get them). Raises ``WebhookPayloadError`` only when the body is not a WhatsApp Business
    Account payload at all; never anything else.
    """
    result = parse_webhook_report(body)
    for item in result.skipped:
        logger.warning("whatsapp webhook: skipped %s (%s)", item.path, item.reason)
    return result.events


def check_envelope(body: bytes) -> None:
    """The webhook hot path's check, before the body is stored: valid JSON, a WhatsApp business
    account object with an ``entry`` list. Raises WebhookPayloadError like ``parse_webhook``;
    what lies inside the entries is the worker's to read (leniently)."""
    document = load_json(body, WebhookPayloadError)
    if not isinstance(document, dict):
        raise WebhookPayloadError("invalid_payload", "the body is not a JSON object")
    if document.get("object", WHATSAPP_OBJECT) != WHATSAPP_OBJECT:
        raise WebhookPayloadError("unexpected_object", f"object is not {WHATSAPP_OBJECT!r}")
    entries = document.get("entry")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise WebhookPayloadError("invalid_payload", "entry must be a list of objects")


def parse_webhook_report(body: bytes) -> WebhookParse:
    """Like ``parse_webhook``, returning the skipped items instead of logging them."""
    document = load_json(body, WebhookPayloadError)
    if not isinstance(document, dict):
        raise WebhookPayloadError("invalid_payload", "the body is not a JSON object")
    if "object" in document and document["object"] != WHATSAPP_OBJECT:
        raise WebhookPayloadError("unexpected_object", f"object is not {WHATSAPP_OBJECT!r}")
    try:
        envelope = WaEnvelope.model_validate(document)
    except PydanticValidationError as exc:
        raise WebhookPayloadError("invalid_payload", _summarize(exc)) from None

    events: list[InboundEvent] = []
    skipped: list[SkippedItem] = []
    for i, raw_entry in enumerate(envelope.entry):
        path = f"entry[{i}]"
        try:
            entry = WaEntry.model_validate(raw_entry)
        except PydanticValidationError as exc:
            skipped.append(SkippedItem(path, _summarize(exc)))
            continue
        for j, raw_change in enumerate(entry.changes):
            _parse_change(entry, raw_change, f"{path}.changes[{j}]", events, skipped)
    return WebhookParse(events=events, skipped=skipped)


def _parse_change(
    entry: WaEntry,
    raw_change: Any,
    path: str,
    events: list[InboundEvent],
    skipped: list[SkippedItem],
) -> None:
    try:
        change = WaChange.model_validate(raw_change)
    except PydanticValidationError as exc:
        skipped.append(SkippedItem(path, _summarize(exc)))
        return
    if change.field == "messages":
        _parse_messages_value(change.value, f"{path}.value", events, skipped)
    elif change.field == "message_template_status_update":
        try:
            value = WaTemplateStatusValue.model_validate(change.value)
        except PydanticValidationError as exc:
            skipped.append(SkippedItem(f"{path}.value", _summarize(exc)))
            return
        events.append(_template_status_event(entry.id, value))
    # Every other field (account_update, template_category_update, smb_message_echoes, groups,
    # ...) yields no event: the raw delivery is stored by the caller for operators.


def _parse_messages_value(
    raw_value: dict[str, Any],
    path: str,
    events: list[InboundEvent],
    skipped: list[SkippedItem],
) -> None:
    try:
        value = WaMessagesValue.model_validate(raw_value)
    except PydanticValidationError as exc:
        skipped.append(SkippedItem(path, _summarize(exc)))
        return
    business = value.metadata.phone_number_id

    names: dict[str, str] = {}
    for k, raw_contact in enumerate(value.contacts or []):
        try:
            contact = WaContact.model_validate(raw_contact)
        except PydanticValidationError as exc:
            skipped.append(SkippedItem(f"{path}.contacts[{k}]", _summarize(exc)))
            continue
        name = contact.profile.name if contact.profile else ""
        for handle in (contact.wa_id, contact.user_id):
            if handle:
                names.setdefault(handle, name)

    for k, raw_message in enumerate(value.messages or []):
        item_path = f"{path}.messages[{k}]"
        _guarded(item_path, skipped, events, partial(_message_event, raw_message, business, names))
    for k, raw_status in enumerate(value.statuses or []):
        item_path = f"{path}.statuses[{k}]"
        _guarded(item_path, skipped, events, partial(_status_event, raw_status, business))
    for k, raw_error in enumerate(value.errors or []):
        try:
            error = WaError.model_validate(raw_error)
        except PydanticValidationError as exc:
            skipped.append(SkippedItem(f"{path}.errors[{k}]", _summarize(exc)))
            continue
        events.append(PlatformNotice(business_handle=business, error=error.to_platform_error()))


def _guarded(
    path: str,
    skipped: list[SkippedItem],
    events: list[InboundEvent],
    convert: Callable[[], InboundEvent],
) -> None:
    """Convert one item; a failure costs that item only.

    ``_Unreadable`` is the expected failure. Any other exception is a bug in this module: it is
    logged with its traceback and the item reported, because raising would fail the whole
    delivery and make Meta redeliver it (and its healthy siblings) for 7 days.
    """
    try:
        events.append(convert())
    except _Unreadable as exc:
        skipped.append(SkippedItem(path, exc.reason))
    except Exception as exc:  # see the docstring: a bug must not lose the batch
        logger.exception("whatsapp webhook: internal error on %s", path)
        skipped.append(SkippedItem(path, f"internal error: {type(exc).__name__}"))


class _Unreadable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _template_status_event(waba_id: str, value: WaTemplateStatusValue) -> TemplateStatusUpdate:
    # base.TemplateStatusUpdate has one ``reason`` string: keep Meta's reason code first (for
    # filtering) and the human explanation after it, when Meta gives one.
    code = value.reason if value.reason and value.reason.upper() != "NONE" else ""
    description = ""
    if value.rejection_info and value.rejection_info.reason:
        description = value.rejection_info.reason
    elif value.other_info:
        code = code or value.other_info.title
        description = value.other_info.description
    reason = f"{code}: {description}" if code and description else (code or description)
    return TemplateStatusUpdate(
        account_handle=waba_id,
        template_id=value.message_template_id,
        name=value.message_template_name,
        language=value.message_template_language,
        event=value.event,
        reason=reason,
    )


_STATUS_MAP: dict[str, Literal["sent", "delivered", "read", "failed"]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    # The first play of a voice message comes after "read"; it is a read as far as ticks go.
    "played": "read",
}


def _status_event(raw: Any, business: str) -> StatusUpdate:
    try:
        status = WaStatus.model_validate(raw)
    except PydanticValidationError as exc:
        raise _Unreadable(_summarize(exc)) from None
    mapped = _STATUS_MAP.get(status.status.lower())
    if mapped is None:
        raise _Unreadable("unknown status value")
    return StatusUpdate(
        platform_message_id=status.id,
        business_handle=business,
        recipient_handle=status.recipient_id or status.recipient_user_id,
        status=mapped,
        timestamp=status.timestamp,
        error=status.errors[0].to_platform_error() if status.errors else None,
        reference=status.biz_opaque_callback_data,
    )


# --- inbound messages ------------------------------------------------------------------------


@dataclass
class _Rendered:
    kind: MessageKind
    text: str
    media: MediaRef | None = None
    data: dict[str, Any] = field(default_factory=dict)
    reaction_to: str | None = None


def _message_event(raw: Any, business: str, names: Mapping[str, str]) -> InboundMessage:
    try:
        message = WaMessage.model_validate(raw)
    except PydanticValidationError as exc:
        return _unreadable_message(raw, business, names, _summarize(exc))
    renderer = _RENDERERS.get(message.type)
    rendered = renderer(message, raw) if renderer else None
    if rendered is None and renderer is not None:
        return _unreadable_message(raw, business, names, f"no {message.type} object")
    if rendered is None:
        rendered = _Rendered(
            "unsupported",
            f"[Unsupported message type: {message.type}]",
            data={"unsupported_type": message.type, "reason": "unknown_type"},
        )
    if not rendered.text.strip():
        rendered.text = _PLACEHOLDERS.get(rendered.kind, "[Message]")

    data = rendered.data
    context = message.context
    if isinstance(raw.get("referral"), dict):
        data["referral"] = raw["referral"]
    if context and context.referred_product:
        data["referred_product"] = context.referred_product.model_dump()
    if context and context.frequently_forwarded:
        data["frequently_forwarded"] = True
    if message.from_user_id:
        data["from_user_id"] = message.from_user_id
    if message.group_id:
        data["group_id"] = message.group_id

    return InboundMessage(
        platform_message_id=message.id,
        business_handle=business,
        sender_handle=message.from_,
        sender_name=_sender_name(names, message.from_, message.from_user_id),
        timestamp=message.timestamp,
        kind=rendered.kind,
        text=rendered.text,
        media=rendered.media,
        reply_to_platform_id=context.id if context and context.id else None,
        reaction_to_platform_id=rendered.reaction_to,
        forwarded=bool(context and (context.forwarded or context.frequently_forwarded)),
        error=message.errors[0].to_platform_error() if message.errors else None,
        data=data,
    )


def _sender_name(names: Mapping[str, str], wa_id: str, user_id: str | None) -> str:
    if wa_id in names:
        return names[wa_id]
    return names.get(user_id, "") if user_id else ""


def _unreadable_message(
    raw: Any, business: str, names: Mapping[str, str], reason: str
) -> InboundMessage:
    """A message whose body cannot be read is kept as ``"unsupported"`` if it can be identified;
    otherwise it is skipped (``_Unreadable``)."""
    try:
        head = WaMessageHead.model_validate(raw)
    except PydanticValidationError:
        raise _Unreadable(reason) from None
    declared = raw.get("type")
    type_name = declared if isinstance(declared, str) else ""
    error = None
    raw_errors = raw.get("errors")
    if isinstance(raw_errors, list) and raw_errors:
        try:
            error = WaError.model_validate(raw_errors[0]).to_platform_error()
        except PydanticValidationError:
            error = None
    text = f"[Unreadable {type_name} message]" if type_name else "[Unreadable message]"
    return InboundMessage(
        platform_message_id=head.id,
        business_handle=business,
        sender_handle=head.from_,
        sender_name=names.get(head.from_, ""),
        timestamp=head.timestamp,
        kind="unsupported",
        text=text,
        error=error,
        data={"unsupported_type": type_name, "reason": "invalid"},
    )


# Short English placeholders; the console translates them by kind (and data), so keep them
# stable.
_PLACEHOLDERS: dict[str, str] = {
    "text": "[Empty message]",
    "image": "[Image]",
    "audio": "[Audio]",
    "video": "[Video]",
    "document": "[Document]",
    "sticker": "[Sticker]",
    "location": "[Location]",
    "contacts": "[Contact]",
    "interactive": "[Interactive reply]",
    "button": "[Button reply]",
    "reaction": "Reaction removed",
    "order": "[Order]",
    "system": "[System message]",
    "unsupported": "[Unsupported message type]",
}


def _render_text(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    if message.text is None:
        return None
    return _Rendered("text", message.text.body)


def _media_renderer(
    kind: Literal["image", "audio", "video", "document", "sticker"], attribute: str
) -> Callable[[WaMessage, dict[str, Any]], _Rendered | None]:
    def render(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
        media: WaMedia | None = getattr(message, attribute)
        if media is None:
            return None
        voice = media.voice or attribute == "voice"
        if media.caption:
            text = media.caption
        elif kind == "document":
            text = f"[Document: {media.filename}]" if media.filename else "[Document]"
        elif kind == "audio" and voice:
            text = "[Voice message]"
        else:
            text = _PLACEHOLDERS[kind]
        ref = MediaRef(
            platform_media_id=media.id,
            mime_type=media.mime_type,
            sha256=media.sha256,
            filename=media.filename,
            caption=media.caption,
            url=media.url,
            voice=voice,
            animated=media.animated,
        )
        return _Rendered(kind, text, media=ref)

    return render


def _coordinate(value: float) -> str:
    """Six decimals (about 10 cm) without trailing zeros."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _render_location(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    location = message.location
    if location is None:
        return None
    label = ", ".join(part for part in (location.name, location.address) if part)
    coordinates = f"({_coordinate(location.latitude)}, {_coordinate(location.longitude)})"
    text = f"📍 {label} {coordinates}" if label else f"📍 {coordinates}"
    data: dict[str, Any] = {"latitude": location.latitude, "longitude": location.longitude}
    for key in ("name", "address", "url"):
        if getattr(location, key):
            data[key] = getattr(location, key)
    return _Rendered("location", text, data=data)


def _render_contacts(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    if message.contacts is None:
        return None
    lines = []
    for card in message.contacts:
        name = ""
        if card.name:
            name = card.name.formatted_name or " ".join(
                part for part in (card.name.first_name, card.name.last_name) if part
            )
        phones = ", ".join(
            phone.phone or phone.wa_id for phone in card.phones if phone.phone or phone.wa_id
        )
        line = " ".join(part for part in (name, phones) if part)
        if line:
            lines.append(f"👤 {line}")
    return _Rendered("contacts", "\n".join(lines), data={"contacts": raw["contacts"]})


def _render_interactive(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    interactive = message.interactive
    if interactive is None:
        return None
    data: dict[str, Any] = {"interactive_type": interactive.type}
    if interactive.type == "list_reply":
        reply = interactive.list_reply
    elif interactive.type == "button_reply":
        reply = interactive.button_reply
    else:
        reply = interactive.button_reply or interactive.list_reply
    if reply is not None:
        data.update(reply_id=reply.id, title=reply.title)
        if reply.description:
            data["description"] = reply.description
        return _Rendered("interactive", reply.title or reply.id, data=data)
    if interactive.nfm_reply is not None:
        flow = interactive.nfm_reply
        data.update(name=flow.name, body=flow.body, response_json=flow.response_json)
        return _Rendered("interactive", flow.body or "[Form response]", data=data)
    return _Rendered("interactive", _PLACEHOLDERS["interactive"], data=data)


def _render_button(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    button = message.button
    if button is None:
        return None
    return _Rendered(
        "button",
        button.text or button.payload,
        data={"payload": button.payload, "button_text": button.text},
    )


def _render_reaction(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    reaction = message.reaction
    if reaction is None:
        return None
    emoji = reaction.emoji or ""
    return _Rendered(
        "reaction",
        emoji or "Reaction removed",
        data={"emoji": emoji, "removed": not emoji},
        reaction_to=reaction.message_id,
    )


# ISO 4217 currencies without minor units, so a yen total reads "JPY 1500", not "JPY 1500.00".
_ZERO_DECIMAL_CURRENCIES = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF".split()
)


def _render_order(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    order = message.order
    if order is None:
        return None
    count = len(order.product_items)
    summary = f"🛒 Order: {count} item" + ("" if count == 1 else "s")
    data: dict[str, Any] = {
        "catalog_id": order.catalog_id,
        "items": [item.model_dump() for item in order.product_items],
    }
    currencies = {item.currency for item in order.product_items}
    if count and len(currencies) == 1 and "" not in currencies:
        currency = currencies.pop()
        try:
            # Decimal from the float's shortest repr: 0.1 + 0.2 must read 0.30, not 0.30000004.
            total = sum(
                (Decimal(repr(item.item_price)) * item.quantity for item in order.product_items),
                Decimal(0),
            )
            places = Decimal(1) if currency.upper() in _ZERO_DECIMAL_CURRENCIES else Decimal("0.01")
            total_text = str(total.quantize(places))
        except (InvalidOperation, ValueError):
            total_text = ""
        if total_text:
            summary += f" ({currency} {total_text})"
            data.update(currency=currency, total=total_text)
    if order.text:
        summary += f"\n{order.text}"
        data["note"] = order.text
    return _Rendered("order", summary, data=data)


def _render_system(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    system = message.system
    if system is None:
        return None
    data: dict[str, Any] = {"system_type": system.type, "body": system.body}
    new_wa_id = system.wa_id or system.new_wa_id
    if new_wa_id:
        data["new_wa_id"] = new_wa_id
    if isinstance(raw.get("identity"), dict):
        data["identity"] = raw["identity"]
    return _Rendered("system", system.body or _PLACEHOLDERS["system"], data=data)


def _render_unsupported(message: WaMessage, raw: dict[str, Any]) -> _Rendered:
    inner = message.unsupported.type if message.unsupported else ""
    text = f"[Unsupported message type: {inner}]" if inner else "[Unsupported message type]"
    return _Rendered("unsupported", text, data={"unsupported_type": inner, "reason": "platform"})


def _render_revoke(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    # [CODE pywa] A deleted message; the core may hide the original. There is no "revoke" kind,
    # so it is kept as a system notice that points at the original.
    original = message.revoke.original_message_id if message.revoke else ""
    data = {"system_type": "revoke", "original_message_id": original}
    return _Rendered("system", "[Message deleted]", data=data)


def _render_edit(message: WaMessage, raw: dict[str, Any]) -> _Rendered | None:
    original = message.edit.original_message_id if message.edit else ""
    data = {"system_type": "edit", "original_message_id": original}
    return _Rendered("system", "[Message edited]", data=data)


def _render_request_welcome(message: WaMessage, raw: dict[str, Any]) -> _Rendered:
    # The customer opened the chat for the first time (no content).
    return _Rendered(
        "system", "[The customer opened the chat]", data={"system_type": "request_welcome"}
    )


_RENDERERS: dict[str, Callable[[WaMessage, dict[str, Any]], _Rendered | None]] = {
    "text": _render_text,
    "image": _media_renderer("image", "image"),
    "audio": _media_renderer("audio", "audio"),
    "voice": _media_renderer("audio", "voice"),
    "video": _media_renderer("video", "video"),
    "document": _media_renderer("document", "document"),
    "sticker": _media_renderer("sticker", "sticker"),
    "location": _render_location,
    "contacts": _render_contacts,
    "interactive": _render_interactive,
    "button": _render_button,
    "reaction": _render_reaction,
    "order": _render_order,
    "system": _render_system,
    "unsupported": _render_unsupported,
    "revoke": _render_revoke,
    "edit": _render_edit,
    "request_welcome": _render_request_welcome,
}


# ---------------------------------------------------------------------------------------------
# Outbound request bodies (A7)
# ---------------------------------------------------------------------------------------------

MEDIA_KINDS = frozenset({"image", "audio", "video", "document", "sticker"})
# Meta accepts a caption on these only; audio and stickers have none.
CAPTION_KINDS = frozenset({"image", "video", "document"})


def _message_body(
    to: str, kind: str, content: dict[str, Any], reply_to: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
    }
    if reply_to:
        body["context"] = {"message_id": reply_to}
    return body


def text_body(
    to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
) -> dict[str, Any]:
    """A text message; ``reply_to`` (a wamid) makes it a quoted reply."""
    return _message_body(to, "text", {"body": text, "preview_url": preview_url}, reply_to)


def media_body(
    to: str,
    kind: str,
    media_id: str,
    *,
    caption: str = "",
    filename: str = "",
    reply_to: str | None = None,
) -> dict[str, Any]:
    """A media message by uploaded media id.

    Raises ``ValueError`` for an unknown ``kind``, a caption on audio or a sticker (Meta has no
    caption there; dropping it silently would lose the agent's words: send it as a text), or a
    filename on anything but a document.
    """
    if kind not in MEDIA_KINDS:
        raise ValueError(f"unknown media kind {kind!r}")
    content: dict[str, Any] = {"id": media_id}
    if caption:
        if kind not in CAPTION_KINDS:
            raise ValueError(f"a {kind} cannot carry a caption")
        content["caption"] = caption
    if filename:
        if kind != "document":
            raise ValueError("only a document carries a filename")
        content["filename"] = filename
    return _message_body(to, kind, content, reply_to)


TemplateValue = str | Mapping[str, Any]


def _parameter(value: TemplateValue, name: str | None = None) -> dict[str, Any]:
    """A str becomes a text parameter; a dict is taken as Meta's parameter shape as it is."""
    parameter: dict[str, Any]
    if isinstance(value, str):
        parameter = {"type": "text", "text": value}
    elif isinstance(value, Mapping):
        parameter = dict(value)
    else:
        raise ValueError("a template value is a string or a parameter object")
    if name is not None:
        parameter["parameter_name"] = name
    return parameter


def _header_parameter(header: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(header, str):
        return {"type": "text", "text": header}
    kind = header.get("type")
    if kind == "text":
        parameter: dict[str, Any] = {"type": "text", "text": header.get("text", "")}
    elif kind in ("image", "video", "document"):
        media = {key: header[key] for key in ("id", "link") if header.get(key)}
        if not media:
            raise ValueError("a media header needs an id or a link")
        if kind == "document" and header.get("filename"):
            media["filename"] = header["filename"]
        parameter = {"type": kind, kind: media}
    elif kind == "location":
        parameter = {"type": "location", "location": dict(header.get("location") or {})}
    else:
        raise ValueError(f"unknown header type {kind!r}")
    if header.get("parameter_name"):
        parameter["parameter_name"] = header["parameter_name"]
    return parameter


_BUTTON_PARAMETER: dict[str, Callable[[str], dict[str, Any]]] = {
    "quick_reply": lambda value: {"type": "payload", "payload": value},
    "url": lambda value: {"type": "text", "text": value},
    "copy_code": lambda value: {"type": "coupon_code", "coupon_code": value},
}


def template_body(
    to: str,
    name: str,
    language: str,
    *,
    body_params: Sequence[TemplateValue] | Mapping[str, TemplateValue] = (),
    header: Mapping[str, Any] | str | None = None,
    buttons: Sequence[Mapping[str, Any]] | None = None,
    named: bool = False,
) -> dict[str, Any]:
    """A template message.

    ``body_params``: a list (positional ``{{1}}``...) or a dict name → value (named templates:
    each parameter gets ``parameter_name``; a dict implies ``named``). A value is a str (a text
    parameter) or a dict already in Meta's shape (``{"type": "currency", "currency": {...}}``).
    ``header``: a str or ``{"type": "text", "text": ...}`` (a text header), or ``{"type": "image"|"video"|"document",
    "id"|"link": ..., "filename": ...}`` (or ``{"type": "location", "location": {...}}``); a
    ``parameter_name`` key is passed on. ``buttons``: ``{"index": i, "sub_type": "quick_reply"|
    "url"|"copy_code", "value": str}``. Values are not checked here (see
    ``check_template_params``); raises ``ValueError`` only for shapes it cannot build.
    """
    components: list[dict[str, Any]] = []
    if header is not None:
        components.append({"type": "header", "parameters": [_header_parameter(header)]})
    if isinstance(body_params, Mapping):
        parameters = [_parameter(value, str(key)) for key, value in body_params.items()]
    elif named:
        raise ValueError("named parameters are given as a dict name -> value")
    elif isinstance(body_params, str):
        raise ValueError("body_params is a list of values, not a string")
    else:
        parameters = [_parameter(value) for value in body_params]
    if parameters:
        components.append({"type": "body", "parameters": parameters})
    for button in buttons or ():
        sub_type = str(button.get("sub_type", ""))
        build = _BUTTON_PARAMETER.get(sub_type)
        if build is None:
            raise ValueError(f"unknown button sub_type {sub_type!r}")
        components.append(
            {
                "type": "button",
                "sub_type": sub_type,
                "index": str(button.get("index", 0)),  # Meta's samples use strings
                "parameters": [build(str(button.get("value", "")))],
            }
        )
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = components
    return _message_body(to, "template", template, None)


def read_receipt_body(message_id: str, *, typing_indicator: bool = False) -> dict[str, Any]:
    """Mark an inbound message (and the ones before it) as read; optionally show "typing…"."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    }
    if typing_indicator:
        body["typing_indicator"] = {"type": "text"}
    return body


def reaction_body(to: str, message_id: str, emoji: str) -> dict[str, Any]:
    """React to a message; an empty ``emoji`` removes the business's reaction."""
    return _message_body(to, "reaction", {"message_id": message_id, "emoji": emoji}, None)


# ---------------------------------------------------------------------------------------------
# Templates: model, requirements, parameter checks (SPEC §2.5)
# ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class _GraphButton(WireModel):
    type: str = ""
    text: str = ""
    url: str = ""
    phone_number: str = ""
    otp_type: str = ""
    example: Any = None  # a list of str for URL buttons, a str for COPY_CODE


class _GraphComponent(WireModel):
    type: str
    format: str = ""
    text: str = ""
    example: dict[str, Any] | None = None
    buttons: list[_GraphButton] = Field(default_factory=list)


class _GraphTemplate(WireModel):
    name: NonEmptyStr
    language: NonEmptyStr
    id: str = ""
    status: str = ""
    category: str = ""
    parameter_format: str = "POSITIONAL"
    components: list[_GraphComponent] = Field(default_factory=list)


HeaderFormat = Literal["none", "text", "image", "video", "document", "location"]


@dataclass(frozen=True)
class TemplateButton:
    """One button of a template, by its zero-based index across the BUTTONS component."""

    index: int
    type: str  # QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE, OTP, FLOW, MPM, CATALOG, ...
    text: str = ""
    url: str = ""
    example: str = ""


@dataclass(frozen=True)
class ParamSlot:
    """A value a send must supply: ``key`` is ``"1"``, ``"2"``... or the name of a named
    variable; ``example`` is the example the template was approved with (may be empty)."""

    key: str
    example: str = ""


@dataclass(frozen=True)
class ButtonSlot:
    """A button whose send needs a value: a URL with ``{{1}}`` (the URL suffix), a copy-code
    coupon, or an authentication OTP (sent as a ``url`` button carrying the code)."""

    index: int
    sub_type: Literal["url", "copy_code"]
    example: str = ""


@dataclass(frozen=True)
class TemplateRequirements:
    """What a send of a template needs. ``header``: ``"none"`` (no header or a static text
    one), ``"text"`` (one variable), or the media type; ``body``: slots in order."""

    header: HeaderFormat
    header_param: ParamSlot | None
    body: tuple[ParamSlot, ...]
    named: bool
    buttons: tuple[ButtonSlot, ...]

    @property
    def body_count(self) -> int:
        return len(self.body)


@dataclass(frozen=True)
class TemplateSpec:
    """A message template as the Graph API lists it (``GET /{waba-id}/message_templates``)."""

    name: str
    language: str
    id: str = ""
    status: str = ""
    category: str = ""
    parameter_format: Literal["POSITIONAL", "NAMED"] = "POSITIONAL"
    header_format: HeaderFormat = "none"
    header_text: str = ""
    header_example: str = ""
    body_text: str = ""
    body_examples: tuple[str, ...] = ()  # POSITIONAL: example of {{1}}, {{2}}, ...
    body_named_examples: tuple[tuple[str, str], ...] = ()  # NAMED: (name, example)
    footer_text: str = ""
    buttons: tuple[TemplateButton, ...] = ()

    @classmethod
    def from_graph(cls, obj: Mapping[str, Any]) -> TemplateSpec:
        """Build from one item of the Graph ``message_templates`` list.

        Raises ``ValueError`` (a pydantic ``ValidationError``) when ``name`` or ``language`` is
        missing or a component is not an object; unknown components and keys are ignored.
        """
        graph = _GraphTemplate.model_validate(obj)
        named = graph.parameter_format.upper() == "NAMED"
        spec: dict[str, Any] = {}
        buttons: list[TemplateButton] = []
        for component in graph.components:
            example = component.example or {}
            kind = component.type.upper()
            if kind == "HEADER":
                header_format = component.format.lower() or "text"
                if header_format not in ("text", "image", "video", "document", "location"):
                    header_format = "none"
                spec["header_format"] = header_format
                spec["header_text"] = component.text
                spec["header_example"] = _first_example(
                    example.get("header_text_named_params" if named else "header_text")
                )
            elif kind == "BODY":
                spec["body_text"] = component.text
                spec["body_examples"] = _positional_examples(example.get("body_text"))
                spec["body_named_examples"] = _named_examples(example.get("body_text_named_params"))
            elif kind == "FOOTER":
                spec["footer_text"] = component.text
            elif kind == "BUTTONS":
                for button in component.buttons:
                    button_type = button.type.upper()
                    if button_type == "OTP" and button.otp_type:
                        button_type = button.otp_type.upper()  # COPY_CODE, ONE_TAP, ZERO_TAP
                    sample = button.example
                    if isinstance(sample, list):
                        sample = sample[0] if sample else ""
                    if not isinstance(sample, str):
                        sample = ""
                    buttons.append(
                        TemplateButton(
                            index=len(buttons),
                            type=button_type,
                            text=button.text,
                            url=button.url,
                            example=sample,
                        )
                    )
        return cls(
            name=graph.name,
            language=graph.language,
            id=graph.id,
            status=graph.status.upper(),
            category=graph.category.upper(),
            parameter_format="NAMED" if named else "POSITIONAL",
            buttons=tuple(buttons),
            **spec,
        )

    def required_parameters(self) -> TemplateRequirements:
        """The header value, body values and button values a send of this template needs."""
        named = self.parameter_format == "NAMED"
        header: HeaderFormat = self.header_format
        header_param = None
        if header == "text":
            variables = _variables(self.header_text, named)
            if variables:
                header_param = ParamSlot(variables[0], self.header_example)
            else:
                header = "none"  # a static text header takes no value
        if named:
            examples = dict(self.body_named_examples)
            body = tuple(
                ParamSlot(n, examples.get(n, "")) for n in _variables(self.body_text, True)
            )
        else:
            # Meta numbers variables {{1}}..{{n}}; sorting the distinct ones keeps a send's
            # values in that order even when the text uses them out of order.
            numbers = sorted({int(n) for n in _variables(self.body_text, False)})
            if not numbers and self.category == "AUTHENTICATION":
                # Authentication bodies are fixed by Meta ("{{1}} is your verification code")
                # and may be listed without text; the code is still the one body value.
                numbers = [1]
            examples = self.body_examples
            body = tuple(
                ParamSlot(str(n), examples[i] if i < len(examples) else "")
                for i, n in enumerate(numbers)
            )
        button_slots = []
        for button in self.buttons:
            if button.type == "URL" and _VARIABLE.search(button.url):
                button_slots.append(ButtonSlot(button.index, "url", button.example))
            elif button.type in ("COPY_CODE", "ONE_TAP", "ZERO_TAP", "OTP"):
                # A marketing coupon is sent as "copy_code"; an authentication OTP button
                # (whatever its otp_type) is sent as a "url" button carrying the code.
                authentication = self.category == "AUTHENTICATION"
                sub_type: Literal["url", "copy_code"] = (
                    "copy_code" if button.type == "COPY_CODE" and not authentication else "url"
                )
                button_slots.append(ButtonSlot(button.index, sub_type, button.example))
        return TemplateRequirements(
            header=header,
            header_param=header_param,
            body=body,
            named=named,
            buttons=tuple(button_slots),
        )


def _variables(text: str, named: bool) -> list[str]:
    """Distinct variables in order of first appearance (digits only for positional)."""
    seen: list[str] = []
    for match in _VARIABLE.finditer(text):
        name = match.group(1)
        if (named or name.isdigit()) and name not in seen:
            seen.append(name)
    return seen


def _first_example(value: Any) -> str:
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            return first
        if isinstance(first, dict) and isinstance(first.get("example"), str):
            return first["example"]
    return ""


def _positional_examples(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return tuple(str(item) for item in value[0])
    return ()


def _named_examples(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        (str(item["param_name"]), str(item.get("example", "")))
        for item in value
        if isinstance(item, dict) and "param_name" in item
    )


ProblemCode = Literal["missing", "unexpected", "wrong_type", "too_long", "empty", "invalid_format"]


@dataclass(frozen=True)
class ParamProblem:
    """One reason a template send would be refused.

    ``field``: ``"body.2"`` (positional: the variable number, 1-based like ``{{2}}``),
    ``"body.first_name"`` (named), ``"body"`` (the container), ``"header"``, ``"buttons.0"``
    (Meta's zero-based button index) or ``"buttons"``. ``code``: ``missing``, ``unexpected``,
    ``wrong_type`` (not a value of an accepted type), ``too_long``, ``empty``, or
    ``invalid_format`` (right type, content Meta refuses: a newline, a tab, more than four
    spaces in a row; an incomplete currency or date_time). ``message``: English, for the agent.
    """

    field: str
    code: ProblemCode
    message: str


BODY_PARAM_MAX = 1024
HEADER_PARAM_MAX = 60
_MANY_SPACES = "     "  # five: Meta refuses "more than 4 consecutive spaces"


def _check_text(field_name: str, value: Any, limit: int) -> ParamProblem | None:
    if not isinstance(value, str):
        return ParamProblem(field_name, "wrong_type", "must be text")
    if not value.strip():
        return ParamProblem(field_name, "empty", "must not be empty")
    if len(value) > limit:
        return ParamProblem(field_name, "too_long", f"must be at most {limit} characters")
    if "\n" in value or "\t" in value or _MANY_SPACES in value:
        return ParamProblem(
            field_name,
            "invalid_format",
            "must not contain line breaks, tabs or more than 4 spaces in a row",
        )
    return None


def _check_value(field_name: str, value: Any) -> ParamProblem | None:
    """A body value: a string, or a text/currency/date_time parameter object."""
    if isinstance(value, str):
        return _check_text(field_name, value, BODY_PARAM_MAX)
    if not isinstance(value, Mapping):
        return ParamProblem(field_name, "wrong_type", "must be text")
    kind = value.get("type")
    if kind == "text":
        return _check_text(field_name, value.get("text"), BODY_PARAM_MAX)
    if kind == "currency":
        currency = value.get("currency")
        if not (
            isinstance(currency, Mapping)
            and _non_empty_str(currency.get("fallback_value"))
            and isinstance(currency.get("code"), str)
            and re.fullmatch(r"[A-Za-z]{3}", currency["code"])
            and isinstance(currency.get("amount_1000"), int)
            and not isinstance(currency.get("amount_1000"), bool)
        ):
            return ParamProblem(
                field_name,
                "invalid_format",
                "a currency needs fallback_value, a 3-letter code and an integer amount_1000",
            )
        return None
    if kind == "date_time":
        date_time = value.get("date_time")
        if not (isinstance(date_time, Mapping) and _non_empty_str(date_time.get("fallback_value"))):
            return ParamProblem(field_name, "invalid_format", "a date_time needs fallback_value")
        return None
    return ParamProblem(field_name, "wrong_type", "must be text, a currency or a date_time")


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_template_params(
    spec: TemplateSpec,
    body_params: Sequence[Any] | Mapping[str, Any] | None,
    header: Any = None,
    buttons: Sequence[Any] | None = None,
) -> list[ParamProblem]:
    """Every reason Meta would refuse these values for ``spec`` (empty list: they fit).

    Accepted shapes are those of ``template_body``; ``header`` may also be a plain str for a
    text header. Counts must match exactly: missing and extra values are both reported.
    """
    needs = spec.required_parameters()
    problems: list[ParamProblem] = []
    problems.extend(_check_body(needs, body_params))
    problems.extend(_check_header(needs, header))
    problems.extend(_check_buttons(spec, needs, buttons))
    return problems


def _check_body(
    needs: TemplateRequirements, body_params: Sequence[Any] | Mapping[str, Any] | None
) -> list[ParamProblem]:
    problems: list[ParamProblem] = []
    if body_params is None:
        body_params = {} if needs.named else []
    if needs.named:
        if not isinstance(body_params, Mapping):
            if not body_params and not needs.body:
                return []
            return [ParamProblem("body", "wrong_type", "this template's values are given by name")]
        expected = {slot.key for slot in needs.body}
        for slot in needs.body:
            if slot.key not in body_params:
                problems.append(
                    ParamProblem(
                        f"body.{slot.key}", "missing", f"a value for {{{{{slot.key}}}}} is required"
                    )
                )
            else:
                problem = _check_value(f"body.{slot.key}", body_params[slot.key])
                if problem:
                    problems.append(problem)
        for key in body_params:
            if key not in expected:
                problems.append(
                    ParamProblem(f"body.{key}", "unexpected", "the template has no such variable")
                )
        return problems
    if not _is_list(body_params):
        if isinstance(body_params, Mapping) and not body_params and not needs.body:
            return []
        return [ParamProblem("body", "wrong_type", "this template's values are given in order")]
    for position, value in enumerate(body_params, start=1):
        field_name = f"body.{position}"
        if position > len(needs.body):
            problems.append(
                ParamProblem(
                    field_name, "unexpected", f"the template has {len(needs.body)} variables"
                )
            )
            continue
        problem = _check_value(field_name, value)
        if problem:
            problems.append(problem)
    for slot in needs.body[len(body_params) :]:
        problems.append(
            ParamProblem(
                f"body.{slot.key}", "missing", f"a value for {{{{{slot.key}}}}} is required"
            )
        )
    return problems


def _is_list(value: Any) -> bool:
    """A sequence of values, not a str/bytes (which are sequences too) nor a mapping."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _check_header(needs: TemplateRequirements, header: Any) -> list[ParamProblem]:
    if needs.header == "none":
        if header is None:
            return []
        return [ParamProblem("header", "unexpected", "this template's header takes no value")]
    if header is None:
        what = "text" if needs.header == "text" else f"a {needs.header}"
        return [ParamProblem("header", "missing", f"the header needs {what}")]
    if needs.header == "text":
        if isinstance(header, Mapping):
            if header.get("type") != "text":
                return [ParamProblem("header", "wrong_type", "the header takes text")]
            header = header.get("text")
        problem = _check_text("header", header, HEADER_PARAM_MAX)
        return [problem] if problem else []
    if not isinstance(header, Mapping) or header.get("type") != needs.header:
        return [ParamProblem("header", "wrong_type", f"the header takes a {needs.header}")]
    if needs.header == "location":
        location = header.get("location")
        if not (
            isinstance(location, Mapping)
            and all(
                isinstance(location.get(key), int | float)
                and not isinstance(location.get(key), bool)
                for key in ("latitude", "longitude")
            )
        ):
            return [
                ParamProblem(
                    "header", "invalid_format", "a location needs a latitude and a longitude"
                )
            ]
        return []
    if not (_non_empty_str(header.get("id")) or _non_empty_str(header.get("link"))):
        return [ParamProblem("header", "missing", f"the {needs.header} needs an id or a link")]
    return []


def _check_buttons(
    spec: TemplateSpec, needs: TemplateRequirements, buttons: Sequence[Any] | None
) -> list[ParamProblem]:
    problems: list[ParamProblem] = []
    required = {slot.index: slot for slot in needs.buttons}
    by_index = {button.index: button for button in spec.buttons}
    given: set[int] = set()
    if buttons is not None and not _is_list(buttons):
        return [ParamProblem("buttons", "wrong_type", "buttons are a list")]
    for position, button in enumerate(buttons or ()):
        index = _button_index(button)
        if index is None:
            problems.append(
                ParamProblem(
                    f"buttons.{position}",
                    "wrong_type",
                    "a button value needs an index, a sub_type and a value",
                )
            )
            continue
        field_name = f"buttons.{index}"
        template_button = by_index.get(index)
        slot = required.get(index)
        if index in given:
            problems.append(ParamProblem(field_name, "unexpected", "given twice"))
            continue
        given.add(index)
        if template_button is None or (slot is None and template_button.type != "QUICK_REPLY"):
            problems.append(ParamProblem(field_name, "unexpected", "this button takes no value"))
            continue
        expected_sub_type = slot.sub_type if slot else "quick_reply"
        if button.get("sub_type") != expected_sub_type:
            problems.append(
                ParamProblem(
                    field_name, "wrong_type", f"this button is a {expected_sub_type} button"
                )
            )
            continue
        value = button.get("value")
        if not isinstance(value, str):
            problems.append(ParamProblem(field_name, "wrong_type", "must be text"))
        elif not value.strip():
            problems.append(ParamProblem(field_name, "empty", "must not be empty"))
    for index, _slot in sorted(required.items()):
        if index not in given:
            problems.append(
                ParamProblem(f"buttons.{index}", "missing", "this button needs a value")
            )
    return problems


def _button_index(button: Any) -> int | None:
    if not isinstance(button, Mapping):
        return None
    index = button.get("index")
    if isinstance(index, bool):
        return None
    if isinstance(index, int):
        return index
    if isinstance(index, str) and index.isascii() and index.isdigit():
        return int(index)
    return None


def render_template_text(
    spec: TemplateSpec,
    body_params: Sequence[Any] | Mapping[str, Any] | None,
    header: Any = None,
) -> str:
    """The readable text of a template send (stored as the outbound message's text).

    The text header (values substituted) on the first line when there is one, then the body
    with its values substituted; a currency or date_time reads as its ``fallback_value``; a
    variable without a value stays ``{{n}}``. Never empty: a template without text reads as
    ``[Template: name]``.
    """
    named = spec.parameter_format == "NAMED"
    values: dict[str, str] = {}
    if isinstance(body_params, Mapping):
        values = {str(key): _display_value(value) for key, value in body_params.items()}
    elif _is_list(body_params):
        values = {str(n): _display_value(value) for n, value in enumerate(body_params, start=1)}
    lines = []
    if spec.header_format == "text" and spec.header_text:
        header_values: dict[str, str] = {}
        header_variables = _variables(spec.header_text, named)
        if header is not None and header_variables:
            header_values[header_variables[0]] = _display_value(header)
        lines.append(_substitute(spec.header_text, header_values))
    if spec.body_text:
        lines.append(_substitute(spec.body_text, values))
    text = "\n".join(lines).strip()
    return text or f"[Template: {spec.name}]"


def _display_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "text" and isinstance(value.get("text"), str):
            return value["text"]
        inner = value.get(kind) if isinstance(kind, str) else None
        if isinstance(inner, Mapping) and isinstance(inner.get("fallback_value"), str):
            return inner["fallback_value"]
    return str(value)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda match: values.get(match.group(1), match.group(0)), text)


# ---------------------------------------------------------------------------------------------
# Error classification (A8)
# ---------------------------------------------------------------------------------------------

WINDOW_ERROR_CODES = frozenset({131047, 470})


def is_window_error(code: int) -> bool:
    """True for "the 24-hour customer service window is closed": 131047 and legacy 470."""
    return code in WINDOW_ERROR_CODES


# Codes a retry can fix, with what must wait. Everything else is permanent: retrying an unknown
# error risks a duplicate or a ban, while a wrongly permanent error only costs a manual resend.
_TRANSIENT: dict[int, Transient] = {
    130429: Transient("number", 1.0),  # throughput (mps) reached
    131057: Transient("number", 60.0),  # account in maintenance, up to a minute
    80007: Transient("number", 60.0),  # WABA rate limit
    4: Transient("number", 60.0),  # app-wide API call rate limit
    131056: Transient("pair", 6.0),  # one message every 6 s to the same user
    131000: Transient("request"),  # unknown error: Meta says retry
    131016: Transient("request"),  # service temporarily unavailable
}

_REASONS: dict[int, str] = {
    LOCAL_ERROR_CODE: "WhatsApp could not be reached; the message will be retried.",
    0: "WhatsApp could not authenticate the app; an admin must check the channel's access token.",
    3: "The app lacks a capability needed to send; an admin must check the channel's setup.",
    4: "The app reached WhatsApp's API call limit; the message will be retried.",
    10: "The access token lacks the permission to send; an admin must check the channel.",
    100: "WhatsApp refused the request as invalid (an unsupported or misspelled parameter).",
    190: "The WhatsApp access token has expired or was revoked; an admin must update the channel.",
    368: "The business account is restricted for violating a WhatsApp policy.",
    470: "More than 24 hours have passed since the customer last wrote; send an approved "
    "template instead.",
    80007: "The WhatsApp Business account reached its rate limit; the message will be retried.",
    130403: "This business has blocked the customer on WhatsApp.",
    130429: "Too many messages are being sent from this number right now; the message will be "
    "retried shortly.",
    130472: "WhatsApp held this message back as part of an experiment on the customer's side.",
    131000: "WhatsApp could not send the message because of an unknown error; it will be retried.",
    131005: "The access token lacks the permission to send; an admin must check the channel.",
    131008: "The request is missing a required parameter.",
    131009: "One or more parameter values are invalid.",
    131016: "A WhatsApp service is temporarily unavailable; the message will be retried.",
    131021: "The customer's number is this business's own number.",
    131026: "The recipient cannot receive WhatsApp messages from this number (not on WhatsApp, "
    "or an old app version).",
    131031: "The WhatsApp Business account is restricted or locked.",
    131037: "The business number has no approved display name yet.",
    131042: "There is a problem with the WhatsApp Business account's payment method.",
    131045: "The business phone number is not correctly registered with WhatsApp.",
    131047: "More than 24 hours have passed since the customer last wrote; send an approved "
    "template instead.",
    131048: "Sending is limited because messages from this number were reported as spam.",
    131049: "WhatsApp did not deliver this marketing message to keep engagement healthy; try "
    "again after 24 hours or wait for the customer to write.",
    131050: "The customer has chosen to stop receiving marketing messages from this business.",
    131051: "This message type is not supported by WhatsApp.",
    131052: "WhatsApp could not download the media the customer sent (too large or unavailable).",
    131053: "WhatsApp could not process the attached file (unsupported type or too large).",
    131056: "Too many messages were sent to this customer in a short time; the message will be "
    "retried shortly.",
    131057: "The WhatsApp Business account is in maintenance; the message will be retried.",
    131062: "This message cannot be sent to a business-scoped user id.",
    131064: "The business reached a messaging limit because of template classification issues.",
    132000: "The number of template values does not match the template.",
    132001: "The template does not exist in this language or is not approved.",
    132005: "The template text is too long once the values are filled in.",
    132007: "The template's content violates a WhatsApp policy.",
    132012: "A template value is in the wrong format.",
    132015: "The template is paused because of low quality.",
    132016: "The template was paused too many times and is now disabled.",
    137000: "The customer's identity key changed; confirm the customer's identity before sending.",
}


class _GraphErrorBody(WireModel):
    message: str = ""
    type: str = ""
    code: int
    error_subcode: int | None = None
    error_data: WaErrorData | None = None
    is_transient: bool = False
    error_user_title: str = ""
    error_user_msg: str = ""


_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")


def _strip_code_prefix(text: str) -> str:
    return _CODE_PREFIX.sub("", text)


def classify_error(http_status: int | None, payload: Any) -> SendError:
    """The ``SendError`` for a failed Graph call.

    ``payload`` is the decoded response body (``{"error": {...}}``) or None when it could not
    be read. Keys on ``error.code`` (Meta: "do not rely on titles"); without a readable code,
    HTTP 5xx/408/429 (or no status at all) is transient and anything else permanent.
    """
    graph = _graph_error(payload)
    if graph is None:
        return http_error(http_status)
    details = graph.error_data.details if graph.error_data else ""
    error = PlatformError(
        code=graph.code,
        title=_strip_code_prefix(graph.message) or graph.error_user_title or graph.type,
        details=details or graph.error_user_msg,
    )
    rule = _TRANSIENT.get(graph.code)
    if rule is None and graph.is_transient and not _is_known_code(graph.code):
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


def _is_known_code(code: int) -> bool:
    return code in _REASONS or 200 <= code <= 299


def _graph_error(payload: Any) -> _GraphErrorBody | None:
    if not isinstance(payload, Mapping):
        return None
    inner = payload.get("error", payload)
    try:
        return _GraphErrorBody.model_validate(inner)
    except PydanticValidationError:
        return None


def readable_reason(error: PlatformError) -> str:
    """A short English explanation for agents; falls back to the platform's details or title."""
    if 200 <= error.code <= 299:
        return _REASONS[10]
    local = local_reason(error, "WhatsApp")
    if local:
        return local
    reason = _REASONS.get(error.code)
    if reason:
        return reason
    return error.details or error.title or f"WhatsApp error {error.code}."
