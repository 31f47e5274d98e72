"""Claims of killed workers are freed at once, and only theirs (madoguchi.liveness)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from madoguchi import liveness
from madoguchi.models import Job, RawEvent
from madoguchi.worker import Worker

pytestmark = pytest.mark.skipif(not liveness.place(), reason="needs Linux /proc")

NAME_OF_CHILD = "from madoguchi import liveness; print(liveness.worker_name(), flush=True); input()"


@pytest.fixture
def child():
    """A live process that named itself the way a worker does."""
    process = subprocess.Popen(
        [sys.executable, "-c", NAME_OF_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    name = process.stdout.readline().strip()
    yield process, name
    if process.poll() is None:
        process.kill()
        process.wait()


def test_a_live_worker_is_not_gone(child):
    _process, name = child
    assert not liveness.is_gone(name)
    assert not liveness.is_gone(liveness.worker_name())  # this very process


def test_a_killed_worker_is_gone_before_and_after_it_is_reaped(child):
    process, name = child
    process.send_signal(signal.SIGKILL)
    for _ in range(500):  # the kernel finishes the kill a moment later
        state = liveness.process_state(process.pid)
        if state is None or state[0] in ("Z", "X"):
            break
        time.sleep(0.01)
    assert liveness.is_gone(name)  # a zombie: its parent has not waited for it
    process.wait()
    assert liveness.is_gone(name)
    assert liveness.is_gone(f"7~{name}")  # as a stored body's claim token


def test_a_reused_pid_does_not_keep_a_dead_workers_claims():
    pid, start, place, rest = liveness.worker_name().split(".", 3)
    assert liveness.is_gone(f"{pid}.{int(start) - 1}.{place}.{rest}")


def test_workers_elsewhere_or_named_otherwise_are_never_judged(child):
    process, name = child
    pid, start, _place, rest = name.split(".", 3)
    process.kill()
    process.wait()
    assert not liveness.is_gone(f"{pid}.{start}.00000000.{rest}")  # another machine
    assert not liveness.is_gone(f"host:{pid}:1")  # a name from before
    assert not liveness.is_gone("test-worker")


def test_the_claims_of_a_killed_worker_are_released_and_only_theirs(db, child):
    process, dead = child
    process.kill()
    process.wait()
    alive = liveness.worker_name()
    until = timezone.now() + timedelta(minutes=10)
    now = timezone.now()
    jobs = {
        name: Job.objects.create(
            kind="sync_templates", run_at=now, lease_until=until, claimed_by=name, attempts=1
        )
        for name in (dead, alive, "elsewhere:1:2")
    }
    bodies = {
        name: RawEvent.objects.create(
            channel_id=1, body=b"{}", received_at=now, lease_until=until, claimed_by=f"3~{name}"
        )
        for name in (dead, alive)
    }
    done = RawEvent.objects.create(
        channel_id=1,
        body=b"{}",
        received_at=now,
        processed_at=now,
        lease_until=until,
        claimed_by=f"4~{dead}",
    )

    assert Worker(name="test-worker").release_orphaned_claims() == 2

    assert Job.objects.get(pk=jobs[dead].pk).lease_until is None
    assert Job.objects.get(pk=jobs[alive].pk).lease_until == until
    assert Job.objects.get(pk=jobs["elsewhere:1:2"].pk).lease_until == until
    assert RawEvent.objects.get(pk=bodies[dead].pk).lease_until is None
    assert RawEvent.objects.get(pk=bodies[alive].pk).lease_until == until
    assert RawEvent.objects.get(pk=done.pk).lease_until == until  # processed: not a claim


def test_a_worker_names_itself_so_it_can_be_judged():
    name = Worker().name
    assert name.startswith(f"{os.getpid()}.")
    assert not liveness.is_gone(name)


def test_a_process_hidden_from_proc_is_not_taken_for_dead(child, monkeypatch):
    """/proc mounted with hidepid shows no entry for another user's live process."""
    _process, name = child
    monkeypatch.setattr(liveness, "process_state", lambda pid: None)
    assert not liveness.is_gone(name)  # os.kill(pid, 0) finds it


def test_a_name_without_a_start_time_is_never_judged(child, monkeypatch):
    process, name = child
    pid, _start, place, rest = name.split(".", 3)
    process.kill()
    process.wait()
    assert not liveness.is_gone(f"{pid}.0.{place}.{rest}")
    monkeypatch.setattr(liveness, "process_state", lambda pid: None)
    assert ".x." in liveness.worker_name()  # its own start time unreadable: not judgeable
