"""Signed, expiring public links to the files of outbound messages.

Some platforms take outbound media only as a URL they download themselves (Viber, PROTOCOLS.md
§B5); they cannot log in. Such a platform gets ``MADOGUCHI_PUBLIC_URL`` +
``/public/media/<token>/<file name>``, where the token is the message id signed (HMAC with the
secret key, ``django.core.signing``) with the time it was made. The link:

- is unguessable (the signature) and cannot be bent to another message (the id is signed);
- expires after ``PUBLIC_MEDIA_MAX_AGE`` (long enough for the platform's retries, short enough
  that a leaked link dies);
- serves only the stored file of an **outbound** message (what the business chose to send):
  inbound files and everything else under MEDIA_ROOT stay behind the console's login.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core import signing
from django.urls import reverse

from madoguchi.models import Message

SALT = "madoguchi.public-media"
PUBLIC_MEDIA_MAX_AGE = timedelta(days=3)


def public_media_token(message_id: int) -> str:
    """A signed, timestamped token naming ``message_id`` (URL-safe, no slash)."""
    return signing.TimestampSigner(salt=SALT).sign(str(message_id))


def public_media_url(message: Message) -> str:
    """The absolute public URL of ``message``'s stored file (valid PUBLIC_MEDIA_MAX_AGE)."""
    path = reverse(
        "public_media",
        kwargs={"token": public_media_token(message.pk), "name": Path(message.media_path).name},
    )
    return f"{settings.PUBLIC_URL}{path}"


def message_for_token(token: str, name: str) -> Message | None:
    """The outbound message a valid, unexpired token names, with a stored file called ``name``;
    None for anything else (a bad or expired signature, an inbound message, no file)."""
    try:
        value = signing.TimestampSigner(salt=SALT).unsign(token, max_age=PUBLIC_MEDIA_MAX_AGE)
    except signing.BadSignature:  # SignatureExpired is a BadSignature
        return None
    if not value.isdigit():
        return None
    message = (
        Message.objects.filter(pk=int(value), direction="out")
        .exclude(media_path="")
        .only("media_path", "media_mime")
        .first()
    )
    if message is None or Path(message.media_path).name != name:
        return None
    return message
