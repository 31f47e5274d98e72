"""B6 sockets: 5,000 idle authenticated WebSockets held by one server process (1,500 in the
quick mode), and a broadcast to 1,000 of them.

- Memory: the server's RSS (/proc/<pid>/status VmRSS) after the first 100 sockets and after all
  5,000, divided by the 4,900 added (one-time costs such as the first database connection and
  lazily imported code are left out). Target ≤ 40 KB per socket.
- Broadcast: a customer writes on a ``team`` channel whose team has 1,000 of the 5,000 users:
  the webhook goes through the real path (ingest, in-process worker, recipients by permission)
  and each message event must reach those 1,000 sockets and no other. From the POST's send time
  to each arrival, p99 over every delivery of every broadcast. Target ≤ 200 ms.
Baseline: the same sockets on bench/rt_relay.py (a bare relay under the same uvicorn), and the
same broadcast POSTed to it with its 1,000 recipients. Clients: two processes (rt_clients).
"""

from __future__ import annotations

import time
from typing import Any

from .common import Database, Result, free_port, percentile
from .payloads import PHONE_NUMBER_ID, TEXTS, compact, messages_body, sign
from .rt_common import (
    Clients,
    machine_load,
    relay,
    relay_env,
    rss_kb,
    send,
    serve,
    setup,
    spawn,
    stop_process,
    wait_ready,
)

SOCKETS = 5000
AUDIENCE = 1000  # users 0..999 are the team that may see the channel
FIRST = 100  # sockets opened before the memory baseline is read
PHONE = "200000000000060"


def message_event(pid: str, n: int, channel_id: int) -> list[dict[str, Any]]:
    stamp = "2026-01-01T00:00:00+00:00"
    text = TEXTS[n % len(TEXTS)]
    return [
        {
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
        },
        {
            "type": "conversation",
            "op": "upsert",
            "conversation": {
                "id": n,
                "channel_id": channel_id,
                "status": "open",
                "last_message_at": stamp,
                "last_message_preview": text[:120],
                "unread_count": 1,
            },
        },
    ]


def measure(
    db: Database,
    base: str,
    pid: int,
    tokens: list[str],
    requests: list[tuple[str, bytes, dict[str, str]]],
    pids: list[str],
    name: str,
    pause: float,
    channel_id: int,
) -> dict[str, Any]:
    sockets = list(enumerate(tokens))
    first = Clients(db.dir, base, sockets[:FIRST], processes=1, name=f"{name}-first")
    rest: Clients | None = None
    try:
        first.wait_ready()
        time.sleep(pause)
        before = rss_kb(pid)
        opening = time.monotonic()
        rest = Clients(db.dir, base, sockets[FIRST:], processes=2, name=f"{name}-rest")
        rest.wait_ready()
        opened_in = time.monotonic() - opening
        time.sleep(2 * pause)
        after = rss_kb(pid)
        opened = first.opened + rest.opened
        sent: list[float] = []
        failures: list[str] = []
        for request in requests:  # one at a time: each broadcast alone, as in B6's wording
            times, failed = send([request], 1.0)
            sent.extend(times)
            failures.extend(failed)
            time.sleep(pause / 2)
        if failures:
            raise RuntimeError(f"broadcast webhooks failed: {failures}")
        time.sleep(2 * pause)
    finally:
        records = first.stop() + (rest.stop() if rest else [])
    index_of = {p: n for n, p in enumerate(pids)}
    latencies, leaks, seen = [], 0, set()
    by_broadcast: dict[int, list[float]] = {}
    for index, t, kind, key in records:
        if kind == "message" and key in index_of:
            if index >= AUDIENCE:
                leaks += 1
            elif (index, key) not in seen:
                seen.add((index, key))
                if index_of[key] > 0:  # the first broadcast warms up (first use of the path)
                    latency = (t - sent[index_of[key]]) * 1000
                    latencies.append(latency)
                    by_broadcast.setdefault(index_of[key], []).append(latency)
        elif kind == "conversation" and key == channel_id and index >= AUDIENCE:
            leaks += 1
    return {
        "per_socket_kb": (after - before) / max(1, opened - FIRST),
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "opened": opened,
        "failed": first.failed + (rest.failed if rest else 0),
        "opened_in": opened_in,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "each": ", ".join(
            f"{percentile(v, 50):.0f}/{max(v):.0f}" for _, v in sorted(by_broadcast.items())
        ),
        "missing": AUDIENCE * len(requests) - len(seen),
        "leaks": leaks,
    }


