"""The console's channel set-up page (admins only): the channels with the webhook URL to
register, a form per kind to add one (credentials checked against the platform before saving),
edits, and deactivation. Secrets are never rendered: a page only says whether each one is set,
and a form field left empty keeps the current one.

Views parse the form, fetch the channel, call the action in ``actions.channels`` and render;
refusals re-render the page with the reason (HTTP 422 or the error's status), the form filled
in again except for its secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _l
from django.views.decorators.http import require_GET, require_POST

from madoguchi.actions import channels as actions
from madoguchi.errors import MadoguchiError
from madoguchi.models import Channel, Team
from madoguchi.providers.registry import provider_class
from madoguchi.rules.channel_setup import SETUP, KindSetup, SetupField

VISIBILITY_LABELS = {
    "all": _l("Everyone"),
    "team": _l("Team members"),
    "assigned_only": _l("Assignee only"),
}


def admin_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Logged-in admins only: anyone else gets 403 (a login redirect when logged out)."""

    @wraps(view)
    @login_required
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_admin:  # type: ignore[union-attr]
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


def channel_of(channel_id: int) -> Channel:
    channel = Channel.objects.select_related("team").filter(pk=channel_id).first()
    if channel is None or channel.kind not in SETUP:
        raise Http404
    return channel


# -- what the page shows -----------------------------------------------------------------------


def field_view(spec: SetupField, value: Any = "", *, is_set: bool = False) -> dict[str, Any]:
    """One form field for the template; a secret never carries its value."""
    return {
        "name": spec.name,
        "label": spec.label,
        "type": spec.type,
        "required": spec.required,
        "choices": spec.choices,
        "help": spec.help,
        "secret": spec.target == "secret",
        "is_set": is_set,
        "value": "" if spec.target == "secret" else value,
    }


def stored_value(channel: Channel, spec: SetupField) -> Any:
    if spec.target == "option":
        return channel.options.get(spec.store_keys[0], "")
    if spec.target == "secret":
        return ""
    return getattr(channel, spec.target)


def secret_state(channel: Channel, setup: KindSetup) -> list[dict[str, Any]]:
    return [
        {"label": spec.label, "is_set": bool(channel.secrets.get(spec.store_keys[0]))}
        for spec in setup.fields
        if spec.target == "secret"
    ]


def channel_view(channel: Channel, posted: dict[str, Any] | None = None) -> dict[str, Any]:
    """A channel's card: facts, webhook URL, which secrets are set, its edit form."""
    setup = SETUP[channel.kind]
    has_webhooks = provider_class(channel.kind).capabilities.has_webhooks
    registers = actions.registers_webhooks(channel.kind)
    edit_fields = []
    for spec in setup.fields:
        if not spec.editable:
            continue
        value = stored_value(channel, spec)
        if posted is not None and spec.target != "secret":
            value = posted.get(spec.name, "")
        edit_fields.append(
            field_view(spec, value, is_set=bool(channel.secrets.get(spec.store_keys[0])))
        )
    options = [
        {"label": spec.label, "value": stored_value(channel, spec)}
        for spec in setup.fields
        if spec.target == "option" and stored_value(channel, spec) not in ("", None)
    ]
    return {
        "channel": channel,
        "label": setup.label,
        "webhook_url": actions.webhook_url(channel) if has_webhooks else "",
        "webhook_hint": (
            _("Madoguchi registered this URL with the platform.")
            if registers
            else setup.dashboard_hint
        ),
        "options": options,
        "secrets": secret_state(channel, setup),
        "visibility_label": VISIBILITY_LABELS.get(channel.visibility, channel.visibility),
        "edit_fields": edit_fields,
        "name": posted.get("name", channel.name) if posted else channel.name,
        "visibility": posted.get("visibility", channel.visibility)
        if posted
        else channel.visibility,
        "team_id": (posted.get("team", "") if posted else str(channel.team_id or "")),
    }


def add_form_view(setup: KindSetup, posted: dict[str, Any] | None = None) -> dict[str, Any]:
    posted = posted or {}
    return {
        "kind": setup.kind,
        "label": setup.label,
        "fields": [
            field_view(spec, posted.get(spec.name, spec.default if spec.default else ""))
            for spec in setup.fields
        ],
        "name": posted.get("name", ""),
        "visibility": posted.get("visibility", "all"),
        "team_id": posted.get("team", ""),
    }


