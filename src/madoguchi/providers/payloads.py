"""What every ``*_wire`` module does the same way: the base of its validating models, read a
webhook body as strict JSON, say why a payload failed validation, and name a failed HTTP call.

Pure code (no network, no ORM, no Django), like the wire modules that use it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

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


def load_json(body: bytes, error: Callable[[str, str], Exception]) -> Any:
    """Decode ``body``: strict UTF-8, only finite numbers, no lone surrogates in strings.

    Raises ``error("malformed_json", reason)`` (the wire module's payload error) otherwise.
    """

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite_float(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError("number out of range")
        return number

    try:
        text = bytes(body).decode("utf-8")
        document = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
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
