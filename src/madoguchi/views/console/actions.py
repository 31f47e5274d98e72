"""The console's form posts. Each parses, fetches with a permission check and calls an action.

Without JavaScript a form posts here and the browser is redirected back (refusals shown as a
message). The page's script posts the same forms with ``Accept: application/json`` and gets
JSON: the same endpoints, the same rules, either way.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from madoguchi.actions import conversations as conversation_actions
from madoguchi.actions import outbound
from madoguchi.actions.contacts import check_can_merge, check_send_via, do_merge_contacts
from madoguchi.actions.replies import check_delete_canned_reply, check_save_canned_reply
from madoguchi.actions.users import do_update_preferences
from madoguchi.errors import Invalid, MadoguchiError, NotFound
from madoguchi.models import Channel, ContactIdentity, Conversation, Message, User
from madoguchi.queries.contacts import access_contact, identity_for_reply
from madoguchi.queries.conversations import access_conversation
from madoguchi.queries.serialize import conversation_json, message_json


def wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def console_action(view: Callable[..., Any]) -> Callable[..., HttpResponse]:
    """Turn an action's result or refusal into JSON or a redirect with a message."""

    @wraps(view)
    @login_required
    @require_POST
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        back = request.POST.get("next") or request.headers.get("Referer") or reverse("inbox")
        if not back.startswith("/") or back.startswith("//"):
            back = reverse("inbox")
        try:
            result = view(request, *args, **kwargs)
        except MadoguchiError as exc:
            text = exc.message
            if wants_json(request):
                body = {"code": exc.code, "message": text, **exc.details}
                return JsonResponse({"error": body}, status=exc.status)
            flash.error(request, text)
            return redirect(back)
        if isinstance(result, HttpResponse):
            return result
        if wants_json(request):
            return JsonResponse(result or {"ok": True}, status=200)
        return redirect(back)

    return wrapper


def conversation_of(request: HttpRequest, conversation_id: int) -> Conversation:
    return access_conversation(request.user, conversation_id)


