"""Waking an idle worker when there is new work, instead of waiting for its next poll.

In one process a threading.Event is enough; with REDIS_URL set, a Redis pub/sub message reaches
workers in other processes. Polling remains the safety net: a lost wake-up costs latency, never
work.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

from . import redisconn

log = logging.getLogger(__name__)

CHANNEL = "wakeup"  # on Redis: redisconn.channel_name(CHANNEL)
local_event = threading.Event()


def notify() -> None:
    local_event.set()
    if settings.REDIS_URL:
        try:
            redisconn.client().publish(redisconn.channel_name(CHANNEL), b"1")
        except Exception:
            log.debug("wake-up publish failed; workers will poll", exc_info=True)


def listen(stop: threading.Event) -> threading.Thread | None:
    """In a worker process with REDIS_URL: a thread that turns wake-ups published by other
    processes into ``local_event``. Reconnects by itself; without Redis, workers poll."""
    if not settings.REDIS_URL:
        return None

    def run() -> None:
        import redis

        while not stop.is_set():
            try:
                client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(redisconn.channel_name(CHANNEL))
                while not stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        local_event.set()
            except Exception:
                log.debug("wake-up subscription lost; retrying", exc_info=True)
                stop.wait(2.0)

    thread = threading.Thread(target=run, name="madoguchi-wakeup", daemon=True)
    thread.start()
    return thread
