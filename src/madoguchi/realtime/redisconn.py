"""The process's one synchronous Redis client (wake-ups, event publishing), from REDIS_URL."""

from __future__ import annotations

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
