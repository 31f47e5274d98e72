"""B1 ingest: signed WhatsApp webhooks answered with 200 only after the raw body is committed.
Baseline: bench/baseline_app.py (signature check + one INSERT) on the same database, same server
settings. Load: wrk in a separate process, cycling through pre-signed bodies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .common import Database, Result, create_channel, free_port, start, stop, wait_http
from .payloads import APP_SECRET, ingest_mix, sign

LUA = """
local bodies = {}
local sigs = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("^(%S+) (.*)$")
    n = n + 1
    sigs[n] = sig
    bodies[n] = body
  end
end
request = function()
  i = (i % n) + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sigs[i]}, bodies[i])
end
"""


def write_requests(directory: Path, count: int) -> tuple[Path, Path]:
    data = directory / "requests.txt"
    with data.open("w") as handle:
        for body in ingest_mix(count):
            handle.write(f"{sign(body)} {body.decode()}\n")
    script = directory / "post.lua"
    script.write_text(LUA)
    return script, data


def wrk(url: str, script: Path, data: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            str(data),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": ms("50%"),
        "p99": ms("99%"),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def uvicorn_cmd(app: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "on",
    ]


def run(kind: str, quick: bool) -> list[Result]:
    if shutil.which("wrk") is None:
        raise RuntimeError("B1 drives its load with wrk: install it (Debian: apt-get install wrk)")
    seconds, warm, connections = (2, 1, 32) if quick else (15, 2, 64)
    db = Database(kind)
    try:
        db.migrate()
        channel = create_channel(db)
        script, data = write_requests(db.dir, 3000)

        port = free_port()
        base = start(uvicorn_cmd("bench.baseline_app:app", port), db.env(APP_SECRET=APP_SECRET))
        try:
            wait_http(f"http://127.0.0.1:{port}/")
            wrk(f"http://127.0.0.1:{port}/", script, data, warm, connections)  # warm-up
            baseline = wrk(f"http://127.0.0.1:{port}/", script, data, seconds, connections)
        finally:
            stop(base)

        port = free_port()
        server = start(
            [sys.executable, "-m", "madoguchi.cli", "serve", "--no-worker", "--port", str(port)],
            db.env(),
        )
        try:
            url = f"http://127.0.0.1:{port}{channel['webhook_path']}"
            wait_http(f"http://127.0.0.1:{port}/login/")
            wrk(url, script, data, warm, connections)
            ours = wrk(url, script, data, seconds, connections)
        finally:
            stop(server)
        ok_ratio = ours["rps"] >= 0.5 * baseline["rps"]
        note = "" if ours["non2xx"] == 0 else f"{int(ours['non2xx'])} non-2xx answers"
        return [
            Result(
                f"B1 {kind}",
                "webhooks acknowledged",
                ours["rps"],
                "req/s",
                baseline["rps"],
                "≥ 0.5 × baseline",
                ok_ratio and ours["non2xx"] == 0,
                note,
            ),
            Result(
                f"B1 {kind}",
                "p99 latency",
                ours["p99"],
                "ms",
                baseline["p99"],
                "≤ 250 ms",
                ours["p99"] <= 250,
            ),
            Result(f"B1 {kind}", "p50 latency", ours["p50"], "ms", baseline["p50"]),
        ]
    finally:
        db.drop()
