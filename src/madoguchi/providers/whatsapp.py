"""WhatsApp Business Platform, Cloud API (Graph API), for one business phone number.

Implements, after ``shared/platforms/PROTOCOLS.md`` §A and Meta's OpenAPI file v23.0:
- the webhook handshake (A2) and ``X-Hub-Signature-256`` over the raw body (A3), shared with
  Messenger in ``meta``;
- parsing of every ``messages`` / ``statuses`` / template-status payload (A4-A6), in
  ``whatsapp_wire`` (pure);
- sends: text with context, media uploaded then sent by id, templates, read receipts (A7, A11);
- errors classified as permanent or transient with their scope (A8, A12);
- templates listed from ``/{waba-id}/message_templates`` following every page (A10);
- inbound media fetched through ``/{media-id}`` with the bearer token, only from the configured
  API host, within the platform's size limits (A11), written by ``http.save_media``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid

from . import whatsapp_wire as wire
from .base import (
    Capabilities,
    InboundEvent,
    MediaRef,
    MediaTooLarge,
    PlatformError,
    Provider,
    SendContext,
    SendError,
    SentMessage,
    StoredMedia,
)
from .http import client, save_media, transport_errors
from .meta import MetaWebhooks, graph_call

DEFAULT_API_BASE = "https://graph.facebook.com"
# Meta serves media downloads from its CDN host, not from graph.facebook.com. With a custom
# api_base (a simulator or a proxy) only that host is trusted.
META_MEDIA_HOSTS = {"lookaside.fbsbx.com"}

# A11: size limits per media family, in bytes.
MEDIA_LIMITS = {
    "audio": 16 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "image": 5 * 1024 * 1024,
    "sticker": 500 * 1024,
    "document": 100 * 1024 * 1024,
}


def media_limit(kind: str, mime_type: str) -> int:
    if kind in MEDIA_LIMITS:
        return MEDIA_LIMITS[kind]
    family = mime_type.split("/", 1)[0]
    return MEDIA_LIMITS.get(family, MEDIA_LIMITS["document"])


class WhatsAppProvider(MetaWebhooks, Provider):
    kind = "whatsapp"
    capabilities = Capabilities(
        has_templates=True,
        window_hours=24,
        read_receipts=True,
        max_text_length=4096,
        echoes_send_reference=True,  # biz_opaque_callback_data (A5, A7)
    )

    # -- helpers -------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return (self.config.api_base or DEFAULT_API_BASE).rstrip("/")

    def graph_url(self, path: str) -> str:
        return f"{self.api_base}/{settings.WHATSAPP_GRAPH_VERSION}/{path.lstrip('/')}"

    @property
    def access_token(self) -> str:
        return self.config.secrets.get("access_token", "")

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One Graph API call; returns the JSON answer or raises a classified SendError."""
        return graph_call(
            method, url, token=self.access_token, classify_error=wire.classify_error, **kwargs
        )

    # -- inbound -------------------------------------------------------------------------
    def parse_webhook(self, body: bytes) -> list[InboundEvent]:
        return wire.parse_webhook(body)

    def precheck_webhook(self, body: bytes) -> None:
        wire.check_envelope(body)

    def fetch_media(self, media: MediaRef, destination: str, *, kind: str = "") -> StoredMedia:
        info = self.call("GET", self.graph_url(media.platform_media_id))
        url = str(info.get("url", ""))
        self.check_media_host(url)
        mime = str(info.get("mime_type") or media.mime_type or "application/octet-stream")
        limit = media_limit(kind, mime)
        declared = int(info["file_size"]) if str(info.get("file_size", "")).isdigit() else 0
        if declared > limit:
            raise MediaTooLarge(f"{declared} bytes > {limit}")
        with (
            transport_errors(),
            client().stream("GET", url, headers=self.auth_headers()) as response,
        ):
            if response.status_code != 200:
                raise SendError(
                    PlatformError(code=-2, title=f"Media download HTTP {response.status_code}"),
                    permanent=response.status_code in (401, 403),
                    http_status=response.status_code,
                )
            size = save_media(response, destination, limit)
        return StoredMedia(path=destination, mime_type=mime, size=size)

    def check_media_host(self, url: str) -> None:
        """Refuse to send our bearer token anywhere but the configured API (or Meta's CDN)."""
        parts = urlsplit(url)
        base = urlsplit(self.api_base)
        allowed = {(base.scheme, base.netloc)}
        if not self.config.api_base:
            allowed |= {("https", host) for host in META_MEDIA_HOSTS}
        if (parts.scheme, parts.netloc) not in allowed:
            raise SendError(
                PlatformError(code=-3, title="Media URL outside the configured API host"),
                permanent=True,
            )

    # -- set-up ----------------------------------------------------------------------------
    def check_credentials(self) -> dict[str, str]:
        """``GET /{phone-number-id}?fields=verified_name,display_phone_number`` with the access
        token: {"id", "name" (the verified business name), "display_handle" (the number as
        people dial it)}. Raises SendError: permanent for a bad token (190), an unknown number
        (100) or a token answering for another number."""
        number = self.call(
            "GET",
            self.graph_url(self.config.business_handle),
            params={"fields": "verified_name,display_phone_number"},
        )
        number_id = str(number.get("id", ""))
        if number_id != self.config.business_handle:
            raise SendError(
                PlatformError(
                    code=-5,
                    title="The access token answered for another phone number",
                    details=f"phone number id {number_id or '?'}",
                ),
                permanent=True,
            )
        return {
            "id": number_id,
            "name": str(number.get("verified_name") or ""),
            "display_handle": str(number.get("display_phone_number") or ""),
        }

    # -- outbound ------------------------------------------------------------------------
    def send_body(self, body: dict[str, Any], context: SendContext | None = None) -> SentMessage:
        """POST one message; the context's reference rides along as ``biz_opaque_callback_data``
        (A7: up to 512 characters), which Meta echoes in every status of the message (A5)."""
        if context is not None and context.reference:
            body = {**body, "biz_opaque_callback_data": context.reference[:512]}
        answer = self.call(
            "POST", self.graph_url(f"{self.config.business_handle}/messages"), json=body
        )
        try:
            message_id = str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise SendError(
                PlatformError(code=-4, title="Unexpected answer from the platform"),
                permanent=False,
            ) from None
        contacts = answer.get("contacts") or [{}]
        return SentMessage(
            platform_message_id=message_id, recipient_handle=str(contacts[0].get("wa_id", ""))
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
        return self.send_body(wire.text_body(to, text, reply_to=reply_to), context)

    def upload_media(self, path: str, mime_type: str, filename: str) -> str:
        full = Path(settings.MEDIA_ROOT) / path
        with full.open("rb") as handle:
            answer = self.call(
                "POST",
                self.graph_url(f"{self.config.business_handle}/media"),
                data={"messaging_product": "whatsapp", "type": mime_type},
                files={"file": (filename or full.name, handle, mime_type)},
            )
        return str(answer["id"])

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
        media_id = self.upload_media(path, mime_type, filename)
        body = wire.media_body(
            to,
            kind,
            media_id,
            caption=caption,
            filename=filename if kind == "document" else "",
            reply_to=reply_to,
        )
        return self.send_body(body, context)

    def send_template(
        self, to: str, template: dict[str, Any], *, context: SendContext | None = None
    ) -> SentMessage:
        body = wire.template_body(
            to,
            template["name"],
            template["language"],
            body_params=template.get("parameters") or [],
            header=template.get("header"),
            buttons=template.get("buttons"),
            named=bool(template.get("named")),
        )
        return self.send_body(body, context)

    def mark_read(self, platform_message_id: str) -> None:
        self.call(
            "POST",
            self.graph_url(f"{self.config.business_handle}/messages"),
            json=wire.read_receipt_body(platform_message_id),
        )

    def list_templates(self) -> list[dict[str, Any]]:
        url: str | None = self.graph_url(f"{self.config.account_handle}/message_templates")
        params: dict[str, Any] | None = {
            "limit": 100,
            "fields": "id,name,language,status,category,parameter_format,components",
        }
        templates: list[dict[str, Any]] = []
        seen_pages = 0
        while url:
            self.check_media_host(url)  # a "next" link must stay on the configured API host
            answer = self.call("GET", url, params=params)
            templates.extend(item for item in answer.get("data", []) if isinstance(item, dict))
            url = (answer.get("paging") or {}).get("next")
            params = None  # the next link carries its own query
            seen_pages += 1
            if seen_pages > 1000:  # a platform bug must not loop us forever
                break
        return templates

    # -- rules ---------------------------------------------------------------------------
    @classmethod
    def display_handle(cls, handle: str) -> str:
        return f"+{handle}"

    @classmethod
    def normalize_handle(cls, raw: str) -> str:
        """A wa_id (digits, country code first, no "+") from a phone number as people type it."""
        import phonenumbers

        text = raw.strip()
        if not text.startswith("+"):
            text = "+" + text.lstrip("0")
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException:
            raise Invalid(
                _("Not a phone number: give it with its country code, e.g. +81 90 1234 5678."),
                code="invalid_phone_number",
            ) from None
        if not phonenumbers.is_valid_number(number):
            raise Invalid(
                _("This phone number is not valid for its country."), code="invalid_phone_number"
            )
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]

    @classmethod
    def template_problems(
        cls, template: dict[str, Any], request: dict[str, Any]
    ) -> list[dict[str, str]]:
        spec = wire.TemplateSpec.from_graph(template)
        problems = wire.check_template_params(
            spec, request.get("parameters"), request.get("header"), request.get("buttons")
        )
        return [{"field": p.field, "code": p.code, "message": p.message} for p in problems]

    @classmethod
    def template_form(cls, template: dict[str, Any]) -> dict[str, Any]:
        spec = wire.TemplateSpec.from_graph(template)
        needs = spec.required_parameters()
        valued = {slot.index: slot for slot in needs.buttons}
        return {
            "header": {
                "kind": needs.header,
                "text": spec.header_text,
                "key": needs.header_param.key if needs.header_param else "",
                "example": needs.header_param.example if needs.header_param else "",
            },
            "body": {
                "text": spec.body_text,
                "params": [{"key": slot.key, "example": slot.example} for slot in needs.body],
            },
            "footer": spec.footer_text,
            "buttons": [
                {
                    "index": button.index,
                    "text": button.text,
                    "needs_value": button.index in valued,
                    "sub_type": valued[button.index].sub_type if button.index in valued else "",
                    "example": valued[button.index].example if button.index in valued else "",
                }
                for button in spec.buttons
            ],
            "named": needs.named,
        }

    @classmethod
    def template_text(cls, template: dict[str, Any], request: dict[str, Any]) -> str:
        spec = wire.TemplateSpec.from_graph(template)
        return wire.render_template_text(spec, request.get("parameters"), request.get("header"))

    @classmethod
    def explain_error(cls, error: PlatformError) -> str:
        return wire.readable_reason(error)

    @classmethod
    def media_limit(cls, kind: str, mime_type: str) -> int:
        return media_limit(kind, mime_type)
