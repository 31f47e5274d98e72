"""MessengerProvider against the Messenger simulator, through real HTTP on the loopback.

Each test runs the simulator in a uvicorn thread and a small webhook receiver; the provider
sends to the simulator, and the signed webhooks that come back are verified and parsed by the
same provider. Asynchronous webhooks are awaited with a deadline, never a fixed sleep; windows
are moved with a fake clock, not by waiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from madoguchi.providers import messenger_wire as wire
from madoguchi.providers.base import (
    ChannelConfig,
    InboundMessage,
    MediaRef,
    OutboundEcho,
    ReceiptWatermark,
    SendError,
    StatusUpdate,
)
from madoguchi.providers.messenger import MessengerProvider
from madoguchi.simulators.common import RunningServer, serve_asgi_in_thread, tiny_png
from madoguchi.simulators.messenger import (
    PAGE_INBOX_APP_ID,
    MessengerChatter,
    MessengerSimulator,
)
from tests.helpers import wait_for

PAGE = "106893398573421"
OTHER_PAGE = "200000000000001"
TOKEN = "EAAG-page-token-for-tests"
SECRET = "messenger-app-secret-0123"
APP_ID = "1840793126084211"
VERIFY = "messenger-verify"
PSID = "5127349273929834"
HOUR = 3600.0


class Clock:
    """A wall clock tests can move forward."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Receiver:
    """A webhook endpoint recording raw requests; answers the handshake like Madoguchi."""

    provider: MessengerProvider | None = None
    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_next: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        assert self.provider is not None
        if request.method == "GET":
            status, text = self.provider.handshake(dict(request.query_params))
            return Response(text, status_code=status, media_type="text/plain")
        raw = await request.body()
        with self.lock:
            status = self.fail_next.popleft() if self.fail_next else 200
            if status == 200:
                self.hits.append(({k.lower(): v for k, v in request.headers.items()}, raw))
        return Response(status_code=status)

    def events(self) -> list[Any]:
        """Every event of every accepted webhook, after checking its signature."""
        assert self.provider is not None
        with self.lock:
            hits = list(self.hits)
        out: list[Any] = []
        for headers, raw in hits:
            assert self.provider.verify_signature(headers, raw)
            out.extend(self.provider.parse_webhook(raw))
        return out

    def raw_events(self) -> list[dict[str, Any]]:
        with self.lock:
            hits = list(self.hits)
        return [
            e for _, raw in hits for entry in json.loads(raw)["entry"] for e in entry["messaging"]
        ]


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[dict[str, Receiver], str]]:
    by_key: dict[str, Receiver] = {}

    async def route(request: Request) -> Response:
        return await by_key[request.path_params["key"]].hook(request)

    server = serve_asgi_in_thread(
        Starlette(routes=[Route("/hook/{key}", route, methods=["GET", "POST"])])
    )
    yield by_key, server.url
    server.stop()


@dataclass
class World:
    sim: MessengerSimulator
    server: RunningServer
    receiver: Receiver
    provider: MessengerProvider
    clock: Clock

    def customer_writes(self, text: str = "Hello", psid: str = PSID) -> str:
        return self.sim.customer_sends(PAGE, psid, text, name="Maya")

    def http(self, body: Any, *, token: str = TOKEN, **kwargs: Any) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}/v25.0/{PAGE}/messages",
            params={"access_token": token},
            json=body,
            timeout=10,
            **kwargs,
        )


