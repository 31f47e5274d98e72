"""ViberProvider driven against the Viber simulator, through real HTTP on the loopback.

The simulator and a webhook receiver run in uvicorn threads. The receiver does what Madoguchi's
webhook view does with a provider: it verifies the signature (401 otherwise), prechecks and
parses the body, and answers with ``webhook_response`` (the welcome message). Asynchronous
callbacks are awaited with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
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

from madoguchi.providers.base import (
    ChannelConfig,
    InboundMessage,
    MediaRef,
    MediaTooLarge,
    SendError,
    StatusUpdate,
    SubscriptionUpdate,
)
from madoguchi.providers.viber import MEDIA_HOST_REFUSED, ViberProvider
from madoguchi.providers.viber_wire import LOCAL_ERROR_CODE
from madoguchi.simulators.common import RunningServer, serve_asgi_in_thread, tiny_png
from madoguchi.simulators.viber import ViberChatter, ViberSimulator, sign_payload
from tests.helpers import wait_for

TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec1cbd0f0e6b2b"
BOT_ID = "pa:5727430493459823123"
ALICE = "3SQNc4FPUQmysaM/AQEhXg=="  # subscribed
BRUNO = "jc9HsWTZ2Yf2NkRZ8KcNug=="  # known, not subscribed


@dataclass
class Receiver:
    """A webhook endpoint that checks callbacks with a ViberProvider and keeps their events."""

    provider: ViberProvider
    raw: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    fail_next: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            status = self.fail_next.popleft() if self.fail_next else 200
            if status == 200 and not self.provider.verify_signature(headers, body):
                status = 401
            if status == 200:
                self.provider.precheck_webhook(body)
                self.events.extend(self.provider.parse_webhook(body))
            self.raw.append((headers, body, status))
        if status != 200:
            return Response(status_code=status)
        answer = self.provider.webhook_response(body)
        return Response(answer or b"", media_type="application/json")

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body, status in self.raw if status == 200]


@dataclass
class World:
    sim: ViberSimulator
    server: RunningServer
    receiver: Receiver
    hook_url: str
    media_root: Path

    def provider(self, token: str = TOKEN, **options: Any) -> ViberProvider:
        return ViberProvider(
            ChannelConfig(
                id=1,
                kind="viber",
                business_handle=BOT_ID,
                api_base=self.server.url,
                secrets={"auth_token": token},
                options={"sender_name": "Madoguchi Shop", **options},
            )
        )

    def post(self, method: str, body: Any, token: str | None = TOKEN) -> dict[str, Any]:
        headers = {"X-Viber-Auth-Token": token} if token is not None else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = httpx.post(f"{self.server.url}/pa/{method}", content=content, headers=headers)
        assert answer.status_code == 200  # B1: HTTP 200 even for logical errors
        return answer.json()


@contextlib.contextmanager
def make_world(settings: Any, tmp_path: Path, **sim_options: Any) -> Iterator[World]:
    """The simulator with a bot whose webhook is set to a receiver, Alice subscribed."""
    settings.MEDIA_ROOT = tmp_path
    sim = ViberSimulator(receipt_delays=(0.01, 0.01), retry_delays=(0.02, 0.05), **sim_options)
    server = sim.serve_in_thread()
    sim.add_account(TOKEN, account_id=BOT_ID, name="Madoguchi Shop", uri="madoguchishop")
    sim.add_user(ALICE, name="Alice Martin", language="fr", country="FR")
    sim.add_user(BRUNO, name="Bruno Costa", language="pt-BR", country="BR")
    receiver = Receiver(provider=ViberProvider(ChannelConfig(
        id=1, kind="viber", business_handle=BOT_ID, api_base=server.url,
        secrets={"auth_token": TOKEN},
        options={"welcome_text": "ようこそ! Welcome to Madoguchi Shop.", "sender_name": "Shop"},
    )))  # fmt: skip
    hook_server = serve_asgi_in_thread(
        Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    )
    world = World(sim, server, receiver, f"{hook_server.url}/hook", tmp_path)
    world.provider().register_webhook(world.hook_url)
    sim.user_sends(TOKEN, ALICE, "Bonjour !")  # a message subscribes her
    try:
        yield world
    finally:
        hook_server.stop()
        server.stop()
        sim.close()


@pytest.fixture
def world(settings: Any, tmp_path: Path) -> Iterator[World]:
    with make_world(settings, tmp_path) as made:
        yield made


def status_of(call: Callable[[], Any]) -> SendError:
    with pytest.raises(SendError) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------------------------
# set_webhook, get_account_info


def test_set_webhook_probes_the_url_with_a_signed_webhook_callback(world: World) -> None:
    headers, body, status = world.receiver.raw[0]
    probe = json.loads(body)
    assert (probe["event"], status) == ("webhook", 200)
    assert isinstance(probe["message_token"], int) and probe["timestamp"] > 10**12
    assert headers["x-viber-content-signature"] == sign_payload(body, TOKEN)
    assert world.sim.webhook_of(TOKEN) == world.hook_url
    assert world.provider().check_credentials() == {
        "id": BOT_ID,
        "name": "Madoguchi Shop",
        "uri": "madoguchishop",
        "webhook": world.hook_url,
    }


def test_set_webhook_fails_when_the_probe_is_not_answered_200(world: World) -> None:
    world.receiver.fail_next.append(503)
    error = status_of(lambda: world.provider().register_webhook(world.hook_url + "?v=2"))
    assert (error.error.code, error.error.title, error.permanent) == (1, "invalidUrl", True)
    assert world.sim.webhook_of(TOKEN) == world.hook_url  # unchanged
    unreachable = status_of(lambda: world.provider().register_webhook("http://127.0.0.1:9/x"))
    assert unreachable.error.code == 1
    assert status_of(lambda: world.provider().register_webhook("ftp://host/x")).error.code == 1


def test_a_webhook_the_provider_cannot_verify_is_refused(world: World) -> None:
    """A receiver keyed with another token answers the probe 401, so set_webhook fails."""
    world.receiver.provider = world.provider(token="another-token")
    assert status_of(lambda: world.provider().register_webhook(world.hook_url)).error.code == 1
    assert world.receiver.raw[-1][2] == 401


def test_removing_the_webhook_stops_sends(world: World) -> None:
    world.provider().register_webhook("")
    assert world.sim.webhook_of(TOKEN) == ""
    error = status_of(lambda: world.provider().send_text(ALICE, "hello"))
    assert (error.error.code, error.permanent) == (10, True)


def test_a_wrong_or_missing_token_is_refused(world: World) -> None:
    error = status_of(lambda: world.provider(token="wrong").check_credentials())
    assert (error.error.code, error.error.title, error.permanent) == (2, "invalidAuthToken", True)
    assert world.post("get_account_info", {}, token=None) == {
        "status": 2,
        "status_message": "missing_auth_token",
    }
    # The old Python SDK puts the token in the body: accepted.
    assert world.post("get_account_info", {"auth_token": TOKEN}, token=None)["id"] == BOT_ID


# ---------------------------------------------------------------------------------------------
# send_message


def test_a_text_send_is_accepted_then_delivered_and_seen(world: World) -> None:
    sent = world.provider().send_text(ALICE, "Merci, votre commande est partie 📦")
    assert sent.platform_message_id.isdigit() and sent.recipient_handle == ALICE
    (record,) = world.sim.sent_to(TOKEN, ALICE)
    assert record.body == {
        "receiver": ALICE,
        "type": "text",
        "text": "Merci, votre commande est partie 📦",
        "sender": {"name": "Madoguchi Shop"},
    }
    assert str(record.message_token) == sent.platform_message_id

    def receipts() -> list[str]:
        return [
            s.status
            for s in world.receiver.of(StatusUpdate)
            if s.platform_message_id == sent.platform_message_id
        ]

    assert wait_for(lambda: receipts() == ["delivered", "read"])
    assert all(s.recipient_handle == ALICE for s in world.receiver.of(StatusUpdate))


def test_only_subscribed_users_can_be_messaged(world: World) -> None:
    provider = world.provider()
    assert status_of(lambda: provider.send_text(BRUNO, "hi")).error.code == 6
    # Opening the chat is not subscribing (B6): still refused.
    world.sim.open_conversation(TOKEN, BRUNO)
    error = status_of(lambda: provider.send_text(BRUNO, "hi"))
    assert (error.error.code, error.error.title, error.permanent) == (
        6,
        "receiverNotSubscribed",
        True,
    )
    world.sim.subscribe(TOKEN, BRUNO)
    assert provider.send_text(BRUNO, "Olá!").platform_message_id
    (subscribed,) = [
        e
        for e in world.receiver.of(SubscriptionUpdate)
        if e.subscribed is True and e.contact_handle == BRUNO
    ]
    assert subscribed.contact_name == "Bruno Costa"


def test_after_unsubscribing_sends_are_refused(world: World) -> None:
    world.sim.unsubscribe(TOKEN, ALICE)
    (left,) = [e for e in world.receiver.of(SubscriptionUpdate) if e.subscribed is False]
    assert left.contact_handle == ALICE
    assert status_of(lambda: world.provider().send_text(ALICE, "hi")).error.code == 6
    world.sim.user_sends(TOKEN, ALICE, "I'm back")  # writing subscribes again
    assert world.provider().send_text(ALICE, "Welcome back").platform_message_id


def test_unknown_users_and_users_without_a_device_are_refused(world: World) -> None:
    assert status_of(lambda: world.provider().send_text("unknownUser0A=", "hi")).error.code == 5
    world.sim.add_user("NoDevice0001A=", name="Old phone", device_ok=False)
    world.sim.user_sends(TOKEN, "NoDevice0001A=", "hello")
    error = status_of(lambda: world.provider().send_text("NoDevice0001A=", "hi"))
    assert (error.error.code, error.permanent) == (11, True)


def test_the_unanswered_cap_answers_too_many_requests_until_the_user_replies(
    settings: Any, tmp_path: Path
) -> None:
    with make_world(settings, tmp_path, unanswered_cap=3) as world:
        provider = world.provider()
        for n in range(3):
            provider.send_text(ALICE, f"update {n}")
        error = status_of(lambda: provider.send_text(ALICE, "one too many"))
        assert (error.error.code, error.error.title) == (12, "tooManyRequests")
        assert not error.permanent
        assert (error.scope, error.retry_after) == ("pair", 60.0)
        world.sim.user_sends(TOKEN, ALICE, "ok, thanks")  # a reply resets the count
        assert provider.send_text(ALICE, "you're welcome").platform_message_id


def test_the_rate_limit_answer_has_the_documented_shape(settings: Any, tmp_path: Path) -> None:
    with make_world(settings, tmp_path, unanswered_cap=0) as world:
        body = {"receiver": ALICE, "type": "text", "text": "x", "sender": {"name": "S"}}
        answer = world.post("send_message", body)
        assert answer["status"] == 12 and answer["status_message"] == "Too many requests"
        assert answer["message_token"].isdigit() and answer["chat_hostname"].startswith("SN-CHAT-")


SENDER = {"name": "Madoguchi Shop"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "text", "text": "x", "sender": SENDER}, 4),  # no receiver
        ({"receiver": ALICE, "type": "text", "text": "x"}, 4),  # no sender
        ({"receiver": ALICE, "type": "text", "text": "x", "sender": {}}, 4),
        ({"receiver": ALICE, "type": "text", "text": "x", "sender": {"name": "N" * 29}}, 3),
        ({"receiver": ALICE, "text": "x", "sender": SENDER}, 4),  # no type
        ({"receiver": ALICE, "type": "carousel", "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "text", "sender": SENDER}, 4),
        ({"receiver": ALICE, "type": "text", "text": "", "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "text", "text": "x" * 7001, "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "text", "text": "x", "sender": SENDER,
          "tracking_data": "t" * 4001}, 3),
        ({"receiver": ALICE, "type": "picture", "text": "", "sender": SENDER}, 4),
        ({"receiver": ALICE, "type": "picture", "media": "not a url", "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "video", "media": "https://x.example/v.mp4",
          "sender": SENDER}, 4),  # no size
        ({"receiver": ALICE, "type": "file", "media": "https://x.example/f.pdf", "size": 10,
          "sender": SENDER}, 4),  # no file_name
        ({"receiver": ALICE, "type": "location", "location": {"lat": 91, "lon": 0},
          "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "contact", "contact": {"name": "A"}, "sender": SENDER}, 4),
        ({"receiver": ALICE, "type": "sticker", "sticker_id": "one", "sender": SENDER}, 3),
        ({"receiver": ALICE, "type": "text", "text": "x", "sender": SENDER,
          "keyboard": {"Type": "keyboard", "Buttons": []}}, 3),
        ({"receiver": ALICE, "type": "text", "text": "x", "sender": SENDER,
          "min_api_version": 99}, 13),
        (b"{not json", 3),
        (json.dumps({"receiver": ALICE, "type": "text", "text": "x" * 31_000,
                     "sender": SENDER}).encode(), 3),  # over 30 KB
    ],
)  # fmt: skip
def test_send_message_validates_every_field(world: World, body: Any, status: int) -> None:
    assert world.post("send_message", body)["status"] == status
    assert world.sim.sent_to(TOKEN, ALICE) == []


@pytest.mark.parametrize(
    "body",
    [
        {"type": "picture", "text": "Box", "media": "https://x.example/a.jpg",
         "thumbnail": "https://x.example/t.jpg"},
        {"type": "video", "media": "https://x.example/v.mp4", "size": 1000, "duration": 10},
        {"type": "file", "media": "https://x.example/f.pdf", "size": 10, "file_name": "f.pdf"},
        {"type": "contact", "contact": {"name": "Itamar", "phone_number": "+972511123123"}},
        {"type": "location", "location": {"lat": 35.66, "lon": 139.7}},
        {"type": "url", "media": "https://www.example.com"},
        {"type": "sticker", "sticker_id": 46105},
        {"type": "rich_media", "min_api_version": 7, "rich_media": {
            "Type": "rich_media", "ButtonsGroupColumns": 6, "ButtonsGroupRows": 1,
            "Buttons": [{"ActionType": "open-url", "ActionBody": "https://www.example.com"}]}},
        {"type": "text", "text": "Pick one", "keyboard": {
            "Type": "keyboard", "Buttons": [{"ActionType": "reply", "ActionBody": "yes",
                                             "Text": "Yes"}]}},
    ],
)  # fmt: skip
def test_send_message_accepts_every_documented_type(world: World, body: dict[str, Any]) -> None:
    answer = world.post("send_message", {"receiver": ALICE, "sender": SENDER, **body})
    assert (answer["status"], answer["billing_status"]) == (0, 1)
    assert isinstance(answer["message_token"], int)


def test_injected_faults_are_classified(world: World, settings: Any) -> None:
    provider = world.provider()
    world.sim.inject_faults(TOKEN, [("status", 9), ("status", 24), ("http", 503), ("http", 404)])
    assert status_of(lambda: provider.send_text(ALICE, "a")).error.title == "publicAccountSuspended"
    assert status_of(lambda: provider.send_text(ALICE, "a")).error.code == 24
    unavailable = status_of(lambda: provider.send_text(ALICE, "a"))
    assert (unavailable.error.code, unavailable.permanent) == (LOCAL_ERROR_CODE, False)
    assert status_of(lambda: provider.send_text(ALICE, "a")).permanent
    settings.HTTP_TIMEOUT_SECONDS = 0.2
    world.sim.inject_faults(TOKEN, [("timeout", 1.0)])
    timeout = status_of(lambda: provider.send_text(ALICE, "slow"))
    assert (timeout.error.title, timeout.permanent) == ("Timeout", False)


def test_media_is_sent_by_its_public_url(world: World) -> None:
    (world.media_root / "outbound").mkdir()
    (world.media_root / "outbound" / "box.png").write_bytes(tiny_png())
    (world.media_root / "outbound" / "receipt.pdf").write_bytes(b"%PDF-1.4 tiny")
    provider = world.provider(media_base_url="https://files.example.com/m")
    provider.send_media(ALICE, "image", "outbound/box.png", "image/png", caption="Your box")
    provider.send_media(
        ALICE, "document", "outbound/receipt.pdf", "application/pdf", filename="receipt.pdf"
    )
    picture, file = (s.body for s in world.sim.sent_to(TOKEN, ALICE))
    assert picture["type"] == "picture" and picture["text"] == "Your box"
    assert picture["media"] == "https://files.example.com/m/outbound/box.png"
    assert (file["type"], file["file_name"], file["size"]) == ("file", "receipt.pdf", 13)


def test_a_failed_delivery_is_reported(world: World) -> None:
    world.sim.add_user(
        "Broken000001A=", name="Lost", fail_delivery="Message could not be delivered"
    )
    world.sim.user_sends(TOKEN, "Broken000001A=", "hi")
    sent = world.provider().send_text("Broken000001A=", "hello?")
    failed = wait_for(lambda: [s for s in world.receiver.of(StatusUpdate) if s.status == "failed"])
    assert failed[0].platform_message_id == sent.platform_message_id
    assert failed[0].error.details == "Message could not be delivered"


# ---------------------------------------------------------------------------------------------
# Callbacks from users


def test_user_messages_arrive_signed_and_subscribe_the_user(world: World) -> None:
    world.sim.user_sends(TOKEN, BRUNO, {"type": "text", "text": "Oi, tudo bem? 😊"})
    message = world.receiver.of(InboundMessage)[-1]
    assert (message.sender_handle, message.sender_name, message.text) == (
        BRUNO,
        "Bruno Costa",
        "Oi, tudo bem? 😊",
    )
    assert message.data["sender_language"] == "pt-BR"
    _, raw, _ = world.receiver.raw[-1]
    assert "😊".encode() in raw  # UTF-8 bytes, signed as they are
    assert world.sim.is_subscribed(TOKEN, BRUNO)
    assert world.provider().send_text(BRUNO, "Tudo ótimo!").platform_message_id


def test_a_redelivered_message_keeps_its_token(world: World) -> None:
    world.receiver.fail_next.extend([500])
    token = world.sim.user_sends(TOKEN, ALICE, "again")
    ids = [m.platform_message_id for m in world.receiver.of(InboundMessage)]
    assert ids.count(str(token)) == 1  # the 500 was retried once and stored once
    world.sim.user_sends(TOKEN, ALICE, "again", message_token=token)
    ids = [m.platform_message_id for m in world.receiver.of(InboundMessage)]
    assert ids.count(str(token)) == 2  # duplicates are for the core to drop


def test_user_media_is_fetched_from_the_simulator(world: World) -> None:
    png = tiny_png((10, 200, 30))
    url = world.sim.user_uploads(png, "image/png", "photo.png")
    world.sim.user_sends(TOKEN, ALICE, {"type": "picture", "text": "Voilà", "media": url})
    message = world.receiver.of(InboundMessage)[-1]
    assert (message.kind, message.text) == ("image", "Voilà")
    assert message.media is not None
    stored = world.provider().fetch_media(message.media, "inbound/a.png", kind="image")
    assert (stored.mime_type, stored.size) == ("image/png", len(png))
    assert (world.media_root / "inbound" / "a.png").read_bytes() == png
    # Only the URL matters: the core rebuilds the ref from what it stored.
    again = MediaRef(platform_media_id=message.media.platform_media_id)
    assert world.provider().fetch_media(again, "inbound/b.png", kind="image").size == len(png)


def test_media_downloads_are_bounded_and_stay_on_the_allowed_host(world: World) -> None:
    big = world.sim.user_uploads(b"\0" * (1024 * 1024 + 1), "image/png", "big.png")
    with pytest.raises(MediaTooLarge):
        world.provider().fetch_media(MediaRef("x", url=big), "inbound/big.png", kind="sticker")
    assert not (world.media_root / "inbound" / "big.png").exists()
    elsewhere = MediaRef("x", url="http://127.0.0.2:9/media/1/a.png")
    error = status_of(lambda: world.provider().fetch_media(elsewhere, "inbound/c.png"))
    assert (error.error.code, error.permanent) == (MEDIA_HOST_REFUSED, True)
    missing = MediaRef("x", url=f"{world.server.url}/media/999/gone.png")
    assert status_of(lambda: world.provider().fetch_media(missing, "inbound/d.png")).permanent


def test_a_conversation_start_gets_the_welcome_message(world: World) -> None:
    started = world.sim.open_conversation(TOKEN, BRUNO, context="ad-campaign-7")
    assert started is not None and started.problem == ""
    assert started.welcome == {
        "type": "text",
        "text": "ようこそ! Welcome to Madoguchi Shop.",
        "sender": {"name": "Shop"},
        "tracking_data": "welcome",
    }
    assert [s.via for s in world.sim.sent_to(TOKEN, BRUNO)] == ["welcome"]
    (event,) = [e for e in world.receiver.of(SubscriptionUpdate) if e.contact_handle == BRUNO]
    assert (event.subscribed, event.context) == (None, "ad-campaign-7")
    assert not world.sim.is_subscribed(TOKEN, BRUNO)


def test_without_a_welcome_text_the_answer_is_empty(world: World) -> None:
    world.receiver.provider = world.provider()  # no welcome_text
    started = world.sim.open_conversation(TOKEN, BRUNO)
    assert started is not None and started.welcome is None and started.problem == ""
    assert world.sim.sent_to(TOKEN, BRUNO) == []


def test_simulated_users_write_in_several_languages(world: World) -> None:
    chatter = ViberChatter(world.sim, TOKEN, seed=3, users=9)
    for _ in range(60):
        chatter.step()
    messages = world.receiver.of(InboundMessage)
    languages = {m.data.get("sender_language") for m in messages}
    assert len(languages) >= 5
    assert {"text", "image"} <= {m.kind for m in messages}
    assert all(status == 200 for _, _, status in world.receiver.raw)  # every one verified
    subscribed = [u for u in chatter.users if world.sim.is_subscribed(TOKEN, u.id)]
    assert subscribed and all(world.provider().send_text(u.id, "Thanks!") for u in subscribed)


def test_the_control_api_drives_users_and_lists_sends(world: World) -> None:
    base = world.server.url
    answer = httpx.post(
        f"{base}/_sim/user_message",
        json={"auth_token": TOKEN, "user_id": "NewUser00001A=", "name": "Chen", "message": "你好"},
    )
    assert answer.status_code == 200 and answer.json()["message_token"] > 0
    assert world.receiver.of(InboundMessage)[-1].text == "你好"
    world.provider().send_text("NewUser00001A=", "您好")
    listed = httpx.get(f"{base}/_sim/sent", params={"auth_token": TOKEN}).json()
    assert [item["body"]["text"] for item in listed["data"]] == ["您好"]
    assert httpx.get(f"{base}/_sim/stats").json()["sends_accepted"] == 1
