"""A faithful fake of the WhatsApp Cloud API (Graph API) for the demo, the tests and benchmarks.

What it implements, following ``PROTOCOLS.md`` section A (the WhatsApp Cloud API contract) and
Meta's OpenAPI specification ``business-messaging-api_v23.0.yaml``:

- ``POST /v{N}.0/{phone_number_id}/messages``: Bearer auth (190), request bodies validated against
  the specification's ``Message`` schema (100), mark-as-read, the 24-hour customer service window
  (131047, asynchronous by default, synchronous on request), the template registry checks
  (132000, 132001, 132012, 132015, 132016), media references (131053), throughput (130429) and the
  pair rate limit (131056); accepted sends answer as in A7 and are followed by signed ``sent`` /
  ``delivered`` / ``read`` status webhooks shaped as in A4/A5.
- ``GET|POST|DELETE /v{N}.0/{waba_id}/message_templates`` (A10) with cursor paging, and the
  ``message_template_status_update`` webhook (A6) when a template changes status.
- Media (A11): multipart upload with the per-family size limits, ``GET /{media_id}`` returning a
  short-lived download URL that needs the Bearer token, ``DELETE /{media_id}``.
- Webhook delivery (A3): compact ASCII-escaped JSON, ``X-Hub-Signature-256`` over the exact bytes,
  redelivery with bounded backoff on anything but HTTP 200, optional batching of several updates
  in one POST.
- Simulated customers (:class:`CustomerChatter`) writing in several languages.
- Fault injection and a small HTTP control API under ``/_sim/`` for other processes.

Where the specification contradicts Meta's own examples (e.g. ``additionalProperties: false``
inside ``allOf``, an ``index`` pattern that rejects ``"0"``, ``language.policy`` marked
required), a short list of documented errata is applied to a copy of the schema before it is
compiled; see :func:`_apply_errata`. Every example in ``send_examples.json`` passes the patched
schema, and malformed bodies still fail.

The control API (``/_sim/...``) is unauthenticated: the simulator is meant to listen on the
loopback interface only. Never expose it on a shared network. Endpoints (JSON in and out):

- ``POST /_sim/customer_message`` ``{phone_number_id, wa_id, name, message[, timestamp]}`` →
  ``{"id": wamid}`` (``message`` is a string or an A4 message object, see ``customer_sends``)
- ``POST /_sim/customer_upload`` ``{phone_number_id, data_base64, mime_type[, filename]}`` →
  ``{"id": media_id}``
- ``GET /_sim/sent?phone_number_id=...&since=N`` → ``{"data": [...], "next": N}``
- ``POST /_sim/faults`` ``{phone_number_id, faults: [["http", 500], ["graph", 130429], ...]}``
- ``POST /_sim/templates/status`` ``{waba_id, name, language, status[, reason]}``
- ``GET /_sim/stats`` → counters

This module must not import Django: it runs in benchmark and test processes of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .common import (
    Chatter,
    HubSignedWebhooks,
    Persona,
    Poster,
    RequestRecord,
    RequestRecorder,
    RunningServer,
    Scheduler,
    TokenBucket,
    WebhookAttempt,
    bind_socket,
    encode_payload,
    fbtrace_id,
    graph_response,
    hub_handshake,
    personas_speaking,
    serve_asgi_in_thread,
    sign_payload,
    tiny_pdf,
    tiny_png,
)

# bench/b5_outbound.py knows bind_socket by its name from before it moved to ``common``.
_bind = bind_socket

__all__ = [
    "CustomerChatter",
    "GraphError",
    "RequestRecord",
    "RunningServer",
    "SentMessage",
    "WebhookAttempt",
    "WhatsAppSimulator",
    "encode_payload",
    "openapi_path",
    "serve_asgi_in_thread",
    "sign_payload",
    "tiny_png",
    "validate_send_body",
]

log = logging.getLogger(__name__)

OPENAPI_FILENAME = "business-messaging-api_v23.0.yaml"
OPENAPI_ENV = "MADOGUCHI_WHATSAPP_OPENAPI"
WINDOW_SECONDS = 24 * 60 * 60
MEDIA_URL_TTL_SECONDS = 5 * 60

# (title, details, HTTP status). Titles and details follow Meta's "Error codes" page (A8); the
# details of 131047 are the *wire* text seen in real webhooks (A9), not the documentation's.
ERRORS: dict[int, tuple[str, str, int]] = {
    0: ("AuthException", "We were unable to authenticate the app user.", 401),
    1: ("API Unknown", "Invalid request or possible server error.", 500),
    2: ("API Service", "Temporary due to downtime or due to being overloaded.", 503),
    3: ("API Method", "Capability or permissions issue.", 403),
    4: ("API Too Many Calls", "The app has reached its API call rate limit.", 400),
    10: ("Permission Denied", "Permission is either not granted or has been removed.", 403),
    100: (
        "Invalid parameter",
        "The request included one or more unsupported or misspelled parameters.",
        400,
    ),
    190: ("Access token has expired", "Your access token has expired.", 401),
    200: ("API Permission", "Permission is either not granted or has been removed.", 403),
    368: (
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account associated with the app has been restricted or disabled "
        "for violating a platform policy.",
        400,
    ),
    80007: ("Rate limit issues", "The WhatsApp Business Account has reached its rate limit.", 400),
    130403: (
        "Business blocked the user",
        "Unable to deliver the message. This business has blocked the end user on WhatsApp",
        400,
    ),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached.", 400),
    130472: (
        "User's number is part of an experiment",
        "Message was not sent as part of an experiment.",
        400,
    ),
    131000: ("Something went wrong", "Message failed to send due to an unknown error.", 500),
    131005: ("Access denied", "Permission is either not granted or has been removed.", 403),
    131008: ("Required parameter is missing", "The request is missing a required parameter.", 400),
    131009: ("Parameter value is not valid", "One or more parameter values are invalid.", 400),
    131016: ("Service unavailable", "A service is temporarily unavailable.", 503),
    131021: ("Recipient cannot be sender", "Sender and recipient phone number is the same.", 400),
    131026: ("Message undeliverable", "Unable to deliver message.", 400),
    131031: (
        "Account has been locked",
        "The WhatsApp Business Account associated with the app has been restricted or "
        "disabled for violating a platform policy, or we were unable to verify data included "
        "in the request against data set on the WhatsApp Business Account.",
        400,
    ),
    131042: (
        "Business eligibility payment issue",
        "There was an error related to your payment method.",
        400,
    ),
    131045: (
        "Incorrect certificate",
        "Message failed to send due to a phone number registration error.",
        400,
    ),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
        400,
    ),
    131048: (
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be "
        "sent from this phone number. This may be because too many previous messages were "
        "blocked or flagged as spam.",
        400,
    ),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
        400,
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
        400,
    ),
    131051: ("Unsupported message type", "Unsupported message type.", 400),
    131052: ("Media download error", "Unable to download the media sent by the user.", 400),
    131053: ("Media upload error", "Unable to upload the media used in the message.", 400),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
        400,
    ),
    131057: ("Account in maintenance mode", "Business Account is in maintenance mode", 400),
    132000: (
        "Number of parameters does not match the expected number of params",
        "The number of variable parameter values included in the request did not match the "
        "number of variable parameters defined in the template.",
        400,
    ),
    132001: (
        "Template name does not exist in the translation",
        "The template does not exist in the specified language or the template has not been "
        "approved.",
        400,
    ),
    132005: ("Template Hydrated Text Too Long", "Translated text is too long.", 400),
    132007: (
        "Template Format Character Policy Violated",
        "Template content violates a WhatsApp policy.",
        400,
    ),
    132012: (
        "Parameter format does not match format in the created template",
        "Variable parameter values formatted incorrectly.",
        400,
    ),
    132015: (
        "Template is Paused",
        "Template is paused due to low quality so it cannot be sent in a template message.",
        400,
    ),
    132016: (
        "Template is Disabled",
        "Template has been paused too many times due to low quality and is now permanently "
        "disabled.",
        400,
    ),
}

# Upload limits per MIME type (A11). Stickers may be animated (500 KB) and the simulator cannot
# tell, so it allows the larger limit.
_MB = 1024 * 1024
MEDIA_LIMITS: dict[str, int] = {
    "audio/aac": 16 * _MB,
    "audio/amr": 16 * _MB,
    "audio/mpeg": 16 * _MB,
    "audio/mp4": 16 * _MB,
    "audio/ogg": 16 * _MB,
    "image/jpeg": 5 * _MB,
    "image/png": 5 * _MB,
    "image/webp": 500 * 1024,
    "video/mp4": 16 * _MB,
    "video/3gpp": 16 * _MB,
    "text/plain": 100 * _MB,
    "application/pdf": 100 * _MB,
    "application/vnd.ms-powerpoint": 100 * _MB,
    "application/msword": 100 * _MB,
    "application/vnd.ms-excel": 100 * _MB,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": 100 * _MB,
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": 100 * _MB,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": 100 * _MB,
}

# Which uploaded MIME types a message of each media type may reference.
_MEDIA_TYPE_ACCEPTS: dict[str, Callable[[str], bool]] = {
    "image": lambda m: m in ("image/jpeg", "image/png"),
    "sticker": lambda m: m == "image/webp",
    "audio": lambda m: m.startswith("audio/"),
    "video": lambda m: m.startswith("video/"),
    "document": lambda m: True,
}
_MEDIA_MESSAGE_TYPES = frozenset(_MEDIA_TYPE_ACCEPTS)
_MESSAGE_TYPES = (
    "text",
    "audio",
    "document",
    "image",
    "location",
    "video",
    "sticker",
    "reaction",
    "interactive",
    "template",
    "contacts",
)

_VERSION_RE = re.compile(r"v\d+\.\d+")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_TEMPLATE_NAME_RE = re.compile(r"[a-z0-9_]{1,512}")
_TEMPLATE_CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})


# ---------------------------------------------------------------------------------------------
# Wire helpers


def _wamid(wa_id: str, *, inbound: bool) -> str:
    """Build a message id shaped like Meta's (base64 of a small protobuf-like record).

    Real ids decode to ``1C 18 <len> <digits> 15 02 00`` then ``12 18 14 <20 hex>`` for user
    messages or ``11 18 12 <18 hex>`` for business messages, then ``00``; copying the shape
    keeps parsers that peek into ids honest without implying any meaning.
    """
    digits = wa_id.encode()[:60] or b"0"
    if inbound:
        tail = b"\x12\x18\x14" + secrets.token_hex(10).upper().encode()
    else:
        tail = b"\x11\x18\x12" + secrets.token_hex(9).upper().encode()
    raw = b"\x1c\x18" + bytes([len(digits)]) + digits + b"\x15\x02\x00" + tail + b"\x00"
    return "wamid." + base64.b64encode(raw).decode()


def _cursor(offset: int) -> str:
    # Graph cursors are base64 with "=" written as "ZD" (e.g. "MjQZD" for offset 24).
    return base64.b64encode(str(offset).encode()).decode().replace("=", "ZD")


def _uncursor(cursor: str) -> int:
    pads = 0
    while cursor.endswith("ZD"):
        cursor = cursor[:-2]
        pads += 1
    try:
        return int(base64.b64decode(cursor + "=" * pads, validate=True).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(100, f"Invalid cursor: {cursor!r}") from exc


def _norm_lang(code: str) -> str:
    # A6: the docs write "en-US" while templates use "en_US"; compare leniently.
    return code.strip().lower().replace("-", "_")


class GraphError(Exception):
    """A Graph API error, rendered as the A8 envelope.

    ``code`` selects the title and default details from :data:`ERRORS`; ``details`` overrides the
    details text; ``http_status`` overrides the default HTTP status of that code.
    """

    def __init__(
        self,
        code: int,
        details: str | None = None,
        *,
        http_status: int | None = None,
        subcode: int | None = None,
    ) -> None:
        title, default_details, default_status = ERRORS.get(
            code, ("Error", "An error occurred.", 400)
        )
        self.code = code
        self.title = title
        self.details = details or default_details
        self.http_status = http_status or default_status
        self.subcode = subcode
        super().__init__(f"({code}) {self.title}: {self.details}")

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` envelope of A8."""
        err: dict[str, Any] = {
            "message": f"(#{self.code}) {self.title}",
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
        }
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["fbtrace_id"] = fbtrace_id()
        return {"error": err}

    def webhook_error(self) -> dict[str, Any]:
        """The error object as it appears in ``statuses[].errors[]`` (A5)."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }


# ---------------------------------------------------------------------------------------------
# Request-body validation against Meta's OpenAPI document

_SCHEMA_URI = "urn:madoguchi:whatsapp-openapi"
_schema_lock = threading.Lock()
_send_validators: dict[str, Any] | None = None


def openapi_path() -> Path:
    """Find the OpenAPI YAML: ``$MADOGUCHI_WHATSAPP_OPENAPI``, the package's ``data/`` folder,
    then ``shared/platforms/whatsapp/`` in any parent folder of this file (the development tree).
    Meta's ``*_examples.json`` files are expected beside it.

    Raises ``FileNotFoundError`` naming every place looked at.
    """
    candidates: list[Path] = []
    env = os.environ.get(OPENAPI_ENV)
    if env:
        candidates.append(Path(env))
    here = Path(__file__).resolve()
    candidates.append(here.parent / "data" / OPENAPI_FILENAME)
    candidates.extend(
        p / "shared" / "platforms" / "whatsapp" / OPENAPI_FILENAME for p in here.parents
    )
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{OPENAPI_FILENAME} not found; set {OPENAPI_ENV}. Looked at: "
        + ", ".join(str(p) for p in candidates)
    )


def _reachable_schemas(all_schemas: Mapping[str, Any], root: str) -> dict[str, Any]:
    """Deep copies of ``root`` and every component schema it references, transitively."""
    prefix = "#/components/schemas/"
    todo, found = [root], {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = copy.deepcopy(all_schemas[name])
        stack: list[Any] = [found[name]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                        todo.append(value[len(prefix) :])
                    elif key == "mapping" and isinstance(value, dict):
                        todo.extend(v[len(prefix) :] for v in value.values())
                    else:
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)
    return found


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            yield cur
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def _apply_errata(s: dict[str, Any]) -> None:
    """Patch the v23.0 ``Message`` schemas where they contradict Meta's own examples and docs.

    Each change is the smallest one that lets Meta's published examples through while keeping
    malformed bodies out; the Graph API itself is the reference where the two disagree.
    """
    ref = "#/components/schemas/"
    base = s["BaseMessageProperties"]
    base["properties"]["messaging_product"]["enum"] = ["whatsapp"]
    # Documented optional top-level fields (A7) the schema forgot.
    base["properties"]["biz_opaque_callback_data"] = {"type": "string", "maxLength": 512}
    base["properties"]["recipient_identity_key_hash"] = {"type": "string"}
    # 1. `additionalProperties: false` inside an allOf branch rejects the properties declared by
    #    the sibling branch (BaseMessageProperties), so no message could ever be valid. The
    #    intent is "nothing but the declared keys": list the keys of all branches on the parent
    #    and close it there. (draft 2020-12's unevaluatedProperties says the same but costs a
    #    re-evaluation of every subschema per request.)
    for node in list(_walk(s)):
        branches = node.get("allOf")
        if not isinstance(branches, list):
            continue
        closed = [
            b for b in branches if isinstance(b, dict) and b.get("additionalProperties") is False
        ]
        if not closed:
            continue
        allowed: dict[str, Any] = dict(node.get("properties", {}))
        for branch in branches:
            target = branch
            if "$ref" in branch:
                target = s[branch["$ref"][len(ref) :]]
            allowed.update((key, True) for key in target.get("properties", {}))
        for branch in closed:
            del branch["additionalProperties"]
        node["properties"] = allowed
        node["additionalProperties"] = False
    # 2. Button `index`: the pattern "^[2-6, 11-14]$" rejects "0"; Meta's samples send "0" and 0.
    index = {"type": ["string", "integer"], "pattern": "^[0-9]$", "minimum": 0, "maximum": 9}
    s["TemplateComponent"]["properties"]["index"] = dict(index)
    sub_type = {
        "type": "string",
        "pattern": "(?i)^(quick_reply|url|catalog|flow|copy_code|mpm|voice_call|order_details)$",
    }
    s["TemplateComponent"]["properties"]["sub_type"] = dict(sub_type)
    for part in s["ButtonComponent"]["allOf"]:
        props = part.get("properties", {})
        if "index" in props:
            props["index"] = dict(index)
            props["sub_type"] = dict(sub_type)
    # 3. `language.policy` is optional ("deterministic" is the only, legacy, value).
    s["LanguageObject"]["required"] = ["code"]
    # 4. Coordinates are numbers in every example; Graph also accepts numeric strings.
    loc_branch = s["LocationMessage"]["allOf"][1]["properties"]["location"]
    for key in ("latitude", "longitude"):
        loc_branch["properties"][key]["type"] = ["number", "string"]
    loc_branch["required"] = ["latitude", "longitude"]
    # 5. Required fields the docs name but the schema does not.
    s["TextMessage"]["allOf"][1]["properties"]["text"]["required"] = ["body"]
    s["ReactionMessage"]["allOf"][1]["properties"]["reaction"]["required"] = ["message_id"]
    # 6. Parameter and button types used by documented features and Meta's samples.
    s["ParameterObject"]["properties"]["type"]["enum"].append("location")
    s["ButtonParameterObject"]["properties"]["type"]["enum"] += ["action", "coupon_code"]
    for part in s["ButtonTextParameter"]["allOf"]:
        text = part.get("properties", {}).get("text")
        if text is not None:
            # Meta's "sample_issue_resolution" sends `"text": true`; Graph coerces scalars.
            text["type"] = ["string", "boolean", "number"]
    # 7. Interactive types documented outside this spec (CTA URL, payments order details/status,
    #    location request, voice call) take a named action.
    s["InteractiveObject"]["properties"]["type"]["enum"] += [
        "cta_url",
        "order_details",
        "order_status",
        "location_request_message",
        "voice_call",
    ]
    s["ActionObject"]["oneOf"].append(
        {
            "required": ["name"],
            "properties": {
                "name": {
                    "enum": [
                        "cta_url",
                        "review_and_pay",
                        "review_order",
                        "send_location",
                        "voice_call",
                    ]
                }
            },
        }
    )
    phone_type = s["PhoneObject"]["properties"]["type"]
    phone_type["enum"] = ["CELL", "MAIN", "IPHONE", "HOME", "WORK", "MOBILE"]
    # 8. OpenAPI `discriminator` is not JSON Schema, so jsonschema ignores it and the items of
    #    `components` and `parameters` would only meet their base schema. It becomes the
    #    `x-discriminator` keyword (see _discriminator_keyword); the mapped schemas' allOf
    #    back-reference to the base points at a discriminator-free copy so the recursion ends.
    #    Message itself keeps its oneOf: validators are compiled per message type instead.
    for name in list(s):
        node = s[name]
        disc = node.get("discriminator")
        if not isinstance(disc, dict) or "mapping" not in disc or "oneOf" in node:
            continue
        base_name = f"{name}__base"
        s[base_name] = {k: v for k, v in node.items() if k != "discriminator"}
        for target in disc["mapping"].values():
            for part in s[target[len(ref) :]].get("allOf", []):
                if part.get("$ref") == ref + name:
                    part["$ref"] = ref + base_name
        node.pop("discriminator")
        node["x-discriminator"] = {
            "propertyName": disc["propertyName"],
            "mapping": {value: {"$ref": target} for value, target in disc["mapping"].items()},
        }


def _discriminator_keyword(validator: Any, disc: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """OpenAPI's discriminator: validate an object against the schema its property selects."""
    if isinstance(instance, dict):
        target = disc["mapping"].get(instance.get(disc["propertyName"]))
        if target is not None:
            yield from validator.descend(instance, target)


