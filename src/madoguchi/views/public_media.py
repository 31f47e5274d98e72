"""The one public (unauthenticated) file view: an outbound message's file, by a signed and
expiring link (``madoguchi.media_links``), for platforms that download media themselves."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.http import require_GET

from madoguchi.media_links import message_for_token


@require_GET
def public_media(request: HttpRequest, token: str, name: str) -> FileResponse:
    """404 for anything but a valid, unexpired token of an outbound message with that file
    (the same answer for every refusal: nothing tells a prober which part was wrong)."""
    message = message_for_token(token, name)
    if message is None:
        raise Http404
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / message.media_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise Http404
    response = FileResponse(
        path.open("rb"), content_type=message.media_mime or "application/octet-stream"
    )
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response
