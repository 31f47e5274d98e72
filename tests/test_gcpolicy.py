"""The garbage-collector policy of servers and workers (madoguchi.gcpolicy): what exists at
start-up and survivors of a full collection are frozen, and cyclic garbage among frozen objects
is still found by the periodic full walk."""

from __future__ import annotations

import gc
import weakref

import pytest

from madoguchi import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def garbage_cycle_frozen() -> weakref.ref[Node]:
    """A two-object cycle that survives a collection (so it is frozen) and is then dropped."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect()
    assert gc.get_freeze_count() > 0
    return weakref.ref(a)


@pytest.fixture
def cpython_policy():
    """No policy installed (a live server started by another test installs one in this
    process); the earlier state comes back afterwards."""
    before = gcpolicy._installed
    gcpolicy.uninstall()
    try:
        yield
    finally:
        gcpolicy.uninstall()
        if before is not None:
            gcpolicy.install(before.full_every)


@pytest.fixture
def policy(cpython_policy):
    gcpolicy.install(3600)
    return gcpolicy._installed


def test_survivors_of_a_full_collection_are_frozen(policy):
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not gc.get_objects(generation=2)  # the next full collection walks none of them


def test_a_frozen_cycle_waits_for_the_periodic_full_walk(policy):
    alive = garbage_cycle_frozen()
    gc.collect()
    assert alive() is not None  # frozen: not walked, not freed

    policy.last_full -= 3600  # the periodic walk is due
    gc.collect()
    assert alive() is None
    assert gc.get_freeze_count() > 0  # survivors frozen again


def test_uninstall_thaws_everything(policy):
    gc.collect()
    gcpolicy.uninstall()
    assert gc.get_freeze_count() == 0
    assert policy not in gc.callbacks


def test_zero_keeps_cpythons_policy(cpython_policy):
    gcpolicy.install(0)
    assert gcpolicy._installed is None
    gc.collect()
    assert gc.get_freeze_count() == 0


def test_what_exists_at_start_up_is_frozen(cpython_policy):
    gcpolicy.install(3600)
    assert gc.get_freeze_count() > 0  # before any collection


def test_the_worker_command_installs_the_policy(cpython_policy, monkeypatch):
    import argparse

    from madoguchi import cli
    from madoguchi.realtime import wakeup
    from madoguchi.worker import Worker

    installed = []
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setattr(wakeup, "listen", lambda stop: None)
    monkeypatch.setattr(
        Worker, "run_forever", lambda self, stop: installed.append(gcpolicy._installed)
    )
    cli.cmd_worker(argparse.Namespace())
    assert installed and installed[0] is not None
