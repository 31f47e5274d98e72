"""Turning stored webhook events into contacts, conversations and messages.

Idempotent by construction: a message already stored (same channel and platform id) is skipped,
statuses only move forward, so processing one raw event twice changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from madoguchi.models import (
    Channel,
    Contact,
    ContactIdentity,
    Conversation,
    Message,
    RawEvent,
    Template,
)
from madoguchi.providers.base import (
    InboundEvent,
    InboundMessage,
    PlatformNotice,
    StatusUpdate,
    TemplateStatusUpdate,
)

from . import audit
from .conversations import publish_conversation
from .jobs import enqueue
from .outbound import PREVIEW_LENGTH, do_apply_status, publish_message

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


def identity_for(channel: Channel, message: InboundMessage) -> ContactIdentity:
    identity = (
        ContactIdentity.objects.select_related("contact", "contact__owner")
        .filter(channel=channel, handle=message.sender_handle)
        .first()
    )
    if identity is None:
        contact = Contact.objects.create(name=message.sender_name or message.sender_handle)
        identity = ContactIdentity.objects.create(
            contact=contact,
            channel=channel,
            handle=message.sender_handle,
            profile_name=message.sender_name,
        )
    elif message.sender_name and identity.profile_name != message.sender_name:
        identity.profile_name = message.sender_name
        identity.save(update_fields=["profile_name"])
    return identity


def conversation_for(channel: Channel, identity: ContactIdentity) -> tuple[Conversation, bool]:
    """The contact's active conversation, or a new one for its sticky owner (SPEC §2.3)."""
    conversation = (
        Conversation.objects.select_related("assignee")
        .filter(identity=identity)
        .exclude(status="resolved")
        .first()
    )
    if conversation is not None:
        return conversation, False
    owner = identity.contact.owner
    assignee = owner if owner is not None and owner.is_active and not owner.is_watcher else None
    conversation = Conversation.objects.create(
        channel=channel,
        contact=identity.contact,
        identity=identity,
        assignee=assignee,
        team=channel.team,
    )
    audit.record(
        "conversation.created",
        conversation=conversation,
        assignee=assignee.pk if assignee else None,
        sticky=assignee is not None,
    )
    return conversation, True


def do_receive_message(channel: Channel, inbound: InboundMessage) -> Message | None:
    """Store one inbound message; None when it was already stored (a duplicate delivery)."""
    if Message.objects.filter(
        channel=channel, platform_message_id=inbound.platform_message_id
    ).exists():
        return None
    identity = identity_for(channel, inbound)
    if identity.last_inbound_at is None or inbound.timestamp > identity.last_inbound_at:
        # The window runs from the platform's timestamp of the latest inbound message, so a
        # late-delivered older message must not move it back.
        identity.last_inbound_at = inbound.timestamp
        identity.save(update_fields=["last_inbound_at"])
    conversation, _created = conversation_for(channel, identity)
    if conversation.status == "snoozed":
        conversation.status = "open"
        conversation.snoozed_until = None
    reply_to = None
    target_id = inbound.reply_to_platform_id or inbound.reaction_to_platform_id
    if target_id:
        reply_to = Message.objects.filter(channel=channel, platform_message_id=target_id).first()
    media = inbound.media
    message = Message.objects.create(
        conversation=conversation,
        channel=channel,
        direction="in",
        kind=inbound.kind,
        text=inbound.text,
        platform_message_id=inbound.platform_message_id,
        platform_timestamp=inbound.timestamp,
        reply_to=reply_to,
        reply_to_platform_id=target_id or "",
        error_code=inbound.error.code if inbound.error else None,
        error_title=inbound.error.title[:255] if inbound.error else "",
        error_details=inbound.error.details if inbound.error else "",
        data={**inbound.data, "forwarded": inbound.forwarded}
        if inbound.forwarded
        else inbound.data,
        media_platform_id=media.platform_media_id if media else "",
        media_mime=media.mime_type if media else "",
        media_filename=media.filename if media else "",
        media_state="pending" if media else "",
    )
    conversation.last_message_at = inbound.timestamp
    conversation.last_message_preview = inbound.text[:PREVIEW_LENGTH]
    conversation.unread_count += 1
    conversation.save(
        update_fields=[
            "status",
            "snoozed_until",
            "last_message_at",
            "last_message_preview",
            "unread_count",
        ]
    )
    if media:
        enqueue("fetch_media", {"message_id": message.pk})
    audit.record("message.received", conversation=conversation, message=message)
    conversation = Conversation.objects.select_related(
        "channel", "contact", "identity", "assignee"
    ).get(pk=conversation.pk)
    publish_message(message, conversation)
    publish_conversation(conversation)
    return message


