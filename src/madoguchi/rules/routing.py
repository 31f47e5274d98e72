"""Who a new conversation goes to (SPEC §2.3): the contact's owner, while they can reply."""

from __future__ import annotations

from madoguchi.models import Contact, User


def sticky_assignee(contact: Contact) -> User | None:
    """The contact's owner if still active and able to reply; otherwise nobody (unassigned)."""
    owner = contact.owner
    if owner is not None and owner.is_active and not owner.is_watcher:
        return owner
    return None
