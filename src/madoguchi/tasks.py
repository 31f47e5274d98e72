"""Background job handlers: fetch by id, talk to the platform (outside any transaction), then
record the outcome through an action. ``Reschedule`` asks the worker to try again later."""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction

from madoguchi.actions import outbound
from madoguchi.actions.channels import do_sync_templates
from madoguchi.actions.contacts import do_update_profile
from madoguchi.actions.media import do_record_media
from madoguchi.media_links import public_media_url
from madoguchi.models import Channel, ContactIdentity, Job, Message, Throttle
from madoguchi.providers.base import (
    MediaRef,
    MediaTooLarge,
    PlatformError,
    Provider,
    SendError,
    SentMessage,
)
from madoguchi.providers.payloads import timeout_error
from madoguchi.providers.registry import provider_class, provider_for
from madoguchi.queries.threads import send_context, send_reference
from madoguchi.rules.window import window_for
from madoguchi.storage import new_media_name

log = logging.getLogger(__name__)


class Reschedule(Exception):
    def __init__(self, delay: float, reason: str, *, counts_as_attempt: bool = True) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
        self.counts_as_attempt = counts_as_attempt


class MaybeSent(Exception):
    """A platform call ended in an error nobody expected: neither an answer the provider
    understood (SendError) nor a timeout; an answer it could not read, say. The platform may
    have accepted the send all the same, so the retry is treated as after an interrupted call
    (awaiting_receipt, then marked): ``at`` is when the call was made; ``trace`` what failed."""

    def __init__(self, at: float, trace: str) -> None:
        super().__init__(trace.strip().splitlines()[-1] if trace.strip() else "unexpected error")
        self.at = at
        self.trace = trace


def give_up(job: Job, error: str) -> None:
    """A job failed unexpectedly too many times: drop it, and fail its message visibly."""
    log.error("job %s (%s) given up after %s attempts", job.pk, job.kind, job.attempts)
    if job.kind == "send_message":
        outbound.do_record_failure(
            job.args["message_id"],
            PlatformError(
                code=-5, title="Internal error", details=error.strip().splitlines()[-1][:500]
            ),
        )
    elif job.kind == "fetch_media":
        do_record_media(job.args["message_id"], state="failed")
    Job.objects.filter(pk=job.pk).delete()


def retry_delay(attempts: int) -> float:
    base = settings.MADOGUCHI_RETRY_BASE_SECONDS
    return min(base * (2 ** max(attempts - 1, 0)), 300.0)


MAX_PACING_SLEEP = 1.0

# Written on a send job just before the platform is called (sending_mark: with the time of the
# call); success deletes the job, and the mark outlives every other outcome (still_marked). A job
# that comes back carrying it was interrupted (its worker killed) while the platform may have
# accepted the send, or its answer timed out, or the call failed unexpectedly (MaybeSent).
# WhatsApp has no idempotency key: where the platform echoes a send's reference in its receipts
# (Capabilities.echoes_send_reference), the retry waits up to SEND_RECONCILE_SECONDS from the
# call for a receipt naming the message (which records its platform id:
# actions.outbound.do_reconcile_status); without one it is sent again, and the message is marked.
SENDING = "sending: the platform may have accepted this attempt"
TIMEOUT = timeout_error().error  # a call whose answer never came: the same uncertainty
SENDING_AT = re.compile(r" \(at ([0-9]+(?:\.[0-9]+)?)\)$")
# How often a send waiting for the receipt of its interrupted attempt looks again.
RECONCILE_POLL_SECONDS = 1.0


def sending_mark(at: float) -> str:
    """The SENDING mark of a call made at (or just before) ``at``, unix seconds."""
    return f"{SENDING} (at {at:.3f})"


MARK_JOB = "UPDATE madoguchi_job SET last_error = %s WHERE id = %s AND claimed_by = %s"


def mark_sending(job: Job) -> None:
    """Mark ``job`` SENDING (sending_mark) just before its call, in a commit of its own (one
    plain statement: once per send, on the worker's busiest path). Only while the job is
    claimed as ``job`` says."""
    with connection.cursor() as cursor:
        cursor.execute(MARK_JOB, [sending_mark(time.time()), job.pk, job.claimed_by])