@pytest.fixture
def make_world(
    receivers: tuple[dict[str, Receiver], str], settings: Any, tmp_path: Path
) -> Iterator[Callable[..., World]]:
    settings.MEDIA_ROOT = str(tmp_path)
    by_key, base = receivers
    started: list[World] = []

    def make(page: dict[str, Any] | None = None, **options: Any) -> World:
        key = f"t{len(by_key)}"
        receiver = by_key[key] = Receiver()
        clock = Clock()
        options.setdefault("receipt_delays", (0.0, 0.01, 0.01))
        options.setdefault("retry_delays", (0.01, 0.02))
        sim = MessengerSimulator(clock=clock, **options)
        sim.add_page(
            page_id=PAGE,
            access_token=TOKEN,
            app_secret=SECRET,
            app_id=int(APP_ID),
            webhook_url=f"{base}/hook/{key}",
            name="Sakura Shoes",
            **(page or {}),
        )
        server = sim.serve_in_thread()
        provider = MessengerProvider(
            ChannelConfig(
                id=7,
                kind="messenger",
                business_handle=PAGE,
                api_base=server.url,
                secrets={"page_access_token": TOKEN, "app_secret": SECRET, "verify_token": VERIFY},
                options={"app_id": APP_ID},
            )
        )
        receiver.provider = provider
        world = World(sim, server, receiver, provider, clock)
        started.append(world)
        return world

    yield make
    for world in started:
        world.server.stop()
        world.sim.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def send_error(call: Callable[[], Any]) -> SendError:
    with pytest.raises(SendError) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------------------------
# Set-up


def test_it_checks_credentials_and_learns_the_app_id(world: World) -> None:
    assert world.provider.check_credentials() == {
        "id": PAGE,
        "name": "Sakura Shoes",
        "app_id": APP_ID,
        "app_name": "Madoguchi",
    }


def test_a_wrong_token_fails_the_credential_check_for_good(world: World) -> None:
    config = world.provider.config
    bad = MessengerProvider(
        ChannelConfig(
            id=7,
            kind="messenger",
            business_handle=PAGE,
            api_base=config.api_base,
            secrets={"page_access_token": "EAAG-wrong"},
        )
    )
    error = send_error(bad.check_credentials)
    assert (error.error.code, error.permanent) == (190, True)
    assert "token" in MessengerProvider.explain_error(error.error)


def test_a_token_of_another_page_fails_the_credential_check(world: World) -> None:
    world.sim.add_page(
        page_id=OTHER_PAGE,
        access_token="EAAG-other",
        app_secret=SECRET,
        app_id=1,
        webhook_url=None,
    )
    config = world.provider.config
    other = MessengerProvider(
        ChannelConfig(
            id=8,
            kind="messenger",
            business_handle=PAGE,
            api_base=config.api_base,
            secrets={"page_access_token": "EAAG-other"},
        )
    )
    assert send_error(other.check_credentials).error.code == 190
    me = httpx.get(f"{config.api_base}/v25.0/me", params={"access_token": "EAAG-other"})
    assert me.json() == {"id": OTHER_PAGE, "name": "Madoguchi Demo Shop"}


def test_it_runs_the_verification_handshake(world: World) -> None:
    assert world.sim.verify_subscription(PAGE, VERIFY)
    assert not world.sim.verify_subscription(PAGE, "not-the-token")


# ---------------------------------------------------------------------------------------------
# Sending inside and outside the windows


def test_a_reply_inside_the_window_is_sent_as_a_response(world: World) -> None:
    inbound = world.customer_writes("Is my order shipped?")
    sent = world.provider.send_text(PSID, "Yes, this morning!", reply_to=inbound)
    assert sent.recipient_handle == PSID
    [record] = world.sim.sent_to(PAGE, PSID)
    assert record.message_id == sent.platform_message_id
    assert record.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Yes, this morning!"},
        "reply_to": {"mid": inbound},
    }
    assert "tag" not in record.body


