"""Permission-checked reads of a contact across its channels: the whole history with the
contact (every conversation the viewer may read, on every channel), the channels an agent may
reply on with each one's rule state, and contacts found by name or handle (for merging).

Visibility is never widened here: a conversation the viewer may not read (rules.access)
contributes nothing, neither messages nor timeline events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import F, Q, Value
from django.utils.translation import gettext as _

from madoguchi.errors import Forbidden, Invalid, NotFound
from madoguchi.models import AuditEvent, Contact, ContactIdentity, Conversation, Message, User
from madoguchi.providers.registry import provider_class
from madoguchi.queries.conversations import MAX_ID, TIMELINE_ACTIONS, valid_id
from madoguchi.queries.search import ContainsText, clean_query, escape_like
from madoguchi.queries.serialize import channel_json, user_json
from madoguchi.rules import access
from madoguchi.rules.window import identity_window


def readable_contact_conversation_ids(user: User, contact_id: int) -> list[int]:
    """Ids of the contact's conversations ``user`` may read (a handful: one query)."""
    return list(
        Conversation.objects.filter(access.readable_conversations_q(user))
        .filter(contact_id=contact_id)
        .values_list("pk", flat=True)
    )


def contact_history(
    user: User, conversation: Conversation, *, before_id: int | None = None, limit: int = 50
) -> list[Message]:
    """The latest messages with the conversation's contact on every channel, oldest first:
    messages of every conversation of the contact that ``user`` may read, and no other.

    Keyset pagination on the message id (``before_id``: strictly older), served by the
    (conversation, -id) index; the cost is the same whatever the page and the contact's size:
    the readable conversations (one query, after the viewer's channel rules) and one page of
    messages with their author and channel."""
    readable_ids = readable_contact_conversation_ids(user, conversation.contact_id)
    qs = Message.objects.filter(conversation_id__in=readable_ids).select_related(
        "author", "channel"
    )
    if before_id is not None:
        qs = qs.filter(pk__lt=min(before_id, MAX_ID))
    latest = list(qs.order_by("-id")[:limit])
    latest.reverse()
    return latest


def contact_assignment_history(user: User, conversation: Conversation) -> list[AuditEvent]:
    """Who took, gave or closed the contact's conversations ``user`` may read (every channel),
    oldest first."""
    return list(
        AuditEvent.objects.filter(
            conversation_id__in=readable_contact_conversation_ids(user, conversation.contact_id),
            action__in=TIMELINE_ACTIONS,
        )
        .select_related("actor")
        .order_by("id")
    )


@dataclass(frozen=True)
class ReplyChannel:
    """One of the contact's identities as a place to reply: its rule state and who holds its
    active conversation."""

    identity: ContactIdentity
    # "free" (free-form allowed), "template" (only an approved template), "closed" (nothing)
    mode: str
    # the rule's reason when not free: window_closed, template_required, not_subscribed
    refusal: str
    window: dict[str, Any]
    conversation_id: int | None  # the active conversation on this identity, if any
    owner: dict[str, Any] | None  # its assignee
    # False: a colleague holds the active conversation (a supervisor must reassign it first)
    available: bool
    last_used: bool  # the identity the customer wrote from last

    def as_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity.pk,
            "channel": channel_json(self.identity.channel),
            "handle": self.identity.handle,
            "mode": self.mode,
            "refusal": self.refusal or None,
            "window": self.window,
            "conversation": self.conversation_id,
            "owner": self.owner,
            "available": self.available,
            "last_used": self.last_used,
        }


def reply_channels(user: User, conversation: Conversation) -> list[ReplyChannel]:
    """The contact's identities on active channels ``user`` may use, the one the customer wrote
    from last first (then the newest), each with the state its channel's rule gives it.

    Three queries whatever the number of identities. The owner of an active conversation the
    user may not read is not named (only that a colleague holds it)."""
    identities = list(
        ContactIdentity.objects.filter(contact_id=conversation.contact_id, channel__is_active=True)
        .select_related("channel", "channel__team")
        .order_by(F("last_inbound_at").desc(nulls_last=True), "-id")
    )
    usable = []
    for identity in identities:
        try:
            access.check_can_use_channel(user, identity.channel)
        except Forbidden:
            continue
        usable.append(identity)
    active = {
        c.identity_id: c
        for c in Conversation.objects.filter(identity__in=usable)
        .exclude(status="resolved")
        .select_related("assignee")
    }
    readable = set(readable_contact_conversation_ids(user, conversation.contact_id))
    result = []
    for index, identity in enumerate(usable):
        window = identity_window(identity)
        if window.open:
            mode, refusal = "free", ""
        elif provider_class(identity.channel.kind).capabilities.has_templates and (
            window.refusal != "not_subscribed"
        ):
            mode, refusal = "template", window.refusal
        else:
            mode, refusal = "closed", window.refusal
        current = active.get(identity.pk)
        owner = current.assignee if current else None
        result.append(
            ReplyChannel(
                identity=identity,
                mode=mode,
                refusal=refusal,
                window=window.as_json(),
                conversation_id=current.pk if current else None,
                owner=user_json(owner)
                if current is not None and current.pk in readable
                else ({"id": None, "name": _("a colleague")} if owner else None),
                available=current is None or current.assignee_id in (None, user.pk),
                last_used=index == 0 and identity.last_inbound_at is not None,
            )
        )
    return result


