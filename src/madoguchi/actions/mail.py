"""What a polled channel's receiver writes: its lease, the raw bodies it read and its cursor.

A channel the platform does not call (email, read over IMAP) has a receiver thread in a worker
(madoguchi.receivers). Everything it reads goes through here:

- ``do_claim_receiver`` / ``do_renew_receiver`` / ``do_release_receiver``: the lease that lets
  one receiver at a time read a channel (a conditional UPDATE, as for jobs);
- ``do_store_received``: one raw body (one mail) as a RawEvent together with the channel's new
  ``receive_state``, in one transaction, only while the lease is still ours: a crash between
  two bodies re-reads only what was not committed, and a receiver that lost its lease (paused,
  then taken over) writes nothing. The worker then parses and applies the body like any webhook
  body (actions.inbound);
- ``do_save_receive_state``: the starting point of a first connection.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from madoguchi.models import Channel, RawEvent, ReceiverLease
from madoguchi.realtime import wakeup

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker reads this channel now: the caller must stop reading it."""


def do_claim_receiver(channel_id: int, holder: str, seconds: float) -> bool:
    """Take (or keep) the right to read ``channel_id`` for ``seconds``: True when it is ours,
    False while another holder's lease runs."""
    now = timezone.now()
    if not ReceiverLease.objects.filter(pk=channel_id).exists():
        try:
            with transaction.atomic():
                ReceiverLease.objects.create(channel_id=channel_id)
        except IntegrityError:
            pass  # created by another worker at the same moment (or the channel is gone)
    won = (
        ReceiverLease.objects.filter(pk=channel_id)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(holder=holder))
        .update(holder=holder[:128], lease_until=now + timedelta(seconds=seconds))
    )
    return bool(won)


def do_renew_receiver(channel_id: int, holder: str, seconds: float) -> bool:
    """Extend our lease; False when it ran out or another worker holds it now."""
    now = timezone.now()
    return bool(
        ReceiverLease.objects.filter(
            pk=channel_id, holder=holder[:128], lease_until__gt=now
        ).update(lease_until=now + timedelta(seconds=seconds))
    )


def do_release_receiver(channel_id: int, holder: str) -> None:
    """Give the channel back at once (a clean stop), so another worker need not wait."""
    ReceiverLease.objects.filter(pk=channel_id, holder=holder[:128]).update(lease_until=None)


def check_lease(channel_id: int, holder: str, seconds: float) -> None:
    """Inside the caller's transaction: renew our lease or raise LeaseLost. On PostgreSQL the
    UPDATE locks the lease row until commit, so two writers for one channel are serialised and
    the second one, after a takeover, finds the lease gone."""
    if not do_renew_receiver(channel_id, holder, seconds):
        raise LeaseLost(f"channel {channel_id} is read by another worker now")


def do_store_received(
    channel_id: int, holder: str, body: bytes, state: dict[str, Any], *, lease_seconds: float
) -> RawEvent:
    """Store one raw body read from the platform and the receive state that includes it, in one
    transaction, while our lease holds (else LeaseLost, nothing written). Wakes the worker
    after commit."""
    with transaction.atomic():
        check_lease(channel_id, holder, lease_seconds)
        # The state is the receiver's own (opaque here). No second reader can write meanwhile:
        # the lease row stays locked by our UPDATE until commit.
        if not Channel.objects.filter(pk=channel_id).update(receive_state=state):
            raise LeaseLost(f"channel {channel_id} no longer exists")
        raw = RawEvent.objects.create(channel_id=channel_id, body=body, received_at=timezone.now())
        transaction.on_commit(wakeup.notify)
    return raw


def do_save_receive_state(
    channel_id: int, holder: str, state: dict[str, Any], *, lease_seconds: float
) -> None:
    """Record a receive state without a body (a first connection's starting point), while our
    lease holds (else LeaseLost)."""
    with transaction.atomic():
        check_lease(channel_id, holder, lease_seconds)
        Channel.objects.filter(pk=channel_id).update(receive_state=state)
