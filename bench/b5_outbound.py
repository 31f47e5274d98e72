"""B5 outbound: 4 WhatsApp numbers, the simulator enforcing 80 messages/s on each (130429 beyond
it) and the pair limit (131056); `madoguchi worker` processes drain a queue of text messages to
many recipients while one of them is SIGKILLed (and restarted) five times.

Measured: the accepted-send rate per number (from the simulator's own log), its 130429 and
131056 answers, and exactly-once delivery: every queued message must end ``sent`` in the
database and appear exactly once in the simulator's log (no loss, no double).

Baseline, same run, same simulator process: a plain paced httpx loop (one thread per number, an
absolute 1/80 s schedule) sending the same number of messages to four more numbers with the same
limits: the best rate a sender can get from this simulator on this machine. It runs during the
setup, which can only lower it.

Setup (not timed): customers write through the simulator (signed webhooks to `madoguchi serve`,
applied by a worker), then a Django process claims every conversation and queues the messages
through the outbound action (``check_send_text``, the code behind ``POST .../messages``),
interleaved across recipients, committed in batches. The simulator sends its status webhooks
(``sent``, ``delivered``, ``read``: 3 per send, ~960/s at the limit), aggregated per number over
STATUS_BATCH_WINDOW as Meta does under load, to the server, which stays up during the drain;
the same workers apply them. A send whose worker was killed after the platform accepted it is
recorded from its ``sent`` receipt (``biz_opaque_callback_data``) instead of going twice. ``B5_STATUSES=0`` turns them off (the send path alone).

Run parts by hand: ``python -m bench.b5_outbound sim CONFIG PORT`` (the simulator),
``... queue PER_RECIPIENT`` (Django env), ``... baseline URL COUNT PNID...``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from .common import Database, Result, free_port, madoguchi_all, start, stop, wait_http

NUMBERS = int(os.environ.get("B5_NUMBERS", "4"))  # experiments: fewer numbers
MPS = 80
KILLS = 5
WABA_ID = "102290129340455"
APP_SECRET = "bench-b5-app-secret"
TOKEN = "bench-b5-token"
GRAPH = "v23.0"
# Leases of a killed worker's claimed jobs expire after this (the product default is 60 s; the
# scale-out tests use 6): the bench would otherwise mostly wait for leases.
LEASE_SECONDS = "10"
# An interrupted send waits this long for its ``sent`` receipt before it goes again, marked
# (the product waits 15 s for Meta's); the simulator sends its receipts within
# STATUS_BATCH_WINDOW, and the workers apply them within a second even under this load.
RECONCILE_SECONDS = "5"
STATUSES = os.environ.get("B5_STATUSES", "1") != "0"
DONE = "status IN ('sent', 'delivered', 'read')"
# Meta aggregates webhooks under load (A3: up to 1,000 updates per POST); at 320 sends/s the
# simulator does the same over this window (each message's statuses still in order).
STATUS_BATCH_WINDOW = float(os.environ.get("B5_STATUS_BATCH_WINDOW", "0.1"))


def pnid(n: int, *, baseline: bool = False) -> str:
    return f"10654035224{'9' if baseline else '2'}{n:03d}"


def customer(n: int, c: int) -> str:
    return f"8190{n:02d}{c:06d}"


# -- simulator process ----------------------------------------------------------------------


def serve_simulator(config_path: str, port: int) -> None:
    """The WhatsApp simulator in a process of its own (as a platform would be)."""
    import uvicorn

    from madoguchi.simulators.whatsapp import WhatsAppSimulator, _bind, _load_validators

    config = json.loads(Path(config_path).read_text())
    sim = WhatsAppSimulator(
        auto_statuses=config["auto_statuses"],
        status_batch_window=STATUS_BATCH_WINDOW,
        seed_templates=True,
    )
    for kwargs in config["numbers"]:
        sim.add_number(**kwargs)
    _load_validators()
    sock = _bind("127.0.0.1", port)
    server = uvicorn.Config(sim.app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(server).run(sockets=[sock])
    finally:
        sim.close()


# -- queueing through the outbound action (Django process) ----------------------------------


def queue_messages(per_recipient: int) -> None:
    """Claim every open conversation for aiko and queue ``per_recipient`` texts to each,
    round-robin over recipients (a queue mixing numbers and recipients, as a busy inbox has)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "madoguchi.settings")
    import django

    django.setup()
    from django.db import transaction

    from madoguchi.actions.conversations import check_claim
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.models import Conversation, User

    user = User.objects.get(username="aiko")
    conversations = list(Conversation.objects.select_related("identity", "channel").order_by("pk"))
    # interleave numbers: conversation k of number 0, 1, 2, 3, then k+1...
    by_channel: dict[int, list[Conversation]] = {}
    for conversation in conversations:
        by_channel.setdefault(conversation.channel_id, []).append(conversation)
    lists = list(by_channel.values())
    ordered = [c for group in zip(*lists, strict=False) for c in group]
    claimed = []
    for conversation in ordered:
        claimed.append(check_claim(user, conversation))
    queued = 0
    for i in range(per_recipient):
        with transaction.atomic():  # one commit per round: setup speed, same code path
            for conversation in claimed:
                check_send_text(user, conversation, f"b5:{conversation.pk}:{i} Your order ships.")
                queued += 1
    print(queued)


