"""The provider protocol: what the core expects of every messaging platform.

A provider turns a platform's wire format into the plain dataclasses below (pure code: no ORM, no
network) and turns an outbound message into the platform's API calls. The core never branches on
the channel kind: what differs between platforms is declared here (``Capabilities``) or lives in
the provider module and in ``rules/``.

Errors: every failed platform call raises ``SendError``; ``permanent`` says whether retrying can
help, ``scope`` says what must wait before a retry (the whole business number, or only one
recipient), ``retry_after`` is a hint in seconds.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

# Message kinds as stored and as exposed by the API (SPEC §4).
MessageKind = Literal[
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "template",
    "note",
    "unsupported",
]

DeliveryStatus = Literal["queued", "sent", "delivered", "read", "failed"]


@dataclass(frozen=True)
class MediaRef:
    """Media announced by a webhook; the bytes are fetched later through the provider."""

    platform_media_id: str
    mime_type: str = ""
    sha256: str = ""
    filename: str = ""
    caption: str = ""
    # Some payloads carry a direct URL. It is kept for reference only: media is always fetched
    # through the configured API host, never from a URL found in a payload.
    url: str = ""
    voice: bool = False
    animated: bool = False
    # Media that travels inside the event itself (an email attachment): its bytes, stored by
    # the core with the message, nothing to fetch. None for media announced by id or URL.
    content: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class PlatformError:
    """An error as the platform reported it (synchronously or in a webhook)."""

    code: int
    title: str = ""
    details: str = ""
    # The platform's finer code where one code covers several causes (Messenger's code 10 is
    # both "outside the messaging window" with subcode 2018278 and a missing permission).
    subcode: int | None = None


@dataclass(frozen=True)
class InboundMessage:
    """One message a contact sent to the business.

    ``text`` is always a readable rendering of the message, whatever its kind (a location reads
    as its name and address, a reaction as its emoji, an unsupported type as a short notice), so
    that lists and notifications never show an empty preview.
    """

    platform_message_id: str
    business_handle: str  # WhatsApp: the phone_number_id the message was sent to
    sender_handle: str  # WhatsApp: the contact's wa_id
    sender_name: str
    timestamp: datetime  # the platform's timestamp (timezone-aware, UTC)
    kind: MessageKind
    text: str
    media: MediaRef | None = None
    reply_to_platform_id: str | None = None  # the message this one quotes (context.id)
    reaction_to_platform_id: str | None = None  # kind == "reaction": the message reacted to
    forwarded: bool = False
    error: PlatformError | None = None  # e.g. an unsupported type carries 131051
    data: dict[str, Any] = field(default_factory=dict)  # kind-specific details, JSON-safe
    # Which conversation this message continues, for platforms where one contact may hold
    # several threads (email). ``thread_hints``: platform ids of earlier messages this one
    # answers, nearest first (email: In-Reply-To, then References newest first).
    # ``conversation_key``: a key the business handed out with an earlier send
    # (``SendContext.conversation_key``) and the contact's reply carries back (email: the
    # Reply-To plus-address or our Message-ID). The core routes a message with either to the
    # conversation they name (reopened if resolved), whoever the sender; ordinary messages go
    # to the sender's active conversation.
    thread_hints: tuple[str, ...] = ()
    conversation_key: str = ""


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery receipt for a message the business sent."""

    platform_message_id: str
    business_handle: str
    recipient_handle: str
    status: Literal["sent", "delivered", "read", "failed"]
    timestamp: datetime
    error: PlatformError | None = None
    # The reference the send carried (``SendContext.reference``), echoed back by platforms
    # whose capabilities say ``echoes_send_reference``; "" otherwise.
    reference: str = ""


@dataclass(frozen=True)
class TemplateStatusUpdate:
    """A change of a message template's review status (WhatsApp)."""

    account_handle: str  # WhatsApp: the WABA id
    template_id: str
    name: str
    language: str
    event: str  # APPROVED, REJECTED, PAUSED, ...
    reason: str = ""


@dataclass(frozen=True)
class PlatformNotice:
    """A platform-level error or notice that is not tied to one message (kept for operators)."""

    business_handle: str
    error: PlatformError


@dataclass(frozen=True)
class SubscriptionUpdate:
    """A contact's standing with the business account changed (Viber: subscribed, unsubscribed,
    conversation_started). ``subscribed`` is None when the event says nothing about it
    (conversation_started from a user who has not subscribed yet)."""

    business_handle: str
    contact_handle: str
    contact_name: str
    subscribed: bool | None
    timestamp: datetime
    # Where the contact came from, when the platform says (Viber: the ``context`` of the deep
    # link that opened the conversation); "" otherwise.
    context: str = ""


