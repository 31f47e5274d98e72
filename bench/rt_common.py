"""Shared pieces of the real-time benchmarks (B3, B6): bulk setup, server and relay processes,
WebSocket client processes, an open-loop webhook sender, memory readings."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import ROOT, Database, free_port, wait_http


def setup(db: Database, spec: dict[str, Any]) -> dict[str, Any]:
    spec_path, out_path = db.dir / "rt-spec.json", db.dir / "rt-setup.json"
    spec_path.write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, "-m", "bench.rt_setup", str(spec_path), str(out_path)],
        env=db.env(),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench setup failed: {result.stderr[-2000:]}")
    return json.loads(out_path.read_text())


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """A server-side process with the open-files limit raised to its hard limit."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        args,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        cwd=str(ROOT),
        preexec_fn=_raise_nofile,
    )


def serve(env: dict[str, str], port: int, *, no_worker: bool = False) -> list[str]:
    args = [sys.executable, "-m", "madoguchi.cli", "serve", "--port", str(port)]
    return args + (["--no-worker"] if no_worker else [])


def relay(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.rt_relay:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def relay_env(db: Database, tokens: list[str], user_ids: list[int]) -> dict[str, str]:
    path = db.dir / "relay-tokens.json"
    path.write_text(json.dumps(dict(zip(tokens, user_ids, strict=True))))
    return db.env(RELAY_TOKENS=str(path))


def wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process {process.args} exited with {process.returncode}")
        try:
            wait_http(url, timeout=1)
            return
        except RuntimeError:
            continue
    raise RuntimeError(f"{url} did not answer")


class Clients:
    """WebSocket clients split over ``processes`` processes (bench/rt_clients.py)."""

    def __init__(
        self,
        directory: Path,
        base_url: str,
        sockets: list[tuple[int, str]],
        processes: int = 1,
        name: str = "clients",
    ) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        self.opened = self.failed = 0
        for n in range(processes):
            config = {
                "url": base_url.replace("http", "ws", 1) + "/ws/",
                "origin": base_url,
                "sockets": sockets[n::processes],
            }
            cfg, out = directory / f"{name}-{n}.json", directory / f"{name}-{n}-out.json"
            cfg.write_text(json.dumps(config))
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.rt_clients", str(cfg), str(out)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(ROOT),
                preexec_fn=_raise_nofile,
            )
            self.procs.append((proc, out))

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for proc, _out in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            if not line.startswith("ready"):
                self.stop()
                raise RuntimeError(f"clients not ready: {line!r}")
            _, opened, failed = line.split()
            self.opened += int(opened)
            self.failed += int(failed)

    def stop(self) -> list[list[Any]]:
        records: list[list[Any]] = []
        for proc, _out in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, out in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if out.exists():
                records.extend(json.loads(out.read_text()))
        return records


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (all their threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _send(
    requests: list[tuple[str, bytes, dict[str, str]]], rate: float
) -> tuple[list[float], list[str]]:
    """Open loop: request n leaves at start + n / rate whatever the answers. Returns each
    request's send time (time.monotonic) and the failures (a non-200 answer or an exception such
    as a timeout), which the caller reports."""
    import httpx

    sent = [0.0] * len(requests)
    failures: list[str] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(n: int) -> None:
            url, body, headers = requests[n]
            sent[n] = time.monotonic()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__} after {time.monotonic() - sent[n]:.0f} s")
                return
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")

        start = time.monotonic() + 0.05
        tasks = []
        for n in range(len(requests)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return sent, failures


def send(
    requests: list[tuple[str, bytes, dict[str, str]]], rate: float
) -> tuple[list[float], list[str]]:
    return asyncio.run(_send(requests, rate))


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def machine_load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


__all__ = ["Clients", "free_port", "rss_kb", "send", "setup"]
