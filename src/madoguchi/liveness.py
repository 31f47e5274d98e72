"""Who holds a claim, and whether that process is still alive.

A claim (a job's or a stored body's lease) carries the name of the worker that holds it. When
that worker is killed, its claims wait for their lease to run out (a minute by default), and
with them every later send to the same recipients. A worker can tell for certain that another
is gone only when both run on the same kernel in the same PID namespace, so a worker's name
starts with its pid, the start time of its process (pids are reused) and a short hash of the
kernel's boot id and the PID namespace; then comes a counter (several workers may run in one
process) and, after ``@``, the host name for people reading it. Claims held elsewhere, or named
the old way, are never judged: they wait for their lease.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
from functools import cache

_counter = itertools.count(1)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


@cache
def place() -> str:
    """The kernel and PID namespace this process runs in; empty where /proc cannot tell (no
    /proc, or a /proc of another PID namespace than this process's own)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return ""
        namespaces = [os.readlink("/proc/self/ns/pid")]
        if os.path.exists("/proc/self/ns/time"):  # start times are shifted per time namespace
            namespaces.append(os.readlink("/proc/self/ns/time"))
    except OSError:
        return ""
    if not boot:
        return ""
    return hashlib.sha256("|".join([boot.strip(), *namespaces]).encode()).hexdigest()[:8]


def process_state(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, None if there is none."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the
    # last ")"; the start time is field 22 of the line, the 20th after the name.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def worker_name() -> str:
    """A new worker's name: unique among live workers, and judgeable by ``is_gone``."""
    pid = os.getpid()
    state = process_state(pid)
    # without our own start time the name must never be judged: another worker would find
    # any start time but "0" and take this live worker for a dead one
    where = place() if state else ""
    start = state[1] if state else "0"
    return f"{pid}.{start}.{where or 'x'}.{next(_counter)}@{socket.gethostname()}"[:64]


def is_gone(name: str) -> bool:
    """True only when the process that took a claim under ``name`` has certainly ended: it ran
    here (same kernel and PID namespace) and its pid now names no process, a zombie, or a
    process started at another time. ``name`` may carry a claim prefix ("3~name")."""
    head = name.rpartition("~")[2].partition("@")[0]
    parts = head.split(".")
    if len(parts) != 4 or not parts[0].isdigit() or not place() or parts[2] != place():
        return False
    pid, start = int(parts[0]), parts[1]
    if start == "0":
        return False
    state = process_state(pid)
    if state is None:
        # no readable /proc entry: gone only if the kernel says there is no such process (a
        # /proc mounted with hidepid hides other users' live processes)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    status, started = state
    return status in ("Z", "X") or started != start
