"""Turning stored webhook events into contacts, conversations and messages.

Idempotent by construction: a message already stored (same channel and platform id) is skipped,
statuses only move forward, so processing one raw event twice changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from madoguchi.models import (
    AuditEvent,
    Channel,
    Contact,
    ContactIdentity,
    Conversation,
    Job,
    Message,
    RawEvent,
    Template,
)
from madoguchi.providers.base import (
    InboundEvent,
    InboundMessage,
    MediaRef,
    OutboundEcho,
    PlatformNotice,
    ReceiptWatermark,
    StatusUpdate,
    SubscriptionUpdate,
    TemplateStatusUpdate,
)
from madoguchi.providers.registry import provider_class
from madoguchi.queries.serialize import conversation_json, message_json
from madoguchi.queries.threads import conversation_id_for_key
from madoguchi.realtime import wakeup
from madoguchi.realtime.publish import has_audience, publish_on_commit
from madoguchi.rules.access import audience_key, recipients_for, recipients_for_many
from madoguchi.rules.routing import sticky_assignee
from madoguchi.storage import guess_extension

from . import audit
from .conversations import lock, publish_conversation
from .jobs import enqueue
from .outbound import (
    PREVIEW_LENGTH,
    STATUS_FIELDS,
    advance_status,
    do_apply_status,
    do_apply_statuses,
    load_for_update,
    lock_messages_named,
    publish_message,
)

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What processing one raw event did; ``pending_statuses`` were for unknown messages."""

    messages: int = 0
    duplicates: int = 0
    statuses: int = 0
    pending_statuses: int = 0
    templates: int = 0
    notices: int = 0
    # Echoes held back while a send to their recipient is still in flight (see do_store_echo).
    pending_echoes: int = 0


def identity_for(channel: Channel, message: InboundMessage) -> ContactIdentity:
    return contact_identity(channel, message.sender_handle, message.sender_name)


def looks_up_profiles(channel: Channel) -> bool:
    """Whether new contacts on ``channel`` are named by a profile lookup (the platform's
    webhooks carry no name: Messenger)."""
    return provider_class(channel.kind).capabilities.has_profile_lookup


def profile_job(identity: ContactIdentity) -> Job:
    """The job (unsaved) that names a new identity from its platform profile
    (tasks.fetch_profile); one per identity, keyed by it."""
    return Job(
        kind="fetch_profile",
        args={"identity_id": identity.pk},
        key=f"profile:{identity.pk}",
        run_at=timezone.now(),
    )


def contact_identity(channel: Channel, handle: str, name: str = "") -> ContactIdentity:
    """The contact behind ``handle`` on ``channel``, created (with a new contact) if unknown;
    the platform's profile name is kept up to date. A contact created without a name on a
    channel that looks up profiles gets a fetch_profile job (committed with it)."""
    identity = (
        ContactIdentity.objects.select_related("contact", "contact__owner")
        .filter(channel=channel, handle=handle)
        .first()
    )
    if identity is None:
        contact = Contact.objects.create(name=clean(name or handle, 200))
        identity = ContactIdentity.objects.create(
            contact=contact, channel=channel, handle=handle, profile_name=clean(name, 200)
        )
        if not identity.profile_name and looks_up_profiles(channel):
            job = profile_job(identity)
            enqueue(job.kind, job.args, key=job.key)
    elif name and identity.profile_name != name:
        identity.profile_name = clean(name, 200)
        identity.save(update_fields=["profile_name"])
    return identity


def conversation_for(
    channel: Channel, identity: ContactIdentity, first_message_at: Any
) -> tuple[Conversation, bool]:
    """The contact's active conversation, or a new one for its sticky owner (SPEC §2.3)."""
    conversation = (
        Conversation.objects.select_related("assignee")
        .filter(identity=identity)
        .exclude(status="resolved")
        .first()
    )
    if conversation is not None:
        return conversation, False
    assignee = sticky_assignee(identity.contact)
    conversation = Conversation.objects.create(
        channel=channel,
        contact=identity.contact,
        identity=identity,
        assignee=assignee,
        team=channel.team,
        last_message_at=first_message_at,
    )
    audit.record(
        "conversation.created",
        conversation=conversation,
        assignee=assignee.pk if assignee else None,
        sticky=assignee is not None,
    )
    return conversation, True


def clean(text: str, limit: int | None = None) -> str:
    """Platform text as our columns take it: no NUL (PostgreSQL refuses it), within length."""
    text = text.replace("\x00", "")
    return text[:limit] if limit else text


