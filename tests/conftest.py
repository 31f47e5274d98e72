"""Shared fixtures: named users, a live ASGI server, the WhatsApp simulator, a worker."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MADOGUCHI_RETRY_BASE_SECONDS", "0.05")
os.environ.setdefault("MADOGUCHI_JOB_LEASE_SECONDS", "30")
os.environ.setdefault("MADOGUCHI_PAIR_RETRY_BASE_SECONDS", "0.05")

pytest_plugins = ["tests.helpers", "tests.channels_helpers"]


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    """CI must not pass with tests silently skipped (e.g. a database that was not reachable)."""
    if os.environ.get("MADOGUCHI_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        print(f"\n{skipped} tests were skipped: failing (MADOGUCHI_FAIL_ON_SKIP=1)")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """A PostgreSQL test database of this run's own: two runs on one server (developers working
    side by side) must never drop each other's database."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        database.setdefault("TEST", {})["NAME"] = f"test_madoguchi_{os.getpid()}"
