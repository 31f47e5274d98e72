"""Channels and their templates.

Setting a channel up (``check_create_channel``), in this order:

1. the input is checked (kind, name, handles, URLs; the actor must be an admin);
2. the credentials are tried against the platform (``Provider.check_credentials``), outside any
   transaction: a refusal raises ``Invalid`` with code ``invalid_credentials``, an unreachable
   platform ``platform_unreachable``, and nothing is saved;
3. what the platform answered is used: ``id`` becomes the business handle (Viber's bot id;
   WhatsApp's and Messenger's must equal the one given), ``display_handle`` or ``name`` the
   display handle when none was given, ``app_id`` an option (Messenger recognises the echoes of
   its own sends by it);
4. the channel, its audit row (the names of the secrets set, never their values) and, for
   kinds with templates, a template sync job are committed together;
5. then, for webhook channels, ``Provider.register_webhook(MADOGUCHI_PUBLIC_URL +
   webhook_path)`` (a no-op where the URL is entered in the platform's dashboard). Viber probes
   the URL before answering, which is why the channel must be committed and active first.
   If registration fails the channel is deleted again (audit ``channel.discarded``) and
   ``Invalid`` (``webhook_registration_failed``) is raised: a set-up either completes or leaves
   nothing behind, so running the same command again is always the fix, and no inactive
   half-configured channel lingers next to the one created by the retry.

Secrets never appear in logs, audit rows, error messages or anything returned to a client.
Every ``check_*`` function here makes network calls: call it outside a transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from madoguchi.errors import Forbidden, Invalid
from madoguchi.models import Channel, Team, Template, User, Visibility
from madoguchi.providers.base import ChannelConfig, Provider, SendError
from madoguchi.providers.registry import UnknownChannelKind, provider_class, provider_for
from madoguchi.rules.channel_setup import kind_setup, sort_values

from . import audit
from .jobs import enqueue

log = logging.getLogger(__name__)


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
    options: dict[str, Any] | None = None,
    visibility: str = "all",
    team: Team | None = None,
    outbound_mps: int = 80,
) -> Channel:
    """Save a channel as given (trusted input, no platform call) with its audit row."""
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
            options=options or {},
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


# -- set-up with the platform -----------------------------------------------------------------


def check_is_admin(actor: User | None) -> None:
    """``None`` is the command line (trusted); people must be admins."""
    if actor is not None and not actor.is_admin:
        raise Forbidden(_("Only administrators can set up channels."), code="not_admin")


def check_outside_transaction() -> None:
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError("channel set-up calls the platform: never inside a transaction")


def platform_refusal(kind: str, exc: SendError) -> Invalid:
    """The Invalid error for a failed credential check: refused or unreachable."""
    if exc.permanent:
        reason = provider_class(kind).explain_error(exc.error)
        return Invalid(
            _("The platform refused these credentials: %(reason)s") % {"reason": reason},
            code="invalid_credentials",
        )
    # The providers' explanations of transient errors speak of retrying a message: say what
    # happened instead (a timeout, a refused connection, an HTTP 5xx).
    error = exc.error
    reason = error.title or str(error.code)
    if error.details:
        reason = f"{reason} ({error.details})"
    return Invalid(
        _("The platform could not be reached: %(reason)s") % {"reason": reason},
        code="platform_unreachable",
    )


def ask_platform(kind: str, config: ChannelConfig) -> dict[str, str]:
    """``check_credentials`` of an unsaved configuration; Invalid when it fails."""
    check_outside_transaction()
    provider = provider_class(kind)(config)
    try:
        return provider.check_credentials()
    except SendError as exc:
        raise platform_refusal(kind, exc) from None


def clean_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise Invalid(
            _("A channel needs a name of 1 to 100 characters."), code="invalid_name", field="name"
        )
    return name


def clean_visibility(visibility: str) -> str:
    if visibility not in Visibility.values:
        raise Invalid(_("Unknown visibility."), code="invalid_visibility", field="visibility")
    return visibility


def without_empty(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options with empty text removed (the provider's default applies)."""
    return {k: v for k, v in options.items() if v not in ("", None)}