def identity_for_reply(
    conversation: Conversation, *, channel_id: int | None = None, identity_id: int | None = None
) -> ContactIdentity:
    """The contact's identity a reply goes out on: ``identity_id`` if given, else the contact's
    identity on ``channel_id`` that the customer wrote from last. Raises Invalid
    (``invalid_channel``) when the contact has none there."""
    qs = ContactIdentity.objects.filter(contact_id=conversation.contact_id).select_related(
        "channel"
    )
    found = None
    if identity_id is not None:
        found = qs.filter(pk=identity_id).first() if valid_id(identity_id) else None
    elif channel_id is not None and valid_id(channel_id):
        found = (
            qs.filter(channel_id=channel_id)
            .order_by(F("last_inbound_at").desc(nulls_last=True), "-id")
            .first()
        )
    if found is None or not found.channel.is_active:
        raise Invalid(_("This contact cannot be reached on that channel."), code="invalid_channel")
    return found


def readable_contacts(user: User):  # -> QuerySet[Contact]
    """Contacts with at least one conversation ``user`` may read."""
    q = access.readable_conversations_q(user)
    if not q:  # everything is readable
        return Contact.objects.all()
    return Contact.objects.filter(pk__in=Conversation.objects.filter(q).values("contact_id"))


def access_contact(user: User, contact_id: int) -> Contact:
    """The contact if ``user`` may read one of its conversations; NotFound otherwise."""
    contact = (
        readable_contacts(user).filter(pk=contact_id).first() if valid_id(contact_id) else None
    )
    if contact is None:
        raise NotFound(_("No such contact."))
    return contact


def contact_json(contact: Contact, identities: list[ContactIdentity]) -> dict[str, Any]:
    """Needs the identities with their channel loaded."""
    return {
        "id": contact.pk,
        "name": contact.name,
        "owner": contact.owner_id,
        "identities": [
            {
                "id": identity.pk,
                "channel": channel_json(identity.channel),
                "handle": identity.handle,
                "name": identity.profile_name,
                "last_inbound_at": identity.last_inbound_at.isoformat()
                if identity.last_inbound_at
                else None,
                "subscribed": identity.subscribed,
            }
            for identity in identities
        ],
    }


def contacts_json(contacts: list[Contact]) -> list[dict[str, Any]]:
    """Contacts with their identities (one query for every identity of the page)."""
    by_contact: dict[int, list[ContactIdentity]] = {c.pk: [] for c in contacts}
    for identity in (
        ContactIdentity.objects.filter(contact_id__in=list(by_contact))
        .select_related("channel")
        .order_by("id")
    ):
        by_contact[identity.contact_id].append(identity)
    return [contact_json(c, by_contact[c.pk]) for c in contacts]


def find_contacts(
    user: User, text: str, *, exclude_id: int | None = None, limit: int = 20
) -> list[Contact]:
    """Readable contacts whose name or one of whose handles contains ``text`` (2 characters at
    least), newest first. Never raises on any text."""
    if limit < 1 or limit > 100:
        raise Invalid(_("limit must be between 1 and 100."), code="invalid_limit")
    text = clean_query(text)
    if len(text) < 2:
        return []
    pattern = Value(f"%{escape_like(text)}%")
    by_name = Contact.objects.filter(ContainsText(F("name"), pattern)).values("pk")
    by_handle = ContactIdentity.objects.filter(ContainsText(F("handle"), pattern)).values(
        "contact_id"
    )
    matching = Q(pk__in=by_name) | Q(pk__in=by_handle)
    qs = readable_contacts(user).filter(matching).select_related("owner")
    if exclude_id is not None:
        qs = qs.exclude(pk=exclude_id)
    return list(qs.order_by("-id")[:limit])
