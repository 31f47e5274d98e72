"""Background job handlers: fetch by id, talk to the platform (outside any transaction), then
record the outcome through an action. ``Reschedule`` asks the worker to try again later."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction

from madoguchi.actions import outbound
from madoguchi.actions.channels import do_sync_templates
from madoguchi.actions.contacts import do_update_profile
from madoguchi.actions.media import do_record_media
from madoguchi.media_links import public_media_url
from madoguchi.models import Channel, ContactIdentity, Job, Message, Throttle
from madoguchi.providers.base import MediaRef, MediaTooLarge, PlatformError, SendError
from madoguchi.providers.payloads import timeout_error
from madoguchi.providers.registry import provider_for
from madoguchi.queries.threads import send_context
from madoguchi.rules.window import window_for
from madoguchi.storage import new_media_name

log = logging.getLogger(__name__)


class Reschedule(Exception):
    def __init__(self, delay: float, reason: str, *, counts_as_attempt: bool = True) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
        self.counts_as_attempt = counts_as_attempt


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

# Written on a send job in the transaction that reserves its slot, just before the platform is
# called; success deletes the job and every other outcome overwrites it. A job that comes back
# still carrying it was interrupted (its worker killed) while the platform may have accepted the
# send (or its answer timed out): WhatsApp has no idempotency key, so it is sent again, and the
# message is marked.
SENDING = "sending: the platform may have accepted this attempt"
TIMEOUT = timeout_error().error  # a call whose answer never came: the same uncertainty


def reserve_send_slot(channel: Channel, job: Job | None = None) -> float:
    """Pace sends per business number (``outbound_mps``) across every worker.

    Returns 0 or the seconds to sleep (at most MAX_PACING_SLEEP) before sending in the slot
    just reserved; raises Reschedule (not counted as an attempt, no slot taken) when the next
    free slot is further away than that."""
    interval = 1.0 / max(channel.outbound_mps, 1)
    now = time.time()
    with transaction.atomic():
        throttle, _created = Throttle.objects.select_for_update().get_or_create(
            name=f"channel:{channel.pk}"
        )
        slot = max(throttle.next_free, now)
        if slot - now <= MAX_PACING_SLEEP:
            throttle.next_free = slot + interval
            throttle.save(update_fields=["next_free"])
            if job is not None:
                Job.objects.filter(pk=job.pk).update(last_error=SENDING)
            return slot - now
    raise Reschedule(slot - now, "pacing", counts_as_attempt=False)


def hold_number(channel: Channel, seconds: float) -> None:
    """The platform said the number's throughput is exhausted: every send on it waits."""
    with transaction.atomic():
        throttle, _created = Throttle.objects.select_for_update().get_or_create(
            name=f"channel:{channel.pk}"
        )
        throttle.next_free = max(throttle.next_free, time.time() + seconds)
        throttle.save(update_fields=["next_free"])


def send_message(job: Job, message_id: int) -> None:
    message = (
        Message.objects.select_related("conversation__identity", "channel")
        .filter(pk=message_id)
        .first()
    )
    if message is None or message.status != "queued" or message.platform_message_id:
        return  # already sent (or deleted): sending again would double it
    channel = message.channel
    interrupted = job.attempts > 1 and job.last_error == SENDING
    wait = reserve_send_slot(channel, job)
    if wait > 0:
        time.sleep(wait)
    provider = provider_for(channel)
    caps = provider.capabilities
    identity = message.conversation.identity
    to = identity.handle
    # The window as of now: a send outside the ordinary window carries its tag (Messenger's
    # HUMAN_AGENT); a window that closed since queueing is the platform's to refuse, and its
    # refusal is recorded on the message.
    # Where the message sits in its conversation (email builds its threading headers from it).
    context = send_context(message, history=caps.threads_in_messages)
    tag = window_for(
        channel.kind,
        identity.last_inbound_at,
        options=channel.options,
        subscribed=identity.subscribed,
    ).tag
    try:
        if message.kind == "template":
            sent = provider.send_template(to, message.data["template"])
        elif message.kind in outbound.MEDIA_KINDS:
            # A platform that downloads media itself (Viber) gets a signed, expiring link.
            by_url = {"media_url": public_media_url(message)} if caps.media_by_url else {}
            sent = provider.send_media(
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
        else:
            sent = provider.send_text(
                to,
                message.text,
                reply_to=message.reply_to_platform_id or None,
                tag=tag,
                context=context,
            )
    except SendError as exc:
        if exc.permanent or job.attempts >= settings.MADOGUCHI_SEND_MAX_ATTEMPTS:
            outbound.do_record_failure(message.pk, exc.error)
            return
        if exc.scope == "pair":
            # Meta: after 131056 retry in 4^X seconds, X from 0. Only this recipient waits (its
            # later messages queue behind this one); other recipients go on.
            delay = settings.PAIR_RETRY_BASE_SECONDS * 4 ** min(job.attempts - 1, 5)
        elif exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = retry_delay(job.attempts)
        if exc.scope == "number":
            hold_number(channel, delay)
        reason = f"{exc.error.code} {exc.error.title}"
        if (exc.error.code, exc.error.title) == (TIMEOUT.code, TIMEOUT.title):
            reason = SENDING  # the answer was lost, not the request: the retry is marked
        raise Reschedule(delay, reason) from None
    outbound.do_record_sent(message.pk, sent, maybe_twice=interrupted)


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
