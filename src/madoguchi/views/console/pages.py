"""The console's pages: the inbox with its conversation list and thread, search, a new
conversation, settings. Views only parse, fetch with a permission check and render."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from madoguchi.errors import NotFound
from madoguchi.models import CannedReply, Channel, Conversation, Message, Team, Template, User
from madoguchi.providers.registry import provider_class
from madoguchi.queries import contacts as contact_queries
from madoguchi.queries import conversations as queries
from madoguchi.queries.contacts import ReplyChannel
from madoguchi.queries.search import search as search_inbox
from madoguchi.queries.serialize import conversation_json, message_json, user_json
from madoguchi.rules.window import identity_window

VIEWS = {"mine": "me", "unassigned": "none", "all": None}


def is_id(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) < 19


def list_context(request: HttpRequest) -> dict[str, Any]:
    """The conversation list of the current view (Mine, Unassigned, All; channel; team)."""
    user: User = request.user  # type: ignore[assignment]
    view = request.GET.get("view", "mine")
    if view not in VIEWS:
        view = "mine"
    status = request.GET.get("status", "open")
    if status not in ("open", "snoozed", "resolved", "all"):
        status = "open"
    channel_id = request.GET.get("channel", "")
    team_id = request.GET.get("team", "")
    page = queries.list_conversations(
        user,
        assignee=VIEWS[view],
        status=status,
        channel_id=int(channel_id) if is_id(channel_id) else None,
        team_id=int(team_id) if is_id(team_id) else None,
        cursor=request.GET.get("cursor") or None,
        limit=50,
    )
    items = page.items
    counts = queries.inbox_counts(user)
    return {
        "view": view,
        "status": status,
        "channel_filter": channel_id,
        "team_filter": team_id,
        "conversations": items,
        "next_cursor": page.next_cursor,
        "counts": counts,
        "channels": Channel.objects.filter(is_active=True).order_by("name"),
        "teams": Team.objects.order_by("name"),
        "query_string": request.GET.urlencode(),
    }


def composer_state(
    user: User, conversation: Conversation, via: ReplyChannel | None = None
) -> dict[str, Any]:
    """What the composer shows: the rules decide, the page only displays their answer.

    ``via`` is the contact's identity the reply would go out on (None: this conversation's):
    its own channel's rule gives the mode, and a colleague holding the conversation there
    closes it (a supervisor reassigns first)."""
    if user.is_watcher:
        return {"mode": "readonly"}
    if conversation.assignee_id != user.pk:
        return {
            "mode": "not_assignee",
            "owner": user_json(conversation.assignee),
            "can_claim": conversation.assignee_id is None,
        }
    if via is not None:
        state = {
            "via": via.identity.pk,
            "window": via.window,
            "channel": via.identity.channel,
            "other_channel": via.identity.pk != conversation.identity_id,
        }
        if not via.available:
            return state | {"mode": "held", "holder": via.owner}
        return state | {"mode": via.mode, "refusal": via.refusal}
    window = conversation_json(conversation)["window"]
    if window["open"]:
        return {"mode": "free", "window": window}
    if provider_class(conversation.channel.kind).capabilities.has_templates:
        return {"mode": "template", "window": window}
    rule = identity_window(conversation.identity)
    return {"mode": "closed", "window": window, "refusal": rule.refusal}


def templates_for(channel: Channel) -> list[dict[str, Any]]:
    provider = provider_class(channel.kind)
    if not provider.capabilities.has_templates:
        return []
    forms = []
    for template in Template.objects.filter(channel=channel, status="APPROVED").order_by(
        "name", "language"
    ):
        from madoguchi.actions.outbound import template_graph

        try:
            form = provider.template_form(template_graph(template))
        except ValueError:
            continue  # a template the platform described in a way we cannot use
        forms.append(
            {"name": template.name, "language": template.language, "category": template.category}
            | form
        )
    return forms


def parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def thread_context(
    user: User, conversation: Conversation, *, via: str = "", merge_q: str = ""
) -> dict[str, Any]:
    """The thread: the whole history with the contact on every channel the viewer may read,
    and the composer for the reply channel ``via`` (an identity id; default: the one the
    customer wrote from last). ``merge_q``: contacts to merge with (supervisors, admins)."""
    messages = contact_queries.contact_history(user, conversation, limit=100)
    events = contact_queries.contact_assignment_history(user, conversation)
    channels_of = dict(
        Conversation.objects.filter(pk__in={e.conversation_id for e in events}).values_list(
            "pk", "channel__name"
        )
    )
    history = [
        {
            "action": event.action.split(".", 1)[1],
            "actor": event.actor.label if event.actor else "",
            "assignee": event.data.get("assignee"),
            "note": event.data.get("note", ""),
            "created_at": event.created_at,
            "channel": channels_of.get(event.conversation_id, ""),
        }
        for event in events
    ]
    names = dict(
        User.objects.filter(pk__in=[h["assignee"] for h in history if h["assignee"]]).values_list(
            "pk", "display_name"
        )
    )
    for item in history:
        item["assignee_name"] = names.get(item["assignee"], "")
    quoted = {m.pk: m for m in messages}
    missing = [m.reply_to_id for m in messages if m.reply_to_id and m.reply_to_id not in quoted]
    quoted |= {m.pk: m for m in Message.objects.filter(pk__in=missing)}
    rendered = []
    for message in messages:
        item = message_json(message)
        if message.reply_to_id and message.reply_to_id in quoted:
            item["quote"] = quoted[message.reply_to_id].text[:160]
        rendered.append(item)
    timeline = [{"type": "message", **m} for m in rendered] + [
        {"type": "event", **h} for h in history
    ]
    timeline.sort(key=lambda item: str(parse_time(item["created_at"])))
    reply_channels: list[ReplyChannel] = []
    chosen = None
    if not user.is_watcher and conversation.assignee_id == user.pk:
        reply_channels = contact_queries.reply_channels(user, conversation)
        by_id = {str(c.identity.pk): c for c in reply_channels}
        # Default: where the customer wrote last, unless a colleague holds that one.
        available = [c for c in reply_channels if c.available]
        chosen = by_id.get(via) or next(iter(available or reply_channels), None)
    can_merge = user.is_supervisor_or_admin
    merge_candidates = []
    if can_merge and merge_q:
        merge_candidates = contact_queries.contacts_json(
            contact_queries.find_contacts(user, merge_q, exclude_id=conversation.contact_id)
        )
    conversation_ids = sorted(
        {m.conversation_id for m in messages}
        | set(contact_queries.readable_contact_conversation_ids(user, conversation.contact_id))
    )
    return {
        "conversation": conversation_json(conversation),
        "contact_conversations": ",".join(str(i) for i in conversation_ids),
        "timeline": timeline,
        "composer": composer_state(user, conversation, chosen),
        "reply_channels": [c.as_json() for c in reply_channels],
        "templates": templates_for(chosen.identity.channel if chosen else conversation.channel),
        "colleagues": [
            user_json(u)
            for u in User.objects.filter(is_active=True)
            .exclude(role="watcher")
            .exclude(pk=user.pk)
            .order_by("display_name", "username")
        ],
        "canned": list(CannedReply.objects.order_by("shortcut").values("shortcut", "text")),
        "can_reassign": user.is_supervisor_or_admin,
        "can_merge": can_merge,
        "merge_q": merge_q,
        "merge_candidates": merge_candidates,
    }


@login_required
@require_GET
@never_cache
def inbox(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    context = list_context(request)
    if conversation_id is not None:
        try:
            conversation = queries.access_conversation(request.user, conversation_id)
        except NotFound:
            raise Http404 from None
        context |= thread_context(
            request.user,
            conversation,
            via=request.GET.get("via", ""),
            merge_q=request.GET.get("merge_q", ""),
        )
    return render(request, "madoguchi/inbox.html", context)


@login_required
@require_GET
@never_cache
def conversation_list_fragment(request: HttpRequest) -> HttpResponse:
    """The list alone, for the browser to re-fetch after a gap in the live connection."""
    return render(request, "madoguchi/_conversation_list.html", list_context(request))


@login_required
@require_GET
@never_cache
def counts(request: HttpRequest) -> JsonResponse:
    """The tab counters, for the browser to refresh after live changes (at most every few s)."""
    return JsonResponse(queries.inbox_counts(request.user))


@login_required
@require_GET
@never_cache
def thread_fragment(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The thread alone (timeline + composer), re-fetched after a gap or a change of owner."""
    try:
        conversation = queries.access_conversation(request.user, conversation_id)
    except NotFound:
        raise Http404 from None
    context = thread_context(
        request.user,
        conversation,
        via=request.GET.get("via", ""),
        merge_q=request.GET.get("merge_q", ""),
    )
    return render(request, "madoguchi/_thread.html", context)


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    text = request.GET.get("q", "")
    conversations, messages = search_inbox(request.user, text)
    return render(
        request,
        "madoguchi/search.html",
        {
            "q": text,
            "conversations": [conversation_json(c) for c in conversations],
            "messages": messages,
        },
    )


