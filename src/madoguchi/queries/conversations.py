"""Permission-checked reads of conversations and messages."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid, NotFound
from madoguchi.models import AuditEvent, Conversation, Message, User
from madoguchi.queries.serialize import CONVERSATION_ROW, conversation_row_json
from madoguchi.rules.access import readable_conversations_q


def conversations_for(user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(readable_conversations_q(user)).select_related(
        "channel", "contact", "identity", "assignee"
    )


MAX_ID = 2**63 - 1


def valid_id(value: int | None) -> bool:
    return value is not None and 0 < value <= MAX_ID


def access_conversation(user: User, conversation_id: int) -> Conversation:
    """The conversation if ``user`` may read it; NotFound otherwise (no existence leak)."""
    if not valid_id(conversation_id):
        raise NotFound(_("No such conversation."))
    conversation = conversations_for(user).filter(pk=conversation_id).first()
    if conversation is None:
        raise NotFound(_("No such conversation."))
    return conversation


@dataclass(frozen=True)
class Page:
    """One page of conversations, as their JSON (see queries.serialize)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(last_message_at: datetime, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{last_message_at.isoformat()}|{pk}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        stamp, pk = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), int(pk)
    except (ValueError, UnicodeDecodeError):
        raise Invalid(_("The cursor is not valid."), code="invalid_cursor") from None


def list_conversations(
    user: User,
    *,
    assignee: str | None = None,
    status: str = "open",
    channel_id: int | None = None,
    team_id: int | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """One page of the inbox, most recent activity first (keyset pagination: constant cost
    whatever the page number). ``assignee``: "me", "none" or a user id."""
    if limit < 1 or limit > 200:
        raise Invalid(_("limit must be between 1 and 200."), code="invalid_limit")
    qs = conversations_for(user)
    if assignee == "me":
        qs = qs.filter(assignee_id=user.pk)
    elif assignee == "none":
        qs = qs.filter(assignee__isnull=True)
    elif assignee:
        if not (str(assignee).isascii() and str(assignee).isdigit() and len(str(assignee)) < 19):
            raise Invalid(_("assignee must be me, none or a user id."), code="invalid_assignee")
        qs = qs.filter(assignee_id=int(assignee))
    if status != "all":
        qs = qs.filter(status=status)
    for value in (channel_id, team_id):
        if value is not None and not valid_id(value):
            raise Invalid(_("The id is not valid."), code="invalid_request")
    if channel_id is not None:
        qs = qs.filter(channel_id=channel_id)
    if team_id is not None:
        qs = qs.filter(team_id=team_id)
    if cursor:
        stamp, pk = decode_cursor(cursor)
        qs = qs.filter(Q(last_message_at__lt=stamp) | Q(last_message_at=stamp, pk__lt=pk))
    # Rows, not model instances: building five models per row was most of a list's cost.
    rows = list(qs.order_by("-last_message_at", "-id").values(*CONVERSATION_ROW)[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    cursor_out = encode_cursor(rows[-1]["last_message_at"], rows[-1]["id"]) if more else None
    return Page(items=[conversation_row_json(row) for row in rows], next_cursor=cursor_out)


def inbox_counts(user: User) -> dict[str, int]:
    """Open conversations of the user, and open unassigned ones they may read."""
    readable = conversations_for(user).filter(status="open")
    return {
        "mine": readable.filter(assignee_id=user.pk).count(),
        "unassigned": readable.filter(assignee__isnull=True).count(),
    }


def history(
    user: User, conversation: Conversation, *, before_id: int | None = None, limit: int = 50
) -> list[Message]:
    """The latest messages with the contact on this channel (every conversation), oldest first."""
    # The contact's conversations this user may read (a handful), then their latest messages
    # through the (conversation, -id) index.
    readable_ids = list(
        Conversation.objects.filter(readable_conversations_q(user))
        .filter(identity_id=conversation.identity_id)
        .values_list("pk", flat=True)
    )
    # The channel too: message_json labels each message with it (one query per row otherwise).
    qs = Message.objects.filter(conversation_id__in=readable_ids).select_related(
        "author", "channel"
    )
    if before_id is not None:
        qs = qs.filter(pk__lt=min(before_id, MAX_ID))
    latest = list(qs.order_by("-id")[:limit])
    latest.reverse()
    return latest


TIMELINE_ACTIONS = (
    "conversation.created",
    "conversation.started",
    "conversation.claimed",
    "conversation.assigned",
    "conversation.transferred",
    "conversation.resolved",
    "conversation.open",
    "conversation.snoozed",
)


def assignment_history(user: User, conversation: Conversation) -> list[AuditEvent]:
    """Who took, gave or closed the contact's conversations ``user`` may read, oldest first."""
    return list(
        AuditEvent.objects.filter(
            conversation__identity_id=conversation.identity_id,
            conversation__in=Conversation.objects.filter(readable_conversations_q(user)),
            action__in=TIMELINE_ACTIONS,
        )
        .select_related("actor")
        .order_by("id")
    )
