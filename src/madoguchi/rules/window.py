"""The messaging window of each channel kind (SPEC §2.4), read from the provider's capabilities.

WhatsApp: free-form messages only within 24 hours of the platform timestamp of the contact's
latest inbound message on that business number; outside it (or for a first contact) only an
approved template.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid
from madoguchi.models import ContactIdentity
from madoguchi.providers.registry import provider_class


@dataclass(frozen=True)
class Window:
    applies: bool  # False: the channel has no window (e-mail)
    open: bool
    expires_at: datetime | None

    def as_json(self) -> dict:
        return {
            "open": self.open,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def window_for(kind: str, last_inbound_at: datetime | None, now: datetime | None = None) -> Window:
    hours = provider_class(kind).capabilities.window_hours
    if hours is None:
        return Window(applies=False, open=True, expires_at=None)
    if last_inbound_at is None:
        return Window(applies=True, open=False, expires_at=None)
    expires = last_inbound_at + timedelta(hours=hours)
    return Window(applies=True, open=(now or timezone.now()) < expires, expires_at=expires)


def identity_window(identity: ContactIdentity, now: datetime | None = None) -> Window:
    return window_for(identity.channel.kind, identity.last_inbound_at, now)


def check_free_form_allowed(identity: ContactIdentity) -> None:
    """Raise before anything is queued if a free-form send would be refused by the platform."""
    window = identity_window(identity)
    if window.open:
        return
    if window.expires_at is None:
        raise Invalid(
            _("This contact has not written to this number yet: start with an approved template."),
            code="template_required",
        )
    raise Invalid(
        "The 24-hour window closed at "
        f"{window.expires_at.isoformat()}: only an approved template can be sent.",
        code="window_closed",
        closed_at=window.expires_at.isoformat(),
    )
