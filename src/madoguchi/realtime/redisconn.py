"""The process's one synchronous Redis client (wake-ups, event publishing), from REDIS_URL, and
the names of the pub/sub channels."""

from __future__ import annotations

import functools
import threading
from typing import Any

from django.conf import settings

_client: Any = None
_lock = threading.Lock()


def client() -> Any:
    """Short timeouts: a dead Redis must cost callers a moment, never hang them."""
    global _client
    with _lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        return _client


def channel_name(name: str) -> str:
    """The pub/sub channel ``name`` for this REDIS_URL. Pub/sub ignores database numbers, so the
    name carries it: deployments sharing one Redis server on different databases (…/1, …/2)
    never receive each other's events."""
    return _channel_name(settings.REDIS_URL, name)


@functools.lru_cache(maxsize=16)
def _channel_name(url: str, name: str) -> str:
    from redis.connection import parse_url

    return f"madoguchi:{parse_url(url).get('db', 0)}:{name}"
