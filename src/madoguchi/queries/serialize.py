"""The JSON shapes of conversations and messages, shared by the API and real-time events."""

from __future__ import annotations

from typing import Any

from madoguchi.models import Conversation, Message, User
from madoguchi.rules.window import window_for


def user_json(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.pk, "name": user.label, "username": user.username, "role": user.role}


def iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """Needs channel, contact, identity and assignee loaded (select_related)."""
    identity = conversation.identity
    window = window_for(conversation.channel.kind, identity.last_inbound_at)
    return {
        "id": conversation.pk,
        "channel": {
            "id": conversation.channel_id,
            "kind": conversation.channel.kind,
            "name": conversation.channel.name,
        },
        "contact": {
            "id": conversation.contact_id,
            "name": conversation.contact.name,
            "handle": identity.handle,
        },
        "assignee": user_json(conversation.assignee),
        "team": conversation.team_id,
        "status": conversation.status,
        "snoozed_until": iso(conversation.snoozed_until),
        "last_message_at": iso(conversation.last_message_at),
        "last_message_preview": conversation.last_message_preview,
        "unread_count": conversation.unread_count,
        "window": window.as_json() if window.applies else {"open": True, "expires_at": None},
        "created_at": iso(conversation.created_at),
    }


def message_json(message: Message) -> dict[str, Any]:
    """Needs author loaded (select_related) for outbound messages."""
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
