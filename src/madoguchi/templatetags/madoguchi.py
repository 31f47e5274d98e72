"""Template filters for the console: times in the viewer's zone, window countdowns."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

register = template.Library()


def parse(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


@register.filter
def when(value: object) -> str:
    """A compact time in the viewer's zone: "14:05" today, "11/24" this year, else a date."""
    moment = parse(value)
    if moment is None:
        return ""
    local = timezone.localtime(moment)
    now = timezone.localtime()
    if local.date() == now.date():
        return local.strftime("%H:%M")
    if local.year == now.year:
        return date_format(local, "m/d")
    return date_format(local, "Y/m/d")


@register.filter
def full_time(value: object) -> str:
    moment = parse(value)
    if moment is None:
        return ""
    return date_format(timezone.localtime(moment), "Y-m-d H:i")


@register.filter
def window_left(window: dict | None) -> str:
    """ "5h 20m left" for an open window, "Window closed" otherwise."""
    if window and window.get("reason") == "not_subscribed":
        return _("Not subscribed")
    if not window or not window.get("open"):
        return _("Window closed")
    expires = parse(window.get("expires_at"))
    if expires is None:
        return ""
    seconds = max(int((expires - timezone.now()).total_seconds()), 0)
    hours, minutes = divmod(seconds // 60, 60)
    return _("%(h)dh %(m)02dm left") % {"h": hours, "m": minutes}


@register.filter
def initials(name: str) -> str:
    parts = [p for p in (name or "?").split() if p]
    if not parts:
        return "?"
    if len(parts) == 1:
        return parts[0][:2].upper()
    return (parts[0][0] + parts[-1][0]).upper()


def placeholder_labels() -> dict[str, str]:
    """The platform module's readable stand-ins for messages without text, translated."""
    return {
        "[Empty message]": _("[Empty message]"),
        "[Image]": _("[Image]"),
        "[Audio]": _("[Audio]"),
        "[Voice message]": _("[Voice message]"),
        "[Video]": _("[Video]"),
        "[Document]": _("[Document]"),
        "[Sticker]": _("[Sticker]"),
        "[Location]": _("[Location]"),
        "[Contact]": _("[Contact]"),
        "[Interactive reply]": _("[Interactive reply]"),
        "[Button reply]": _("[Button reply]"),
        "Reaction removed": _("Reaction removed"),
        "[Order]": _("[Order]"),
        "[System message]": _("[System message]"),
        "[Unsupported message type]": _("[Unsupported message type]"),
    }


@register.filter
def readable(text: str) -> str:
    """Customer text as is; the placeholders of textless messages in the viewer's language."""
    return placeholder_labels().get(text, text)
