"""The JSON shapes of conversations and messages, shared by the API and real-time events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from madoguchi.models import Channel, Conversation, Message, User
from madoguchi.models.users import user_label
from madoguchi.providers.registry import provider_class
from madoguchi.rules.window import window_for


def user_json(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.pk, "name": user.label, "username": user.username, "role": user.role}


def iso(value: Any) -> str | None:
    return value.isoformat() if value else None


# The columns a conversation's JSON is made of, for queries that skip model instances.
CONVERSATION_ROW = (
    "id",
    "channel_id",
    "channel__kind",
    "channel__name",
    "channel__options",
    "contact_id",
    "contact__name",
    "identity__handle",
    "identity__last_inbound_at",
    "identity__subscribed",
    "assignee_id",
    "assignee__display_name",
    "assignee__first_name",
    "assignee__last_name",
    "assignee__username",
    "assignee__role",
    "team_id",
    "status",
    "snoozed_until",
    "last_message_at",
    "last_message_preview",
    "unread_count",
    "created_at",
)


def conversation_row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The conversation JSON from a row of CONVERSATION_ROW columns."""
    window = window_for(
        row["channel__kind"],
        row["identity__last_inbound_at"],
        options=row["channel__options"],
        subscribed=row["identity__subscribed"],
    )
    assignee = None
    if row["assignee_id"] is not None:
        assignee = {
            "id": row["assignee_id"],
            "name": user_label(
                row["assignee__display_name"],
                row["assignee__first_name"],
                row["assignee__last_name"],
                row["assignee__username"],
            ),
            "username": row["assignee__username"],
            "role": row["assignee__role"],
        }
    return {
        "id": row["id"],
        "channel": {
            "id": row["channel_id"],
            "kind": row["channel__kind"],
            "name": row["channel__name"],
        },
        "contact": {
            "id": row["contact_id"],
            "name": row["contact__name"],
            "handle": row["identity__handle"],
            "display_handle": provider_class(row["channel__kind"]).display_handle(
                row["identity__handle"]
            ),
        },
        "assignee": assignee,
        "team": row["team_id"],
        "status": row["status"],
        "snoozed_until": iso(row["snoozed_until"]),
        "last_message_at": iso(row["last_message_at"]),
        "last_message_preview": row["last_message_preview"],
        "unread_count": row["unread_count"],
        "window": window.as_json(),
        "created_at": iso(row["created_at"]),
    }


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """Needs channel, contact, identity and assignee loaded (select_related)."""
    assignee = conversation.assignee
    return conversation_row_json(
        {
            "id": conversation.pk,
            "channel_id": conversation.channel_id,
            "channel__kind": conversation.channel.kind,
            "channel__name": conversation.channel.name,
            "channel__options": conversation.channel.options,
            "contact_id": conversation.contact_id,
            "contact__name": conversation.contact.name,
            "identity__handle": conversation.identity.handle,
            "identity__last_inbound_at": conversation.identity.last_inbound_at,
            "identity__subscribed": conversation.identity.subscribed,
            "assignee_id": conversation.assignee_id,
            "assignee__display_name": assignee.display_name if assignee else "",
            "assignee__first_name": assignee.first_name if assignee else "",
            "assignee__last_name": assignee.last_name if assignee else "",
            "assignee__username": assignee.username if assignee else "",
            "assignee__role": assignee.role if assignee else "",
            "team_id": conversation.team_id,
            "status": conversation.status,
            "snoozed_until": conversation.snoozed_until,
            "last_message_at": conversation.last_message_at,
            "last_message_preview": conversation.last_message_preview,
            "unread_count": conversation.unread_count,
            "created_at": conversation.created_at,
        }
    )


def message_channel(message: Message) -> Channel:
    """The message's channel without a query where the caller already holds it (created with
    it, or loaded with its conversation's channel); one query otherwise."""
    if Message._meta.get_field("channel").is_cached(message):
        return message.channel
    if Message._meta.get_field("conversation").is_cached(message):
        conversation = message.conversation
        if (
            Conversation._meta.get_field("channel").is_cached(conversation)
            and conversation.channel_id == message.channel_id
        ):
            return conversation.channel
    return message.channel


def channel_json(channel: Channel) -> dict[str, Any]:
    return {"id": channel.pk, "kind": channel.kind, "name": channel.name}


def message_json(message: Message) -> dict[str, Any]:
    """Needs author loaded (select_related) for outbound messages, and the channel (or the
    conversation with its channel) to avoid one query for the ``channel`` label."""
    error = None
    if message.error_code is not None:
        error = {
            "code": message.error_code,
            "title": message.error_title,
            "details": message.error_details,
            "reason": message.data.get("error_reason", ""),
        }
    media = None
    if message.media_platform_id or message.media_path:
        media = {
            "mime_type": message.media_mime,
            "size": message.media_size,
            "filename": message.media_filename,
            "state": message.media_state,
            "url": f"/media/{message.pk}" if message.media_path else None,
        }
    return {
        "id": message.pk,
        "conversation": message.conversation_id,
        "channel": channel_json(message_channel(message)),
        "direction": message.direction,
        "kind": message.kind,
        "text": message.text,
        "author": user_json(message.author) if message.author_id else None,
        "status": message.status or None,
        "error": error,
        "reply_to": message.reply_to_id,
        "media": media,
        "data": message.data,
        "platform_id": message.platform_message_id,
        "platform_timestamp": iso(message.platform_timestamp),
        "created_at": iso(message.created_at),
    }
