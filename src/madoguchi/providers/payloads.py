"""What every ``*_wire`` module does the same way: the base of its validating models, read a
webhook body as strict JSON, say why a payload failed validation, and classify and explain a
failed HTTP call that carried no platform error.

Pure code (no network, no ORM, no Django), like the wire modules that use it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from .base import PlatformError, SendError

# The code of errors made here rather than by a platform (timeouts, refused connections, an
# HTTP error without a platform error body). Platforms' own codes are never negative.
LOCAL_ERROR_CODE = -1


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are ignored (platforms add fields without
    notice); numbers are accepted where strings are expected (platforms are not consistent:
    WhatsApp group webhooks send ``wa_id`` as a number, Viber's ``message_token`` is an int64);
    non-finite floats are refused so that everything kept stays JSON-safe."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


# Built once: ``json.loads`` with hooks builds a new decoder (and its scanner) on every call,
# which showed in the webhook hot path's profile (bench B1).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def load_json(body: bytes, error: Callable[[str, str], Exception]) -> Any:
    """Decode ``body``: strict UTF-8, only finite numbers, no lone surrogates in strings.

    Raises ``error("malformed_json", reason)`` (the wire module's payload error) otherwise.
    """
    try:
        text = bytes(body).decode("utf-8")
        document = _DECODER.decode(text)
    except (ValueError, RecursionError, TypeError):
        raise error("malformed_json", "the body is not valid JSON") from None
    # A "\ud83d" escape without its pair decodes to a lone surrogate, which no database and no
    # UTF-8 encoder accepts; platforms never send one, so only a body with such an escape is
    # checked.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise error(
                "malformed_json", "the body contains an unpaired surrogate escape"
            ) from None
        except (ValueError, RecursionError):
            raise error("malformed_json", "the body is not valid JSON") from None
    return document


def summarize(exc: PydanticValidationError) -> str:
    """A short reason from a validation error: field locations and types, never input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{location}: {error['type']}")
    return "invalid " + "; ".join(parts)


def timeout_error() -> SendError:
    """The request timed out: transient, retry this request."""
    return SendError(PlatformError(code=LOCAL_ERROR_CODE, title="Timeout"), permanent=False)


def network_error(exc_text: str) -> SendError:
    """The connection failed (DNS, refused, reset, TLS): transient, retry this request."""
    return SendError(
        PlatformError(code=LOCAL_ERROR_CODE, title="Network error", details=exc_text),
        permanent=False,
    )


@dataclass(frozen=True)
class Transient:
    """How a transient platform error is retried: what must wait (``SendError.scope``) and a
    hint in seconds (``SendError.retry_after``)."""

    scope: Literal["number", "pair", "request"] = "request"
    retry_after: float | None = None


def is_transient_http(http_status: int | None) -> bool:
    """Without a platform error code: server errors, 408, 429 and no answer at all are
    retried; any other HTTP status will not get better."""
    return http_status is None or http_status >= 500 or http_status in (408, 429)


def http_error(http_status: int | None) -> SendError:
    """The SendError of an answer without a readable platform error: LOCAL_ERROR_CODE titled
    ``HTTP <status>`` ("No response" without one), transient as ``is_transient_http`` says."""
    title = f"HTTP {http_status}" if http_status is not None else "No response"
    return SendError(
        PlatformError(code=LOCAL_ERROR_CODE, title=title),
        permanent=not is_transient_http(http_status),
        http_status=http_status,
    )


def local_reason(error: PlatformError, platform: str) -> str | None:
    """The agent's explanation of an error made here (LOCAL_ERROR_CODE with a title: a refused
    request or an unreachable ``platform``); None for any other error."""
    if error.code != LOCAL_ERROR_CODE:
        return None
    status = error.title.removeprefix("HTTP ")
    if status.isdigit() and not is_transient_http(int(status)):
        return f"{platform} refused the request ({error.title}) without an explanation."
    if error.title:
        return f"{platform} could not be reached ({error.title}); the message will be retried."
    return None
