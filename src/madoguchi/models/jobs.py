"""The durable queue: raw inbound events and background jobs, claimed with a lease.

Both tables are claimed the same way on SQLite and PostgreSQL: a conditional
``UPDATE ... WHERE lease_until IS NULL OR lease_until < now``; one updated row means the row is
ours. A worker that dies leaves its lease to expire, and the row is claimed again.
"""

from __future__ import annotations

from django.db import models


class RawEvent(models.Model):
    """A webhook body exactly as received, stored before the platform gets its 200."""

    channel_id = models.BigIntegerField()  # no FK: the insert must stay one cheap statement
    body = models.BinaryField()
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=80, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["id"],
                condition=models.Q(processed_at__isnull=True),
                name="rawevent_pending",
            )
        ]


class Job(models.Model):
    """A unit of background work: ``kind`` names a handler in madoguchi.tasks."""

    kind = models.CharField(max_length=32)
    args = models.JSONField(default=dict)
    # Jobs with the same key run strictly in order (e.g. sends to one recipient).
    key = models.CharField(max_length=128, blank=True)
    run_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["run_at"], name="job_due"),
            models.Index(fields=["key", "id"], name="job_key_order"),
        ]


class Throttle(models.Model):
    """Outbound pacing per business number: the earliest time the next send may start."""

    name = models.CharField(max_length=128, unique=True)
    next_free = models.FloatField(default=0.0)  # unix seconds