def render_page(
    request: HttpRequest,
    *,
    status: int = 200,
    error: str = "",
    add_kind: str = "",
    edit_id: int | None = None,
    posted: dict[str, Any] | None = None,
) -> HttpResponse:
    channels = Channel.objects.select_related("team").order_by("-is_active", "name", "id")
    context = {
        "channels": [
            channel_view(c, posted if c.pk == edit_id else None)
            for c in channels
            if c.kind in SETUP
        ],
        "add_forms": [
            add_form_view(setup, posted if setup.kind == add_kind else None)
            for setup in SETUP.values()
        ],
        "teams": Team.objects.order_by("name"),
        "visibilities": list(VISIBILITY_LABELS.items()),
        "error": error,
        "add_kind": add_kind,
        "edit_id": edit_id,
    }
    return render(request, "madoguchi/channels.html", context, status=status)


# -- views ---------------------------------------------------------------------------------------


@admin_only
@require_GET
def channels_page(request: HttpRequest) -> HttpResponse:
    return render_page(request)


def form_values(request: HttpRequest, setup: KindSetup, *, editable_only: bool) -> dict[str, Any]:
    """The set-up fields of a posted form; an unchecked box is False (browsers omit it)."""
    values: dict[str, Any] = {}
    for spec in setup.fields:
        if editable_only and not spec.editable:
            continue
        if spec.type == "bool":
            values[spec.name] = request.POST.get(spec.name) == "on"
        else:
            values[spec.name] = request.POST.get(spec.name, "")
    return values


def posted_team(request: HttpRequest) -> Team | None:
    team_id = request.POST.get("team", "")
    if not (team_id.isascii() and team_id.isdigit()):
        return None
    return Team.objects.filter(pk=int(team_id)).first()


def kept_for_the_form(request: HttpRequest, setup: KindSetup) -> dict[str, Any]:
    """What a refused form shows again: everything but the secrets."""
    secret = {spec.name for spec in setup.fields if spec.target == "secret"}
    return {k: v for k, v in request.POST.items() if k not in secret and k != "csrfmiddlewaretoken"}


@admin_only
@require_POST
def add_channel(request: HttpRequest, kind: str) -> HttpResponse:
    setup = SETUP.get(kind)
    if setup is None:
        raise Http404
    try:
        channel = actions.check_create_channel(
            request.user,  # type: ignore[arg-type]
            kind=kind,
            name=request.POST.get("name", ""),
            values=form_values(request, setup, editable_only=False),
            visibility=request.POST.get("visibility", "all"),
            team=posted_team(request),
        )
    except MadoguchiError as exc:
        return render_page(
            request,
            status=exc.status,
            error=exc.message,
            add_kind=kind,
            posted=kept_for_the_form(request, setup),
        )
    flash.success(request, _("The channel %(name)s is connected.") % {"name": channel.name})
    return redirect(reverse("channels") + f"#channel-{channel.pk}")


@admin_only
@require_POST
def edit_channel(request: HttpRequest, channel_id: int) -> HttpResponse:
    channel = channel_of(channel_id)
    setup = SETUP[channel.kind]
    try:
        actions.check_update_channel(
            request.user,  # type: ignore[arg-type]
            channel,
            name=request.POST.get("name", channel.name),
            visibility=request.POST.get("visibility", channel.visibility),
            team=posted_team(request),
            values=form_values(request, setup, editable_only=True),
        )
    except MadoguchiError as exc:
        return render_page(
            request,
            status=exc.status,
            error=exc.message,
            edit_id=channel.pk,
            posted=kept_for_the_form(request, setup),
        )
    flash.success(request, _("The channel %(name)s was saved.") % {"name": channel.name})
    return redirect(reverse("channels") + f"#channel-{channel.pk}")


@admin_only
@require_POST
def set_channel_active(request: HttpRequest, channel_id: int) -> HttpResponse:
    channel = channel_of(channel_id)
    active = request.POST.get("active") == "1"
    try:
        actions.check_set_channel_active(request.user, channel, active)  # type: ignore[arg-type]
    except MadoguchiError as exc:
        return render_page(request, status=exc.status, error=exc.message)
    if active:
        flash.success(request, _("The channel %(name)s is active.") % {"name": channel.name})
    else:
        flash.success(request, _("The channel %(name)s is deactivated.") % {"name": channel.name})
    return redirect(reverse("channels") + f"#channel-{channel.pk}")
