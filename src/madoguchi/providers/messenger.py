"""Facebook Messenger Platform (Graph API Send API and page webhooks), for one Facebook Page.

Implements, after ``shared/platforms/PROTOCOLS.md`` §C:
- the webhook handshake (C1, as WhatsApp's) and ``X-Hub-Signature-256`` with the App Secret over
  the raw body (C2), both in ``meta``;
- parsing of the page webhook (C3): messages, attachments, postbacks, reactions, delivery and
  read watermarks, echoes (ours dropped by app id), in ``messenger_wire`` (pure);
- sends through ``POST /{page-id}/messages`` with the page access token (C5): text, media
  uploaded in the same multipart request (``filedata``), ``messaging_type`` RESPONSE inside the
  24-hour window and ``MESSAGE_TAG`` + ``HUMAN_AGENT`` when the window rule passes the tag;
- errors classified on their (code, subcode) pair (C6);
- the credential check at channel set-up: ``GET /{page-id}?fields=id,name`` with the page token,
  and the app the token belongs to (``GET /app``, best effort), whose id recognises our echoes;
- the contact's name: page webhooks carry none, so ``fetch_profile`` asks the User Profile API,
  ``GET /{PSID}?fields=first_name,last_name,profile_pic`` with the page token (Meta's "User
  Profile API", updated Mar 18 2026:
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/identity/user-profile).
  The page may read a person's profile once they started the conversation (sent a message,
  tapped Get Started, accepted a message request...); before that, or for a PSID it cannot
  read, the Graph answers an error (code 100), which is permanent: the contact keeps its PSID.

Channel configuration (``ChannelConfig``): ``business_handle`` = the page id; secrets
``page_access_token``, ``app_secret``, ``verify_token``; options ``app_id`` (our app, to drop
our own echoes; learned by ``check_credentials``) and ``human_agent_tag`` (read by the window
rule, not here). ``api_base`` replaces ``https://graph.facebook.com``; the Graph version is
added here (``settings.MESSENGER_GRAPH_VERSION`` when set, else ``GRAPH_VERSION``).

The page token travels in an ``Authorization: Bearer`` header rather than the contract's
``?access_token=`` query parameter (both are accepted by the Graph API), so that it never shows
up in URLs or access logs.

Media rule. Messenger attachments are pre-signed CDN URLs found in the webhook (there is no
media id to look up). They are fetched without any credential, and only from Meta's CDN hosts
(``*.fbcdn.net``, ``*.fbsbx.com``) over HTTPS, or, when ``api_base`` is set (a simulator or a
proxy), only from that exact scheme and host: a URL in a payload never makes us contact an
arbitrary host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid

from . import messenger_wire as wire
from .base import (
    Capabilities,
    ContactProfile,
    InboundEvent,
    MediaRef,
    PlatformError,
    Provider,
    SendContext,
    SendError,
    SentMessage,
    StoredMedia,
)
from .http import (
    client,
    refuse_declared_size,
    save_media,
    served_mime_type,
    transport_errors,
)
from .meta import MetaWebhooks, graph_call

DEFAULT_API_BASE = "https://graph.facebook.com"
GRAPH_VERSION = "v25.0"  # C5
# Hosts Meta serves Messenger attachments from (suffix match, HTTPS only).
META_CDN_SUFFIXES = (".fbcdn.net", ".fbsbx.com")
# Messenger's attachment size limit (all types).
MEDIA_LIMIT = 25 * 1024 * 1024
# Refusals made here, before any request (a tag we do not send, an over-long text...).
LOCAL_REFUSAL_CODE = -5
_PSID_DIGITS = (5, 32)


class MessengerProvider(MetaWebhooks, Provider):
    kind = "messenger"
    capabilities = Capabilities(
        has_templates=False,
        window_hours=24,
        tagged_window_hours=7 * 24,  # HUMAN_AGENT: "within a 7-day period" (C5)
        read_receipts=True,
        max_text_length=wire.MAX_TEXT_LENGTH,
        caption_kinds=frozenset(),  # a Messenger attachment carries no text
        has_profile_lookup=True,  # webhooks carry a PSID, never a name
    )

    # -- helpers -------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return (self.config.api_base or DEFAULT_API_BASE).rstrip("/")

    def graph_url(self, path: str) -> str:
        version = getattr(settings, "MESSENGER_GRAPH_VERSION", GRAPH_VERSION)
        return f"{self.api_base}/{version}/{path.lstrip('/')}"

    @property
    def access_token(self) -> str:
        return self.config.secrets.get("page_access_token", "")

    def call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One Graph API call; returns the JSON answer or raises a classified SendError."""
        return graph_call(
            method, url, token=self.access_token, classify_error=wire.classify_error, **kwargs
        )

    @staticmethod
    def refused(exc: ValueError) -> SendError:
        """A send we refuse to make (the platform would refuse it too): permanent."""
        return SendError(
            PlatformError(code=LOCAL_REFUSAL_CODE, title="Not sent", details=str(exc)),
            permanent=True,
        )

    # -- inbound -------------------------------------------------------------------------
    def parse_webhook(self, body: bytes) -> list[InboundEvent]:
        return wire.parse_webhook(body, own_app_id=str(self.config.options.get("app_id", "")))

    def precheck_webhook(self, body: bytes) -> None:
        wire.check_envelope(body)

    # -- set-up ----------------------------------------------------------------------------
    def check_credentials(self) -> dict[str, str]:
        """``{"id", "name"}`` of the page, plus ``"app_id"`` and ``"app_name"`` of the app the
        token belongs to when the platform tells (store ``app_id`` in the channel's options:
        it is how our own echoes are recognised). Raises SendError: permanent for a bad token
        (190) or a token of another page."""
        page = self.call(
            "GET", self.graph_url(quote(self.config.business_handle)), params={"fields": "id,name"}
        )
        page_id = str(page.get("id", ""))
        if page_id != self.config.business_handle:
            raise SendError(
                PlatformError(
                    code=LOCAL_REFUSAL_CODE,
                    title="The access token belongs to another page",
                    details=f"page id {page_id or '?'}",
                ),
                permanent=True,
            )
        found = {"id": page_id, "name": str(page.get("name", ""))}
        try:
            app = self.call("GET", self.graph_url("app"), params={"fields": "id,name"})
        except SendError:
            return found  # the page works; echoes are then kept (see messenger_wire)
        app_id = wire.normalize_app_id(app.get("id"))
        if app_id:
            found.update(app_id=app_id, app_name=str(app.get("name", "")))
        return found

    def fetch_media(self, media: MediaRef, destination: str, *, kind: str = "") -> StoredMedia:
        url = media.url or (
            media.platform_media_id if media.platform_media_id.startswith("http") else ""
        )
        self.check_media_host(url)
        limit = MEDIA_LIMIT
        # No credentials: the URL is pre-signed, and the token must not leave the Graph API.
        with transport_errors(), client().stream("GET", url) as response:
            if response.status_code != 200:
                raise SendError(
                    PlatformError(code=-2, title=f"Media download HTTP {response.status_code}"),
                    # A CDN link expires: 403/404/410 will not get better.
                    permanent=response.status_code in (401, 403, 404, 410),
                    http_status=response.status_code,
                )
            refuse_declared_size(response, limit)
            mime = served_mime_type(response, media.mime_type or "application/octet-stream")
            size = save_media(response, destination, limit)
        return StoredMedia(path=destination, mime_type=mime, size=size)

    def check_media_host(self, url: str) -> None:
        """Refuse any media URL outside Meta's CDN (HTTPS) or, with a custom api_base, outside
        that exact scheme and host. Raises a permanent SendError."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if self.config.api_base:
            base = urlsplit(self.api_base)
            allowed = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
        else:
            allowed = parts.scheme == "https" and host.endswith(META_CDN_SUFFIXES)
        if not url or not allowed:
            raise SendError(
                PlatformError(code=-3, title="Media URL outside the allowed hosts"),
                permanent=True,
            )

    def fetch_profile(self, handle: str) -> ContactProfile | None:
        """The person's name and picture from the User Profile API. Raises SendError as
        ``classify_error`` maps the Graph error: 100 (never opted in, unknown PSID) and 190
        (token) permanent; rate limits, 5xx and timeouts transient."""
        answer = self.call(
            "GET",
            self.graph_url(quote(handle, safe="")),
            params={"fields": wire.PROFILE_FIELDS},
        )
        return wire.parse_profile(answer)

    # -- outbound ------------------------------------------------------------------------
    def messages_url(self) -> str:
        return self.graph_url(f"{quote(self.config.business_handle)}/messages")

    def sent(self, answer: dict[str, Any], to: str) -> SentMessage:
        message_id = answer.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise SendError(
                PlatformError(code=-4, title="Unexpected answer from the platform"),
                permanent=False,
            )
        return SentMessage(
            platform_message_id=message_id, recipient_handle=str(answer.get("recipient_id", to))
        )

    def send_text(
        self,
        to: str,
        text: str,
        *,
        reply_to: str | None = None,
        tag: str | None = None,
        context: SendContext | None = None,
    ) -> SentMessage:
        try:
            body = wire.text_body(to, text, reply_to=reply_to, tag=tag)
        except ValueError as exc:
            raise self.refused(exc) from None
        return self.sent(self.call("POST", self.messages_url(), json=body), to)

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
        context: SendContext | None = None,
    ) -> SentMessage:
        """Send the file at MEDIA_ROOT/path as ``filedata`` of a multipart Send API request
        (Messenger has no upload-then-send-by-id step for a one-off file). A ``caption`` is
        refused: Messenger attachments carry no text (``caption_kinds`` is empty)."""
        try:
            if caption:
                raise ValueError("Messenger attachments cannot carry a caption")
            form = wire.upload_form(to, kind, reply_to=reply_to, tag=tag)
        except ValueError as exc:
            raise self.refused(exc) from None
        full = Path(settings.MEDIA_ROOT) / path
        with full.open("rb") as handle:
            answer = self.call(
                "POST",
                self.messages_url(),
                data=form,
                files={"filedata": (filename or full.name, handle, mime_type)},
            )
        return self.sent(answer, to)

    def mark_seen(self, psid: str) -> None:
        """``sender_action: mark_seen`` for the conversation with ``psid`` (C5)."""
        self.call("POST", self.messages_url(), json=wire.sender_action_body(psid, "mark_seen"))

    def mark_read(self, platform_message_id: str) -> None:
        """Best effort: Messenger marks a whole conversation seen, by person, not by message,
        so the sender of the message is looked up (``GET /{message-id}?fields=from``) first.
        Postbacks and reactions have no message to look up (ids made here) and are skipped."""
        if platform_message_id.startswith(("postback.", "reaction.")):
            return
        mid = platform_message_id.split("#", 1)[0]
        message = self.call("GET", self.graph_url(quote(mid, safe="")), params={"fields": "from"})
        sender = message.get("from")
        psid = str(sender.get("id", "")) if isinstance(sender, dict) else ""
        if psid and psid != self.config.business_handle:
            self.mark_seen(psid)

    # -- rules ---------------------------------------------------------------------------
    @classmethod
    def display_handle(cls, handle: str) -> str:
        return ""  # an opaque platform id: it means nothing to a person

    @classmethod
    def normalize_handle(cls, raw: str) -> str:
        """A page-scoped id (PSID): the digits Messenger gave the person for this page. People
        cannot type one from memory; this only checks the shape of a pasted id."""
        text = raw.strip()
        low, high = _PSID_DIGITS
        if not (text.isascii() and text.isdigit() and low <= len(text) <= high):
            raise Invalid(
                _("Not a Messenger user id: the page-scoped id (PSID) is a long number."),
                code="invalid_psid",
            )
        return text

    @classmethod
    def explain_error(cls, error: PlatformError) -> str:
        return wire.readable_reason(error)

    @classmethod
    def media_limit(cls, kind: str, mime_type: str) -> int:
        return MEDIA_LIMIT
