"""The worker: processes stored webhook bodies and runs background jobs.

Why not a queue library: the queue must work on SQLite alone, survive a worker killed at any
point (a claimed job must come back, not stay "running" forever), keep sends to one recipient in
order, and pace sends per business number. django-tasks' database backend leaves tasks of a
killed worker in limbo (its issue #46), Huey's SQLite storage removes a task when it is dequeued
(lost on SIGKILL) and RQ needs Redis. So, like Healthchecks, rows are claimed with a conditional
UPDATE and a lease that expires: identical on SQLite and PostgreSQL, any number of workers.
Redis, when configured, only wakes idle workers sooner (realtime.wakeup).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from madoguchi import liveness
from madoguchi.actions.inbound import (
    RetryLater,
    bulk_applicable,
    do_apply_batch,
    do_process_raw_event,
)
from madoguchi.models import Channel, Job, RawEvent
from madoguchi.providers.base import InboundEvent
from madoguchi.providers.registry import provider_class, provider_for
from madoguchi.realtime import wakeup
from madoguchi.tasks import (
    HANDLERS,
    MaybeSent,
    Reschedule,
    give_up,
    retry_delay,
    send_messages,
    sending_mark,
    still_marked,
)

log = logging.getLogger(__name__)

# Bodies that keep failing (a bug, not a retry) stop being retried after this many attempts;
# they stay stored with their error for an operator.
RAW_EVENT_MAX_ATTEMPTS = 20
# Bodies claimed and applied together on the busy path: a batch's fixed cost (claims, lookups,
# one commit) is shared by more messages, while one batch stays a fraction of a second.
RAW_EVENT_BATCH = 250
# Jobs claimed together; their sends run as one batch (tasks.send_messages), which shares the
# batch's fixed statements (claim, lease, load, pacing, audit, deletion) among its sends. Not
# more: a killed worker's batch (and each recipient's later sends) waits for the lease to end.
JOB_BATCH = 50
# How often a worker looks for claims held by workers killed on this machine (two small
# queries): a kill then stalls its jobs about this long instead of the whole lease.
ORPHAN_CHECK_SECONDS = 1.0


def lease_free(now) -> Q:
    return Q(lease_until__isnull=True) | Q(lease_until__lt=now)


class Worker:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or liveness.worker_name()
        self.lease = timedelta(seconds=settings.JOB_LEASE_SECONDS)
        # Test hook for crash tests: sleep this long after claiming a job, before running it.
        self.pause_after_claim = float(os.environ.get("MADOGUCHI_FAULT_PAUSE_AFTER_CLAIM", "0"))
        self.last_schedule_check = 0.0
        self.last_orphan_check = 0.0
        self.claims = 0

    # -- raw events ----------------------------------------------------------------------
    def claim_raw_events(self, limit: int = 20) -> list[RawEvent]:
        """Claim up to ``limit`` due bodies with one conditional UPDATE; the claim token tells
        which rows this call won (another worker may have taken some in between).

        Two statements when the UPDATE wins every row read (the usual case): the rows are read
        whole first and given the claim's values here; only when another worker took some in
        between are the won rows read again."""
        now = timezone.now()
        due = list(
            RawEvent.objects.filter(processed_at__isnull=True, attempts__lt=RAW_EVENT_MAX_ATTEMPTS)
            .filter(lease_free(now))
            .order_by("id")[:limit]
        )
        if not due:
            return []
        self.claims += 1
        token = f"{self.claims}~{self.name}"[:80]
        until = now + self.lease
        ids = [raw.pk for raw in due]
        won = (
            RawEvent.objects.filter(pk__in=ids, processed_at__isnull=True)
            .filter(lease_free(now))
            .update(lease_until=until, attempts=F("attempts") + 1, claimed_by=token)
        )
        if won != len(due):
            return list(RawEvent.objects.filter(pk__in=ids, claimed_by=token).order_by("id"))
        for raw in due:
            # What the UPDATE wrote: every row was still free, so none changed since the read.
            raw.lease_until, raw.attempts, raw.claimed_by = until, raw.attempts + 1, token
        return due

    def process_raw_event(self, raw: RawEvent) -> None:
        channel = Channel.objects.filter(pk=raw.channel_id).first()
        if channel is None:
            self.park_raw_event(raw, "channel no longer exists", final=True)
            return
        try:
            events = provider_for(channel).parse_webhook(bytes(raw.body))
        except Exception as exc:
            # The body was signed by the platform but cannot be read: keep it for an operator.
            self.park_raw_event(raw, f"unreadable payload: {exc}", final=True)
            return
        try:
            do_process_raw_event(raw, events)
        except RetryLater as exc:
            delay = min(2.0 * raw.attempts, 60.0)
            RawEvent.objects.filter(pk=raw.pk).update(
                lease_until=timezone.now() + timedelta(seconds=delay), error=str(exc)[:500]
            )
        except Exception:
            log.exception("processing raw event %s failed", raw.pk)
            self.park_raw_event(raw, traceback.format_exc(limit=5), final=False)

    def park_raw_event(self, raw: RawEvent, error: str, *, final: bool) -> None:
        update = {"error": error[:2000]}
        if final:
            update["processed_at"] = timezone.now()
            update["lease_until"] = None
        else:
            update["lease_until"] = timezone.now() + timedelta(seconds=retry_delay(raw.attempts))
        RawEvent.objects.filter(pk=raw.pk).update(**update)

    # -- claims of dead workers ------------------------------------------------------------
    def release_orphaned_claims(self) -> int:
        """Free at once the claims of workers that were killed on this machine (see
        madoguchi.liveness): their jobs, and each recipient's later sends queued behind them,
        would otherwise wait for the lease. Returns how many rows were freed."""
        now = timezone.now()
        freed = 0
        for model, pending in ((Job, Q()), (RawEvent, Q(processed_at__isnull=True))):
            holders = set(
                model.objects.filter(pending, lease_until__gt=now)
                .exclude(claimed_by="")
                .values_list("claimed_by", flat=True)
                .distinct()
            )
            dead = [name for name in holders if liveness.is_gone(name)]
            if dead:
                freed += model.objects.filter(
                    pending, claimed_by__in=dead, lease_until__gt=now
                ).update(lease_until=None)
                log.warning("released the claims of dead workers: %s", ", ".join(sorted(dead)))
        return freed

    def release_orphaned_claims_now_and_then(self) -> None:
        if time.monotonic() - self.last_orphan_check >= ORPHAN_CHECK_SECONDS:
            self.last_orphan_check = time.monotonic()
            self.release_orphaned_claims()

    # -- jobs ----------------------------------------------------------------------------
    def claim_jobs(self, limit: int = 20) -> list[Job]:
        now = timezone.now()
        earlier_same_key = Job.objects.filter(key=OuterRef("key"), id__lt=OuterRef("id")).exclude(
            key=""
        )
        ids = list(
            Job.objects.filter(run_at__lte=now)
            .filter(lease_free(now))
            .filter(~Exists(earlier_same_key))
            .order_by("run_at", "id")
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return []
        # One conditional UPDATE for the batch; the rows carrying our name and this exact lease
        # are the ones we won (another worker may have taken some in between).
        until = now + self.lease
        Job.objects.filter(pk__in=ids).filter(lease_free(now)).update(
            lease_until=until, claimed_by=self.name[:64], attempts=F("attempts") + 1
        )
        return list(
            Job.objects.filter(pk__in=ids, claimed_by=self.name[:64], lease_until=until).order_by(
                "run_at", "id"
            )
        )

    def renew_lease(self, job: Job) -> bool:
        """Extend our lease just before running the job; False if another worker took it since
        (our lease ran out while earlier jobs of the batch ran). Never run a job we lost."""
        now = timezone.now()
        return bool(
            Job.objects.filter(pk=job.pk, claimed_by=self.name[:64])
            .filter(lease_until__gt=now)
            .update(lease_until=now + self.lease)
        )

    def renew_leases(self, jobs: list[Job]) -> list[Job]:
        """renew_lease for many jobs: one UPDATE, one read of the rows that carry the new lease;
        returns the jobs still ours, in order."""
        if not jobs:
            return []
        now = timezone.now()
        until = now + self.lease
        ids = [job.pk for job in jobs]
        Job.objects.filter(pk__in=ids, claimed_by=self.name[:64], lease_until__gt=now).update(
            lease_until=until
        )
        kept = set(
            Job.objects.filter(
                pk__in=ids, claimed_by=self.name[:64], lease_until=until
            ).values_list("pk", flat=True)
        )
        return [job for job in jobs if job.pk in kept]

    def run_job(self, job: Job) -> None:
        if self.pause_after_claim:
            time.sleep(self.pause_after_claim)
        if not self.renew_lease(job):
            log.info("job %s was taken over by another worker; skipped", job.pk)
            return
        handler = HANDLERS.get(job.kind)
        if handler is None:
            log.error("job %s has unknown kind %r; dropped", job.pk, job.kind)
            Job.objects.filter(pk=job.pk).delete()
            return
        try:
            handler(job, **job.args)
        except Exception as exc:
            self.settle(job, exc, traceback.format_exc(limit=5))
            return
        Job.objects.filter(pk=job.pk, claimed_by=job.claimed_by).delete()

    def run_send_jobs(self, jobs: list[Job]) -> None:
        """Claimed ``send_message`` jobs, run together (tasks.send_messages): the leases are
        renewed for the batch, then again whenever half the lease has gone by before a send."""
        if self.pause_after_claim:
            time.sleep(self.pause_after_claim)
        held = self.renew_leases(jobs)
        lost = {job.pk for job in jobs} - {job.pk for job in held}
        renewed = time.monotonic()

        def still_ours(left: list[Job]) -> list[Job]:
            nonlocal renewed
            if time.monotonic() - renewed > self.lease.total_seconds() / 2:
                kept = {job.pk for job in self.renew_leases(left)}
                lost.update(job.pk for job in left if job.pk not in kept)
                renewed = time.monotonic()
            return [job for job in left if job.pk not in lost]

        for pk in lost:
            log.info("job %s was taken over by another worker; skipped", pk)
        outcomes = send_messages(held, still_ours=still_ours)
        for job in held:
            if job.pk in outcomes:
                exc = outcomes[job.pk]
                self.settle(job, exc, getattr(exc, "trace", "") or repr(exc))

    def settle(self, job: Job, exc: BaseException, trace: str) -> None:
        """A job that did not finish: ``Reschedule`` sets it up again as asked; any other error
        is retried later with back-off, and given up after MADOGUCHI_SEND_MAX_ATTEMPTS."""
        mine = Job.objects.filter(pk=job.pk, claimed_by=job.claimed_by)
        if isinstance(exc, Reschedule):
            update = {
                "run_at": timezone.now() + timedelta(seconds=exc.delay),
                "lease_until": None,
                "last_error": still_marked(job, exc.reason)[:2000],
            }
            if not exc.counts_as_attempt:  # waiting for a slot is not a failure
                update["attempts"] = F("attempts") - 1
            mine.update(**update)
            return
        log.error("job %s (%s) failed: %s", job.pk, job.kind, trace)
        if job.attempts >= settings.MADOGUCHI_SEND_MAX_ATTEMPTS:
            # A bug, not bad luck: stop retrying so later jobs with the same key can run,
            # and let the handler's owner record the failure where people will see it.
            give_up(job, trace)
            return
        # a call that failed unexpectedly may have sent: its mark, as for an interrupted one
        reason = sending_mark(exc.at) if isinstance(exc, MaybeSent) else trace
        mine.update(
            run_at=timezone.now() + timedelta(seconds=retry_delay(job.attempts)),
            lease_until=None,
            last_error=still_marked(job, reason)[:2000],
        )

    # -- scheduling ----------------------------------------------------------------------
    def run_schedules(self) -> None:
        """Periodic work: wake snoozed conversations, sync templates hourly."""
        from madoguchi.actions.conversations import do_wake_snoozed
        from madoguchi.actions.jobs import enqueue

        now = time.time()
        if now - self.last_schedule_check < 30:
            return
        self.last_schedule_check = now
        do_wake_snoozed()
        interval = settings.TEMPLATE_SYNC_INTERVAL_SECONDS
        cutoff = timezone.now() - timedelta(seconds=interval)
        for channel in Channel.objects.filter(is_active=True):
            key = f"sync:{channel.pk}"
            if not provider_class(channel.kind).capabilities.has_templates:
                continue
            recent = channel.templates.filter(synced_at__gte=cutoff).exists()
            if not recent and not Job.objects.filter(key=key).exists():
                enqueue("sync_templates", {"channel_id": channel.pk}, key=key)

    # -- loops ---------------------------------------------------------------------------
    def process_raw_events(self, raws: list[RawEvent]) -> None:
        """Bodies that carry only customer messages and receipts are applied together (one
        transaction, bulk statements, one pass for every channel of the batch: the busy path,
        do_apply_batch); anything else, a body with a receipt for an unknown message, or a batch
        that fails, one body at a time."""
        channels: dict[int, Channel] = Channel.objects.in_bulk({raw.channel_id for raw in raws})
        batch: list[tuple[RawEvent, Channel, list[InboundEvent]]] = []
        single: list[RawEvent] = []
        for raw in raws:
            channel = channels.get(raw.channel_id)
            events = None
            if channel is not None:
                try:
                    events = provider_for(channel).parse_webhook(bytes(raw.body))
                except Exception:
                    events = None
            if events and all(bulk_applicable(e) for e in events):
                batch.append((raw, channel, events))
            else:
                single.append(raw)
        if batch:
            try:
                with transaction.atomic():
                    again = do_apply_batch([(channel, events) for _r, channel, events in batch])
                    done = [raw.pk for i, (raw, _c, _e) in enumerate(batch) if i not in again]
                    RawEvent.objects.filter(pk__in=done).update(
                        processed_at=timezone.now(), lease_until=None, error=""
                    )
                single.extend(batch[i][0] for i in sorted(again))
            except Exception:
                log.info(
                    "batch of %s bodies failed; applying them one by one", len(batch), exc_info=True
                )
                single.extend(raw for raw, _c, _e in batch)
        for raw in single:
            self.process_raw_event(raw)

    def run_once(self) -> int:
        """Process what is due now. Returns how many rows were handled."""
        done = 0
        self.release_orphaned_claims_now_and_then()
        raws = self.claim_raw_events(limit=RAW_EVENT_BATCH)
        self.process_raw_events(raws)
        done += len(raws)
        jobs = self.claim_jobs(limit=JOB_BATCH)
        sends = [job for job in jobs if job.kind == "send_message"]
        if sends:
            self.run_send_jobs(sends)
        for job in jobs:
            if job.kind != "send_message":
                self.run_job(job)
        return done + len(jobs)

    def run_until_idle(self, timeout: float = 10.0) -> int:
        """Tests: run until nothing is due (jobs scheduled later are left alone)."""
        total = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run_once()
            total += done
            if not done:
                break
        return total

    def run_forever(self, stop: threading.Event) -> None:
        from madoguchi.receivers import Receivers

        log.info("worker %s started", self.name)
        # Channels the platform does not call (email) are read by receiver threads, one
        # worker at a time per channel (a lease): see madoguchi.receivers.
        receivers = Receivers(self.name).start(stop)
        try:
            self.loop(stop)
        finally:
            stop.set()
            receivers.join(timeout=20)
        log.info("worker %s stopped", self.name)

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_schedules()
                done = self.run_once()
            except Exception:
                # A dead database must not kill the worker: log, wait, try again.
                log.exception("worker loop error; retrying")
                close_old_connections()
                stop.wait(2.0)
                continue
            finally:
                close_old_connections()
            if not done:
                wakeup.local_event.wait(settings.WORKER_POLL_SECONDS)
                wakeup.local_event.clear()