def interrupted_at(job: Job) -> float | None:
    """When the interrupted attempt of ``job`` called the platform (interrupted(job)); None
    when the mark carries no time."""
    match = SENDING_AT.search(job.last_error)
    return float(match.group(1)) if match else None


def awaiting_receipt(job: Job, message: Message) -> Reschedule | None:
    """The retry of an interrupted send, on a platform that echoes send references: while the
    interrupted attempt is recent (SEND_RECONCILE_SECONDS), a Reschedule (not an attempt; the
    job stays first of its recipient, so order holds) to look again soon, for the receipt that
    would record the message as sent (then ``sendable`` says no more). None: send now."""
    if not interrupted(job):
        return None
    if not provider_class(message.channel.kind).capabilities.echoes_send_reference:
        return None
    at = interrupted_at(job)
    if at is None:
        return None
    # capped: the interrupted call's time comes from another worker's clock
    left = min(at + settings.SEND_RECONCILE_SECONDS - time.time(), settings.SEND_RECONCILE_SECONDS)
    if left <= 0:
        return None
    return Reschedule(min(left, RECONCILE_POLL_SECONDS), job.last_error, counts_as_attempt=False)


# reserve_send_slots in one statement (PostgreSQL; the batch path, nothing to mark): one round
# trip that commits by itself, where the transaction below takes four, once per number and batch.
# Returns (first slot, slots taken), 0 taken leaving next_free as it was; no row when the number
# has no row yet.
RESERVE_SLOTS = """
WITH bucket AS (
    SELECT id, GREATEST(next_free, %(floor)s) AS start FROM madoguchi_throttle
    WHERE name = %(name)s FOR UPDATE
), planned AS (
    SELECT id, start,
        GREATEST(0, LEAST(%(count)s, FLOOR((%(horizon)s - start) / %(interval)s)::int + 1)) AS taken
    FROM bucket
)
UPDATE madoguchi_throttle SET next_free = CASE WHEN planned.taken > 0
    THEN planned.start + planned.taken * %(interval)s ELSE madoguchi_throttle.next_free END
FROM planned WHERE madoguchi_throttle.id = planned.id
RETURNING planned.start, planned.taken
"""


