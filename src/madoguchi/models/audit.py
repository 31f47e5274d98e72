"""The audit trail: one row for every change of state, written by the action that made it."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=64)  # e.g. "conversation.claimed"
    conversation = models.ForeignKey(
        "madoguchi.Conversation", null=True, blank=True, on_delete=models.CASCADE
    )
    message = models.ForeignKey(
        "madoguchi.Message", null=True, blank=True, on_delete=models.SET_NULL
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["conversation", "id"], name="audit_conversation")]