def message_data(inbound: InboundMessage) -> dict[str, Any]:
    """The kind-specific details kept with a message: the provider's, whether it was forwarded,
    and a media URL the platform announced (fetched later through the provider's own rules)."""
    data = dict(inbound.data)
    if inbound.forwarded:
        data["forwarded"] = True
    if inbound.media and inbound.media.url:
        data["media_url"] = inbound.media.url
    return data


def media_fields(media: MediaRef | None) -> dict[str, Any]:
    """The media columns of an inbound message. Media announced by id or URL is "pending" (a
    fetch_media job downloads it); media that came inside the event (``content``: an email
    attachment) is written to storage now and "stored"."""
    if media is None:
        return {"media_platform_id": "", "media_mime": "", "media_filename": "", "media_state": ""}
    fields: dict[str, Any] = {
        "media_platform_id": clean(media.platform_media_id, 128),
        "media_mime": clean(media.mime_type, 128),
        "media_filename": clean(media.filename, 255),
        "media_state": "pending",
    }
    if media.content is not None:
        fields.update(
            media_path=store_inline_media(media),
            media_size=len(media.content),
            media_state="stored",
        )
    return fields


def store_inline_media(media: MediaRef) -> str:
    """Write inline media under MEDIA_ROOT, named by its SHA-256: processing a body again (a
    retry, a batch applied one by one) writes the same file, never a second copy."""
    content = media.content or b""
    digest = hashlib.sha256(content).hexdigest()
    relative = f"inbound/{digest}{guess_extension(media.mime_type)}"
    target = Path(settings.MEDIA_ROOT) / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_bytes(content)
        os.replace(partial, target)  # readers never see half a file
    return relative


def threaded_conversation(channel: Channel, inbound: InboundMessage) -> Conversation | None:
    """The conversation an inbound message names (InboundMessage.thread_hints and
    conversation_key), on this channel, whoever sent it; None when it names none. In order:
    the key, then the hinted messages nearest first. A resolved conversation is reopened,
    unless the contact has another active one on it (the message goes there)."""
    candidates: list[int] = []
    if inbound.conversation_key:
        keyed = conversation_id_for_key(inbound.conversation_key)
        if keyed is not None:
            candidates.append(keyed)
    hints = [clean(hint, 255) for hint in inbound.thread_hints if hint]
    if hints:
        found = dict(
            Message.objects.filter(channel=channel, platform_message_id__in=hints)
            .exclude(kind="note")
            .values_list("platform_message_id", "conversation_id")
        )
        candidates += [found[hint] for hint in hints if hint in found]
    conversation = None
    for candidate in candidates:
        conversation = (
            Conversation.objects.select_related("identity", "identity__contact")
            .filter(pk=candidate, channel=channel)
            .first()
        )
        if conversation is not None:
            break
    if conversation is None or conversation.status != "resolved":
        return conversation
    active = (
        Conversation.objects.filter(identity_id=conversation.identity_id)
        .exclude(status="resolved")
        .first()
    )
    if active is not None:
        return active
    conversation = lock(conversation)
    conversation.status = "open"
    conversation.snoozed_until = None
    conversation.save(update_fields=["status", "snoozed_until"])
    audit.record(
        "conversation.open", conversation=conversation, previous="resolved", reason="reply"
    )
    return conversation


