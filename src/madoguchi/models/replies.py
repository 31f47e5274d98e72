"""Canned replies: text an agent inserts by typing ``/shortcut`` in the composer."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class CannedReply(models.Model):
    shortcut = models.SlugField(max_length=40, unique=True)
    text = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
