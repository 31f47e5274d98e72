"""B3 latency: a signed WhatsApp webhook received → its ``message`` event on the WebSocket of
every agent allowed to see it, with 200 agents and a supervisor connected and 100 messages/s.

Four teams of 50 agents; six channels: one visible to all, one per team (``team``
visibility), one ``assigned_only`` (unassigned conversations: only the supervisor may see them).
The traffic goes 10% to the open channel, 80% to the team channels, 10% to the private one, so a
message reaches 201, 51 or 1 sockets (61 on average: with two events per message, about 12,000
frames/s leave the server). Any event on a socket whose user may not see it is a leak.

Measured: from the moment the POST is sent to the event's arrival on each recipient's socket
(one clock, time.monotonic, across the processes of this machine), p50 and p99 over every
delivery, the first second excluded (warm-up), in two topologies:
- one process: ``madoguchi serve`` with its in-process worker;
- two processes through Redis: ``serve --no-worker`` holding the sockets + ``madoguchi worker``.
Baseline: bench/rt_relay.py, a bare WebSocket relay under the same uvicorn, sent the same
recipients and events of the same size at the same rate (no database, no worker).
Load: open loop (httpx) from this process; sockets in a separate process (bench/rt_clients.py).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .common import Database, Result, free_port, percentile
from .payloads import PHONE_NUMBER_ID, TEXTS, compact, messages_body, sign
from .rt_common import (
    Clients,
    cpu_seconds,
    machine_load,
    redis_flush,
    relay,
    relay_env,
    send,
    serve,
    setup,
    spawn,
    stop_process,
    wait_ready,
)

REDIS_URL = os.environ.get("BENCH_B3_REDIS_URL", "redis://127.0.0.1:6379/9")
RATE = 100
AGENTS = 200
TEAM_SIZE = 50
TEAMS = {f"team-{t}": list(range(t * TEAM_SIZE, (t + 1) * TEAM_SIZE)) for t in range(4)}
SUPERVISOR = AGENTS  # one supervisor socket besides the agents
CHANNELS = [
    {"tag": "open", "phone": "200000000000010", "visibility": "all", "team": None},
    *[
        {"tag": team, "phone": f"20000000000001{n + 1}", "visibility": "team", "team": team}
        for n, team in enumerate(TEAMS)
    ],
    {"tag": "private", "phone": "200000000000019", "visibility": "assigned_only", "team": None},
]
TAGS = [c["tag"] for c in CHANNELS]
# One cycle of ten messages: 1 open, 8 to the teams, 1 private.
CYCLE = ["open", *TEAMS, *TEAMS, "private"]


def allowed(index: int, tag: str) -> bool:
    if index == SUPERVISOR or tag == "open":
        return True
    return tag in TEAMS and index // TEAM_SIZE == int(tag.rsplit("-", 1)[1])


def plan(mode: str, count: int) -> list[tuple[str, str, str]]:
    """(tag, platform message id, customer) for each message, channels in turn."""
    items = []
    for n in range(count):
        tag = CYCLE[n % len(CYCLE)]
        customer = f"44{mode}{TAGS.index(tag)}{(n // len(CYCLE)) % 100:08d}"
        items.append((tag, f"wamid.b3.{mode}.{tag}.{n}", customer))
    return items


def webhook_requests(
    base: str, items: list[tuple[str, str, str]], channels: dict[str, Any]
) -> list[tuple[str, bytes, dict[str, str]]]:
    requests = []
    for n, (tag, pid, customer) in enumerate(items):
        body = messages_body([(customer, pid, TEXTS[n % len(TEXTS)])])
        body = body.replace(PHONE_NUMBER_ID.encode(), channels[tag]["phone"].encode())
        headers = {"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
        requests.append((f"{base}{channels[tag]['webhook_path']}", body, headers))
    return requests


def relay_requests(
    base: str, items: list[tuple[str, str, str]], channels: dict[str, Any], user_ids: list[int]
) -> list[tuple[str, bytes, dict[str, str]]]:
    """The same recipients, and events of the real ones' size and shape."""
    audience = {tag: [uid for i, uid in enumerate(user_ids) if allowed(i, tag)] for tag in TAGS}
    requests = []
    for n, (tag, pid, customer) in enumerate(items):
        text = TEXTS[n % len(TEXTS)]
        stamp = "2026-01-01T00:00:00+00:00"
        message = {
            "type": "message",
            "op": "add",
            "conversation_id": n,
            "assignee_id": None,
            "message": {
                "id": n,
                "conversation": n,
                "direction": "in",
                "kind": "text",
                "text": text,
                "author": None,
                "status": None,
                "error": None,
                "reply_to": None,
                "media": None,
                "data": {},
                "platform_id": pid,
                "platform_timestamp": stamp,
                "created_at": stamp,
            },
        }
        conversation = {
            "type": "conversation",
            "op": "upsert",
            "conversation": {
                "id": n,
                "channel": {"id": channels[tag]["id"], "kind": "whatsapp", "name": f"Bench {tag}"},
                "channel_id": channels[tag]["id"],
                "contact": {"id": n, "name": f"Customer {customer[-4:]}", "handle": customer},
                "assignee": None,
                "team_id": None,
                "status": "open",
                "snoozed_until": None,
                "last_message_at": stamp,
                "last_message_preview": text[:120],
                "unread_count": 1,
                "window": {"open": True, "expires_at": stamp},
                "created_at": stamp,
            },
        }
        body = compact({"users": audience[tag], "events": [message, conversation]})
        requests.append((f"{base}/", body, {"Content-Type": "application/json"}))
    return requests


