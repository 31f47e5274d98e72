"""A faithful fake of the Viber REST Bot API for the demo, the tests and benchmarks.

What it implements, following ``PROTOCOLS.md`` section B (B8 is its checklist):

- ``POST /pa/set_webhook`` (B2): the URL is probed with a signed ``{"event": "webhook"}``
  callback before the answer, and refused (status 1, invalidUrl) unless the probe gets HTTP 200;
  ``"url": ""`` removes the webhook; ``event_types`` filters the optional callbacks.
- ``POST /pa/get_account_info``: the bot's id, name, uri, webhook, subscribers and members.
- ``POST /pa/send_message`` (B5, B6): ``X-Viber-Auth-Token`` (or ``auth_token`` in the body, as
  the old Python SDK sends it) with status 2; the 30 KB body limit and bad JSON (3); every field
  of every type checked (3 badData, 4 missingData); no webhook (10); unknown receivers (5);
  receivers who are not subscribed (6, so a user who only opened the chat, or unsubscribed);
  receivers without a suitable device (11); the cap of 100 messages to a user within an hour
  without a reply (12, answered in the shape B5 quotes); accepted sends answer with an int64
  ``message_token`` and are followed by signed ``delivered`` / ``seen`` callbacks (or ``failed``
  for a user set up to fail), each only if ``set_webhook`` asked for it. The ``media`` URL of
  a picture, video or file is downloaded first (:meth:`ViberSimulator.fetched_media`); a URL
  that cannot be downloaded ends in a ``failed`` callback instead of the receipts.
- Callbacks (B3, B4): compact UTF-8 JSON, ``X-Viber-Content-Signature`` = hex HMAC-SHA256 of the
  exact bytes with the auth token, retried on anything but HTTP 200 (B7: "several times for an
  hour", here ``retry_delays``). ``message``, ``subscribed``, ``unsubscribed`` and
  ``conversation_started``, whose HTTP answer is read as the welcome message (B6).
- Users' media: :meth:`ViberSimulator.user_uploads` stores bytes served without auth at
  ``/media/<id>/<name>``, the temporary URL a ``message`` callback carries.
- Simulated users (:class:`ViberChatter`) who open the chat, subscribe and write in several
  languages, and fault injection.

Control API under ``/_sim/`` (JSON; unauthenticated: loopback only, never expose it):

- ``POST /_sim/user_message`` ``{auth_token, user_id, message[, name, language]}`` → ``{"message_token"}``
- ``POST /_sim/subscribe`` / ``/_sim/unsubscribe`` ``{auth_token, user_id[, name]}``
- ``POST /_sim/conversation_started`` ``{auth_token, user_id[, context, name]}`` → ``{"welcome"}``
- ``GET /_sim/sent?auth_token=...&since=N`` → ``{"data": [...], "next": N}``
- ``POST /_sim/faults`` ``{auth_token, faults: [["status", 12], ["http", 500], ["timeout", 2]]}``
- ``GET /_sim/stats`` → counters

This module must not import Django: it runs in benchmark and test processes of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .common import (
    Chatter,
    RequestRecorder,
    RunningServer,
    Scheduler,
    SimulatorCore,
    bind_socket,
    personas_speaking,
    tiny_pdf,
    tiny_png,
)

__all__ = [
    "ConversationStart",
    "RunningServer",
    "SentMessage",
    "ViberChatter",
    "ViberSimulator",
    "WebhookAttempt",
    "encode_payload",
    "sign_payload",
]

log = logging.getLogger(__name__)

STATUS_NAMES: dict[int, str] = {
    0: "ok",
    1: "invalidUrl",
    2: "invalidAuthToken",
    3: "badData",
    4: "missingData",
    5: "receiverNotRegistered",
    6: "receiverNotSubscribed",
    7: "publicAccountBlocked",
    8: "publicAccountNotFound",
    9: "publicAccountSuspended",
    10: "webhookNotSet",
    11: "receiverNoSuitableDevice",
    12: "tooManyRequests",
    13: "apiVersionNotSupported",
    14: "incompatibleWithVersion",
}
REQUEST_MAX_BYTES = 30 * 1024  # B1
MAX_API_VERSION = 10
OPTIONAL_EVENTS = ("delivered", "seen", "failed", "conversation_started")
KNOWN_EVENTS = frozenset({*OPTIONAL_EVENTS, "subscribed", "unsubscribed", "message"})
SEND_TYPES = frozenset(
    {"text", "picture", "video", "file", "contact", "location", "url", "sticker", "rich_media"}
)
# Sends whose ``media`` URL Viber downloads (B5).
MEDIA_SEND_TYPES = frozenset({"picture", "video", "file"})
_URL = re.compile(r"https?://[^\s]+", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Wire helpers


def encode_payload(obj: Any) -> bytes:
    """A callback body as Viber sends it: compact JSON in UTF-8 (the exact signed bytes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sign_payload(body: bytes, auth_token: str) -> str:
    """The ``X-Viber-Content-Signature`` of ``body``: lowercase hex, no prefix (B3)."""
    return hmac.new(auth_token.encode(), body, hashlib.sha256).hexdigest()


def _answer(status: int, message: str = "", **extra: Any) -> Response:
    body = {"status": status, "status_message": message or STATUS_NAMES.get(status, "error")}
    body.update(extra)
    return Response(encode_payload(body), media_type="application/json")


class ViberError(Exception):
    """A logical API error: answered with HTTP 200 and ``{"status": code, ...}`` (B1)."""

    def __init__(self, status: int, message: str = "", **extra: Any) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message or STATUS_NAMES.get(status, "error")
        self.extra = extra


# ---------------------------------------------------------------------------------------------
# Records exposed to tests


class SentMessage(NamedTuple):
    """One accepted send (``via`` is "send_message" or "welcome")."""

    auth_token: str
    receiver: str
    body: dict[str, Any]
    message_token: int
    time: float
    via: str = "send_message"


class WebhookAttempt(NamedTuple):
    """One callback POST: ``status`` is the HTTP status or an error description."""

    url: str
    status: int | str
    body: bytes
    response: bytes = b""


class ConversationStart(NamedTuple):
    """What a ``conversation_started`` callback got back: the welcome message Viber would show
    (None if the answer had none) or why the answer was not a valid one."""

    attempt: WebhookAttempt
    welcome: dict[str, Any] | None
    problem: str = ""


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class _User:
    id: str
    name: str
    language: str
    country: str
    api_version: int
    avatar: str
    registered: bool = True
    device_ok: bool = True
    fail_delivery: str = ""  # non-empty: sends are followed by a failed callback with this desc


@dataclass
class _Account:
    auth_token: str
    id: str
    name: str
    uri: str
    webhook_url: str = ""
    event_types: tuple[str, ...] = OPTIONAL_EVENTS
    send_name: bool = True
    send_photo: bool = True
    subscribed: set[str] = field(default_factory=set)
    # user id -> times of sends since the user's latest message (the B5 cap)
    unanswered: dict[str, deque[float]] = field(default_factory=dict)
    faults: deque[tuple[Any, ...]] = field(default_factory=deque)


@dataclass
class _Media:
    data: bytes
    mime_type: str
    filename: str


# ---------------------------------------------------------------------------------------------
# The simulator


class ViberSimulator(SimulatorCore):
    """In-memory Viber REST Bot API with a Starlette app (:attr:`app`) and a Python control API.

    Thread-safe: state is guarded by one lock never held during network I/O. Callbacks caused by
    API requests (receipts) are delivered from a background pool; callbacks caused by control
    calls (:meth:`user_sends`, :meth:`subscribe`, ...) are delivered in the caller's thread,
    retries included, before returning.

    Options:
        receipt_delays: seconds before ``delivered``, then between ``delivered`` and ``seen``.
        auto_seen: emit ``seen`` after ``delivered``.
        auto_receipts: emit receipts at all (benchmarks of the send path may turn it off).
        retry_delays: waits between callback attempts; ``len + 1`` attempts at most.
        webhook_timeout: seconds per callback attempt (and for the set_webhook probe).
        unanswered_cap / cap_window_seconds: at most this many messages to one user within the
            window without a reply from them (B5: 100 per hour).
        require_https: refuse ``http://`` webhook URLs as Viber does (off: tests use loopback).
        clock: wall clock for callback timestamps and the cap (tests may fake it).
    """

    _errors_key = "errors_by_status"  # Viber answers with a status, not an error code

    def __init__(
        self,
        *,
        receipt_delays: tuple[float, float] = (0.05, 0.1),
        auto_seen: bool = True,
        auto_receipts: bool = True,
        retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
        webhook_timeout: float = 5.0,
        delivery_workers: int = 8,
        unanswered_cap: int = 100,
        cap_window_seconds: float = 3600.0,
        require_https: bool = False,
        log_limit: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receipt_delays = receipt_delays
        self.auto_seen = auto_seen
        self.auto_receipts = auto_receipts
        self.retry_delays = tuple(retry_delays)
        self.webhook_timeout = webhook_timeout
        self.unanswered_cap = unanswered_cap
        self.cap_window_seconds = cap_window_seconds
        self.require_https = require_https
        self.log_limit = log_limit
        self.clock = clock
        self.base_url = "http://127.0.0.1"  # set by serve_in_thread; media URLs are built on it
        self._delivery_workers = delivery_workers

        self._lock = threading.RLock()
        self._accounts: dict[str, _Account] = {}
        self._users: dict[str, _User] = {}
        self._media: dict[str, _Media] = {}
        self._outbound: dict[int, tuple[str, str]] = {}  # message_token -> (auth_token, user)
        self._fetched: dict[str, bytes] = {}  # media URL of a send -> the bytes downloaded
        self._tokens = itertools.count(random.randrange(5 * 10**18, 6 * 10**18))
        self._ids = itertools.count(1)
        self._stats: dict[str, Any] = {
            "requests": 0,
            "sends_accepted": 0,
            "sends_rejected": 0,
            "user_messages": 0,
            "webhook_attempts": 0,
            "webhooks_ok": 0,
            "webhooks_failed": 0,
            "errors_by_status": {},
            "media_fetch_failures": 0,
        }
        self.sent: list[SentMessage] = []
        self.requests: list[tuple[str, str, int]] = []
        self.webhook_log: list[WebhookAttempt] = []
        self._http = httpx.Client(timeout=webhook_timeout, follow_redirects=False)
        self._closed = False
        self._scheduler: Scheduler | None = None
        self.app = self._build_app()

    # -- configuration ----------------------------------------------------------------------

    def add_account(
        self,
        auth_token: str,
        *,
        account_id: str | None = None,
        name: str = "Madoguchi Demo Shop",
        uri: str = "madoguchidemo",
        webhook_url: str = "",
        event_types: Iterable[str] = OPTIONAL_EVENTS,
    ) -> str:
        """Register a bot; returns its id (``pa:<digits>``). ``webhook_url`` presets a webhook
        without the probe (a bot whose webhook was set earlier)."""
        with self._lock:
            account = _Account(
                auth_token=auth_token,
                id=account_id or f"pa:{random.randrange(10**18, 10**19)}",
                name=name,
                uri=uri,
                webhook_url=webhook_url,
                event_types=tuple(event_types),
            )
            self._accounts[auth_token] = account
            return account.id

    def add_user(
        self,
        user_id: str | None = None,
        *,
        name: str = "Viber User",
        language: str = "en",
        country: str = "GB",
        api_version: int = MAX_API_VERSION,
        avatar: str = "",
        registered: bool = True,
        device_ok: bool = True,
        fail_delivery: str = "",
    ) -> str:
        """Register (or reconfigure) a Viber user; returns the id (random base64 if None).
        ``registered=False`` makes sends answer 5, ``device_ok=False`` 11; ``fail_delivery``
        makes accepted sends end in a ``failed`` callback with that description."""
        user_id = user_id or base64.b64encode(random.randbytes(16)).decode()
        with self._lock:
            self._users[user_id] = _User(
                user_id, name, language, country, api_version, avatar,
                registered, device_ok, fail_delivery,
            )  # fmt: skip
        return user_id

    def inject_faults(self, auth_token: str, faults: Iterable[Sequence[Any]]) -> None:
        """Queue answers for the next ``send_message`` requests of a bot, one per request:
        ``("status", code[, message])`` answers that Viber status; ``("http", status[, body])``
        answers that HTTP status; ``("timeout", seconds)`` waits, then handles the request.
        Raises ``ValueError`` for an unknown fault."""
        parsed = []
        for fault in faults:
            if len(fault) < 2 or fault[0] not in ("status", "http", "timeout"):
                raise ValueError(f"unknown fault {fault!r}")
            parsed.append(tuple(fault))
        with self._lock:
            self._account(auth_token).faults.extend(parsed)

    # -- users acting ---------------------------------------------------------------------

    def user_sends(
        self,
        auth_token: str,
        user_id: str,
        message: Mapping[str, Any] | str,
        *,
        silent: bool = False,
        timestamp_ms: int | None = None,
        message_token: int | None = None,
    ) -> int:
        """A user writes to a bot; returns the message token. ``message`` is a B4 message
        object or a string (text). The user becomes subscribed without a ``subscribed``
        callback, and the B5 cap resets. Delivered in this thread, retries included; passing
        an earlier ``message_token`` re-sends it as Viber's redeliveries do."""
        if isinstance(message, str):
            message = {"type": "text", "text": message}
        if not message.get("type"):
            raise ValueError("message needs a 'type'")
        with self._lock:
            account = self._account(auth_token)
            user = self._user(user_id)
            account.subscribed.add(user.id)
            account.unanswered.pop(user.id, None)
            token = message_token or next(self._tokens)
            payload: dict[str, Any] = {
                "event": "message",
                "timestamp": self._now_ms(timestamp_ms),
                "chat_hostname": _hostname(),
                "message_token": token,
                "sender": self._user_object(account, user),
                "message": copy.deepcopy(dict(message)),
            }
            if silent:
                payload["silent"] = True
            self._stats["user_messages"] += 1
        self._callback_sync(account, encode_payload(payload))
        return token

    def user_uploads(self, data: bytes, mime_type: str, filename: str = "file") -> str:
        """Store media a user sends; returns its temporary URL for a ``message`` callback."""
        with self._lock:
            media_id = str(next(self._ids))
            self._media[media_id] = _Media(data, mime_type, filename)
        return f"{self.base_url}/media/{media_id}/{urllib.parse.quote(filename)}"

    def subscribe(self, auth_token: str, user_id: str) -> WebhookAttempt:
        """The user subscribes to the bot: a ``subscribed`` callback."""
        with self._lock:
            account, user = self._account(auth_token), self._user(user_id)
            account.subscribed.add(user.id)
            payload = {
                "event": "subscribed",
                "timestamp": self._now_ms(),
                "chat_hostname": _hostname(),
                "user": self._user_object(account, user),
                "message_token": next(self._tokens),
            }
        return self._callback_sync(account, encode_payload(payload))

    def unsubscribe(self, auth_token: str, user_id: str) -> WebhookAttempt:
        """The user unsubscribes: an ``unsubscribed`` callback; later sends answer 6."""
        with self._lock:
            account, user = self._account(auth_token), self._user(user_id)
            account.subscribed.discard(user.id)
            payload = {
                "event": "unsubscribed",
                "timestamp": self._now_ms(),
                "chat_hostname": _hostname(),
                "user_id": user.id,
                "message_token": next(self._tokens),
            }
        return self._callback_sync(account, encode_payload(payload))

    def open_conversation(
        self, auth_token: str, user_id: str, *, context: str = ""
    ) -> ConversationStart | None:
        """The user opens the bot's chat (B6): a ``conversation_started`` callback, whose HTTP
        answer is read as the welcome message and validated like a send without ``receiver``.
        A valid welcome is recorded in :attr:`sent` (``via="welcome"``). Opening the chat does
        not subscribe the user. None when the bot did not ask for this event."""
        with self._lock:
            account, user = self._account(auth_token), self._user(user_id)
            if "conversation_started" not in account.event_types:
                return None
            payload: dict[str, Any] = {
                "event": "conversation_started",
                "timestamp": self._now_ms(),
                "chat_hostname": _hostname(),
                "message_token": next(self._tokens),
                "type": "open",
                "user": self._user_object(account, user),
                "subscribed": user.id in account.subscribed,
            }
            if context:
                payload["context"] = context
        attempt = self._callback_sync(account, encode_payload(payload))
        if attempt.status != 200 or not attempt.response.strip():
            return ConversationStart(attempt, None)
        try:
            welcome = json.loads(attempt.response)
            if not isinstance(welcome, dict):
                raise ViberError(3, "the welcome message must be a JSON object")
            if "receiver" in welcome:
                raise ViberError(3, "a welcome message has no receiver")
            _validate_message(welcome)
        except (ValueError, ViberError) as exc:
            return ConversationStart(attempt, None, str(exc))
        with self._lock:
            token = next(self._tokens)
            self.sent.append(
                SentMessage(auth_token, user.id, welcome, token, self.clock(), via="welcome")
            )
            self._trim(self.sent)
        return ConversationStart(attempt, welcome)

    def deliver_raw(self, auth_token: str, payload: Mapping[str, Any] | bytes) -> WebhookAttempt:
        """Sign and POST any payload to a bot's webhook, in this thread, with retries."""
        with self._lock:
            account = self._account(auth_token)
        body = payload if isinstance(payload, bytes) else encode_payload(payload)
        return self._callback_sync(account, body)

    def emit_receipt(
        self, auth_token: str, message_token: int, event: str, *, desc: str = ""
    ) -> WebhookAttempt:
        """Deliver one ``delivered`` / ``seen`` / ``failed`` callback for an accepted send, in
        this thread (for tests of duplicates and order). Raises ``KeyError`` for an unknown
        token."""
        with self._lock:
            account = self._account(auth_token)
            owner, user_id = self._outbound[int(message_token)]
            if owner != auth_token:
                raise KeyError(message_token)
            body = encode_payload(self._receipt(int(message_token), user_id, event, desc))
        return self._callback_sync(account, body)

    # -- queries ----------------------------------------------------------------------------

    def is_subscribed(self, auth_token: str, user_id: str) -> bool:
        with self._lock:
            return user_id in self._account(auth_token).subscribed

    def webhook_of(self, auth_token: str) -> str:
        with self._lock:
            return self._account(auth_token).webhook_url

    def sent_to(self, auth_token: str, user_id: str | None = None) -> list[SentMessage]:
        """Accepted sends (and welcome messages) of a bot, optionally to one user."""
        with self._lock:
            return [
                s
                for s in self.sent
                if s.auth_token == auth_token and (user_id is None or s.receiver == user_id)
            ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = copy.deepcopy(self._stats)
            out["accounts"] = len(self._accounts)
            out["users"] = len(self._users)
            return out

    # -- internals: state (call with the lock held) ------------------------------------------

    def _account(self, auth_token: str) -> _Account:
        try:
            return self._accounts[auth_token]
        except KeyError:
            raise KeyError("unknown bot (auth token)") from None

    def _user(self, user_id: str) -> _User:
        try:
            return self._users[user_id]
        except KeyError:
            raise KeyError(f"unknown user {user_id!r}") from None

    def _now_ms(self, given: int | None = None) -> int:
        return int(given if given is not None else self.clock() * 1000)

    @staticmethod
    def _user_object(account: _Account, user: _User) -> dict[str, Any]:
        out: dict[str, Any] = {"id": user.id}
        if account.send_name:
            out["name"] = user.name
        if account.send_photo and user.avatar:
            out["avatar"] = user.avatar
        out.update(language=user.language, country=user.country, api_version=user.api_version)
        return out

    def _receipt(self, token: int, user_id: str, event: str, desc: str = "") -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event": event,
            "timestamp": self._now_ms(),
            "chat_hostname": _hostname(),
            "message_token": token,
            "user_id": user_id,
        }
        if event == "failed":
            payload["desc"] = desc or "failure description"
        return payload

    # -- internals: callbacks ---------------------------------------------------------------

    def _attempt(self, url: str | None, auth_token: str, body: bytes) -> WebhookAttempt:
        if not url:
            return WebhookAttempt("", "skipped: no webhook", body)
        headers = {
            "Content-Type": "application/json",
            "X-Viber-Content-Signature": sign_payload(body, auth_token),
        }
        try:
            response = self._http.post(url, content=body, headers=headers)
            return WebhookAttempt(url, response.status_code, body, response.content)
        except (httpx.HTTPError, ValueError) as exc:
            return WebhookAttempt(url, f"{type(exc).__name__}: {exc}", body)

    def _close_transport(self) -> None:
        self._http.close()

    def _callback_sync(self, account: _Account, body: bytes) -> WebhookAttempt:
        """Deliver in the caller's thread to the account's webhook, retries included."""
        return self._deliver_sync(account.webhook_url, account.auth_token, body)

    def _callback_async(
        self, auth_token: str, body: bytes, then: Callable[[], None] | None
    ) -> None:
        """Deliver from the pool, retries included, to the webhook the account has at each
        attempt (it may change between retries); ``then`` once done or given up."""

        def post() -> WebhookAttempt:
            with self._lock:
                account = self._accounts.get(auth_token)
                url = account.webhook_url if account else ""
            return self._post_once(url, auth_token, body)

        self._retry_async(post, then)

    def _run_receipts(
        self, auth_token: str, token: int, steps: list[tuple[float, str, str]]
    ) -> None:
        """Emit ``steps`` (delay, event, desc) in order, each after the previous is done."""
        if not steps:
            return
        delay, event, desc = steps[0]

        def emit() -> None:
            with self._lock:
                owner = self._outbound.get(token)
                if owner is None:
                    return
                body = encode_payload(self._receipt(token, owner[1], event, desc))
            self._callback_async(
                auth_token, body, lambda: self._run_receipts(auth_token, token, steps[1:])
            )

        self._call_later(delay, emit)

    # -- the HTTP application ---------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/pa/set_webhook", self._set_webhook, methods=["POST"]),
            Route("/pa/get_account_info", self._get_account_info, methods=["POST"]),
            Route("/pa/send_message", self._send_message, methods=["POST"]),
            Route("/media/{media_id}/{name:path}", self._media_download, methods=["GET"]),
            Route("/_sim/user_message", self._ctl_user_message, methods=["POST"]),
            Route("/_sim/subscribe", self._ctl_subscribe, methods=["POST"]),
            Route("/_sim/unsubscribe", self._ctl_subscribe, methods=["POST"]),
            Route("/_sim/conversation_started", self._ctl_conversation, methods=["POST"]),
            Route("/_sim/sent", self._ctl_sent, methods=["GET"]),
            Route("/_sim/faults", self._ctl_faults, methods=["POST"]),
            Route("/_sim/stats", self._ctl_stats, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(RequestRecorder, record=self._record_request)],
            exception_handlers={ViberError: self._error_response},
        )

    async def _error_response(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ViberError)
        self._count_error(exc.status)
        return _answer(exc.status, exc.message, **exc.extra)

    async def _read(self, request: Request) -> tuple[_Account, dict[str, Any]]:
        """The body (≤ 30 KB, a JSON object) and the bot its token names; raises ViberError."""
        raw = await request.body()
        header = request.headers.get("x-viber-auth-token")
        if len(raw) > REQUEST_MAX_BYTES:
            raise ViberError(3, f"Request is larger than {REQUEST_MAX_BYTES} bytes")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            body = None
        token = header
        if token is None and isinstance(body, dict) and isinstance(body.get("auth_token"), str):
            token = body["auth_token"]  # the old Python SDK's way (B1)
        if not token:
            raise ViberError(2, "missing_auth_token")
        with self._lock:
            account = self._accounts.get(token)
        if account is None:
            raise ViberError(2, "invalidAuthToken")
        if not isinstance(body, dict):
            raise ViberError(3, "Bad data: the body is not a JSON object")
        return account, body

    async def _set_webhook(self, request: Request) -> Response:
        account, body = await self._read(request)
        url = body.get("url")
        if not isinstance(url, str):
            raise ViberError(4, "missingData: url")
        events = body.get("event_types", list(OPTIONAL_EVENTS))
        if not isinstance(events, list) or not all(
            isinstance(e, str) and e in KNOWN_EVENTS for e in events
        ):
            raise ViberError(3, "badData: event_types")
        for flag in ("send_name", "send_photo"):
            if flag in body and not isinstance(body[flag], bool):
                raise ViberError(3, f"badData: {flag}")
        if url == "":
            with self._lock:
                account.webhook_url = ""
            return _answer(0)
        parts = urllib.parse.urlsplit(url)
        schemes = ("https",) if self.require_https else ("http", "https")
        if parts.scheme not in schemes or not parts.hostname:
            raise ViberError(1, "Invalid URL")
        probe = encode_payload(
            {
                "event": "webhook",
                "timestamp": self._now_ms(),
                "chat_hostname": _hostname(),
                "message_token": next(self._tokens),
            }
        )
        attempt = await run_in_threadpool(self._post_once, url, account.auth_token, probe)
        if attempt.status != 200:
            raise ViberError(1, f"Failed to connect to the webhook: {attempt.status}")
        chosen = tuple(e for e in events if e in OPTIONAL_EVENTS)
        with self._lock:
            account.webhook_url = url
            account.event_types = chosen
            account.send_name = body.get("send_name", True)
            account.send_photo = body.get("send_photo", True)
        return _answer(0, chat_hostname=_hostname(), event_types=list(chosen))

    async def _get_account_info(self, request: Request) -> Response:
        account, _body = await self._read(request)
        with self._lock:
            info = {
                "id": account.id,
                "chat_hostname": _hostname(),
                "name": account.name,
                "uri": account.uri,
                "icon": "",
                "background": "",
                "category": "Companies",
                "subcategory": "Customer service",
                "location": {"lat": 35.681236, "lon": 139.767125},
                "country": "JP",
                "webhook": account.webhook_url,
                "event_types": list(account.event_types) if account.webhook_url else [],
                "subscribers_count": len(account.subscribed),
                "members": [{"id": "Xm9uZ0FkbWluMDE=", "name": "Admin", "role": "admin"}],
            }
        return _answer(0, **info)

    async def _send_message(self, request: Request) -> Response:
        account, body = await self._read(request)
        with self._lock:
            fault = account.faults.popleft() if account.faults else None
        if fault is not None:
            if fault[0] == "timeout":
                await asyncio.sleep(float(fault[1]))
            elif fault[0] == "http":
                return Response(
                    str(fault[2]) if len(fault) > 2 else "Service Unavailable",
                    status_code=int(fault[1]),
                    media_type="text/plain",
                )
            else:
                self._count_error(int(fault[1]))
                return _answer(int(fault[1]), str(fault[2]) if len(fault) > 2 else "")
        try:
            return self._accept_send(account, body)
        except ViberError:
            with self._lock:
                self._stats["sends_rejected"] += 1
            raise

    def _accept_send(self, account: _Account, body: dict[str, Any]) -> Response:
        if not account.webhook_url:
            raise ViberError(10, "webhookNotSet")
        receiver = body.get("receiver")
        if not isinstance(receiver, str) or not receiver:
            raise ViberError(4, "missingData: receiver")
        min_api = _validate_message(body)
        now = self.clock()
        with self._lock:
            user = self._users.get(receiver)
            if user is None or not user.registered:
                raise ViberError(5, "receiverNotRegistered")
            if receiver not in account.subscribed:
                raise ViberError(6, "receiverNotSubscribed")
            if not user.device_ok or (min_api is not None and min_api > user.api_version):
                raise ViberError(11, "receiverNoSuitableDevice")
            recent = account.unanswered.setdefault(receiver, deque())
            while recent and recent[0] <= now - self.cap_window_seconds:
                recent.popleft()
            if len(recent) >= self.unanswered_cap:
                # B5 quotes the answer with a (string) token and a hostname.
                raise ViberError(
                    12,
                    "Too many requests",
                    message_token=str(next(self._tokens)),
                    chat_hostname=_hostname(),
                )
            recent.append(now)
            token = next(self._tokens)
            self._outbound[token] = (account.auth_token, receiver)
            self.sent.append(SentMessage(account.auth_token, receiver, body, token, now))
            self._trim(self.sent)
            self._stats["sends_accepted"] += 1
            events = account.event_types
            fail = user.fail_delivery
        first, second = self.receipt_delays
        steps: list[tuple[float, str, str]] = []
        if self.auto_receipts:
            if fail:
                if "failed" in events:
                    steps.append((first, "failed", fail))
            else:
                if "delivered" in events:
                    steps.append((first, "delivered", ""))
                if self.auto_seen and "seen" in events:
                    steps.append((second, "seen", ""))
        media = body.get("media") if body.get("type") in MEDIA_SEND_TYPES else None
        if isinstance(media, str):
            failed = "failed" in events and self.auto_receipts
            self._call_later(
                0, lambda: self._fetch_then(account.auth_token, token, media, steps, failed)
            )
        else:
            self._run_receipts(account.auth_token, token, steps)
        return _answer(0, message_token=token, chat_hostname=_hostname(), billing_status=1)

    def _fetch_then(
        self,
        auth_token: str,
        token: int,
        url: str,
        steps: list[tuple[float, str, str]],
        report_failure: bool,
    ) -> None:
        """Download a sent file from its URL as Viber does before delivering it [INFER: the
        contract does not say how an unreachable URL is reported; a ``failed`` callback is the
        only asynchronous channel], keeping the bytes for :meth:`fetched_media`; then run the
        receipts, or a ``failed`` callback when the download did not succeed."""
        problem = ""
        try:
            response = self._http.get(url)
            if response.status_code == 200:
                with self._lock:
                    self._fetched[url] = response.content
            else:
                problem = f"Media could not be downloaded (HTTP {response.status_code})"
        except httpx.HTTPError as exc:
            problem = f"Media could not be downloaded ({type(exc).__name__})"
        if problem:
            with self._lock:
                self._stats["media_fetch_failures"] += 1
            steps = [(0.0, "failed", problem)] if report_failure else []
        self._run_receipts(auth_token, token, steps)

    def fetched_media(self, url: str) -> bytes | None:
        """The bytes downloaded from ``url`` for a media send, or None (not fetched, failed)."""
        with self._lock:
            return self._fetched.get(url)

    async def _media_download(self, request: Request) -> Response:
        with self._lock:
            media = self._media.get(request.path_params["media_id"])
        if media is None:
            return Response("Not found", status_code=404, media_type="text/plain")
        return Response(media.data, media_type=media.mime_type)

    # -- /_sim control API ------------------------------------------------------------------

    @staticmethod
    async def _ctl_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise ViberError(3, "a JSON object is expected")
        return body

    def _ensure_user(self, body: Mapping[str, Any]) -> str:
        user_id = str(body["user_id"])
        with self._lock:
            known = user_id in self._users
        if not known:
            self.add_user(
                user_id,
                name=str(body.get("name", "Viber User")),
                language=str(body.get("language", "en")),
            )
        return user_id

    async def _ctl_user_message(self, request: Request) -> Response:
        body = await self._ctl_body(request)
        try:
            token = await run_in_threadpool(
                self.user_sends,
                str(body["auth_token"]),
                self._ensure_user(body),
                body["message"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Response(encode_payload({"error": str(exc)}), status_code=400)
        return Response(encode_payload({"message_token": token}), media_type="application/json")

    async def _ctl_subscribe(self, request: Request) -> Response:
        body = await self._ctl_body(request)
        action = self.subscribe if request.url.path.endswith("/subscribe") else self.unsubscribe
        try:
            attempt = await run_in_threadpool(
                action, str(body["auth_token"]), self._ensure_user(body)
            )
        except (KeyError, TypeError, ValueError) as exc:
            return Response(encode_payload({"error": str(exc)}), status_code=400)
        return Response(encode_payload({"webhook_status": str(attempt.status)}))

    async def _ctl_conversation(self, request: Request) -> Response:
        body = await self._ctl_body(request)
        try:
            started = await run_in_threadpool(
                lambda: self.open_conversation(
                    str(body["auth_token"]),
                    self._ensure_user(body),
                    context=str(body.get("context", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            return Response(encode_payload({"error": str(exc)}), status_code=400)
        welcome = started.welcome if started else None
        return Response(encode_payload({"welcome": welcome}), media_type="application/json")

    async def _ctl_sent(self, request: Request) -> Response:
        token = request.query_params.get("auth_token")
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return Response(encode_payload({"error": "since must be an integer"}), status_code=400)
        with self._lock:
            items = [
                {"receiver": s.receiver, "body": s.body, "message_token": s.message_token,
                 "time": s.time, "via": s.via}
                for s in self.sent[since:]
                if token is None or s.auth_token == token
            ]  # fmt: skip
            nxt = len(self.sent)
        return Response(encode_payload({"data": items, "next": nxt}), media_type="application/json")

    async def _ctl_faults(self, request: Request) -> Response:
        body = await self._ctl_body(request)
        try:
            faults = [tuple(f) for f in body["faults"]]
            self.inject_faults(str(body["auth_token"]), faults)
        except (KeyError, TypeError, ValueError) as exc:
            return Response(encode_payload({"error": str(exc)}), status_code=400)
        return Response(encode_payload({"queued": len(faults)}), media_type="application/json")

    async def _ctl_stats(self, request: Request) -> Response:
        return Response(encode_payload(self.stats()), media_type="application/json")


def _hostname() -> str:
    return f"SN-CHAT-{random.randrange(1, 30):02d}_"


# ---------------------------------------------------------------------------------------------
# send_message validation (B5)


def _need(body: Mapping[str, Any], key: str) -> Any:
    if key not in body or body[key] is None:
        raise ViberError(4, f"missingData: {key}")
    return body[key]


def _text(value: Any, key: str, limit: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not allow_empty and not value):
        raise ViberError(3, f"badData: {key}")
    return value


def _url(value: Any, key: str, limit: int = 2000) -> str:
    if not isinstance(value, str) or len(value) > limit or not _URL.fullmatch(value):
        raise ViberError(3, f"badData: {key}")
    return value


def _int(value: Any, key: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ViberError(3, f"badData: {key}")
    if high is not None and value > high:
        raise ViberError(3, f"badData: {key}")
    return value


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ViberError(3, f"badData: {key}")
    return float(value)


def _validate_message(body: Mapping[str, Any]) -> int | None:
    """Check everything of a send_message body but ``receiver``; returns ``min_api_version``.
    Raises ViberError 4 (a required field is absent) or 3 (a field is malformed)."""
    sender = _need(body, "sender")
    if not isinstance(sender, dict):
        raise ViberError(3, "badData: sender")
    _text(_need(sender, "name"), "sender.name", 28)
    if "avatar" in sender:
        _text(sender["avatar"], "sender.avatar", 2000, allow_empty=True)
    if "tracking_data" in body:
        _text(body["tracking_data"], "tracking_data", 4000, allow_empty=True)
    min_api = None
    if "min_api_version" in body:
        min_api = _int(body["min_api_version"], "min_api_version", 1)
        if min_api > MAX_API_VERSION:
            raise ViberError(13, "apiVersionNotSupported")
    kind = _need(body, "type")
    if kind not in SEND_TYPES:
        raise ViberError(3, "badData: type")
    if kind == "text":
        _text(_need(body, "text"), "text", 7000)
    elif kind == "picture":
        _url(_need(body, "media"), "media")
        _text(body.get("text", ""), "text", 768, allow_empty=True)
        if "thumbnail" in body:
            _url(body["thumbnail"], "thumbnail")
    elif kind == "video":
        _url(_need(body, "media"), "media")
        _int(_need(body, "size"), "size", 1, 26 * 1024 * 1024)
        if "duration" in body:
            _int(body["duration"], "duration", 0, 180)
        if "thumbnail" in body:
            _url(body["thumbnail"], "thumbnail")
    elif kind == "file":
        _url(_need(body, "media"), "media")
        _int(_need(body, "size"), "size", 1, 50 * 1024 * 1024)
        _text(_need(body, "file_name"), "file_name", 256)
    elif kind == "contact":
        contact = _need(body, "contact")
        if not isinstance(contact, dict):
            raise ViberError(3, "badData: contact")
        _text(_need(contact, "name"), "contact.name", 28)
        _text(_need(contact, "phone_number"), "contact.phone_number", 18)
    elif kind == "location":
        location = _need(body, "location")
        if not isinstance(location, dict):
            raise ViberError(3, "badData: location")
        _number(_need(location, "lat"), "location.lat", -90, 90)
        _number(_need(location, "lon"), "location.lon", -180, 180)
    elif kind == "url":
        _url(_need(body, "media"), "media")
    elif kind == "sticker":
        _int(_need(body, "sticker_id"), "sticker_id", 1)
    elif kind == "rich_media":
        _check_buttons(_need(body, "rich_media"), "rich_media")
    if "keyboard" in body:
        _check_buttons(body["keyboard"], "keyboard")
    return min_api


def _check_buttons(value: Any, key: str) -> None:
    if not isinstance(value, dict) or value.get("Type") != key:
        raise ViberError(3, f"badData: {key}")
    buttons = _need(value, "Buttons")
    if not isinstance(buttons, list) or not buttons or len(buttons) > 72:
        raise ViberError(3, f"badData: {key}.Buttons")
    for button in buttons:
        if not isinstance(button, dict) or not isinstance(button.get("ActionBody"), str):
            raise ViberError(3, f"badData: {key}.Buttons")


# ---------------------------------------------------------------------------------------------
# Simulated users


@dataclass
class _ChatUser:
    persona: Any
    id: str
    started: bool = False
    line: int = 0
    answered: set[int] = field(default_factory=set)


_STICKERS = (40108, 40113, 40120, 40128, 114405)


class ViberChatter(Chatter):
    """Simulated Viber users writing to one bot, in the languages of the WhatsApp personas.

    A new user first opens the chat (``conversation_started``, which gets the welcome message
    if the bot answers one), then half of them subscribe before writing; then they follow a
    small shop dialogue, thank the bot for its latest message, and now and then send a picture,
    a file, a location, a contact, a sticker or a link. Deterministic for a given ``seed``
    (apart from tokens and timestamps).
    """

    def __init__(
        self,
        sim: ViberSimulator,
        auth_token: str,
        *,
        seed: int = 0,
        users: int | None = None,
        languages: Sequence[str] | None = None,
    ) -> None:
        self.sim = sim
        self.auth_token = auth_token
        self.rng = random.Random(seed)
        personas = personas_speaking(languages)
        self.users: list[_ChatUser] = []
        for i in range(users or len(personas)):
            persona = personas[i % len(personas)]
            user_id = base64.b64encode(self.rng.randbytes(16)).decode()
            sim.add_user(
                user_id,
                name=persona.name,
                language=persona.language.replace("_", "-"),
                country=_COUNTRIES.get(persona.language, "GB"),
            )
            self.users.append(_ChatUser(persona, user_id))

    def step(self) -> int | None:
        """One plausible next action of one user; returns the message token if it wrote."""
        user = self.rng.choice(self.users)
        p = user.persona
        if not user.started:
            user.started = True
            self.sim.open_conversation(self.auth_token, user.id, context="demo")
            if self.rng.random() < 0.5:
                self.sim.subscribe(self.auth_token, user.id)
        latest = self.sim.sent_to(self.auth_token, user.id)
        if latest and latest[-1].message_token not in user.answered:
            user.answered.add(latest[-1].message_token)
            return self._send(user, self.rng.choice(p.thanks))
        roll = self.rng.random()
        if roll < 0.08:
            colour = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
            url = self.sim.user_uploads(tiny_png(colour), "image/png", "photo.png")
            return self._send(user, {"type": "picture", "text": p.caption, "media": url,
                                     "thumbnail": url, "size": 120})  # fmt: skip
        if roll < 0.12:
            data = tiny_pdf("Receipt 48213")
            url = self.sim.user_uploads(data, "application/pdf", "receipt-48213.pdf")
            return self._send(user, {"type": "file", "media": url, "size": len(data),
                                     "file_name": "receipt-48213.pdf"})  # fmt: skip
        if roll < 0.16:
            location = {"lat": p.location["latitude"], "lon": p.location["longitude"]}
            if "address" in p.location:
                location["address"] = p.location["address"]
            return self._send(user, {"type": "location", "location": location})
        if roll < 0.19:
            first, last = p.friend
            phone = (
                "+"
                + p.country_prefix
                + "".join(str(self.rng.randrange(10)) for _ in range(p.local_digits))
            )
            contact = {"name": f"{first} {last}", "phone_number": phone}
            return self._send(user, {"type": "contact", "contact": contact})
        if roll < 0.23:
            return self._send(user, {"type": "sticker", "sticker_id": self.rng.choice(_STICKERS)})
        if roll < 0.25:
            return self._send(user, {"type": "url", "media": "https://www.example.com/item/48213"})
        text = p.script[user.line % len(p.script)]
        user.line += 1
        return self._send(user, text)

    def _send(self, user: _ChatUser, message: Mapping[str, Any] | str) -> int:
        return self.sim.user_sends(self.auth_token, user.id, message)


_COUNTRIES = {
    "en": "US", "ja": "JP", "es": "ES", "pt_BR": "BR", "ar": "SA", "vi": "VN", "id": "ID",
    "de": "DE", "fr": "FR",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m madoguchi.simulators.viber --port P --config bots.json [--chatter S]``.

    ``bots.json`` is a list of :meth:`ViberSimulator.add_account` keyword arguments.
    """
    parser = argparse.ArgumentParser(description="Fake Viber REST Bot API on the loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", required=True, help="JSON list of add_account kwargs")
    parser.add_argument("--chatter", type=float, default=0.0, help="users write every N seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args.config, encoding="utf-8") as fh:
        bots = json.load(fh)
    sim = ViberSimulator()
    for bot in bots:
        sim.add_account(**bot)
    tokens = [str(bot["auth_token"]) for bot in bots]
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    sim.base_url = f"http://{args.host}:{port}"
    stop = threading.Event()
    if args.chatter > 0:
        for i, token in enumerate(tokens):
            chatter = ViberChatter(sim, token, seed=args.seed + i)
            threading.Thread(
                target=chatter.run,
                args=(args.chatter, stop),
                name=f"viber-chatter-{i}",
                daemon=True,
            ).start()
    print(f"Viber simulator listening on {sim.base_url}", flush=True)
    sim.serve_forever(sock, stop)


if __name__ == "__main__":
    main()