@dataclass(frozen=True)
class ReceiptWatermark:
    """Every message the business sent to ``recipient_handle`` at or before ``watermark`` has
    reached ``status`` (Messenger's delivery and read watermarks)."""

    business_handle: str
    recipient_handle: str
    status: Literal["delivered", "read"]
    watermark: datetime


@dataclass(frozen=True)
class OutboundEcho:
    """A message the business account sent from outside Madoguchi (another app, the platform's
    own inbox), reported back by the platform; stored as an outbound message. Echoes of
    Madoguchi's own sends are dropped by the provider and never reach the core."""

    platform_message_id: str
    business_handle: str
    recipient_handle: str
    timestamp: datetime
    kind: MessageKind
    text: str
    media: MediaRef | None = None


InboundEvent = (
    InboundMessage
    | StatusUpdate
    | TemplateStatusUpdate
    | PlatformNotice
    | SubscriptionUpdate
    | ReceiptWatermark
    | OutboundEcho
)


@dataclass(frozen=True)
class Capabilities:
    """What a channel kind can do; the core reads this instead of testing the kind."""

    has_templates: bool = False
    # Hours after the contact's latest inbound message during which free-form sends are allowed;
    # None means no window (email).
    window_hours: int | None = None
    read_receipts: bool = False
    max_text_length: int = 4096
    # Media kinds that can carry a caption (others refuse one rather than drop it).
    caption_kinds: frozenset[str] = frozenset({"image", "video", "document"})
    # Messenger: hours after the latest inbound message during which a tagged send (HUMAN_AGENT)
    # is still allowed, when the channel's options say the page may use the tag.
    tagged_window_hours: int | None = None
    # Viber: the business may message only contacts who are subscribed to it.
    requires_subscription: bool = False
    # Where the platform sends webhooks; False for channels that are polled (email).
    has_webhooks: bool = True
    # The platform takes outbound media only as a URL it downloads itself (Viber): the core
    # then passes ``send_media`` a signed, expiring public ``media_url`` of the file.
    media_by_url: bool = False
    # The platform's messages carry their own thread (email's Message-ID, In-Reply-To,
    # References): sends get the conversation's history in their SendContext (one more query
    # per send); other platforms get only the conversation key.
    threads_in_messages: bool = False
    # The platform's webhooks carry no name for a contact but the platform can be asked for
    # one (Messenger's User Profile API): the core calls ``Provider.fetch_profile`` once for
    # each new contact handle, in a job, and names the contact from the answer.
    has_profile_lookup: bool = False
    # The platform takes an opaque text with a send and echoes it in every delivery receipt of
    # that message (WhatsApp's ``biz_opaque_callback_data``): sends carry the message's
    # reference (``SendContext.reference``) and receipts give it back
    # (``StatusUpdate.reference``), so a receipt for a send whose answer was lost (a worker
    # killed meanwhile) still finds its message. A send interrupted that way is then retried
    # only once no receipt named it for a while (SEND_RECONCILE_SECONDS): the platform has no
    # idempotency key, and sending again would double it.
    echoes_send_reference: bool = False


@dataclass(frozen=True)
class ContactProfile:
    """What a platform says about a contact (``Provider.fetch_profile``). ``name`` is the name
    as people read it (never empty); ``avatar_url`` a picture of them, "" when none (on Meta a
    signed CDN URL that expires: worth showing soon, not keeping)."""

    name: str
    avatar_url: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    """One earlier message of a conversation, as a provider parsed or sent it."""

    platform_message_id: str
    direction: Literal["in", "out"]
    data: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SendContext:
    """Where an outbound message sits in its conversation, given to every send.

    Platforms that thread by recipient (WhatsApp, Viber, Messenger) ignore it; platforms whose
    messages carry their thread themselves (email: Message-ID, In-Reply-To, References, a
    subject and a Reply-To) build it from here. ``conversation_key``: letters and digits that
    name the conversation; a reply that carries it back (``InboundMessage.conversation_key``)
    is routed to it. ``history``: the conversation's latest messages with a platform id,
    oldest first, with the ``data`` the provider gave them. ``reply_to``: the platform id of
    the message the agent quoted, if any. ``reference``: names the message being sent (at most
    64 characters); providers whose capabilities say ``echoes_send_reference`` send it for the
    platform to echo in its receipts, others ignore it."""

    conversation_key: str = ""
    history: tuple[HistoryEntry, ...] = ()
    reply_to: str = ""
    reference: str = ""