def analyse(
    records: list[list[Any]],
    items: list[tuple[str, str, str]],
    sent: list[float],
    channels: dict[str, Any],
    sockets: int,
    warm: int,
) -> dict[str, Any]:
    index_of = {pid: n for n, (_t, pid, _c) in enumerate(items)}
    tag_of_channel = {c["id"]: tag for tag, c in channels.items()}
    latencies: list[float] = []
    delivered: set[tuple[int, int]] = set()
    leaks = duplicates = 0
    for index, t, kind, key in records:
        if kind == "message" and key in index_of:
            n = index_of[key]
            if not allowed(index, items[n][0]):
                leaks += 1
            elif (index, n) in delivered:
                duplicates += 1
            else:
                delivered.add((index, n))
                if n >= warm:
                    latencies.append((t - sent[n]) * 1000)
        elif kind == "conversation" and key in tag_of_channel:
            if not allowed(index, tag_of_channel[key]):
                leaks += 1
    expected = sum(1 for tag, _p, _c in items for i in range(sockets) if allowed(i, tag))
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "leaks": leaks,
        "missing": expected - len(delivered),
        "duplicates": duplicates,
        "expected": expected,
    }


def measure(
    db: Database,
    base: str,
    requests: list[tuple[str, bytes, dict[str, str]]],
    items: list[tuple[str, str, str]],
    setup_out: dict[str, Any],
    name: str,
    pids: list[int],
    stragglers: float,
) -> dict[str, Any]:
    sockets = list(enumerate(setup_out["tokens"]))
    clients = Clients(db.dir, base, sockets, processes=1, name=name)
    try:
        clients.wait_ready()
        if clients.failed:
            raise RuntimeError(f"{clients.failed} sockets failed to open ({name})")
        time.sleep(0.5)
        cpu = cpu_seconds(pids)
        began = time.monotonic()
        sent, failures = send(requests, RATE)
        time.sleep(stragglers)
        cpu = cpu_seconds(pids) - cpu
        elapsed = time.monotonic() - began
    finally:
        records = clients.stop()
    result = analyse(records, items, sent, setup_out["channels"], len(sockets), warm=RATE)
    # Server-side CPU per delivered message event (each comes with a conversation event): a
    # figure that, unlike latency, does not depend on what else the machine is running.
    result["cpu_us"] = cpu * 1e6 / max(1, result["expected"] - result["missing"])
    result["cpu_share"] = cpu / elapsed
    result["send_s"] = sent[-1] - sent[0] if sent else 0.0
    result["failures"] = failures
    return result


