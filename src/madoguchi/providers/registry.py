"""The one place that maps a channel kind to its provider (imported lazily, Healthchecks-style)."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Provider

PROVIDERS: dict[str, str] = {
    "whatsapp": "madoguchi.providers.whatsapp.WhatsAppProvider",
    "viber": "madoguchi.providers.viber.ViberProvider",
    "messenger": "madoguchi.providers.messenger.MessengerProvider",
    "email": "madoguchi.providers.email.EmailProvider",
}


class UnknownChannelKind(LookupError):
    pass


@cache
def provider_class(kind: str) -> type[Provider]:
    try:
        dotted = PROVIDERS[kind]
    except KeyError:
        raise UnknownChannelKind(kind) from None
    module_name, _, class_name = dotted.rpartition(".")
    return getattr(import_module(module_name), class_name)


def provider_for(channel) -> Provider:  # channel: madoguchi.models.Channel
    """A provider instance for a channel row (a plain config copy: no ORM inside providers)."""
    from .base import ChannelConfig

    config = ChannelConfig(
        id=channel.pk,
        kind=channel.kind,
        business_handle=channel.business_handle,
        account_handle=channel.account_handle,
        display_handle=channel.display_handle,
        api_base=channel.api_base,
        secrets=dict(channel.secrets),
        options=dict(channel.options),
    )
    return provider_class(channel.kind)(config)
