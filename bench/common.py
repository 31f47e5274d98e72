"""Shared pieces of the benchmark harness: databases, processes, load, results."""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@dataclasses.dataclass
class Result:
    bench: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    def line(self) -> str:
        ratio = f"{self.ratio:.2f}" if self.ratio is not None else "–"
        base = f"{self.baseline:,.1f}" if self.baseline is not None else "–"
        verdict = {True: "met", False: "MISSED", None: ""}[self.ok]
        return (
            f"| {self.bench} | {self.name} | {self.value:,.1f} {self.unit} | {base} | {ratio} | "
            f"{self.target} | {verdict} | {self.note} |"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


_NUMBERING = itertools.count()


class Database:
    """A fresh database for one benchmark run: a SQLite file, or a new PostgreSQL database."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix="madoguchi-bench-"))
        if kind == "sqlite":
            self.url = f"sqlite:///{self.dir / 'bench.sqlite3'}"
        else:
            self.name = f"madoguchi_bench_{os.getpid()}_{int(time.time())}_{next(_NUMBERING)}"
            self.admin(f'CREATE DATABASE "{self.name}"')
            base = PG_ADMIN_URL.rsplit("/", 1)[0]
            self.url = f"{base}/{self.name}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(
            DATABASE_URL=self.url,
            MADOGUCHI_DATA_DIR=str(self.dir),
            MADOGUCHI_SECRET_KEY="bench-secret-key-bench-secret-key-0123456789",
            MADOGUCHI_LOG_LEVEL="WARNING",
        )
        env.update(extra)
        return env

    def migrate(self) -> None:
        """The schema, copied from a database migrated once per harness run (the benchmarks
        all start from the same one; migrating each took about a second)."""
        template = migrated_template(self.kind)
        if self.kind == "sqlite":
            shutil.copyfile(
                template.url.split("sqlite:///", 1)[1], self.url.split("sqlite:///", 1)[1]
            )
        else:
            self.admin(f'DROP DATABASE "{self.name}"')
            self.admin(f'CREATE DATABASE "{self.name}" TEMPLATE "{template.name}"')

    def drop(self) -> None:
        if self.kind == "postgres":
            self.admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        shutil.rmtree(self.dir, ignore_errors=True)


_TEMPLATES: dict[str, Database] = {}


def migrated_template(kind: str) -> Database:
    if kind not in _TEMPLATES:
        template = Database(kind)
        atexit.register(template.drop)
        madoguchi("migrate", env=template.env())
        _TEMPLATES[kind] = template
    return _TEMPLATES[kind]


def madoguchi(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "madoguchi.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"madoguchi {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def madoguchi_all(commands: list[list[str]], env: dict[str, str]) -> list[str]:
    """Several independent CLI commands at once (setup: each one mostly starts Python)."""
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "madoguchi.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    outputs = []
    for args, process in zip(commands, running, strict=True):
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"madoguchi {' '.join(args)} failed: {err[-2000:]}")
        outputs.append(out)
    return outputs


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT)
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def append_results(results: list[Result], mode: str, notes: list[str]) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "",
        f"## {stamp} · commit {git_commit()} · {mode}",
        "",
        f"Machine: {machine()}",
        "",
        "| bench | measure | value | baseline | ratio | target | verdict | note |",
        "|---|---|---|---|---|---|---|---|",
        *[r.line() for r in results],
        "",
        *[f"- {n}" for n in notes],
    ]
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by `python -m bench`; newest last. Each figure is"
            " measured against a baseline run on the same machine in the same run.\n"
        )
    with RESULTS.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def print_results(results: list[Result]) -> None:
    for r in results:
        print(r.line(), flush=True)


def create_channel(db: Database) -> dict[str, Any]:
    """A WhatsApp channel for the benchmark payloads (its API base points at nothing)."""
    from .payloads import APP_SECRET, PHONE_NUMBER_ID, WABA_ID

    out = madoguchi(
        "channel",
        "add",
        "whatsapp",
        "--name",
        "Bench",
        "--phone-number-id",
        PHONE_NUMBER_ID,
        "--waba-id",
        WABA_ID,
        "--access-token",
        "t",
        "--app-secret",
        APP_SECRET,
        "--verify-token",
        "v",
        "--api-base",
        "http://127.0.0.1:9",
        "--no-check",
        "--json",
        env=db.env(),
    )
    return json.loads(out)