def test_an_accepted_send_comes_back_as_receipts_and_our_echo_is_dropped(world: World) -> None:
    world.customer_writes()
    sent = world.provider.send_text(PSID, "Thanks for writing!")
    wait_for(lambda: any("read" in e for e in world.receiver.raw_events()))
    raw = world.receiver.raw_events()
    echo = next(e for e in raw if e.get("message", {}).get("is_echo"))
    assert echo["message"]["app_id"] == int(APP_ID)
    assert echo["sender"] == {"id": PAGE} and echo["recipient"] == {"id": PSID}
    events = world.receiver.events()
    assert not any(isinstance(e, OutboundEcho) for e in events)
    delivered = [e for e in events if isinstance(e, StatusUpdate)]
    assert [(e.platform_message_id, e.status) for e in delivered] == [
        (sent.platform_message_id, "delivered")
    ]
    watermarks = [e for e in events if isinstance(e, ReceiptWatermark)]
    assert [w.status for w in watermarks] == ["delivered", "read"]
    assert all(w.recipient_handle == PSID and w.business_handle == PAGE for w in watermarks)
    record = world.sim.sent_to(PAGE)[0]
    assert watermarks[0].watermark.timestamp() >= record.time - 0.001


def test_a_human_agent_reply_is_tagged_and_allowed_for_seven_days(world: World) -> None:
    world.customer_writes()
    world.clock.advance(25 * HOUR)
    error = send_error(lambda: world.provider.send_text(PSID, "Sorry for the delay"))
    assert (error.error.code, error.error.subcode, error.permanent) == (10, 2018278, True)
    assert wire.is_window_error(error.error)
    assert "24 hours" in MessengerProvider.explain_error(error.error)
    world.provider.send_text(PSID, "Sorry for the delay", tag="HUMAN_AGENT")
    [record] = world.sim.sent_to(PAGE, PSID)
    assert record.body["messaging_type"] == "MESSAGE_TAG"
    assert record.body["tag"] == "HUMAN_AGENT"
    world.clock.advance(6 * 24 * HOUR)  # 7 days and 1 hour after the customer wrote
    late = send_error(lambda: world.provider.send_text(PSID, "Still there?", tag="HUMAN_AGENT"))
    assert wire.is_window_error(late.error) and late.permanent
    world.customer_writes("Yes!")  # the person writing again reopens the window
    world.provider.send_text(PSID, "Great")


def test_a_first_contact_cannot_be_messaged(world: World) -> None:
    world.sim.add_user(PAGE, PSID, "Maya")  # known, but never wrote
    error = send_error(lambda: world.provider.send_text(PSID, "Hi", tag="HUMAN_AGENT"))
    assert wire.is_window_error(error.error)


def test_postbacks_and_reactions_open_the_window(world: World) -> None:
    world.sim.customer_postback(PAGE, PSID, "Get Started", "GET_STARTED")
    world.provider.send_text(PSID, "Welcome!")
    world.clock.advance(30 * HOUR)
    world.sim.customer_reacts(PAGE, PSID, world.sim.last_outbound(PAGE, PSID) or "")
    world.provider.send_text(PSID, "Glad you like it")
    kinds = [e.kind for e in world.receiver.events() if isinstance(e, InboundMessage)]
    assert kinds == ["button", "reaction"]


def test_a_page_without_the_human_agent_permission_is_refused(
    make_world: Callable[..., World],
) -> None:
    world = make_world({"human_agent": False})
    world.customer_writes()
    error = send_error(lambda: world.provider.send_text(PSID, "x", tag="HUMAN_AGENT"))
    assert (error.error.code, error.error.subcode, error.permanent) == (10, None, True)
    assert not wire.is_window_error(error.error)
    assert "permission" in MessengerProvider.explain_error(error.error)


def test_unknown_and_unavailable_people_get_551(world: World) -> None:
    error = send_error(lambda: world.provider.send_text("999999999999", "Hi"))
    assert (error.error.code, error.permanent) == (551, True)
    world.customer_writes()
    world.sim.add_user(PAGE, PSID, available=False)  # blocked the page
    error = send_error(lambda: world.provider.send_text(PSID, "Hi"))
    assert (error.error.code, error.error.subcode) == (551, 1545041)
    assert wire.is_unavailable_error(error.error)
    assert "isn't available" in MessengerProvider.explain_error(error.error)


