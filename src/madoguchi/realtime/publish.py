"""The only publisher of real-time events, and their delivery to sockets.

Actions call ``publish_on_commit``: nothing reaches a browser unless the change it describes was
committed. Each event carries the ids of the users allowed to see it (computed by the action,
STYLE §2); it is never broadcast.

Delivery costs one message per event, whatever the number of recipients:
- in one process (no ``REDIS_URL``), the event goes straight to this process's sockets of those
  users (a registry kept by the consumers, on the server's event loop);
- with Redis, the event and its recipient list are published once on one Redis channel; every
  server process subscribes to it and delivers to its own sockets of those users. When its
  subscription was interrupted, a server tells its sockets to re-fetch (events may be lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction

from . import redisconn

log = logging.getLogger(__name__)

CHANNEL = "events"  # on Redis: redisconn.channel_name(CHANNEL)

_server_loop: asyncio.AbstractEventLoop | None = None
_listeners: list[Callable[[dict[str, Any], list[int]], None]] = []
_listeners_lock = threading.Lock()


class Socket(Protocol):
    def push(self, text: str) -> None:
        """Queue an encoded event (JSON text) for sending, in order; never blocks."""


# user id -> this process's open sockets of that user. Touched only on the server loop.
_sockets: dict[int, set[Socket]] = {}


def register_server_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    global _server_loop
    _server_loop = loop


def register_socket(user_id: int, socket: Socket) -> None:
    _sockets.setdefault(user_id, set()).add(socket)


def unregister_socket(user_id: int, socket: Socket) -> None:
    sockets = _sockets.get(user_id)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del _sockets[user_id]


def deliver_local(event: dict[str, Any], user_ids: Iterable[int]) -> None:
    """On the server loop: hand the event to this process's sockets of those users. The event is
    encoded once, whatever the number of sockets."""
    text = None
    for user_id in user_ids:
        sockets = _sockets.get(user_id)
        if not sockets:
            continue
        if text is None:
            text = json.dumps(event)
        for socket in tuple(sockets):
            socket.push(text)


def deliver_everywhere_local(event: dict[str, Any]) -> None:
    text = json.dumps(event)
    for sockets in tuple(_sockets.values()):
        for socket in tuple(sockets):
            socket.push(text)


def add_listener(listener: Callable[[dict[str, Any], list[int]], None]) -> None:
    """Observe every published event (tests, in-process integrations)."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[dict[str, Any], list[int]], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def server_running() -> bool:
    return _server_loop is not None and _server_loop.is_running()


def has_audience() -> bool:
    """Whether an event published from here can reach anyone: a socket of this process, another
    process through Redis, or a listener. Lets bulk paths skip building events that would be
    dropped (a worker process without Redis)."""
    return bool(_listeners) or server_running() or bool(settings.REDIS_URL)


def publish_on_commit(event: dict[str, Any], user_ids: Iterable[int]) -> None:
    recipients = sorted(set(user_ids))
    transaction.on_commit(lambda: publish(event, recipients))


def publish(event: dict[str, Any], user_ids: list[int]) -> None:
    """Send now (after commit). Failures are logged, never raised: the socket is not the record,
    and browsers re-fetch state after a gap."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event, user_ids)
    if not user_ids:
        return
    if settings.REDIS_URL:
        _redis_outbox.put(json.dumps({"event": event, "users": user_ids}))
        _ensure_redis_publisher()
        return
    loop = _server_loop
    if loop is None or not loop.is_running():
        return  # no socket can be held by this process, and nothing reaches another one
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        deliver_local(event, user_ids)
    else:
        loop.call_soon_threadsafe(deliver_local, event, user_ids)


# Events bound for Redis leave through one publisher thread: the committing thread (a worker
# applying a batch of a hundred messages makes two hundred events) never waits for Redis, and
# whatever piles up while one round trip is under way goes out in the next pipeline, in order.
_redis_outbox: queue.SimpleQueue[str] = queue.SimpleQueue()
_redis_publisher: threading.Thread | None = None
_redis_publisher_lock = threading.Lock()
REDIS_PIPELINE_MAX = 500


def _ensure_redis_publisher() -> None:
    global _redis_publisher
    if _redis_publisher is not None:
        return
    with _redis_publisher_lock:
        if _redis_publisher is None:
            _redis_publisher = threading.Thread(
                target=_publish_to_redis_forever, name="madoguchi-redis-publisher", daemon=True
            )
            _redis_publisher.start()


def _publish_to_redis_forever() -> None:
    while True:
        batch = [_redis_outbox.get()]
        while len(batch) < REDIS_PIPELINE_MAX:
            try:
                batch.append(_redis_outbox.get_nowait())
            except queue.Empty:
                break
        publish_batch_to_redis(batch)


def publish_batch_to_redis(payloads: list[str]) -> None:
    """One round trip for many events. Failures are logged, never raised: a dead Redis must
    not undo a committed change, and browsers re-fetch after a gap."""
    try:
        pipe = redisconn.client().pipeline(transaction=False)
        name = redisconn.channel_name(CHANNEL)
        for payload in payloads:
            pipe.publish(name, payload)
        pipe.execute()
    except Exception:
        log.warning("real-time publish of %s events failed", len(payloads), exc_info=True)


async def relay_from_redis(stop: asyncio.Event) -> None:
    """In a server process with Redis: deliver every published event to this process's sockets.
    After an interruption, sockets are told to re-fetch their state (events may have been lost)."""
    import redis.asyncio as aioredis

    interrupted = False
    while not stop.is_set():
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(redisconn.channel_name(CHANNEL))
            if interrupted:
                deliver_everywhere_local({"type": "resync"})
                interrupted = False
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                try:
                    data = json.loads(message["data"])
                    deliver_local(data["event"], data["users"])
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable real-time message ignored")
        except asyncio.CancelledError:
            raise
        except Exception:
            if not interrupted:
                log.warning("real-time relay lost Redis; retrying", exc_info=True)
            interrupted = True
            await asyncio.sleep(1.0)
        finally:
            try:
                await client.aclose()
            except Exception:
                log.debug("closing the Redis client failed", exc_info=True)
