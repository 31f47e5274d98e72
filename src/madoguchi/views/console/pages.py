"""The console's pages (minimal for now: sign-in, the inbox list, one conversation)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from madoguchi.errors import NotFound
from madoguchi.models import Message
from madoguchi.queries.conversations import access_conversation, history, list_conversations
from madoguchi.queries.serialize import conversation_json, message_json


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    view = request.GET.get("view", "mine")
    assignee = {"mine": "me", "unassigned": "none"}.get(view)
    page = list_conversations(request.user, assignee=assignee, status="open")
    return render(
        request,
        "madoguchi/inbox.html",
        {"view": view, "conversations": [conversation_json(c) for c in page.items]},
    )


@login_required
@require_GET
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        item = access_conversation(request.user, conversation_id)
    except NotFound:
        raise Http404 from None
    return render(
        request,
        "madoguchi/conversation.html",
        {
            "conversation": conversation_json(item),
            "messages": [message_json(m) for m in history(request.user, item)],
        },
    )


@login_required
@require_GET
def media(request: HttpRequest, message_id: int) -> FileResponse:
    message = Message.objects.filter(pk=message_id).only("conversation_id", "media_path").first()
    if message is None or not message.media_path:
        raise Http404
    try:
        access_conversation(request.user, message.conversation_id)
    except NotFound:
        raise Http404 from None
    path = (Path(settings.MEDIA_ROOT) / message.media_path).resolve()
    if not path.is_relative_to(Path(settings.MEDIA_ROOT).resolve()) or not path.exists():
        raise Http404
    response = FileResponse(
        path.open("rb"), content_type=message.media_mime or "application/octet-stream"
    )
    # Customer files are never rendered as our own pages (no stored-XSS through an SVG/HTML).
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    return response
