"""Permission-checked reads of conversations and messages."""

from __future__ import annotations

from django.db.models import QuerySet

from madoguchi.errors import NotFound
from madoguchi.models import Conversation, Message, User
from madoguchi.rules.access import readable_conversations_q


def conversations_for(user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(readable_conversations_q(user)).select_related(
        "channel", "contact", "identity", "assignee"
    )


def access_conversation(user: User, conversation_id: int) -> Conversation:
    """The conversation if ``user`` may read it; NotFound otherwise (no existence leak)."""
    conversation = conversations_for(user).filter(pk=conversation_id).first()
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation


def list_conversations(
    user: User,
    *,
    assignee: str | None = None,
    status: str = "open",
    channel_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Conversation]:
    """One page of the inbox, newest activity first. ``assignee``: "me", "none" or a user id."""
    qs = conversations_for(user)
    if assignee == "me":
        qs = qs.filter(assignee_id=user.pk)
    elif assignee == "none":
        qs = qs.filter(assignee__isnull=True)
    elif assignee:
        qs = qs.filter(assignee_id=int(assignee))
    if status != "all":
        qs = qs.filter(status=status)
    if channel_id is not None:
        qs = qs.filter(channel_id=channel_id)
    if before_id is not None:
        qs = qs.filter(pk__lt=before_id)
    return list(qs.order_by("-last_message_at", "-id")[:limit])


def history(
    user: User, conversation: Conversation, *, before_id: int | None = None, limit: int = 50
) -> list[Message]:
    """The latest messages with the contact on this channel (every conversation), oldest first."""
    qs = Message.objects.filter(conversation__identity_id=conversation.identity_id).select_related(
        "author"
    )
    if before_id is not None:
        qs = qs.filter(pk__lt=before_id)
    latest = list(qs.order_by("-id")[:limit])
    latest.reverse()
    return latest