def reserve_send_slots(channel: Channel, count: int, *, marking: Job | None = None) -> list[float]:
    """Pace sends per business number (``outbound_mps``) across every worker: reserve up to
    ``count`` consecutive slots on the number in one transaction (which also marks ``marking``
    SENDING when its slot is taken).

    Returns the start time (unix seconds) of each reserved slot: only slots starting within
    MAX_PACING_SLEEP from now are taken, so the list may be shorter than ``count`` (empty when
    the number is busy further than that).

    The pace is a token bucket, as the platform's own limit is: slots of the last
    PACING_BURST_SECONDS that went unused (every worker busy elsewhere, or killed after its
    reservation) may still be taken, and are sent at once. After a pause, a number so sends at
    most PACING_BURST_SECONDS' worth of its rate at once on top of its steady pace."""
    interval = 1.0 / max(channel.outbound_mps, 1)
    now = time.time()
    if connection.vendor == "postgresql" and marking is None:
        with connection.cursor() as cursor:
            cursor.execute(
                RESERVE_SLOTS,
                {
                    "name": f"channel:{channel.pk}",
                    "floor": now - settings.PACING_BURST_SECONDS,
                    "horizon": now + MAX_PACING_SLEEP,
                    "interval": interval,
                    "count": count,
                },
            )
            reserved = cursor.fetchone()
        if reserved is not None:
            first, taken = reserved
            return [first + i * interval for i in range(taken)]
        # the number's first send: its row is created below
    with transaction.atomic():
        throttle, _created = Throttle.objects.select_for_update().get_or_create(
            name=f"channel:{channel.pk}"
        )
        first = max(throttle.next_free, now - settings.PACING_BURST_SECONDS)
        room = int((now + MAX_PACING_SLEEP - first) // interval) + 1
        slots = [first + i * interval for i in range(max(0, min(room, count)))]
        if slots:
            throttle.next_free = slots[-1] + interval
            throttle.save(update_fields=["next_free"])
            if marking is not None:
                Job.objects.filter(pk=marking.pk).update(last_error=sending_mark(slots[0]))
    return slots


def pacing(channel: Channel) -> Reschedule:
    """Not sent now: the number's next free slot is further than MAX_PACING_SLEEP away."""
    throttle = Throttle.objects.filter(name=f"channel:{channel.pk}").first()
    delay = max((throttle.next_free if throttle else 0.0) - time.time(), 0.0)
    return Reschedule(delay, "pacing", counts_as_attempt=False)


def reserve_send_slot(channel: Channel, job: Job | None = None) -> float:
    """One send's slot (reserve_send_slots): returns 0 or the seconds to sleep (at most
    MAX_PACING_SLEEP) before sending in it; raises Reschedule (not counted as an attempt, no
    slot taken) when the next free slot is further away than that."""
    slots = reserve_send_slots(channel, 1, marking=job)
    if not slots:
        raise pacing(channel)
    return max(slots[0] - time.time(), 0.0)


def hold_number(channel: Channel, seconds: float) -> None:
    """The platform said the number's throughput is exhausted: every send on it waits."""
    with transaction.atomic():
        throttle, _created = Throttle.objects.select_for_update().get_or_create(
            name=f"channel:{channel.pk}"
        )
        throttle.next_free = max(throttle.next_free, time.time() + seconds)
        throttle.save(update_fields=["next_free"])


def load_messages(ids: list[int]) -> dict[int, Message]:
    """Messages to send, with what a send reads (identity, channel), by id: one query."""
    return Message.objects.select_related("conversation__identity", "channel").in_bulk(ids)


def sendable(message: Message | None) -> bool:
    """Still to send: not deleted, not sent or failed meanwhile (sending again would double)."""
    return message is not None and message.status == "queued" and not message.platform_message_id


def call_platform(provider: Provider, message: Message) -> SentMessage:
    """Send ``message`` (network I/O: never inside a transaction). Raises SendError."""
    return platform_call(provider, message)()


def platform_call(provider: Provider, message: Message) -> Callable[[], SentMessage]:
    """The send of ``message``, ready to run: what it reads from the database is read here, so
    the returned call (network I/O only: never inside a transaction) may run on another thread.
    The call raises SendError."""
    caps = provider.capabilities
    channel = message.channel
    identity = message.conversation.identity
    to = identity.handle
    # The window as of now: a send outside the ordinary window carries its tag (Messenger's
    # HUMAN_AGENT); a window that closed since queueing is the platform's to refuse, and its
    # refusal is recorded on the message.
    # Where the message sits in its conversation (email builds its threading headers from it).
    context = send_context(message, history=caps.threads_in_messages)
    if caps.echoes_send_reference:
        context = replace(context, reference=send_reference(message.pk))
    tag = window_for(
        channel.kind,
        identity.last_inbound_at,
        options=channel.options,
        subscribed=identity.subscribed,
    ).tag
    if message.kind == "template":
        return partial(provider.send_template, to, message.data["template"], context=context)
    if message.kind in outbound.MEDIA_KINDS:
        # A platform that downloads media itself (Viber) gets a signed, expiring link.
        by_url = {"media_url": public_media_url(message)} if caps.media_by_url else {}
        return partial(
            provider.send_media,
            to,
            message.kind,
            message.media_path,
            message.media_mime,
            filename=message.media_filename,
            caption=message.data.get("caption", ""),
            reply_to=message.reply_to_platform_id or None,
            tag=tag,
            context=context,
            **by_url,
        )
    return partial(
        provider.send_text,
        to,
        message.text,
        reply_to=message.reply_to_platform_id or None,
        tag=tag,
        context=context,
    )


def refused(job: Job, message: Message, exc: SendError) -> Reschedule | None:
    """The platform refused a send: record a permanent refusal (or the last attempt) on the
    message and return None; otherwise return the Reschedule for the job, holding the whole
    number first when the refusal says its throughput is exhausted."""
    if exc.permanent or job.attempts >= settings.MADOGUCHI_SEND_MAX_ATTEMPTS:
        outbound.do_record_failure(message.pk, exc.error)
        return None
    if exc.scope == "pair":
        # Meta: after 131056 retry in 4^X seconds, X from 0. Only this recipient waits (its
        # later messages queue behind this one); other recipients go on.
        delay = settings.PAIR_RETRY_BASE_SECONDS * 4 ** min(job.attempts - 1, 5)
    elif exc.retry_after is not None:
        delay = exc.retry_after
    else:
        delay = retry_delay(job.attempts)
    if exc.scope == "number":
        hold_number(message.channel, delay)
    reason = f"{exc.error.code} {exc.error.title}"
    if (exc.error.code, exc.error.title) == (TIMEOUT.code, TIMEOUT.title):
        # The answer was lost, not the request: the retry is marked, and waits for a receipt
        # counted from the call (which began about HTTP_TIMEOUT_SECONDS ago).
        reason = sending_mark(time.time() - settings.HTTP_TIMEOUT_SECONDS)
    return Reschedule(delay, reason)


def interrupted(job: Job) -> bool:
    """An earlier attempt of this job stopped after the platform may have accepted the send."""
    return job.attempts > 1 and job.last_error.startswith(SENDING)


def still_marked(job: Job, reason: str) -> str:
    """The ``last_error`` of a job that did not finish, as claimed (``job``), for ``reason``: an
    earlier attempt's SENDING mark outlives every outcome of this one but a send (then the
    message is marked) or a new mark. Otherwise a retry rescheduled for pacing, a refusal or an
    error would forget that the message may already have left, and send it again unmarked."""
    if interrupted(job) and not reason.startswith(SENDING):
        return job.last_error
    return reason


def send_message(job: Job, message_id: int) -> None:
    message = load_messages([message_id]).get(message_id)
    if not sendable(message):
        return  # sent meanwhile (or its receipt recorded it), failed or deleted
    later = awaiting_receipt(job, message)
    if later is not None:
        raise later
    maybe_twice = interrupted(job)
    delay = reserve_send_slot(message.channel, job)
    if delay > 0:
        time.sleep(delay)
    called_at = time.time()
    try:
        sent = call_platform(provider_for(message.channel), message)
    except SendError as exc:
        again = refused(job, message, exc)
        if again is not None:
            raise again from None
        return
    except Exception as exc:
        raise MaybeSent(called_at, traceback.format_exc(limit=5)) from exc
    outbound.do_record_sent(message.pk, sent, maybe_twice=maybe_twice)


# Sends to different numbers overlap: each number of a batch is a lane with at most one call in
# flight (its slots keep its pace), run on these threads, while every read and write stays on the
# worker's thread (its connection; no network I/O in a transaction). A worker's sends are then
# bound by its own work, not by the platform's answer times: a worker alone keeps every number at
# its pace. Lanes beyond the threads wait for one.
SEND_THREADS = 8
_send_threads: ThreadPoolExecutor | None = None


def send_threads() -> ThreadPoolExecutor:
    global _send_threads
    if _send_threads is None:
        _send_threads = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="send")
    return _send_threads


