"""When the business may send a free-form message (SPEC §2.4): the one place for every channel
kind, driven by what its provider declares (``Capabilities``), never by testing the kind.

- A time window (WhatsApp, Messenger): free-form messages only within ``window_hours`` of the
  platform timestamp of the contact's latest inbound message on that channel.
- A tagged extension (Messenger's HUMAN_AGENT): up to ``tagged_window_hours`` when the channel's
  options allow the tag (``human_agent_tag``); the send then carries the tag.
- Subscribers only (Viber): no time limit, but only while the contact is subscribed.
- No rule at all (email).
Outside a time window, channels with templates may still send an approved template.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid
from madoguchi.models import ContactIdentity
from madoguchi.providers.registry import provider_class


@dataclass(frozen=True)
class Window:
    applies: bool  # False: the channel has no time window (e-mail, Viber)
    open: bool
    expires_at: datetime | None
    # The tag a send inside this window must carry (Messenger's HUMAN_AGENT), or None.
    tag: str | None = None
    # Why it is closed: "window_closed", "template_required" (never written) or "not_subscribed".
    refusal: str = ""

    def as_json(self) -> dict:
        return {
            "open": self.open,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            # Why free-form sends are refused: window_closed, template_required, not_subscribed.
            "reason": self.refusal or None,
        }


OPEN = Window(applies=False, open=True, expires_at=None)


def window_for(
    kind: str,
    last_inbound_at: datetime | None,
    now: datetime | None = None,
    *,
    options: dict[str, Any] | None = None,
    subscribed: bool | None = None,
) -> Window:
    capabilities = provider_class(kind).capabilities
    if capabilities.requires_subscription and not subscribed:
        return Window(applies=False, open=False, expires_at=None, refusal="not_subscribed")
    hours = capabilities.window_hours
    if hours is None:
        return OPEN
    if last_inbound_at is None:
        return Window(applies=True, open=False, expires_at=None, refusal="template_required")
    now = now or timezone.now()
    expires = last_inbound_at + timedelta(hours=hours)
    if now < expires:
        return Window(applies=True, open=True, expires_at=expires)
    tagged = capabilities.tagged_window_hours
    if tagged is not None and (options or {}).get("human_agent_tag"):
        expires = last_inbound_at + timedelta(hours=tagged)
        if now < expires:
            return Window(applies=True, open=True, expires_at=expires, tag="HUMAN_AGENT")
    return Window(applies=True, open=False, expires_at=expires, refusal="window_closed")


def identity_window(identity: ContactIdentity, now: datetime | None = None) -> Window:
    return window_for(
        identity.channel.kind,
        identity.last_inbound_at,
        now,
        options=identity.channel.options,
        subscribed=identity.subscribed,
    )


def check_free_form_allowed(identity: ContactIdentity) -> Window:
    """Raise before anything is queued if a free-form send would be refused by the platform;
    returns the open window (its ``tag`` goes with the send)."""
    window = identity_window(identity)
    if window.open:
        return window
    has_templates = provider_class(identity.channel.kind).capabilities.has_templates
    if window.refusal == "not_subscribed":
        raise Invalid(
            _("This contact is not subscribed to this account: it cannot be messaged."),
            code="not_subscribed",
        )
    if window.expires_at is None:
        if has_templates:
            raise Invalid(
                _(
                    "This contact has not written to this number yet:"
                    " start with an approved template."
                ),
                code="template_required",
            )
        raise Invalid(
            _("This contact has not written yet: this channel cannot start a conversation."),
            code="window_closed",
        )
    closed = window.expires_at.isoformat()
    if has_templates:
        message = _(
            "The messaging window closed at %(time)s: only an approved template can be sent."
        )
    else:
        message = _(
            "The messaging window closed at %(time)s:"
            " nothing can be sent until the customer writes again."
        )
    raise Invalid(message % {"time": closed}, code="window_closed", closed_at=closed)
