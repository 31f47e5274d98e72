"""Test helpers (STYLE §8): named users, request wrappers that assert status and decode JSON,
an event-capturing helper, a query counter, signed webhook posting and a live server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "platforms"

PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
APP_SECRET = "test-app-secret-0123456789"
ACCESS_TOKEN = "test-access-token"
VERIFY_TOKEN = "test-verify-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compact(payload: Any) -> bytes:
    """Meta's serialization: compact JSON, non-ASCII escaped (PROTOCOLS §A3)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "whatsapp" / name).read_text())


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy (for things that happen on other threads)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class LiveServer:
    """uvicorn serving madoguchi.asgi in a thread, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            "madoguchi.asgi:application",
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def asgi_server_session(django_db_setup: None, django_db_blocker: Any) -> Iterator[LiveServer]:
    server = LiveServer().start()
    yield server
    server.stop()
    with django_db_blocker.unblock():
        close_database_pools()


def close_database_pools() -> None:
    """Give back every pooled connection, so the test database can be dropped."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
        if hasattr(conn, "close_pool"):
            conn.close_pool()


@pytest.fixture
def server(asgi_server_session: LiveServer, transactional_db: None) -> LiveServer:
    from madoguchi.views import webhooks

    webhooks._channels.clear()
    return asgi_server_session


