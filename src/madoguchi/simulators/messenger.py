"""A faithful fake of the Facebook Messenger Platform (Graph API) for the demo, tests and benchmarks.

What it implements, following ``PROTOCOLS.md`` section C (the Messenger contract):

- ``POST /v{N}.0/{page-id}/messages`` and ``/v{N}.0/me/messages`` (C5): the page access token
  (``?access_token=`` or ``Authorization: Bearer``; 190 otherwise), JSON, form-encoded and
  multipart bodies (``filedata`` uploads), every field validated (100 naming the field), the
  standard 24-hour window for ``RESPONSE`` / ``UPDATE`` and the 7-day ``HUMAN_AGENT`` rule for
  ``MESSAGE_TAG`` (400 with code 10 / subcode 2018278 outside them, C6/C7), the deprecated tags
  (100), a page without the Human Agent permission (10), unknown or unavailable people (551 /
  1545041), throughput (613), ``reply_to`` checked against the thread, ``sender_action``.
  Accepted sends answer ``{"recipient_id", "message_id"}`` and are followed by signed webhooks:
  the echo (``is_echo`` with the page's ``app_id``), then a ``delivery`` and a ``read``
  watermark.
- ``GET /v{N}.0/{page-id}`` / ``/me`` (``fields=id,name``), ``GET /v{N}.0/app`` (the app the token
  belongs to) and ``GET /v{N}.0/{message-id}?fields=from,to,message,created_time``.
- The User Profile API, ``GET /v{N}.0/{PSID}?fields=first_name,last_name,profile_pic`` with the
  page token (Meta's "User Profile API" page, updated Mar 18 2026,
  https://developers.facebook.com/documentation/business-messaging/messenger-platform/identity/user-profile):
  the person's first and last name and a ``profile_pic`` URL (served like attachments), only
  once they started the conversation (a message, a postback, a reaction: "The person starts
  the conversation by sending a message"...). Before that, and for a PSID the page does not
  know, 100 (subcode 33, the Graph's "cannot be loaded due to missing permissions"); a token
  of no page, 190; an unknown field, 100 ("Tried accessing nonexisting field"). ``locale``,
  ``timezone`` and ``gender`` need permissions the simulated app does not have: they are
  accepted and left out of the answer. Lookups are logged (:attr:`profile_lookups`) and take
  their own injected faults (:meth:`MessengerSimulator.inject_profile_faults`), apart from
  the sends'.
- Attachments served from ``/_media/{token}`` without credentials, like Meta's pre-signed CDN
  URLs; customers' photos and files and the page's uploads live there.
- Webhook delivery (C2, C4): compact ASCII-escaped JSON, ``X-Hub-Signature-256`` with the app
  secret, redelivery with bounded backoff on anything but HTTP 200, ``object: "page"`` with
  ``entry[].messaging[]``: messages (text, attachments, quick replies, replies), postbacks,
  reactions, delivery and read watermarks, echoes of every send and echoes from "another app"
  (the Page inbox, :meth:`MessengerSimulator.page_inbox_reply`).
- Simulated customers (:class:`MessengerChatter`) writing in several languages.
- Fault injection and a small HTTP control API under ``/_sim/`` (unauthenticated: listen on the
  loopback only):

  - ``POST /_sim/customer_message`` ``{page_id, psid, name?, message[, timestamp]}`` → ``{"mid"}``
    (``message`` is a string or a C3 ``message`` object without ``mid``)
  - ``POST /_sim/postback`` ``{page_id, psid, title, payload}`` → ``{"id"}``
  - ``POST /_sim/page_inbox_reply`` ``{page_id, psid, text}`` → ``{"mid"}``
  - ``POST /_sim/read`` ``{page_id, psid}``
  - ``POST /_sim/users`` ``{page_id, psid, name?, first_name?, last_name?, available?}``
  - ``POST /_sim/faults`` ``{page_id, faults: [["http", 500], ["graph", 613], ...]}``
  - ``GET /_sim/sent?page_id=...&since=N`` → ``{"data": [...], "next": N}``
  - ``GET /_sim/stats`` → counters

The server plumbing (uvicorn in a thread, the keep-alive webhook poster, the scheduler, token
buckets, the personas) and Meta's webhook signing and verification GET come from ``common``, shared
with the WhatsApp simulator. This module must not import Django.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hmac
import itertools
import json
import logging
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    Poster,
    RequestRecorder,
    Scheduler,
    TokenBucket,
    WebhookAttempt,
    bind_socket,
    encode_payload,
    fbtrace_id,
    graph_response,
    hub_handshake,
    personas_speaking,
    sign_payload,
    tiny_pdf,
    tiny_png,
)

__all__ = [
    "PAGE_INBOX_APP_ID",
    "GraphError",
    "MessengerChatter",
    "MessengerSimulator",
    "SentMessage",
    "encode_payload",
    "sign_payload",
]

log = logging.getLogger(__name__)

WINDOW_SECONDS = 24 * 60 * 60
HUMAN_AGENT_SECONDS = 7 * 24 * 60 * 60
# The app id Meta's own Page inbox (Business Suite) sends with; any id but the page's app works.
PAGE_INBOX_APP_ID = 263902037430900
MAX_TEXT = 2000
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
MAX_IMAGES = 30
HUMAN_AGENT = "HUMAN_AGENT"
DEPRECATED_TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE"})
MESSAGING_TYPES = ("RESPONSE", "UPDATE", "MESSAGE_TAG")
SENDER_ACTIONS = ("typing_on", "typing_off", "mark_seen")
ATTACHMENT_TYPES = ("image", "audio", "video", "file", "template")
_TOP_LEVEL = frozenset(
    {"recipient", "messaging_type", "message", "tag", "reply_to", "sender_action"}
    | {"notification_type", "persona_id", "access_token"}
)
_VERSION_RE = re.compile(r"v\d+\.\d+")
# Fields of the User Profile API (the last three need permissions the simulated app lacks).
PROFILE_FIELDS = ("id", "first_name", "last_name", "profile_pic", "locale", "timezone", "gender")
_FAMILY_NAME_FIRST = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff ]+"
)
WINDOW_MESSAGE = (
    "(#10) This message is sent outside of allowed window. Learn more about the new policy "
    "here: https://developers.facebook.com/docs/messenger-platform/policy-overview"
)


def _mid() -> str:
    # Current mids are "m_" and about 85 URL-safe characters.
    return "m_" + secrets.token_urlsafe(63)


class GraphError(Exception):
    """A Graph API error rendered as C6's ``{"error": {message, type, code, error_subcode,
    fbtrace_id}}``; ``message`` is written with its ``(#code)`` prefix as Meta does."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        http_status: int = 400,
        is_transient: bool = False,
    ) -> None:
        self.code = code
        self.message = message if message.startswith("(#") else f"(#{code}) {message}"
        self.subcode = subcode
        self.http_status = http_status
        self.is_transient = is_transient
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": "OAuthException"}
        error["code"] = self.code
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient:
            error["is_transient"] = True
        error["fbtrace_id"] = fbtrace_id()
        return {"error": error}


