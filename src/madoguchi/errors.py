"""Errors the actions raise; views turn them into ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any


class MadoguchiError(Exception):
    """A refusal with a stable ``code`` and the HTTP status that fits it."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str = "", *, code: str | None = None, **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if code:
            self.code = code
        self.details = details


class NotFound(MadoguchiError):
    status = 404
    code = "not_found"


class Forbidden(MadoguchiError):
    status = 403
    code = "forbidden"


class Invalid(MadoguchiError):
    status = 422
    code = "invalid"


class Conflict(MadoguchiError):
    status = 409
    code = "conflict"
