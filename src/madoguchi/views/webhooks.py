"""Platform webhooks, as a lean ASGI app in front of Django (STYLE §5).

``GET /webhooks/<kind>/<channel_id>`` answers the platform's handshake. ``POST`` reads the body
(refusing more than WEBHOOK_MAX_BYTES with 413 before reading it all), checks the signature over
the raw bytes (401, nothing stored), checks the payload can be read (400, nothing stored), stores
the raw body and only then answers 200 (``RawEventWriter``: a group commit; 503 if the commit
fails): empty, or with the body the provider gives for platforms that read the answer
(``Provider.webhook_response``: Viber's welcome message). Processing happens in the worker.

It bypasses Django's request machinery on purpose: this path carries the platform's whole
traffic (statuses at 3x the outgoing rate) and Meta wants a median answer under 250 ms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from madoguchi.models import Channel, RawEvent
from madoguchi.providers.base import Provider
from madoguchi.providers.registry import UnknownChannelKind, provider_for
from madoguchi.realtime import wakeup

log = logging.getLogger(__name__)

CHANNEL_CACHE_SECONDS = 5.0
CHANNEL_CACHE_SIZE = 1024
# (kind, channel id) -> (loaded at, provider or None). Keyed by kind too: a request naming the
# wrong kind must not make genuine deliveries for the right one fail.
_channels: OrderedDict[tuple[str, int], tuple[float, Provider | None]] = OrderedDict()


def load_provider(channel_id: int, kind: str) -> Provider | None:
    try:
        channel = Channel.objects.filter(pk=channel_id, kind=kind, is_active=True).first()
    finally:
        release_connection()
    return provider_for(channel) if channel is not None else None


def raw_event_insert() -> tuple[str, tuple[Any, ...]]:
    """The INSERT of one RawEvent row for the current connection, built from the model:
    ``(sql, defaults)``, where a row's parameters are ``(channel_id, body, received_at,
    *defaults)`` and ``defaults`` are the other columns' default values."""
    given = [RawEvent._meta.get_field(name) for name in ("channel_id", "body", "received_at")]
    rest = [f for f in RawEvent._meta.concrete_fields if not f.primary_key and f not in given]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in given + rest)
    placeholders = ", ".join(["%s"] * (len(given) + len(rest)))
    table = quote(RawEvent._meta.db_table)
    # Identifiers from the model, quoted; every value is a parameter.
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"  # noqa: S608
    return sql, tuple(f.get_db_prep_save(f.get_default(), connection) for f in rest)


def store_raw_events(rows: list[tuple[int, bytes]]) -> None:
    """Insert webhook bodies ``(channel id, raw body)`` in one transaction; when it returns
    they are committed. Raises DatabaseError (the connection is then dropped).

    One prepared INSERT run with ``executemany``, not the ORM's ``bulk_create``: that compiled
    every field of every row in Python, the largest cost of this path under load (bench B1)."""
    received_at = RawEvent._meta.get_field("received_at").get_db_prep_save(
        timezone.now(), connection
    )
    try:
        sql, defaults = raw_event_insert()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(
                sql, [(channel_id, body, received_at, *defaults) for channel_id, body in rows]
            )
    except DatabaseError:
        close_old_connections()
        raise
    finally:
        release_connection()


