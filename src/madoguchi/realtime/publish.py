"""The only publisher of real-time events.

Actions call ``publish_on_commit``: nothing reaches a browser unless the change it describes was
committed. Events go to per-user groups (``user.<id>``), to the users the action computed as
allowed to see them (STYLE §2), never broadcast.

The server process registers its event loop at start-up; code running in other threads of that
process (the in-process worker, sync views) hands events to that loop. A separate worker process
has no such loop and sends through the channel layer directly (Redis when ``REDIS_URL`` is set).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

_server_loop: asyncio.AbstractEventLoop | None = None
_listeners: list[Callable[[dict[str, Any], list[int]], None]] = []
_listeners_lock = threading.Lock()


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def register_server_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    global _server_loop
    _server_loop = loop


def add_listener(listener: Callable[[dict[str, Any], list[int]], None]) -> None:
    """Observe every published event (tests, in-process integrations)."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[dict[str, Any], list[int]], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def has_audience() -> bool:
    """Whether an event published from here can reach anyone: a socket of this process, another
    process through the channel layer, or a listener. Lets bulk paths skip building events that
    would be dropped (a worker process without Redis)."""
    if _listeners or (_server_loop is not None and _server_loop.is_running()):
        return True
    return not isinstance(get_channel_layer(), InMemoryChannelLayer)


def publish_on_commit(event: dict[str, Any], user_ids: Iterable[int]) -> None:
    recipients = sorted(set(user_ids))
    transaction.on_commit(lambda: publish(event, recipients))


async def send_to_groups(event: dict[str, Any], user_ids: list[int]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "madoguchi.event", "event": event}
    try:
        for user_id in user_ids:
            await layer.group_send(user_group(user_id), message)
    except Exception:  # a dead Redis must not undo a committed change
        log.warning("real-time publish failed for %s", event.get("type"), exc_info=True)


_background_loop: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """A process without a server (a worker) sends through one long-lived loop of its own,
    rather than building an event loop (and a Redis connection) for every event."""
    global _background_loop
    with _background_lock:
        if _background_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="madoguchi-publisher", daemon=True
            ).start()
            _background_loop = loop
        return _background_loop


def publish(event: dict[str, Any], user_ids: list[int]) -> None:
    """Send now (after commit). Failures are logged, never raised: the socket is not the record,
    and browsers re-fetch state after a gap."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event, user_ids)
    if not user_ids:
        return
    loop = _server_loop
    if loop is None or not loop.is_running():
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            return  # no socket can be held by this process, and no layer reaches another one
        loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        loop.create_task(send_to_groups(event, user_ids))
    else:
        asyncio.run_coroutine_threadsafe(send_to_groups(event, user_ids), loop)
