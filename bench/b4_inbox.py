"""B4 inbox at scale: 5 channels, 50 agents, N conversations of 10 messages each. Measures, through
the real HTTP stack, the first page of each inbox view, a conversation's latest 50 messages and
search, at a small and a large size served side by side and timed in turns (the ratio shows how
cost grows with data, whatever the machine's load does meanwhile), and checks that a list costs
the same number of queries whatever its page size.

Baseline: the cheapest request the same server answers (GET /api/v1/me): what any request costs
before the inbox's own work."""

from __future__ import annotations

import importlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx

from .common import Database, Result, free_port, percentile, start, stop, wait_http
from .payloads import TEXTS

AGENTS = 50
CHANNELS = 5
PER_CONVERSATION = 10


SETUP = """
import django, os
os.environ['DJANGO_SETTINGS_MODULE'] = 'madoguchi.settings'
django.setup()
from madoguchi.actions.channels import do_create_channel
from madoguchi.actions.users import do_create_token, do_create_user
from madoguchi.models import User
for n in range(1, {channels} + 1):
    do_create_channel(None, kind='whatsapp', name=f'Shop {{n}}', business_handle=f'10{{n}}',
                      account_handle=f'20{{n}}', api_base='http://127.0.0.1:9',
                      secrets={{'access_token': 't', 'app_secret': 's', 'verify_token': 'v'}})
# agent1 logs in (console search); the others own conversations only: no password to hash
first = do_create_user(None, 'agent1', role='agent', password='bench-password-123')[0]
others = [User(username=f'agent{{n}}', role='agent') for n in range(2, {agents} + 1)]
for user in others:
    user.set_unusable_password()
User.objects.bulk_create(others)
print(do_create_token(None, first, 'bench'))
"""


CONTACT_COLUMNS = ["id", "name", "owner_id", "created_at"]
IDENTITY_COLUMNS = ["id", "contact_id", "channel_id", "handle", "profile_name", "last_inbound_at"]
CONVERSATION_COLUMNS = [
    "id",
    "channel_id",
    "contact_id",
    "identity_id",
    "status",
    "assignee_id",
    "created_at",
    "last_message_at",
    "last_message_preview",
    "unread_count",
]
MESSAGE_COLUMNS = [
    "id",
    "conversation_id",
    "channel_id",
    "direction",
    "kind",
    "text",
    "author_id",
    "platform_message_id",
    "status",
    "data",
    "created_at",
    "reply_to_platform_id",
    "error_title",
    "error_details",
    "media_platform_id",
    "media_mime",
    "media_filename",
    "media_path",
    "media_state",
]
CHUNK = 10_000  # conversations per batch (100,000 messages)


def rows(conversations: int, sqlite: bool):
    """The generated rows, in batches of CHUNK conversations: (contacts, identities,
    conversations, messages). Deterministic (seeded); every message text is one of the bench
    TEXTS (English, Japanese, Spanish, Portuguese) followed by `` #<message id>``."""
    rng = random.Random(4)
    now = datetime.now(UTC)
    users = list(range(1, AGENTS + 1))

    def stamp(dt: datetime) -> str | datetime:
        return dt.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else dt

    message_id = 0
    for first in range(1, conversations + 1, CHUNK):
        contacts, identities, convs, messages = [], [], [], []
        for n in range(first, min(first + CHUNK, conversations + 1)):
            channel = (n % CHANNELS) + 1
            owner = rng.choice(users)
            contacts.append((n, f"Customer {n}", owner, stamp(now)))
            identities.append(
                (
                    n,
                    n,
                    channel,
                    f"81{n:010d}",
                    f"Customer {n}",
                    stamp(now - timedelta(hours=rng.randint(0, 48))),
                )
            )
            last = now - timedelta(minutes=n % 100000)
            status = "open" if rng.random() < 0.3 else "resolved"
            assignee = owner if rng.random() < 0.8 else None
            convs.append(
                (
                    n,
                    channel,
                    n,
                    n,
                    status,
                    assignee,
                    stamp(last - timedelta(days=1)),
                    stamp(last),
                    f"message {n}",
                    rng.randint(0, 3),
                )
            )
            for k in range(PER_CONVERSATION):
                message_id += 1
                inbound = k % 2 == 0
                messages.append(
                    (
                        message_id,
                        n,
                        channel,
                        "in" if inbound else "out",
                        "text",
                        f"{TEXTS[message_id % len(TEXTS)]} #{message_id}",
                        None if inbound else assignee,
                        f"wamid.b4.{message_id}",
                        "" if inbound else "read",
                        "{}",
                        stamp(last - timedelta(minutes=PER_CONVERSATION - k)),
                        *([""] * 8),
                    )
                )
        yield contacts, identities, convs, messages


TABLES = [
    ("madoguchi_contact", CONTACT_COLUMNS),
    ("madoguchi_contactidentity", IDENTITY_COLUMNS),
    ("madoguchi_conversation", CONVERSATION_COLUMNS),
    ("madoguchi_message", MESSAGE_COLUMNS),
]


