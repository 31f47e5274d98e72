"""People and API tokens."""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid
from madoguchi.models import ApiToken, Role, Team, User

from . import audit

TOKEN_PREFIX = "mdg_"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def do_create_user(
    actor: User | None,
    username: str,
    *,
    role: str,
    password: str | None = None,
    team_names: list[str] | None = None,
    display_name: str = "",
    check_password_strength: bool = True,
) -> tuple[User, str]:
    """Create a user; returns (user, password) with a generated password when none was given."""
    if role not in Role.values:
        raise Invalid(_("Unknown role %(role)s.") % {"role": role}, code="invalid_role")
    if User.objects.filter(username=username).exists():
        raise Invalid(_("User %(name)s already exists.") % {"name": username}, code="user_exists")
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    if check_password_strength and not generated:
        try:
            validate_password(password)
        except ValidationError as exc:
            raise Invalid(" ".join(exc.messages), code="weak_password") from None
    with transaction.atomic():
        user = User(username=username, role=role, display_name=display_name)
        user.set_password(password)
        user.is_staff = role == Role.ADMIN
        user.save()
        for team_name in team_names or []:
            team, _created = Team.objects.get_or_create(name=team_name)
            user.teams.add(team)
        audit.record("user.created", actor=actor, user=user.pk, role=role, teams=team_names or [])
    return user, password


def do_create_token(actor: User | None, user: User, name: str) -> str:
    """A new API token for ``user``; the token itself is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        ApiToken.objects.create(user=user, name=name, digest=token_digest(token), prefix=token[:10])
        audit.record("token.created", actor=actor, user=user.pk, name=name)
    return token


def do_update_preferences(
    user: User,
    *,
    language: str,
    time_zone: str,
    notify_sound: bool,
    notify_desktop: bool,
) -> User:
    """A user's own console settings: language ("" = from the browser), time zone, alerts."""
    import zoneinfo

    from django.conf import settings

    if language and language not in dict(settings.LANGUAGES):
        raise Invalid(_("Unknown language."), code="invalid_language")
    if time_zone and time_zone not in zoneinfo.available_timezones():
        raise Invalid(_("Unknown time zone."), code="invalid_time_zone")
    with transaction.atomic():
        user.language = language
        user.time_zone = time_zone
        user.notify_sound = notify_sound
        user.notify_desktop = notify_desktop
        user.save(update_fields=["language", "time_zone", "notify_sound", "notify_desktop"])
        audit.record("user.preferences", actor=user, user=user.pk)
    return user
