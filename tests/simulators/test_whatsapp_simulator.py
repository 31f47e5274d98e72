"""The WhatsApp Cloud API simulator, driven through real HTTP on the loopback.

Each test runs the simulator and a small webhook receiver in uvicorn threads, sends with httpx
and waits for the asynchronous webhooks with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
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

from madoguchi.simulators.whatsapp import (
    CustomerChatter,
    RunningServer,
    WhatsAppSimulator,
    encode_payload,
    openapi_path,
    serve_asgi_in_thread,
    sign_payload,
    tiny_png,
    validate_send_body,
)

PNID = "106540352242922"
WABA = "102290129340398"
DISPLAY = "15550783881"
TOKEN = "EAAtesttoken"
SECRET = "0123456789abcdef0123456789abcdef"
CUSTOMER = "16505551234"
EXAMPLES = openapi_path().parent  # Meta's examples live beside the specification


# ---------------------------------------------------------------------------------------------
# Helpers


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


@dataclass
class Hit:
    headers: dict[str, str]
    raw: bytes
    status: int


@dataclass
class Receiver:
    """A webhook endpoint that records raw requests and can fail on demand."""

    hits: list[Hit] = field(default_factory=list)
    fail_next: deque[int] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    verify_token: str = "let-me-in"

    async def hook(self, request: Request) -> Response:
        if request.method == "GET":  # the A2 verification handshake
            q = request.query_params
            if q.get("hub.mode") == "subscribe" and q.get("hub.verify_token") == self.verify_token:
                return Response(q.get("hub.challenge", ""), media_type="text/plain")
            return Response("Forbidden", status_code=403)
        raw = await request.body()
        with self.lock:
            status = self.fail_next.popleft() if self.fail_next else 200
            self.hits.append(Hit(dict(request.headers), raw, status))
        return Response(status_code=status)

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(h.raw) for h in self.hits if h.status == 200]

    def statuses(self, wamid: str | None = None) -> list[dict[str, Any]]:
        out = []
        for payload in self.accepted():
            for entry in payload["entry"]:
                for change in entry["changes"]:
                    for status in change["value"].get("statuses", []):
                        if wamid is None or status["id"] == wamid:
                            out.append(status)
        return out

    def template_updates(self) -> list[dict[str, Any]]:
        return [
            change["value"]
            for payload in self.accepted()
            for entry in payload["entry"]
            for change in entry["changes"]
            if change["field"] == "message_template_status_update"
        ]

    def messages(self) -> list[dict[str, Any]]:
        out = []
        for payload in self.accepted():
            for entry in payload["entry"]:
                for change in entry["changes"]:
                    out.extend(change["value"].get("messages", []))
        return out


@dataclass
class World:
    sim: WhatsAppSimulator
    server: RunningServer
    receiver: Receiver
    receiver_url: str
    http: httpx.Client

    def send(
        self,
        body: dict[str, Any],
        *,
        token: str = TOKEN,
        pnid: str = PNID,
        version: str = "v23.0",
    ) -> httpx.Response:
        return self.http.post(
            f"{self.server.url}/{version}/{pnid}/messages",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(
            f"{self.server.url}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}
        )


def text_body(text: str = "Hello!", to: str = CUSTOMER) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": f"+{to}",
        "type": "text",
        "text": {"body": text, "preview_url": False},
    }


def template_body(
    name: str, language: str, components: list[dict[str, Any]] | None = None, to: str = CUSTOMER
) -> dict[str, Any]:
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components is not None:
        template["components"] = components
    return {"messaging_product": "whatsapp", "to": to, "type": "template", "template": template}


def body_params(*values: str) -> list[dict[str, Any]]:
    return [{"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}]


def graph_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert error["message"] == f"(#{error['code']}) " + error["message"].split(") ", 1)[1]
    assert error["type"] == "OAuthException"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert error["fbtrace_id"]
    return error


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[dict[str, Receiver], str]]:
    """One webhook server for the module; each test gets its own path and Receiver, so a
    late webhook from a previous test's simulator cannot land in the next test's records."""
    by_key: dict[str, Receiver] = {}

    async def route(request: Request) -> Response:
        return await by_key[request.path_params["key"]].hook(request)

    app = Starlette(routes=[Route("/hook/{key}", route, methods=["GET", "POST"])])
    server = serve_asgi_in_thread(app)
    yield by_key, server.url
    server.stop()


@pytest.fixture
def receiver_server(
    receivers: tuple[dict[str, Receiver], str], request: pytest.FixtureRequest
) -> tuple[Receiver, str]:
    by_key, base = receivers
    key = f"t{len(by_key)}"
    by_key[key] = Receiver()
    return by_key[key], f"{base}/hook/{key}"


@pytest.fixture
def make_world(receiver_server: tuple[Receiver, str]) -> Iterator[Callable[..., World]]:
    receiver, url = receiver_server
    started: list[World] = []

    def make(number: dict[str, Any] | None = None, **options: Any) -> World:
        options.setdefault("status_delays", (0.01, 0.01, 0.01))
        options.setdefault("retry_delays", (0.01, 0.02))
        sim = WhatsAppSimulator(**options)
        sim.add_number(
            phone_number_id=PNID,
            waba_id=WABA,
            display_phone_number=DISPLAY,
            access_token=TOKEN,
            app_secret=SECRET,
            webhook_url=url,
            **(number or {}),
        )
        world = World(sim, sim.serve_in_thread(), receiver, url, httpx.Client(timeout=10))
        started.append(world)
        return world

    yield make
    for world in started:
        world.http.close()
        world.server.stop()
        world.sim.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


# ---------------------------------------------------------------------------------------------
# Signing and validation


def test_it_signs_like_meta_known_answer() -> None:
    # A3: a real delivery captured by pywa, with its (since reset) app secret.
    body = (
        b'{"object":"whatsapp_business_account","entry":[{"id":"264937493375603","changes":[{"value"'
        b':{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550953877","phone_'
        b'number_id":"277321005464405"},"contacts":[{"profile":{"name":"PyWa Tests"},"wa_id":"97254'
        b'4401243"}],"messages":[{"from":"972544401243","id":"wamid.HBgMOTcyNTQ0NDAxMjQzFQIAEhggM0R'
        b'FQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA","timestamp":"1730231903","text":{"body":"Hey t'
        b'here! I am using PyWa."},"type":"text"}]},"field":"messages"}]}]}'
    )
    assert encode_payload(json.loads(body)) == body
    assert sign_payload(body, "1222e786b144d0e85b9f365372d93676") == (
        "sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441"
    )


def test_it_accepts_every_official_send_example() -> None:
    examples = json.loads((EXAMPLES / "send_examples.json").read_text())
    assert len(examples) >= 50
    for name, body in examples.items():
        # The multi-product example leaves an enum as a placeholder: fill it in.
        body = json.loads(json.dumps(body).replace('"<HEADER_TYPE>"', '"text"'))
        assert validate_send_body(body) is None, name


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}, "to"),
        ({"messaging_product": "whatsapp", "to": "1", "type": "fax"}, "fax"),
        ({"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {}}, "text.body"),
        (
            {
                "messaging_product": "whatsapp",
                "to": "1",
                "type": "text",
                "text": {"body": "x"},
                "x": 1,
            },
            '"x"',
        ),
        ({"messaging_product": "whatsapp", "to": "1", "type": "image", "image": {}}, "image"),
        (
            template_body("t", "en", [{"type": "body", "parameters": [{"type": "text"}]}]),
            "parameters[0].text",
        ),
        (
            {"messaging_product": "whatsapp", "to": "1", "type": "location", "location": {}},
            "latitude",
        ),
    ],
)
def test_it_names_the_bad_field_of_a_malformed_body(body: dict[str, Any], mentions: str) -> None:
    details = validate_send_body(body)
    assert details is not None and mentions in details


# ---------------------------------------------------------------------------------------------
# Sending


def test_it_refuses_a_wrong_token_with_190(world: World) -> None:
    response = world.send(text_body(), token="nope")
    assert response.status_code == 401
    assert graph_error(response)["code"] == 190
    assert world.http.post(f"{world.server.url}/v23.0/{PNID}/messages", json={}).status_code == 401
    assert world.sim.sent == []


def test_it_refuses_a_malformed_body_with_100(world: World) -> None:
    missing_to = text_body()
    del missing_to["to"]
    response = world.send(missing_to)
    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 100
    assert error["message"] == "(#100) Invalid parameter"
    assert "to" in error["error_data"]["details"]

    response = world.send({**text_body(), "type": "hologram"})
    assert graph_error(response)["code"] == 100
    assert "hologram" in graph_error(response)["error_data"]["details"]
    assert world.sim.sent == []


def test_it_accepts_a_text_and_reports_signed_statuses(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena Nelson", "Does it come in another color?")
    response = world.send(text_body("こんにちは 😀 ¡Olé!", to=CUSTOMER))

    assert response.status_code == 200
    reply = response.json()
    wamid = reply["messages"][0]["id"]
    assert reply == {
        "messaging_product": "whatsapp",
        "contacts": [{"input": f"+{CUSTOMER}", "wa_id": CUSTOMER}],
        "messages": [{"id": wamid}],
    }
    assert wamid.startswith("wamid.")
    assert world.sim.sent[-1].wamid == wamid

    statuses = wait_for(
        lambda: len(world.receiver.statuses(wamid)) == 3 and world.receiver.statuses(wamid)
    )
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    sent = statuses[0]
    assert sent["recipient_id"] == CUSTOMER and sent["timestamp"].isdigit()
    assert sent["pricing"] == {
        "billable": False,
        "pricing_model": "PMP",
        "type": "free_customer_service",
        "category": "service",
    }
    assert sent["conversation"]["origin"] == {"type": "service"}
    assert "expiration_timestamp" in sent["conversation"]
    assert "pricing" in statuses[1] and "expiration_timestamp" not in statuses[1]["conversation"]
    assert "pricing" not in statuses[2]

    for hit in world.receiver.hits:
        expected = "sha256=" + hmac.new(SECRET.encode(), hit.raw, hashlib.sha256).hexdigest()
        assert hit.headers["x-hub-signature-256"] == expected
        assert hit.headers["content-type"] == "application/json"
        assert hit.raw == encode_payload(json.loads(hit.raw))  # compact, ASCII-escaped
        assert hit.raw.isascii()
    envelope = json.loads(world.receiver.hits[-1].raw)
    assert envelope["object"] == "whatsapp_business_account"
    assert envelope["entry"][0]["id"] == WABA
    change = envelope["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    assert change["value"]["metadata"] == {"display_phone_number": DISPLAY, "phone_number_id": PNID}


def test_its_webhook_bodies_escape_non_ascii(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "佐藤 花子", "こんにちは 😀")
    raw = world.receiver.hits[-1].raw
    assert b"\\u3053\\u3093" in raw and b"\\ud83d\\ude00" in raw
    assert b": " not in raw and b", " not in raw


def test_it_leaves_out_conversation_from_v24(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    wamid = world.send(text_body(), version="v25.0").json()["messages"][0]["id"]
    statuses = wait_for(
        lambda: len(world.receiver.statuses(wamid)) == 3 and world.receiver.statuses(wamid)
    )
    assert all("conversation" not in s for s in statuses)
    assert "pricing" in statuses[0]


def test_it_echoes_biz_opaque_callback_data(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    body = {**text_body(), "biz_opaque_callback_data": "ticket-42"}
    wamid = world.send(body).json()["messages"][0]["id"]
    status = wait_for(lambda: world.receiver.statuses(wamid))[0]
    assert status["biz_opaque_callback_data"] == "ticket-42"


def test_it_marks_a_customer_message_as_read(world: World) -> None:
    wamid = world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    response = world.send({**read, "typing_indicator": {"type": "text"}})
    assert response.status_code == 200 and response.json() == {"success": True}
    assert world.sim.reads[-1][:2] == (PNID, wamid)

    response = world.send({**read, "message_id": "wamid.unknown"})
    assert graph_error(response)["code"] == 100


# ---------------------------------------------------------------------------------------------
# The customer service window


def test_it_accepts_then_fails_a_free_form_send_outside_the_window(world: World) -> None:
    never_wrote = world.send(text_body(to="4915112345678"))
    assert never_wrote.status_code == 200
    wamid = never_wrote.json()["messages"][0]["id"]
    statuses = wait_for(
        lambda: len(world.receiver.statuses(wamid)) == 2 and world.receiver.statuses(wamid)
    )
    assert [s["status"] for s in statuses] == ["sent", "failed"]
    error = statuses[1]["errors"][0]
    assert error["code"] == 131047
    assert error["title"] == error["message"] == "Re-engagement message"
    assert error["error_data"]["details"] == (
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number."
    )

    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "old", timestamp=time.time() - 25 * 3600)
    assert not world.sim.window_open(PNID, CUSTOMER)
    wamid = world.send(text_body()).json()["messages"][0]["id"]
    failed = wait_for(
        lambda: [s for s in world.receiver.statuses(wamid) if s["status"] == "failed"]
    )
    assert failed[0]["errors"][0]["code"] == 131047


def test_it_answers_131047_synchronously_when_asked(make_world: Callable[..., World]) -> None:
    world = make_world(sync_window_errors=True)
    response = world.send(text_body())
    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 131047 and error["message"] == "(#131047) Re-engagement message"

    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi again")
    assert world.send(text_body()).status_code == 200


def test_it_delivers_inside_the_window_and_allows_templates_outside(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    inside = world.send(text_body()).json()["messages"][0]["id"]
    template = world.send(template_body("hello_world", "en_US", to="4915112345678"))
    assert template.status_code == 200
    outside = template.json()["messages"][0]["id"]
    wait_for(lambda: any(s["status"] == "delivered" for s in world.receiver.statuses(inside)))
    statuses = wait_for(
        lambda: len(world.receiver.statuses(outside)) == 3 and world.receiver.statuses(outside)
    )
    assert statuses[0]["pricing"]["category"] == "utility"
    assert statuses[0]["pricing"]["type"] == "regular"  # utility outside the window is billed


# ---------------------------------------------------------------------------------------------
# Templates


def test_it_pages_templates_with_absolute_next_links(make_world: Callable[..., World]) -> None:
    world = make_world(seed_templates=False)
    for i in range(7):
        world.sim.add_template(
            WABA, f"tpl_{i}", "en_US", "UTILITY", [{"type": "BODY", "text": f"Body {i}"}]
        )
    world.sim.add_template(
        WABA, "draft", "en_US", "MARKETING", [{"type": "BODY", "text": "x"}], status="PENDING"
    )
    url: str | None = (
        f"{world.server.url}/v23.0/{WABA}/message_templates?limit=3&fields=name,status"
    )
    pages = []
    while url:
        assert url.startswith(world.server.url)
        response = world.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        page = response.json()
        pages.append(page)
        url = page["paging"].get("next")
    assert [len(p["data"]) for p in pages] == [3, 3, 2]
    assert all(set(t) == {"name", "status", "id"} for p in pages for t in p["data"])
    assert [t["name"] for p in pages for t in p["data"]][-1] == "draft"
    assert pages[0]["paging"]["cursors"]["after"]

    approved = world.get(f"/v23.0/{WABA}/message_templates", status="APPROVED").json()["data"]
    assert len(approved) == 7 and all(t["status"] == "APPROVED" for t in approved)
    by_name = world.get(f"/v23.0/{WABA}/message_templates", name="tpl_3").json()["data"]
    assert [t["name"] for t in by_name] == ["tpl_3"]
    assert set(by_name[0]) >= {"name", "components", "language", "status", "category", "id"}


def test_it_creates_a_pending_template_and_announces_its_approval(world: World) -> None:
    created = world.http.post(
        f"{world.server.url}/v23.0/{WABA}/message_templates",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "name": "abandoned_cart",
            "language": "en",
            "category": "MARKETING",
            "components": [{"type": "BODY", "text": "Hi {{1}}, you left something behind."}],
        },
    )
    assert created.status_code == 200
    template = created.json()
    assert template["status"] == "PENDING" and template["category"] == "MARKETING"
    assert isinstance(template["id"], str)

    pending = world.send(template_body("abandoned_cart", "en", body_params("Mark")))
    assert graph_error(pending)["code"] == 132001

    world.sim.set_template_status(WABA, "abandoned_cart", "en", "APPROVED")
    update = world.receiver.accepted()[-1]
    assert update["entry"][0]["id"] == WABA and isinstance(update["entry"][0]["time"], int)
    change = update["entry"][0]["changes"][0]
    assert change["field"] == "message_template_status_update"
    assert change["value"]["event"] == "APPROVED"
    assert change["value"]["message_template_id"] == int(template["id"])
    assert change["value"]["message_template_name"] == "abandoned_cart"
    assert change["value"]["reason"] == "NONE"

    approved = world.send(template_body("abandoned_cart", "en", body_params("Mark")))
    assert approved.status_code == 200


def test_it_checks_template_sends_against_the_registry(world: World) -> None:
    unknown = world.send(template_body("no_such_template", "en_US"))
    assert graph_error(unknown)["code"] == 132001
    wrong_language = world.send(template_body("order_update", "fr", body_params("a", "b")))
    assert graph_error(wrong_language)["code"] == 132001

    too_few = world.send(template_body("order_update", "en_US", body_params("Mark")))
    assert graph_error(too_few)["code"] == 132000
    assert "(1)" in graph_error(too_few)["error_data"]["details"]
    too_many = world.send(template_body("hello_world", "en_US", body_params("x")))
    assert graph_error(too_many)["code"] == 132000

    assert (
        world.send(template_body("order_update", "en_US", body_params("Mark", "#1"))).status_code
        == 200
    )
    assert (
        world.send(template_body("order_update", "en-us", body_params("Mark", "#1"))).status_code
        == 200
    )
    assert world.send(template_body("order_shipped", "ja", body_params("JP123"))).status_code == 200

    offer = "limited_time_offer_tuscan_getaway_2023"
    no_header = world.send(template_body(offer, "en_US", body_params("a", "b", "c")))
    assert graph_error(no_header)["code"] == 132012
    header = [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/y.jpg"}}]}
    ]
    no_button = world.send(template_body(offer, "en_US", header + body_params("a", "b", "c")))
    assert graph_error(no_button)["code"] == 132000
    button = [
        {
            "type": "button",
            "sub_type": "url",
            "index": "1",
            "parameters": [{"type": "text", "text": "s23"}],
        }
    ]
    complete = world.send(
        template_body(offer, "en_US", header + body_params("a", "b", "c") + button)
    )
    assert complete.status_code == 200

    named = [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "customer_name", "text": "Sheena"},
                {"type": "text", "parameter_name": "appointment_date", "text": "June 3"},
            ],
        }
    ]
    assert world.send(template_body("appointment_reminder", "en_US", named)).status_code == 200
    named[0]["parameters"][1]["parameter_name"] = "date"
    assert (
        graph_error(world.send(template_body("appointment_reminder", "en_US", named)))["code"]
        == 132000
    )

    world.sim.set_template_status(WABA, "order_update", "en_US", "PAUSED")
    paused = world.send(template_body("order_update", "en_US", body_params("Mark", "#1")))
    assert graph_error(paused)["code"] == 132015


# ---------------------------------------------------------------------------------------------
# Rate limits and faults


def test_it_limits_throughput_with_130429(make_world: Callable[..., World]) -> None:
    world = make_world({"mps": 2})
    codes = [
        world.send(template_body("hello_world", "en_US", to=f"3361234567{i}")).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 400]
    response = world.send(template_body("hello_world", "en_US", to="33612345679"))
    assert graph_error(response)["code"] == 130429
    assert len(world.sim.sent) == 2
    wait_for(
        lambda: world.send(template_body("hello_world", "en_US")).status_code == 200, timeout=3
    )


def test_it_limits_a_pair_with_131056(make_world: Callable[..., World]) -> None:
    world = make_world({"pair_burst": 2, "pair_interval": 60.0})
    hello = template_body("hello_world", "en_US")
    assert [world.send(hello).status_code for _ in range(2)] == [200, 200]
    third = world.send(hello)
    assert graph_error(third)["code"] == 131056
    other = world.send(template_body("hello_world", "en_US", to="4915112345678"))
    assert other.status_code == 200


def test_it_answers_injected_faults_in_order(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    world.sim.inject_faults(
        PNID,
        [("http", 500), ("graph", 130429), ("timeout", 0.2), ("graph", 131016), ("graph", 190)],
    )
    first = world.send(text_body())
    assert first.status_code == 500 and first.json()["error"]["is_transient"] is True
    assert graph_error(world.send(text_body()))["code"] == 130429
    started = time.monotonic()
    slow = world.send(text_body())
    assert time.monotonic() - started >= 0.2 and slow.status_code == 200
    unavailable = world.send(text_body())
    assert unavailable.status_code == 503 and graph_error(unavailable)["code"] == 131016
    expired = world.send(text_body())
    assert expired.status_code == 401 and graph_error(expired)["code"] == 190
    assert world.send(text_body()).status_code == 200
    assert len(world.sim.sent) == 2


# ---------------------------------------------------------------------------------------------
# Media


def upload(world: World, data: bytes, mime: str, token: str = TOKEN) -> httpx.Response:
    return world.http.post(
        f"{world.server.url}/v23.0/{PNID}/media",
        headers={"Authorization": f"Bearer {token}"},
        data={"messaging_product": "whatsapp", "type": mime},
        files={"file": ("file.bin", data, mime)},
    )


def test_it_uploads_serves_and_deletes_media(make_world: Callable[..., World]) -> None:
    world = make_world(media_url_ttl=0.3)
    png = tiny_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert upload(world, png, "image/png", token="bad").status_code == 401
    response = upload(world, png, "image/png")
    assert response.status_code == 200
    media_id = response.json()["id"]

    info = world.get(f"/v23.0/{media_id}").json()
    assert info["messaging_product"] == "whatsapp"
    assert info["id"] == media_id and info["mime_type"] == "image/png"
    assert info["file_size"] == str(len(png))
    assert info["sha256"] == base64.b64encode(hashlib.sha256(png).digest()).decode()
    assert info["url"].startswith(f"{world.server.url}/media-download/")

    assert world.http.get(info["url"]).status_code == 401
    download = world.http.get(info["url"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert download.status_code == 200 and download.content == png
    assert download.headers["content-type"] == "image/png"

    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    image = {**text_body(), "type": "image", "image": {"id": media_id}}
    del image["text"]
    assert world.send(image).status_code == 200
    audio = {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "audio",
        "audio": {"id": media_id},
    }
    assert graph_error(world.send(audio))["code"] == 131053

    wait_for(
        lambda: (
            world.http.get(info["url"], headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            == 404
        )
    )
    deleted = world.http.delete(
        f"{world.server.url}/v23.0/{media_id}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert deleted.json() == {"success": True}
    assert graph_error(world.get(f"/v23.0/{media_id}"))["code"] == 100
    assert graph_error(world.send(image))["code"] == 131053


def test_it_enforces_media_types_and_sizes(world: World) -> None:
    too_big = upload(world, b"RIFF" + b"\x00" * (600 * 1024), "image/webp")
    assert graph_error(too_big)["code"] == 131053
    assert "image/webp" in graph_error(too_big)["error_data"]["details"]
    gif = upload(world, b"GIF89a", "image/gif")
    assert graph_error(gif)["code"] == 100
    assert upload(world, b"%PDF-1.4", "application/pdf").status_code == 200


def test_a_customer_can_send_media_the_business_downloads(world: World) -> None:
    png = tiny_png((10, 200, 30))
    media_id = world.sim.customer_uploads(PNID, png, "image/png")
    world.sim.customer_sends(
        PNID, CUSTOMER, "Sheena", {"type": "image", "image": {"caption": "box", "id": media_id}}
    )
    image = world.receiver.messages()[-1]["image"]
    assert image["id"] == media_id and image["mime_type"] == "image/png"
    assert image["sha256"] == base64.b64encode(hashlib.sha256(png).digest()).decode()
    url = world.get(f"/v23.0/{media_id}").json()["url"]
    assert world.http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).content == png


# ---------------------------------------------------------------------------------------------
# Webhooks


def test_it_redelivers_a_webhook_the_receiver_refused(world: World) -> None:
    world.receiver.fail_next.extend([500, 503])
    wamid = world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hello?")
    attempts = [a for a in world.sim.webhook_log if wamid.encode() in a.body]
    assert [a.status for a in attempts] == [500, 503, 200]
    assert len({a.body for a in attempts}) == 1
    assert [h.status for h in world.receiver.hits] == [500, 503, 200]


def test_it_gives_up_after_the_bounded_retries(world: World) -> None:
    world.receiver.fail_next.extend([500] * 10)
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "anyone?")
    assert [a.status for a in world.sim.webhook_log] == [500, 500, 500]
    assert world.sim.stats()["webhooks_failed"] == 1


def test_it_retries_status_webhooks_too(world: World) -> None:
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    world.receiver.fail_next.append(500)
    wamid = world.send(text_body()).json()["messages"][0]["id"]
    statuses = wait_for(
        lambda: len(world.receiver.statuses(wamid)) == 3 and world.receiver.statuses(wamid)
    )
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]


def test_customer_sends_builds_an_a4_envelope(world: World) -> None:
    location = {"latitude": 37.44221496582, "longitude": -122.16165924072, "name": "Philz Coffee"}
    wamid = world.sim.customer_sends(
        PNID,
        CUSTOMER,
        "Sheena Nelson",
        {"type": "location", "location": location},
        timestamp=1749416383,
    )
    payload = json.loads(world.receiver.hits[-1].raw)
    assert payload == {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": DISPLAY, "phone_number_id": PNID},
                            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": CUSTOMER}],
                            "messages": [
                                {
                                    "from": CUSTOMER,
                                    "id": wamid,
                                    "timestamp": "1749416383",
                                    "type": "location",
                                    "location": location,
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def test_it_batches_messages_and_statuses_in_one_post(world: World) -> None:
    first = world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "one")
    wamid = world.send(text_body()).json()["messages"][0]["id"]
    wait_for(lambda: len(world.receiver.statuses(wamid)) == 3)
    before = len(world.receiver.hits)
    with world.sim.batch(PNID):
        second = world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "two")
        third = world.sim.customer_sends(PNID, "34612345678", "Lucía", "tres")
        world.sim.emit_status(PNID, wamid, "read")
    assert len(world.receiver.hits) == before + 1
    payload = json.loads(world.receiver.hits[-1].raw)
    changes = payload["entry"][0]["changes"]
    assert [m["id"] for m in changes[0]["value"]["messages"]] == [second, third]
    assert {c["wa_id"] for c in changes[0]["value"]["contacts"]} == {CUSTOMER, "34612345678"}
    assert changes[1]["value"]["statuses"][0]["id"] == wamid
    assert first not in {m["id"] for m in changes[0]["value"]["messages"]}

    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "four", deliver=False)
    assert len(world.receiver.hits) == before + 1
    assert world.sim.flush(PNID) is not None
    assert world.sim.flush(PNID) is None


def test_it_aggregates_statuses_in_a_window_and_keeps_each_messages_order(
    make_world: Callable[..., World],
) -> None:
    world = make_world(status_batch_window=0.3)
    world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    before = len(world.receiver.hits)
    wamids = [world.send(text_body(f"n{n}")).json()["messages"][0]["id"] for n in range(5)]
    wait_for(lambda: all(len(world.receiver.statuses(w)) == 3 for w in wamids), timeout=10)
    posts = [json.loads(hit.raw) for hit in world.receiver.hits[before:]]
    per_post = [
        len(change["value"]["statuses"])
        for post in posts
        for entry in post["entry"]
        for change in entry["changes"]
    ]
    assert sum(per_post) == 15
    assert len(posts) < 15 and max(per_post) > 1  # several statuses in one POST
    for wamid in wamids:
        assert [s["status"] for s in world.receiver.statuses(wamid)] == [
            "sent",
            "delivered",
            "read",
        ]


def test_it_can_deliver_a_duplicate_message(world: World) -> None:
    wamid = world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi")
    assert world.sim.customer_sends(PNID, CUSTOMER, "Sheena", "hi", wamid=wamid) == wamid
    assert [m["id"] for m in world.receiver.messages()] == [wamid, wamid]


def test_it_runs_the_verification_handshake(world: World) -> None:
    assert world.sim.verify_subscription(PNID, "let-me-in")
    assert not world.sim.verify_subscription(PNID, "wrong-token")


def test_deliver_raw_signs_an_official_example(world: World) -> None:
    examples = json.loads((EXAMPLES / "webhook_examples.json").read_text())
    attempt = world.sim.deliver_raw(PNID, examples["Reaction Message"])
    assert attempt.status == 200
    hit = world.receiver.hits[-1]
    assert hit.headers["x-hub-signature-256"] == sign_payload(hit.raw, SECRET)
    assert json.loads(hit.raw) == examples["Reaction Message"]


# ---------------------------------------------------------------------------------------------
# Simulated customers and the control API


def test_the_chatter_writes_varied_messages_and_answers_the_business(world: World) -> None:
    chatter = CustomerChatter(world.sim, PNID, seed=7)
    for _ in range(60):
        chatter.step()
    messages = world.receiver.messages()
    assert len(messages) == 60
    types = {m["type"] for m in messages}
    assert {"text", "image"} <= types and len(types) >= 4
    languages_seen = {m["from"][:2] for m in messages}
    assert len(languages_seen) >= 5

    stop = threading.Event()
    runner = threading.Thread(target=chatter.run, args=(0.005, stop))
    runner.start()
    wait_for(lambda: len(world.receiver.messages()) >= 65)
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()

    customer = chatter.customers[0]
    template = world.send(template_body("hello_world", "en_US", to=customer.wa_id))
    business = template.json()["messages"][0]["id"]
    wait_for(lambda: world.sim.last_outbound(PNID, customer.wa_id) == business)
    chatter.customers = [customer]
    chatter.step()
    answer = world.receiver.messages()[-1]
    if answer["type"] == "reaction":
        assert answer["reaction"]["message_id"] == business
    else:
        assert answer["context"] == {"from": DISPLAY, "id": business}


def test_the_control_api_works_over_http(world: World) -> None:
    base = f"{world.server.url}/_sim"
    posted = world.http.post(
        f"{base}/customer_message",
        json={"phone_number_id": PNID, "wa_id": CUSTOMER, "name": "Sheena", "message": "hola"},
    )
    assert posted.status_code == 200 and posted.json()["id"].startswith("wamid.")
    assert world.receiver.messages()[-1]["text"] == {"body": "hola"}

    world.send(text_body())
    sent = world.http.get(f"{base}/sent", params={"phone_number_id": PNID}).json()
    assert len(sent["data"]) == 1 and sent["data"][0]["body"]["to"] == f"+{CUSTOMER}"
    assert world.http.get(f"{base}/sent", params={"since": sent["next"]}).json()["data"] == []

    faults = world.http.post(
        f"{base}/faults", json={"phone_number_id": PNID, "faults": [["graph", 131057]]}
    )
    assert faults.json() == {"queued": 1}
    assert graph_error(world.send(text_body()))["code"] == 131057

    status = world.http.post(
        f"{base}/templates/status",
        json={
            "waba_id": WABA,
            "name": "hello_world",
            "language": "en_US",
            "status": "REJECTED",
            "reason": "SCAM",
        },
    )
    assert status.json() == {"success": True}
    # Status webhooks of the send above may still arrive: look for the update itself.
    assert world.receiver.template_updates()[-1]["reason"] == "SCAM"

    png = tiny_png()
    uploaded = world.http.post(
        f"{base}/customer_upload",
        json={
            "phone_number_id": PNID,
            "data_base64": base64.b64encode(png).decode(),
            "mime_type": "image/png",
        },
    )
    media_id = uploaded.json()["id"]
    assert world.get(f"/v23.0/{media_id}").json()["file_size"] == str(len(png))

    stats = world.http.get(f"{base}/stats").json()
    assert stats["sends_accepted"] == 1 and stats["errors_by_code"]["131057"] == 1
    assert ("POST", f"/v23.0/{PNID}/messages", 400) in world.sim.requests


def test_it_runs_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "numbers.json"
    config.write_text(
        json.dumps(
            [
                {
                    "phone_number_id": PNID,
                    "waba_id": WABA,
                    "display_phone_number": DISPLAY,
                    "access_token": TOKEN,
                    "app_secret": SECRET,
                    "webhook_url": None,
                }
            ]
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "madoguchi.simulators.whatsapp",
            "--port",
            "0",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        response = wait_for(lambda: _try_get(f"{url}/v23.0/{WABA}/message_templates?fields=name"))
        assert any(t["name"] == "hello_world" for t in response.json()["data"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _try_get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    except httpx.TransportError:
        return None