def generate(db: Database, conversations: int) -> float:
    """Rows straight into the tables, in bulk (the ORM would take hours at this size): COPY on
    PostgreSQL, executemany in one transaction on SQLite. The message search index of migration
    0005 is dropped during the load and built once at the end, as a restore would do (3× faster
    than maintaining it row by row); it ends exactly as the migration leaves it. Returns the
    seconds taken."""
    began = time.monotonic()
    if db.kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(db.url.split("sqlite:///", 1)[1])
        conn.execute("PRAGMA cache_size = -262144")  # 256 MB: FTS merges stay in memory
        conn.execute("PRAGMA synchronous = OFF")
        search_index = importlib.import_module("madoguchi.migrations.0005_message_search")
        for sql in search_index.SQLITE_REMOVE:
            conn.execute(sql)
        for batch in rows(conversations, sqlite=True):
            for (table, columns), values in zip(TABLES, batch, strict=True):
                marks = ", ".join(["?"] * len(columns))
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values
                )
        for sql in search_index.SQLITE_INSTALL:  # ends with a rebuild of the index
            conn.execute(sql)
        conn.execute("ANALYZE")
        conn.commit()
        conn.close()
        return time.monotonic() - began

    import psycopg

    with psycopg.connect(db.url) as conn:
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'msg_text_trgm'"
        ).fetchone()
        conn.execute("DROP INDEX IF EXISTS msg_text_trgm")
        with conn.cursor() as cursor:
            for batch in rows(conversations, sqlite=False):
                for (table, columns), values in zip(TABLES, batch, strict=True):
                    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in values:
                            copy.write_row(row)
        for table, _ in TABLES:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT MAX(id) FROM {table}))"
            )
        conn.commit()
    with psycopg.connect(db.url, autocommit=True) as conn:
        if index:
            conn.execute("SET maintenance_work_mem = '256MB'")
            conn.execute(index[0])
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - began


def in_turns(requests: list[tuple[httpx.Client, str]], count: int) -> list[float]:
    """The p95 (ms) of each request, timed ``count`` times in turns: one of each per round, the
    order reversed every other round, so that a change of the machine's load (the sizes are
    served side by side) weighs on every request alike."""
    for client, path in requests:
        client.get(path).raise_for_status()  # warm
    samples: list[list[float]] = [[] for _ in requests]
    for round_ in range(count):
        order = list(enumerate(requests))
        for index, (client, path) in order if round_ % 2 == 0 else reversed(order):
            began = time.perf_counter()
            client.get(path).raise_for_status()
            samples[index].append((time.perf_counter() - began) * 1000)
    return [percentile(taken, 95) for taken in samples]


# Search terms (console search page): a contact name, a phrase in a quarter of all messages,
# one message, Japanese text in a quarter of all messages, and two characters (too short for
# the trigram index: the fallback).
SEARCHES = {
    "contact": "Customer 12",
    "common": "shipping update",
    "rare": "#{rare}",
    "japanese": "注文番号",
    "short": "注文",
}
VIEWS = ("mine", "unassigned", "all", "channel", "messages")


@dataclass
class Site:
    """A seeded database and a server on it: the API (by token) and the console (agent1)."""

    conversations: int
    env: dict[str, str]
    api: httpx.Client
    console: httpx.Client
    seconds_seeding: float
    paths: dict[str, str]  # the views

    def search(self, name: str) -> str:
        rare = self.conversations * PER_CONVERSATION // 2 + 7
        return f"/search/?{urlencode({'q': SEARCHES[name].format(rare=rare)})}"