def test_it_limits_the_send_rate_with_613(make_world: Callable[..., World]) -> None:
    world = make_world({"mps": 1e-6, "burst": 2})
    world.customer_writes()
    world.provider.send_text(PSID, "one")
    world.provider.send_text(PSID, "two")
    error = send_error(lambda: world.provider.send_text(PSID, "three"))
    assert (error.error.code, error.permanent, error.scope) == (613, False, "number")
    assert error.retry_after == 30.0
    assert len(world.sim.sent_to(PAGE)) == 2


def test_a_wrong_token_is_refused_with_190(world: World) -> None:
    world.customer_writes()
    response = world.http(wire.text_body(PSID, "x"), token="EAAG-nope")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (190, "OAuthException")
    assert error["fbtrace_id"]
    assert (
        httpx.post(f"{world.server.url}/v25.0/me/messages", json={}).json()["error"]["code"] == 190
    )
    assert world.sim.sent == []


@pytest.mark.parametrize(
    ("fault", "code", "permanent"),
    [
        (("graph", 1200), 1200, False),
        (("graph", 2, 2018344), 2, False),
        (("graph", 4), 4, False),
        (("graph", 32), 32, False),
        (("graph", 190), 190, True),
        (("graph", 100), 100, True),
        (("graph", 200), 200, True),
        (("http", 503), 2, False),
        (("http", 502, "Bad Gateway"), wire.LOCAL_ERROR_CODE, False),
        (("http", 400, "nope"), wire.LOCAL_ERROR_CODE, True),
    ],
)
def test_it_maps_each_platform_error(
    world: World, fault: tuple[Any, ...], code: int, permanent: bool
) -> None:
    world.customer_writes()
    world.sim.inject_faults(PAGE, [fault])
    error = send_error(lambda: world.provider.send_text(PSID, "Hello"))
    assert (error.error.code, error.permanent) == (code, permanent)
    assert MessengerProvider.explain_error(error.error)
    world.provider.send_text(PSID, "Hello again")  # one fault, one request


def test_a_timeout_is_a_transient_error(world: World, settings: Any) -> None:
    settings.HTTP_TIMEOUT_SECONDS = 0.2
    world.customer_writes()
    world.sim.inject_faults(PAGE, [("timeout", 1.0)])
    error = send_error(lambda: world.provider.send_text(PSID, "Hello"))
    assert (error.error.code, error.error.title, error.permanent) == (-1, "Timeout", False)


def test_it_refuses_a_reply_to_a_message_of_another_thread(world: World) -> None:
    world.customer_writes()
    other = world.sim.customer_sends(PAGE, "7000000000000001", "hi")
    error = send_error(lambda: world.provider.send_text(PSID, "x", reply_to=other))
    assert (error.error.code, error.permanent) == (100, True)


