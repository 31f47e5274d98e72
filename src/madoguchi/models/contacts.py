"""Contacts (customers) and their identity on each channel."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from .channels import Channel


class Contact(models.Model):
    name = models.CharField(max_length=200, blank=True)
    # Sticky ownership (SPEC §2.3): a new conversation from this contact goes to the owner.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name or f"contact {self.pk}"


class ContactIdentity(models.Model):
    """The contact's handle on one channel (WhatsApp: the wa_id).

    A handle belongs to one contact per channel; a contact may hold several handles on one
    channel (two e-mail addresses, a new phone number after merging two contacts), so there is
    no uniqueness on (contact, channel): migration 0007 dropped it."""

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="identities")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="identities")
    handle = models.CharField(max_length=128)
    profile_name = models.CharField(max_length=200, blank=True)
    # Platform timestamp of the contact's latest inbound message on this channel (= business
    # number): the start of the messaging window (SPEC §2.4).
    last_inbound_at = models.DateTimeField(null=True, blank=True)
    # Whether the contact subscribed to the business account, for platforms that may message
    # subscribers only (Viber); None where the platform has no such notion or never said.
    subscribed = models.BooleanField(null=True, blank=True)
    subscription_changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "handle"], name="identity_unique_handle"),
        ]
