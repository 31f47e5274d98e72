"""The one HTTP helper for platform APIs: shared clients, bounded timeouts, no secrets in logs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings

from .base import MediaTooLarge
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


# -- media downloads ---------------------------------------------------------------------------
# Each provider decides where media may come from and what a failed answer means; writing the
# bytes is the same everywhere.


def refuse_declared_size(response: httpx.Response, limit: int) -> None:
    """Raise MediaTooLarge before reading anything when the answer's ``Content-Length`` says it
    is larger than ``limit`` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise MediaTooLarge(f"{declared} bytes > {limit}")


def served_mime_type(response: httpx.Response, default: str) -> str:
    """The answer's ``Content-Type`` without parameters; ``default`` when it names none or only
    ``application/octet-stream``."""
    served = response.headers.get("content-type", "").split(";")[0].strip()
    return served if served and served != "application/octet-stream" else default


def save_media(response: httpx.Response, destination: str, limit: int) -> int:
    """Write the body of a streamed answer to MEDIA_ROOT/destination and return its size.

    The bytes go to a ``.part`` file renamed into place once complete, so a reader never sees
    half a file. Raises MediaTooLarge as soon as more than ``limit`` bytes came (nothing is
    kept); httpx errors while reading propagate (see ``transport_errors``)."""
    target = Path(settings.MEDIA_ROOT) / destination
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    size = 0
    try:
        with partial.open("wb") as handle:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise MediaTooLarge(f"more than {limit} bytes")
                handle.write(chunk)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return size