class RawEventWriter:
    """Group commit for webhook bodies: every request waits until its own body is committed,
    but requests that arrive while a commit is under way share the next one. When traffic is
    light a body is written at once, alone; under load one transaction carries many.

    Commits run on a thread of their own (``store_raw_events``), one at a time: not on the
    event loop, where a commit that waits for the database lock (SQLite: up to its busy
    timeout) or a WAL checkpoint's fsync would stall every request and socket; and not on
    asgiref's shared thread, where they would queue behind other synchronous work.

    Backpressure: with more than MAX_PENDING bodies waiting (a stalled database), new requests
    are refused with 503 at once rather than queued in memory."""

    MAX_PENDING = 5000

    def __init__(self) -> None:
        self.pending: list[tuple[int, bytes, asyncio.Future[None]]] = []
        self.flushing = False
        self.executor: ThreadPoolExecutor | None = None

    async def store(self, channel_id: int, body: bytes) -> None:
        """Return once ``body`` is committed; raise DatabaseError if it was not."""
        if len(self.pending) >= self.MAX_PENDING:
            raise DatabaseError("too many bodies waiting for the database")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((channel_id, body, future))
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().create_task(self.flush())
        await future

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="webhook-writer")
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                rows = [(channel_id, body) for channel_id, body, _ in batch]
                try:
                    await loop.run_in_executor(self.executor, store_raw_events, rows)
                except Exception as exc:
                    for _channel, _body, future in batch:
                        if not future.done():
                            future.set_exception(DatabaseError(str(exc)))
                    continue
                wakeup.local_event.set()  # once per commit, not per body
                for _channel, _body, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self.flushing = False


writer = RawEventWriter()


def release_connection() -> None:
    """Give a pooled PostgreSQL connection back at once (this path has no request_finished
    signal to do it). SQLite's connection is kept: reopening it costs more than the insert."""
    if connection.vendor != "sqlite":
        connection.close()


async def cached_provider(channel_id: int, kind: str) -> Provider | None:
    now = time.monotonic()
    key = (kind, channel_id)
    cached = _channels.get(key)
    if cached is not None and now - cached[0] < CHANNEL_CACHE_SECONDS:
        return cached[1]
    provider = await sync_to_async(load_provider)(channel_id, kind)
    _channels[key] = (now, provider)
    _channels.move_to_end(key)
    while len(_channels) > CHANNEL_CACHE_SIZE:
        _channels.popitem(last=False)
    return provider


def is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 19


async def respond(
    send: Any, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def error(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await respond(send, status, body)


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def webhook_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    parts = scope["path"].strip("/").split("/")
    if len(parts) != 3 or parts[0] != "webhooks" or not is_id(parts[2]):
        await error(send, 404, "not_found", "No such webhook.")
        return
    kind, channel_id = parts[1], int(parts[2])
    try:
        provider = await cached_provider(channel_id, kind)
    except UnknownChannelKind:
        provider = None
    except DatabaseError:
        await error(send, 503, "unavailable", "The database is unavailable; retry later.")
        return
    if provider is None:
        await error(send, 404, "not_found", "No such channel.")
        return

    method = scope["method"]
    if method == "GET":
        from urllib.parse import parse_qsl

        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        status, text = provider.handshake(query)
        await respond(send, status, text.encode(), b"text/plain; charset=utf-8")
        return
    if method != "POST":
        await error(send, 405, "method_not_allowed", "Use GET or POST.")
        return

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    limit = settings.WEBHOOK_MAX_BYTES
    declared = headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        await error(send, 413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
        return
    try:
        body = await read_body(receive, limit)
    except BodyTooLarge:
        await error(send, 413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
        return
    except ConnectionAbortedError:
        return
    if not provider.verify_signature(headers, body):
        await error(send, 401, "invalid_signature", "Missing or invalid signature.")
        return
    try:
        provider.precheck_webhook(body)
    except Exception as exc:  # the provider's payload error, or anything a bad body provokes
        code = getattr(exc, "code", "invalid_payload")
        await error(send, 400, str(code), "The payload cannot be read.")
        return
    try:
        await writer.store(channel_id, body)
    except DatabaseError:
        # Never a 200 without a commit: the platform will deliver again.
        log.warning("webhook for channel %s not stored: database unavailable", channel_id)
        await error(send, 503, "unavailable", "The database is unavailable; retry later.")
        return
    if settings.REDIS_URL:
        # Publishing to Redis is a network call: never on the event loop.
        await sync_to_async(wakeup.notify, thread_sensitive=False)()
    # Some platforms read the answer (Viber's welcome message on conversation_started), so
    # anything else is an empty 200: Viber would take any JSON body there for a welcome.
    answer = provider.webhook_response(body)
    await respond(send, 200, answer or b"")
