"""Conversation keys and the thread context of an outbound message (providers.base.SendContext).

A conversation key names one conversation in what the business sends (email: the Reply-To
plus-address and our Message-ID) so that the contact's answer finds it again, even from
another address or a client that drops the threading headers. It is the conversation id and
a keyed hash of it (lower-case letters and digits: mail systems may lower-case a local part),
so a key cannot be guessed or altered to reach another conversation.
"""

from __future__ import annotations

import re

from django.utils.crypto import constant_time_compare, salted_hmac

from madoguchi.models import Message
from madoguchi.providers.base import HistoryEntry, SendContext

KEY_SALT = "madoguchi.conversation-key"
KEY_RE = re.compile(r"^([0-9]{1,18})z([0-9a-f]{12})$")
# The latest messages a provider sees of the thread (email keeps the root and the latest 19
# ids in References).
HISTORY_LIMIT = 40


def key_signature(conversation_id: int) -> str:
    return salted_hmac(KEY_SALT, str(conversation_id)).hexdigest()[:12]


def conversation_key(conversation_id: int) -> str:
    """``<id>z<12 hex>``: letters and digits only."""
    return f"{conversation_id}z{key_signature(conversation_id)}"


def conversation_id_for_key(key: str) -> int | None:
    """The conversation a key names, None when it is not one of ours (or was tampered with)."""
    match = KEY_RE.match(key.strip().lower())
    if match is None:
        return None
    conversation_id = int(match.group(1))
    if not constant_time_compare(match.group(2), key_signature(conversation_id)):
        return None
    return conversation_id


def send_context(message: Message, *, history: bool = True) -> SendContext:
    """The context of ``message``'s send: its conversation's key, the platform id it quotes and
    (with ``history``) the latest messages with a platform id, oldest first, with their
    provider data."""
    if not history:
        return SendContext(
            conversation_key=conversation_key(message.conversation_id),
            reply_to=message.reply_to_platform_id or "",
        )
    rows = list(
        Message.objects.filter(
            conversation_id=message.conversation_id, platform_message_id__isnull=False
        )
        .exclude(kind="note")
        .exclude(pk=message.pk)
        .order_by("-id")
        .values_list("platform_message_id", "direction", "data")[:HISTORY_LIMIT]
    )
    history = tuple(
        HistoryEntry(platform_message_id=pid, direction=direction, data=data or {})
        for pid, direction, data in reversed(rows)
        if pid
    )
    return SendContext(
        conversation_key=conversation_key(message.conversation_id),
        history=history,
        reply_to=message.reply_to_platform_id or "",
    )


# A send's reference (SendContext.reference), echoed back in the platform's receipts
# (StatusUpdate.reference) where the platform does that: our message id and a short HMAC under
# this installation's secret key. Receipts arrive signed by the platform, but another tool or
# a staging copy sending through the same number would get the same webhooks: its "mg:1234"
# must not name our message 1234.
REFERENCE_RE = re.compile(r"^mg:([0-9]{1,18}):([0-9a-f]{16})$")


def reference_tag(message_id: int) -> str:
    return salted_hmac("madoguchi.send_reference", str(message_id)).hexdigest()[:16]


def send_reference(message_id: int) -> str:
    """``mg:<message id>:<tag>``."""
    return f"mg:{message_id}:{reference_tag(message_id)}"


def message_id_for_reference(reference: str) -> int | None:
    """The message a receipt's reference names; None when it is not one of ours."""
    match = REFERENCE_RE.match(reference.strip())
    if match is None:
        return None
    message_id = int(match.group(1))
    return message_id if constant_time_compare(match.group(2), reference_tag(message_id)) else None