# ---------------------------------------------------------------------------------------------
# Request validation


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"recipient": {"id": PSID}, "message": {"text": "x"}, "x": 1}, "x"),
        ({"message": {"text": "x"}}, "recipient"),
        ({"recipient": {"user_ref": "abc"}, "message": {"text": "x"}}, "user_ref"),
        ({"recipient": {"id": PSID}}, "message"),
        ({"recipient": {"id": PSID}, "message": {"text": "a" * 2001}}, "2000"),
        ({"recipient": {"id": PSID}, "message": {"text": ""}}, "text"),
        (
            {
                "recipient": {"id": PSID},
                "message": {"text": "x", "attachment": {"type": "image", "payload": {}}},
            },
            "exactly one",
        ),
        ({"recipient": {"id": PSID}, "message": {"txt": "x"}}, "txt"),
        ({"recipient": {"id": PSID}, "messaging_type": "PROMO", "message": {"text": "x"}}, "PROMO"),
        (
            {
                "recipient": {"id": PSID},
                "messaging_type": "MESSAGE_TAG",
                "tag": "ACCOUNT_UPDATE",
                "message": {"text": "x"},
            },
            "deprecated",
        ),
        (
            {"recipient": {"id": PSID}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}},
            "tag",
        ),
        (
            {
                "recipient": {"id": PSID},
                "messaging_type": "RESPONSE",
                "tag": "HUMAN_AGENT",
                "message": {"text": "x"},
            },
            "tag",
        ),
        (
            {
                "recipient": {"id": PSID},
                "message": {"attachment": {"type": "gif", "payload": {"url": "http://x/a"}}},
            },
            "type",
        ),
        (
            {
                "recipient": {"id": PSID},
                "message": {"attachment": {"type": "image", "payload": {"url": "ftp://x/a"}}},
            },
            "url",
        ),
        (
            {
                "recipient": {"id": PSID},
                "message": {"attachment": {"type": "image", "payload": {"attachment_id": "404"}}},
            },
            "attachment_id",
        ),
        (
            {"recipient": {"id": PSID}, "sender_action": "mark_seen", "message": {"text": "x"}},
            "alone",
        ),
        ({"recipient": {"id": PSID}, "sender_action": "dance"}, "dance"),
        ({"recipient": {"id": PSID}, "message": {"text": "x"}, "reply_to": "m_1"}, "reply_to"),
        (
            {
                "recipient": {"id": PSID},
                "message": {"text": "x", "quick_replies": [{"content_type": "text"}]},
            },
            "title",
        ),
    ],
)
def test_it_names_the_bad_field_with_100(world: World, body: dict[str, Any], mentions: str) -> None:
    world.customer_writes()
    response = world.http(body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 100
    assert error["message"].startswith("(#100) ")
    assert mentions in error["message"]
    assert world.sim.sent == []


def test_it_accepts_the_contract_examples_and_form_encoding(world: World) -> None:
    world.customer_writes()
    image = {
        "recipient": {"id": PSID},
        "message": {
            "attachment": {
                "type": "image",
                "payload": {"url": "http://www.messenger-rocks.com/image.jpg", "is_reusable": True},
            }
        },
    }
    assert world.http(image).status_code == 200
    quick = {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {
            "text": "Pick one",
            "quick_replies": [{"content_type": "text", "title": "Red", "payload": "RED"}],
        },
    }
    assert world.http(quick).status_code == 200
    form = {
        "recipient": json.dumps({"id": PSID}),
        "messaging_type": "RESPONSE",
        "message": json.dumps({"text": "sent as a form"}),
    }
    response = httpx.post(
        f"{world.server.url}/v25.0/me/messages", params={"access_token": TOKEN}, data=form
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"recipient_id", "message_id"}
    assert world.sim.sent[-1].body["message"] == {"text": "sent as a form"}


# ---------------------------------------------------------------------------------------------
# Media, read receipts, echoes


def test_it_uploads_media_with_the_send(world: World, tmp_path: Path) -> None:
    world.customer_writes()
    png = tiny_png((10, 20, 30))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "box.png").write_bytes(png)
    sent = world.provider.send_media(PSID, "image", "out/box.png", "image/png", tag="HUMAN_AGENT")
    [record] = world.sim.sent_to(PAGE)
    assert record.message_id == sent.platform_message_id
    assert record.upload == ("image/png", len(png))
    assert record.body["message"] == {
        "attachment": {"type": "image", "payload": {"is_reusable": False}}
    }
    assert record.body["tag"] == "HUMAN_AGENT"
    wait_for(lambda: any(e.get("message", {}).get("is_echo") for e in world.receiver.raw_events()))
    echo = next(e for e in world.receiver.raw_events() if e.get("message", {}).get("is_echo"))
    url = echo["message"]["attachments"][0]["payload"]["url"]
    assert httpx.get(url).content == png


