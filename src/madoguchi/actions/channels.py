"""Channels and their templates."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid
from madoguchi.models import Channel, Team, Template, User
from madoguchi.providers.registry import UnknownChannelKind, provider_class

from . import audit


def do_create_channel(
    actor: User | None,
    *,
    kind: str,
    name: str,
    business_handle: str,
    account_handle: str = "",
    display_handle: str = "",
    api_base: str = "",
    secrets: dict[str, str],
    visibility: str = "all",
    team: Team | None = None,
    outbound_mps: int = 80,
) -> Channel:
    try:
        provider_class(kind)
    except UnknownChannelKind:
        raise Invalid(
            _("Unknown channel kind %(kind)s.") % {"kind": kind}, code="invalid_kind"
        ) from None
    if api_base and not api_base.startswith(("http://", "https://")):
        raise Invalid(_("The API base must be an http(s) URL."), code="invalid_api_base")
    with transaction.atomic():
        channel = Channel.objects.create(
            kind=kind,
            name=name,
            business_handle=business_handle,
            account_handle=account_handle,
            display_handle=display_handle,
            api_base=api_base.rstrip("/"),
            secrets=secrets,
            visibility=visibility,
            team=team,
            outbound_mps=outbound_mps,
        )
        # Secrets are never part of the audit trail: only which ones were set.
        audit.record(
            "channel.created",
            actor=actor,
            channel=channel.pk,
            kind=kind,
            name=name,
            secrets_set=sorted(secrets),
        )
    return channel


def do_sync_templates(channel: Channel, templates: list[dict[str, Any]]) -> int:
    """Replace the channel's templates by the platform's list. Returns how many are stored."""
    with transaction.atomic():
        seen: set[tuple[str, str]] = set()
        for item in templates:
            name = str(item.get("name") or "")
            language = str(item.get("language") or "")
            if not name or not language:
                continue
            seen.add((name, language))
            Template.objects.update_or_create(
                channel=channel,
                name=name,
                language=language,
                defaults={
                    "platform_id": str(item.get("id") or ""),
                    "status": str(item.get("status") or "").upper(),
                    "category": str(item.get("category") or ""),
                    "parameter_format": str(item.get("parameter_format") or "POSITIONAL"),
                    "components": item.get("components") or [],
                },
            )
        stale = [
            t.pk
            for t in Template.objects.filter(channel=channel)
            if (t.name, t.language) not in seen
        ]
        Template.objects.filter(pk__in=stale).delete()
        audit.record("templates.synced", channel=channel.pk, count=len(seen), removed=len(stale))
    return len(seen)
