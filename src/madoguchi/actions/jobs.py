"""Queueing background work. Jobs are rows written in the caller's transaction (an outbox):
a job exists exactly when the change that asked for it was committed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from madoguchi.models import Job
from madoguchi.realtime import wakeup


def enqueue(
    kind: str, args: dict[str, Any], *, key: str = "", run_at: datetime | None = None
) -> Job:
    job = Job.objects.create(kind=kind, args=args, key=key, run_at=run_at or timezone.now())
    transaction.on_commit(wakeup.notify)
    return job
