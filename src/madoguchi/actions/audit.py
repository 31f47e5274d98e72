"""Audit rows, written by actions inside their transaction."""

from __future__ import annotations

from typing import Any

from madoguchi.models import AuditEvent, Conversation, Message, User


def record(
    action: str,
    *,
    actor: User | None = None,
    conversation: Conversation | None = None,
    message: Message | None = None,
    **data: Any,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor, action=action, conversation=conversation, message=message, data=data
    )