def run(kind: str, quick: bool) -> list[Result]:
    seconds = 3 if quick else 30  # the first second is a warm-up, not counted
    stragglers = 0.5 if quick else 2.0  # each delivery takes well under 0.2 s
    count = RATE * seconds
    db = Database(kind)
    try:
        db.migrate()
        out = setup(
            db,
            {
                "agents": AGENTS + 1,
                "supervisors": [SUPERVISOR],
                "teams": TEAMS,
                "channels": CHANNELS,
            },
        )
        load_before = machine_load()

        # Baseline: the bare relay.
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = spawn(relay(port), relay_env(db, out["tokens"], out["user_ids"]))
        try:
            wait_ready(proc, f"{base}/")
            items = plan("0", count)
            baseline = measure(
                db,
                base,
                relay_requests(base, items, out["channels"], out["user_ids"]),
                items,
                out,
                "relay",
                [proc.pid],
                stragglers,
            )
        finally:
            stop_process(proc)

        # One process: serve with its in-process worker (no Redis).
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = spawn(serve(db.env(), port), db.env(), db.dir / "serve1.log")
        try:
            wait_ready(proc, f"{base}/login/")
            items = plan("1", count)
            single = measure(
                db,
                base,
                webhook_requests(base, items, out["channels"]),
                items,
                out,
                "single",
                [proc.pid],
                stragglers,
            )
        finally:
            stop_process(proc)

        # Two processes through Redis: sockets in serve, processing in worker.
        redis_flush(REDIS_URL)
        env = db.env(REDIS_URL=REDIS_URL)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = spawn(serve(env, port, no_worker=True), env, db.dir / "serve2.log")
        worker = spawn([sys.executable, "-m", "madoguchi.cli", "worker"], env, db.dir / "w2.log")
        try:
            wait_ready(proc, f"{base}/login/")
            items = plan("2", count)
            double = measure(
                db,
                base,
                webhook_requests(base, items, out["channels"]),
                items,
                out,
                "double",
                [proc.pid, worker.pid],
                stragglers,
            )
        finally:
            stop_process(worker)
            stop_process(proc)
        load_after = machine_load()
    finally:
        db.drop()

    def note(m: dict[str, Any]) -> str:
        parts = [
            f"p50 {m['p50']:.1f} ms, max {m['max']:.0f} ms",
            f"server busy {m['cpu_share']:.0%} of a core",
            f"{RATE * seconds} sends took {m['send_s']:.1f} s",
        ]
        if m["failures"]:
            parts.append(f"{len(m['failures'])} webhooks failed, e.g. {m['failures'][0]}")
        if m["missing"] or m["duplicates"]:
            parts.append(f"{m['missing']} of {m['expected']} deliveries missing")
            parts.append(f"{m['duplicates']} duplicated")
        return "; ".join(parts)

    bench = f"B3 {kind}"
    leaks = single["leaks"] + double["leaks"]
    complete = not (single["missing"] or double["missing"])
    return [
        Result(
            bench,
            "p99 webhook → socket, 1 process",
            single["p99"],
            "ms",
            baseline["p99"],
            "≤ 100 ms",
            single["p99"] <= 100 and not single["missing"],
            note(single),
        ),
        Result(
            bench,
            "p99 webhook → socket, 2 processes + Redis",
            double["p99"],
            "ms",
            baseline["p99"],
            "≤ 150 ms",
            double["p99"] <= 150 and not double["missing"],
            note(double),
        ),
        Result(bench, "p50 webhook → socket, 1 process", single["p50"], "ms", baseline["p50"]),
        Result(
            bench,
            "server CPU per delivery, 1 process",
            single["cpu_us"],
            "µs",
            baseline["cpu_us"],
            note="webhook, worker, both events; baseline: relaying the two events",
        ),
        Result(
            bench,
            "server CPU per delivery, 2 processes",
            double["cpu_us"],
            "µs",
            baseline["cpu_us"],
            note="serve + worker processes",
        ),
        Result(
            bench,
            "events on a socket not allowed to see them",
            leaks,
            "events",
            None,
            "0",
            leaks == 0 and baseline["leaks"] == 0,
            f"{single['expected']} deliveries per topology; {'all' if complete else 'not all'}"
            f" delivered; {load_before} → {load_after}",
        ),
    ]