_ANNOTATIONS = frozenset({"description", "example", "examples", "discriminator"})


def _inline(node: Any, resolver: Any, stack: tuple[str, ...] = ()) -> Any:
    """Replace every ``$ref`` by the schema it points to, resolved with ``referencing``.

    Validating an inlined tree skips the per-request reference lookups, which were most of the
    cost of a template body. Raises ``ValueError`` on a reference cycle.
    """
    if isinstance(node, list):
        return [_inline(item, resolver, stack) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _inline(v, resolver, stack)
        for k, v in node.items()
        if k != "$ref" and k not in _ANNOTATIONS
    }
    target_ref = node.get("$ref")
    if isinstance(target_ref, str):
        if target_ref in stack:
            raise ValueError(f"reference cycle through {target_ref}")
        target = _inline(resolver.lookup(target_ref).contents, resolver, (*stack, target_ref))
        if not out:
            return target
        out["allOf"] = [target, *out.get("allOf", [])]
    return out


def _load_validators() -> dict[str, Any]:
    """Compile one validator per message ``type`` (once per process; thread-safe, lazy)."""
    global _send_validators
    if _send_validators is not None:
        return _send_validators
    with _schema_lock:
        if _send_validators is not None:
            return _send_validators
        import yaml
        from jsonschema import Draft202012Validator
        from jsonschema.validators import extend
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        with openapi_path().open("rb") as fh:
            spec = yaml.load(fh, Loader=yaml.CSafeLoader)
        schemas = _reachable_schemas(spec["components"]["schemas"], "Message")
        _apply_errata(schemas)
        resource = DRAFT202012.create_resource({"components": {"schemas": schemas}})
        resolver = Registry().with_resource(_SCHEMA_URI, resource).resolver(base_uri=_SCHEMA_URI)
        validator_class = extend(Draft202012Validator, {"x-discriminator": _discriminator_keyword})
        mapping = schemas["Message"]["discriminator"]["mapping"]
        validators = {
            msg_type: validator_class(_inline({"$ref": target}, resolver))
            for msg_type, target in mapping.items()
        }
        _send_validators = validators
        return validators