def test_it_refuses_what_messenger_cannot_carry(world: World, tmp_path: Path) -> None:
    world.customer_writes()
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4")
    caption = send_error(
        lambda: world.provider.send_media(PSID, "document", "a.pdf", "application/pdf", caption="x")
    )
    assert caption.permanent and "caption" in caption.error.details
    tag = send_error(lambda: world.provider.send_text(PSID, "x", tag="ACCOUNT_UPDATE"))
    assert tag.permanent and tag.error.code == -5
    wrong = send_error(lambda: world.provider.send_media(PSID, "image", "a.pdf", "application/pdf"))
    assert (wrong.error.code, wrong.permanent) == (100, True)
    assert world.sim.sent == []


def test_it_fetches_customer_media_from_the_configured_host_only(
    world: World, tmp_path: Path
) -> None:
    png = tiny_png((200, 10, 10))
    url = world.sim.customer_uploads(png, "image/png")
    world.sim.customer_sends(
        PAGE, PSID, {"attachments": [{"type": "image", "payload": {"url": url}}]}
    )
    [message] = [e for e in world.receiver.events() if isinstance(e, InboundMessage)]
    assert message.kind == "image" and message.media is not None
    stored = world.provider.fetch_media(message.media, "in/photo.png", kind="image")
    assert (stored.mime_type, stored.size) == ("image/png", len(png))
    assert (tmp_path / "in" / "photo.png").read_bytes() == png
    for elsewhere in ["http://127.0.0.2:9/x.png", "https://scontent.xx.fbcdn.net/v/x.png"]:
        error = send_error(
            lambda u=elsewhere: world.provider.fetch_media(MediaRef(u, url=u), "in/x.png")
        )
        assert (error.error.code, error.permanent) == (-3, True)
    gone = send_error(
        lambda: world.provider.fetch_media(MediaRef("x", url=url + "gone"), "in/y.png")
    )
    assert gone.permanent


def test_the_default_host_rule_allows_only_meta_cdn_over_https() -> None:
    meta = MessengerProvider(ChannelConfig(id=1, kind="messenger", business_handle=PAGE))
    meta.check_media_host("https://scontent.xx.fbcdn.net/v/t1/123_n.jpg?oh=1")
    meta.check_media_host("https://cdn.fbsbx.com/v/t59/file.pdf")
    for url in [
        "http://scontent.xx.fbcdn.net/v/a.jpg",
        "https://fbcdn.net.evil.example/a.jpg",
        "https://graph.facebook.com/v25.0/me",
        "",
    ]:
        with pytest.raises(SendError):
            meta.check_media_host(url)


def test_mark_read_marks_the_conversation_seen(world: World) -> None:
    mid = world.customer_writes()
    world.provider.mark_read(mid)
    assert [(p, u, a) for p, u, a, _ in world.sim.sender_actions] == [(PAGE, PSID, "mark_seen")]
    world.provider.mark_read(f"postback.{PSID}.1")  # nothing to look up: skipped
    assert len(world.sim.sender_actions) == 1


def test_echoes_from_the_page_inbox_are_kept(world: World) -> None:
    world.customer_writes()
    mid = world.sim.page_inbox_reply(PAGE, PSID, "Hi, Mika here from the shop")
    echoes = [e for e in world.receiver.events() if isinstance(e, OutboundEcho)]
    assert [(e.platform_message_id, e.text, e.recipient_handle) for e in echoes] == [
        (mid, "Hi, Mika here from the shop", PSID)
    ]
    raw = [e for e in world.receiver.raw_events() if e.get("message", {}).get("is_echo")]
    assert raw[0]["message"]["app_id"] == PAGE_INBOX_APP_ID


def test_a_customer_read_is_a_watermark(world: World) -> None:
    world.customer_writes()
    world.sim.customer_reads(PAGE, PSID)
    [mark] = [e for e in world.receiver.events() if isinstance(e, ReceiptWatermark)]
    assert mark.status == "read"
    assert abs(mark.watermark.timestamp() - world.clock.now) < 0.002


