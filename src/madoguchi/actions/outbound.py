"""Outbound messages and notes: checked, stored as queued with their send job, then recorded as
sent, delivered, read or failed as the platform answers.

Every refusal happens here, before anything is queued: not the assignee (403 ``not_assignee``),
a closed window (422 ``window_closed``), a first contact without a template (422
``template_required``), a template that is unknown, not approved or given the wrong parameters
(422 ``template_invalid``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from madoguchi.errors import Conflict, Forbidden, Invalid, NotFound
from madoguchi.models import (
    STATUS_RANK,
    AuditEvent,
    Channel,
    Contact,
    ContactIdentity,
    Conversation,
    Message,
    Template,
    User,
)
from madoguchi.providers.base import PlatformError, SentMessage, StatusUpdate
from madoguchi.providers.registry import provider_class
from madoguchi.queries.serialize import message_json
from madoguchi.queries.threads import message_id_for_reference
from madoguchi.realtime.publish import has_audience, publish_on_commit
from madoguchi.rules import access, window
from madoguchi.storage import new_media_name

from . import audit
from .conversations import lock, publish_conversation
from .jobs import enqueue

PREVIEW_LENGTH = 120


def send_key(conversation: Conversation) -> str:
    """Sends to one recipient on one number go out strictly in order."""
    return f"send:{conversation.channel_id}:{conversation.identity.handle}"


def publish_message(
    message: Message,
    conversation: Conversation,
    op: str = "add",
    *,
    recipients: list[int] | None = None,
) -> None:
    """The message's event, to everyone who may read its conversation (``recipients``:
    access.recipients_for(conversation), when the caller has it)."""
    publish_on_commit(
        {
            "type": "message",
            "op": op,
            "conversation_id": conversation.pk,
            "assignee_id": conversation.assignee_id,
            "message": message_json(message),
        },
        access.recipients_for(conversation) if recipients is None else recipients,
    )


def touch_conversation(conversation: Conversation, message: Message) -> None:
    conversation.last_message_at = message.created_at or timezone.now()
    conversation.last_message_preview = message.text[:PREVIEW_LENGTH]
    conversation.save(update_fields=["last_message_at", "last_message_preview"])


def queue_message(
    user: User,
    conversation: Conversation,
    *,
    kind: str,
    text: str,
    reply_to: Message | None = None,
    data: dict[str, Any] | None = None,
    media: dict[str, Any] | None = None,
) -> Message:
    """Store an outbound message as queued with its send job, in one transaction."""
    with transaction.atomic():
        conversation = lock(conversation)
        access.check_can_send(user, conversation)  # again under the lock: no race with a claim
        message = Message.objects.create(
            conversation=conversation,
            channel=conversation.channel,
            direction="out",
            kind=kind,
            text=text,
            author=user,
            status="queued",
            reply_to=reply_to,
            reply_to_platform_id=(reply_to.platform_message_id or "") if reply_to else "",
            data=data or {},
            **(media or {}),
        )
        enqueue("send_message", {"message_id": message.pk}, key=send_key(conversation))
        touch_conversation(conversation, message)
        audit.record("message.queued", actor=user, conversation=conversation, message=message)
        audience = access.recipients_for(conversation)
        publish_message(message, conversation, recipients=audience)
        publish_conversation(conversation, recipients=audience)
    return message


def find_reply_target(conversation: Conversation, reply_to_id: int | None) -> Message | None:
    if reply_to_id is None:
        return None
    target = (
        Message.objects.filter(
            pk=reply_to_id,
            conversation__identity_id=conversation.identity_id,
        )
        .exclude(kind="note")
        .first()
    )
    if target is None or not target.platform_message_id:
        raise Invalid(
            _("The message to reply to is not in this conversation."), code="invalid_reply"
        )
    return target


def check_send_text(
    user: User, conversation: Conversation, text: str, *, reply_to_id: int | None = None
) -> Message:
    access.check_can_send(user, conversation)
    text = text.replace("\x00", "").strip()
    if not text:
        raise Invalid(_("The message is empty."), code="empty_message")
    limit = provider_class(conversation.channel.kind).capabilities.max_text_length
    if len(text) > limit:
        raise Invalid(
            _("The message is longer than %(limit)d characters.") % {"limit": limit},
            code="message_too_long",
        )
    window.check_free_form_allowed(conversation.identity)
    reply_to = find_reply_target(conversation, reply_to_id)
    return queue_message(user, conversation, kind="text", text=text, reply_to=reply_to)


MEDIA_KINDS = {"image", "audio", "video", "document", "sticker"}


def check_upload_size(conversation: Conversation, size: int) -> None:
    """Refuse a file larger than anything the platform accepts before reading it into memory."""
    largest = provider_class(conversation.channel.kind).media_limit("document", "")
    if size > largest:
        raise Invalid(
            _("The file is larger than the platform accepts (%(limit)d KB).")
            % {"limit": largest // 1024},
            code="file_too_large",
        )


def media_kind_for(mime_type: str) -> str:
    family = mime_type.split("/", 1)[0]
    if mime_type == "image/webp":
        return "sticker"
    return family if family in {"image", "audio", "video"} else "document"


def check_send_media(
    user: User,
    conversation: Conversation,
    *,
    content: bytes,
    filename: str,
    mime_type: str,
    caption: str = "",
    reply_to_id: int | None = None,
) -> Message:
    access.check_can_send(user, conversation)
    window.check_free_form_allowed(conversation.identity)
    if not content:
        raise Invalid(_("The file is empty."), code="empty_file")
    kind = media_kind_for(mime_type)
    provider = provider_class(conversation.channel.kind)
    if caption.strip() and kind not in provider.capabilities.caption_kinds:
        raise Invalid(
            _("This kind of file cannot carry a caption here: send the text separately."),
            code="caption_not_supported",
        )
    limit = provider.media_limit(kind, mime_type)
    if len(content) > limit:
        raise Invalid(
            _("The file is larger than the platform accepts (%(limit)d KB).")
            % {"limit": limit // 1024},
            code="file_too_large",
        )
    reply_to = find_reply_target(conversation, reply_to_id)
    relative = new_media_name("outbound", mime_type)
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    safe_name = Path(filename).name[:200] or target.name
    return queue_message(
        user,
        conversation,
        kind=kind,
        text=caption.strip() or f"[{safe_name}]",
        reply_to=reply_to,
        data={"caption": caption.strip()},
        media={
            "media_mime": mime_type,
            "media_size": len(content),
            "media_filename": safe_name,
            "media_path": relative,
            "media_state": "stored",
        },
    )


def resolve_template(channel: Channel, request: dict[str, Any]) -> tuple[Template, dict[str, Any]]:
    """The synced template a send request names, with the request checked against it."""
    capabilities = provider_class(channel.kind).capabilities
    if not capabilities.has_templates:
        raise Invalid(_("This channel has no templates."), code="template_invalid")
    name = str(request.get("name") or "")
    language = str(request.get("language") or "")
    if "\x00" in json.dumps(request, default=str, ensure_ascii=False):
        raise Invalid(
            _("The template values contain an invalid character."), code="template_invalid"
        )
    template = Template.objects.filter(channel=channel, name=name, language=language).first()
    if template is None:
        raise Invalid(
            _("There is no template %(name)s in %(language)s on this channel.")
            % {"name": name, "language": language},
            code="template_invalid",
            problems=[{"field": "name", "code": "unknown", "message": "Unknown template"}],
        )
    if not template.is_sendable:
        raise Invalid(
            _("Template %(name)s is %(status)s: only approved templates can be sent.")
            % {"name": name, "status": template.status},
            code="template_invalid",
            problems=[{"field": "name", "code": "not_approved", "message": template.status}],
        )
    provider = provider_class(channel.kind)
    problems = provider.template_problems(template_graph(template), request)
    if problems:
        raise Invalid(
            _("The values do not fit the template: ")
            + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
            code="template_invalid",
            problems=problems,
        )
    normalized = {
        "name": template.name,
        "language": template.language,
        "parameters": request.get("parameters")
        if request.get("parameters") is not None
        else ({} if template.parameter_format == "NAMED" else []),
        "header": request.get("header"),
        "buttons": request.get("buttons"),
        "named": template.parameter_format == "NAMED",
    }
    return template, normalized


def template_graph(template: Template) -> dict[str, Any]:
    return {
        "id": template.platform_id,
        "name": template.name,
        "language": template.language,
        "status": template.status,
        "category": template.category,
        "parameter_format": template.parameter_format,
        "components": template.components,
    }


def check_send_template(user: User, conversation: Conversation, request: dict[str, Any]) -> Message:
    access.check_can_send(user, conversation)
    template, normalized = resolve_template(conversation.channel, request)
    text = provider_class(conversation.channel.kind).template_text(
        template_graph(template), normalized
    )
    return queue_message(
        user, conversation, kind="template", text=text, data={"template": normalized}
    )


def check_start_conversation(
    user: User, channel: Channel, to: str, *, template: dict[str, Any] | None, text: str = ""
) -> Message:
    """A business-initiated contact: only with an approved template (422 template_required).

    If the contact already has an open conversation, the usual rules apply to it: the user must
    be allowed to read it, and may take it only as a claim (it must be unassigned)."""
    from .conversations import check_claim, publish_conversation

    if user.is_watcher:
        raise Forbidden(_("Watchers have read-only access."), code="read_only")
    access.check_can_use_channel(user, channel)
    provider = provider_class(channel.kind)
    handle = provider.normalize_handle(to)
    if not template:
        raise Invalid(
            _("A conversation you start must begin with an approved template."),
            code="template_required",
        )
    template_obj, normalized = resolve_template(channel, template)
    preview = provider.template_text(template_graph(template_obj), normalized)
    try:
        with transaction.atomic():
            identity = (
                ContactIdentity.objects.select_related("contact")
                .filter(channel=channel, handle=handle)
                .first()
            )
            if identity is None:
                contact = Contact.objects.create(name=handle, owner=user)
                identity = ContactIdentity.objects.create(
                    contact=contact, channel=channel, handle=handle
                )
            existing = (
                Conversation.objects.filter(identity=identity)
                .exclude(status="resolved")
                .values_list("pk", flat=True)
                .first()
            )
            if existing is None:
                conversation = Conversation.objects.create(
                    channel=channel,
                    contact=identity.contact,
                    identity=identity,
                    assignee=user,
                    team=channel.team,
                    last_message_at=timezone.now(),
                )
                audit.record(
                    "conversation.started", actor=user, conversation=conversation, to=handle
                )
                publish_conversation(lock(conversation))
            else:
                from madoguchi.queries.conversations import access_conversation

                conversation = access_conversation(user, existing)  # NotFound if not readable
                if conversation.assignee_id != user.pk:
                    conversation = check_claim(user, conversation)
            return queue_message(
                user, conversation, kind="template", text=preview, data={"template": normalized}
            )
    except IntegrityError:
        # The customer wrote (or a colleague started) at this very moment: nothing was saved.
        raise Conflict(
            _("This conversation changed at the same moment. Please try again."),
            code="conflict",
        ) from None


def check_add_note(user: User, conversation: Conversation, text: str) -> Message:
    access.check_can_write_note(user, conversation)
    text = text.replace("\x00", "").strip()
    if not text:
        raise Invalid(_("The note is empty."), code="empty_message")
    with transaction.atomic():
        conversation = lock(conversation)
        note = Message.objects.create(
            conversation=conversation,
            channel=conversation.channel,
            direction="out",
            kind="note",
            text=text,
            author=user,
        )
        audit.record("note.added", actor=user, conversation=conversation, message=note)
        publish_message(note, conversation)
    return note


def load_for_update(message_id: int) -> Message:
    """The message under a row lock (taken without joins, then re-read with its relations)."""
    try:
        Message.objects.select_for_update().only("pk").get(pk=message_id)
    except Message.DoesNotExist:
        raise NotFound(_("No such message.")) from None
    return Message.objects.select_related(
        "author",
        "conversation__channel",
        "conversation__identity",
        "conversation__assignee",
        "conversation__contact",
    ).get(pk=message_id)


def advance_status(message: Message, status: str, error: PlatformError | None = None) -> bool:
    """Move the delivery status forward only (queued < sent < delivered < read; "failed" once,
    from anything but read). Sets the error with its reason. Returns whether it changed."""
    if message.status == "failed" or message.status == status:
        return False
    if status == "failed":
        if message.status == "read":
            return False  # read by the customer: a late failure report cannot be right
        error = error or PlatformError(code=-1, title="Failed")
        message.error_code = error.code
        message.error_title = error.title[:255]
        message.error_details = error.details
        reason = provider_class(message.conversation.channel.kind).explain_error(error)
        message.data = {**message.data, "error_reason": reason}
    elif STATUS_RANK.get(status, -1) <= STATUS_RANK.get(message.status, -1):
        return False
    message.status = status
    return True


STATUS_FIELDS = ["status", "error_code", "error_title", "error_details", "data"]


COMMIT_PLATFORM_ID = (
    "UPDATE madoguchi_message SET platform_message_id = %s,"
    " status = CASE WHEN status = 'queued' THEN 'sent' ELSE status END WHERE id = %s"
)


def do_commit_platform_id(message_id: int, sent: SentMessage, *, maybe_twice: bool = False) -> None:
    """The platform accepted the message: commit its platform id (and ``sent``, from ``queued``
    only: statuses never go back) at once, in a transaction of its own.

    WhatsApp has no idempotency key: until the platform id is committed, a worker killed now
    would send the message again when its job comes back. The audit row and the event follow
    (do_record_sent_batch). ``maybe_twice``: the ``data.maybe_sent_twice`` mark is committed
    with the id, not with the audit row: a worker killed in between must not leave a double
    unmarked (its job then finds the id and never comes back to mark it)."""
    platform_id = sent.platform_message_id
    if not maybe_twice:
        # Once per send on the worker's busiest path: one plain statement that commits by itself
        # (the ORM's compiling cost more than the statement). ``sent`` from ``queued`` only: a
        # message failed meanwhile (given up) keeps its status, and the id is remembered anyway.
        with connection.cursor() as cursor:
            cursor.execute(COMMIT_PLATFORM_ID, [platform_id, message_id])
        return
    with transaction.atomic():
        data = (
            Message.objects.select_for_update()
            .filter(pk=message_id)
            .values_list("data", flat=True)
            .first()
        )
        if data is not None:
            Message.objects.filter(pk=message_id).update(data={**data, "maybe_sent_twice": True})
        with connection.cursor() as cursor:
            cursor.execute(COMMIT_PLATFORM_ID, [platform_id, message_id])


def do_record_sent_batch(sends: list[tuple[int, SentMessage, bool]]) -> list[Message]:
    """The audit rows and events of sends whose platform ids are committed
    (do_commit_platform_id): ``(message id, answer, maybe_twice)`` each, in one transaction
    (the caller's, when it has one): one read of the messages, one of their audiences, one
    INSERT of the audit rows. ``maybe_twice``: this send followed an attempt interrupted after
    the platform was called (tasks.SENDING); the message is marked ``data.maybe_sent_twice`` and
    the audit row says so, so a double is never silent. Messages deleted meanwhile are
    skipped."""
    if not sends:
        return []
    with transaction.atomic():
        # what the audit rows and the events read: the author, the conversation and its channel
        messages = Message.objects.select_related("author", "conversation__channel").in_bulk(
            [message_id for message_id, _sent, _twice in sends]
        )
        audiences = access.recipients_for_many([m.conversation for m in messages.values()])
        rows: list[AuditEvent] = []
        recorded: list[Message] = []
        for message_id, sent, maybe_twice in sends:
            message = messages.get(message_id)
            if message is None:
                continue
            if message.data.get("platform_id_from_receipt") == sent.platform_message_id:
                recorded.append(message)  # its receipt came first and recorded it
                continue
            # (the maybe_sent_twice mark is in message.data already: do_commit_platform_id
            # committed it with the id; saving data again here could undo what a receipt wrote
            # since)
            conversation = message.conversation
            rows.append(
                AuditEvent(
                    action="message.sent",
                    conversation=conversation,
                    message=message,
                    data={
                        "platform_id": sent.platform_message_id,
                        **({"maybe_sent_twice": True} if maybe_twice else {}),
                    },
                )
            )
            publish_on_commit(
                {
                    "type": "message",
                    "op": "update",
                    "conversation_id": conversation.pk,
                    "assignee_id": conversation.assignee_id,
                    "message": message_json(message),
                },
                audiences[access.audience_key(conversation)],
            )
            recorded.append(message)
        AuditEvent.objects.bulk_create(rows)  # audit.record, for many rows at once
    return recorded


def do_record_sent(message_id: int, sent: SentMessage, *, maybe_twice: bool = False) -> Message:
    """The platform accepted the message: queued -> sent, with its platform id committed first
    (do_commit_platform_id), then the audit row and the event (do_record_sent_batch)."""
    do_commit_platform_id(message_id, sent, maybe_twice=maybe_twice)
    recorded = do_record_sent_batch([(message_id, sent, maybe_twice)])
    if not recorded:
        raise NotFound(_("No such message."))
    return recorded[0]


def do_record_failure(message_id: int, error: PlatformError) -> Message:
    """The platform refused the message for good: failed, with the reason the agent will read."""
    with transaction.atomic():
        message = load_for_update(message_id)
        if advance_status(message, "failed", error):
            message.save(update_fields=STATUS_FIELDS)
            audit.record(
                "message.failed",
                conversation=message.conversation,
                message=message,
                code=error.code,
                title=error.title,
            )
            publish_message(message, message.conversation, op="update")
    return message


def do_apply_status(channel: Channel, update: StatusUpdate) -> bool | None:
    """Apply a delivery receipt monotonically. True: changed; False: nothing new (a duplicate or
    a late ``delivered`` after ``read``); None: no such message (yet). A receipt for an unknown
    platform id whose reference names one of our messages is reconciled with it
    (do_reconcile_status)."""
    with transaction.atomic():
        found = (
            Message.objects.filter(channel=channel, platform_message_id=update.platform_message_id)
            .values_list("pk", flat=True)
            .first()
        )
        if found is None:
            return do_reconcile_status(channel, update) if update.reference else None
        message = load_for_update(found)
        if not advance_status(message, update.status, update.error):
            return False
        message.save(update_fields=STATUS_FIELDS)
        audit.record(
            f"message.{update.status}",
            conversation=message.conversation,
            message=message,
            code=update.error.code if update.error else None,
        )
        publish_message(message, message.conversation, op="update")
        return True


def lock_messages_named(items: list[tuple[Channel, StatusUpdate]]) -> None:
    """Lock, in id order and in one statement, the messages these receipts name (by platform
    id, or by reference: do_reconcile_status), for a caller that then applies them one by one
    in the same transaction. Applied in the body's order instead, two bodies naming the same
    messages in another order deadlock: PostgreSQL resolves that only after its
    deadlock_timeout (1 s), and both workers wait that long for every pair of such rows. Must
    be called inside a transaction."""
    if not items or not connection.features.has_select_for_update:
        return  # SQLite: one writer at a time, nothing to order
    by_channel: dict[int, tuple[set[str], set[int]]] = {}
    for channel, update in items:
        platform_ids, references = by_channel.setdefault(channel.pk, (set(), set()))
        platform_ids.add(update.platform_message_id)
        referenced = message_id_for_reference(update.reference) if update.reference else None
        if referenced is not None:
            references.add(referenced)
    named = Q()
    for channel_id, (platform_ids, references) in by_channel.items():
        either = Q(platform_message_id__in=platform_ids)
        if references:
            either |= Q(pk__in=references)
        named |= Q(channel_id=channel_id) & either
    list(Message.objects.select_for_update().filter(named).order_by("pk").values_list("pk"))


def do_apply_statuses(items: list[tuple[Channel, StatusUpdate]]) -> list[int]:
    """do_apply_status for many receipts at once, in order (the worker's busy path: each send
    brings ~3). The same statuses, audit rows and events as one by one, in a constant number
    of queries whatever the number of receipts and channels: one read of their messages
    (locked, in id order), one UPDATE statement run for each changed message (executemany), one
    audit INSERT and one audience query. Receipts whose platform id is not known here are left
    to do_apply_status (a message not recorded yet: retried later; a reference to reconcile):
    returns their indexes in ``items``. Must be called inside a transaction."""
    if not items:
        return []
    wanted = {(channel.pk, update.platform_message_id) for channel, update in items}
    messages = {
        (m.channel_id, m.platform_message_id): m
        for m in Message.objects.select_for_update(of=("self",))
        .filter(
            channel_id__in={c for c, _p in wanted},
            platform_message_id__in={p for _c, p in wanted},
        )
        .select_related("author", "conversation__channel")
        .order_by("pk")
    }
    left: list[int] = []
    changed: dict[int, Message] = {}
    rows: list[AuditEvent] = []
    events: list[tuple[Conversation, dict[str, Any]]] = []
    publishing = has_audience()
    for index, (channel, update) in enumerate(items):
        message = messages.get((channel.pk, update.platform_message_id))
        if message is None:
            left.append(index)
            continue
        if not advance_status(message, update.status, update.error):
            continue
        changed[message.pk] = message
        rows.append(
            AuditEvent(
                action=f"message.{update.status}",
                conversation=message.conversation,
                message=message,
                data={"code": update.error.code if update.error else None},
            )
        )
        if publishing:  # the message as this receipt left it, as do_apply_status publishes
            events.append((message.conversation, message_json(message)))
    if not changed:
        return left
    fields = [Message._meta.get_field(name) for name in STATUS_FIELDS]
    with connection.cursor() as cursor:
        cursor.executemany(
            "UPDATE madoguchi_message SET status = %s, error_code = %s, error_title = %s,"
            " error_details = %s, data = %s WHERE id = %s",  # STATUS_FIELDS, in order
            [
                (
                    *(
                        field.get_db_prep_save(getattr(message, field.attname), connection)
                        for field in fields
                    ),
                    message.pk,
                )
                for message in changed.values()
            ],
        )
    AuditEvent.objects.bulk_create(rows)  # audit.record, for many rows at once
    if events:
        audiences = access.recipients_for_many([conversation for conversation, _m in events])
        for conversation, payload in events:
            publish_on_commit(
                {
                    "type": "message",
                    "op": "update",
                    "conversation_id": conversation.pk,
                    "assignee_id": conversation.assignee_id,
                    "message": payload,
                },
                audiences[access.audience_key(conversation)],
            )
    return left


def do_reconcile_status(channel: Channel, update: StatusUpdate) -> bool | None:
    """A receipt for a platform id we do not know, whose reference (``StatusUpdate.reference``)
    names an outbound message of ``channel``: a send whose answer was never recorded (its
    worker was killed after the platform accepted it; see tasks.SENDING).

    If the message has no platform id yet, the receipt's is its own: adopted with the receipt's
    status (``data.platform_id_from_receipt``; audit rows ``message.sent``, marked
    ``from_receipt``, then the status's own), and the retry of the send job finds the message
    sent instead of sending it again (a send still in flight records nothing more when its
    answer carries the same id: do_record_sent_batch). If the
    message has another platform id, it really went twice (a retry after the wait found no
    receipt): recorded once per extra platform id, in ``data.sent_twice`` and an audit row
    ``message.sent_twice``. Returns True when that changed the message, False when it was
    recorded already, None when the reference names no message of ours (the receipt is then
    retried like any receipt for an unknown message). Runs in the caller's transaction or its
    own."""
    message_id = message_id_for_reference(update.reference)
    if message_id is None:
        return None
    with transaction.atomic():
        ours = Message.objects.filter(
            pk=message_id,
            channel=channel,
            direction="out",
            conversation__identity__handle=update.recipient_handle,
        ).exists()
        if not ours:  # not a message of ours to that recipient
            return None
        message = load_for_update(message_id)
        platform_id = update.platform_message_id
        conversation = message.conversation
        if not message.platform_message_id:
            message.platform_message_id = platform_id
            # Also the case of a send still in flight whose receipt came before its answer was
            # recorded: the sender then finds this mark and records nothing more.
            message.data = {**message.data, "platform_id_from_receipt": platform_id}
            advance_status(message, update.status, update.error)
            message.save(update_fields=["platform_message_id", *STATUS_FIELDS])
            audit.record(
                "message.sent",
                conversation=conversation,
                message=message,
                platform_id=platform_id,
                from_receipt=True,
            )
            if update.status != "sent":
                audit.record(
                    f"message.{update.status}",
                    conversation=conversation,
                    message=message,
                    code=update.error.code if update.error else None,
                )
            publish_message(message, conversation, op="update")
            return True
        twice = list(message.data.get("sent_twice", []))
        if platform_id in twice:
            return False
        message.data = {**message.data, "sent_twice": [*twice, platform_id]}
        message.save(update_fields=["data"])
        audit.record(
            "message.sent_twice",
            conversation=conversation,
            message=message,
            platform_id=platform_id,
            kept=message.platform_message_id,
        )
        publish_message(message, conversation, op="update")
        return True