def _json_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Any) -> str:
    """Turn a jsonschema error into Graph-style details naming the offending field."""
    where = _json_path(error.absolute_path)
    if error.validator == "required":
        missing = next((k for k in error.validator_value if k not in error.instance), "?")
        return f"The parameter {where + '.' if where else ''}{missing} is required."
    if error.validator == "oneOf" and all(
        isinstance(b, dict) and len(b.get("required", ())) == 1 for b in error.validator_value
    ):
        keys = ", ".join(b["required"][0] for b in error.validator_value)
        return f"Param {where or 'message'} must contain exactly one of: {keys}."
    if error.validator in ("unevaluatedProperties", "additionalProperties"):
        match = re.search(r"'([^']+)' (?:was|were) unexpected", error.message)
        key = match.group(1) if match else "?"
        return f'Unexpected key "{key}" on param "{where or "message"}".'
    return f"Param {where or 'message'} is invalid: {error.message[:300]}"


def validate_send_body(body: Any) -> str | None:
    """Validate a ``POST /{phone_number_id}/messages`` body.

    Accepts message bodies (validated against the specification's ``Message`` schema, patched by
    :func:`_apply_errata`) and mark-as-read bodies (``status: "read"``). ``type`` defaults to
    ``"text"`` and ``recipient_type`` to ``"individual"`` as in the Graph API.

    Returns ``None`` when valid, else Graph-style details naming the bad field.
    """
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if "status" in body and "to" not in body:
        return _validate_read_body(body)
    validators = _load_validators()
    msg_type = body.get("type") or _implied_type(body, validators)
    validator = validators.get(msg_type) if isinstance(msg_type, str) else None
    if validator is None:
        allowed = ", ".join(sorted(t.upper() for t in validators))
        return f'Param type must be one of {{{allowed}}} - got "{msg_type}".'
    candidate = body
    if "type" not in body or "recipient_type" not in body:
        candidate = {"type": msg_type, "recipient_type": "individual", **body}
    errors = list(validator.iter_errors(candidate))
    if not errors:
        return None
    from jsonschema.exceptions import best_match

    # An unknown key is reported only when nothing more specific is wrong.
    specific = [e for e in errors if e.validator != "additionalProperties"]
    return _describe(best_match(specific or errors))


def _implied_type(body: Mapping[str, Any], types: Iterable[str]) -> str:
    """The ``type`` of a body that names none: its only message-object key, else ``"text"``.

    Graph defaults ``type`` to ``text``; Meta's own "Send Reply to List Message" example omits
    ``"type": "interactive"``, so a lone message object names the type.
    """
    present = [t for t in types if t in body]
    return present[0] if len(present) == 1 else "text"


def _validate_read_body(body: Mapping[str, Any]) -> str | None:
    if body.get("messaging_product") != "whatsapp":
        return 'The parameter messaging_product is required and must be "whatsapp".'
    if body.get("status") != "read":
        return f'Param status must be "read" - got "{body.get("status")}".'
    if not isinstance(body.get("message_id"), str) or not body["message_id"]:
        return "The parameter message_id is required."
    extra = set(body) - {"messaging_product", "status", "message_id", "typing_indicator"}
    if extra:
        return f'Unexpected key "{sorted(extra)[0]}" on param "message".'
    typing = body.get("typing_indicator")
    if typing is not None and typing != {"type": "text"}:
        return 'Param typing_indicator must be {"type": "text"}.'
    return None


# ---------------------------------------------------------------------------------------------
# Records exposed to tests


class SentMessage(NamedTuple):
    """One accepted send request."""

    phone_number_id: str
    body: dict[str, Any]
    wamid: str
    time: float


# ---------------------------------------------------------------------------------------------
# State


# Meta's most updates in one webhook POST (A3).
STATUS_BATCH_MAX = 1000


@dataclass
class _Number:
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    access_token: str
    app_secret: str
    webhook_url: str | None
    mps: float
    pair_interval: float
    pair_burst: int
    verified_name: str
    mps_bucket: TokenBucket
    pair_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    faults: deque[tuple[Any, ...]] = field(default_factory=deque)
    pending: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)
    batching: int = 0
    # automatic statuses waiting for the aggregation window (status_batch_window), each with
    # what to do once its POST is done (the next status of its chain)
    aggregated: list[tuple[dict[str, Any], Callable[[], None]]] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        return {
            "display_phone_number": self.display_phone_number,
            "phone_number_id": self.phone_number_id,
        }


@dataclass
class _Template:
    id: str
    name: str
    language: str
    category: str
    components: list[dict[str, Any]]
    status: str
    parameter_format: str

    def as_json(self, fields: Sequence[str] | None = None) -> dict[str, Any]:
        full = {
            "name": self.name,
            "parameter_format": self.parameter_format,
            "components": copy.deepcopy(self.components),
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "id": self.id,
        }
        if not fields:
            return full
        out = {k: full[k] for k in fields if k in full and k != "id"}
        out["id"] = self.id
        return out


@dataclass
class _Media:
    id: str
    owner: str  # phone_number_id
    data: bytes
    mime_type: str
    sha256: str
    filename: str | None


@dataclass
class _Outbound:
    phone_number_id: str
    wa_id: str
    category: str
    in_window: bool
    api_major: int
    biz_opaque_callback_data: str | None


# ---------------------------------------------------------------------------------------------
# The simulator