def test_it_redelivers_a_webhook_the_receiver_refused(world: World) -> None:
    world.receiver.fail_next.extend([500, 503])
    mid = world.customer_writes("hello?")
    [message] = [e for e in world.receiver.events() if isinstance(e, InboundMessage)]
    assert message.platform_message_id == mid
    assert [a.status for a in world.sim.webhook_log] == [500, 503, 200]


def test_the_chatter_writes_varied_readable_events(world: World) -> None:
    chatter = MessengerChatter(world.sim, PAGE, seed=3, customers=6)
    for _ in range(40):
        chatter.step()
        person = chatter.customers[0].psid
        if world.sim.window_open(PAGE, person) and chatter.rng.random() < 0.2:
            world.provider.send_text(person, "Thanks, checking now.")
    events = world.receiver.events()
    inbound = [e for e in events if isinstance(e, InboundMessage)]
    assert len(inbound) >= 40
    assert {"text"} < {e.kind for e in inbound}
    languages = {c.language for c in chatter.customers}
    assert len(languages) >= 5
    texts = " ".join(e.text for e in inbound)
    assert any(ord(ch) > 0x3000 for ch in texts)  # not only Latin script


def test_the_control_api_works_over_http(world: World) -> None:
    base = world.server.url
    added = httpx.post(f"{base}/_sim/users", json={"page_id": PAGE, "psid": PSID, "name": "Maya"})
    assert added.json() == {"success": True}
    mid = httpx.post(
        f"{base}/_sim/customer_message",
        json={"page_id": PAGE, "psid": PSID, "message": "hello from http"},
    ).json()["mid"]
    assert mid.startswith("m_")
    assert (
        httpx.post(
            f"{base}/_sim/postback",
            json={"page_id": PAGE, "psid": PSID, "title": "Menu", "payload": "MENU"},
        ).status_code
        == 200
    )
    world.provider.send_text(PSID, "hi")
    sent = httpx.get(f"{base}/_sim/sent", params={"page_id": PAGE}).json()
    assert [item["body"]["message"] for item in sent["data"]] == [{"text": "hi"}]
    assert sent["next"] == 1
    faults = httpx.post(f"{base}/_sim/faults", json={"page_id": PAGE, "faults": [["graph", 613]]})
    assert faults.json() == {"queued": 1}
    assert send_error(lambda: world.provider.send_text(PSID, "x")).error.code == 613
    reply = httpx.post(
        f"{base}/_sim/page_inbox_reply", json={"page_id": PAGE, "psid": PSID, "text": "from inbox"}
    )
    assert reply.status_code == 200
    assert httpx.post(f"{base}/_sim/read", json={"page_id": PAGE, "psid": PSID}).json() == {
        "status": 200
    }
    stats = httpx.get(f"{base}/_sim/stats").json()
    assert stats["sends_accepted"] == 1 and stats["errors_by_code"] == {"613": 1}
    assert (
        httpx.post(f"{base}/_sim/faults", json={"page_id": "nope", "faults": []}).status_code == 400
    )


def test_it_runs_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "pages.json"
    page = {
        "page_id": PAGE,
        "access_token": TOKEN,
        "app_secret": SECRET,
        "app_id": APP_ID,
        "webhook_url": None,
    }
    config.write_text(json.dumps([page]))
    command = [sys.executable, "-m", "madoguchi.simulators.messenger", "--config", str(config)]
    proc = subprocess.Popen([*command, "--chatter", "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")

        def get(path: str) -> httpx.Response | None:
            try:
                return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
            except httpx.TransportError:
                return None

        assert wait_for(lambda: get("/v25.0/me")).json() == {
            "id": PAGE,
            "name": "Madoguchi Demo Shop",
        }
        # The simulated people write (webhooks are only recorded: no webhook_url).
        wait_for(lambda: (get("/_sim/stats") or httpx.Response(500)).json()["inbound_events"] > 2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