# -- the baseline sender --------------------------------------------------------------------


def paced_sender(url: str, count: int, number: str, recipients: list[str]) -> None:
    """Send ``count`` texts from ``number`` at exactly MPS on an absolute schedule."""
    interval = 1.0 / MPS
    body = {"messaging_product": "whatsapp", "type": "text"}
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15
    ) as client:
        t0 = time.monotonic()
        for k in range(count):
            due = t0 + k * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            to = recipients[k % len(recipients)]
            client.post(
                f"/{GRAPH}/{number}/messages",
                json={**body, "to": to, "text": {"body": f"base:{number}:{k} Your order ships."}},
            )


def baseline_main(url: str, count: int, numbers: list[str], recipients: list[str]) -> None:
    threads = [
        threading.Thread(target=paced_sender, args=(url, count, n, recipients)) for n in numbers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- measuring ------------------------------------------------------------------------------


def sim_get(url: str, path: str) -> Any:
    return httpx.get(f"{url}{path}", timeout=60).json()


def sustained_rate(times: list[float]) -> float:
    """Sends per second between the 5th and the 95th percentile send: start-up and the tail (a
    killed worker's leased jobs waiting for their lease) excluded, kills in the middle kept."""
    times = sorted(times)
    if len(times) < 20:
        return 0.0
    lo, hi = int(len(times) * 0.05), int(len(times) * 0.95)
    return (hi - lo) / max(times[hi] - times[lo], 1e-9)


def db_rows(db: Database, sql: str) -> list[tuple]:
    if db.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(db.url.split("sqlite:///", 1)[1], timeout=30) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(db.url) as conn:
        return conn.execute(sql).fetchall()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


def run(kind: str, quick: bool) -> list[Result]:
    recipients, per_recipient = (100, 12) if quick else (250, 40)
    workers_count = 2
    total = NUMBERS * recipients * per_recipient
    db = Database(kind)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate()
        env = db.env(
            MADOGUCHI_JOB_LEASE_SECONDS=LEASE_SECONDS,
            MADOGUCHI_SEND_RECONCILE_SECONDS=RECONCILE_SECONDS,
            MADOGUCHI_WORKER_POLL_SECONDS="0.2",
        )
        port = free_port()
        server_url = f"http://127.0.0.1:{port}"

        # the simulator, with our 4 numbers and 4 for the baseline
        config = {
            "auto_statuses": STATUSES,
            "numbers": [
                {
                    "phone_number_id": pnid(n, baseline=b),
                    "waba_id": WABA_ID,
                    "display_phone_number": f"1555078{'9' if b else '3'}{n:03d}",
                    "access_token": TOKEN,
                    "app_secret": APP_SECRET,
                    "webhook_url": None,
                    "mps": MPS,
                }
                for b in (False, True)
                for n in range(NUMBERS)
            ],
        }
        sim_url = f"http://127.0.0.1:{free_port()}"
        start_simulator(db, config, sim_url, procs)  # `channel add` checks the credentials
        added = madoguchi_all(
            [
                [
                    "channel", "add", "whatsapp", "--name", f"B5 {n}",
                    "--phone-number-id", pnid(n), "--waba-id", WABA_ID,
                    "--access-token", TOKEN, "--app-secret", APP_SECRET, "--verify-token", "v",
                    "--api-base", sim_url, "--mps", str(MPS), "--json",
                ]
                for n in range(NUMBERS)
            ]
            + [["user", "add", "aiko", "--role", "agent", "--password", "bench-pw-1234"]],
            env,
        )  # fmt: skip
        webhook_paths = [json.loads(out)["webhook_path"] for out in added[:NUMBERS]]
        # the numbers post their webhooks to our server
        for n in range(NUMBERS):
            config["numbers"][n]["webhook_url"] = f"{server_url}{webhook_paths[n]}"
        stop(procs.pop())
        start_simulator(db, config, sim_url, procs)

        # baseline: the same count per number, paced at the limit, to 4 other numbers; it runs
        # during the setup below (customers writing, the messages queued: processes busy with
        # the database): sharing the machine can only lower the baseline, never raise our figure
        count = recipients * per_recipient
        base_numbers = [pnid(n, baseline=True) for n in range(NUMBERS)]
        before = sim_get(sim_url, "/_sim/stats")["errors_by_code"]
        baseline = subprocess.Popen(
            [
                sys.executable, "-m", "bench.b5_outbound", "baseline", sim_url, str(count),
                ",".join(base_numbers),
                ",".join(customer(n, c) for n in range(NUMBERS) for c in range(recipients)),
            ],
            cwd=str(Path(__file__).resolve().parents[1]),
        )  # fmt: skip
        procs.append(baseline)

        # customers write (windows open on both sides); a worker applies the webhooks
        server = start(
            [sys.executable, "-m", "madoguchi.cli", "serve", "--no-worker", "--port", str(port)],
            env,
        )
        procs.append(server)
        setup_worker = start([sys.executable, "-m", "madoguchi.cli", "worker"], env)
        procs.append(setup_worker)
        wait_http(f"{server_url}/login/")
        with httpx.Client(base_url=sim_url, timeout=30) as client:
            for n in range(NUMBERS):
                for c in range(recipients):
                    client.post(
                        "/_sim/customer_message",
                        json={
                            "phone_number_id": pnid(n),
                            "wa_id": customer(n, c),
                            "name": f"Customer {c}",
                            "message": "Where is my order?",
                        },
                    ).raise_for_status()
        expected = NUMBERS * recipients
        wait_until(
            lambda: (
                db_rows(db, "SELECT COUNT(*) FROM madoguchi_conversation")[0][0] >= expected
                and not db_rows(
                    db, "SELECT COUNT(*) FROM madoguchi_rawevent WHERE processed_at IS NULL"
                )[0][0]
            ),
            120,
            "inbound setup",
        )
        wait_until(
            lambda: not db_rows(db, "SELECT COUNT(*) FROM madoguchi_job")[0][0],
            60,
            "template sync",
        )
        stop(setup_worker)
        procs.remove(setup_worker)
        if not STATUSES:
            stop(server)
            procs.remove(server)

        queued = subprocess.run(
            [sys.executable, "-m", "bench.b5_outbound", "queue", str(per_recipient)],
            env={**env, "DJANGO_SETTINGS_MODULE": "madoguchi.settings"},
            capture_output=True,
            text=True,
            check=False,
        )
        if queued.returncode != 0:
            raise RuntimeError(f"queueing failed: {queued.stderr[-2000:]}")
        assert int(queued.stdout.split()[-1]) == total, queued.stdout
        if baseline.wait() != 0:
            raise RuntimeError(f"the baseline sender exited with {baseline.returncode}")
        procs.remove(baseline)
        after_base = sim_get(sim_url, "/_sim/stats")["errors_by_code"]

        # ours: workers drain the queue; one of them is SIGKILLed and restarted KILLS times
        worker_cmd = [sys.executable, "-m", "madoguchi.cli", "worker"]
        logs = db.dir / "workers.log"

        def start_worker() -> subprocess.Popen[bytes]:
            with logs.open("ab") as log:
                return subprocess.Popen(worker_cmd, env=env, stdout=log, stderr=log)

        profile = os.environ.get("B5_PROFILE")  # a path: py-spy one worker, no kills
        if profile:
            workers_count, kills_wanted = int(os.environ.get("B5_WORKERS", "1")), 0
        else:
            workers_count = int(os.environ.get("B5_WORKERS", workers_count))
            kills_wanted = int(os.environ.get("B5_KILLS", KILLS))
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = [start_worker() for _ in range(workers_count)]
        procs.extend(workers)
        if profile:
            spy = [".venv/bin/py-spy", "record", "--pid", str(workers[0].pid), "-d", "15"]
            spy += ["-r", "250", "-f", "raw", "-o", profile]
            procs.append(start(spy, dict(os.environ)))
        expected_seconds = count / MPS
        started = time.monotonic()
        kills = 0

        def sent_count() -> int:
            return db_rows(db, f"SELECT COUNT(*) FROM madoguchi_message WHERE {DONE}")[0][0]

        while kills < kills_wanted:
            # spread the kills over the run by progress (whatever the machine's speed), polling
            # at an odd period so they land anywhere in the job cycle
            threshold = total * (kills + 1) / (kills_wanted + 1)
            wait_until(
                lambda threshold=threshold: sent_count() >= threshold,
                120 + 6 * expected_seconds,
                "progress before a kill",
                0.0537,
            )
            victim = workers[kills % workers_count]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            procs.remove(victim)
            workers[kills % workers_count] = start_worker()
            procs.append(workers[kills % workers_count])
            kills += 1
        try:
            wait_until(lambda: sent_count() >= total, 120 + 6 * expected_seconds, "draining", 0.5)
        except RuntimeError as exc:
            tail = logs.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{exc}: {sent_count()} of {total} sent; workers said: {tail}"
            ) from None
        drained = time.monotonic() - started
        # anything sent twice late would show now: wait for every job (an interrupted send waits
        # for its receipt before it is sent again) and every stored receipt to be done
        wait_until(
            lambda: (
                not db_rows(db, "SELECT COUNT(*) FROM madoguchi_job")[0][0]
                and not db_rows(
                    db, "SELECT COUNT(*) FROM madoguchi_rawevent WHERE processed_at IS NULL"
                )[0][0]
            ),
            120,
            "the last jobs and receipts",
            0.5,
        )
        time.sleep(1.0)
        for w in workers:
            stop(w)
            procs.remove(w)

        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, all waited for
        cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
        after = sim_get(sim_url, "/_sim/stats")["errors_by_code"]
        sent = sim_get(sim_url, "/_sim/sent")["data"]
        results = measure(
            kind, db, sent, before, after_base, after, base_numbers, total, drained, kills
        )
        load = os.getloadavg()[0]
        results.append(
            Result(
                f"B5 {kind}",
                "worker CPU per send",
                1000 * cpu / total,
                "ms",
                note=f"{workers_count} workers; load average {load:.1f} on {os.cpu_count()} cores",
            )
        )
        return results
    finally:
        for p in reversed(procs):
            stop(p)
        db.drop()