class Api:
    """REST calls as one user, asserting the status and decoding JSON."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
        )

    def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.client.request(method, "/api/v1" + path, **kwargs)
        assert response.status_code == status, (response.status_code, response.text)
        return response.json()

    def get(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        return self.call("GET", path, status, **kwargs)

    def post(self, path: str, json: Any = None, status: int = 200) -> Any:
        return self.call("POST", path, status, json=json)


@pytest.fixture
def users(db: None) -> dict[str, Any]:
    """Named users: an admin, a supervisor, two agents, a watcher."""
    from madoguchi.actions.users import do_create_user

    named = {}
    for username, role in [
        ("admin", "admin"),
        ("sora", "supervisor"),
        ("aiko", "agent"),
        ("ben", "agent"),
        ("wendy", "watcher"),
    ]:
        named[username], _ = do_create_user(
            None, username, role=role, password="a-long-test-password-1", display_name=username
        )
    return named


@pytest.fixture
def api_as(users: dict[str, Any], server: LiveServer) -> Callable[[str], Api]:
    from madoguchi.actions.users import do_create_token

    cache: dict[str, Api] = {}

    def make(username: str) -> Api:
        if username not in cache:
            cache[username] = Api(server.url, do_create_token(None, users[username], "test"))
        return cache[username]

    return make


@pytest.fixture
def worker() -> Any:
    from madoguchi.worker import Worker

    return Worker(name="test-worker")


class EventLog:
    def __init__(self) -> None:
        self.events: list[tuple[dict[str, Any], list[int]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], recipients: list[int]) -> None:
        with self.lock:
            self.events.append((event, recipients))

    def of_type(self, kind: str) -> list[tuple[dict[str, Any], list[int]]]:
        with self.lock:
            return [(e, r) for e, r in self.events if e.get("type") == kind]


@pytest.fixture
def events() -> Iterator[EventLog]:
    """Every real-time event published during the test, with its recipients."""
    from madoguchi.realtime.publish import add_listener, remove_listener

    log = EventLog()
    add_listener(log)
    yield log
    remove_listener(log)


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion in a fresh thread (the test thread may already have an
    event loop: Playwright's sync API keeps one running)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture
def channel(db: None) -> Any:
    """A WhatsApp channel whose API base points at nothing (inbound-only tests)."""
    from madoguchi.actions.channels import do_create_channel

    return do_create_channel(
        None,
        kind="whatsapp",
        name="Shop WhatsApp",
        business_handle=PHONE_NUMBER_ID,
        account_handle=WABA_ID,
        display_handle=DISPLAY_NUMBER,
        api_base=f"http://127.0.0.1:{free_port()}",
        secrets={
            "access_token": ACCESS_TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
        },
    )


def post_webhook(
    server: LiveServer,
    channel: Any,
    payload: Any,
    *,
    secret: str = APP_SECRET,
    signature: str | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    """POST a WhatsApp webhook to the live server, signed as Meta signs it."""
    body = raw if raw is not None else compact(payload)
    headers = {"Content-Type": "application/json"}
    headers["X-Hub-Signature-256"] = signature if signature is not None else sign(body, secret)
    if signature == "":
        del headers["X-Hub-Signature-256"]
    return httpx.post(
        f"{server.url}{channel.webhook_path}", content=body, headers=headers, timeout=20
    )


_counter = iter(range(10**9))


def envelope(value: dict[str, Any], phone_number_id: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    """A WhatsApp ``messages`` webhook around one change ``value`` (PROTOCOLS §A4)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY_NUMBER,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def text_payload(
    wa_id: str, name: str, text: str, *, timestamp: int | None = None, message_id: str = ""
) -> dict[str, Any]:
    """A webhook with one text message from ``wa_id``."""
    message = {
        "from": wa_id,
        "id": message_id or f"wamid.test{next(_counter)}",
        "timestamp": str(timestamp or int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    return envelope(
        {"contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [message]}
    )


def status_payload(
    message_id: str,
    status: str,
    *,
    recipient: str,
    errors: list[dict[str, Any]] | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """A webhook with one status; ``reference``: the send's biz_opaque_callback_data."""
    item: dict[str, Any] = {
        "id": message_id,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if reference is not None:
        item["biz_opaque_callback_data"] = reference
    if errors:
        item["errors"] = errors
    return envelope({"statuses": [item]})


@pytest.fixture
def customer_writes(server: LiveServer, channel: Any, worker: Any) -> Callable[..., Any]:
    """A customer message through the webhook and the worker; returns its conversation."""

    def write(
        wa_id: str = "16505551234",
        name: str = "Sheena",
        text: str = "Hello",
        timestamp: int | None = None,
    ) -> Any:
        from madoguchi.models import Conversation

        response = post_webhook(
            server, channel, text_payload(wa_id, name, text, timestamp=timestamp)
        )
        assert response.status_code == 200, response.text
        worker.run_until_idle()
        return Conversation.objects.filter(identity__handle=wa_id).exclude(status="resolved").get()

    return write


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing() -> None:
    """Argon2 is deliberately slow; tests create many users. (A test checks the real setting.)"""
    from django.conf import settings

    if settings.configured:  # not under ``-p no:django`` (the pure simulator and wire tests)
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class ServedSimulator:
    """A platform simulator serving on 127.0.0.1, wired to a channel of the live server: the
    channel's ``api_base`` becomes the simulator's URL. ``stop()`` stops the server and the
    simulator's webhook threads. Subclasses add the platform's control calls."""

    def __init__(self, simulator: Any, channel: Any) -> None:
        self.simulator = simulator
        self.channel = channel
        self.running = simulator.serve_in_thread()
        channel.api_base = self.running.url
        channel.save(update_fields=["api_base"])

    def stop(self) -> None:
        self.running.stop()
        self.simulator.close()


class Sim(ServedSimulator):
    """The WhatsApp simulator serving on 127.0.0.1, wired to a channel of the live server."""

    def customer_sends(self, wa_id: str, name: str, message: Any, **kwargs: Any) -> str:
        return self.simulator.customer_sends(PHONE_NUMBER_ID, wa_id, name, message, **kwargs)

    def sent_to(self, wa_id: str | None = None) -> list[Any]:
        return self.simulator.sent_to(PHONE_NUMBER_ID, wa_id)


@pytest.fixture
def sim(server: LiveServer, channel: Any) -> Iterator[Sim]:
    """A fresh simulator per test; ``channel`` talks to it and it posts to ``server``."""
    from madoguchi.simulators.whatsapp import WhatsAppSimulator

    simulator = WhatsAppSimulator(status_delays=(0.01, 0.01, 0.01), retry_delays=(0.05, 0.1, 0.2))
    served = Sim(simulator, channel)
    simulator.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number=DISPLAY_NUMBER,
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=f"{server.url}{channel.webhook_path}",
    )
    yield served
    served.stop()


SECOND_NUMBER_ID = "106540352242999"


@pytest.fixture
def second_number(sim: Sim, server: LiveServer) -> Any:
    """A second WhatsApp number (channel) of the same account on ``sim``, posting to its own
    webhook path."""
    from madoguchi.actions.channels import do_create_channel

    channel = do_create_channel(
        None,
        kind="whatsapp",
        name="Shop Osaka",
        business_handle=SECOND_NUMBER_ID,
        account_handle=WABA_ID,
        display_handle="15550009999",
        api_base=sim.running.url,
        secrets={
            "access_token": ACCESS_TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
        },
    )
    sim.simulator.add_number(
        phone_number_id=SECOND_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number="15550009999",
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=f"{server.url}{channel.webhook_path}",
    )
    return channel


def run_worker_until(worker: Any, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Run the worker (webhooks from the simulator keep arriving) until ``predicate()``."""

    def step() -> Any:
        worker.run_once()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.02)
