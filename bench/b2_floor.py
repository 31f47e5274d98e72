"""B2's baseline: one message-sized row per committed transaction, in a loop, through the same
driver Madoguchi uses. Prints rows per second."""

from __future__ import annotations

import os
import sys
import time

from .payloads import TEXTS


def main() -> None:
    total = int(sys.argv[1])
    url = os.environ["DATABASE_URL"]
    text = TEXTS[1]
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.split("sqlite:///", 1)[1], isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE floor (id INTEGER PRIMARY KEY, pid TEXT UNIQUE, body TEXT)")
        started = time.monotonic()
        for n in range(total):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (pid, body) VALUES (?, ?)", (f"wamid.{n}", text))
            conn.execute("COMMIT")
    else:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        conn.execute("CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, pid TEXT UNIQUE, body TEXT)")
        started = time.monotonic()
        for n in range(total):
            with conn.transaction():
                conn.execute("INSERT INTO floor (pid, body) VALUES (%s, %s)", (f"wamid.{n}", text))
    print(total / (time.monotonic() - started))


if __name__ == "__main__":
    main()