class WhatsAppSimulator(HubSignedWebhooks):
    """In-memory WhatsApp Cloud API with a Starlette app (:attr:`app`) and a Python control API.

    All public methods are thread-safe: state is guarded by one lock that is never held during
    network I/O. Webhooks caused by API requests (statuses) are delivered from a background
    thread pool, so answering a request never waits for the receiver; webhooks caused by control
    calls (:meth:`customer_sends`, :meth:`deliver_raw`, :meth:`set_template_status`,
    :meth:`flush`) are delivered in the caller's thread, retries included, before returning.

    Options:
        sync_window_errors: answer a free-form send outside the window with HTTP 400 / 131047
            instead of 200 followed by a ``failed`` status webhook (A9).
        status_delays: seconds before ``sent``, then between ``sent`` and ``delivered``, then
            between ``delivered`` and ``read``. Each step starts once the previous webhook was
            acknowledged or given up, so a message's statuses arrive in order.
        auto_read: emit ``read`` after ``delivered``.
        auto_statuses: emit status webhooks at all (benchmarks of the send path may turn it off).
        status_batch_window: when above 0, the automatic statuses of a number are aggregated for
            this many seconds and POSTed together, at most STATUS_BATCH_MAX per POST, as Meta
            does under load (A3: "aggregated and sent in a batch with a maximum of 1000
            updates"); each message's statuses still arrive in order.
        retry_delays: waits between webhook attempts; ``len + 1`` attempts at most.
        webhook_timeout: seconds per webhook attempt.
        media_url_ttl: lifetime of a media download URL (5 minutes on the platform).
        window_seconds: length of the customer service window.
        seed_templates: add a realistic set of templates to each new WABA.
        log_limit: most recent entries kept in ``sent``, ``requests`` and ``webhook_log``.
        clock: wall clock used for webhook timestamps and the window (tests may fake it).
    """

    def __init__(
        self,
        *,
        sync_window_errors: bool = False,
        status_delays: tuple[float, float, float] = (0.05, 0.1, 0.2),
        auto_read: bool = True,
        auto_statuses: bool = True,
        status_batch_window: float = 0.0,
        retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
        webhook_timeout: float = 5.0,
        delivery_workers: int = 16,
        media_url_ttl: float = MEDIA_URL_TTL_SECONDS,
        window_seconds: float = WINDOW_SECONDS,
        seed_templates: bool = True,
        log_limit: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sync_window_errors = sync_window_errors
        self.status_delays = status_delays
        self.auto_read = auto_read
        self.auto_statuses = auto_statuses
        self.status_batch_window = status_batch_window
        self.retry_delays = tuple(retry_delays)
        self.webhook_timeout = webhook_timeout
        self.media_url_ttl = media_url_ttl
        self.window_seconds = window_seconds
        self.seed_templates = seed_templates
        self.log_limit = log_limit
        self.clock = clock
        self._delivery_workers = delivery_workers

        self._lock = threading.RLock()
        self._numbers: dict[str, _Number] = {}
        self._templates: dict[str, list[_Template]] = {}
        self._windows: dict[tuple[str, str], float] = {}
        self._inbound: dict[str, tuple[str, str]] = {}  # wamid -> (phone_number_id, wa_id)
        self._outbound: dict[str, _Outbound] = {}
        self._last_outbound: dict[tuple[str, str], str] = {}
        self._media: dict[str, _Media] = {}
        self._download_tokens: dict[str, tuple[str, float]] = {}
        self._ids = itertools.count(random.randrange(10**15, 9 * 10**15))
        self._stats: dict[str, Any] = {
            "requests": 0,
            "sends_accepted": 0,
            "sends_rejected": 0,
            "reads_marked": 0,
            "inbound_messages": 0,
            "media_uploaded": 0,
            "webhook_attempts": 0,
            "webhooks_ok": 0,
            "webhooks_failed": 0,
            "errors_by_code": {},
        }
        self._sent_dropped = 0

        self.sent: list[SentMessage] = []
        self.requests: list[RequestRecord] = []
        self.webhook_log: list[WebhookAttempt] = []
        self.reads: list[tuple[str, str, float]] = []  # (phone_number_id, message_id, time)

        self._closed = False
        self._poster = Poster(webhook_timeout)
        self._scheduler: Scheduler | None = None
        self.app = self._build_app()

    # -- lifecycle ------------------------------------------------------------------------

    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        """Serve :attr:`app` with uvicorn in a background thread; returns once it accepts.

        ``port=0`` picks a free port (see ``RunningServer.port``). The OpenAPI schema is compiled
        in another thread meanwhile so the first send is not slow.
        """
        threading.Thread(target=_load_validators, name="wa-sim-schema", daemon=True).start()
        return serve_asgi_in_thread(self.app, host=host, port=port)

    # -- configuration ----------------------------------------------------------------------

    def add_number(
        self,
        *,
        phone_number_id: str,
        waba_id: str,
        display_phone_number: str,
        access_token: str,
        app_secret: str,
        webhook_url: str | None,
        mps: float = 80,
        pair_interval: float = 6.0,
        pair_burst: int = 45,
        verified_name: str = "Madoguchi Demo Shop",
    ) -> None:
        """Register (or reconfigure) a business phone number.

        ``webhook_url`` receives this number's signed webhooks (``None`` = record only).
        ``mps`` is the throughput (130429 beyond it); ``pair_burst`` messages to one recipient
        may go at once, then one every ``pair_interval`` seconds (131056 beyond it).
        The first number of a WABA seeds its templates when ``seed_templates`` is on.
        """
        now = time.monotonic()
        with self._lock:
            number = _Number(
                phone_number_id=str(phone_number_id),
                waba_id=str(waba_id),
                display_phone_number=str(display_phone_number),
                access_token=access_token,
                app_secret=app_secret,
                webhook_url=webhook_url,
                mps=mps,
                pair_interval=pair_interval,
                pair_burst=pair_burst,
                verified_name=verified_name,
                mps_bucket=TokenBucket(mps, mps, now),
            )
            self._numbers[number.phone_number_id] = number
            new_waba = number.waba_id not in self._templates
            self._templates.setdefault(number.waba_id, [])
        if new_waba and self.seed_templates:
            for tpl in SEED_TEMPLATES:
                self.add_template(number.waba_id, **copy.deepcopy(tpl))

    def numbers(self) -> list[str]:
        """The registered phone_number_ids."""
        with self._lock:
            return list(self._numbers)

    def add_template(
        self,
        waba_id: str,
        name: str,
        language: str,
        category: str,
        components: list[dict[str, Any]],
        status: str = "APPROVED",
        parameter_format: str = "POSITIONAL",
    ) -> str:
        """Add a template to a WABA's registry without a webhook; returns its id (a string).

        Raises ``ValueError`` if the name+language already exists in that WABA.
        """
        with self._lock:
            registry = self._templates.setdefault(str(waba_id), [])
            if self._find_template(registry, name, language) is not None:
                raise ValueError(f"template {name}/{language} already exists in {waba_id}")
            tpl = _Template(
                id=str(next(self._ids)),
                name=name,
                language=language,
                category=category.upper(),
                components=_normalize_components(components),
                status=status.upper(),
                parameter_format=parameter_format.upper(),
            )
            registry.append(tpl)
            return tpl.id

    def set_template_status(
        self,
        waba_id: str,
        name: str,
        language: str,
        status: str,
        reason: str | None = None,
    ) -> None:
        """Change a template's status and deliver a ``message_template_status_update`` webhook.

        ``reason`` defaults to ``"NONE"`` (``null`` for ``PENDING_DELETION``, per A6). The
        webhook goes to each distinct webhook URL of the WABA's numbers, in this thread.
        Raises ``KeyError`` for an unknown template.
        """
        status = status.upper()
        with self._lock:
            tpl = self._find_template(self._templates.get(str(waba_id), []), name, language)
            if tpl is None:
                raise KeyError(f"no template {name}/{language} in WABA {waba_id}")
            tpl.status = status
            targets = self._waba_targets(str(waba_id))
        if reason is None and status != "PENDING_DELETION":
            reason = "NONE"
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": str(waba_id),
                    "time": int(self.clock()),
                    "changes": [
                        {
                            "value": {
                                "event": status,
                                "message_template_id": int(tpl.id),
                                "message_template_name": tpl.name,
                                "message_template_language": tpl.language,
                                "reason": reason,
                                "message_template_category": tpl.category,
                            },
                            "field": "message_template_status_update",
                        }
                    ],
                }
            ],
        }
        body = encode_payload(payload)
        for url, secret in targets:
            self._deliver_sync(url, secret, body)

    def inject_faults(self, phone_number_id: str, faults: Iterable[Sequence[Any]]) -> None:
        """Queue answers for the next send requests (``POST .../messages``) of a number.

        Each fault is consumed by one request, in order:
        ``("http", status[, body_text])`` answers that HTTP status (with a Graph-style transient
        error body unless ``body_text`` is given); ``("graph", code[, http_status])`` answers the
        Graph error ``code``; ``("timeout", seconds)`` waits that long and then handles the
        request normally, so a client that gave up may still have had its message accepted.
        Raises ``ValueError`` for an unknown fault kind.
        """
        parsed = []
        for fault in faults:
            kind = fault[0]
            if kind not in ("http", "graph", "timeout") or len(fault) < 2:
                raise ValueError(f"unknown fault {fault!r}")
            parsed.append(tuple(fault))
        with self._lock:
            self._number(phone_number_id).faults.extend(parsed)

    # -- customers ------------------------------------------------------------------------

    def customer_sends(
        self,
        phone_number_id: str,
        wa_id: str,
        name: str,
        message: dict[str, Any] | str,
        *,
        timestamp: float | None = None,
        deliver: bool = True,
        wamid: str | None = None,
    ) -> str:
        """A customer writes to a business number; returns the new message's wamid.

        ``message`` is a message object of A4 without ``from``/``id``/``timestamp`` (for media
        types referencing an uploaded id, ``mime_type`` and ``sha256`` are filled in), or a
        string for a text message. ``timestamp`` (Unix seconds, default now) is the platform
        timestamp; it also (re)opens the customer service window unless the type is
        ``system``. The webhook is delivered in this thread, retries included, unless
        ``deliver`` is false or a :meth:`batch` is open, in which case it waits for
        :meth:`flush`. Passing the ``wamid`` of an earlier message re-sends it as the platform's
        duplicate deliveries do (A3).
        """
        if isinstance(message, str):
            message = {"type": "text", "text": {"body": message}}
        if "type" not in message:
            raise ValueError("message needs a 'type'")
        wa_id = str(wa_id)
        ts = int(self.clock() if timestamp is None else timestamp)
        wamid = wamid or _wamid(wa_id, inbound=True)
        msg: dict[str, Any] = {}
        if "context" in message:
            msg["context"] = message["context"]
        msg.update({"from": wa_id, "id": wamid, "timestamp": str(ts)})
        msg.update(
            (k, copy.deepcopy(v))
            for k, v in message.items()
            if k not in ("context", "from", "id", "timestamp")
        )
        contact = None if msg["type"] == "system" else {"profile": {"name": name}, "wa_id": wa_id}
        with self._lock:
            number = self._number(phone_number_id)
            media_obj = msg.get(msg["type"])
            if msg["type"] in _MEDIA_MESSAGE_TYPES and isinstance(media_obj, dict):
                media = self._media.get(str(media_obj.get("id")))
                if media is not None:
                    media_obj.setdefault("mime_type", media.mime_type)
                    media_obj.setdefault("sha256", media.sha256)
            self._inbound[wamid] = (number.phone_number_id, wa_id)
            if msg["type"] != "system":
                key = (number.phone_number_id, wa_id)
                self._windows[key] = max(self._windows.get(key, 0.0), float(ts))
            self._stats["inbound_messages"] += 1
            if not deliver or number.batching:
                number.pending.append(("message", msg, contact))
                return wamid
            value: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": number.metadata()}
            if contact is not None:
                value["contacts"] = [contact]
            value["messages"] = [msg]
            body = encode_payload(self._envelope(number, [value]))
            url, secret = number.webhook_url, number.app_secret
        self._deliver_sync(url, secret, body)
        return wamid

    def customer_uploads(
        self, phone_number_id: str, data: bytes, mime_type: str, filename: str | None = None
    ) -> str:
        """Store media sent by a customer to a number; returns its media id.

        The id can be used in :meth:`customer_sends` (``{"type": "image", "image": {"id": ...}}``)
        and fetched by the business through ``GET /{media_id}`` and the download URL.
        """
        with self._lock:
            self._number(phone_number_id)
            return self._store_media(str(phone_number_id), data, mime_type, filename)

    @contextlib.contextmanager
    def batch(self, phone_number_id: str) -> Iterator[None]:
        """Queue every webhook of a number (messages and statuses) while open; one POST on exit.

        Nesting is allowed; the queue is flushed when the outermost block exits.
        """
        with self._lock:
            self._number(phone_number_id).batching += 1
        try:
            yield
        finally:
            with self._lock:
                number = self._number(phone_number_id)
                number.batching -= 1
                outermost = number.batching == 0
            if outermost:
                self.flush(phone_number_id)

    def flush(self, phone_number_id: str) -> WebhookAttempt | None:
        """POST the queued webhooks of a number as one batch (A3); ``None`` if none were queued.

        Messages go in one ``changes[]`` item (with their ``contacts[]``), statuses in another,
        both in one ``entry``. Delivered in this thread, retries included.
        """
        with self._lock:
            number = self._number(phone_number_id)
            pending, number.pending = number.pending, []
            if not pending:
                return None
            messages = [item for kind, item, _ in pending if kind == "message"]
            statuses = [item for kind, item, _ in pending if kind == "status"]
            contacts: dict[str, dict[str, Any]] = {}
            for _, _, contact in pending:
                if contact is not None:
                    contacts.setdefault(contact["wa_id"], contact)
            values = []
            if messages:
                value: dict[str, Any] = {
                    "messaging_product": "whatsapp",
                    "metadata": number.metadata(),
                }
                if contacts:
                    value["contacts"] = list(contacts.values())
                value["messages"] = messages
                values.append(value)
            if statuses:
                values.append(
                    {
                        "messaging_product": "whatsapp",
                        "metadata": number.metadata(),
                        "statuses": statuses,
                    }
                )
            body = encode_payload(self._envelope(number, values))
            url, secret = number.webhook_url, number.app_secret
        return self._deliver_sync(url, secret, body)

    def deliver_raw(self, phone_number_id: str, payload: dict[str, Any] | bytes) -> WebhookAttempt:
        """Sign and POST any payload to a number's webhook URL, in this thread, with retries.

        A dict is encoded with :func:`encode_payload`; bytes are sent as they are.
        """
        with self._lock:
            number = self._number(phone_number_id)
            url, secret = number.webhook_url, number.app_secret
        body = payload if isinstance(payload, bytes) else encode_payload(payload)
        return self._deliver_sync(url, secret, body)

    def emit_status(
        self,
        phone_number_id: str,
        wamid: str,
        status: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        deliver: bool = True,
    ) -> WebhookAttempt | None:
        """Deliver one status webhook for an accepted outbound message, in this thread.

        For tests of ordering and duplicates (a ``read`` without ``delivered``, a late
        ``delivered``...). Queued instead when ``deliver`` is false or a batch is open.
        Raises ``KeyError`` for an unknown wamid.
        """
        with self._lock:
            number = self._number(phone_number_id)
            out = self._outbound[wamid]
            item = self._status_object(wamid, out, status, errors=errors)
            if not deliver or number.batching:
                number.pending.append(("status", item, None))
                return None
            body = encode_payload(self._status_envelope(number, item))
            url, secret = number.webhook_url, number.app_secret
        return self._deliver_sync(url, secret, body)

    def verify_subscription(
        self, phone_number_id: str, verify_token: str, *, challenge: str | None = None
    ) -> bool:
        """Run the A2 handshake against a number's webhook URL, as Meta does on subscription.

        Sends ``GET ?hub.mode=subscribe&hub.challenge=...&hub.verify_token=...`` and returns
        whether the answer was HTTP 200 with the challenge echoed verbatim as the body.
        """
        with self._lock:
            url = self._number(phone_number_id).webhook_url
        if not url:
            return False
        return hub_handshake(url, verify_token, timeout=self.webhook_timeout, challenge=challenge)

    # -- queries ----------------------------------------------------------------------------

    def window_open(self, phone_number_id: str, wa_id: str) -> bool:
        """Whether the customer service window of (number, customer) is open now."""
        with self._lock:
            return self._window_open(str(phone_number_id), str(wa_id), self.clock())

    def last_outbound(self, phone_number_id: str, wa_id: str) -> str | None:
        """The wamid of the latest business message accepted (not failed) for a customer."""
        with self._lock:
            return self._last_outbound.get((str(phone_number_id), str(wa_id)))

    def sent_to(self, phone_number_id: str, wa_id: str | None = None) -> list[SentMessage]:
        """Accepted sends of a number, optionally only those to one customer."""
        with self._lock:
            return [
                s
                for s in self.sent
                if s.phone_number_id == phone_number_id
                and (wa_id is None or re.sub(r"\D", "", s.body.get("to", "")) == wa_id)
            ]

    def templates(self, waba_id: str) -> list[dict[str, Any]]:
        """A snapshot of a WABA's templates, as the list endpoint returns them."""
        with self._lock:
            return [t.as_json() for t in self._templates.get(str(waba_id), [])]

    def stats(self) -> dict[str, Any]:
        """Counters: requests, sends accepted/rejected, webhooks, errors by code..."""
        with self._lock:
            out = copy.deepcopy(self._stats)
            out["numbers"] = len(self._numbers)
            out["media"] = len(self._media)
            out["sent_total"] = self._sent_dropped + len(self.sent)
            return out

    # -- internals: state helpers (call with the lock held) ---------------------------------

    def _number(self, phone_number_id: str) -> _Number:
        try:
            return self._numbers[str(phone_number_id)]
        except KeyError:
            raise KeyError(f"unknown phone_number_id {phone_number_id}") from None

    def _waba_targets(self, waba_id: str) -> list[tuple[str | None, str]]:
        seen: dict[tuple[str | None, str], None] = {}
        for n in self._numbers.values():
            if n.waba_id == waba_id:
                seen.setdefault((n.webhook_url, n.app_secret), None)
        return list(seen)

    @staticmethod
    def _find_template(registry: list[_Template], name: str, language: str) -> _Template | None:
        lang = _norm_lang(language)
        for tpl in registry:
            if tpl.name == name and _norm_lang(tpl.language) == lang:
                return tpl
        return None

    def _window_open(self, phone_number_id: str, wa_id: str, now: float) -> bool:
        last = self._windows.get((phone_number_id, wa_id))
        return last is not None and now < last + self.window_seconds

    def _store_media(self, owner: str, data: bytes, mime_type: str, filename: str | None) -> str:
        media_id = str(next(self._ids))
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self._media[media_id] = _Media(media_id, owner, data, mime_type, digest, filename)
        return media_id

    def _envelope(self, number: _Number, values: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": number.waba_id,
                    "changes": [{"value": v, "field": "messages"} for v in values],
                }
            ],
        }

    def _status_envelope(self, number: _Number, status: dict[str, Any]) -> dict[str, Any]:
        value = {
            "messaging_product": "whatsapp",
            "metadata": number.metadata(),
            "statuses": [status],
        }
        return self._envelope(number, [value])

    def _status_object(
        self,
        wamid: str,
        out: _Outbound,
        status: str,
        *,
        errors: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A ``statuses[]`` item shaped as in A5."""
        now = self.clock()
        item: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(now)),
            "recipient_id": out.wa_id,
        }
        if out.biz_opaque_callback_data is not None:
            item["biz_opaque_callback_data"] = out.biz_opaque_callback_data
        if status in ("sent", "delivered"):
            # A5: conversation is omitted from v24.0 on (outside free entry points); in v23.0 and
            # before its id is unique per message and only `sent` has the expiration.
            if out.api_major < 24:
                conversation: dict[str, Any] = {"id": secrets.token_hex(16)}
                if status == "sent":
                    conversation["expiration_timestamp"] = str(int(now + WINDOW_SECONDS))
                conversation["origin"] = {"type": out.category}
                item["conversation"] = conversation
            item["pricing"] = _pricing(out.category, out.in_window)
        if errors:
            item["errors"] = errors
        return item

    # -- internals: webhook delivery --------------------------------------------------------

    def _run_status_chain(
        self, phone_number_id: str, wamid: str, steps: list[tuple[float, str, GraphError | None]]
    ) -> None:
        """Emit ``steps`` (delay, status, error) in order, each after the previous is done."""
        if not steps:
            return
        delay, status, error = steps[0]

        def emit() -> None:
            def then() -> None:
                self._run_status_chain(phone_number_id, wamid, steps[1:])

            with self._lock:
                number = self._numbers.get(phone_number_id)
                out = self._outbound.get(wamid)
                if number is None or out is None:
                    return
                errors = [error.webhook_error()] if error is not None else None
                item = self._status_object(wamid, out, status, errors=errors)
                if self.status_batch_window > 0 and not number.batching:
                    number.aggregated.append((item, then))
                    if len(number.aggregated) == 1:  # the first of a window: POST when it ends
                        self._call_later(
                            self.status_batch_window,
                            lambda: self._post_aggregated(phone_number_id),
                        )
                    full = len(number.aggregated) >= STATUS_BATCH_MAX
                else:
                    full = None
                    queued = bool(number.batching)
                    if queued:
                        number.pending.append(("status", item, None))
                    else:
                        body = encode_payload(self._status_envelope(number, item))
                        url, secret = number.webhook_url, number.app_secret
            if full is not None:
                if full:
                    self._post_aggregated(phone_number_id)
                return
            if queued:
                then()
                return
            self._deliver_async(url, secret, body, then=then)

        self._call_later(delay, emit)

    def _post_aggregated(self, phone_number_id: str) -> None:
        """POST the statuses aggregated for a number (status_batch_window) in one webhook; each
        one's chain goes on once that POST is done."""
        with self._lock:
            number = self._numbers.get(phone_number_id)
            if number is None or not number.aggregated:
                return
            batch = number.aggregated[:STATUS_BATCH_MAX]
            del number.aggregated[:STATUS_BATCH_MAX]
            if number.aggregated:  # more than one POST's worth: the rest in the next window
                self._call_later(
                    self.status_batch_window, lambda: self._post_aggregated(phone_number_id)
                )
            value = {
                "messaging_product": "whatsapp",
                "metadata": number.metadata(),
                "statuses": [item for item, _then in batch],
            }
            body = encode_payload(self._envelope(number, [value]))
            url, secret = number.webhook_url, number.app_secret

        def then() -> None:
            for _item, next_step in batch:
                next_step()

        self._deliver_async(url, secret, body, then=then)

    # -- the HTTP application ---------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/_sim/customer_message", self._ctl_customer_message, methods=["POST"]),
            Route("/_sim/customer_upload", self._ctl_customer_upload, methods=["POST"]),
            Route("/_sim/sent", self._ctl_sent, methods=["GET"]),
            Route("/_sim/faults", self._ctl_faults, methods=["POST"]),
            Route("/_sim/templates/status", self._ctl_template_status, methods=["POST"]),
            Route("/_sim/stats", self._ctl_stats, methods=["GET"]),
            Route("/media-download/{token}", self._media_download, methods=["GET"]),
            Route("/{version}/{object_id}/messages", self._send, methods=["POST"]),
            Route("/{version}/{object_id}/media", self._upload_media, methods=["POST"]),
            Route(
                "/{version}/{object_id}/message_templates",
                self._templates_endpoint,
                methods=["GET", "POST", "DELETE"],
            ),
            Route("/{version}/{object_id}", self._object, methods=["GET", "POST", "DELETE"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(RequestRecorder, record=self._record_request)],
            exception_handlers={GraphError: self._graph_error_response},
        )

    @staticmethod
    def _version(request: Request) -> int:
        version = request.path_params["version"]
        if not _VERSION_RE.fullmatch(version):
            raise GraphError(100, f"Unknown path components: /{version}", http_status=404)
        return int(version[1:].split(".")[0])

    @staticmethod
    def _bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return request.query_params.get("access_token")

    def _authorize(self, request: Request, tokens: Iterable[str]) -> None:
        token = self._bearer(request)
        if token is None:
            raise GraphError(190, "An active access token must be used to query this resource.")
        if not any(hmac.compare_digest(token, t) for t in tokens):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")

    def _tokens_of_waba(self, waba_id: str) -> list[str]:
        with self._lock:
            return [n.access_token for n in self._numbers.values() if n.waba_id == waba_id]

    @staticmethod
    def _unknown_object(object_id: str, method: str) -> GraphError:
        return GraphError(
            100,
            f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this operation.",
            subcode=33,
        )

    @staticmethod
    async def _json_body(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GraphError(100, "The request body is not valid JSON.") from None

    # -- POST /{phone_number_id}/messages -------------------------------------------------

    async def _send(self, request: Request) -> Response:
        api_major = self._version(request)
        pnid = request.path_params["object_id"]
        with self._lock:
            number = self._numbers.get(pnid)
            if number is None:
                raise self._unknown_object(pnid, "POST")
            fault = number.faults.popleft() if number.faults else None
            token = number.access_token
        if fault is not None:
            response = await self._apply_fault(fault)
            if response is not None:
                return response
        self._authorize(request, [token])
        body = await self._json_body(request)
        try:
            if isinstance(body, dict) and "status" in body and "to" not in body:
                return self._mark_read(pnid, body)
            return self._accept_send(number, body, api_major)
        except GraphError:
            with self._lock:
                self._stats["sends_rejected"] += 1
            raise

    async def _apply_fault(self, fault: tuple[Any, ...]) -> Response | None:
        kind = fault[0]
        if kind == "timeout":
            await asyncio.sleep(float(fault[1]))
            return None
        if kind == "http":
            status = int(fault[1])
            if len(fault) > 2:
                return Response(str(fault[2]), status_code=status, media_type="text/plain")
            body = {
                "error": {
                    "message": "An unexpected error has occurred. Please retry your request later.",
                    "type": "OAuthException",
                    "is_transient": True,
                    "code": 2,
                    "fbtrace_id": fbtrace_id(),
                }
            }
            return graph_response(body, status)
        code = int(fault[1])
        error = GraphError(code, http_status=int(fault[2]) if len(fault) > 2 else None)
        self._count_error(code)
        return graph_response(error.body(), error.http_status)

    def _mark_read(self, pnid: str, body: dict[str, Any]) -> Response:
        details = _validate_read_body(body)
        if details is not None:
            raise GraphError(100, details)
        with self._lock:
            owner = self._inbound.get(body["message_id"])
            if owner is None or owner[0] != pnid:
                raise GraphError(100, f"Invalid message_id: {body['message_id']}")
            self.reads.append((pnid, body["message_id"], self.clock()))
            self._trim(self.reads)
            self._stats["reads_marked"] += 1
        return graph_response({"success": True})

    def _accept_send(self, number: _Number, body: Any, api_major: int) -> Response:
        """Validate, apply the platform rules and accept a send; raises :class:`GraphError`."""
        details = validate_send_body(body)
        if details is not None:
            raise GraphError(100, details)
        msg_type = body.get("type") or _implied_type(body, _MESSAGE_TYPES)
        to = body["to"]
        wa_id = re.sub(r"\D", "", to)
        if not wa_id:
            raise GraphError(100, f'Param to must be a valid phone number - got "{to}".')
        if wa_id == re.sub(r"\D", "", number.display_phone_number):
            raise GraphError(131021)
        pnid = number.phone_number_id
        now_wall = self.clock()
        now = time.monotonic()
        with self._lock:
            self._check_media_refs(body, msg_type)
            category = "service"
            if msg_type == "template":
                category = self._check_template(number, body["template"])
            in_window = self._window_open(pnid, wa_id, now_wall)
            window_failure = msg_type != "template" and not in_window
            if window_failure and self.sync_window_errors:
                raise GraphError(131047)
            if not number.mps_bucket.ready(now):
                raise GraphError(130429)
            pair = number.pair_buckets.get(wa_id)
            if pair is None:
                pair = number.pair_buckets[wa_id] = TokenBucket(
                    number.pair_burst, 1.0 / number.pair_interval, now
                )
            if not pair.ready(now):
                raise GraphError(131056)
            number.mps_bucket.take()
            pair.take()
            wamid = _wamid(wa_id, inbound=False)
            self._outbound[wamid] = _Outbound(
                phone_number_id=pnid,
                wa_id=wa_id,
                category=category,
                in_window=in_window,
                api_major=api_major,
                biz_opaque_callback_data=body.get("biz_opaque_callback_data"),
            )
            if not window_failure:
                self._last_outbound[(pnid, wa_id)] = wamid
            self.sent.append(SentMessage(pnid, body, wamid, now_wall))
            self._sent_dropped += self._trim(self.sent)
            self._stats["sends_accepted"] += 1
        if self.auto_statuses:
            d_sent, d_delivered, d_read = self.status_delays
            steps: list[tuple[float, str, GraphError | None]] = [(d_sent, "sent", None)]
            if window_failure:
                steps.append((d_delivered, "failed", GraphError(131047)))
            else:
                steps.append((d_delivered, "delivered", None))
                if self.auto_read:
                    steps.append((d_read, "read", None))
            self._run_status_chain(pnid, wamid, steps)
        return graph_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": wa_id}],
                "messages": [{"id": wamid}],
            }
        )

    def _check_media_refs(self, body: dict[str, Any], msg_type: str) -> None:
        refs: list[tuple[str, Any]] = []
        if msg_type in _MEDIA_MESSAGE_TYPES:
            refs.append((msg_type, body.get(msg_type, {}).get("id")))
        elif msg_type == "interactive":
            header = body["interactive"].get("header") or {}
            kind = header.get("type")
            if kind in ("image", "video", "document"):
                refs.append((kind, (header.get(kind) or {}).get("id")))
        elif msg_type == "template":
            for comp in body["template"].get("components") or []:
                for param in comp.get("parameters") or []:
                    kind = param.get("type") if isinstance(param, dict) else None
                    if kind in ("image", "video", "document"):
                        refs.append((kind, (param.get(kind) or {}).get("id")))
        for kind, media_id in refs:
            if media_id is None:
                continue  # a link, not an id
            media = self._media.get(str(media_id))
            if media is None:
                raise GraphError(131053, f"Media id {media_id} does not exist or was deleted.")
            base = media.mime_type.split(";")[0].strip()
            if not _MEDIA_TYPE_ACCEPTS[kind](base):
                raise GraphError(
                    131053,
                    f"Media id {media_id} has MIME type {base}, which a {kind} message cannot use.",
                )

    def _check_template(self, number: _Number, tmsg: dict[str, Any]) -> str:
        """Check a template send against the registry (A10); returns the pricing category."""
        name, lang = tmsg["name"], tmsg["language"]["code"]
        tpl = self._find_template(self._templates.get(number.waba_id, []), name, lang)
        if tpl is None or tpl.status not in ("APPROVED", "PAUSED", "DISABLED"):
            raise GraphError(132001, f"template name ({name}) does not exist in {lang}")
        if tpl.status == "PAUSED":
            raise GraphError(132015)
        if tpl.status == "DISABLED":
            raise GraphError(132016)
        _check_template_params(tpl, tmsg.get("components") or [])
        return tpl.category.lower()

    # -- media --------------------------------------------------------------------------------

    async def _upload_media(self, request: Request) -> Response:
        self._version(request)
        pnid = request.path_params["object_id"]
        with self._lock:
            number = self._numbers.get(pnid)
            if number is None:
                raise self._unknown_object(pnid, "POST")
            token = number.access_token
        self._authorize(request, [token])
        async with request.form(max_part_size=1024 * 1024) as form:
            if form.get("messaging_product") != "whatsapp":
                raise GraphError(100, "The parameter messaging_product is required.")
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise GraphError(100, "The parameter file is required.")
            data = await upload.read()
            declared = form.get("type")
            mime = (declared if isinstance(declared, str) and declared else None) or (
                upload.content_type or ""
            )
            filename = upload.filename
        base = mime.split(";")[0].strip().lower()
        limit = MEDIA_LIMITS.get(base)
        if limit is None:
            allowed = ", ".join(sorted(MEDIA_LIMITS))
            raise GraphError(
                100,
                f"Param file must be a file with one of the following types: {allowed}. "
                f'Received file of type "{base}".',
            )
        if len(data) > limit:
            raise GraphError(
                131053,
                f"File size {len(data)} bytes exceeds the {limit} byte limit for {base}.",
            )
        with self._lock:
            media_id = self._store_media(pnid, data, mime, filename)
            self._stats["media_uploaded"] += 1
        return graph_response({"id": media_id})

    async def _media_download(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self._lock:
            entry = self._download_tokens.get(token)
            media = self._media.get(entry[0]) if entry is not None else None
            expired = entry is not None and time.monotonic() > entry[1]
            allowed = self._tokens_of_media(media) if media is not None else []
        bearer = self._bearer(request)
        if media is not None and (
            bearer is None or not any(hmac.compare_digest(bearer, t) for t in allowed)
        ):
            # A11: "If you omit your token, the request will fail".
            return graph_response(GraphError(190, "Media download requires the token.").body(), 401)
        if media is None or expired:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(media.data, media_type=media.mime_type.split(";")[0].strip())

    def _tokens_of_media(self, media: _Media) -> list[str]:
        owner = self._numbers.get(media.owner)
        if owner is None:
            return []
        return [n.access_token for n in self._numbers.values() if n.waba_id == owner.waba_id]

    # -- GET/POST/DELETE /{object_id} ---------------------------------------------------------

    async def _object(self, request: Request) -> Response:
        self._version(request)
        object_id = request.path_params["object_id"]
        method = request.method
        with self._lock:
            media = self._media.get(object_id)
            number = self._numbers.get(object_id)
            template, template_waba = next(
                (
                    (t, waba)
                    for waba, registry in self._templates.items()
                    for t in registry
                    if t.id == object_id
                ),
                (None, None),
            )
            media_tokens = self._tokens_of_media(media) if media is not None else []
        if media is not None:
            self._authorize(request, media_tokens)
            pn_filter = request.query_params.get("phone_number_id")
            if pn_filter and pn_filter != media.owner:
                raise self._unknown_object(object_id, method)
            if method == "DELETE":
                with self._lock:
                    self._media.pop(object_id, None)
                return graph_response({"success": True})
            if method != "GET":
                raise self._unknown_object(object_id, method)
            url_token = secrets.token_urlsafe(24)
            with self._lock:
                now = time.monotonic()
                if len(self._download_tokens) > 10_000:
                    self._download_tokens = {
                        k: v for k, v in self._download_tokens.items() if v[1] > now
                    }
                self._download_tokens[url_token] = (object_id, now + self.media_url_ttl)
            base = str(request.base_url).rstrip("/")
            return graph_response(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{base}/media-download/{url_token}",
                    "mime_type": media.mime_type,
                    "sha256": media.sha256,
                    "file_size": str(len(media.data)),
                    "id": media.id,
                }
            )
        if number is not None and method == "GET":
            self._authorize(request, [number.access_token])
            info = {
                "verified_name": number.verified_name,
                "display_phone_number": number.display_phone_number,
                "id": number.phone_number_id,
                "quality_rating": "GREEN",
                "code_verification_status": "VERIFIED",
                "platform_type": "CLOUD_API",
                "throughput": {"level": "STANDARD" if number.mps <= 80 else "HIGH"},
                "whatsapp_business_manager_messaging_limit": "TIER_250",
            }
            fields = request.query_params.get("fields")
            if fields:
                wanted = [f.strip() for f in fields.split(",") if f.strip()]
                info = {k: v for k, v in info.items() if k in wanted or k == "id"}
            return graph_response(info)
        if template is not None and template_waba is not None:
            self._authorize(request, self._tokens_of_waba(template_waba))
            if method == "GET":
                fields = _split_fields(request.query_params.get("fields"))
                with self._lock:
                    return graph_response(template.as_json(fields))
            if method == "POST":
                return self._edit_template(template, await self._json_body(request))
        raise self._unknown_object(object_id, method)

    def _edit_template(self, template: _Template, body: Any) -> Response:
        if not isinstance(body, dict) or not ({"category", "components"} & set(body)):
            raise GraphError(100, "Provide category or components to edit a template.")
        with self._lock:
            if template.status not in ("APPROVED", "REJECTED", "PAUSED"):
                raise GraphError(
                    100, "Only templates with an APPROVED, REJECTED, or PAUSED status can be edited"
                )
            if "category" in body:
                category = str(body["category"]).upper()
                if category not in _TEMPLATE_CATEGORIES:
                    raise GraphError(100, f"Param category is invalid: {body['category']}")
                template.category = category
            if "components" in body:
                template.components = _normalize_components(body["components"])
        return graph_response({"success": True})

    # -- /{waba_id}/message_templates ---------------------------------------------------------

    async def _templates_endpoint(self, request: Request) -> Response:
        self._version(request)
        waba_id = request.path_params["object_id"]
        with self._lock:
            known = waba_id in self._templates
        tokens = self._tokens_of_waba(waba_id)
        if not known or not tokens:
            raise self._unknown_object(waba_id, request.method)
        self._authorize(request, tokens)
        if request.method == "GET":
            return self._list_templates(request, waba_id)
        if request.method == "DELETE":
            return self._delete_templates(request, waba_id)
        return self._create_template(waba_id, await self._json_body(request))

    def _list_templates(self, request: Request, waba_id: str) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "25"))
        except ValueError:
            raise GraphError(100, "Param limit must be an integer.") from None
        if limit < 1:
            raise GraphError(100, "Param limit must be a positive integer.")
        limit = min(limit, 1000)
        offset = 0
        if q.get("after"):
            offset = _uncursor(q["after"])
        elif q.get("before"):
            offset = max(0, _uncursor(q["before"]) - limit)
        fields = _split_fields(q.get("fields"))
        statuses = {s.strip().upper() for s in q.get("status", "").split(",") if s.strip()}
        name = q.get("name", "").lower()
        language = _norm_lang(q.get("language", ""))
        category = q.get("category", "").upper()
        with self._lock:
            matching = [
                t
                for t in self._templates.get(waba_id, [])
                if (not statuses or t.status in statuses)
                and (not name or name in t.name.lower())
                and (not language or _norm_lang(t.language) == language)
                and (not category or t.category == category)
            ]
            page = [t.as_json(fields) for t in matching[offset : offset + limit]]
        result: dict[str, Any] = {"data": page}
        if page:
            paging: dict[str, Any] = {
                "cursors": {"before": _cursor(offset), "after": _cursor(offset + len(page))}
            }
            if offset + len(page) < len(matching):
                params = {k: v for k, v in q.items() if k not in ("after", "before")}
                params["limit"] = str(limit)
                params["after"] = paging["cursors"]["after"]
                paging["next"] = str(request.url.replace_query_params(**params))
            if offset > 0:
                params = {k: v for k, v in q.items() if k not in ("after", "before")}
                params["limit"] = str(limit)
                params["before"] = paging["cursors"]["before"]
                paging["previous"] = str(request.url.replace_query_params(**params))
            result["paging"] = paging
        return graph_response(result)

    def _create_template(self, waba_id: str, body: Any) -> Response:
        if not isinstance(body, dict):
            raise GraphError(100, "The request body must be a JSON object.")
        for key in ("name", "language", "category", "components"):
            if key not in body:
                raise GraphError(100, f"The parameter {key} is required.")
        name, language = body["name"], body["language"]
        if not isinstance(name, str) or not _TEMPLATE_NAME_RE.fullmatch(name):
            raise GraphError(
                100, "Param name must contain only lowercase characters, numbers and underscores."
            )
        if not isinstance(language, str) or not language:
            raise GraphError(100, "Param language must be a language code such as en_US.")
        category = str(body["category"]).upper()
        if category not in _TEMPLATE_CATEGORIES:
            raise GraphError(
                100,
                f"Param category must be one of MARKETING, UTILITY, AUTHENTICATION - got "
                f'"{body["category"]}".',
            )
        components = body["components"]
        if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
            raise GraphError(100, "Param components must be an array of objects.")
        types = [str(c.get("type", "")).upper() for c in components]
        if "BODY" not in types:
            raise GraphError(100, "Param components must include a BODY component.")
        bad = [t for t in types if t not in ("HEADER", "BODY", "FOOTER", "BUTTONS")]
        if bad:
            raise GraphError(100, f"Param components[].type is invalid: {bad[0]}")
        fmt = str(body.get("parameter_format", "POSITIONAL")).upper()
        if fmt not in ("POSITIONAL", "NAMED"):
            raise GraphError(100, "Param parameter_format must be POSITIONAL or NAMED.")
        try:
            template_id = self.add_template(
                waba_id,
                name,
                language,
                category,
                components,
                status="PENDING",
                parameter_format=fmt,
            )
        except ValueError:
            raise GraphError(
                100, "Content in this language already exists.", subcode=2388024
            ) from None
        return graph_response({"id": template_id, "status": "PENDING", "category": category})

    def _delete_templates(self, request: Request, waba_id: str) -> Response:
        name = request.query_params.get("name")
        hsm_id = request.query_params.get("hsm_id")
        if not name:
            raise GraphError(100, "The parameter name is required.")
        with self._lock:
            registry = self._templates[waba_id]
            doomed = [t for t in registry if t.name == name and (not hsm_id or t.id == hsm_id)]
            if not doomed:
                raise GraphError(100, f'Message template "{name}" could not be found.')
            self._templates[waba_id] = [t for t in registry if t not in doomed]
        return graph_response({"success": True})

    # -- /_sim control API (unauthenticated: loopback only) ---------------------------------

    async def _ctl_customer_message(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            wamid = await run_in_threadpool(
                self.customer_sends,
                str(body["phone_number_id"]),
                str(body["wa_id"]),
                str(body.get("name", "")),
                body["message"],
                timestamp=body.get("timestamp"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return graph_response({"error": str(exc)}, 400)
        return graph_response({"id": wamid})

    async def _ctl_customer_upload(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            media_id = self.customer_uploads(
                str(body["phone_number_id"]),
                base64.b64decode(body["data_base64"], validate=True),
                str(body["mime_type"]),
                body.get("filename"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return graph_response({"error": str(exc)}, 400)
        return graph_response({"id": media_id})

    async def _ctl_sent(self, request: Request) -> Response:
        pnid = request.query_params.get("phone_number_id")
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return graph_response({"error": "since must be an integer"}, 400)
        with self._lock:
            start = max(0, since - self._sent_dropped)
            items = [
                {
                    "phone_number_id": s.phone_number_id,
                    "body": s.body,
                    "id": s.wamid,
                    "time": s.time,
                }
                for s in self.sent[start:]
                if pnid is None or s.phone_number_id == pnid
            ]
            nxt = self._sent_dropped + len(self.sent)
        return graph_response({"data": items, "next": nxt})

    async def _ctl_faults(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            faults = [tuple(f) for f in body["faults"]]
            self.inject_faults(str(body["phone_number_id"]), faults)
        except (KeyError, TypeError, ValueError) as exc:
            return graph_response({"error": str(exc)}, 400)
        return graph_response({"queued": len(faults)})

    async def _ctl_template_status(self, request: Request) -> Response:
        body = await self._json_body(request)
        try:
            await run_in_threadpool(
                self.set_template_status,
                str(body["waba_id"]),
                body["name"],
                body["language"],
                body["status"],
                body.get("reason"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return graph_response({"error": str(exc)}, 400)
        return graph_response({"success": True})

    async def _ctl_stats(self, request: Request) -> Response:
        return graph_response(self.stats())


# ---------------------------------------------------------------------------------------------
# Template helpers


def _split_fields(fields: str | None) -> list[str] | None:
    if not fields:
        return None
    return [f.strip() for f in fields.split(",") if f.strip()]


def _normalize_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Listings return component types in upper case even when created in lower case.
    out = []
    for comp in components:
        comp = copy.deepcopy(comp)
        if "type" in comp:
            comp["type"] = str(comp["type"]).upper()
        out.append(comp)
    return out


def _placeholders(text: str) -> list[str]:
    """Distinct ``{{n}}`` / ``{{name}}`` placeholders of a template text, in order."""
    return list(dict.fromkeys(_PLACEHOLDER_RE.findall(text or "")))


def _pricing(category: str, in_window: bool) -> dict[str, Any]:
    """The ``pricing`` object of A5 under per-message pricing."""
    if category == "service" or (category == "utility" and in_window):
        kind, billable = "free_customer_service", False
    else:
        kind, billable = "regular", True
    return {"billable": billable, "pricing_model": "PMP", "type": kind, "category": category}


def _check_template_params(tpl: _Template, given: list[dict[str, Any]]) -> None:
    """Compare the parameters of a template send with the template's variables.

    Raises 132000 for a count mismatch and 132012 for a header of the wrong kind.
    """
    params: dict[str, list[Any]] = {"header": [], "body": []}
    buttons: dict[int, dict[str, Any]] = {}
    for comp in given:
        kind = str(comp.get("type", "")).lower()
        if kind == "button":
            try:
                buttons[int(comp.get("index"))] = comp
            except (TypeError, ValueError):
                raise GraphError(100, "Param template.components[].index is invalid.") from None
        elif kind in params:
            params[kind].extend(comp.get("parameters") or [])

    def mismatch(where: str, got: int, expected: int) -> GraphError:
        return GraphError(
            132000,
            f"{where}: number of localizable_params ({got}) does not match the expected number "
            f"of params ({expected})",
        )

    has_header = False
    template_buttons: list[dict[str, Any]] = []
    for comp in tpl.components:
        kind = comp.get("type")
        if kind == "HEADER":
            has_header = True
            fmt = str(comp.get("format", "TEXT")).upper()
            header = params["header"]
            if fmt == "TEXT":
                expected = len(_placeholders(comp.get("text", "")))
                if len(header) != expected:
                    raise mismatch("header", len(header), expected)
            else:
                got = str(header[0].get("type", "")).upper() if header else "UNKNOWN"
                if got != fmt:
                    raise GraphError(
                        132012, f"header: Format mismatch, expected {fmt}, received {got}"
                    )
        elif kind == "BODY":
            body = params["body"]
            if tpl.category == "AUTHENTICATION":
                names: list[str] = ["1"]  # the one-time code
            else:
                names = _placeholders(comp.get("text", ""))
            if len(body) != len(names):
                raise mismatch("body", len(body), len(names))
            if tpl.parameter_format == "NAMED":
                supplied = {p.get("parameter_name") for p in body if isinstance(p, dict)}
                missing = [n for n in names if n not in supplied]
                if missing:
                    raise GraphError(
                        132000, f"body: parameter_name {missing[0]!r} was not supplied"
                    )
        elif kind == "BUTTONS":
            template_buttons = list(comp.get("buttons") or [])
    if params["header"] and not has_header:
        raise mismatch("header", len(params["header"]), 0)
    if not any(c.get("type") == "BODY" for c in tpl.components) and params["body"]:
        raise mismatch("body", len(params["body"]), 0)
    for index, button in enumerate(template_buttons):
        btype = str(button.get("type", "")).upper()
        needs = (btype == "URL" and bool(_placeholders(button.get("url", "")))) or (
            btype == "OTP" and str(button.get("otp_type", "")).upper() != "ZERO_TAP"
        )
        comp = buttons.get(index)
        if needs and (comp is None or not comp.get("parameters")):
            raise GraphError(
                132000,
                f"buttons: Button at index {index} of type {btype.title()} requires a parameter",
            )
    for index in buttons:
        if index >= len(template_buttons):
            raise GraphError(132000, f"buttons: Button at index {index} does not exist")


# Seed templates: the first five are Meta's published examples (template_examples.json), the
# rest cover a Japanese template, named parameters and an authentication template.
SEED_TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "hello_world",
        "language": "en_US",
        "category": "UTILITY",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            {
                "type": "BODY",
                "text": "Welcome and congratulations!! This message demonstrates your ability to "
                "send a message notification from WhatsApp Business Platform\u2019s Cloud API. "
                "Thank you for taking the time to test with us.",
            },
            {"type": "FOOTER", "text": "WhatsApp Business API Team"},
        ],
    },
    {
        "name": "order_update",
        "language": "en_US",
        "category": "UTILITY",
        "components": [
            {
                "type": "BODY",
                "text": "Hi {{1}}, your order {{2}} has been updated. Reply to this message if you "
                "have any questions.",
                "example": {"body_text": [["Mark", "#48213"]]},
            },
            {"type": "FOOTER", "text": "Madoguchi Demo Shop"},
        ],
    },
    {
        "name": "order_confirmation",
        "language": "en_US",
        "category": "UTILITY",
        "components": [
            {
                "type": "HEADER",
                "format": "DOCUMENT",
                "example": {"header_handle": ["4::YXBwbGljYXRpb24vcGRm:ARZVv4zuogJMxmAdS3_6T4o"]},
            },
            {
                "type": "BODY",
                "text": "Thank you for your order, {{1}}! Your order number is {{2}}. Tap the PDF "
                "linked above to view your receipt. If you have any questions, please use the "
                "buttons below to contact support. Thanks again!",
                "example": {"body_text": [["Mark", "860198-230332"]]},
            },
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "16467043595"},
                    {
                        "type": "URL",
                        "text": "Contact Support",
                        "url": "https://www.examplesite.com/support",
                    },
                ],
            },
        ],
    },
    {
        "name": "limited_time_offer_tuscan_getaway_2023",
        "language": "en_US",
        "category": "MARKETING",
        "components": [
            {
                "type": "HEADER",
                "format": "IMAGE",
                "example": {"header_handle": ["4::aW1hZ2UvanBn:ARYytyb0kLp5htbBB8vWlclG5M9gMBx"]},
            },
            {
                "type": "BODY",
                "text": "Hi {{1}}! For a limited time only you can get our {{2}} for as low as "
                "{{3}}. Tap the Offer Details button for more information.",
                "example": {"body_text": [["Mark", "Tuscan Getaway package", "800"]]},
            },
            {"type": "FOOTER", "text": "Offer valid until May 31, 2023"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "16467043595"},
                    {
                        "type": "URL",
                        "text": "Shop Now",
                        "url": "https://damp-sea-63235.herokuapp.com/shop?promo={{1}}",
                        "example": ["summer2023"],
                    },
                ],
            },
        ],
    },
    {
        "name": "seasonal_promotion_text_only",
        "language": "en",
        "category": "MARKETING",
        "components": [
            {
                "type": "HEADER",
                "format": "TEXT",
                "text": "Our {{1}} is on!",
                "example": {"header_text": ["Summer Sale"]},
            },
            {
                "type": "BODY",
                "text": "Shop now through {{1}} and use code {{2}} to get {{3}} off of all "
                "merchandise.",
                "example": {"body_text": [["the end of August", "25OFF", "25%"]]},
            },
            {
                "type": "FOOTER",
                "text": "Use the buttons below to manage your marketing subscriptions",
            },
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Unsubcribe from Promos"},
                    {"type": "QUICK_REPLY", "text": "Unsubscribe from All"},
                ],
            },
        ],
    },
    {
        "name": "order_delivery_update",
        "language": "en_US",
        "category": "UTILITY",
        "components": [
            {"type": "HEADER", "format": "LOCATION"},
            {
                "type": "BODY",
                "text": "Good news {{1}}! Your order #{{2}} is on its way to the location above. "
                "Thank you for your order!",
                "example": {"body_text": [["Mark", "566701"]]},
            },
            {"type": "FOOTER", "text": "To stop receiving delivery updates, tap the button below."},
            {
                "type": "BUTTONS",
                "buttons": [{"type": "QUICK_REPLY", "text": "Stop Delivery Updates"}],
            },
        ],
    },
    {
        "name": "order_shipped",
        "language": "ja",
        "category": "UTILITY",
        "components": [
            {
                "type": "BODY",
                "text": "ご注文の商品を発送いたしました。追跡番号: {{1}}",
                "example": {"body_text": [["JP1234567890"]]},
            }
        ],
    },
    {
        "name": "order_update",
        "language": "es",
        "category": "UTILITY",
        "components": [
            {
                "type": "BODY",
                "text": "Hola {{1}}, tu pedido {{2}} ha sido actualizado.",
                "example": {"body_text": [["Lucía", "#48213"]]},
            }
        ],
    },
    {
        "name": "appointment_reminder",
        "language": "en_US",
        "category": "UTILITY",
        "parameter_format": "NAMED",
        "components": [
            {
                "type": "BODY",
                "text": "Hi {{customer_name}}, this is a reminder of your appointment on "
                "{{appointment_date}}.",
                "example": {
                    "body_text_named_params": [
                        {"param_name": "customer_name", "example": "Sheena"},
                        {"param_name": "appointment_date", "example": "June 3"},
                    ]
                },
            }
        ],
    },
    {
        "name": "verification_code",
        "language": "en_US",
        "category": "AUTHENTICATION",
        "components": [
            {"type": "BODY", "add_security_recommendation": True},
            {"type": "FOOTER", "code_expiration_minutes": 10},
            {
                "type": "BUTTONS",
                "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy Code"}],
            },
        ],
    },
]