@contextmanager
def site(kind: str, conversations: int) -> Iterator[Site]:
    db = Database(kind)
    try:
        db.migrate()
        env = db.env()
        token = (
            subprocess.run(
                [sys.executable, "-c", SETUP.format(channels=CHANNELS, agents=AGENTS)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        seeded = generate(db, conversations)
        port = free_port()
        server = start(
            [sys.executable, "-m", "madoguchi.cli", "serve", "--no-worker", "--port", str(port)],
            env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/login/")
            api = httpx.Client(
                base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            console = httpx.Client(base_url=base, timeout=30)
            console.get("/login/")
            console.post(
                "/login/",
                data={
                    "username": "agent1",
                    "password": "bench-password-123",
                    "csrfmiddlewaretoken": console.cookies["csrftoken"],
                },
                headers={"Referer": f"{base}/login/"},
            )
            some = api.get("/conversations?assignee=me&status=all").json()["items"][0]["id"]
            paths = {
                "mine": "/conversations?assignee=me",
                "unassigned": "/conversations?assignee=none",
                "all": "/conversations?status=all",
                "channel": "/conversations?channel=3",
                "messages": f"/conversations/{some}/messages?limit=50",
            }
            yield Site(conversations, env, api, console, seeded, paths)
        finally:
            stop(server)
    finally:
        db.drop()


def measure(low: Site, high: Site, samples: int) -> tuple[dict[str, float], dict[str, float]]:
    """The p95 of every request on both sizes, timed in turns (in_turns), and the rows of each
    view's first page."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    lo["baseline"], hi["baseline"] = in_turns([(low.api, "/me"), (high.api, "/me")], samples)
    for view in VIEWS:
        path_low, path_high = low.paths[view], high.paths[view]
        lo[f"rows {view}"] = len(low.api.get(path_low).json()["items"])
        hi[f"rows {view}"] = len(high.api.get(path_high).json()["items"])
        turns = [(low.api, path_low), (high.api, path_high)]
        # A first page the small database cannot fill (an agent's own open conversations: 4 or
        # 5 of 1,000) is also timed on the large one at the small page's size: growth with the
        # data, apart from the cost of rendering more rows.
        rows = int(lo[f"rows {view}"])
        if rows < hi[f"rows {view}"]:
            sized = f"{path_high.split('?limit=')[0]}{'&' if '?' in path_high else '?'}limit={rows}"
            turns.append((high.api, sized))
        timed = in_turns(turns, samples)
        lo[view], hi[view] = timed[0], timed[1]
        if len(timed) == 3:
            hi[f"{view} same rows"] = timed[2]
    for name in SEARCHES:
        turns = [(low.console, low.search(name)), (high.console, high.search(name))]
        lo[f"search {name}"], hi[f"search {name}"] = in_turns(turns, max(samples // 4, 15))
    return lo, hi


def query_counts_equal(env: dict[str, str]) -> bool:
    """The query count for a page of 5 and a page of 50 (no query per row): the conversation
    list and a conversation's messages."""
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='madoguchi.settings'; django.setup();"
        "from django.db import connection; from django.test.utils import CaptureQueriesContext;"
        "from madoguchi.models import User;"
        "from madoguchi.queries.conversations import access_conversation, history, list_conversations;"
        "from madoguchi.queries.serialize import message_json;"
        "u=User.objects.get(username='agent1');"
        "c=access_conversation(u, list_conversations(u, status='all', limit=1).items[0]['id']);\n"
        "def n(fn, limit):\n"
        "    with CaptureQueriesContext(connection) as q:\n"
        "        fn(limit)\n"
        "    return len(q.captured_queries)\n"
        "lists = lambda limit: list_conversations(u, status='all', limit=limit)\n"
        "thread = lambda limit: [message_json(m) for m in history(u, c, limit=limit)]\n"
        "print(n(lists, 5) == n(lists, 50) and n(thread, 5) == n(thread, 50))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().endswith("True")


def run(kind: str, quick: bool) -> list[Result]:
    small, large = (1_000, 10_000) if quick else (1_000, 100_000)
    samples = 60 if quick else 200
    # both sizes served side by side and timed in turns: the growth ratios compare requests
    # made in the same seconds
    with site(kind, small) as low_site, site(kind, large) as high_site:
        low, high = measure(low_site, high_site, samples)
        high["seconds_seeding"] = high_site.seconds_seeding
        high["queries_equal"] = float(query_counts_equal(high_site.env))
    limit = 20 if kind == "postgres" else 30
    label = f"B4 {kind} ({large * PER_CONVERSATION:,} msgs)"
    results = []
    for view in VIEWS:
        results.append(
            Result(
                label,
                f"p95 {view}",
                high[view],
                "ms",
                high["baseline"],
                f"≤ {limit} ms",
                high[view] <= limit,
            )
        )
        full = high[view] / low[view] if low[view] else float("nan")
        # The same ratio over each size's own /me p95: what is left of a change of load.
        to_me = low["baseline"] / high["baseline"] if high["baseline"] else 1.0
        rows_low, rows_high = int(low[f"rows {view}"]), int(high[f"rows {view}"])
        note = f"×{full * to_me:.1f} relative to /me"
        ratio = full
        if f"{view} same rows" in high:
            ratio = high[f"{view} same rows"] / low[view] if low[view] else float("nan")
            note = (
                f"first pages of {rows_low} and {rows_high} rows: ×{full:.1f}"
                f" (×{full * to_me:.1f} relative to /me); ×{ratio:.1f} at {rows_low} rows both"
            )
        results.append(
            Result(
                label,
                f"p95 {view} growth ×{large // small}",
                ratio,
                "×",
                None,
                "≤ 1.5",
                ratio <= 1.5,
                note,
            )
        )
    for name in SEARCHES:
        value = high[f"search {name}"]
        growth = value / low[f"search {name}"] if low[f"search {name}"] else float("nan")
        results.append(
            Result(
                label,
                f"p95 search {name}",
                value,
                "ms",
                high["baseline"],
                "≤ 200 ms",
                value <= 200,
                f"×{growth:.1f} from {small * PER_CONVERSATION:,} msgs",
            )
        )
    results.append(
        Result(
            label,
            "queries same for 5 and 50 rows (list, thread)",
            high["queries_equal"],
            "",
            None,
            "= 1",
            high["queries_equal"] == 1.0,
        )
    )
    results.append(
        Result(
            label,
            "seeding (bulk SQL)",
            high["seconds_seeding"],
            "s",
            None,
            "",
            None,
            f"{large:,} conversations, {large * PER_CONVERSATION:,} messages, search index built",
        )
    )
    return results


if __name__ == "__main__":
    for result in run(sys.argv[1], quick=True):
        print(result)
