"""Viber REST Bot API, for one bot (a Viber "public account").

Implements, after ``/work/shared/platforms/PROTOCOLS.md`` §B:
- ``X-Viber-Content-Signature`` over the raw body, keyed with the auth token (B3);
- parsing of every callback (B4), in ``viber_wire`` (pure). Viber has no GET handshake: its
  availability check is a signed POST ``{"event": "webhook"}`` sent after ``set_webhook``
  (B2), which the prechecks accept and which yields no event;
- the one welcome message Viber lets a bot send before a user subscribes, answered in the body
  of the ``conversation_started`` callback (B6), from ``options["welcome_text"]``;
- ``get_account_info`` to check the credentials, ``set_webhook`` with the events handled (B2);
- sends through ``/pa/send_message`` with ``X-Viber-Auth-Token`` (B1, B5): text, and media by
  public URL (see below); ``status`` codes classified as permanent or transient (B5);
- inbound media downloaded from the URL in the callback, only from allowed hosts and within a
  size limit.

The channel (``ChannelConfig``):
- ``secrets["auth_token"]``: the bot's token (signs callbacks, authenticates API calls).
- ``business_handle``: the bot's id as ``get_account_info`` gives it (``pa:...``); Viber's
  callbacks do not name the bot, so every event carries this value.
- ``api_base``: scheme, host and port replacing ``https://chatapi.viber.com``; ``/pa/<method>``
  is added here (SPEC §4).
- ``options["sender_name"]`` (≤ 28 characters, default "Madoguchi") and
  ``options["sender_avatar"]`` (a URL): the ``sender`` Viber requires on every message.
- ``options["welcome_text"]``: the welcome message; none is sent when it is empty.
- Outbound media: Viber takes media only by a public URL it downloads itself (B5), so the
  provider declares ``media_by_url`` and the core passes ``send_media`` a signed, expiring
  public URL of the file (``madoguchi.media_links``: ``MADOGUCHI_PUBLIC_URL`` +
  ``/public/media/<token>/<name>``). Without one, ``options["media_base_url"]`` is used
  (``<media_base_url>/<path, percent-encoded>``, for a deployment that serves outbound files
  elsewhere); with neither, media sends fail permanently with ``MEDIA_URL_MISSING``.
- ``options["media_hosts"]``: extra hosts inbound media may be downloaded from.

Inbound media: Viber gives a temporary URL, not an id, so the download cannot go through the API
host as WhatsApp's does. To keep a forged or odd URL from making us fetch arbitrary addresses
(SSRF), only these are fetched: with the default API base, ``https`` URLs on ``viber.com`` or
its subdomains (Viber's media CDNs, [INFER] from captured payloads); with a custom ``api_base``
(a simulator or a proxy), URLs on that same scheme and host; and the hosts of
``options["media_hosts"]``. Redirects are followed (at most 3) only to allowed hosts. The auth
token is never sent with a media download.

Not on Viber: templates, a messaging window (but only subscribed users can be messaged, B6),
quoted replies (``reply_to`` is ignored), read receipts from the business (``mark_read`` is a
no-op), message tags (``tag`` is ignored).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from django.conf import settings
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid

from . import viber_wire as wire
from .base import (
    Capabilities,
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

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://chatapi.viber.com"
VIBER_MEDIA_DOMAIN = "viber.com"
MAX_MEDIA_REDIRECTS = 3

# Local error codes (never Viber's own, which are >= 0).
MEDIA_DOWNLOAD_FAILED = -2  # the media URL answered something other than 200
MEDIA_HOST_REFUSED = -3  # the media URL is not on an allowed host
UNEXPECTED_ANSWER = -4  # status 0 but no message_token
MEDIA_URL_MISSING = -6  # no options["media_base_url"]: Viber cannot fetch our file
NOT_SENDABLE = -7  # refused before the call: empty or too long, too large, a caption Viber lacks

_MB = 1024 * 1024
# B5: what Viber accepts from a bot (quoted by BSPs; [verify] in the contract).
SEND_LIMITS = {"image": 1 * _MB, "sticker": 1 * _MB, "video": 26 * _MB, "document": 50 * _MB}
# What a user can send a bot is not documented; Viber's apps let users share files up to
# 200 MB [INFER]. Pictures are recompressed by the app, so 10 MB is generous.
FETCH_LIMITS = {"image": 10 * _MB, "sticker": 1 * _MB, "video": 200 * _MB, "document": 200 * _MB}


def _limit(table: dict[str, int], kind: str, mime_type: str) -> int:
    if kind in table:
        return table[kind]
    family = mime_type.split("/", 1)[0]
    return table.get(family, table["document"])


class ViberProvider(Provider):
    kind = "viber"
    capabilities = Capabilities(
        has_templates=False,
        window_hours=None,
        read_receipts=True,
        max_text_length=wire.TEXT_MAX,
        caption_kinds=wire.CAPTION_KINDS,
        requires_subscription=True,
        media_by_url=True,
    )

    # -- helpers -------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return (self.config.api_base or DEFAULT_API_BASE).rstrip("/")

    @property
    def auth_token(self) -> str:
        return self.config.secrets.get("auth_token", "")

    def sender(self) -> dict[str, str]:
        options = self.config.options
        return wire.sender_object(
            str(options.get("sender_name") or ""), str(options.get("sender_avatar") or "")
        )

    def call(self, method: str, body: dict[str, Any]) -> wire.ApiAnswer:
        """One ``POST /pa/<method>``; returns the answer or raises a classified SendError."""
        with transport_errors():
            response = client().post(
                f"{self.api_base}/pa/{method}",
                json=body,
                headers={"X-Viber-Auth-Token": self.auth_token},
            )
        return wire.read_answer(response.status_code, response.content)

    @staticmethod
    def not_sendable(exc: ValueError) -> SendError:
        """A send we refuse to make (Viber would refuse it too): permanent, NOT_SENDABLE."""
        return SendError(
            PlatformError(code=NOT_SENDABLE, title="Not sendable on Viber", details=str(exc)),
            permanent=True,
        )

    # -- inbound -------------------------------------------------------------------------
    def handshake(self, query: dict[str, str]) -> tuple[int, str]:
        """Viber has no GET handshake: it checks a webhook with a signed POST (B2)."""
        return 405, "Viber webhooks are POST only"

    def verify_signature(self, headers: dict[str, str], body: bytes) -> bool:
        """``headers`` have lower-case names (the webhook view's convention)."""
        return wire.signature_matches(
            headers.get("x-viber-content-signature", ""), body, self.auth_token
        )

    def parse_webhook(self, body: bytes) -> list[InboundEvent]:
        return wire.parse_webhook(body, self.config.business_handle)

    def precheck_webhook(self, body: bytes) -> None:
        """A JSON object with a string ``event``; raises ``ViberPayloadError``."""
        wire.load_callback(body)

    def webhook_response(self, body: bytes) -> bytes | None:
        """The welcome message for a ``conversation_started`` callback (B6), when the channel
        has a ``welcome_text``; None for every other callback. Sent whether or not the user
        is subscribed already: they opened the chat, and the platform allows it each time."""
        text = str(self.config.options.get("welcome_text") or "")
        if not text.strip() or not wire.is_conversation_started(body):
            return None
        try:
            welcome = wire.welcome_body(text, sender=self.sender())
        except ValueError as exc:
            log.warning("viber channel %s: welcome text not sent (%s)", self.config.id, exc)
            return None
        return json.dumps(welcome, ensure_ascii=False, separators=(",", ":")).encode()

    def fetch_media(self, media: MediaRef, destination: str, *, kind: str = "") -> StoredMedia:
        """Download ``media.url`` (or ``platform_media_id`` when it is the URL) into
        MEDIA_ROOT/destination, from allowed hosts only (module docstring). Raises
        MediaTooLarge past the limit, SendError otherwise (permanent for a refused host,
        a 4xx, or a missing URL; transient for 5xx and network errors)."""
        url = media.url or media.platform_media_id
        if not url.startswith(("http://", "https://")):
            raise SendError(
                PlatformError(code=MEDIA_HOST_REFUSED, title="No media URL for this message"),
                permanent=True,
            )
        limit = _limit(FETCH_LIMITS, kind, media.mime_type)
        with transport_errors():
            for _hop in range(MAX_MEDIA_REDIRECTS + 1):
                self.check_media_host(url)
                with client().stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise SendError(
                            PlatformError(
                                code=MEDIA_DOWNLOAD_FAILED,
                                title=f"Media download HTTP {response.status_code}",
                            ),
                            permanent=400 <= response.status_code < 500
                            and response.status_code not in (408, 429),
                            http_status=response.status_code,
                        )
                    refuse_declared_size(response, limit)
                    mime = served_mime_type(response, media.mime_type or "application/octet-stream")
                    size = save_media(response, destination, limit)
                    return StoredMedia(path=destination, mime_type=mime, size=size)
        raise SendError(
            PlatformError(code=MEDIA_DOWNLOAD_FAILED, title="Too many media redirects"),
            permanent=True,
        )

    def check_media_host(self, url: str) -> None:
        """Raise a permanent SendError unless ``url`` is on a host media may come from."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        extra = {str(h).lower() for h in self.config.options.get("media_hosts") or ()}
        if self.config.api_base:
            base = urlsplit(self.api_base)
            allowed = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
        else:
            allowed = parts.scheme == "https" and (
                host == VIBER_MEDIA_DOMAIN or host.endswith("." + VIBER_MEDIA_DOMAIN)
            )
        if not allowed and not (parts.scheme in ("http", "https") and host in extra):
            raise SendError(
                PlatformError(code=MEDIA_HOST_REFUSED, title="Media URL on a host not allowed"),
                permanent=True,
            )

    # -- set-up ----------------------------------------------------------------------------
    def check_credentials(self) -> dict[str, str]:
        """``get_account_info``: {"id", "name", "uri", "webhook"} of the bot. A wrong token
        raises a permanent SendError (status 2)."""
        payload = self.call("get_account_info", {}).payload
        return {key: str(payload.get(key) or "") for key in ("id", "name", "uri", "webhook")}

    def register_webhook(self, url: str) -> None:
        """``set_webhook`` with every event Madoguchi handles. Viber probes ``url`` with a
        signed ``webhook`` callback before answering, so the channel must already accept
        callbacks (saved, with its token) when this is called; a probe that does not get
        HTTP 200 comes back as a permanent SendError (status 1, invalidUrl). ``url`` "" removes
        the webhook."""
        self.call("set_webhook", wire.set_webhook_body(url))

    # -- outbound ------------------------------------------------------------------------
    def send_body(self, body: dict[str, Any]) -> SentMessage:
        answer = self.call("send_message", body)
        token = answer.payload.get("message_token")
        if isinstance(token, bool) or not isinstance(token, int | str) or not str(token):
            raise SendError(
                PlatformError(code=UNEXPECTED_ANSWER, title="Unexpected answer from Viber"),
                permanent=False,
            )
        return SentMessage(platform_message_id=str(token), recipient_handle=body["receiver"])

    def send_text(
        self,
        to: str,
        text: str,
        *,
        reply_to: str | None = None,
        tag: str | None = None,
        context: SendContext | None = None,
    ) -> SentMessage:
        """Viber has no quoted replies and no tags: ``reply_to`` and ``tag`` are ignored."""
        try:
            body = wire.text_body(to, text, sender=self.sender())
        except ValueError as exc:
            raise self.not_sendable(exc) from None
        return self.send_body(body)

    def media_url(self, path: str) -> str:
        """The public URL Viber downloads the outbound file ``MEDIA_ROOT/path`` from."""
        base = str(self.config.options.get("media_base_url") or "").rstrip("/")
        if not base:
            raise SendError(
                PlatformError(
                    code=MEDIA_URL_MISSING,
                    title="No public media URL configured",
                    details="Viber fetches media from a public URL: set the channel's "
                    "media_base_url.",
                ),
                permanent=True,
            )
        return f"{base}/{quote(path.lstrip('/'))}"

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
        """Send MEDIA_ROOT/path by a public URL: ``media_url`` (the core's signed link), else
        one under ``options["media_base_url"]``. Only images carry a caption; a file without a
        name is sent under its stored name."""
        url = media_url or self.media_url(path)
        size = (Path(settings.MEDIA_ROOT) / path).stat().st_size
        limit = _limit(SEND_LIMITS, kind, mime_type)
        if size > limit:
            raise SendError(
                PlatformError(
                    code=NOT_SENDABLE,
                    title="File too large for Viber",
                    details=f"{size} bytes; Viber takes at most {limit} for this kind.",
                ),
                permanent=True,
            )
        try:
            body = wire.media_body(
                to,
                kind,
                url,
                sender=self.sender(),
                size=size,
                filename=filename or Path(path).name,
                caption=caption,
            )
        except ValueError as exc:
            raise self.not_sendable(exc) from None
        return self.send_body(body)

    # -- rules ---------------------------------------------------------------------------
    @classmethod
    def display_handle(cls, handle: str) -> str:
        return ""  # an opaque platform id: it means nothing to a person

    @classmethod
    def normalize_handle(cls, raw: str) -> str:
        """A Viber user id as given (ids are per bot and case-sensitive, B1); raises Invalid
        for anything not shaped like one (a phone number, for example)."""
        text = raw.strip()
        if not wire.is_user_id(text):
            raise Invalid(
                _("Not a Viber user id: Viber users are identified by ids like 01234567890A=."),
                code="invalid_viber_id",
            )
        return text

    @classmethod
    def media_limit(cls, kind: str, mime_type: str) -> int:
        return _limit(SEND_LIMITS, kind, mime_type)

    @classmethod
    def explain_error(cls, error: PlatformError) -> str:
        if error.code == MEDIA_URL_MISSING:
            return (
                "Viber needs a public address for files; an admin must set the channel's media URL."
            )
        if error.code in (NOT_SENDABLE, MEDIA_HOST_REFUSED, MEDIA_DOWNLOAD_FAILED):
            return error.details or error.title
        return wire.readable_reason(error)
