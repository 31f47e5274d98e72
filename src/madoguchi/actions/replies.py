"""Canned replies (shared by the team; managed by supervisors and admins)."""

from __future__ import annotations

import re

from django.db import transaction
from django.utils.translation import gettext as _

from madoguchi.errors import Forbidden, Invalid, NotFound
from madoguchi.models import CannedReply, User

from . import audit

SHORTCUT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def check_manage(user: User) -> None:
    if not user.is_supervisor_or_admin:
        raise Forbidden(_("Only supervisors and admins manage canned replies."), code="forbidden")


def check_save_canned_reply(user: User, shortcut: str, text: str) -> CannedReply:
    check_manage(user)
    shortcut = shortcut.strip().lstrip("/").lower()
    text = text.replace("\x00", "").strip()
    if not SHORTCUT.match(shortcut):
        raise Invalid(
            _("A shortcut is 1 to 40 lowercase letters, digits, - or _."), code="invalid_shortcut"
        )
    if not text:
        raise Invalid(_("The reply is empty."), code="empty_message")
    with transaction.atomic():
        reply, created = CannedReply.objects.update_or_create(
            shortcut=shortcut, defaults={"text": text, "created_by": user}
        )
        audit.record("canned_reply.saved", actor=user, shortcut=shortcut, created=created)
    return reply


def check_delete_canned_reply(user: User, reply_id: int) -> None:
    check_manage(user)
    with transaction.atomic():
        reply = CannedReply.objects.filter(pk=reply_id).first()
        if reply is None:
            raise NotFound(_("No such canned reply."))
        audit.record("canned_reply.deleted", actor=user, shortcut=reply.shortcut)
        reply.delete()