def do_receive_message(channel: Channel, inbound: InboundMessage) -> Message | None:
    """Store one inbound message; None when it was already stored (a duplicate delivery).

    A message that names its conversation (thread hints, a conversation key: an email reply)
    goes there, even from another address of the customer; any other goes to the sender's
    active conversation, or a new one for the contact's sticky owner.

    Safe against concurrent workers: the window start and the conversation's summary only move
    forward, and the conversation row is locked while it changes."""
    message_id = clean(inbound.platform_message_id, 255)
    if Message.objects.filter(channel=channel, platform_message_id=message_id).exists():
        return None
    threaded = None
    if inbound.thread_hints or inbound.conversation_key:
        threaded = threaded_conversation(channel, inbound)
    identity = threaded.identity if threaded is not None else identity_for(channel, inbound)
    # The window runs from the platform's timestamp of the latest inbound message: a late
    # delivery of an older message must not move it back (a conditional UPDATE, not a save).
    ContactIdentity.objects.filter(pk=identity.pk).filter(
        Q(last_inbound_at__isnull=True) | Q(last_inbound_at__lt=inbound.timestamp)
    ).update(last_inbound_at=inbound.timestamp)
    if threaded is None:
        conversation, _created = conversation_for(channel, identity, inbound.timestamp)
    else:
        conversation = threaded
    conversation = lock(conversation)
    reply_to = None
    target_id = clean(inbound.reply_to_platform_id or inbound.reaction_to_platform_id or "", 255)
    if target_id:
        reply_to = Message.objects.filter(channel=channel, platform_message_id=target_id).first()
    media = inbound.media
    text = clean(inbound.text)
    message = Message.objects.create(
        conversation=conversation,
        channel=channel,
        direction="in",
        kind=inbound.kind,
        text=text,
        platform_message_id=message_id,
        platform_timestamp=inbound.timestamp,
        reply_to=reply_to,
        reply_to_platform_id=target_id,
        error_code=inbound.error.code if inbound.error else None,
        error_title=clean(inbound.error.title, 255) if inbound.error else "",
        error_details=clean(inbound.error.details) if inbound.error else "",
        data=message_data(inbound),
        **media_fields(media),
    )
    fields = ["unread_count"]
    conversation.unread_count = F("unread_count") + 1
    if conversation.status == "snoozed":
        conversation.status = "open"
        conversation.snoozed_until = None
        fields += ["status", "snoozed_until"]
    if inbound.timestamp >= conversation.last_message_at:
        conversation.last_message_at = inbound.timestamp
        conversation.last_message_preview = text[:PREVIEW_LENGTH]
        fields += ["last_message_at", "last_message_preview"]
    conversation.save(update_fields=fields)
    if message.media_state == "pending":
        enqueue("fetch_media", {"message_id": message.pk})
    audit.record("message.received", conversation=conversation, message=message)
    conversation = Conversation.objects.select_related(
        "channel", "contact", "identity", "assignee"
    ).get(pk=conversation.pk)
    audience = recipients_for(conversation)
    publish_message(message, conversation, recipients=audience)
    publish_conversation(conversation, recipients=audience)
    return message


def do_apply_template_status(channel: Channel, update: TemplateStatusUpdate) -> bool:
    """Templates belong to the business account (WABA): every channel on it follows."""
    changed = False
    siblings = Channel.objects.filter(kind=channel.kind, is_active=True)
    siblings = (
        siblings.filter(account_handle=channel.account_handle)
        if channel.account_handle
        else siblings.filter(pk=channel.pk)
    )
    for target in siblings:
        template = (
            Template.objects.filter(channel=target, name=update.name)
            .filter(language__iexact=update.language.replace("-", "_"))
            .first()
            or Template.objects.filter(channel=target, platform_id=update.template_id).first()
        )
        if template is None:
            # Not synced yet: fetch the full definition from the platform.
            enqueue("sync_templates", {"channel_id": target.pk}, key=f"sync:{target.pk}")
            continue
        if template.status == update.event and template.status_reason == update.reason:
            continue
        previous = template.status
        template.status = update.event
        template.status_reason = (update.reason or "")[:200]
        template.save(update_fields=["status", "status_reason", "synced_at"])
        audit.record(
            "template.status",
            channel=target.pk,
            template=template.name,
            language=template.language,
            previous=previous,
            status=update.event,
            reason=update.reason,
        )
        changed = True
    return changed


def channel_for_event(channel: Channel, business_handle: str) -> Channel | None:
    """The channel an event belongs to. One app's webhook carries the events of every number of
    its business account, so an event may name a sibling channel's number."""
    if not business_handle or business_handle == channel.business_handle:
        return channel
    sibling = Channel.objects.filter(
        kind=channel.kind,
        business_handle=business_handle,
        account_handle=channel.account_handle,
        is_active=True,
    ).first()
    # Only a number of the same business account and app (same secret) may be named: a body
    # signed for one app must never write into another app's channel.
    if sibling is None or sibling.secrets.get("app_secret") != channel.secrets.get("app_secret"):
        log.warning("event for a number outside channel %s's account skipped", channel.pk)
        return None
    return sibling


def do_apply_subscription(channel: Channel, update: SubscriptionUpdate) -> bool:
    """Record whether the contact may be messaged (Viber: subscribers only). Returns whether it
    changed. A conversation_started event (``subscribed`` None) only makes the contact known."""
    identity = contact_identity(channel, update.contact_handle, update.contact_name)
    if update.subscribed is None:
        return False
    # The platform does not promise order: an older event never overrides a newer one.
    changed = (
        ContactIdentity.objects.filter(pk=identity.pk)
        .filter(
            Q(subscription_changed_at__isnull=True)
            | Q(subscription_changed_at__lte=update.timestamp)
        )
        .exclude(subscribed=update.subscribed)
        .update(subscribed=update.subscribed, subscription_changed_at=update.timestamp)
    )
    if not changed:
        return False
    audit.record(
        "contact.subscribed" if update.subscribed else "contact.unsubscribed",
        channel=channel.pk,
        contact=identity.contact_id,
    )
    conversation = (
        Conversation.objects.select_related("channel", "contact", "identity", "assignee")
        .filter(identity=identity)
        .exclude(status="resolved")
        .first()
    )
    if conversation is not None:
        publish_conversation(conversation)  # the composer opens or closes with it
    return True