def run(kind: str, quick: bool) -> list[Result]:
    # quick: fewer sockets (memory is per socket added; the broadcast's audience is the same)
    sockets = 1500 if quick else SOCKETS
    broadcasts = 5 if quick else 21  # the first one is a warm-up, not counted
    pause = 0.5 if quick else 1.0  # settling: after the sockets open, after the broadcasts
    db = Database(kind)
    try:
        db.migrate()
        out = setup(
            db,
            {
                "agents": sockets,
                "teams": {"broadcast": list(range(AUDIENCE))},
                "channels": [
                    {"tag": "b6", "phone": PHONE, "visibility": "team", "team": "broadcast"}
                ],
            },
        )
        channel = out["channels"]["b6"]
        pids = [f"wamid.b6.{n}" for n in range(broadcasts)]
        load_before = machine_load()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = spawn(relay(port), relay_env(db, out["tokens"], out["user_ids"]))
        try:
            wait_ready(proc, f"{base}/")
            audience = out["user_ids"][:AUDIENCE]
            requests = [
                (
                    f"{base}/",
                    compact({"users": audience, "events": message_event(p, n, channel["id"])}),
                    {"Content-Type": "application/json"},
                )
                for n, p in enumerate(pids)
            ]
            baseline = measure(
                db, base, proc.pid, out["tokens"], requests, pids, "relay", pause, channel["id"]
            )
        finally:
            stop_process(proc)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = spawn(serve(db.env(), port), db.env(), db.dir / "serve.log")
        try:
            wait_ready(proc, f"{base}/login/")
            requests = []
            for n, p in enumerate(pids):
                body = messages_body([(f"4460{n:08d}", p, TEXTS[n % len(TEXTS)])])
                body = body.replace(PHONE_NUMBER_ID.encode(), PHONE.encode())
                headers = {"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"}
                requests.append((f"{base}{channel['webhook_path']}", body, headers))
            ours = measure(
                db, base, proc.pid, out["tokens"], requests, pids, "serve", pause, channel["id"]
            )
        finally:
            stop_process(proc)
        load_after = machine_load()
    finally:
        db.drop()

    bench = f"B6 {kind}"
    complete = ours["opened"] == sockets and not ours["missing"]
    return [
        Result(
            bench,
            "memory per idle socket",
            ours["per_socket_kb"],
            "KB",
            baseline["per_socket_kb"],
            "≤ 40 KB",
            ours["per_socket_kb"] <= 40 and ours["opened"] == sockets,
            f"{ours['opened']} opened ({ours['failed']} failed) in {ours['opened_in']:.0f} s"
            f" (baseline {baseline['opened_in']:.0f} s);"
            f" RSS {ours['rss_before_mb']:.0f} → {ours['rss_after_mb']:.0f} MB",
        ),
        Result(
            bench,
            f"p99 broadcast to {AUDIENCE} sockets",
            ours["p99"],
            "ms",
            baseline["p99"],
            "≤ 200 ms",
            ours["p99"] <= 200 and complete,
            f"p50 {ours['p50']:.0f} ms, max {ours['max']:.0f} ms; {broadcasts - 1} broadcasts through"
            f" webhook + worker; {ours['missing']} deliveries missing;"
            f" p50/max of each: {ours['each']} ms",
        ),
        Result(
            bench,
            "events on sockets not in the audience",
            ours["leaks"],
            "events",
            None,
            "0",
            ours["leaks"] == 0,
            f"{load_before} → {load_after}",
        ),
    ]
