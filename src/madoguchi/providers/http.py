"""The one HTTP helper for platform APIs: shared clients, bounded timeouts, no secrets in logs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from django.conf import settings

from .payloads import network_error, timeout_error

_local = threading.local()


def client() -> httpx.Client:
    """A per-thread keep-alive client (httpx clients are not meant to be shared across threads)."""
    existing: httpx.Client | None = getattr(_local, "client", None)
    if existing is not None and existing.timeout.read != settings.HTTP_TIMEOUT_SECONDS:
        existing.close()  # the setting changed (tests): build a client that honours it
    if existing is None or existing.is_closed:
        existing = httpx.Client(
            timeout=httpx.Timeout(settings.HTTP_TIMEOUT_SECONDS, connect=5.0),
            follow_redirects=False,  # a redirect could carry our bearer token to another host
            headers={"User-Agent": "Madoguchi/0.1"},
        )
        _local.client = existing
    return existing


@contextmanager
def transport_errors() -> Iterator[None]:
    """Turn a failed HTTP exchange (no answer at all) into a transient SendError: a timeout
    into ``timeout_error()``, any other httpx error (DNS, refused, reset, TLS) into
    ``network_error`` naming the exception. Answers, whatever their status, are the caller's
    to classify."""
    try:
        yield
    except httpx.TimeoutException:
        raise timeout_error() from None
    except httpx.HTTPError as exc:
        raise network_error(type(exc).__name__) from None