def webhook_url(channel: Channel) -> str:
    return f"{settings.PUBLIC_URL}{channel.webhook_path}"


def registers_webhooks(kind: str) -> bool:
    """Whether Madoguchi tells the platform the webhook URL itself (Viber), rather than an
    admin entering it in the platform's dashboard (Meta). Read from the provider: the base
    class's ``register_webhook`` is a no-op."""
    cls = provider_class(kind)
    return cls.capabilities.has_webhooks and cls.register_webhook is not Provider.register_webhook


def register_webhook(channel: Channel) -> None:
    """Tell the platform where the channel's webhooks go; Invalid (webhook_registration_failed)
    when it refuses. The channel must be committed and active (Viber probes the URL)."""
    if not provider_class(channel.kind).capabilities.has_webhooks:
        return
    check_outside_transaction()
    url = webhook_url(channel)
    try:
        provider_for(channel).register_webhook(url)
    except SendError as exc:
        reason = provider_class(channel.kind).explain_error(exc.error)
        raise Invalid(
            _("The platform did not accept the webhook URL %(url)s: %(reason)s")
            % {"url": url, "reason": reason},
            code="webhook_registration_failed",
        ) from None


def check_create_channel(
    actor: User | None,
    *,
    kind: str,
    name: str,
    values: Mapping[str, Any],
    visibility: str = "all",
    team: Team | None = None,
    outbound_mps: int = 80,
    check_credentials: bool = True,
) -> Channel:
    """Set a channel up from its set-up fields (``rules.channel_setup``: field name -> value,
    as typed on the command line or in the console), checked against the platform first (see
    the module docstring for the order and the errors). ``check_credentials=False`` saves
    without asking the platform (offline set-up, benchmarks), only for kinds whose set-up
    allows it; the webhook is still registered where Madoguchi does that. Returns the saved,
    active channel. Raises Forbidden (not an admin) or Invalid."""
    check_is_admin(actor)
    setup = kind_setup(kind)  # Invalid for an unknown kind
    provider_cls = provider_class(kind)
    name = clean_name(name)
    visibility = clean_visibility(visibility)
    if outbound_mps < 1:
        raise Invalid(_("The send rate must be at least 1."), code="invalid_mps", field="mps")
    given = sort_values(kind, values)
    options = without_empty(given.options)
    business_handle = given.business_handle
    display_handle = given.display_handle
    if check_credentials:
        found = ask_platform(
            kind,
            ChannelConfig(
                id=0,
                kind=kind,
                business_handle=business_handle,
                account_handle=given.account_handle,
                display_handle=display_handle,
                api_base=given.api_base.rstrip("/"),
                secrets=given.secrets,
                options=options,
            ),
        )
        business_handle = found.get("id") or business_handle
        display_handle = display_handle or found.get("display_handle") or found.get("name", "")
        if found.get("app_id"):
            options["app_id"] = found["app_id"]
    elif not setup.offline_ok:
        raise Invalid(
            _("A %(platform)s channel cannot be set up without asking the platform.")
            % {"platform": setup.label},
            code="check_required",
        )
    if not business_handle:
        raise Invalid(_("The platform did not name the account."), code="invalid_credentials")
    with transaction.atomic():
        channel = do_create_channel(
            actor,
            kind=kind,
            name=name,
            business_handle=business_handle[:64],
            account_handle=given.account_handle,
            display_handle=display_handle[:64],
            api_base=given.api_base,
            secrets=given.secrets,
            options=options,
            visibility=visibility,
            team=team,
            outbound_mps=outbound_mps,
        )
        if provider_cls.capabilities.has_templates:
            enqueue("sync_templates", {"channel_id": channel.pk}, key=f"sync:{channel.pk}")
    log.info("channel %s (%s) created", channel.pk, kind)
    try:
        register_webhook(channel)
    except Invalid:
        channel_id = channel.pk
        with transaction.atomic():
            audit.record(
                "channel.discarded",
                actor=actor,
                channel=channel_id,
                kind=kind,
                reason="webhook_registration_failed",
            )
            channel.delete()
        log.warning("channel %s (%s) discarded: webhook registration failed", channel_id, kind)
        raise
    return channel