# ---------------------------------------------------------------------------------------------
# Simulated customers


def _voice_note(rng: random.Random) -> bytes:
    # An Ogg page header with an OpusHead packet and noise: enough for an audio/ogg attachment.
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    page = b"OggS\x00\x02" + b"\x00" * 8 + struct.pack("<II", rng.getrandbits(32), 0)
    return page + b"\x00\x00\x00\x00\x01" + bytes([len(head)]) + head + rng.randbytes(256)


_REACTIONS = ("\U0001f44d", "\u2764\ufe0f", "\U0001f64f", "\U0001f602", "\U0001f62e")


@dataclass
class _Customer:
    persona: Persona
    wa_id: str
    line: int = 0
    own_messages: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)


class CustomerChatter(Chatter):
    """Simulated customers writing to one business number, in several languages.

    Each customer follows a small shop/support dialogue and now and then sends a photo (a tiny
    PNG), a voice note, a location, a contact card, a receipt PDF, a reply quoting one of their
    own messages, or reacts to / thanks for the latest business message the simulator accepted
    for them. Deterministic for a given ``seed`` (apart from ids and timestamps).
    """

    def __init__(
        self,
        sim: WhatsAppSimulator,
        phone_number_id: str,
        *,
        seed: int = 0,
        customers: int | None = None,
        languages: Sequence[str] | None = None,
    ) -> None:
        self.sim = sim
        self.phone_number_id = phone_number_id
        self.rng = random.Random(seed)
        personas = personas_speaking(languages)
        count = customers or len(personas)
        self.customers: list[_Customer] = []
        for i in range(count):
            persona = personas[i % len(personas)]
            digits = "".join(str(self.rng.randrange(10)) for _ in range(persona.local_digits))
            self.customers.append(_Customer(persona, persona.country_prefix + digits))
        with sim._lock:
            self._display = sim._number(phone_number_id).display_phone_number

    def step(self) -> str:
        """Send one plausible next message from one customer; returns its wamid."""
        customer = self.rng.choice(self.customers)
        p = customer.persona
        business = self.sim.last_outbound(self.phone_number_id, customer.wa_id)
        if business is not None and business not in customer.answered:
            customer.answered.add(business)
            if self.rng.random() < 0.3:
                message = {
                    "type": "reaction",
                    "reaction": {"message_id": business, "emoji": self.rng.choice(_REACTIONS)},
                }
            else:
                message = {
                    "context": {"from": self._display, "id": business},
                    "type": "text",
                    "text": {"body": self.rng.choice(p.thanks)},
                }
            return self._send(customer, message)
        roll = self.rng.random()
        if roll < 0.08:
            colour = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
            media_id = self.sim.customer_uploads(
                self.phone_number_id, tiny_png(colour), "image/png"
            )
            message = {"type": "image", "image": {"caption": p.caption, "id": media_id}}
        elif roll < 0.13:
            media_id = self.sim.customer_uploads(
                self.phone_number_id, _voice_note(self.rng), "audio/ogg; codecs=opus"
            )
            message = {"type": "audio", "audio": {"id": media_id, "voice": True}}
        elif roll < 0.18:
            location = (
                dict(p.location)
                if self.rng.random() < 0.7
                else {
                    "latitude": p.location["latitude"],
                    "longitude": p.location["longitude"],
                }
            )
            message = {"type": "location", "location": location}
        elif roll < 0.21:
            first, last = p.friend
            phone = p.country_prefix + "".join(
                str(self.rng.randrange(10)) for _ in range(p.local_digits)
            )
            message = {
                "type": "contacts",
                "contacts": [
                    {
                        "name": {
                            "first_name": first,
                            "last_name": last,
                            "formatted_name": f"{first} {last}",
                        },
                        "phones": [{"phone": f"+{phone}", "wa_id": phone, "type": "MOBILE"}],
                    }
                ],
            }
        elif roll < 0.24:
            media_id = self.sim.customer_uploads(
                self.phone_number_id,
                tiny_pdf("Receipt 48213"),
                "application/pdf",
                "receipt-48213.pdf",
            )
            message = {
                "type": "document",
                "document": {"caption": "48213", "filename": "receipt-48213.pdf", "id": media_id},
            }
        elif roll < 0.30 and customer.own_messages:
            message = {
                "context": {"from": customer.wa_id, "id": self.rng.choice(customer.own_messages)},
                "type": "text",
                "text": {"body": p.follow_up},
            }
        else:
            body = p.script[customer.line % len(p.script)]
            customer.line += 1
            message = {"type": "text", "text": {"body": body}}
        return self._send(customer, message)

    def _send(self, customer: _Customer, message: dict[str, Any]) -> str:
        wamid = self.sim.customer_sends(
            self.phone_number_id, customer.wa_id, customer.persona.name, message
        )
        customer.own_messages = [*customer.own_messages[-9:], wamid]
        return wamid


