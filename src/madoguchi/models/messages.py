"""Messages (inbound, outbound, private notes) with their delivery state."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from .channels import Channel
from .conversations import Conversation

# Delivery statuses only move forward along this order ("failed" may follow any of them).
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3}


class Direction(models.TextChoices):
    IN = "in", "Inbound"
    OUT = "out", "Outbound"


class Message(models.Model):
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE)
    direction = models.CharField(max_length=3, choices=Direction.choices)
    kind = models.CharField(max_length=16)
    text = models.TextField(blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    platform_message_id = models.CharField(max_length=255, null=True, blank=True)
    platform_timestamp = models.DateTimeField(null=True, blank=True)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reply_to_platform_id = models.CharField(max_length=255, blank=True)
    # Outbound: queued -> sent -> delivered -> read, or failed. Inbound and notes: "".
    status = models.CharField(max_length=10, blank=True)
    error_code = models.IntegerField(null=True, blank=True)
    error_title = models.CharField(max_length=255, blank=True)
    error_details = models.TextField(blank=True)
    # Kind-specific details (location, contacts, interactive ids, template name and values...).
    data = models.JSONField(default=dict, blank=True)
    # Media: the platform's id, then our stored copy (path under MEDIA_ROOT).
    media_platform_id = models.CharField(max_length=128, blank=True)
    media_mime = models.CharField(max_length=128, blank=True)
    media_size = models.BigIntegerField(null=True, blank=True)
    media_filename = models.CharField(max_length=255, blank=True)
    media_path = models.CharField(max_length=255, blank=True)
    media_state = models.CharField(max_length=12, blank=True)  # pending|stored|failed|too_large
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "-id"], name="msg_conversation_latest"),
        ]
        constraints = [
            # Platform retries and duplicate deliveries store one message.
            models.UniqueConstraint(
                fields=["channel", "platform_message_id"], name="msg_unique_platform_id"
            )
        ]

    @property
    def is_note(self) -> bool:
        return self.kind == "note"
