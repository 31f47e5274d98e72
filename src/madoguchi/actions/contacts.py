"""One contact, several channels: merging two contacts, adding a handle by hand, and replying
to a contact on another of its channels.

Merging moves every identity and conversation (and so every message, note and audit row) of
one contact into another: nothing is copied or deleted but the emptied contact. Two handles on
one channel may now belong to one contact (a person with two e-mail addresses, an old and a new
phone number), so a merge never has to refuse (migration 0007).

Replying on another channel (SPEC §2.1 still holds: only the assignee sends): the assignee of
the conversation being replied from may send on another identity of the same contact.

- the identity's active conversation is theirs: the message goes there;
- it is unassigned and they may read it: they claim it (audited as a claim), then send;
- a colleague holds it (or they may not read it): 403 ``not_assignee``; a supervisor reassigns
  first, as for any conversation;
- there is none: a new conversation is opened on that identity, assigned to them (audited as
  ``conversation.started`` with the conversation replied from), and the contact's sticky owner
  follows them, as after any assignment.

The send itself goes through actions.outbound (one write path), so the target channel's own
rule (window, subscription, template) decides, and a refusal undoes the opened conversation.

Names from the platform: a channel whose webhooks carry no name (Messenger) looks the person up
once per new handle (tasks.fetch_profile, outside any transaction) and records the answer with
``do_update_profile``, which names the contact only while nobody else did.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from madoguchi.errors import Conflict, Forbidden, Invalid
from madoguchi.models import Channel, Contact, ContactIdentity, Conversation, Message, User
from madoguchi.providers.base import ContactProfile
from madoguchi.providers.registry import provider_class
from madoguchi.realtime.publish import publish_on_commit
from madoguchi.rules import access

from . import audit
from .conversations import do_assign, lock, publish_conversation


def check_can_merge(actor: User) -> None:
    if not actor.is_active or not actor.is_supervisor_or_admin:
        raise Forbidden(_("Only supervisors and administrators can merge contacts."))


def do_merge_contacts(actor: User, keep: Contact, merge: Contact) -> Contact:
    """Move every identity and conversation of ``merge`` into ``keep`` and delete ``merge``.

    Refused with Forbidden (``forbidden``) unless ``actor`` is an active supervisor or admin,
    Invalid (``same_contact``) for one contact twice. The sticky owner is ``keep``'s, else
    ``merge``'s (an active one first); the name is ``keep``'s unless it has none. Conversations
    keep their assignees (nobody's work is taken away silently). One audit row
    (``contact.merged``), then, after commit, each moved conversation's new state to the people
    allowed to read it and a ``contact``/``merged`` event to everyone allowed to read one of the
    merged contact's conversations. Returns ``keep``, updated."""
    check_can_merge(actor)
    if keep.pk == merge.pk:
        raise Invalid(_("A contact cannot be merged into itself."), code="same_contact")
    with transaction.atomic():
        # Both rows locked in id order: two merges of the same pair cannot deadlock.
        locked = {
            c.pk: c
            for c in Contact.objects.select_for_update()
            .filter(pk__in=[keep.pk, merge.pk])
            .order_by("pk")
        }
        if len(locked) != 2:
            raise Invalid(_("That contact no longer exists."), code="invalid_contact")
        keep, merge = locked[keep.pk], locked[merge.pk]
        merged_id = merge.pk
        identities = list(
            ContactIdentity.objects.filter(contact=merge).values_list("pk", "channel_id", "handle")
        )
        moved_ids = list(Conversation.objects.filter(contact=merge).values_list("pk", flat=True))
        ContactIdentity.objects.filter(contact=merge).update(contact=keep)
        Conversation.objects.filter(contact=merge).update(contact=keep)
        owners = [o for o in (keep.owner, merge.owner) if o is not None]
        owner = next((o for o in owners if o.is_active), owners[0] if owners else None)
        fields = []
        if owner != keep.owner:
            keep.owner = owner
            fields.append("owner")
        if not keep.name.strip() and merge.name.strip():
            keep.name = merge.name
            fields.append("name")
        if fields:
            keep.save(update_fields=fields)
        audit.record(
            "contact.merged",
            actor=actor,
            contact=keep.pk,
            merged=merged_id,
            merged_name=merge.name,
            identities=[
                {"id": pk, "channel": channel_id, "handle": handle}
                for pk, channel_id, handle in identities
            ],
            conversations=moved_ids,
            owner=keep.owner_id,
        )
        merge.delete()
        audience: set[int] = set()
        for conversation in Conversation.objects.filter(contact=keep).select_related(
            "channel", "contact", "identity", "assignee"
        ):
            recipients = access.recipients_for(conversation)
            audience.update(recipients)
            if conversation.pk in moved_ids:
                publish_conversation(conversation)
        publish_on_commit(
            {"type": "contact", "op": "merged", "id": keep.pk, "merged": merged_id},
            sorted(audience),
        )
    return keep


def check_add_identity(
    actor: User, contact: Contact, channel: Channel, handle: str
) -> ContactIdentity:
    """Add a handle on ``channel`` to ``contact`` by hand (e.g. the e-mail address of a WhatsApp
    customer), so that the contact can be answered there.

    The caller must have checked that ``actor`` may read the contact. Refused for watchers
    (403 ``read_only``), on a channel the actor may not use (403 ``forbidden``), for a handle the
    platform would not accept (422, the provider's code), and for a handle that already belongs
    to another contact (409 ``identity_taken``: merge the two contacts instead). Adding a handle
    the contact already has changes nothing. Audited as ``contact.identity_added``."""
    if actor.is_watcher:
        raise Forbidden(_("Watchers have read-only access."), code="read_only")
    if not channel.is_active:
        raise Invalid(_("This channel is not active."), code="invalid_channel")
    access.check_can_use_channel(actor, channel)
    handle = provider_class(channel.kind).normalize_handle(handle)
    try:
        with transaction.atomic():
            existing = ContactIdentity.objects.filter(channel=channel, handle=handle).first()
            if existing is not None:
                if existing.contact_id == contact.pk:
                    return existing
                raise Conflict(
                    _("This handle belongs to another contact: merge the two contacts instead."),
                    code="identity_taken",
                    contact=existing.contact_id,
                )
            identity = ContactIdentity.objects.create(
                contact=contact, channel=channel, handle=handle
            )
            audit.record(
                "contact.identity_added",
                actor=actor,
                contact=contact.pk,
                identity=identity.pk,
                channel=channel.pk,
                handle=handle,
            )
            return identity
    except IntegrityError:
        raise Conflict(
            _("This handle was added at the same moment. Please try again."), code="conflict"
        ) from None


def reply_conversation(user: User, source: Conversation, identity: ContactIdentity) -> Conversation:
    """The conversation on ``identity`` that ``user`` (the assignee of ``source``) replies in:
    theirs, claimed, or opened for them (see the module docstring). Must run inside the
    caller's transaction, which the send completes."""
    active = (
        Conversation.objects.filter(identity=identity)
        .exclude(status="resolved")
        .values_list("pk", flat=True)
        .first()
    )
    if active is None:
        conversation = Conversation.objects.create(
            channel=identity.channel,
            contact_id=source.contact_id,
            identity=identity,
            assignee=user,
            team=identity.channel.team,
            last_message_at=timezone.now(),
        )
        audit.record(
            "conversation.started",
            actor=user,
            conversation=conversation,
            to=identity.handle,
            via=source.pk,
        )
        conversation = lock(conversation)
        if conversation.contact.owner_id != user.pk:
            # Sticky ownership follows the person who now handles the customer.
            conversation.contact.owner = user
            conversation.contact.save(update_fields=["owner"])
        publish_conversation(conversation)
        return conversation
    conversation = lock(active)
    if conversation.assignee_id == user.pk:
        return conversation
    readable = (
        Conversation.objects.filter(access.readable_conversations_q(user))
        .filter(pk=conversation.pk)
        .exists()
    )
    if conversation.assignee_id is None and readable:
        access.check_can_claim(user, conversation)
        access.check_assignable(user)
        return do_assign(user, conversation, user, action="conversation.claimed")
    if readable and conversation.assignee is not None:
        message = _(
            "%(name)s owns the conversation on that channel: only they can reply there."
        ) % {"name": conversation.assignee.label}
    else:
        message = _("A colleague handles this contact on that channel: ask a supervisor.")
    raise Forbidden(message, code="not_assignee")


def check_send_via(
    user: User,
    source: Conversation,
    identity: ContactIdentity | None,
    send: Callable[[Conversation], Message],
) -> Message:
    """Send with ``send`` (one of actions.outbound's ``check_send_*``) on another identity of
    the contact of ``source``, or in ``source`` itself when ``identity`` is None or its own.

    Only the assignee of ``source`` may (403 ``not_assignee``); the identity must be the same
    contact's (422 ``invalid_channel``) on a channel the user may use (403 ``forbidden``). The
    target channel's rule is the one enforced (422 ``window_closed``, ``not_subscribed``,
    ``template_required``...), and when ``send`` refuses, nothing is left behind (a
    conversation opened for the send is rolled back). Returns the queued message."""
    access.check_can_send(user, source)
    if identity is None or identity.pk == source.identity_id:
        return send(source)
    if identity.contact_id != source.contact_id or not identity.channel.is_active:
        raise Invalid(_("This contact cannot be reached on that channel."), code="invalid_channel")
    access.check_can_use_channel(user, identity.channel)
    try:
        with transaction.atomic():
            # The source is locked first: a reassignment of it a moment ago wins.
            access.check_can_send(user, lock(source))
            target = reply_conversation(user, source, identity)
            return send(target)
    except IntegrityError:
        # The customer wrote on that channel at this very moment: nothing was saved.
        raise Conflict(
            _("This conversation changed at the same moment. Please try again."),
            code="conflict",
        ) from None


def do_update_profile(identity_id: int, profile: ContactProfile) -> ContactIdentity | None:
    """Record what the platform says the contact behind identity ``identity_id`` is called (a
    profile lookup: tasks.fetch_profile). Trusted: no actor.

    Sets the identity's ``profile_name``, and the contact's name while the contact has none or
    still carries one of its own raw handles (a PSID) as its name: a name somebody gave the
    contact is never overwritten. When anything changed: one audit row
    (``contact.profile_updated``) and, if the contact's name changed, after commit, each of
    its conversations to the people allowed to read it. Returns the identity as updated, or
    None when it no longer exists."""
    name = profile.name.replace("\x00", "").strip()[:200]
    if not name:
        return None
    # The contact row is locked first, as a merge locks it (then moves identities): the other
    # order could deadlock with a merge of this very contact. A merge may move the identity
    # to another contact while we wait; then the new contact is locked instead.
    with transaction.atomic():
        for _attempt in range(3):
            contact_id = (
                ContactIdentity.objects.filter(pk=identity_id)
                .values_list("contact_id", flat=True)
                .first()
            )
            if contact_id is None:
                return None
            contact = Contact.objects.select_for_update().filter(pk=contact_id).first()
            identity = (
                ContactIdentity.objects.filter(pk=identity_id, contact_id=contact_id)
                .select_related("channel")
                .first()
            )
            if contact is not None and identity is not None:
                break
        else:
            return None
        handles = set(
            ContactIdentity.objects.filter(contact=contact).values_list("handle", flat=True)
        )
        unnamed = not contact.name.strip() or contact.name in handles
        renamed = unnamed and contact.name != name
        if identity.profile_name == name and not renamed:
            return identity
        previous_name = contact.name
        if identity.profile_name != name:
            identity.profile_name = name
            ContactIdentity.objects.filter(pk=identity.pk).update(profile_name=name)
        if renamed:
            contact.name = name
            contact.save(update_fields=["name"])
        audit.record(
            "contact.profile_updated",
            contact=contact.pk,
            identity=identity.pk,
            channel=identity.channel_id,
            name=name,
            renamed=renamed,
            previous_name=previous_name if renamed else "",
        )
        if renamed:
            for conversation in Conversation.objects.filter(contact=contact).select_related(
                "channel", "contact", "identity", "assignee"
            ):
                publish_conversation(conversation)
    return identity