class Planned(NamedTuple):
    """A send of a batch: its reserved slot (unix seconds), job and message, and whether an
    earlier attempt may have sent it (interrupted)."""

    slot: float
    job: Job
    message: Message
    maybe_twice: bool


def send_messages(
    jobs: list[Job], *, still_ours: Callable[[list[Job]], list[Job]]
) -> dict[int, BaseException]:
    """Run a batch of ``send_message`` jobs, claimed together (at most one per recipient: the
    claim leaves a key's later jobs for later). Returns ``{job id: exception}`` for the jobs that
    did not finish (a Reschedule, or MaybeSent for a call that failed unexpectedly) for the
    worker to settle; the finished ones are deleted here.

    One query loads the messages, one transaction per number reserves the batch's slots on it,
    and each number's sends run in slot order, one call in flight per number (SEND_THREADS).
    Each job is marked SENDING just before its call and its platform id committed right after
    the answer (the window for a double send is as narrow as for a single job: a kill leaves
    marked only the calls in flight, one per number), and one transaction writes the audit
    rows, the events and deletes the finished jobs. ``jobs`` were just claimed or renewed;
    ``still_ours`` is asked before each send with the jobs left: it renews their leases when
    due and returns those not taken over meanwhile (never send a job we lost)."""
    messages = load_messages([job.args["message_id"] for job in jobs])
    outcomes: dict[int, BaseException] = {}
    finished: list[Job] = []
    by_channel: dict[int, list[tuple[Job, Message]]] = {}
    for job in jobs:
        message = messages.get(job.args["message_id"])
        if not sendable(message):
            finished.append(job)  # sent meanwhile (or its receipt recorded it), failed, deleted
            continue
        later = awaiting_receipt(job, message)
        if later is not None:
            outcomes[job.pk] = later
            continue
        by_channel.setdefault(message.channel_id, []).append((job, message))
    lanes: dict[int, deque[Planned]] = {}
    for channel_id, group in by_channel.items():
        channel = group[0][1].channel
        slots = reserve_send_slots(channel, len(group))
        lanes[channel_id] = deque(
            Planned(slot, job, message, interrupted(job))
            for (job, message), slot in zip(group, slots, strict=False)
        )
        if len(slots) < len(group):
            later = pacing(channel)
            outcomes.update((job.pk, later) for job, _message in group[len(slots) :])
    providers: dict[int, Provider] = {}
    held: dict[int, Reschedule] = {}  # numbers the platform told to wait
    recorded: list[tuple[int, SentMessage, bool]] = []
    flying: dict[Future[SentMessage], tuple[Planned, float]] = {}  # call: its send, called at

    def busy() -> set[int]:
        """The numbers with a call in flight."""
        return {planned.message.channel_id for planned, _called_at in flying.values()}

    def start(lane: deque[Planned]) -> None:
        """Call the platform for the lane's first send if its slot has come, skipping the sends
        it may not make."""
        while lane:
            slot, job, message, _maybe_twice = lane[0]
            if message.channel_id in held:
                outcomes[job.pk] = held[message.channel_id]
                lane.popleft()
                continue
            if slot > time.time():
                return
            if job not in still_ours([queued.job for rest in lanes.values() for queued in rest]):
                log.info("job %s was taken over by another worker; skipped", job.pk)
                lane.popleft()
                continue
            mark_sending(job)
            if message.channel_id not in providers:
                providers[message.channel_id] = provider_for(message.channel)
            try:
                future = send_threads().submit(
                    platform_call(providers[message.channel_id], message)
                )
            except Exception as exc:  # preparing the call failed: settled as the call would be
                future = Future()
                future.set_exception(exc)
            flying[future] = (lane.popleft(), time.time())
            return

    def settle(future: Future[SentMessage]) -> None:
        (_slot, job, message, maybe_twice), called_at = flying.pop(future)
        try:
            sent = future.result()
        except SendError as exc:
            again = refused(job, message, exc)
            if again is None:
                finished.append(job)
                return
            outcomes[job.pk] = again
            if exc.scope == "number":
                held[message.channel_id] = Reschedule(
                    again.delay, "pacing", counts_as_attempt=False
                )
            return
        except Exception as exc:
            outcomes[job.pk] = MaybeSent(
                called_at, "".join(traceback.format_exception(exc, limit=-5))
            )
            return
        outbound.do_commit_platform_id(message.pk, sent, maybe_twice=maybe_twice)
        recorded.append((message.pk, sent, maybe_twice))
        finished.append(job)

    try:
        while flying or any(lanes.values()):
            for channel_id, lane in lanes.items():
                if channel_id not in busy():
                    start(lane)
            waiting = [lane[0].slot for c, lane in lanes.items() if lane and c not in busy()]
            pause = max(min(waiting) - time.time(), 0.0) if waiting else None
            if flying:
                done, _running = wait(list(flying), timeout=pause, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(future)
            elif pause:
                time.sleep(pause)
    finally:
        # a batch stopped by an error lets its calls end first: their jobs stay marked, so their
        # retries wait for a receipt; what was sent is recorded even if a later step failed
        wait(list(flying))
        with transaction.atomic():
            outbound.do_record_sent_batch(recorded)
            if finished:  # claimed together: one claimant
                Job.objects.filter(
                    pk__in=[job.pk for job in finished], claimed_by=finished[0].claimed_by
                ).delete()
    return outcomes


def fetch_media(job: Job, message_id: int) -> None:
    message = Message.objects.select_related("channel").filter(pk=message_id).first()
    if message is None or message.media_state != "pending":
        return
    provider = provider_for(message.channel)

    # Platforms that announce media by URL (Viber, Messenger) have it kept whole in data: the
    # id column is too short for a CDN address.
    ref = MediaRef(
        platform_media_id=message.media_platform_id,
        mime_type=message.media_mime,
        url=message.data.get("media_url", ""),
    )
    try:
        stored = provider.fetch_media(
            ref, new_media_name("inbound", message.media_mime), kind=message.kind
        )
    except MediaTooLarge:
        do_record_media(message.pk, state="too_large")
        return
    except SendError as exc:
        if exc.permanent or job.attempts >= settings.MADOGUCHI_SEND_MAX_ATTEMPTS:
            do_record_media(message.pk, state="failed")
            return
        raise Reschedule(retry_delay(job.attempts), str(exc)) from None
    do_record_media(message.pk, state="stored", stored=stored)


def mark_read(job: Job, message_id: int) -> None:
    message = Message.objects.select_related("channel").filter(pk=message_id).first()
    if message is None or not message.platform_message_id:
        return
    try:
        provider_for(message.channel).mark_read(message.platform_message_id)
    except SendError as exc:
        # A read receipt is a courtesy: retry transient errors a few times, then let it go.
        if not exc.permanent and job.attempts < 3:
            raise Reschedule(retry_delay(job.attempts), str(exc)) from None
        log.info("read receipt for message %s not sent: %s", message_id, exc)


def sync_templates(job: Job, channel_id: int) -> None:
    channel = Channel.objects.filter(pk=channel_id).first()
    if channel is None:
        return
    try:
        templates = provider_for(channel).list_templates()
    except SendError as exc:
        if not exc.permanent and job.attempts < 5:
            raise Reschedule(retry_delay(job.attempts), str(exc)) from None
        log.warning("template sync for channel %s failed: %s", channel_id, exc)
        return
    do_sync_templates(channel, templates)


# A name is a nicety: a transient failure is retried this many times in all, then dropped.
PROFILE_MAX_ATTEMPTS = 5


def fetch_profile(job: Job, identity_id: int) -> None:
    """Name a new contact from its platform profile (Messenger's webhooks carry none). One
    job per identity (key ``profile:<id>``), queued when the identity was created without a
    name. A permanent refusal (the person never opened the conversation, an unknown handle,
    a bad token) leaves the handle as the name and is not retried; a transient one is retried
    up to PROFILE_MAX_ATTEMPTS times."""
    identity = ContactIdentity.objects.select_related("channel").filter(pk=identity_id).first()
    if identity is None or identity.profile_name:
        return  # gone, or named since (by the platform or an earlier run of this job)
    provider = provider_for(identity.channel)
    if not provider.capabilities.has_profile_lookup:
        return
    try:
        profile = provider.fetch_profile(identity.handle)
    except SendError as exc:
        if exc.permanent or job.attempts >= PROFILE_MAX_ATTEMPTS:
            log.info("no profile for identity %s: %s", identity_id, exc)
            return
        delay = exc.retry_after if exc.retry_after is not None else retry_delay(job.attempts)
        raise Reschedule(delay, f"{exc.error.code} {exc.error.title}") from None
    if profile is not None:
        do_update_profile(identity.pk, profile)


HANDLERS: dict[str, Callable[..., Any]] = {
    "send_message": send_message,
    "fetch_media": fetch_media,
    "mark_read": mark_read,
    "sync_templates": sync_templates,
    "fetch_profile": fetch_profile,
}
