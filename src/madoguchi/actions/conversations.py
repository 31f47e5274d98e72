"""Assignment and status of conversations: claim, assign, transfer, resolve, reopen, snooze."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid
from madoguchi.models import Conversation, ConversationStatus, Message, User
from madoguchi.queries.serialize import conversation_json
from madoguchi.realtime.publish import publish_on_commit
from madoguchi.rules import access

from . import audit
from .jobs import enqueue


def lock(conversation: Conversation | int) -> Conversation:
    """Re-read the conversation under a row lock inside the caller's transaction.

    The lock is taken without joins, then the row is read again with its relations: after
    waiting for a lock PostgreSQL re-checks only the locked row, so joined rows (the assignee,
    say) read in the same statement could be stale.
    """
    pk = conversation if isinstance(conversation, int) else conversation.pk
    Conversation.objects.select_for_update().only("pk").get(pk=pk)
    return Conversation.objects.select_related("channel", "contact", "identity", "assignee").get(
        pk=pk
    )


def publish_conversation(
    conversation: Conversation,
    previous_recipients: list[int] = (),
    *,
    recipients: list[int] | None = None,
) -> None:
    """Send the conversation's new state to everyone who may see it now, and a removal to those
    who could see it before and no longer can (e.g. after a reassignment in assigned_only).
    ``recipients``: access.recipients_for(conversation) as it is now, when the caller has it."""
    if recipients is None:
        recipients = access.recipients_for(conversation)
    publish_on_commit(
        {"type": "conversation", "op": "upsert", "conversation": conversation_json(conversation)},
        recipients,
    )
    gone = set(previous_recipients) - set(recipients)
    if gone:
        publish_on_commit(
            {"type": "conversation", "op": "remove", "id": conversation.pk}, sorted(gone)
        )


def do_assign(
    actor: User | None,
    conversation: Conversation,
    assignee: User | None,
    *,
    note: str = "",
    action: str = "conversation.assigned",
) -> Conversation:
    """Set the assignee (trusted: permission checks are the caller's). Audited and published."""
    with transaction.atomic():
        conversation = lock(conversation)
        before = access.recipients_for(conversation)
        previous = conversation.assignee
        if previous == assignee and not note:
            return conversation
        conversation.assignee = assignee
        conversation.save(update_fields=["assignee"])
        audit.record(
            action,
            actor=actor,
            conversation=conversation,
            previous=previous.pk if previous else None,
            assignee=assignee.pk if assignee else None,
            note=note,
        )
        if assignee is not None and conversation.contact.owner_id != assignee.pk:
            # Sticky ownership follows the person who now handles the customer.
            contact = conversation.contact
            contact.owner = assignee
            contact.save(update_fields=["owner"])
        now = access.recipients_for(conversation)
        if note:
            from .outbound import publish_message

            message = Message.objects.create(
                conversation=conversation,
                channel=conversation.channel,
                direction="out",
                kind="note",
                text=note,
                author=actor,
                data={"transfer_to": assignee.pk if assignee else None},
            )
            publish_message(message, conversation, recipients=now)
        publish_conversation(conversation, before, recipients=now)
    return conversation


def check_claim(user: User, conversation: Conversation) -> Conversation:
    access.check_can_claim(user, conversation)
    access.check_assignable(user)
    if conversation.assignee_id == user.pk:
        return conversation
    with transaction.atomic():
        current = lock(conversation)
        # Two agents clicking Claim at once: the second one sees the first one's claim.
        access.check_can_claim(user, current)
        return do_assign(user, current, user, action="conversation.claimed")


def check_assign(
    actor: User, conversation: Conversation, assignee: User | None, *, note: str = ""
) -> Conversation:
    if assignee is not None:
        access.check_assignable(assignee)
    with transaction.atomic():
        current = lock(conversation)
        # Checked on the locked row: a supervisor's reassignment a moment ago wins.
        access.check_can_assign(actor, current, assignee)
        action = (
            "conversation.transferred"
            if current.assignee_id == actor.pk and not actor.is_supervisor_or_admin
            else "conversation.assigned"
        )
        return do_assign(actor, current, assignee, note=note, action=action)


def do_set_status(
    actor: User | None,
    conversation: Conversation,
    status: str,
    *,
    snoozed_until: datetime | None = None,
) -> Conversation:
    if snoozed_until is not None and timezone.is_naive(snoozed_until):
        snoozed_until = timezone.make_aware(snoozed_until)
    if status not in ConversationStatus.values:
        raise Invalid(_("Unknown status %(status)s.") % {"status": status}, code="invalid_status")
    if status == ConversationStatus.SNOOZED and (
        snoozed_until is None or snoozed_until <= timezone.now()
    ):
        raise Invalid(_("Snoozing needs a time in the future."), code="invalid_snooze")
    with transaction.atomic():
        conversation = lock(conversation)
        if status != ConversationStatus.RESOLVED and conversation.status == "resolved":
            # Reopening: a newer conversation may already be active for this contact.
            active = (
                Conversation.objects.filter(identity=conversation.identity)
                .exclude(status="resolved")
                .exclude(pk=conversation.pk)
                .exists()
            )
            if active:
                raise Invalid(
                    _("A newer conversation with this contact is already open."),
                    code="conversation_active",
                )
        previous = conversation.status
        conversation.status = status
        conversation.snoozed_until = snoozed_until if status == "snoozed" else None
        conversation.save(update_fields=["status", "snoozed_until"])
        audit.record(
            f"conversation.{status}",
            actor=actor,
            conversation=conversation,
            previous=previous,
            snoozed_until=snoozed_until.isoformat() if snoozed_until else None,
        )
        publish_conversation(conversation)
    return conversation


def check_set_status(
    actor: User, conversation: Conversation, status: str, *, snoozed_until: datetime | None = None
) -> Conversation:
    with transaction.atomic():
        current = lock(conversation)
        access.check_can_change_status(actor, current)
        return do_set_status(actor, current, status, snoozed_until=snoozed_until)


def do_mark_seen(user: User, conversation: Conversation) -> Conversation:
    """The assignee opened the conversation: clear the unread count and send read receipts."""
    if conversation.assignee_id != user.pk:
        return conversation
    with transaction.atomic():
        conversation = lock(conversation)
        if conversation.unread_count == 0:
            return conversation
        conversation.unread_count = 0
        conversation.save(update_fields=["unread_count"])
        latest_inbound = (
            conversation.messages.filter(direction="in")
            .exclude(platform_message_id=None)
            .order_by("-id")
            .first()
        )
        if latest_inbound is not None:
            # WhatsApp marks every earlier message read with the latest one.
            enqueue("mark_read", {"message_id": latest_inbound.pk})
        audit.record("conversation.seen", actor=user, conversation=conversation)
        publish_conversation(conversation)
    return conversation


def do_wake_snoozed(now: datetime | None = None) -> int:
    """Reopen conversations whose snooze time has passed. Returns how many."""
    now = now or timezone.now()
    count = 0
    for pk in Conversation.objects.filter(status="snoozed", snoozed_until__lte=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            current = lock(pk)
            # Resolved or snoozed again since the query: leave it alone.
            if (
                current.status == "snoozed"
                and current.snoozed_until
                and current.snoozed_until <= now
            ):
                do_set_status(None, current, "open")
                count += 1
    return count