def _invalid(message: str) -> GraphError:
    return GraphError(100, message)


def window_error() -> GraphError:
    """The real "outside of allowed window" answer (C6)."""
    return GraphError(10, WINDOW_MESSAGE, subcode=2018278)


def unavailable_error() -> GraphError:
    return GraphError(551, "This person isn't available right now.", subcode=1545041)


def rate_limit_error() -> GraphError:
    return GraphError(613, "Calls to this api have exceeded the rate limit.")


def token_error(
    message: str = "Invalid OAuth access token - Cannot parse access token",
) -> GraphError:
    return GraphError(190, message, http_status=400)


# ---------------------------------------------------------------------------------------------
# Records and state


def _parse_faults(faults: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Injected faults as tuples: ``("http", ...)``, ``("graph", ...)`` or ``("timeout", ...)``
    with at least one value; ValueError for anything else (nothing is queued then)."""
    parsed = []
    for fault in faults:
        if fault[0] not in ("http", "graph", "timeout") or len(fault) < 2:
            raise ValueError(f"unknown fault {fault!r}")
        parsed.append(tuple(fault))
    return parsed


class SentMessage(NamedTuple):
    """One accepted Send API request (``body`` as decoded: JSON objects, not form strings)."""

    page_id: str
    body: dict[str, Any]
    message_id: str
    time: float
    upload: tuple[str, int] | None  # (mime type, size) of a filedata upload


def split_name(name: str) -> tuple[str, str]:
    """(first_name, last_name) of a full name as people write it: "Lucía Gómez" → ("Lucía",
    "Gómez"); names in an East Asian script are written family name first: "佐藤 花子" →
    ("花子", "佐藤"). One word is a first name alone."""
    parts = name.split(None, 1)
    if len(parts) < 2:
        return (parts[0] if parts else "", "")
    if _FAMILY_NAME_FIRST.fullmatch(name.strip()):
        return parts[1], parts[0]
    return parts[0], parts[1]


@dataclass
class _User:
    psid: str
    name: str
    available: bool = True
    last_inbound: float | None = None  # wall-clock seconds of the latest window-opening event
    # Explicit names (None: split from ``name``).
    first_name: str | None = None
    last_name: str | None = None
    # Whether the person started the conversation: until then the page may not read the
    # profile (User Profile API, "User Opt-in").
    opted_in: bool = False
    picture: str = ""  # attachment token of the profile picture, made on first lookup

    def names(self) -> tuple[str, str]:
        first, last = split_name(self.name)
        return (
            first if self.first_name is None else self.first_name,
            last if self.last_name is None else self.last_name,
        )


@dataclass
class _Message:
    mid: str
    page_id: str
    psid: str
    inbound: bool
    time: float
    body: dict[str, Any]


@dataclass
class _Attachment:
    data: bytes
    mime_type: str
    filename: str


@dataclass
class _Page:
    page_id: str
    name: str
    access_token: str
    app_secret: str
    app_id: int
    app_name: str
    webhook_url: str | None
    human_agent: bool
    bucket: TokenBucket
    users: dict[str, _User] = field(default_factory=dict)
    faults: deque[tuple[Any, ...]] = field(default_factory=deque)
    profile_faults: deque[tuple[Any, ...]] = field(default_factory=deque)


class MessengerSimulator(HubSignedWebhooks):
    """In-memory Messenger Platform with a Starlette app (:attr:`app`) and a Python control API.

    Thread-safe: state is guarded by one lock never held during network I/O. Webhooks caused by
    API requests (echo, delivery, read) go out from a background pool in that order; webhooks
    caused by control calls are delivered in the caller's thread, retries included.

    Options:
        window_seconds / human_agent_seconds: the standard window and the HUMAN_AGENT period.
        receipt_delays: seconds before the echo, then the ``delivery``, then the ``read``.
        auto_read: send the ``read`` watermark after ``delivery``.
        echoes: send an echo of every accepted message (the ``message_echoes`` field).
        retry_delays: waits between webhook attempts; ``len + 1`` attempts at most.
        clock: wall clock for timestamps and windows (tests may fake it).
    """

    def __init__(
        self,
        *,
        window_seconds: float = WINDOW_SECONDS,
        human_agent_seconds: float = HUMAN_AGENT_SECONDS,
        receipt_delays: tuple[float, float, float] = (0.02, 0.05, 0.2),
        auto_read: bool = True,
        echoes: bool = True,
        retry_delays: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
        webhook_timeout: float = 5.0,
        delivery_workers: int = 8,
        log_limit: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_seconds = window_seconds
        self.human_agent_seconds = human_agent_seconds
        self.receipt_delays = receipt_delays
        self.auto_read = auto_read
        self.echoes = echoes
        self.retry_delays = tuple(retry_delays)
        self.log_limit = log_limit
        self.clock = clock
        self.base_url = ""  # set by serve_in_thread; attachment URLs start with it
        self._delivery_workers = delivery_workers
        self._lock = threading.RLock()
        self._pages: dict[str, _Page] = {}
        self._messages: dict[str, _Message] = {}
        self._last_outbound: dict[tuple[str, str], str] = {}
        self._attachments: dict[str, _Attachment] = {}
        self._saved: dict[str, str] = {}  # reusable attachment_id -> attachment token
        self._ids = itertools.count(random.randrange(10**15, 9 * 10**15))
        self._stats: dict[str, Any] = {
            "requests": 0,
            "sends_accepted": 0,
            "sends_rejected": 0,
            "sender_actions": 0,
            "profile_lookups": 0,
            "inbound_events": 0,
            "webhook_attempts": 0,
            "webhooks_ok": 0,
            "webhooks_failed": 0,
            "errors_by_code": {},
        }
        self._sent_dropped = 0
        self.sent: list[SentMessage] = []
        self.sender_actions: list[tuple[str, str, str, float]] = []  # page, psid, action, time
        # User Profile API requests: (page id, psid, fields asked, HTTP status answered).
        self.profile_lookups: list[tuple[str, str, tuple[str, ...], int]] = []
        self.requests: list[Any] = []
        self.webhook_log: list[WebhookAttempt] = []
        self._closed = False
        self._poster = Poster(webhook_timeout)
        self._scheduler: Scheduler | None = None
        self.app = self._build_app()

    # -- configuration ----------------------------------------------------------------------

    def add_page(
        self,
        *,
        page_id: str,
        access_token: str,
        app_secret: str,
        app_id: int | str,
        webhook_url: str | None,
        name: str = "Madoguchi Demo Shop",
        app_name: str = "Madoguchi",
        human_agent: bool = True,
        mps: float = 100.0,
        burst: float | None = None,
    ) -> None:
        """Register (or reconfigure) a page. ``app_id`` is the app our token belongs to (its
        echoes carry it); ``human_agent``: whether the app has the Human Agent permission;
        ``burst`` sends may go at once (default ``mps``), then ``mps`` per second; 613 beyond."""
        with self._lock:
            old = self._pages.get(str(page_id))
            self._pages[str(page_id)] = _Page(
                page_id=str(page_id),
                name=name,
                access_token=access_token,
                app_secret=app_secret,
                app_id=int(app_id),
                app_name=app_name,
                webhook_url=webhook_url,
                human_agent=human_agent,
                bucket=TokenBucket(burst if burst is not None else mps, mps, time.monotonic()),
                users=old.users if old else {},
            )

    def add_user(
        self,
        page_id: str,
        psid: str,
        name: str = "",
        *,
        available: bool = True,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> None:
        """A person with a page-scoped id for ``page_id`` (created by their first message too).
        ``available=False``: they blocked the page or deactivated their account (551). Their
        profile's ``first_name`` / ``last_name`` are split from ``name`` unless given. Adding
        a person does not opt them in: their profile is readable once they write."""
        with self._lock:
            page = self._page(page_id)
            user = page.users.setdefault(str(psid), _User(str(psid), name))
            user.available = available
            if name:
                user.name = name
            if first_name is not None:
                user.first_name = first_name
            if last_name is not None:
                user.last_name = last_name

    def inject_profile_faults(self, page_id: str, faults: Iterable[Sequence[Any]]) -> None:
        """Queue answers for the next User Profile API requests of a page, as
        :meth:`inject_faults` does for sends (which keep their own queue)."""
        parsed = _parse_faults(faults)
        with self._lock:
            self._page(page_id).profile_faults.extend(parsed)

    def inject_faults(self, page_id: str, faults: Iterable[Sequence[Any]]) -> None:
        """Queue answers for the next Send API requests of a page, one per request:
        ``("http", status[, text])``, ``("graph", code[, subcode[, http_status]])``,
        ``("timeout", seconds)`` (then handled normally). ValueError for another kind."""
        parsed = _parse_faults(faults)
        with self._lock:
            self._page(page_id).faults.extend(parsed)

    # -- customers ------------------------------------------------------------------------

    def customer_uploads(self, data: bytes, mime_type: str, filename: str = "") -> str:
        """Store a file a customer attaches; returns its URL (served without credentials)."""
        with self._lock:
            return self._attachment_url(self._store_attachment(data, mime_type, filename))

    def customer_sends(
        self,
        page_id: str,
        psid: str,
        message: str | dict[str, Any],
        *,
        name: str = "",
        timestamp: float | None = None,
        mid: str | None = None,
        deliver: bool = True,
    ) -> str:
        """A person writes to the page; returns the message's mid. ``message``: text, or a C3
        ``message`` object without ``mid`` (``text``, ``attachments``, ``quick_reply``,
        ``reply_to``). ``timestamp`` (Unix seconds, default now) opens the window. Passing the
        ``mid`` of an earlier message re-sends it, as Meta's redeliveries do."""
        body = {"text": message} if isinstance(message, str) else copy.deepcopy(message)
        mid = mid or _mid()
        body = {"mid": mid, **body}
        return self._inbound(page_id, psid, name, "message", body, timestamp, deliver, mid)

    def customer_postback(
        self, page_id: str, psid: str, title: str, payload: str, *, name: str = ""
    ) -> str:
        """A person taps a button (Get Started, a persistent menu item); returns its mid."""
        mid = _mid()
        body = {"title": title, "payload": payload, "mid": mid}
        return self._inbound(page_id, psid, name, "postback", body, None, True, mid)

    def customer_reacts(
        self,
        page_id: str,
        psid: str,
        mid: str,
        emoji: str = "\u2764\ufe0f",
        *,
        remove: bool = False,
    ) -> None:
        """A person reacts to (or un-reacts from) a message; a reaction opens the window (C5)."""
        body: dict[str, Any] = {"reaction": "love" if emoji == "\u2764\ufe0f" else "other"}
        if remove:
            body["action"] = "unreact"
        else:
            body.update(emoji=emoji, action="react")
        body["mid"] = mid
        self._inbound(page_id, psid, "", "reaction", body, None, True, None)

    def customer_reads(self, page_id: str, psid: str) -> WebhookAttempt:
        """A person opens the thread: a ``read`` watermark of now, in this thread."""
        now = self.clock()
        event = self._event(psid, page_id, now, read={"watermark": int(now * 1000)})
        return self._deliver_page_sync(page_id, [event])

    def page_inbox_reply(self, page_id: str, psid: str, text: str) -> str:
        """Somebody answers from Meta's Page inbox: an echo with another app's id; returns the
        mid (the window is not checked: this stands for the platform's own inbox)."""
        now = self.clock()
        mid = _mid()
        with self._lock:
            page = self._page(page_id)
            self._messages[mid] = _Message(mid, page.page_id, psid, False, now, {"text": text})
            self._last_outbound[(page.page_id, psid)] = mid
        message = {"is_echo": True, "app_id": PAGE_INBOX_APP_ID, "mid": mid, "text": text}
        self._deliver_page_sync(page_id, [self._event(page_id, psid, now, message=message)])
        return mid

    def deliver_raw(self, page_id: str, payload: dict[str, Any] | bytes) -> WebhookAttempt:
        """Sign and POST any payload to a page's webhook URL, in this thread, with retries."""
        with self._lock:
            page = self._page(page_id)
            url, secret = page.webhook_url, page.app_secret
        body = payload if isinstance(payload, bytes) else encode_payload(payload)
        return self._deliver_sync(url, secret, body)

    def verify_subscription(self, page_id: str, verify_token: str) -> bool:
        """Run the C1 handshake against the page's webhook URL; True when the challenge came
        back verbatim with HTTP 200."""
        with self._lock:
            url = self._page(page_id).webhook_url
        if not url:
            return False
        return hub_handshake(url, verify_token, timeout=5)

    # -- queries ----------------------------------------------------------------------------

    def window_open(self, page_id: str, psid: str, *, tag: str | None = None) -> bool:
        """Whether a send (untagged, or with ``tag="HUMAN_AGENT"``) to ``psid`` is allowed now."""
        with self._lock:
            user = self._page(page_id).users.get(str(psid))
            limit = self.human_agent_seconds if tag == HUMAN_AGENT else self.window_seconds
            last = user.last_inbound if user else None
            return last is not None and self.clock() < last + limit

    def last_outbound(self, page_id: str, psid: str) -> str | None:
        """The mid of the latest message the page sent to ``psid``."""
        with self._lock:
            return self._last_outbound.get((str(page_id), str(psid)))

    def sent_to(self, page_id: str, psid: str | None = None) -> list[SentMessage]:
        """Accepted message sends of a page (not sender actions), optionally to one person."""
        with self._lock:
            return [
                s
                for s in self.sent
                if s.page_id == page_id
                and "message" in s.body
                and (psid is None or s.body["recipient"]["id"] == psid)
            ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = copy.deepcopy(self._stats)
            out["pages"] = len(self._pages)
            out["sent_total"] = self._sent_dropped + len(self.sent)
            return out

    # -- internals: state (call with the lock held) ------------------------------------------

    def _page(self, page_id: str) -> _Page:
        try:
            return self._pages[str(page_id)]
        except KeyError:
            raise KeyError(f"unknown page {page_id}") from None

    def _store_attachment(self, data: bytes, mime_type: str, filename: str) -> str:
        token = secrets.token_urlsafe(18)
        self._attachments[token] = _Attachment(data, mime_type, filename)
        return token

    def _attachment_url(self, token: str) -> str:
        return f"{self.base_url}/_media/{token}"

    @staticmethod
    def _event(sender: str, recipient: str, when: float, **body: Any) -> dict[str, Any]:
        return {
            "sender": {"id": str(sender)},
            "recipient": {"id": str(recipient)},
            "timestamp": int(when * 1000),
            **body,
        }

    def _envelope(self, page_id: str, events: list[dict[str, Any]]) -> bytes:
        entry = {"id": page_id, "time": int(self.clock() * 1000), "messaging": events}
        return encode_payload({"object": "page", "entry": [entry]})

    def _inbound(
        self,
        page_id: str,
        psid: str,
        name: str,
        kind: str,
        body: dict[str, Any],
        timestamp: float | None,
        deliver: bool,
        mid: str | None,
    ) -> str:
        when = self.clock() if timestamp is None else timestamp
        psid = str(psid)
        with self._lock:
            page = self._page(page_id)
            user = page.users.setdefault(psid, _User(psid, name))
            if name:
                user.name = name
            user.opted_in = True  # "starts the conversation by sending a message" (and so on)
            user.last_inbound = max(user.last_inbound or 0.0, when)
            if mid is not None:
                self._messages[mid] = _Message(mid, page.page_id, psid, True, when, body)
            self._stats["inbound_events"] += 1
        if deliver:
            self._deliver_page_sync(page_id, [self._event(psid, page_id, when, **{kind: body})])
        return mid or ""

    # -- internals: webhook delivery --------------------------------------------------------

    def _deliver_page_sync(self, page_id: str, events: list[dict[str, Any]]) -> WebhookAttempt:
        with self._lock:
            page = self._page(page_id)
            url, secret = page.webhook_url, page.app_secret
        return self._deliver_sync(url, secret, self._envelope(page.page_id, events))

    def _run_chain(
        self, page_id: str, steps: list[tuple[float, Callable[[], dict[str, Any]]]]
    ) -> None:
        """Emit each step's event (built when due) after its delay, once the previous one was
        acknowledged or given up: echo, delivery and read arrive in order."""
        if not steps:
            return
        delay, build = steps[0]

        def emit() -> None:
            with self._lock:
                page = self._pages.get(page_id)
                if page is None:
                    return
                url, secret = page.webhook_url, page.app_secret
            body = self._envelope(page_id, [build()])
            self._deliver_async(url, secret, body, lambda: self._run_chain(page_id, steps[1:]))

        self._call_later(delay, emit)

    # -- the HTTP application ---------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/_sim/customer_message", self._ctl_customer_message, methods=["POST"]),
            Route("/_sim/postback", self._ctl_postback, methods=["POST"]),
            Route("/_sim/page_inbox_reply", self._ctl_page_inbox_reply, methods=["POST"]),
            Route("/_sim/read", self._ctl_read, methods=["POST"]),
            Route("/_sim/users", self._ctl_users, methods=["POST"]),
            Route("/_sim/faults", self._ctl_faults, methods=["POST"]),
            Route("/_sim/sent", self._ctl_sent, methods=["GET"]),
            Route("/_sim/stats", self._ctl_stats, methods=["GET"]),
            Route("/_media/{token}", self._media, methods=["GET"]),
            Route("/{version}/{object_id}/messages", self._send, methods=["POST"]),
            Route("/{version}/{object_id}", self._object, methods=["GET"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(RequestRecorder, record=self._record_request)],
            exception_handlers={GraphError: self._graph_error_response},
        )

    @staticmethod
    def _check_version(request: Request) -> None:
        if not _VERSION_RE.fullmatch(request.path_params["version"]):
            raise GraphError(100, "Unknown path components", http_status=404)

    @staticmethod
    def _token(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return request.query_params.get("access_token")

    def _page_for(self, request: Request, object_id: str, token: str | None = None) -> _Page:
        """The page an API call addresses (``me`` = the token's page), its token checked."""
        token = token if token is not None else self._token(request)
        if not token:
            raise token_error("An active access token must be used to query this resource.")
        with self._lock:
            if object_id in ("me", "app"):
                page = next(
                    (p for p in self._pages.values() if hmac.compare_digest(p.access_token, token)),
                    None,
                )
                if page is None:
                    raise token_error()
                return page
            page = self._pages.get(object_id)
        if page is None:
            raise GraphError(
                100,
                f"Unsupported request. Object with ID '{object_id}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        if not hmac.compare_digest(page.access_token, token):
            raise token_error()
        return page

    # -- POST /{page-id}/messages -------------------------------------------------------------

    async def _send(self, request: Request) -> Response:
        self._check_version(request)
        object_id = request.path_params["object_id"]
        token = self._token(request)
        body, upload = await self._read_body(request)
        if token is None and isinstance(body.get("access_token"), str):
            token = body["access_token"]  # form-encoded requests may carry it as a field
        page = self._page_for(request, object_id, token or "")
        with self._lock:
            fault = page.faults.popleft() if page.faults else None
        if fault is not None:
            response = await self._apply_fault(fault)
            if response is not None:
                return response
        try:
            return self._accept(page, body, upload)
        except GraphError:
            with self._lock:
                self._stats["sends_rejected"] += 1
            raise

    async def _apply_fault(self, fault: tuple[Any, ...]) -> Response | None:
        if fault[0] == "timeout":
            await asyncio.sleep(float(fault[1]))
            return None
        if fault[0] == "http":
            status = int(fault[1])
            if len(fault) > 2:
                return Response(str(fault[2]), status_code=status, media_type="text/plain")
            error = GraphError(
                2, "Service temporarily unavailable", http_status=status, is_transient=True
            )
            return graph_response(error.body(), status)
        code = int(fault[1])
        subcode = int(fault[2]) if len(fault) > 2 and fault[2] is not None else None
        status = int(fault[3]) if len(fault) > 3 else (500 if code in (1, 2, 1200) else 400)
        self._count_error(code)
        error = GraphError(code, _FAULT_MESSAGES.get(code, "An error occurred"), subcode=subcode)
        return graph_response(error.body(), status)

    async def _read_body(self, request: Request) -> tuple[dict[str, Any], _Attachment | None]:
        """The request's fields: a JSON object, or form fields whose object values are JSON
        text (as the Graph API reads forms); a multipart ``filedata`` part is the upload."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            fields: dict[str, Any] = {}
            upload = None
            async with request.form(max_part_size=MAX_ATTACHMENT_BYTES + 1) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        if key != "filedata":
                            raise _invalid(f"Unexpected file field {key}")
                        data = await value.read()
                        upload = _Attachment(
                            data,
                            value.content_type or "application/octet-stream",
                            value.filename or "",
                        )
                    else:
                        fields[key] = _form_value(key, value)
            return fields, upload
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise _invalid("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")
        return body, None

    def _accept(self, page: _Page, body: dict[str, Any], upload: _Attachment | None) -> Response:
        unknown = sorted(set(body) - _TOP_LEVEL)
        if unknown:
            raise _invalid(f"Unknown parameter: {unknown[0]}")
        psid = _recipient_id(body.get("recipient"))
        if "sender_action" in body:
            return self._sender_action(page, psid, body, upload)
        message = _check_message(body.get("message"), upload)
        messaging_type, tag = _check_messaging_type(body)
        reply_to = body.get("reply_to")
        if reply_to is not None and (
            not isinstance(reply_to, dict)
            or set(reply_to) != {"mid"}
            or not isinstance(reply_to["mid"], str)
        ):
            raise _invalid('Param reply_to must be {"mid": "<message id>"}')
        now_wall = self.clock()
        with self._lock:
            user = page.users.get(psid)
            if user is None or not user.available:
                raise unavailable_error()
            if tag == HUMAN_AGENT and not page.human_agent:
                raise GraphError(10, "Application does not have permission for this action")
            limit = self.human_agent_seconds if tag == HUMAN_AGENT else self.window_seconds
            if user.last_inbound is None or now_wall >= user.last_inbound + limit:
                raise window_error()
            for attachment_id in _attachment_ids(message):
                if attachment_id not in self._saved:
                    raise _invalid(f"Invalid attachment_id: {attachment_id}")
            if reply_to is not None:
                quoted = self._messages.get(reply_to["mid"])
                if quoted is None or (quoted.page_id, quoted.psid) != (page.page_id, psid):
                    raise _invalid(f"Invalid reply_to mid: {reply_to['mid']}")
            if not page.bucket.ready(time.monotonic()):
                raise rate_limit_error()
            page.bucket.take()
            mid = _mid()
            answer: dict[str, Any] = {"recipient_id": psid, "message_id": mid}
            echoed = self._echo_message(message, upload, answer)
            self._messages[mid] = _Message(mid, page.page_id, psid, False, now_wall, echoed)
            self._last_outbound[(page.page_id, psid)] = mid
            record = {**body, "message": message, "messaging_type": messaging_type}
            size = (upload.mime_type, len(upload.data)) if upload else None
            self.sent.append(SentMessage(page.page_id, record, mid, now_wall, size))
            self._sent_dropped += self._trim(self.sent)
            self._stats["sends_accepted"] += 1
            app_id = page.app_id
        self._schedule_receipts(page.page_id, psid, mid, app_id, echoed)
        return graph_response(answer)

    def _echo_message(
        self, message: dict[str, Any], upload: _Attachment | None, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """The message as its echo shows it (uploads become attachment URLs); a reusable upload
        gets an ``attachment_id`` in the answer."""
        echoed = copy.deepcopy(message)
        for item in echoed.get("attachments") or []:
            payload = item["payload"]
            if "attachment_id" in payload:
                payload["url"] = self._attachment_url(
                    self._saved[str(payload.pop("attachment_id"))]
                )
            payload.pop("is_reusable", None)
        attachment = echoed.get("attachment")
        if isinstance(attachment, dict) and attachment.get("type") != "template":
            payload = attachment.setdefault("payload", {})
            if upload is not None:
                token = self._store_attachment(upload.data, upload.mime_type, upload.filename)
                payload["url"] = self._attachment_url(token)
                if payload.get("is_reusable"):
                    attachment_id = str(next(self._ids))
                    self._saved[attachment_id] = token
                    answer["attachment_id"] = attachment_id
            elif "attachment_id" in payload:
                token = self._saved[str(payload["attachment_id"])]
                payload["url"] = self._attachment_url(token)
            payload.pop("is_reusable", None)
            payload.pop("attachment_id", None)
            echoed = {"attachments": [attachment]}
        return echoed

    def _schedule_receipts(
        self, page_id: str, psid: str, mid: str, app_id: int, echoed: dict[str, Any]
    ) -> None:
        d_echo, d_delivery, d_read = self.receipt_delays
        sent_at = self.clock()
        steps: list[tuple[float, Callable[[], dict[str, Any]]]] = []
        if self.echoes:
            message = {"is_echo": True, "app_id": app_id, "mid": mid, **echoed}
            steps.append((d_echo, lambda: self._event(page_id, psid, sent_at, message=message)))

        def delivery() -> dict[str, Any]:
            now = self.clock()
            return self._event(
                psid, page_id, now, delivery={"mids": [mid], "watermark": int(now * 1000)}
            )

        def read() -> dict[str, Any]:
            now = self.clock()
            return self._event(psid, page_id, now, read={"watermark": int(now * 1000)})

        steps.append((d_delivery, delivery))
        if self.auto_read:
            steps.append((d_read, read))
        self._run_chain(page_id, steps)

    def _sender_action(
        self, page: _Page, psid: str, body: dict[str, Any], upload: _Attachment | None
    ) -> Response:
        action = body["sender_action"]
        if action not in SENDER_ACTIONS:
            raise _invalid(
                f"Param sender_action must be one of {{{', '.join(SENDER_ACTIONS)}}} - got "
                f'"{action}"'
            )
        extra = sorted(set(body) - {"recipient", "sender_action", "access_token"})
        if extra or upload is not None:
            raise _invalid("sender_action must be sent alone, without a message")
        with self._lock:
            user = page.users.get(psid)
            if user is None or not user.available:
                raise unavailable_error()
            self.sender_actions.append((page.page_id, psid, action, self.clock()))
            self._stats["sender_actions"] += 1
        return graph_response({"recipient_id": psid})

    # -- GET /{object} ------------------------------------------------------------------------

    async def _object(self, request: Request) -> Response:
        self._check_version(request)
        object_id = request.path_params["object_id"]
        fields = [f for f in request.query_params.get("fields", "").split(",") if f]
        with self._lock:
            message = self._messages.get(object_id)
            is_page = object_id in ("me", "app") or object_id in self._pages
        if message is not None:
            page = self._page_for(request, message.page_id)
            return graph_response(self._message_json(page, message, fields))
        if not is_page and object_id.isdigit():
            return await self._profile(request, object_id, fields)
        page = self._page_for(request, object_id)
        if object_id == "app":
            app = {
                "id": str(page.app_id),
                "name": page.app_name,
                "link": "https://www.facebook.com/games/?app_id=0",
            }
            return graph_response(_select(app, fields or ["id", "name", "link"]))
        return graph_response(
            _select({"id": page.page_id, "name": page.name}, fields or ["id", "name"])
        )

    async def _profile(self, request: Request, psid: str, fields: list[str]) -> Response:
        """``GET /{PSID}``: the User Profile API, for the page the token belongs to."""
        page = self._page_for(request, "me")  # a PSID is scoped to the token's page; 190
        asked = tuple(fields)
        with self._lock:
            fault = page.profile_faults.popleft() if page.profile_faults else None
        if fault is not None:
            response = await self._apply_fault(fault)
            if response is not None:
                self._log_profile(page, psid, asked, response.status_code)
                return response
        try:
            answer = self._profile_json(page, psid, fields or ["first_name", "last_name"])
        except GraphError as exc:
            self._log_profile(page, psid, asked, exc.http_status)
            raise
        self._log_profile(page, psid, asked, 200)
        return graph_response(answer)

    def _profile_json(self, page: _Page, psid: str, fields: list[str]) -> dict[str, Any]:
        for name in fields:
            if name not in PROFILE_FIELDS:
                raise _invalid(f"Tried accessing nonexisting field ({name}) on node type (User)")
        with self._lock:
            user = page.users.get(psid)
            if user is None or not user.opted_in:
                raise GraphError(
                    100,
                    f"Unsupported get request. Object with ID '{psid}' does not exist, cannot "
                    "be loaded due to missing permissions, or does not support this operation.",
                    subcode=33,
                )
            first, last = user.names()
            if "profile_pic" in fields and not user.picture:
                shade = int(psid[-6:]) % 200 if psid[-6:].isdigit() else 100
                user.picture = self._store_attachment(
                    tiny_png((shade, 120, 255 - shade)), "image/png", "profile.png"
                )
            full = {
                "id": psid,
                "first_name": first,
                "last_name": last,
                "profile_pic": self._attachment_url(user.picture) if user.picture else "",
            }
        return _select(full, fields)

    def _log_profile(self, page: _Page, psid: str, fields: tuple[str, ...], status: int) -> None:
        with self._lock:
            self.profile_lookups.append((page.page_id, psid, fields, status))
            self._trim(self.profile_lookups)
            self._stats["profile_lookups"] += 1

    def _message_json(self, page: _Page, message: _Message, fields: list[str]) -> dict[str, Any]:
        with self._lock:
            user = page.users.get(message.psid)
            person = {"id": message.psid, "name": user.name if user else ""}
        me = {"id": page.page_id, "name": page.name}
        created = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(message.time))
        full = {
            "id": message.mid,
            "created_time": created,
            "from": person if message.inbound else me,
            "to": {"data": [me if message.inbound else person]},
            "message": str(message.body.get("text", "")),
        }
        return _select(full, fields or ["id", "created_time"])

    async def _media(self, request: Request) -> Response:
        with self._lock:
            attachment = self._attachments.get(request.path_params["token"])
        if attachment is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(attachment.data, media_type=attachment.mime_type)

    # -- /_sim control API (unauthenticated: loopback only) ---------------------------------

    @staticmethod
    async def _ctl_json(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")
        return body

    async def _ctl(self, request: Request, call: Callable[[dict[str, Any]], Any]) -> Response:
        body = await self._ctl_json(request)
        try:
            result = await run_in_threadpool(call, body)
        except (KeyError, TypeError, ValueError) as exc:
            return graph_response({"error": str(exc)}, 400)
        return graph_response(result)

    async def _ctl_customer_message(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            mid = self.customer_sends(
                str(b["page_id"]),
                str(b["psid"]),
                b["message"],
                name=str(b.get("name", "")),
                timestamp=b.get("timestamp"),
            )
            return {"mid": mid}

        return await self._ctl(request, call)

    async def _ctl_postback(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            page, psid = str(b["page_id"]), str(b["psid"])
            return {"id": self.customer_postback(page, psid, str(b["title"]), str(b["payload"]))}

        return await self._ctl(request, call)

    async def _ctl_page_inbox_reply(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            return {"mid": self.page_inbox_reply(str(b["page_id"]), str(b["psid"]), str(b["text"]))}

        return await self._ctl(request, call)

    async def _ctl_read(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            attempt = self.customer_reads(str(b["page_id"]), str(b["psid"]))
            return {"status": attempt.status}

        return await self._ctl(request, call)

    async def _ctl_users(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            self.add_user(
                str(b["page_id"]),
                str(b["psid"]),
                str(b.get("name", "")),
                available=bool(b.get("available", True)),
                first_name=str(b["first_name"]) if "first_name" in b else None,
                last_name=str(b["last_name"]) if "last_name" in b else None,
            )
            return {"success": True}

        return await self._ctl(request, call)

    async def _ctl_faults(self, request: Request) -> Response:
        def call(b: dict[str, Any]) -> dict[str, Any]:
            faults = [tuple(f) for f in b["faults"]]
            self.inject_faults(str(b["page_id"]), faults)
            return {"queued": len(faults)}

        return await self._ctl(request, call)

    async def _ctl_sent(self, request: Request) -> Response:
        page_id = request.query_params.get("page_id")
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return graph_response({"error": "since must be an integer"}, 400)
        with self._lock:
            start = max(0, since - self._sent_dropped)
            items = [
                {"page_id": s.page_id, "body": s.body, "id": s.message_id, "time": s.time}
                for s in self.sent[start:]
                if page_id is None or s.page_id == page_id
            ]
            nxt = self._sent_dropped + len(self.sent)
        return graph_response({"data": items, "next": nxt})

    async def _ctl_stats(self, request: Request) -> Response:
        return graph_response(self.stats())


_FAULT_MESSAGES: dict[int, str] = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    10: WINDOW_MESSAGE,
    17: "User request limit reached",
    32: "Page request limit reached",
    100: "Invalid parameter",
    190: "Invalid OAuth access token.",
    200: "Requires pages_messaging permission to manage the object",
    551: "This person isn't available right now.",
    613: "Calls to this api have exceeded the rate limit.",
    1200: "Temporary send message failure. Please try again later",
}


# ---------------------------------------------------------------------------------------------
# Request validation (C5)


def _form_value(key: str, value: str) -> Any:
    """Form fields carry objects as JSON text; plain strings stay strings."""
    if key in ("recipient", "message", "reply_to") or value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            raise _invalid(f"Param {key} must be a JSON object") from None
    return value


def _recipient_id(recipient: Any) -> str:
    if recipient is None:
        raise _invalid("The parameter recipient is required")
    if not isinstance(recipient, dict) or not recipient:
        raise _invalid("Param recipient must be an object")
    if set(recipient) - {"id"}:
        other = sorted(set(recipient) - {"id"})[0]
        raise _invalid(f"Param recipient[{other}] is not supported for this page")
    psid = recipient["id"]
    if isinstance(psid, int) and not isinstance(psid, bool):
        psid = str(psid)
    if not isinstance(psid, str) or not psid.isdigit():
        raise _invalid('Param recipient[id] must be a valid ID string (e.g., "123")')
    return psid


def _check_messaging_type(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """``messaging_type`` (default RESPONSE, as in C5's attachment example) and the tag."""
    messaging_type = body.get("messaging_type", "RESPONSE")
    if messaging_type not in MESSAGING_TYPES:
        raise _invalid(
            f"Param messaging_type must be one of {{{', '.join(MESSAGING_TYPES)}}} - got "
            f'"{messaging_type}"'
        )
    tag = body.get("tag")
    if messaging_type != "MESSAGE_TAG":
        if tag is not None:
            raise _invalid("Param tag is only allowed with messaging_type MESSAGE_TAG")
        return messaging_type, None
    if tag is None:
        raise _invalid("The parameter tag is required with messaging_type MESSAGE_TAG")
    if tag in DEPRECATED_TAGS:
        raise _invalid(f"The message tag {tag} is deprecated")
    if tag != HUMAN_AGENT:
        raise _invalid(f'Param tag must be a valid message tag - got "{tag}"')
    return messaging_type, tag


def _check_message(message: Any, upload: _Attachment | None) -> dict[str, Any]:
    if message is None:
        raise _invalid("The parameter message is required")
    if not isinstance(message, dict):
        raise _invalid("Param message must be an object")
    unknown = sorted(
        set(message) - {"text", "attachment", "attachments", "quick_replies", "metadata"}
    )
    if unknown:
        raise _invalid(f"Param message[{unknown[0]}] is not a valid field")
    content = [key for key in ("text", "attachment", "attachments") if key in message]
    if len(content) != 1:
        raise _invalid("Param message must contain exactly one of text, attachment, attachments")
    if "text" in message:
        text = message["text"]
        if not isinstance(text, str) or not text.strip():
            raise _invalid("Param message[text] must be a non-empty UTF-8 encoded string")
        if len(text) > MAX_TEXT:
            raise _invalid(
                f"Param message[text] must be UTF-8 encoded and {MAX_TEXT} characters or fewer"
            )
        if upload is not None:
            raise _invalid("filedata needs an attachment message")
    elif "attachment" in message:
        _check_attachment(message["attachment"], "message[attachment]", upload)
    else:
        items = message["attachments"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_IMAGES:
            raise _invalid(f"Param message[attachments] must be a list of 1 to {MAX_IMAGES} images")
        for index, item in enumerate(items):
            where = f"message[attachments][{index}]"
            _check_attachment(item, where, None)
            if item["type"] != "image":
                raise _invalid(f"Param {where}[type] must be image")
        if upload is not None:
            raise _invalid("filedata needs a single attachment")
    _check_quick_replies(message.get("quick_replies"))
    metadata = message.get("metadata")
    if metadata is not None and (not isinstance(metadata, str) or len(metadata) > 1000):
        raise _invalid("Param message[metadata] must be a string of up to 1000 characters")
    return message


_UPLOAD_TYPES: dict[str, Callable[[str], bool]] = {
    "image": lambda m: m.startswith("image/"),
    "video": lambda m: m.startswith("video/"),
    "audio": lambda m: m.startswith("audio/"),
    "file": lambda m: True,
}


def _check_attachment(attachment: Any, where: str, upload: _Attachment | None) -> None:
    if not isinstance(attachment, dict) or set(attachment) - {"type", "payload"}:
        raise _invalid(f"Param {where} must be {{type, payload}}")
    kind = attachment.get("type")
    if kind not in ATTACHMENT_TYPES:
        raise _invalid(f"Param {where}[type] must be one of {{{', '.join(ATTACHMENT_TYPES)}}}")
    payload = attachment.get("payload")
    if not isinstance(payload, dict):
        raise _invalid(f"The parameter {where}[payload] is required")
    if kind == "template":
        if not isinstance(payload.get("template_type"), str):
            raise _invalid(f"The parameter {where}[payload][template_type] is required")
        return
    unknown = sorted(set(payload) - {"url", "is_reusable", "attachment_id"})
    if unknown:
        raise _invalid(f"Param {where}[payload][{unknown[0]}] is not a valid field")
    if "is_reusable" in payload and not isinstance(payload["is_reusable"], bool):
        raise _invalid(f"Param {where}[payload][is_reusable] must be a boolean")
    sources = [key for key in ("url", "attachment_id") if key in payload]
    if upload is not None:
        sources.append("filedata")
    if len(sources) != 1:
        raise _invalid(f"Param {where}[payload] needs exactly one of url, attachment_id, filedata")
    if "url" in payload:
        url = payload["url"]
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise _invalid(f"Param {where}[payload][url] must be a valid URL")
    elif upload is not None:
        if len(upload.data) > MAX_ATTACHMENT_BYTES:
            raise _invalid("Attachment size exceeds the allowable limit")
        if not upload.data:
            raise _invalid("The uploaded filedata is empty")
        if not _UPLOAD_TYPES[kind](upload.mime_type.split(";")[0].strip().lower()):
            raise _invalid(f"An {kind} attachment cannot be a file of type {upload.mime_type}")


def _check_quick_replies(quick_replies: Any) -> None:
    if quick_replies is None:
        return
    if not isinstance(quick_replies, list) or not 1 <= len(quick_replies) <= 13:
        raise _invalid("Param message[quick_replies] must be a list of 1 to 13 items")
    for index, item in enumerate(quick_replies):
        where = f"message[quick_replies][{index}]"
        if not isinstance(item, dict):
            raise _invalid(f"Param {where} must be an object")
        content_type = item.get("content_type")
        if content_type not in ("text", "user_phone_number", "user_email"):
            raise _invalid(
                f"Param {where}[content_type] must be text, user_phone_number or user_email"
            )
        if content_type == "text":
            title, payload = item.get("title"), item.get("payload")
            if not isinstance(title, str) or not 0 < len(title) <= 20:
                raise _invalid(f"Param {where}[title] must be 1 to 20 characters")
            if not isinstance(payload, str | int) or len(str(payload)) > 1000:
                raise _invalid(f"Param {where}[payload] is required (up to 1000 characters)")


def _attachment_ids(message: Mapping[str, Any]) -> list[str]:
    items = message.get("attachments") or [message.get("attachment")]
    return [
        str(item["payload"]["attachment_id"])
        for item in items
        if isinstance(item, dict) and "attachment_id" in (item.get("payload") or {})
    ]


def _select(full: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Graph returns the requested fields, and always the id."""
    out = {key: full[key] for key in fields if key in full}
    out.setdefault("id", full["id"])
    return out


# ---------------------------------------------------------------------------------------------
# Simulated customers


@dataclass
class _Customer:
    language: str
    name: str
    psid: str
    script: tuple[str, ...]
    thanks: tuple[str, ...]
    caption: str
    location: dict[str, Any]
    line: int = 0
    own: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)


class MessengerChatter(Chatter):
    """Simulated people writing to one page in several languages (the WhatsApp personas).

    Each person follows a short shop/support dialogue and now and then sends a photo, a receipt
    PDF, a pinned location, taps "Talk to an agent" (a postback), quotes one of their own
    messages, or thanks / reacts to the page's latest reply. Deterministic for a ``seed``
    (apart from ids and timestamps).
    """

    def __init__(
        self,
        sim: MessengerSimulator,
        page_id: str,
        *,
        seed: int = 0,
        customers: int | None = None,
        languages: Sequence[str] | None = None,
    ) -> None:
        self.sim = sim
        self.page_id = page_id
        self.rng = random.Random(seed)
        personas = personas_speaking(languages)
        self.customers: list[_Customer] = []
        for i in range(customers or len(personas)):
            p = personas[i % len(personas)]
            psid = str(self.rng.randrange(10**15, 10**16))
            self.customers.append(
                _Customer(p.language, p.name, psid, p.script, p.thanks, p.caption, p.location)
            )
            sim.add_user(page_id, psid, p.name)

    def step(self) -> str:
        """Send one plausible next event from one person; returns its mid ("" for reactions)."""
        c = self.rng.choice(self.customers)
        business = self.sim.last_outbound(self.page_id, c.psid)
        if business is not None and business not in c.answered:
            c.answered.add(business)
            if self.rng.random() < 0.3:
                self.sim.customer_reacts(self.page_id, c.psid, business)
                return ""
            return self._send(c, {"text": self.rng.choice(c.thanks), "reply_to": {"mid": business}})
        roll = self.rng.random()
        if roll < 0.08:
            colour = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
            url = self.sim.customer_uploads(tiny_png(colour), "image/png")
            return self._send(c, {"attachments": [{"type": "image", "payload": {"url": url}}]})
        if roll < 0.11:
            url = self.sim.customer_uploads(
                tiny_pdf("Receipt 48213"), "application/pdf", "receipt-48213.pdf"
            )
            return self._send(c, {"attachments": [{"type": "file", "payload": {"url": url}}]})
        if roll < 0.15:
            loc = c.location
            attachment = {
                "type": "location",
                "title": loc.get("name", "Pinned Location"),
                "payload": {"coordinates": {"lat": loc["latitude"], "long": loc["longitude"]}},
            }
            return self._send(c, {"attachments": [attachment]})
        if roll < 0.18:
            return self.sim.customer_postback(self.page_id, c.psid, "Talk to an agent", "AGENT")
        if roll < 0.23 and c.own:
            quoted = self.rng.choice(c.own)
            return self._send(c, {"text": c.script[-2], "reply_to": {"mid": quoted}})
        text = c.script[c.line % len(c.script)]
        c.line += 1
        return self._send(c, {"text": text})

    def _send(self, c: _Customer, message: dict[str, Any]) -> str:
        mid = self.sim.customer_sends(self.page_id, c.psid, message, name=c.name)
        c.own = [*c.own[-9:], mid]
        return mid


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m madoguchi.simulators.messenger --port P --config pages.json``: ``pages.json``
    is a list of :meth:`MessengerSimulator.add_page` keyword arguments."""
    parser = argparse.ArgumentParser(description="Fake Messenger Platform on the loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", required=True)
    parser.add_argument("--chatter", type=float, default=0.0, help="people write every N seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(args.config, encoding="utf-8") as fh:
        pages = json.load(fh)
    sim = MessengerSimulator()
    for kwargs in pages:
        sim.add_page(**kwargs)
    sock = bind_socket(args.host, args.port)
    sim.base_url = f"http://{args.host}:{sock.getsockname()[1]}"
    stop = threading.Event()
    if args.chatter > 0:
        for i, kwargs in enumerate(pages):
            chatter = MessengerChatter(sim, str(kwargs["page_id"]), seed=args.seed + i)
            threading.Thread(
                target=chatter.run, args=(args.chatter, stop), name=f"chatter-{i}", daemon=True
            ).start()
    print(f"Messenger simulator listening on {sim.base_url}", flush=True)
    sim.serve_forever(sock, stop)


if __name__ == "__main__":
    main()
