"""Receiver threads for the channels the platform does not call (email over IMAP).

Every worker process runs one ``Receivers`` supervisor (``Worker.run_forever`` starts it, so
``madoguchi worker`` and the in-process worker of ``serve``/``demo`` both do). Every few
seconds it lists the active channels whose provider has no webhooks and:

- for a channel nobody reads, claims its lease (actions.mail) and starts a thread running the
  provider's receiver from the channel's ``receive_state``;
- for a channel it reads, renews the lease; if the lease was lost (this process was paused
  past it and another worker took over), the channel was deactivated or deleted, its settings
  or secrets changed, or the thread died, it stops the thread, and gives the lease back once
  the thread has ended (a changed channel is then claimed again with its new settings).

Each thread holds the lease under a name of its own, and every body it stores renews that lease
inside the storing transaction (``do_store_received``): a thread that lost its lease writes
nothing, so two threads or processes never store the same channel's mail. A killed worker's
channels are taken over when their lease runs out (``MADOGUCHI_RECEIVER_LEASE_SECONDS``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections, connection

from madoguchi.actions.mail import (
    LeaseLost,
    do_claim_receiver,
    do_release_receiver,
    do_renew_receiver,
    do_save_receive_state,
    do_store_received,
)
from madoguchi.models import Channel
from madoguchi.providers.registry import PROVIDERS, provider_class, provider_for

log = logging.getLogger(__name__)

LEASE_SECONDS = float(os.environ.get("MADOGUCHI_RECEIVER_LEASE_SECONDS", "30"))
CHECK_SECONDS = float(os.environ.get("MADOGUCHI_RECEIVER_CHECK_SECONDS", "3"))


def polled_kinds() -> list[str]:
    return [kind for kind in PROVIDERS if not provider_class(kind).capabilities.has_webhooks]


def fingerprint(channel: Channel) -> str:
    """Changes when anything the receiver was built from changes (secrets included, hashed)."""
    source = json.dumps(
        [channel.kind, channel.business_handle, channel.api_base, channel.options, channel.secrets],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(source.encode()).hexdigest()


class Sink:
    """The core's side of a provider's receiver: bodies and states into actions.mail, fenced by
    this thread's lease. A lost lease stops the thread."""

    def __init__(self, channel_id: int, holder: str, lease: float, stop: threading.Event) -> None:
        self.channel_id = channel_id
        self.holder = holder
        self.lease = lease
        self.stop = stop
        self.stored = 0

    def store(self, body: bytes, state: dict[str, Any]) -> None:
        try:
            do_store_received(self.channel_id, self.holder, body, state, lease_seconds=self.lease)
        except LeaseLost:
            self.stop.set()
            raise
        self.stored += 1

    def save_state(self, state: dict[str, Any]) -> None:
        try:
            do_save_receive_state(self.channel_id, self.holder, state, lease_seconds=self.lease)
        except LeaseLost:
            self.stop.set()
            raise


@dataclass
class Running:
    channel_id: int
    holder: str
    fingerprint: str
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    sink: Sink | None = None


class Receivers:
    """Supervises this process's receiver threads (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.name = name
        self.lease_seconds = lease_seconds
        self.check_seconds = check_seconds
        self.running: dict[int, Running] = {}
        self.stopping: list[Running] = []
        self.generation = itertools.count(1)
        self.thread: threading.Thread | None = None

    # -- the supervisor thread ------------------------------------------------------------
    def start(self, stop: threading.Event) -> threading.Thread:
        self.thread = threading.Thread(
            target=self.run, args=(stop,), name="madoguchi-receivers", daemon=True
        )
        self.thread.start()
        return self.thread

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:
                    # A database outage must not end receiving: the leases run out meanwhile,
                    # and the next tick claims or stops what it must.
                    log.exception("receiver supervision failed; retrying")
                finally:
                    close_old_connections()
                stop.wait(self.check_seconds)
        finally:
            self.shutdown()
            connection.close()

    def tick(self) -> None:
        """One round: reap ended threads, stop the ones that must stop, renew, start."""
        self.reap()
        kinds = polled_kinds()
        wanted = {c.pk: c for c in Channel.objects.filter(is_active=True, kind__in=kinds)}
        for channel_id, running in list(self.running.items()):
            channel = wanted.get(channel_id)
            alive = running.thread is not None and running.thread.is_alive()
            if channel is None or not alive or fingerprint(channel) != running.fingerprint:
                self.retire(channel_id)
            elif not do_renew_receiver(channel_id, running.holder, self.lease_seconds):
                log.warning("channel %s: lease lost; another worker reads it now", channel_id)
                running.stop.set()
                del self.running[channel_id]  # never release a lease that is not ours
        busy = {r.channel_id for r in self.stopping}
        for channel_id, channel in wanted.items():
            if channel_id in self.running or channel_id in busy:
                continue
            holder = f"{self.name}#{next(self.generation)}"[-128:]
            if do_claim_receiver(channel_id, holder, self.lease_seconds):
                self.launch(channel, holder)

    def launch(self, channel: Channel, holder: str) -> None:
        running = Running(channel.pk, holder, fingerprint(channel))
        running.thread = threading.Thread(
            target=self.receive,
            args=(running,),
            name=f"madoguchi-receiver-{channel.pk}",
            daemon=True,
        )
        self.running[channel.pk] = running
        running.thread.start()
        log.info("channel %s: receiving as %s", channel.pk, holder)

    def retire(self, channel_id: int) -> None:
        running = self.running.pop(channel_id)
        running.stop.set()
        self.stopping.append(running)

    def reap(self) -> None:
        """Give back the leases of the threads that have ended."""
        for running in list(self.stopping):
            if running.thread is None or not running.thread.is_alive():
                do_release_receiver(running.channel_id, running.holder)
                self.stopping.remove(running)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every thread, wait for them, and give their leases back."""
        for channel_id in list(self.running):
            self.retire(channel_id)
        deadline = time.monotonic() + timeout
        for running in self.stopping:
            if running.thread is not None:
                running.thread.join(max(deadline - time.monotonic(), 0.1))
        try:
            self.reap()
        except Exception:
            log.warning("leases not given back; they will run out", exc_info=True)

    # -- one receiver thread ---------------------------------------------------------------
    def receive(self, running: Running) -> None:
        try:
            channel = Channel.objects.filter(pk=running.channel_id).first()
            if channel is None:
                return
            # Read after the claim: the state the previous holder committed last.
            state = dict(channel.receive_state or {})
            running.sink = Sink(
                running.channel_id, running.holder, self.lease_seconds, running.stop
            )
            provider_for(channel).receiver(state, running.sink).run(running.stop)
        except Exception:
            log.exception("receiver of channel %s ended", running.channel_id)
        finally:
            connection.close()