# ---------------------------------------------------------------------------------------------
# Command line


def _load_config(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, list):
        return data, []
    return list(data.get("numbers", [])), list(data.get("templates", []))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m madoguchi.simulators.whatsapp --port P --config numbers.json``.

    ``numbers.json`` is a list of :meth:`WhatsAppSimulator.add_number` keyword arguments, or an
    object ``{"numbers": [...], "templates": [...]}`` where each template is a set of
    :meth:`WhatsAppSimulator.add_template` keyword arguments.
    """
    parser = argparse.ArgumentParser(description="Fake WhatsApp Cloud API on the loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", required=True, help="JSON list of add_number kwargs")
    parser.add_argument("--sync-window-errors", action="store_true")
    parser.add_argument("--no-auto-read", action="store_true")
    parser.add_argument(
        "--status-delays", default="0.05,0.1,0.2", help="sent,delivered,read delays in seconds"
    )
    parser.add_argument(
        "--status-batch-window",
        type=float,
        default=0.0,
        help="aggregate each number's statuses for N seconds into one POST (A3)",
    )
    parser.add_argument(
        "--chatter", type=float, default=0.0, help="simulated customers write every N seconds"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    parts = [float(x) for x in args.status_delays.split(",")]
    if len(parts) != 3:
        parser.error("--status-delays takes three numbers")
    delays = (parts[0], parts[1], parts[2])
    sim = WhatsAppSimulator(
        sync_window_errors=args.sync_window_errors,
        auto_read=not args.no_auto_read,
        status_delays=delays,
        status_batch_window=args.status_batch_window,
    )
    numbers, templates = _load_config(args.config)
    for kwargs in numbers:
        sim.add_number(**kwargs)
    for kwargs in templates:
        sim.add_template(**kwargs)
    _load_validators()

    sock = bind_socket(args.host, args.port)
    stop = threading.Event()
    if args.chatter > 0:
        for i, pnid in enumerate(sim.numbers()):
            chatter = CustomerChatter(sim, pnid, seed=args.seed + i)
            threading.Thread(
                target=chatter.run, args=(args.chatter, stop), name=f"chatter-{pnid}", daemon=True
            ).start()
    port = sock.getsockname()[1]
    print(f"WhatsApp simulator listening on http://{args.host}:{port}", flush=True)
    sim.serve_forever(sock, stop)


if __name__ == "__main__":
    main()