@dataclass(frozen=True)
class SentMessage:
    """What the platform answered to an accepted send."""

    platform_message_id: str
    recipient_handle: str = ""


class SendError(Exception):
    """A platform call failed.

    ``permanent``: retrying the same request cannot succeed (the message is marked failed with
    ``error``'s reason). ``scope``: for transient errors, what must wait: ``"number"`` (the whole
    business number, e.g. throughput 130429), ``"pair"`` (only this recipient, e.g. 131056) or
    ``"request"`` (just retry this one later, e.g. a 5xx or a timeout).
    """

    def __init__(
        self,
        error: PlatformError,
        *,
        permanent: bool,
        scope: Literal["number", "pair", "request"] = "request",
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"({error.code}) {error.title}")
        self.error = error
        self.permanent = permanent
        self.scope = scope
        self.retry_after = retry_after
        self.http_status = http_status


def as_json(event: InboundEvent) -> dict[str, Any]:
    """A JSON-safe dict of an event (datetimes as ISO strings), for logs and storage."""

    def convert(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"bytes": len(value)}  # media carried inline: its size, not its content
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    return convert(dataclasses.asdict(event))


@dataclass(frozen=True)
class ChannelConfig:
    """What a provider needs of a channel: plain values, so providers never touch the ORM."""

    id: int
    kind: str
    business_handle: str
    account_handle: str = ""
    display_handle: str = ""
    api_base: str = ""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # Non-secret per-channel settings (e.g. {"human_agent_tag": True}, a Viber welcome text,
    # an email channel's hosts and ports).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredMedia:
    """Media bytes fetched from a platform and written to local storage."""

    path: str  # relative to MEDIA_ROOT
    mime_type: str
    size: int


class MediaTooLarge(Exception):
    """The platform's media exceeds the size limit for its type; nothing was kept."""


class ReceiveSink(Protocol):
    """Where a polled channel's receiver puts what it read (the core's side of ``receiver``)."""

    def store(self, body: bytes, state: dict[str, Any]) -> None: ...

    def save_state(self, state: dict[str, Any]) -> None: ...


class Receiver(Protocol):
    def run(self, stop: threading.Event) -> None: ...


