"""The one HTTP helper for platform APIs: shared clients, bounded timeouts, no secrets in logs."""

from __future__ import annotations

import threading

import httpx
from django.conf import settings

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
