"""The B1 baseline: the least a webhook receiver can do. A bare ASGI app that checks
X-Hub-Signature-256 over the raw body and inserts one row into the same database, then answers
200. No framework, no parsing. Run: uvicorn bench.baseline_app:app (DATABASE_URL, APP_SECRET)."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time

SECRET = os.environ.get("APP_SECRET", "bench-secret").encode()
URL = os.environ["DATABASE_URL"]
TABLE = "CREATE TABLE IF NOT EXISTS baseline_event (id INTEGER PRIMARY KEY, channel_id INTEGER, body BLOB, received_at REAL)"

if URL.startswith("sqlite"):
    path = URL.split("sqlite:///", 1)[1]
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(TABLE)

    async def insert(body: bytes) -> None:
        db.execute(
            "INSERT INTO baseline_event (channel_id, body, received_at) VALUES (1, ?, ?)",
            (body, time.time()),
        )

else:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(URL, min_size=4, max_size=10, open=False)

    async def insert(body: bytes) -> None:
        if pool.closed:
            await pool.open()
            async with pool.connection() as conn:
                await conn.execute(
                    TABLE.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
                    .replace("BLOB", "BYTEA")
                    .replace("REAL", "DOUBLE PRECISION")
                )
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO baseline_event (channel_id, body, received_at) VALUES (1, %s, %s)",
                (body, time.time()),
            )


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    signature = dict(scope["headers"]).get(b"x-hub-signature-256", b"").decode()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        status = 401
    else:
        await insert(body)
        status = 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
