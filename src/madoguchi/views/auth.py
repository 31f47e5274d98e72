"""API token authentication."""

from __future__ import annotations

from django.utils import timezone

from madoguchi.actions.users import token_digest
from madoguchi.models import ApiToken, User


def user_for_token(token: str) -> User | None:
    if not token:
        return None
    # The digest is unique: no ORDER BY (``first()`` would add one); this runs on every request.
    rows = list(
        ApiToken.objects.select_related("user").filter(
            digest=token_digest(token), revoked=False, user__is_active=True
        )[:1]
    )
    if not rows:
        return None
    row = rows[0]
    now = timezone.now()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
