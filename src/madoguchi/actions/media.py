"""Recording the outcome of an inbound media download."""

from __future__ import annotations

from django.db import transaction

from madoguchi.providers.base import StoredMedia

from . import audit
from .outbound import load_for_update, publish_message


def do_record_media(message_id: int, *, state: str, stored: StoredMedia | None = None) -> None:
    with transaction.atomic():
        message = load_for_update(message_id)
        message.media_state = state
        fields = ["media_state"]
        if stored is not None:
            message.media_path = stored.path
            message.media_mime = stored.mime_type
            message.media_size = stored.size
            fields += ["media_path", "media_mime", "media_size"]
        message.save(update_fields=fields)
        audit.record(f"media.{state}", conversation=message.conversation, message=message)
        publish_message(message, message.conversation, op="update")