class Provider:
    """Base class of a platform adapter; one instance serves one channel.

    Subclasses set ``kind`` and ``capabilities`` and implement the hooks below. Hooks that call
    the platform raise ``SendError``; parsing hooks raise the module's payload error.
    """

    kind: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config

    # -- inbound -------------------------------------------------------------------------
    def handshake(self, query: dict[str, str]) -> tuple[int, str]:
        """Answer the platform's webhook verification GET: (HTTP status, plain-text body)."""
        return 405, ""

    def verify_signature(self, headers: dict[str, str], body: bytes) -> bool:
        """Whether ``body`` (the raw bytes) was signed by the platform. Constant time."""
        raise NotImplementedError

    def parse_webhook(self, body: bytes) -> list[InboundEvent]:
        """Every event of a verified webhook body, as plain dataclasses. Pure."""
        raise NotImplementedError

    def precheck_webhook(self, body: bytes) -> None:
        """The cheap check made before a body is stored (on the hot path): raise if it is not
        this platform's payload at all. Item-level problems are the worker's to handle."""
        self.parse_webhook(body)

    def webhook_response(self, body: bytes) -> bytes | None:
        """The JSON body to answer a verified webhook with, when the platform reads one (Viber's
        welcome message in reply to conversation_started); None answers an empty 200. Pure and
        cheap: it runs on the hot path, after the body was stored."""
        return None

    # -- set-up ----------------------------------------------------------------------------
    def check_credentials(self) -> dict[str, str]:
        """Call the platform once to prove the credentials work, before the channel is saved;
        returns what the platform says about the account (e.g. {"name": ...}). Raises
        SendError (permanent for bad credentials)."""
        raise NotImplementedError

    def register_webhook(self, url: str) -> None:
        """Tell the platform where to send webhooks (Viber's set_webhook). A no-op where this is
        done in the platform's dashboard. Raises SendError."""

    def receiver(self, state: dict[str, Any], sink: ReceiveSink) -> Receiver:
        """For channels the platform does not call (``capabilities.has_webhooks`` False): an
        object whose ``run(stop)`` reads the platform until ``stop`` is set. It starts from
        ``state`` (the channel's ``receive_state``: {} the first time) and hands every raw
        body, with the state that includes it, to ``sink.store(body, state)``, which records
        both in one transaction (so a crash loses or repeats nothing); ``sink.save_state``
        records a state alone (the starting point chosen on the first connection). The bodies
        are later read by ``parse_webhook`` like any webhook body. Never called for webhook
        channels."""
        raise NotImplementedError

    def fetch_media(self, media: MediaRef, destination: str, *, kind: str = "") -> StoredMedia:
        """Download inbound media into MEDIA_ROOT/destination; MediaTooLarge past the limit of
        its ``kind`` (image, sticker, ...)."""
        raise NotImplementedError

    # -- outbound ------------------------------------------------------------------------
    def send_text(
        self,
        to: str,
        text: str,
        *,
        reply_to: str | None = None,
        tag: str | None = None,
        context: SendContext | None = None,
    ) -> SentMessage:
        """Send free-form text. ``tag``: the window rule's tag for a send outside the ordinary
        window (Messenger's HUMAN_AGENT), None inside it; providers without tags ignore it.
        ``context``: the conversation the message belongs to (see SendContext); providers
        whose platform threads by recipient ignore it."""
        raise NotImplementedError

    def send_media(
        self,
        to: str,
        kind: str,
        path: str,
        mime_type: str,
        *,
        filename: str = "",
        caption: str = "",
        reply_to: str | None = None,
        tag: str | None = None,
        media_url: str = "",
        context: SendContext | None = None,
    ) -> SentMessage:
        """Upload the file at MEDIA_ROOT/path, then send it by the platform's media id (or as
        the platform takes files). ``tag`` and ``context`` as for send_text. ``media_url``: a
        public URL of the same file, given only to providers whose capabilities say
        ``media_by_url``."""
        raise NotImplementedError

    def send_template(
        self, to: str, template: dict[str, Any], *, context: SendContext | None = None
    ) -> SentMessage:
        """``template``: {"name", "language", "parameters", "header"?, "buttons"?, "named"}.
        ``context`` as for send_text."""
        raise NotImplementedError

    def mark_read(self, platform_message_id: str) -> None:
        """Tell the platform the business read an inbound message (best effort)."""

    def fetch_profile(self, handle: str) -> ContactProfile | None:
        """Ask the platform who the contact ``handle`` is (only called when
        ``capabilities.has_profile_lookup``; the default knows nothing). Network I/O: never
        call it inside a transaction. Returns None when the platform answered without a name.
        Raises SendError: ``permanent`` when asking again cannot help (a person who never
        opened the conversation, an unknown handle, a revoked token), transient otherwise
        (timeouts, 5xx, rate limits: ``retry_after`` is a hint)."""
        return None

    def list_templates(self) -> list[dict[str, Any]]:
        """Every template of the account, all pages, as the platform describes them."""
        return []

    # -- rules the core asks about (class-level: no channel needed) ------------------------
    @classmethod
    def normalize_handle(cls, raw: str) -> str:
        """The platform handle for a user-typed address (e.g. a phone number); raises
        madoguchi.errors.Invalid when it cannot be one."""
        raise NotImplementedError

    @classmethod
    def display_handle(cls, handle: str) -> str:
        """How a contact's handle reads to people (a phone number with its "+"); "" where the
        handle is an opaque platform id that means nothing to a person."""
        return handle

    @classmethod
    def template_problems(
        cls, template: dict[str, Any], request: dict[str, Any]
    ) -> list[dict[str, str]]:
        """Why ``request`` (name, language, parameters, header, buttons) does not fit the synced
        ``template`` (the platform's description): a list of {field, code, message}."""
        return [{"field": "template", "code": "unsupported", "message": "No templates here"}]

    @classmethod
    def template_form(cls, template: dict[str, Any]) -> dict[str, Any]:
        """What a person must fill in to send ``template``, for the console's picker:
        {"header": {"kind": "none"|"text"|"image"|..., "text", "example"},
         "body": {"text", "params": [{"key", "example"}]}, "footer": str,
         "buttons": [{"index", "text", "needs_value", "example"}], "named": bool}."""
        return {"header": {"kind": "none"}, "body": {"text": "", "params": []}, "buttons": []}

    @classmethod
    def template_text(cls, template: dict[str, Any], request: dict[str, Any]) -> str:
        """The readable text of a template send, stored as the outbound message's text."""
        return f"[Template: {template.get('name', '')}]"

    @classmethod
    def media_limit(cls, kind: str, mime_type: str) -> int:
        """The largest file (bytes) the platform accepts for this kind of media."""
        return 25 * 1024 * 1024

    @classmethod
    def explain_error(cls, error: PlatformError) -> str:
        """A short explanation of a platform error for the agent."""
        return error.details or error.title or f"Error {error.code}"
