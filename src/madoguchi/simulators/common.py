"""What the platform simulators share: serving an ASGI app from a thread, background delivery
of webhooks with retries, request and webhook logs, and simulated customers' voices.

``SimulatorCore`` is the base of every webhook-sending simulator (WhatsApp, Messenger, Viber):
it holds the logs and counters, the background ``Scheduler`` and the retry loops; a subclass
says how one webhook is posted (``_attempt``) and closes its own HTTP client
(``_close_transport``). ``HubSignedWebhooks`` is that part for Meta's platforms (WhatsApp,
Messenger): ``X-Hub-Signature-256`` over the exact bytes (PROTOCOLS.md A3, C2).

This module must not import Django: the simulators run in benchmark and test processes of their
own.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import logging
import random
import secrets
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "PERSONAS",
    "Chatter",
    "HubSignedWebhooks",
    "Persona",
    "Poster",
    "RequestRecord",
    "RequestRecorder",
    "RunningServer",
    "Scheduler",
    "SimulatorCore",
    "TokenBucket",
    "WebhookAttempt",
    "bind_socket",
    "encode_payload",
    "fbtrace_id",
    "graph_response",
    "hub_handshake",
    "personas_speaking",
    "post_webhook",
    "serve_asgi_in_thread",
    "sign_payload",
    "tiny_pdf",
    "tiny_png",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Meta's webhook bytes (WhatsApp A3, Messenger C2)


def encode_payload(obj: Any) -> bytes:
    """Serialize a webhook payload exactly as Meta does (A3).

    Returns compact JSON with non-ASCII characters escaped (``\\uXXXX``, surrogate pairs for
    emoji); these exact bytes are what :func:`sign_payload` signs.
    """
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def sign_payload(body: bytes, app_secret: str) -> str:
    """Return the ``X-Hub-Signature-256`` header value for ``body``: ``sha256=<lowercase hex>``."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def fbtrace_id() -> str:
    """A trace id shaped like the ``fbtrace_id`` of Graph API errors."""
    return secrets.token_urlsafe(17)[:23]


def graph_response(obj: Any, status_code: int = 200) -> Response:
    """A Graph API answer: compact, ASCII-escaped JSON."""
    return Response(
        json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode(),
        status_code=status_code,
        media_type="application/json",
    )


