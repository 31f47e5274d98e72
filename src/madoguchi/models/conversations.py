"""Conversations: one thread with one contact on one channel, owned by one agent."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .channels import Channel
from .contacts import Contact, ContactIdentity
from .users import Team


class ConversationStatus(models.TextChoices):
    OPEN = "open", "Open"
    SNOOZED = "snoozed", "Snoozed"
    RESOLVED = "resolved", "Resolved"


class Conversation(models.Model):
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="conversations")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="conversations")
    identity = models.ForeignKey(ContactIdentity, on_delete=models.CASCADE)
    status = models.CharField(max_length=16, choices=ConversationStatus.choices, default="open")
    snoozed_until = models.DateTimeField(null=True, blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_conversations",
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    # Never empty (set at creation, moved forward by every message): the inbox is ordered by it
    # and its indexes serve that order directly on SQLite and PostgreSQL alike.
    last_message_at = models.DateTimeField(default=timezone.now)
    last_message_preview = models.CharField(max_length=200, blank=True)
    # Inbound messages the assignee has not opened yet.
    unread_count = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["-last_message_at", "-id"], name="conv_recent"),
            models.Index(fields=["status", "-last_message_at", "-id"], name="conv_status_recent"),
            models.Index(
                fields=["assignee", "status", "-last_message_at", "-id"],
                name="conv_assignee_recent",
            ),
            models.Index(
                fields=["channel", "status", "-last_message_at", "-id"],
                name="conv_channel_recent",
            ),
        ]
        constraints = [
            # At most one conversation that is not resolved per contact identity.
            models.UniqueConstraint(
                fields=["identity"],
                condition=~models.Q(status="resolved"),
                name="conv_one_active_per_identity",
            )
        ]