def check_update_channel(
    actor: User | None,
    channel: Channel,
    *,
    name: str | None = None,
    visibility: str | None = None,
    team: Team | None = None,
    values: Mapping[str, Any] | None = None,
) -> Channel:
    """Change a channel's name, visibility (and team) and its editable set-up fields
    (``values``: options and API base as given, secrets replaced only when a new value is
    given; the account's ids never change). When secrets, options or the API base change, the
    new configuration is tried against the platform first (nothing saved if it fails; the
    account must stay the same); when the credentials or API base of an active channel change,
    the webhook is registered again, and if that fails the channel is deactivated and Invalid
    (``webhook_registration_failed``) raised. Returns the channel."""
    check_is_admin(actor)
    changed: list[str] = []
    new_name = channel.name if name is None else clean_name(name)
    if new_name != channel.name:
        changed.append("name")
    new_visibility = channel.visibility if visibility is None else visibility
    new_team = team if visibility is not None else channel.team
    if visibility is not None:
        new_visibility = clean_visibility(new_visibility)
        if new_visibility != channel.visibility:
            changed.append("visibility")
        if (new_team.pk if new_team else None) != channel.team_id:
            changed.append("team")
    given = sort_values(channel.kind, values or {}, only_editable=True)
    options = dict(channel.options)
    for key, value in given.options.items():
        if value in ("", None):
            options.pop(key, None)
        else:
            options[key] = value
    secrets = {**channel.secrets, **given.secrets}
    replaced = sorted(k for k, v in given.secrets.items() if channel.secrets.get(k) != v)
    api_base = channel.api_base
    if values is not None and "api_base" in values:
        api_base = given.api_base.rstrip("/")
    connection_changed = bool(replaced) or api_base != channel.api_base
    if options != channel.options:
        changed.append("options")
    if api_base != channel.api_base:
        changed.append("api_base")
    if connection_changed or "options" in changed:
        found = ask_platform(
            channel.kind,
            ChannelConfig(
                id=channel.pk,
                kind=channel.kind,
                business_handle=channel.business_handle,
                account_handle=channel.account_handle,
                display_handle=channel.display_handle,
                api_base=api_base,
                secrets=secrets,
                options=options,
            ),
        )
        if found.get("id") and found["id"] != channel.business_handle:
            raise Invalid(
                _("These credentials belong to another account; add it as a new channel."),
                code="invalid_credentials",
            )
        if found.get("app_id"):
            options["app_id"] = found["app_id"]
    if not changed and not replaced:
        return channel
    with transaction.atomic():
        channel.name = new_name
        channel.visibility = new_visibility
        channel.team = new_team
        channel.options = options
        channel.secrets = secrets
        channel.api_base = api_base
        channel.save(update_fields=["name", "visibility", "team", "options", "secrets", "api_base"])
        audit.record(
            "channel.updated",
            actor=actor,
            channel=channel.pk,
            fields=changed,
            secrets_replaced=replaced,
        )
    if channel.is_active and connection_changed:
        try:
            register_webhook(channel)
        except Invalid:
            do_set_channel_active(actor, channel, False, reason="webhook_registration_failed")
            raise
    return channel


def do_set_channel_active(
    actor: User | None, channel: Channel, active: bool, *, reason: str = ""
) -> Channel:
    """Mark a channel active or not (no platform call); an inactive channel's webhooks are
    refused and it is hidden from the inbox filters. History is kept."""
    with transaction.atomic():
        channel.is_active = active
        channel.save(update_fields=["is_active"])
        audit.record(
            "channel.activated" if active else "channel.deactivated",
            actor=actor,
            channel=channel.pk,
            **({"reason": reason} if reason else {}),
        )
    return channel


def check_set_channel_active(actor: User | None, channel: Channel, active: bool) -> Channel:
    """Deactivate, or activate and register the webhook again (the platform may have dropped
    it meanwhile); if registration fails the channel stays inactive and Invalid is raised."""
    check_is_admin(actor)
    if channel.is_active == active:
        return channel
    do_set_channel_active(actor, channel, active)
    if active:
        try:
            register_webhook(channel)
        except Invalid:
            do_set_channel_active(actor, channel, False, reason="webhook_registration_failed")
            raise
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