def do_apply_watermark(channel: Channel, watermark: ReceiptWatermark) -> int:
    """Every message sent to the recipient on this channel at or before the watermark reached
    its status (Messenger). Returns how many messages moved; statuses only move forward."""
    candidates = list(
        Message.objects.filter(
            channel=channel,
            direction="out",
            conversation__identity__handle=watermark.recipient_handle,
            platform_message_id__isnull=False,
            created_at__lte=watermark.watermark,
            status__in=["sent", "delivered"] if watermark.status == "read" else ["sent"],
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )
    moved = 0
    for message_id in candidates:
        message = load_for_update(message_id)
        if not advance_status(message, watermark.status):
            continue
        message.save(update_fields=STATUS_FIELDS)
        audit.record(
            f"message.{watermark.status}", conversation=message.conversation, message=message
        )
        publish_message(message, message.conversation, op="update")
        moved += 1
    return moved


class EchoInFlight(Exception):
    """An echo arrived while a send to its recipient has no platform id yet: it may be the echo
    of that very send, so it must wait (the caller retries the body later)."""


def do_store_echo(channel: Channel, echo: OutboundEcho, *, patient: bool = True) -> Message | None:
    """A message the business sent from outside Madoguchi, kept in the thread as outbound (sent,
    no author). None when it is already stored (our own send, or a duplicate delivery).

    Raises EchoInFlight (when ``patient``) while a message to the same recipient is queued
    without a platform id: the platform may echo our send before its answer is recorded, and a
    provider that cannot tell our echoes apart (Messenger without our app id) would otherwise
    store our own message a second time, and the send's id would then collide with it."""
    message_id = clean(echo.platform_message_id, 255)
    if Message.objects.filter(channel=channel, platform_message_id=message_id).exists():
        return None
    if (
        patient
        and Message.objects.filter(
            channel=channel,
            direction="out",
            status="queued",
            platform_message_id__isnull=True,
            conversation__identity__handle=echo.recipient_handle,
        ).exists()
    ):
        raise EchoInFlight(message_id)
    identity = contact_identity(channel, echo.recipient_handle)
    conversation, _created = conversation_for(channel, identity, echo.timestamp)
    conversation = lock(conversation)
    text = clean(echo.text)
    message = Message.objects.create(
        conversation=conversation,
        channel=channel,
        direction="out",
        kind=echo.kind,
        text=text,
        status="sent",
        platform_message_id=message_id,
        platform_timestamp=echo.timestamp,
        data={"echo": True, "media_url": echo.media.url} if echo.media else {"echo": True},
        media_platform_id=clean(echo.media.platform_media_id, 128) if echo.media else "",
        media_mime=clean(echo.media.mime_type, 128) if echo.media else "",
        media_filename=clean(echo.media.filename, 255) if echo.media else "",
        media_state="pending" if echo.media else "",
    )
    if echo.timestamp >= conversation.last_message_at:
        conversation.last_message_at = echo.timestamp
        conversation.last_message_preview = text[:PREVIEW_LENGTH]
        conversation.save(update_fields=["last_message_at", "last_message_preview"])
    if echo.media:
        enqueue("fetch_media", {"message_id": message.pk})
    audit.record("message.echo", conversation=conversation, message=message)
    conversation = Conversation.objects.select_related(
        "channel", "contact", "identity", "assignee"
    ).get(pk=conversation.pk)
    audience = recipients_for(conversation)
    publish_message(message, conversation, recipients=audience)
    publish_conversation(conversation, recipients=audience)
    return message


def apply_event(
    channel: Channel, event: InboundEvent, outcome: Outcome, *, patient: bool = True
) -> None:
    """Apply one event. ``patient``: events that may be waiting for something in flight (an
    echo of a send not recorded yet) are counted as pending rather than applied."""
    if isinstance(event, InboundMessage | StatusUpdate):
        target = channel_for_event(channel, event.business_handle)
        if target is None:
            return
        channel = target
    if isinstance(event, InboundMessage):
        stored = do_receive_message(channel, event)
        if stored is None:
            outcome.duplicates += 1
        else:
            outcome.messages += 1
    elif isinstance(event, StatusUpdate):
        changed = do_apply_status(channel, event)
        if changed is None:
            outcome.pending_statuses += 1
        elif changed:
            outcome.statuses += 1
    elif isinstance(event, ReceiptWatermark):
        outcome.statuses += do_apply_watermark(channel, event)
    elif isinstance(event, SubscriptionUpdate):
        do_apply_subscription(channel, event)
    elif isinstance(event, OutboundEcho):
        try:
            stored = do_store_echo(channel, event, patient=patient)
        except EchoInFlight:
            outcome.pending_echoes += 1
            return
        if stored is None:
            outcome.duplicates += 1
        else:
            outcome.messages += 1
    elif isinstance(event, TemplateStatusUpdate):
        outcome.templates += int(do_apply_template_status(channel, event))
    elif isinstance(event, PlatformNotice):
        outcome.notices += 1
        return  # recorded once per body by do_process_raw_event


class RetryLater(Exception):
    """Processing must be tried again later (e.g. a status arrived before its message)."""


# PostgreSQL's deadlock_detected, serialization_failure and lock_not_available: the transaction
# was chosen to give way, and the same work succeeds when tried again.
TRANSIENT_SQLSTATES = {"40P01", "40001", "55P03"}


def transient(exc: DatabaseError) -> bool:
    """Whether the database refused ``exc``'s statement for the moment only (a deadlock, a
    serialization failure, SQLite's lock wait running out), not for what it wrote."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return connection.vendor == "sqlite" and "database is locked" in str(exc)


# How long a status for a message we do not know yet is retried: the send's answer may still be
# on its way (statuses can arrive before the send call returns). Bounded in tries too: the
# worker stops claiming a body after RAW_EVENT_MAX_ATTEMPTS (20), and a body still waiting then
# would stay unprocessed for ever; receipts for messages never stored here (Viber's welcome
# message, a send from another tool) must end as processed.
UNKNOWN_STATUS_PATIENCE_SECONDS = 600
UNKNOWN_STATUS_MAX_ATTEMPTS = 12


def do_process_raw_event(raw: RawEvent, events: list[InboundEvent]) -> Outcome:
    """Apply every event of one webhook body in one transaction, then mark the body processed.

    Raises RetryLater (after committing what could be applied, idempotently) when some status
    refers to a message not stored yet, or an echo may be of a send still in flight, and the
    event is recent.
    """
    channel = Channel.objects.get(pk=raw.channel_id)
    outcome = Outcome()
    failures: list[str] = []
    age = (timezone.now() - raw.received_at).total_seconds()
    patient = age < UNKNOWN_STATUS_PATIENCE_SECONDS and raw.attempts < UNKNOWN_STATUS_MAX_ATTEMPTS
    try:
        with transaction.atomic():
            receipts = [event for event in events if isinstance(event, StatusUpdate)]
            targets = {
                handle: channel_for_event(channel, handle)
                for handle in {event.business_handle for event in receipts}
            }
            lock_messages_named(
                [
                    (targets[event.business_handle], event)
                    for event in receipts
                    if targets[event.business_handle] is not None
                ]
            )
            for event in events:
                try:
                    # One savepoint per event: an event the database refuses is reported
                    # without losing the other customers' messages of the same body.
                    with transaction.atomic():
                        apply_event(channel, event, outcome, patient=patient)
                except IntegrityError:
                    raise
                except DatabaseError as exc:
                    if transient(exc):
                        raise  # the whole body again later: nothing of it is lost
                    failures.append(f"{type(event).__name__}: {exc}")
                    log.warning("event of raw event %s refused: %s", raw.pk, exc)
            notices = [e for e in events if isinstance(e, PlatformNotice)]
            if notices and raw.attempts <= 1:
                for notice in notices:
                    audit.record(
                        "channel.platform_error",
                        channel=channel.pk,
                        code=notice.error.code,
                        title=notice.error.title,
                        details=notice.error.details,
                    )
            if failures:
                RawEvent.objects.filter(pk=raw.pk).update(error="; ".join(failures)[:2000])
            retry = patient and bool(outcome.pending_statuses or outcome.pending_echoes)
            if not retry:
                RawEvent.objects.filter(pk=raw.pk).update(
                    processed_at=timezone.now(), lease_until=None, error="; ".join(failures)[:2000]
                )
    except IntegrityError as exc:
        # Another worker stored the same contact or message at the same moment: try again.
        raise RetryLater(f"concurrent insert: {exc}") from None
    except DatabaseError as exc:
        if not transient(exc):
            raise
        raise RetryLater(f"the database asked to try again: {exc}") from None
    if retry:
        # What could be applied is committed (and re-applying it later changes nothing).
        raise RetryLater(
            f"{outcome.pending_statuses} statuses for messages not stored yet,"
            f" {outcome.pending_echoes} echoes while sends are in flight"
        )
    return outcome


def bulk_applicable(event: InboundEvent) -> bool:
    """Whether the busy path (do_apply_batch) takes ``event``: a receipt, or a customer message
    for the sender's active conversation (one that names its conversation, an email thread, is
    routed one by one by do_receive_message)."""
    if isinstance(event, InboundMessage):
        return not (event.thread_hints or event.conversation_key)
    return isinstance(event, StatusUpdate)


def do_apply_batch(bodies: list[tuple[Channel, list[InboundEvent]]]) -> set[int]:
    """Apply together the events of many webhook bodies, each given with the channel it came to
    (every event ``bulk_applicable``): customer messages by do_receive_batch, receipts by
    do_apply_statuses; a constant number of queries for the whole batch. Returns the indexes
    of the bodies that must still go through do_process_raw_event, those with a receipt for a
    platform id not known here: what they hold was applied (idempotently: the single path
    applies it again without change) and the single path retries the rest later (RetryLater)
    or reconciles it by its reference. Must be called inside a transaction."""
    messages: list[tuple[Channel, InboundMessage]] = []
    statuses: list[tuple[Channel, StatusUpdate]] = []
    owners: list[int] = []  # the body of each receipt
    for index, (channel, events) in enumerate(bodies):
        for event in events:
            if not isinstance(event, InboundMessage | StatusUpdate):
                raise ValueError(f"not for the busy path: {type(event).__name__}")
            target = channel_for_event(channel, event.business_handle)
            if target is None:
                continue
            if isinstance(event, StatusUpdate):
                statuses.append((target, event))
                owners.append(index)
            else:
                messages.append((target, event))
    if messages:
        do_receive_batch(messages)
    return {owners[i] for i in do_apply_statuses(statuses)}


def do_receive_messages(channel: Channel, inbounds: list[InboundMessage]) -> list[Message]:
    """The same as do_receive_message for each of ``inbounds``, in bulk (see
    do_receive_batch, which takes messages of several channels at once)."""
    return do_receive_batch([(channel, inbound) for inbound in inbounds])


def do_receive_batch(items: list[tuple[Channel, InboundMessage]]) -> list[Message]:
    """The same as do_receive_message for each (channel, message) of ``items``, in bulk: a
    constant number of queries for the whole batch, whatever the number of messages and of
    channels (each statement covers every channel: ``channel_id IN (...)``). For the worker's
    busy path (B2, B3); must be called inside a transaction. An IntegrityError (another worker
    stored the same contact or conversation at the same moment) is the caller's to retry.
    Messages that name their conversation (thread hints, a conversation key) are routed one by
    one through do_receive_message, after the others (the worker sends such bodies there
    anyway).
    """
    threaded = [(c, m) for c, m in items if m.thread_hints or m.conversation_key]
    if threaded:
        plain = [(c, m) for c, m in items if not (m.thread_hints or m.conversation_key)]
        messages = do_receive_batch(plain) if plain else []
        for channel, inbound in threaded:
            message = do_receive_message(channel, inbound)
            if message is not None:
                messages.append(message)
        return messages
    channels = {c.pk: c for c, _m in items}
    fresh: dict[tuple[int, str], InboundMessage] = {}
    for channel, inbound in items:
        fresh.setdefault((channel.pk, clean(inbound.platform_message_id, 255)), inbound)
    if not fresh:
        return []
    stored = set(
        Message.objects.filter(
            channel_id__in=list(channels), platform_message_id__in={p for _c, p in fresh}
        ).values_list("channel_id", "platform_message_id")
    )
    todo = [(key, m) for key, m in fresh.items() if key not in stored]
    if not todo:
        return []

    # Contacts and their identity on each channel, keyed by (channel id, handle).
    first_of: dict[tuple[int, str], InboundMessage] = {}
    for (channel_id, _pid), inbound in todo:
        first_of.setdefault((channel_id, inbound.sender_handle), inbound)
    identities = {
        (i.channel_id, i.handle): i
        for i in ContactIdentity.objects.filter(
            channel_id__in={c for c, _h in first_of}, handle__in={h for _c, h in first_of}
        ).select_related("contact", "contact__owner")
        if (i.channel_id, i.handle) in first_of
    }
    # The window runs from the latest inbound message's timestamp: new identities are created
    # with theirs, known ones only move forward (conditional UPDATEs, one per contact).
    latest: dict[tuple[int, str], Any] = {}
    for (channel_id, _pid), inbound in todo:
        key, ts = (channel_id, inbound.sender_handle), inbound.timestamp
        latest[key] = max(latest[key], ts) if key in latest else ts
    known = list(identities)
    new_keys = [key for key in first_of if key not in identities]
    if new_keys:
        contacts = Contact.objects.bulk_create(
            [Contact(name=clean(first_of[k].sender_name or k[1], 200)) for k in new_keys]
        )
        made = ContactIdentity.objects.bulk_create(
            [
                ContactIdentity(
                    contact=contact,
                    channel=channels[channel_id],
                    handle=handle,
                    profile_name=clean(first_of[(channel_id, handle)].sender_name, 200),
                    last_inbound_at=latest[(channel_id, handle)],
                )
                for contact, (channel_id, handle) in zip(contacts, new_keys, strict=True)
            ]
        )
        identities.update({(i.channel_id, i.handle): i for i in made})
        unnamed = [
            profile_job(i)
            for i in made
            if not i.profile_name and looks_up_profiles(channels[i.channel_id])
        ]
        if unnamed:
            Job.objects.bulk_create(unnamed)
            transaction.on_commit(wakeup.notify)

    adapt = connection.ops.adapt_datetimefield_value
    if known:
        with connection.cursor() as cursor:
            cursor.executemany(
                "UPDATE madoguchi_contactidentity SET last_inbound_at = %s WHERE id = %s"
                " AND (last_inbound_at IS NULL OR last_inbound_at < %s)",
                [(adapt(latest[k]), identities[k].pk, adapt(latest[k])) for k in known],
            )

    # Their active conversations, locked while they change (PostgreSQL; SQLite's write
    # transaction is exclusive anyway), in id order (two workers lock in the same order), and
    # opened (sticky to the owner) where there is none. The locked rows are current, so the
    # events below are built from them without a re-read.
    by_identity = {i.pk: i for i in identities.values()}
    active: dict[int, Conversation] = {}
    if known:
        active = {
            c.identity_id: c
            for c in Conversation.objects.select_for_update(of=("self",))
            .filter(identity_id__in=[identities[k].pk for k in known])
            .exclude(status="resolved")
            .select_related("assignee")
            .order_by("pk")
        }
    # A new conversation is created with its summary (unread count, latest message) as the
    # batch's messages leave it: only the known ones get the UPDATE below.
    summary: dict[tuple[int, str], tuple[int, Any, str]] = {}
    for (channel_id, _pid), m in todo:
        key = (channel_id, m.sender_handle)
        count, newest_at, preview = summary.get(key, (0, None, ""))
        if newest_at is None or m.timestamp > newest_at:
            newest_at, preview = m.timestamp, clean(m.text)[:PREVIEW_LENGTH]
        summary[key] = (count + 1, newest_at, preview)
    opened = []
    for key, identity in identities.items():
        if identity.pk in active:
            continue
        channel = channels[key[0]]
        assignee = sticky_assignee(identity.contact)
        count, newest_at, preview = summary[key]
        opened.append(
            Conversation(
                channel=channel,
                contact=identity.contact,
                identity=identity,
                assignee=assignee,
                team_id=channel.team_id,
                last_message_at=newest_at,
                last_message_preview=preview,
                unread_count=count,
            )
        )
    if opened:
        for conversation in Conversation.objects.bulk_create(opened):
            active[conversation.identity_id] = conversation
    created = {c.pk for c in opened}
    audit_rows = [
        AuditEvent(
            action="conversation.created",
            conversation=c,
            data={"assignee": c.assignee_id, "sticky": c.assignee_id is not None},
        )
        for c in opened
    ]
    for conversation in active.values():
        identity = by_identity[conversation.identity_id]
        conversation.channel = channels[identity.channel_id]
        conversation.identity = identity
        conversation.contact = identity.contact
        key = (identity.channel_id, identity.handle)
        if key in latest and (
            identity.last_inbound_at is None or identity.last_inbound_at < latest[key]
        ):
            identity.last_inbound_at = latest[key]
    locked = {c.pk: c for c in active.values()}

    # Quoted messages (replies, reactions): looked up only when some message quotes one.
    targets = {
        (channel_id, clean(m.reply_to_platform_id or m.reaction_to_platform_id or "", 255))
        for (channel_id, _pid), m in todo
    }
    targets = {t for t in targets if t[1]}
    quoted: dict[tuple[int, str], int] = {}
    if targets:
        quoted = {
            (channel_id, pid): pk
            for channel_id, pid, pk in Message.objects.filter(
                channel_id__in={c for c, _t in targets},
                platform_message_id__in={t for _c, t in targets},
            ).values_list("channel_id", "platform_message_id", "pk")
        }
    rows = []
    for (channel_id, pid), m in todo:
        identity = identities[(channel_id, m.sender_handle)]
        target = clean(m.reply_to_platform_id or m.reaction_to_platform_id or "", 255)
        rows.append(
            Message(
                conversation=active[identity.pk],
                channel=channels[channel_id],
                direction="in",
                kind=m.kind,
                text=clean(m.text),
                platform_message_id=pid,
                platform_timestamp=m.timestamp,
                reply_to_id=quoted.get((channel_id, target)),
                reply_to_platform_id=target,
                error_code=m.error.code if m.error else None,
                error_title=clean(m.error.title, 255) if m.error else "",
                error_details=clean(m.error.details) if m.error else "",
                data=message_data(m),
                **media_fields(m.media),
            )
        )
    messages = Message.objects.bulk_create(rows)
    # A reply to a message of the same batch (same channel): link it now that both exist.
    own = {(m.channel_id, m.platform_message_id): m.pk for m in messages}
    linked = [
        m
        for m in messages
        if m.reply_to_id is None and (m.channel_id, m.reply_to_platform_id) in own
    ]
    for message in linked:
        message.reply_to_id = own[(message.channel_id, message.reply_to_platform_id)]
    if linked:
        Message.objects.bulk_update(linked, ["reply_to"])
    media_jobs = [
        Job(kind="fetch_media", args={"message_id": m.pk}, run_at=timezone.now())
        for m in messages
        if m.media_state == "pending"
    ]
    if media_jobs:
        Job.objects.bulk_create(media_jobs)
        transaction.on_commit(wakeup.notify)
    AuditEvent.objects.bulk_create(
        audit_rows
        + [
            AuditEvent(action="message.received", conversation_id=m.conversation_id, message=m)
            for m in messages
        ]
    )

    # Each conversation's summary: unread count, latest message, reopened if snoozed.
    per_conversation: dict[int, list[Message]] = {}
    for message in messages:
        per_conversation.setdefault(message.conversation_id, []).append(message)
    updates = []
    for conversation_id, items_of in per_conversation.items():
        if conversation_id in created:
            continue  # created with its summary
        row = locked[conversation_id]
        newest = max(items_of, key=lambda m: m.platform_timestamp)
        moves = newest.platform_timestamp >= row.last_message_at
        row.unread_count += len(items_of)
        if moves:
            row.last_message_at = newest.platform_timestamp
            row.last_message_preview = newest.text[:PREVIEW_LENGTH]
        updates.append(
            (
                row.unread_count,
                adapt(row.last_message_at),
                newest.text[:PREVIEW_LENGTH] if moves else None,
                "open" if row.status == "snoozed" else row.status,
                conversation_id,
            )
        )
        if row.status == "snoozed":
            row.status = "open"
            row.snoozed_until = None
    if updates:
        with connection.cursor() as cursor:
            cursor.executemany(
                "UPDATE madoguchi_conversation SET unread_count = %s, last_message_at = %s,"
                " last_message_preview = COALESCE(%s, last_message_preview), status = %s,"
                " snoozed_until = CASE WHEN status = 'snoozed' THEN NULL ELSE snoozed_until END"
                " WHERE id = %s",
                updates,
            )

    # Real-time events, to the people allowed to see each conversation (one computation for
    # every conversation of the batch).
    if not has_audience():
        return messages
    audiences = recipients_for_many([locked[pk] for pk in per_conversation])
    for conversation_id, items_of in per_conversation.items():
        conversation = locked[conversation_id]
        recipients = audiences[audience_key(conversation)]
        for message in items_of:
            message.author = None
            publish_on_commit(
                {
                    "type": "message",
                    "op": "add",
                    "conversation_id": conversation_id,
                    "assignee_id": conversation.assignee_id,
                    "message": message_json(message),
                },
                recipients,
            )
        publish_on_commit(
            {
                "type": "conversation",
                "op": "upsert",
                "conversation": conversation_json(conversation),
            },
            recipients,
        )
    return messages
