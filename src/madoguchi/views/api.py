"""REST API v1 (SPEC §4): thin views that parse, fetch with a permission check, call an action.

Errors are always ``{"error": {"code": ..., "message": ...}}``; bad input never yields a 500.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from ninja import File, Form, NinjaAPI, Schema, Status, UploadedFile
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, django_auth
from pydantic import Field

from madoguchi.actions import contacts as contact_actions
from madoguchi.actions import conversations as conversation_actions
from madoguchi.actions import outbound
from madoguchi.actions.jobs import enqueue
from madoguchi.errors import Invalid, MadoguchiError, NotFound
from madoguchi.models import Channel, ContactIdentity, Conversation, Message, Template, User
from madoguchi.queries import contacts as contact_queries
from madoguchi.queries import conversations as queries
from madoguchi.queries.conversations import access_conversation, history, valid_id
from madoguchi.queries.serialize import conversation_json, message_json, user_json
from madoguchi.rules.access import check_can_use_channel, check_is_admin

from .auth import user_for_token


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        user = user_for_token(token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="Madoguchi API",
    version="1",
    urls_namespace="api-v1",
    auth=[TokenAuth(), django_auth],
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def error_response(request: HttpRequest, status: int, code: str, message: str, **extra: Any):
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return api.create_response(request, {"error": body}, status=status)


@api.exception_handler(MadoguchiError)
def on_madoguchi_error(request: HttpRequest, exc: MadoguchiError) -> HttpResponse:
    return error_response(request, exc.status, exc.code, exc.message, **exc.details)


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = [
        {"field": ".".join(str(p) for p in e.get("loc", [])[1:]), "message": e.get("msg", "")}
        for e in exc.errors
    ]
    return error_response(
        request, 422, "invalid_request", "The request is not valid.", problems=problems
    )


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(request, 401, "unauthorized", "Authentication required.")


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    code = "malformed_json" if "parse request body" in str(exc) else "bad_request"
    return error_response(request, exc.status_code, code, str(exc))


def current_user(request: HttpRequest) -> User:
    return request.auth if isinstance(request.auth, User) else request.user  # type: ignore[return-value]


# -- schemas ---------------------------------------------------------------------------------


class TemplateRequest(Schema):
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=1, max_length=16)
    parameters: list[Any] | dict[str, Any] = Field(default_factory=list)
    header: dict[str, Any] | None = None
    buttons: list[dict[str, Any]] | None = None


class SendRequest(Schema):
    text: str | None = Field(default=None, max_length=65536)
    reply_to: int | None = None
    template: TemplateRequest | None = None
    channel: int | None = Field(
        default=None,
        description="Reply on another of the contact's channels: the contact's handle there "
        "that the customer wrote from last. Default: this conversation's channel.",
    )
    identity: int | None = Field(
        default=None,
        description="Reply on this handle of the contact (an id from GET "
        "/conversations/{id}/channels); takes precedence over channel.",
    )


class MergeRequest(Schema):
    contact: int = Field(description="The contact merged into this one (then deleted).")


class IdentityRequest(Schema):
    channel: int
    handle: str = Field(min_length=1, max_length=254)


class StartRequest(Schema):
    channel: int
    to: str = Field(min_length=3, max_length=64)
    template: TemplateRequest | None = None
    text: str | None = None


class AssignRequest(Schema):
    assignee: int | None
    note: str = Field(default="", max_length=4000)


class StatusRequest(Schema):
    status: Literal["open", "snoozed", "resolved"]
    snoozed_until: datetime | None = None


class NoteRequest(Schema):
    text: str = Field(min_length=1, max_length=65536)


# -- conversations ---------------------------------------------------------------------------


@api.get("/conversations")
def list_conversations(
    request: HttpRequest,
    assignee: str | None = None,
    status: Literal["open", "snoozed", "resolved", "all"] = "open",
    channel: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
):
    page = queries.list_conversations(
        current_user(request),
        assignee=assignee,
        status=status,
        channel_id=channel,
        cursor=cursor,
        limit=limit,
    )
    return {"items": page.items, "next_cursor": page.next_cursor}


@api.post("/conversations", response={202: dict})
def start_conversation(request: HttpRequest, payload: StartRequest):
    user = current_user(request)
    channel = (
        Channel.objects.filter(pk=payload.channel, is_active=True).first()
        if valid_id(payload.channel)
        else None
    )
    if channel is None:
        raise NotFound(_("No such channel."))
    template = payload.template.dict() if payload.template else None
    message = outbound.check_start_conversation(
        user, channel, payload.to, template=template, text=payload.text or ""
    )
    conversation = access_conversation(user, message.conversation_id)
    return Status(
        202, {"conversation": conversation_json(conversation), "message": message_json(message)}
    )


@api.get("/conversations/{conversation_id}")
def get_conversation(request: HttpRequest, conversation_id: int):
    return conversation_json(access_conversation(current_user(request), conversation_id))


@api.get(
    "/conversations/{conversation_id}/messages",
    description="The latest messages, oldest first; `next_before` pages back (keyset on the "
    "message id). `scope=identity` (the default): the conversations with this contact on this "
    "channel. `scope=contact`: the whole history with the contact across every channel, each "
    "message with its `channel`; only conversations the caller may read contribute.",
)
def get_messages(
    request: HttpRequest,
    conversation_id: int,
    before: int | None = None,
    limit: int = 50,
    scope: Literal["identity", "contact"] = "identity",
):
    user = current_user(request)
    if limit < 1 or limit > 200:
        raise Invalid(_("limit must be between 1 and 200."), code="invalid_limit")
    conversation = access_conversation(user, conversation_id)
    if scope == "contact":
        messages = contact_queries.contact_history(
            user, conversation, before_id=before, limit=limit
        )
    else:
        messages = history(user, conversation, before_id=before, limit=limit)
    return {
        "items": [message_json(m) for m in messages],
        "next_before": messages[0].pk if len(messages) == limit else None,
    }


def reply_identity(
    conversation: Conversation, channel_id: int | None, identity_id: int | None
) -> ContactIdentity | None:
    if channel_id is None and identity_id is None:
        return None
    return contact_queries.identity_for_reply(
        conversation, channel_id=channel_id, identity_id=identity_id
    )


@api.post(
    "/conversations/{conversation_id}/messages",
    response={202: dict},
    description="Queue a reply (text or template). With `channel` (or `identity`), it goes out "
    "on another of the contact's channels: in the contact's active conversation there, claimed "
    "if unassigned, or a new one assigned to the caller. Only the assignee of this conversation "
    "may (403 `not_assignee`, also when a colleague holds the conversation on the other "
    "channel); the other channel's own rule applies (422 `window_closed`, `not_subscribed`, "
    "`template_required`, `template_invalid`); 422 `invalid_channel` when the contact has no "
    "handle there.",
)
def send_message(request: HttpRequest, conversation_id: int, payload: SendRequest):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    if payload.template is not None:
        template = payload.template.dict()

        def send(target: Conversation) -> Message:
            return outbound.check_send_template(user, target, template)
    elif payload.text is not None:
        text = payload.text

        def send(target: Conversation) -> Message:
            return outbound.check_send_text(user, target, text, reply_to_id=payload.reply_to)
    else:
        raise Invalid(_("Give either text or a template."), code="invalid_request")
    identity = reply_identity(conversation, payload.channel, payload.identity)
    message = contact_actions.check_send_via(user, conversation, identity, send)
    return Status(202, message_json(message))


@api.get(
    "/conversations/{conversation_id}/channels",
    description="The contact's channels the caller may reply on, the one the customer wrote "
    "from last first, each with its rule state: `mode` free | template | closed, `refusal`, "
    "`window`, the active `conversation` there and its `owner`, `available` (false: a colleague "
    "holds it).",
)
def reply_channels(request: HttpRequest, conversation_id: int):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    return {"items": [c.as_json() for c in contact_queries.reply_channels(user, conversation)]}


@api.post("/conversations/{conversation_id}/attachments", response={202: dict})
def send_attachment(
    request: HttpRequest,
    conversation_id: int,
    file: UploadedFile = File(...),  # noqa: B008 - ninja's declaration style
    caption: str = Form(""),
    reply_to: int | None = Form(None),
    channel: int | None = Form(None),
    identity: int | None = Form(None),
):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    outbound.check_upload_size(conversation, file.size or 0)
    content = file.read()

    def send(target: Conversation) -> Message:
        return outbound.check_send_media(
            user,
            target,
            content=content,
            filename=file.name or "file",
            mime_type=file.content_type or "application/octet-stream",
            caption=caption,
            reply_to_id=reply_to,
        )

    target = reply_identity(conversation, channel, identity)
    return Status(
        202, message_json(contact_actions.check_send_via(user, conversation, target, send))
    )


@api.post("/conversations/{conversation_id}/notes", response={201: dict})
def add_note(request: HttpRequest, conversation_id: int, payload: NoteRequest):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    return Status(201, message_json(outbound.check_add_note(user, conversation, payload.text)))


@api.post("/conversations/{conversation_id}/claim")
def claim(request: HttpRequest, conversation_id: int):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    return conversation_json(conversation_actions.check_claim(user, conversation))


@api.post("/conversations/{conversation_id}/assign")
def assign(request: HttpRequest, conversation_id: int, payload: AssignRequest):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    assignee = None
    if payload.assignee is not None:
        assignee = (
            User.objects.filter(pk=payload.assignee).first() if valid_id(payload.assignee) else None
        )
        if assignee is None:
            raise Invalid(_("No such user."), code="invalid_assignee")
    updated = conversation_actions.check_assign(user, conversation, assignee, note=payload.note)
    return conversation_json(updated)


@api.post("/conversations/{conversation_id}/status")
def set_status(request: HttpRequest, conversation_id: int, payload: StatusRequest):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    updated = conversation_actions.check_set_status(
        user, conversation, payload.status, snoozed_until=payload.snoozed_until
    )
    return conversation_json(updated)


@api.post("/conversations/{conversation_id}/seen")
def mark_seen(request: HttpRequest, conversation_id: int):
    user = current_user(request)
    conversation = access_conversation(user, conversation_id)
    return conversation_json(conversation_actions.do_mark_seen(user, conversation))


# -- contacts --------------------------------------------------------------------------------


@api.get(
    "/contacts",
    description="Contacts whose name or a handle contains `q` (2+ characters), "
    "among those with a conversation the caller may read; each with its handles on every channel.",
)
def list_contacts(request: HttpRequest, q: str = "", limit: int = 20, exclude: int | None = None):
    user = current_user(request)
    found = contact_queries.find_contacts(user, q, exclude_id=exclude, limit=limit)
    return {"items": contact_queries.contacts_json(found)}


@api.get("/contacts/{contact_id}")
def get_contact(request: HttpRequest, contact_id: int):
    contact = contact_queries.access_contact(current_user(request), contact_id)
    return contact_queries.contacts_json([contact])[0]


@api.post(
    "/contacts/{contact_id}/merge",
    description="Merge the contact `contact` into this one: every handle, conversation and "
    "message moves here, the other contact is deleted. Supervisors and admins only (403 "
    "`forbidden`); 422 `same_contact`.",
)
def merge_contacts(request: HttpRequest, contact_id: int, payload: MergeRequest):
    user = current_user(request)
    contact_actions.check_can_merge(user)
    keep = contact_queries.access_contact(user, contact_id)
    merge = contact_queries.access_contact(user, payload.contact)
    keep = contact_actions.do_merge_contacts(user, keep, merge)
    return contact_queries.contacts_json([keep])[0]


@api.post(
    "/contacts/{contact_id}/identities",
    response={201: dict},
    description="Add a handle on a channel to the contact (e.g. an e-mail address for a "
    "WhatsApp customer). 409 `identity_taken` when it belongs to another contact (merge them).",
)
def add_identity(request: HttpRequest, contact_id: int, payload: IdentityRequest):
    user = current_user(request)
    contact = contact_queries.access_contact(user, contact_id)
    channel = (
        Channel.objects.filter(pk=payload.channel).first() if valid_id(payload.channel) else None
    )
    if channel is None:
        raise NotFound(_("No such channel."))
    contact_actions.check_add_identity(user, contact, channel, payload.handle)
    return Status(201, contact_queries.contacts_json([contact])[0])


# -- templates, channels, users -------------------------------------------------------------


@api.get("/templates")
def list_templates(request: HttpRequest, channel: int):
    found = Channel.objects.filter(pk=channel).first() if valid_id(channel) else None
    if found is None:
        raise NotFound(_("No such channel."))
    check_can_use_channel(current_user(request), found)
    items = Template.objects.filter(channel_id=channel).order_by("name", "language")
    return {
        "items": [
            {
                "id": t.pk,
                "name": t.name,
                "language": t.language,
                "status": t.status,
                "category": t.category,
                "parameter_format": t.parameter_format,
                "components": t.components,
                "sendable": t.is_sendable,
            }
            for t in items
        ]
    }


@api.post("/channels/{channel_id}/templates/sync", response={202: dict})
def sync_templates(request: HttpRequest, channel_id: int):
    user = current_user(request)
    if not user.is_supervisor_or_admin:
        check_is_admin(user)
    channel = Channel.objects.filter(pk=channel_id).first() if valid_id(channel_id) else None
    if channel is None:
        raise NotFound(_("No such channel."))
    enqueue("sync_templates", {"channel_id": channel.pk}, key=f"sync:{channel.pk}")
    return Status(202, {"queued": True})


@api.get("/channels")
def list_channels(request: HttpRequest):
    return {
        "items": [
            {
                "id": c.pk,
                "kind": c.kind,
                "name": c.name,
                "visibility": c.visibility,
                "webhook_path": c.webhook_path,
            }
            for c in Channel.objects.filter(is_active=True).order_by("id")
        ]
    }


@api.get("/users")
def list_users(request: HttpRequest):
    return {
        "items": [user_json(u) for u in User.objects.filter(is_active=True).order_by("username")]
    }


@api.get("/me")
def me(request: HttpRequest):
    return user_json(current_user(request))


class ApiErrorShape:
    """Middleware: answers under /api/ that did not come from the API (an unknown path, a wrong
    method) still use the API's error shape."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path.startswith("/api/") or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(response.status_code, "error")
        body = {"error": {"code": code, "message": code.replace("_", " ").capitalize() + "."}}
        shaped = JsonResponse(body, status=response.status_code)
        if response.has_header("Allow"):
            shaped["Allow"] = response["Allow"]
        return shaped