def do_apply_template_status(channel: Channel, update: TemplateStatusUpdate) -> bool:
    template = (
        Template.objects.filter(channel=channel, name=update.name)
        .filter(language__iexact=update.language.replace("-", "_"))
        .first()
        or Template.objects.filter(channel=channel, platform_id=update.template_id).first()
    )
    if template is None:
        # Not synced yet: fetch the full definition from the platform.
        enqueue("sync_templates", {"channel_id": channel.pk}, key=f"sync:{channel.pk}")
        return False
    if template.status == update.event and template.status_reason == update.reason:
        return False
    previous = template.status
    template.status = update.event
    template.status_reason = update.reason or ""
    template.save(update_fields=["status", "status_reason", "synced_at"])
    audit.record(
        "template.status",
        template=template.name,
        language=template.language,
        previous=previous,
        status=update.event,
        reason=update.reason,
    )
    return True


def channel_for_event(channel: Channel, business_handle: str) -> Channel | None:
    """The channel an event belongs to. One app's webhook carries the events of every number of
    its business account, so an event may name a sibling channel's number."""
    if not business_handle or business_handle == channel.business_handle:
        return channel
    sibling = Channel.objects.filter(
        kind=channel.kind, business_handle=business_handle, is_active=True
    ).first()
    if sibling is None:
        log.warning("event for unknown number on channel %s skipped", channel.pk)
    return sibling


def apply_event(channel: Channel, event: InboundEvent, outcome: Outcome) -> None:
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
    elif isinstance(event, TemplateStatusUpdate):
        outcome.templates += int(do_apply_template_status(channel, event))
    elif isinstance(event, PlatformNotice):
        audit.record(
            "channel.platform_error",
            channel=channel.pk,
            code=event.error.code,
            title=event.error.title,
            details=event.error.details,
        )
        outcome.notices += 1


class RetryLater(Exception):
    """Processing must be tried again later (e.g. a status arrived before its message)."""


# How long a status for a message we do not know yet is retried: the send's answer may still be
# on its way (statuses can arrive before the send call returns).
UNKNOWN_STATUS_PATIENCE_SECONDS = 600


def do_process_raw_event(raw: RawEvent, events: list[InboundEvent]) -> Outcome:
    """Apply every event of one webhook body in one transaction, then mark the body processed.

    Raises RetryLater (after committing what could be applied, idempotently) when some status
    refers to a message not stored yet and the event is recent.
    """
    channel = Channel.objects.get(pk=raw.channel_id)
    outcome = Outcome()
    try:
        with transaction.atomic():
            for event in events:
                apply_event(channel, event, outcome)
            age = (timezone.now() - raw.received_at).total_seconds()
            retry = bool(outcome.pending_statuses) and age < UNKNOWN_STATUS_PATIENCE_SECONDS
            if not retry:
                RawEvent.objects.filter(pk=raw.pk).update(
                    processed_at=timezone.now(), lease_until=None, error=""
                )
    except IntegrityError as exc:
        # Another worker stored the same contact or message at the same moment: try again.
        raise RetryLater(f"concurrent insert: {exc}") from None
    if retry:
        # What could be applied is committed (and re-applying it later changes nothing).
        raise RetryLater(f"{outcome.pending_statuses} statuses for messages not stored yet")
    return outcome
