"""What Meta's two messaging platforms (WhatsApp Cloud API, Messenger) do the same way.

After ``shared/platforms/PROTOCOLS.md`` §A2-A3 (Messenger's C1-C2 say "as WhatsApp's"):
- the webhook handshake: a GET with ``hub.mode=subscribe``, ``hub.verify_token`` and
  ``hub.challenge``, answered with the challenge when the token matches;
- ``X-Hub-Signature-256: sha256=<hex>``, an HMAC-SHA256 of the raw body keyed with the App
  Secret;
- one Graph API call with a bearer token, whose error answers each platform classifies itself.

``MetaWebhooks`` gives a Provider the first two from its channel's ``verify_token`` and
``app_secret`` secrets; ``graph_call`` is the third.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from .base import ChannelConfig, SendError
from .http import client, transport_errors


def handshake(query: dict[str, str], verify_token: str) -> tuple[int, str]:
    """(200, the challenge) when ``query`` subscribes with ``verify_token`` (compared in constant
    time; an empty configured token never matches); (403, "Forbidden") otherwise."""
    given = query.get("hub.verify_token", "")
    if (
        query.get("hub.mode") == "subscribe"
        and verify_token
        and hmac.compare_digest(given.encode(), verify_token.encode())
        and "hub.challenge" in query
    ):
        return 200, query["hub.challenge"]
    return 403, "Forbidden"


def signature_matches(headers: dict[str, str], body: bytes, app_secret: str) -> bool:
    """Whether ``headers["x-hub-signature-256"]`` (lower-case names) signs ``body`` with
    ``app_secret``. Constant time; False without a secret or a ``sha256=`` header."""
    header = headers.get("x-hub-signature-256", "")
    if not header.startswith("sha256=") or not app_secret:
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[7:].strip().lower().encode(), expected.encode())


class MetaWebhooks:
    """Provider mixin: ``handshake`` and ``verify_signature`` as Meta's platforms define them,
    from ``config.secrets["verify_token"]`` and ``config.secrets["app_secret"]``."""

    config: ChannelConfig

    def handshake(self, query: dict[str, str]) -> tuple[int, str]:
        return handshake(query, self.config.secrets.get("verify_token", ""))

    def verify_signature(self, headers: dict[str, str], body: bytes) -> bool:
        return signature_matches(headers, body, self.config.secrets.get("app_secret", ""))


def graph_call(
    method: str,
    url: str,
    *,
    token: str,
    classify_error: Callable[[int | None, Any], SendError],
    **kwargs: Any,
) -> dict[str, Any]:
    """One Graph API call with ``Authorization: Bearer <token>`` (never in the URL); returns
    the JSON object answered with HTTP 200. Raises ``classify_error(status, payload)`` for any
    other answer (a non-200, a body that is not a JSON object, or one with an ``error``), and
    a transient SendError when no answer came (``transport_errors``)."""
    with transport_errors():
        response = client().request(
            method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200 or not isinstance(payload, dict) or "error" in payload:
        raise classify_error(response.status_code, payload)
    return payload