def start_simulator(
    db: Database, config: dict[str, Any], url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    config_path = db.dir / "sim.json"
    config_path.write_text(json.dumps(config))
    port = url.rsplit(":", 1)[1]
    procs.append(
        start(
            [sys.executable, "-m", "bench.b5_outbound", "sim", str(config_path), port],
            {**os.environ},
        )
    )
    wait_http(f"{url}/_sim/stats")


def code_delta(after: dict[str, int], before: dict[str, int], code: int) -> int:
    return int(after.get(str(code), 0)) - int(before.get(str(code), 0))


def measure(
    kind: str,
    db: Database,
    sent: list[dict[str, Any]],
    before: dict[str, int],
    after_base: dict[str, int],
    after: dict[str, int],
    base_numbers: list[str],
    total: int,
    drained: float,
    kills: int,
) -> list[Result]:
    ours_times: dict[str, list[float]] = {pnid(n): [] for n in range(NUMBERS)}
    base_times: dict[str, list[float]] = {n: [] for n in base_numbers}
    tags: Counter[str] = Counter()
    wamid_of: dict[str, set[str]] = {}
    times_of: dict[str, list[float]] = {}
    for item in sent:
        number, text = item["phone_number_id"], item["body"].get("text", {}).get("body", "")
        if number in ours_times and text.startswith("b5:"):
            ours_times[number].append(item["time"])
            tag = text.split(" ", 1)[0]
            tags[tag] += 1
            wamid_of.setdefault(tag, set()).add(item["id"])
            times_of.setdefault(tag, []).append(item["time"])
        elif number in base_times:
            base_times[number].append(item["time"])
    rows = db_rows(
        db,
        "SELECT text, status, platform_message_id FROM madoguchi_message "
        "WHERE direction = 'out' AND kind = 'text'",
    )
    flagged = {
        text.split(" ", 1)[0]
        for (text,) in db_rows(
            db,
            "SELECT text FROM madoguchi_message WHERE CAST(data AS TEXT) LIKE '%maybe_sent_twice%'",
        )
    }
    unflagged = sum(1 for tag, n in tags.items() if n > 1 and tag not in flagged)
    from_receipt = db_rows(
        db,
        "SELECT COUNT(*) FROM madoguchi_message "
        "WHERE CAST(data AS TEXT) LIKE '%platform_id_from_receipt%'",
    )[0][0]
    not_sent = sum(1 for _t, status, _p in rows if status not in ("sent", "delivered", "read"))
    lost = sum(1 for text, _s, _p in rows if tags[text.split(" ", 1)[0]] == 0)
    doubled = sum(1 for n in tags.values() if n > 1)
    # how long after the first copy the second went: about the lease (10 s) means a killed
    # worker's job came back after the platform had accepted the send
    gaps = sorted(max(t) - min(t) for tag, t in times_of.items() if tags[tag] > 1)
    mismatched = sum(
        1 for text, _s, p in rows if p and p not in wamid_of.get(text.split(" ", 1)[0], set())
    )
    ours = [sustained_rate(t) for t in ours_times.values()]
    base = [sustained_rate(t) for t in base_times.values()]
    throttled = code_delta(after, after_base, 130429)
    pair = code_delta(after, after_base, 131056)
    base_throttled = code_delta(after_base, before, 130429)
    exact = lost == 0 and doubled == 0 and not_sent == 0 and mismatched == 0 and len(rows) == total
    name = f"B5 {kind}"
    return [
        Result(
            name,
            "sends per number (slowest of 4)",
            min(ours),
            "msg/s",
            min(base),
            f"≥ {0.95 * MPS:.0f} msg/s",
            min(ours) >= 0.95 * MPS,
            "per number: " + ", ".join(f"{r:.1f}" for r in ours),
        ),
        Result(
            name,
            "130429 answers",
            throttled,
            "",
            base_throttled,
            "0",
            throttled == 0,
        ),
        Result(name, "131056 answers", pair, "", None, "0", pair == 0),
        Result(
            name,
            f"lost + doubled ({kills} SIGKILLs)",
            lost + doubled,
            "msgs",
            None,
            "0",
            exact,
            f"{total} queued, {len(rows)} stored, {lost} lost, {doubled} sent twice, "
            f"{not_sent} not sent, {mismatched} with a platform id the simulator never gave; "
            f"{len(flagged)} marked maybe_sent_twice, {unflagged} doubles not marked; "
            f"{from_receipt} platform ids taken from a receipt; "
            f"drained in {drained:.1f} s"
            + (f"; second copies {', '.join(f'{g:.1f}' for g in gaps)} s later" if gaps else ""),
        ),
    ]


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sim":
        serve_simulator(sys.argv[2], int(sys.argv[3]))
    elif mode == "queue":
        queue_messages(int(sys.argv[2]))
    elif mode == "baseline":
        baseline_main(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5].split(","))
    else:
        raise SystemExit(f"unknown mode {mode}")
