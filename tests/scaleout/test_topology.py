"""Several `madoguchi serve` and `madoguchi worker` processes on PostgreSQL and Redis, as the
README's scale-out section runs them; and what happens when Redis or the database goes away."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import free_port, run_async, wait_for
from tests.processes import Node, Postgres, Proxy, Redis, cli, wait_http

pytestmark = pytest.mark.postgres_only

PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
APP_SECRET = "cluster-app-secret"
CUSTOMER = "819012345678"
POOL_MAX = 4


class Cluster:
    def __init__(self, tmp: Path, *, servers: int = 2, workers: int = 2) -> None:
        from madoguchi.simulators.whatsapp import WhatsAppSimulator

        self.tmp = tmp
        self.pg = Postgres()
        self.redis = Redis()
        self.proxy = Proxy(self.pg.port)  # server 0 reaches the database through it
        self.sim = WhatsAppSimulator(
            status_delays=(0.02, 0.02, 0.02), retry_delays=(0.3, 0.6, 1.2, 2.4, 4.8)
        )
        self.sim_server = self.sim.serve_in_thread()
        self.env = {
            **{k: v for k, v in __import__("os").environ.items() if not k.startswith("DJANGO_")},
            "DATABASE_URL": self.pg.url(),
            "REDIS_URL": self.redis.url,
            "MADOGUCHI_DATA_DIR": str(tmp),
            "MADOGUCHI_SECRET_KEY": "cluster-secret-key-cluster-secret-key-0123",
            "MADOGUCHI_JOB_LEASE_SECONDS": "6",
            "MADOGUCHI_RETRY_BASE_SECONDS": "0.2",
            "MADOGUCHI_WORKER_POLL_SECONDS": "0.5",
            "MADOGUCHI_DB_POOL_MAX": str(POOL_MAX),
            "MADOGUCHI_HTTP_TIMEOUT": "10",
        }
        cli(self.env, "migrate")
        cli(self.env, "user", "add", "aiko", "--role", "agent", "--password", "a-long-password-77")
        self.token = cli(self.env, "token", "create", "aiko").strip()
        channel = json.loads(
            cli(
                self.env,
                "channel",
                "add",
                "whatsapp",
                "--name",
                "Cluster",
                "--phone-number-id",
                PHONE_NUMBER_ID,
                "--waba-id",
                WABA_ID,
                "--access-token",
                "cluster-token",
                "--app-secret",
                APP_SECRET,
                "--verify-token",
                "v",
                "--api-base",
                self.sim_server.url,
                "--no-check",  # the number is added to the simulator once the servers run
                "--json",
            )
        )
        self.webhook_path = channel["webhook_path"]
        self.servers: list[tuple[Node, str]] = []
        for n in range(servers):
            port = free_port()
            env = dict(self.env)
            if n == 0:
                env["DATABASE_URL"] = self.pg.url(self.proxy.port)
            node = Node(["serve", "--no-worker", "--port", str(port)], env, tmp / f"serve{n}.log")
            self.servers.append((node.start(), f"http://127.0.0.1:{port}"))
        self.workers = [
            Node(["worker"], self.env, tmp / f"worker{n}.log").start() for n in range(workers)
        ]
        for _, url in self.servers:
            wait_http(f"{url}/login/")
        self.sim.add_number(
            phone_number_id=PHONE_NUMBER_ID,
            waba_id=WABA_ID,
            display_phone_number="15550783881",
            access_token="cluster-token",
            app_secret=APP_SECRET,
            webhook_url=f"{self.servers[0][1]}{self.webhook_path}",
        )

    def api(self, server: int = 0) -> httpx.Client:
        return httpx.Client(
            base_url=self.servers[server][1] + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=20,
        )

    def conversation_id(self) -> int:
        def find() -> int | None:
            items = self.api().get("/conversations?status=all").json()["items"]
            return items[0]["id"] if items else None

        return wait_for(find, timeout=20)

    def close(self) -> None:
        for node in self.workers:
            node.stop()
        for node, _ in self.servers:
            node.stop()
        self.sim_server.stop()
        self.sim.close()
        self.proxy.close()
        self.redis.close()
        self.pg.drop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="madoguchi-cluster-") as tmp:
        group = Cluster(Path(tmp))
        try:
            yield group
        finally:
            group.close()


async def next_event(ws: Any, kind: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        for event in frame if isinstance(frame, list) else [frame]:
            if event.get("type") == kind:
                return event


def test_an_event_made_in_one_process_reaches_a_socket_held_by_another(cluster):
    url = cluster.servers[1][1].replace("http", "ws") + "/ws/"
    headers = {"Authorization": f"Bearer {cluster.token}", "Origin": cluster.servers[1][1]}

    async def scenario() -> dict[str, Any]:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await next_event(ws, "hello")
            # the webhook lands on server 0, a worker process applies it, server 1 pushes it
            await asyncio.to_thread(
                cluster.sim.customer_sends, PHONE_NUMBER_ID, CUSTOMER, "Yuki", "跨プロセス test"
            )
            return await next_event(ws, "message")

    event = run_async(scenario())
    assert event["message"]["text"] == "跨プロセス test"


def test_two_workers_never_send_one_message_twice_and_connections_stay_pooled(cluster):
    cluster.sim.customer_sends(PHONE_NUMBER_ID, CUSTOMER, "Yuki", "hello")
    conversation = cluster.conversation_id()
    cluster.api().post(f"/conversations/{conversation}/claim").raise_for_status()
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(
                peak[0],
                cluster.pg.scalar(
                    f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{cluster.pg.name}'"
                ),
            )
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    texts = [f"message {n}" for n in range(40)]
    for n, text in enumerate(texts):
        response = cluster.api(n % 2).post(
            f"/conversations/{conversation}/messages", json={"text": text}
        )
        assert response.status_code == 202, response.text
    wait_for(lambda: len(cluster.sim.sent_to(PHONE_NUMBER_ID, CUSTOMER)) >= 40, timeout=60)
    time.sleep(2)  # anything sent twice would have shown up by now
    sampling.set()
    sent = [s.body["text"]["body"] for s in cluster.sim.sent_to(PHONE_NUMBER_ID, CUSTOMER)]
    assert sorted(sent) == sorted(texts)
    assert sent == texts  # and in order: one recipient's messages queue behind each other
    processes = len(cluster.servers) + len(cluster.workers) + 1  # +1: this test's sampler
    assert peak[0] <= processes * POOL_MAX, peak[0]


def test_killed_workers_lose_nothing(cluster):
    cluster.sim.customer_sends(PHONE_NUMBER_ID, CUSTOMER, "Yuki", "hello")
    conversation = cluster.conversation_id()
    cluster.api().post(f"/conversations/{conversation}/claim").raise_for_status()
    # The platform is slow to answer: the workers are killed while requests are in flight.
    cluster.sim.inject_faults(PHONE_NUMBER_ID, [("timeout", 2.0)] * 3)
    texts = [f"urgent {n}" for n in range(6)]
    for text in texts:
        cluster.api().post(
            f"/conversations/{conversation}/messages", json={"text": text}
        ).raise_for_status()
    time.sleep(1.0)
    for node in cluster.workers:
        node.kill()
    fresh = Node(["worker"], cluster.env, cluster.tmp / "worker-fresh.log").start()
    cluster.workers.append(fresh)
    wait_for(
        lambda: (
            set(texts)
            <= {s.body["text"]["body"] for s in cluster.sim.sent_to(PHONE_NUMBER_ID, CUSTOMER)}
        ),
        timeout=60,
    )
    statuses = {
        m["text"]: m["status"]
        for m in cluster.api().get(f"/conversations/{conversation}/messages").json()["items"]
    }
    assert all(statuses[t] in ("sent", "delivered", "read") for t in texts), statuses


def test_without_redis_ingest_and_sending_go_on_and_browsers_catch_up(cluster):
    cluster.redis.stop()
    # ingest: the platform still gets its 200, the worker (polling) still applies it
    cluster.sim.customer_sends(PHONE_NUMBER_ID, CUSTOMER, "Yuki", "while redis is down")
    assert cluster.sim.webhook_log[-1][1] == 200
    conversation = cluster.conversation_id()
    cluster.api().post(f"/conversations/{conversation}/claim").raise_for_status()
    cluster.api().post(
        f"/conversations/{conversation}/messages", json={"text": "still sending"}
    ).raise_for_status()
    wait_for(lambda: cluster.sim.sent_to(PHONE_NUMBER_ID, CUSTOMER), timeout=30)
    # Redis returns: a browser's socket connects again and is told to re-fetch (hello).
    cluster.redis.start()
    url = cluster.servers[1][1].replace("http", "ws") + "/ws/"
    headers = {"Authorization": f"Bearer {cluster.token}", "Origin": cluster.servers[1][1]}

    async def reconnect() -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with websockets.connect(url, additional_headers=headers) as ws:
                    return await next_event(ws, "hello")
            except (OSError, websockets.WebSocketException):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    assert run_async(reconnect())["type"] == "hello"
    texts = [
        m["text"]
        for m in cluster.api().get(f"/conversations/{conversation}/messages").json()["items"]
    ]
    assert "while redis is down" in texts and "still sending" in texts


def test_without_the_database_webhooks_get_503_and_nothing_acknowledged_is_lost(cluster):
    cluster.proxy.cut()  # server 0, which receives the webhooks, loses its database
    results: dict[str, Any] = {}

    def customer() -> None:
        results["id"] = cluster.sim.customer_sends(
            PHONE_NUMBER_ID, CUSTOMER, "Yuki", "during the outage"
        )

    thread = threading.Thread(target=customer)
    thread.start()
    wait_for(lambda: any(entry[1] == 503 for entry in cluster.sim.webhook_log), timeout=20)
    assert all(entry[1] != 200 for entry in cluster.sim.webhook_log)  # never a 200 without a commit
    cluster.proxy.restore()
    thread.join(timeout=30)
    assert cluster.sim.webhook_log[-1][1] == 200  # the platform's retry got through
    conversation = cluster.conversation_id()
    texts = [
        m["text"]
        for m in cluster.api(1).get(f"/conversations/{conversation}/messages").json()["items"]
    ]
    assert texts == ["during the outage"]