def optional_int(value: str | None, field: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise Invalid(
            _("%(field)s must be a number.") % {"field": field}, code="invalid_request"
        ) from None


def reply_via(request: HttpRequest, conversation: Conversation) -> ContactIdentity | None:
    """The contact's identity the composer chose (``via``), or None for this conversation's."""
    identity_id = optional_int(request.POST.get("via"), "via")
    if identity_id is None or identity_id == conversation.identity_id:
        return None
    return identity_for_reply(conversation, identity_id=identity_id)


@console_action
def send_text(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    text = request.POST.get("text", "")
    reply_to = optional_int(request.POST.get("reply_to"), "reply_to")

    def send(target: Conversation) -> Message:
        return outbound.check_send_text(request.user, target, text, reply_to_id=reply_to)

    via = reply_via(request, conversation)
    message = check_send_via(request.user, conversation, via, send)
    return {"message": message_json(message)}


def template_request_from(request: HttpRequest) -> dict[str, Any]:
    """A template send from the picker's plain form fields: ``param_<key>`` for body values
    (numbers: positional, names: named), ``header`` (text) or ``header_link`` + ``header_kind``
    (media), ``button_<index>`` + ``button_type_<index>``."""
    post = request.POST
    keys = [k[6:] for k in post if k.startswith("param_")]
    if keys and all(k.isdigit() for k in keys):
        body: list[str] | dict[str, str] = [post[f"param_{k}"] for k in sorted(keys, key=int)]
    else:
        body = {k: post[f"param_{k}"] for k in keys}
    header: Any = post.get("header") or None
    if post.get("header_link"):
        header = {"type": post.get("header_kind", "image"), "link": post["header_link"]}
    buttons = [
        {
            "index": int(k[7:]),
            "sub_type": post.get(f"button_type_{k[7:]}", "url"),
            "value": post[k],
        }
        for k in post
        if k.startswith("button_") and k[7:].isdigit()
    ]
    return {
        "name": post.get("name", ""),
        "language": post.get("language", ""),
        "parameters": body,
        "header": header,
        "buttons": buttons or None,
    }


@console_action
def send_template(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    template = template_request_from(request)

    def send(target: Conversation) -> Message:
        return outbound.check_send_template(request.user, target, template)

    via = reply_via(request, conversation)
    message = check_send_via(request.user, conversation, via, send)
    return {"message": message_json(message)}


@console_action
def send_attachment(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    upload = request.FILES.get("file")
    if upload is None:
        raise Invalid(_("Choose a file to send."), code="empty_file")
    outbound.check_upload_size(conversation, upload.size or 0)
    content = upload.read()

    def send(target: Conversation) -> Message:
        return outbound.check_send_media(
            request.user,
            target,
            content=content,
            filename=upload.name or "file",
            mime_type=upload.content_type or "application/octet-stream",
            caption=request.POST.get("caption", ""),
        )

    via = reply_via(request, conversation)
    message = check_send_via(request.user, conversation, via, send)
    return {"message": message_json(message)}


@console_action
def add_note(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    note = outbound.check_add_note(request.user, conversation, request.POST.get("text", ""))
    return {"message": message_json(note)}


@console_action
def merge_contacts(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    """Merge another contact into this conversation's contact (supervisors and admins)."""
    check_can_merge(request.user)
    conversation = conversation_of(request, conversation_id)
    other_id = optional_int(request.POST.get("contact"), "contact")
    if other_id is None:
        raise Invalid(_("Choose the contact to merge."), code="invalid_request")
    other = access_contact(request.user, other_id)
    do_merge_contacts(request.user, conversation.contact, other)
    flash.success(request, _("The contacts were merged."))
    return {"conversation": conversation_json(conversation_of(request, conversation_id))}


@console_action
def claim(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_actions.check_claim(
        request.user, conversation_of(request, conversation_id)
    )
    return {"conversation": conversation_json(conversation)}


@console_action
def assign(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    assignee_id = optional_int(request.POST.get("assignee"), "assignee")
    assignee = None
    if assignee_id is not None:
        assignee = User.objects.filter(pk=assignee_id).first()
        if assignee is None:
            raise Invalid(_("No such user."), code="invalid_assignee")
    updated = conversation_actions.check_assign(
        request.user, conversation, assignee, note=request.POST.get("note", "").strip()
    )
    return {"conversation": conversation_json(updated)}


def parse_snooze(value: str, user: User) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(_("The snooze time is not valid."), code="invalid_snooze") from None
    if timezone.is_naive(moment):
        zone = (
            zoneinfo.ZoneInfo(user.time_zone) if user.time_zone else timezone.get_current_timezone()
        )
        moment = moment.replace(tzinfo=zone)
    return moment


@console_action
def set_status(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_of(request, conversation_id)
    updated = conversation_actions.check_set_status(
        request.user,
        conversation,
        request.POST.get("status", ""),
        snoozed_until=parse_snooze(request.POST.get("snoozed_until", ""), request.user),
    )
    return {"conversation": conversation_json(updated)}


@console_action
def mark_seen(request: HttpRequest, conversation_id: int) -> dict[str, Any]:
    conversation = conversation_actions.do_mark_seen(
        request.user, conversation_of(request, conversation_id)
    )
    return {"conversation": conversation_json(conversation)}


@console_action
def start_conversation(request: HttpRequest) -> dict[str, Any] | HttpResponse:
    channel_id = optional_int(request.POST.get("channel"), "channel")
    channel = Channel.objects.filter(pk=channel_id, is_active=True).first()
    if channel is None:
        raise NotFound(_("Choose a channel."))
    message = outbound.check_start_conversation(
        request.user, channel, request.POST.get("to", ""), template=template_request_from(request)
    )
    target = reverse("conversation", args=[message.conversation_id])
    if wants_json(request):
        return {"message": message_json(message), "url": target}
    return redirect(target)


@console_action
def save_preferences(request: HttpRequest) -> dict[str, Any]:
    do_update_preferences(
        request.user,
        language=request.POST.get("language", ""),
        time_zone=request.POST.get("time_zone", ""),
        notify_sound=request.POST.get("notify_sound") == "on",
        notify_desktop=request.POST.get("notify_desktop") == "on",
    )
    flash.success(request, _("Your settings were saved."))
    return {"ok": True}


@console_action
def save_canned_reply(request: HttpRequest) -> dict[str, Any]:
    reply = check_save_canned_reply(
        request.user, request.POST.get("shortcut", ""), request.POST.get("text", "")
    )
    return {"shortcut": reply.shortcut}


@console_action
def delete_canned_reply(request: HttpRequest, reply_id: int) -> dict[str, Any]:
    check_delete_canned_reply(request.user, reply_id)
    return {"ok": True}