def hub_handshake(
    url: str, verify_token: str, *, timeout: float, challenge: str | None = None
) -> bool:
    """Run Meta's webhook verification against ``url`` (WhatsApp A2, Messenger C1): ``GET
    ?hub.mode=subscribe&hub.challenge=...&hub.verify_token=...`` (added to the URL's own query);
    True when the answer is HTTP 200 with the challenge echoed verbatim. Never raises."""
    challenge = challenge or str(random.randrange(10**9, 10**10))
    query = urllib.parse.urlencode(
        {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": verify_token}
    )
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        sep = "&" if parts.query else ""
        conn.request("GET", f"{parts.path or '/'}?{parts.query}{sep}{query}")
        response = conn.getresponse()
        return response.status == 200 and response.read() == challenge.encode()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Records exposed to tests


class RequestRecord(NamedTuple):
    """One HTTP request the simulator answered."""

    method: str
    path: str
    status: int


class WebhookAttempt(NamedTuple):
    """One webhook POST attempt: ``status`` is the HTTP status, or an error description."""

    url: str
    status: int | str
    body: bytes


# ---------------------------------------------------------------------------------------------
# Background work


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` per second (throughput limits)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = now

    def ready(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


class Scheduler:
    """Runs callables at a given monotonic time on a small thread pool.

    One timer thread hands due jobs to the pool, so waiting between status webhooks never
    occupies a worker and delivery never runs on the server's event loop.
    """

    def __init__(self, workers: int) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wa-sim-webhook")
        self._thread = threading.Thread(target=self._run, name="wa-sim-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        if delay <= 0:
            self._submit(fn)
            return
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return
        try:
            self._pool.submit(self._guard, fn)
        except RuntimeError:  # pool shut down between the check and the submit
            pass

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("simulator background job failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                due = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
            for fn in due:
                self._submit(fn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)


class Poster:
    """A minimal keep-alive HTTP/1.1 POST client: one connection per thread and origin.

    Webhook delivery is the simulator's hottest path under benchmark load (three status
    webhooks per accepted send); ``http.client`` costs about a third of the CPU of a
    general-purpose client per request, which keeps the simulator from being the bottleneck.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body``; returns the HTTP status. Raises ``OSError``/``HTTPException``.

        A request on a reused connection that the peer had closed is retried once on a new
        connection, as browsers and HTTP libraries do; webhooks are at-least-once anyway.
        """
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conns: dict[tuple[Any, ...], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {}
        )
        while True:
            conn = conns.get(key)
            reused = conn is not None
            if conn is None:
                cls = (
                    http.client.HTTPSConnection
                    if parts.scheme == "https"
                    else http.client.HTTPConnection
                )
                conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout)
                conns[key] = conn
                with self._lock:
                    self._all.add(conn)
            try:
                conn.request("POST", target, body=body, headers=dict(headers))
                response = conn.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop(conns, key, conn)
                if reused:
                    continue
                raise
            except (OSError, http.client.HTTPException):
                self._drop(conns, key, conn)
                raise
            if response.will_close:
                self._drop(conns, key, conn)
            return response.status

    def _drop(
        self,
        conns: dict[tuple[Any, ...], http.client.HTTPConnection],
        key: tuple[Any, ...],
        conn: http.client.HTTPConnection,
    ) -> None:
        conns.pop(key, None)
        conn.close()
        with self._lock:
            self._all.discard(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, set()
        for conn in conns:
            conn.close()


class RequestRecorder:
    """ASGI middleware calling ``record(method, path, status)`` after every HTTP request (status
    0 when the app sent no response)."""

    def __init__(self, app: ASGIApp, record: Callable[[str, str, int], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.record(scope["method"], scope["path"], status)


# ---------------------------------------------------------------------------------------------
# The shared part of a simulator


class SimulatorCore:
    """Base of the webhook-sending simulators: request and webhook logs, error counters, the
    background scheduler, webhook delivery with retries, and the lifecycle.

    A subclass's ``__init__`` sets, before building its app: ``_lock`` (an RLock guarding all
    state, never held during network I/O), ``_stats`` (with ``requests``, ``webhook_attempts``,
    ``webhooks_ok``, ``webhooks_failed`` and the ``_errors_key`` dict), ``requests`` and
    ``webhook_log`` (lists), ``retry_delays`` (waits between attempts: ``len + 1`` attempts at
    most), ``log_limit``, ``_delivery_workers``, ``_closed = False`` and ``_scheduler = None``.
    It implements ``_attempt`` (post one webhook) and ``_close_transport``.
    """

    app: ASGIApp
    base_url: str
    retry_delays: tuple[float, ...]
    log_limit: int
    requests: list[Any]
    webhook_log: list[Any]
    _lock: threading.RLock
    _stats: dict[str, Any]
    _closed: bool
    _scheduler: Scheduler | None
    _delivery_workers: int
    # The ``_stats`` key counting errors answered, by code.
    _errors_key = "errors_by_code"

    # -- lifecycle ------------------------------------------------------------------------

    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        """Serve :attr:`app` with uvicorn in a background thread; returns once it accepts.
        ``base_url`` becomes the server's URL (media URLs are built on it)."""
        running = serve_asgi_in_thread(self.app, host=host, port=port)
        self.base_url = running.url
        return running

    def serve_forever(self, sock: socket.socket, stop: threading.Event) -> None:
        """Serve :attr:`app` on ``sock`` in this thread until uvicorn exits (the command line's
        server, stopped by a signal); then set ``stop`` (the chatters') and close."""
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            stop.set()
            self.close()

    def close(self) -> None:
        """Stop the webhook threads (queued deliveries are dropped) and the HTTP client."""
        with self._lock:
            self._closed = True
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()
        self._close_transport()

    def _close_transport(self) -> None:
        """Close the client webhooks are posted with."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- logs and counters ------------------------------------------------------------------

    def _trim(self, items: list[Any]) -> int:
        """Drop the oldest entries of a log past ``log_limit``; returns how many. Trimming in
        chunks (at 125 %) keeps memory bounded in long benchmarks at O(1) amortized."""
        if len(items) > self.log_limit * 1.25:
            drop = len(items) - self.log_limit
            del items[:drop]
            return drop
        return 0

    def _record_request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append(RequestRecord(method, path, status))
            self._stats["requests"] += 1
            self._trim(self.requests)

    def _count_error(self, code: int) -> None:
        with self._lock:
            by_code = self._stats[self._errors_key]
            by_code[str(code)] = by_code.get(str(code), 0) + 1

    # -- webhook delivery -------------------------------------------------------------------

    def _sched(self) -> Scheduler | None:
        """The background scheduler, started on first use; ``None`` once closed."""
        with self._lock:
            if self._closed:
                return None
            if self._scheduler is None:
                self._scheduler = Scheduler(self._delivery_workers)
            return self._scheduler

    def _call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the background pool after ``delay`` seconds; dropped once closed."""
        scheduler = self._sched()
        if scheduler is not None:
            scheduler.call_later(delay, fn)

    def _attempt(self, url: str | None, secret: str, body: bytes) -> Any:
        """Post ``body`` once to ``url``, signed with ``secret``; never raises: a failure is
        the attempt's ``status`` (an error description), a missing ``url`` gives an attempt
        with ``url`` "" that is not retried."""
        raise NotImplementedError

    def _post_once(self, url: str | None, secret: str, body: bytes) -> Any:
        """One attempt, logged in ``webhook_log`` and counted."""
        attempt = self._attempt(url, secret, body)
        with self._lock:
            self.webhook_log.append(attempt)
            self._trim(self.webhook_log)
            self._stats["webhook_attempts"] += 1
            if attempt.status == 200:
                self._stats["webhooks_ok"] += 1
        return attempt

    @staticmethod
    def _final(attempt: Any) -> bool:
        # Anything but HTTP 200 is redelivered; a missing URL is not worth retrying.
        return attempt.status == 200 or not attempt.url

    def _deliver_sync(self, url: str | None, secret: str, body: bytes) -> Any:
        """Post in the caller's thread, retries included; returns the last attempt."""
        return self._retry_sync(lambda: self._post_once(url, secret, body))

    def _deliver_async(
        self,
        url: str | None,
        secret: str,
        body: bytes,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Post from the pool; retry per ``retry_delays``; call ``then`` once done or given up."""
        self._retry_async(lambda: self._post_once(url, secret, body), then)

    def _retry_sync(self, post: Callable[[], Any]) -> Any:
        attempt = post()
        for delay in self.retry_delays:
            if self._final(attempt):
                break
            time.sleep(delay)
            attempt = post()
        if not self._final(attempt):
            with self._lock:
                self._stats["webhooks_failed"] += 1
        return attempt

    def _retry_async(
        self, post: Callable[[], Any], then: Callable[[], None] | None, tries: int = 0
    ) -> None:
        attempt = post()
        if self._final(attempt) or tries >= len(self.retry_delays):
            if not self._final(attempt):
                with self._lock:
                    self._stats["webhooks_failed"] += 1
            if then is not None:
                then()
            return
        self._call_later(self.retry_delays[tries], lambda: self._retry_async(post, then, tries + 1))


def post_webhook(
    poster: Poster, url: str | None, body: bytes, headers: Mapping[str, str]
) -> WebhookAttempt:
    """One POST of ``body`` with ``poster``; never raises (see ``SimulatorCore._attempt``)."""
    if not url:
        return WebhookAttempt("", "skipped: no webhook_url", body)
    try:
        return WebhookAttempt(url, poster.post(url, body, headers), body)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return WebhookAttempt(url, f"{type(exc).__name__}: {exc}", body)


class HubSignedWebhooks(SimulatorCore):
    """Webhooks as Meta posts them: JSON signed with ``X-Hub-Signature-256`` (the app secret),
    from Meta's user agent, through a keep-alive ``Poster`` the subclass sets as ``_poster``."""

    _poster: Poster

    def _attempt(self, url: str | None, secret: str, body: bytes) -> WebhookAttempt:
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign_payload(body, secret),
            "User-Agent": "facebookexternalua",
        }
        return post_webhook(self._poster, url, body, headers)

    def _close_transport(self) -> None:
        self._poster.close()

    async def _graph_error_response(self, request: Any, exc: Exception) -> Response:
        """The Starlette handler of the simulator's Graph errors (anything with ``code``,
        ``http_status`` and ``body()``): counted, answered in Graph's error shape."""
        self._count_error(exc.code)  # type: ignore[attr-defined]
        return graph_response(exc.body(), exc.http_status)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Serving


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread (see :func:`serve_asgi_in_thread`)."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread (in-flight requests get ~1 s)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (``port`` 0: a free one), inheritable
    so that a server process started with it can take it over."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve_asgi_in_thread(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningServer:
    """Serve any ASGI app with uvicorn in a daemon thread; returns once it accepts connections.

    The socket is bound here, so ``port=0`` yields the real port at once. Raises
    ``RuntimeError`` if the server does not start within ``startup_timeout`` seconds.
    """
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{host}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.005)
    return RunningServer(server=server, thread=thread, host=host, port=sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Simulated customers


def tiny_png(rgb: tuple[int, int, int] = (220, 80, 60), size: int = 8) -> bytes:
    """A valid solid-colour ``size``x``size`` RGB PNG, built with zlib and struct only."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(rgb) * size
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


def tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` (Latin-1) in Helvetica, for simulated documents."""
    content = f"BT /F1 12 Tf 40 100 Td ({text}) Tj ET".encode("latin-1", "replace")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


@dataclass(frozen=True)
class Persona:
    """A simulated customer's voice: language, name, phone number shape, what they write
    (``script``, ``thanks``, ``follow_up``, ``caption``), where they are and a friend's name
    (shared as a contact card). Every simulator's chatter draws its customers from PERSONAS."""

    language: str
    name: str
    country_prefix: str
    local_digits: int
    script: tuple[str, ...]
    thanks: tuple[str, ...]
    follow_up: str
    caption: str
    location: dict[str, Any]
    friend: tuple[str, str]


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "en",
        "Sheena Nelson",
        "1650555",
        4,
        (
            "Hi! I ordered a pair of running shoes last week and haven't had a shipping update.",
            "The order number is #48213.",
            "Could you check whether it has shipped?",
            "Also, do you have the same model in size 42?",
            "Is it possible to change the delivery address?",
            "Great, thank you so much!",
        ),
        ("Thanks!", "Perfect, thanks \U0001f64f", "Got it, thank you."),
        "Any news on this?",
        "Here's a photo of the box",
        {
            "latitude": 37.44221496582,
            "longitude": -122.16165924072,
            "name": "Philz Coffee",
            "address": "101 Forest Ave, Palo Alto, CA 94301",
        },
        ("Mark", "Nelson"),
    ),
    Persona(
        "ja",
        "佐藤 花子",
        "8190",
        8,
        (
            "こんにちは。先週注文した商品がまだ届いていません。",
            "注文番号は 48213 です。",
            "配送状況を確認していただけますか？",
            "あと、同じ商品の別の色はありますか？",
            "お届け先の住所を変更することはできますか？",
            "ありがとうございます、助かりました！",
        ),
        ("ありがとうございます！", "了解しました、ありがとう\U0001f64f"),
        "こちらの件、その後いかがでしょうか？",
        "箱の写真です",
        {
            "latitude": 35.658034,
            "longitude": 139.701636,
            "name": "渋谷駅",
            "address": "東京都渋谷区道玄坂1丁目",
        },
        ("太郎", "佐藤"),
    ),
    Persona(
        "es",
        "Lucía Gómez",
        "346",
        8,
        (
            "Hola, buenas tardes. Compré una chaqueta y me llegó con la talla equivocada.",
            "Mi número de pedido es 48213.",
            "¿Puedo cambiarla por una talla M?",
            "¿Cuánto tarda el cambio en llegar?",
            "¿Tengo que pagar el envío de la devolución?",
            "Perfecto, muchas gracias por la ayuda.",
        ),
        ("¡Gracias!", "Perfecto, gracias \U0001f64f"),
        "¿Alguna novedad sobre esto?",
        "Aquí está la foto de la etiqueta",
        {"latitude": 40.416775, "longitude": -3.70379, "name": "Puerta del Sol"},
        ("Javier", "Gómez"),
    ),
    Persona(
        "pt_BR",
        "João Pereira",
        "55119",
        8,
        (
            "Oi, tudo bem? Fiz um pedido ontem e queria saber o prazo de entrega.",
            "O número do pedido é 48213.",
            "Vocês entregam em Campinas?",
            "Posso pagar com Pix?",
            "Tem como trocar a cor do produto?",
            "Obrigado pela atenção!",
        ),
        ("Valeu!", "Obrigado! \U0001f60a"),
        "Alguma novidade sobre isso?",
        "Segue a foto do produto",
        {"latitude": -23.561414, "longitude": -46.655881, "name": "Avenida Paulista"},
        ("Ana", "Pereira"),
    ),
    Persona(
        "ar",
        "أحمد الحربي",
        "9665",
        8,
        (
            "مرحبا، طلبت ساعة من متجركم الأسبوع الماضي ولم تصل بعد.",
            "رقم الطلب هو 48213.",
            "هل يمكنكم التحقق من حالة الشحن؟",
            "هل يوجد خيار للدفع عند الاستلام؟",
            "هل يمكن تغيير عنوان التوصيل؟",
            "شكرا جزيلا على المساعدة!",
        ),
        ("شكرا!", "تمام، شكرا لكم \U0001f64f"),
        "هل من جديد بخصوص هذا؟",
        "هذه صورة المنتج",
        {"latitude": 24.711667, "longitude": 46.674167, "name": "برج المملكة"},
        ("خالد", "الحربي"),
    ),
    Persona(
        "vi",
        "Nguyễn Thị Lan",
        "849",
        8,
        (
            "Chào shop, mình đặt một đôi giày hôm thứ Hai mà chưa thấy giao.",
            "Mã đơn hàng của mình là 48213.",
            "Shop kiểm tra giúp mình đơn hàng đã gửi đi chưa nhé?",
            "Mẫu này còn size 39 không shop?",
            "Mình có thể đổi địa chỉ giao hàng được không?",
            "Cảm ơn shop nhiều nha!",
        ),
        ("Cảm ơn shop!", "Dạ ok, cảm ơn shop \U0001f64f"),
        "Có tin gì về việc này chưa shop?",
        "Ảnh sản phẩm đây shop",
        {"latitude": 21.028511, "longitude": 105.852401, "name": "Hồ Hoàn Kiếm"},
        ("Minh", "Nguyễn"),
    ),
    Persona(
        "id",
        "Putri Wulandari",
        "62812",
        8,
        (
            "Halo kak, saya mau tanya soal pesanan saya yang belum sampai.",
            "Nomor pesanannya 48213.",
            "Apakah bisa dicek sudah dikirim atau belum?",
            "Apakah produk ini ada warna hitam?",
            "Bisa bayar pakai transfer bank?",
            "Oke kak, terima kasih banyak!",
        ),
        ("Makasih kak!", "Siap, terima kasih \U0001f64f"),
        "Ada kabar soal ini kak?",
        "Ini fotonya kak",
        {"latitude": -6.175392, "longitude": 106.827153, "name": "Monas"},
        ("Budi", "Santoso"),
    ),
    Persona(
        "de",
        "Jonas Becker",
        "49151",
        8,
        (
            "Hallo, ich habe letzte Woche eine Kaffeemaschine bestellt, aber noch keine "
            "Versandbestätigung bekommen.",
            "Die Bestellnummer ist 48213.",
            "Können Sie bitte nachsehen, ob das Paket schon unterwegs ist?",
            "Kann ich die Lieferadresse noch ändern?",
            "Gibt es für das Gerät auch eine Garantieverlängerung?",
            "Super, vielen Dank für die schnelle Hilfe!",
        ),
        ("Danke!", "Alles klar, danke \U0001f44d"),
        "Gibt es hierzu schon Neuigkeiten?",
        "Hier ist ein Foto vom Paket",
        {"latitude": 52.521918, "longitude": 13.413215, "name": "Alexanderplatz"},
        ("Lena", "Becker"),
    ),
    Persona(
        "fr",
        "Camille Dubois",
        "336",
        8,
        (
            "Bonjour, j'ai commandé une lampe la semaine dernière et elle est arrivée cassée.",
            "Mon numéro de commande est le 48213.",
            "Est-ce que je peux avoir un remplacement ou un remboursement ?",
            "Je vous envoie une photo du colis.",
            "Combien de temps faut-il pour le remboursement ?",
            "Parfait, merci beaucoup !",
        ),
        ("Merci !", "Super, merci \U0001f64f"),
        "Des nouvelles à ce sujet ?",
        "Voici la photo du colis",
        {"latitude": 48.858370, "longitude": 2.294481, "name": "Tour Eiffel"},
        ("Julien", "Dubois"),
    ),
)


def personas_speaking(languages: Sequence[str] | None) -> list[Persona]:
    """The PERSONAS writing one of ``languages`` (all of them for None), in their order; raises
    ValueError when none does."""
    personas = [p for p in PERSONAS if languages is None or p.language in languages]
    if not personas:
        raise ValueError(f"no persona speaks any of {languages}")
    return personas


class Chatter:
    """Base of the simulated customers of a simulator: ``step()`` makes one of them act (the
    subclass's dialogue); ``run`` calls it on a timer."""

    def step(self) -> Any:
        raise NotImplementedError

    def run(self, interval_seconds: float, stop_event: threading.Event) -> None:
        """Call :meth:`step` every ``interval_seconds`` until ``stop_event`` is set; a step that
        fails is logged and the next one runs."""
        while not stop_event.is_set():
            try:
                self.step()
            except Exception:
                log.exception("%s step failed", type(self).__name__)
            stop_event.wait(interval_seconds)