@login_required
def new_conversation(request: HttpRequest) -> HttpResponse:
    channels = [
        {"channel": c, "templates": templates_for(c)}
        for c in Channel.objects.filter(is_active=True).order_by("name")
        if provider_class(c.kind).capabilities.has_templates
    ]
    return render(
        request,
        "madoguchi/new.html",
        {
            "channels": channels,
            "templates_by_channel": {c["channel"].pk: c["templates"] for c in channels},
        },
    )


@login_required
def preferences(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "madoguchi/settings.html",
        {
            "time_zones": sorted(zoneinfo.available_timezones() - {"localtime", "Factory"}),
            "languages": settings.LANGUAGES,
            "canned": CannedReply.objects.order_by("shortcut"),
        },
    )


@login_required
@require_GET
def media(request: HttpRequest, message_id: int) -> FileResponse:
    message = Message.objects.filter(pk=message_id).only("conversation_id", "media_path").first()
    if message is None or not message.media_path:
        raise Http404
    try:
        queries.access_conversation(request.user, message.conversation_id)
    except NotFound:
        raise Http404 from None
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / message.media_path).resolve()
    if not path.is_relative_to(root) or not path.exists():
        raise Http404
    response = FileResponse(
        path.open("rb"), content_type=message.media_mime or "application/octet-stream"
    )
    # Customer files are never rendered as our own pages (no stored XSS through SVG or HTML).
    response["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response["X-Content-Type-Options"] = "nosniff"
    if request.GET.get("download"):
        response["Content-Disposition"] = "attachment"
    return response
