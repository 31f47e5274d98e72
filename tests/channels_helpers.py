"""Fixtures for the Viber and Messenger channels through the real HTTP stack: a channel row (made
with the ORM), its simulator serving on 127.0.0.1 and posting signed callbacks to the live
server, and helpers that post a stored fixture signed as each platform signs it."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import FIXTURES, LiveServer, ServedSimulator, free_port, sign

VIBER_TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
VIBER_BOT_ID = "pa:5672893745648271931"
VIBER_WELCOME = "ようこそ! Welcome to the shop."

PAGE_ID = "106893398573421"  # the page of tests/fixtures/messenger
PAGE_TOKEN = "EAAGm0PX4ZCpsBAtestpagetoken"
PAGE_APP_SECRET = "messenger-app-secret-0123456789"
PAGE_VERIFY_TOKEN = "messenger-verify-token"
APP_ID = 1840793126084211  # our app (tests/fixtures/messenger/echo_own_app.json)


def fixture_bytes(platform: str, name: str) -> bytes:
    return (FIXTURES / platform / f"{name}.json").read_bytes()


def fixture_json(platform: str, name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(platform, name))


def viber_signature(body: bytes, token: str = VIBER_TOKEN) -> str:
    """B3: lowercase hex HMAC-SHA256 of the raw body with the auth token, no prefix."""
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def meta_signature(body: bytes, secret: str = PAGE_APP_SECRET) -> str:
    """X-Hub-Signature-256 as Meta signs Messenger webhooks (as WhatsApp's, C2)."""
    return sign(body, secret)


def as_body(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def post_viber(
    server: LiveServer, channel: Any, payload: Any, *, signature: str | None = None
) -> httpx.Response:
    """POST a Viber callback (a dict or the exact bytes) to the live server, signed as Viber
    signs it unless ``signature`` is given ("" sends none)."""
    body = as_body(payload)
    headers = {"Content-Type": "application/json"}
    header = viber_signature(body) if signature is None else signature
    if header:
        headers["X-Viber-Content-Signature"] = header
    return httpx.post(f"{server.url}{channel.webhook_path}", content=body, headers=headers)


def post_messenger(
    server: LiveServer, channel: Any, payload: Any, *, signature: str | None = None
) -> httpx.Response:
    """POST a Messenger page webhook to the live server, signed with the app secret."""
    body = as_body(payload)
    headers = {"Content-Type": "application/json"}
    header = meta_signature(body) if signature is None else signature
    if header:
        headers["X-Hub-Signature-256"] = header
    return httpx.post(f"{server.url}{channel.webhook_path}", content=body, headers=headers)


# -- Viber ----------------------------------------------------------------------------------


@pytest.fixture
def viber_channel(db: None) -> Any:
    """A Viber bot channel whose API base points at nothing (inbound-only tests)."""
    from madoguchi.models import Channel

    return Channel.objects.create(
        kind="viber",
        name="Shop Viber",
        business_handle=VIBER_BOT_ID,
        api_base=f"http://127.0.0.1:{free_port()}",
        secrets={"auth_token": VIBER_TOKEN},
        options={"sender_name": "Madoguchi Shop", "welcome_text": VIBER_WELCOME},
    )


class ViberSim(ServedSimulator):
    """The Viber simulator serving on 127.0.0.1, wired to a channel of the live server."""

    def user(self, user_id: str, name: str = "Viber User", **kwargs: Any) -> str:
        return self.simulator.add_user(user_id, name=name, **kwargs)

    def user_sends(self, user_id: str, message: Any, **kwargs: Any) -> int:
        return self.simulator.user_sends(VIBER_TOKEN, user_id, message, **kwargs)

    def sent_to(self, user_id: str | None = None) -> list[Any]:
        return [s for s in self.simulator.sent_to(VIBER_TOKEN, user_id) if s.via == "send_message"]


@pytest.fixture
def viber_sim(server: LiveServer, viber_channel: Any) -> Iterator[ViberSim]:
    """A fresh Viber simulator per test, its webhook set to the live server (without the probe:
    a test of its own runs set_webhook through the provider)."""
    from madoguchi.simulators.viber import ViberSimulator

    simulator = ViberSimulator(receipt_delays=(0.01, 0.01), retry_delays=(0.05, 0.1, 0.2))
    served = ViberSim(simulator, viber_channel)
    simulator.add_account(
        VIBER_TOKEN,
        account_id=VIBER_BOT_ID,
        webhook_url=f"{server.url}{viber_channel.webhook_path}",
    )
    yield served
    served.stop()


# -- Messenger ------------------------------------------------------------------------------


@pytest.fixture
def messenger_channel(db: None) -> Any:
    """A Messenger page channel (our app id set, as channel creation learns it)."""
    from madoguchi.models import Channel

    return Channel.objects.create(
        kind="messenger",
        name="Shop Messenger",
        business_handle=PAGE_ID,
        api_base=f"http://127.0.0.1:{free_port()}",
        secrets={
            "page_access_token": PAGE_TOKEN,
            "app_secret": PAGE_APP_SECRET,
            "verify_token": PAGE_VERIFY_TOKEN,
        },
        options={"app_id": str(APP_ID)},
    )


class MessengerSim(ServedSimulator):
    """The Messenger simulator serving on 127.0.0.1, wired to a channel of the live server."""

    def customer_sends(self, psid: str, message: Any, **kwargs: Any) -> str:
        return self.simulator.customer_sends(PAGE_ID, psid, message, **kwargs)

    def sent_to(self, psid: str | None = None) -> list[Any]:
        return self.simulator.sent_to(PAGE_ID, psid)


@pytest.fixture
def messenger_sim(server: LiveServer, messenger_channel: Any) -> Iterator[MessengerSim]:
    from madoguchi.simulators.messenger import MessengerSimulator

    simulator = MessengerSimulator(receipt_delays=(0.01, 0.01, 0.01), retry_delays=(0.05, 0.1, 0.2))
    served = MessengerSim(simulator, messenger_channel)
    simulator.add_page(
        page_id=PAGE_ID,
        access_token=PAGE_TOKEN,
        app_secret=PAGE_APP_SECRET,
        app_id=APP_ID,
        webhook_url=f"{server.url}{messenger_channel.webhook_path}",
    )
    yield served
    served.stop()


# -- sending through the API ----------------------------------------------------------------


@pytest.fixture
def send_attachment(api_as: Callable[[str], Any]) -> Callable[..., dict[str, Any]]:
    """``POST /conversations/<id>/attachments`` (multipart) as a user; returns the message."""

    def send(
        username: str,
        conversation_id: int,
        content: bytes,
        *,
        filename: str,
        mime_type: str,
        caption: str = "",
        status: int = 202,
    ) -> dict[str, Any]:
        response = api_as(username).client.post(
            f"/api/v1/conversations/{conversation_id}/attachments",
            files={"file": (filename, content, mime_type)},
            data={"caption": caption},
        )
        assert response.status_code == status, (response.status_code, response.text)
        return response.json()

    return send


def media_file(relative: str) -> bytes:
    from django.conf import settings

    return (Path(settings.MEDIA_ROOT) / relative).read_bytes()
