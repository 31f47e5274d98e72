"""B2 processing: stored webhook bodies turned into contacts, conversations, messages and
real-time events by `madoguchi worker`, sustained, with no duplicate rows.
Baseline: the floor of the same work's storage cost, a loop committing one message-sized row
per transaction into the same database (bench/b2_floor.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from .common import (
    Database,
    Result,
    create_channel,
    free_port,
    madoguchi_all,
    start,
    stop,
    wait_http,
)
from .payloads import TEXTS, messages_body, sign

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")

COUNT_SQL = {
    "messages": "SELECT COUNT(*), COUNT(DISTINCT platform_message_id) FROM madoguchi_message",
    "pending": "SELECT COUNT(*) FROM madoguchi_rawevent WHERE processed_at IS NULL",
}


def query(db: Database, sql: str) -> tuple:
    if db.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(db.url.split("sqlite:///", 1)[1]) as conn:
            return conn.execute(sql).fetchone()
    import psycopg

    with psycopg.connect(db.url) as conn:
        return conn.execute(sql).fetchone()


def run(kind: str, quick: bool) -> list[Result]:
    customers, per_customer = (300, 10) if quick else (2000, 10)
    total = customers * per_customer
    db = Database(kind)
    try:
        db.migrate()
        env = db.env()
        channel = create_channel(db)
        madoguchi_all(
            [
                ["user", "add", name, "--role", "agent", "--password", "bench-password-123"]
                for name in ("aiko", "ben", "sora")
            ],
            env,
        )

        # Ingest every body first (server without a worker), then let one worker process them.
        port = free_port()
        server = start(
            [sys.executable, "-m", "madoguchi.cli", "serve", "--no-worker", "--port", str(port)],
            env,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/login/")
            url = f"http://127.0.0.1:{port}{channel['webhook_path']}"
            with httpx.Client(timeout=30) as client:
                for n in range(total):
                    body = messages_body(
                        [(f"4470{n % customers:08d}", f"wamid.b2.{n}", TEXTS[n % len(TEXTS)])]
                    )
                    if n % 50 == 0:  # a platform retry now and then: must store nothing new
                        client.post(url, content=body, headers={"X-Hub-Signature-256": sign(body)})
                    response = client.post(
                        url, content=body, headers={"X-Hub-Signature-256": sign(body)}
                    )
                    response.raise_for_status()
        finally:
            stop(server)

        # A separate worker publishes its real-time events through Redis (as deployed): the
        # events are part of the work measured.
        worker_env = {**env, "REDIS_URL": REDIS_URL}
        worker = start([sys.executable, "-m", "madoguchi.cli", "worker"], worker_env)
        launched = time.monotonic()
        try:
            # The clock starts at the first stored message: process start-up is not throughput.
            while query(db, COUNT_SQL["messages"])[0] == 0:
                if time.monotonic() - launched > 120:
                    raise RuntimeError("the worker did not start processing")
                time.sleep(0.05)
            started, already = time.monotonic(), query(db, COUNT_SQL["messages"])[0]
            while query(db, COUNT_SQL["pending"])[0] > 0:
                if time.monotonic() - started > 600:
                    raise RuntimeError("processing did not finish in 10 minutes")
                time.sleep(0.1)
            elapsed = time.monotonic() - started
        finally:
            stop(worker)
        rows, distinct = query(db, COUNT_SQL["messages"])
        rate = (rows - already) / elapsed

        floor = subprocess.run(
            [sys.executable, "-m", "bench.b2_floor", str(total)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        baseline = float(floor.stdout.strip())
        exact = rows == distinct == total
        return [
            Result(
                f"B2 {kind}",
                "messages processed",
                rate,
                "msg/s",
                baseline,
                "≥ 1,000 msg/s",
                rate >= 1000 and exact,
                "" if exact else f"{rows} rows, {distinct} distinct, {total} sent",
            ),
        ]
    finally:
        db.drop()
