"""Browser tests: Playwright drives Debian's Chromium against the real server, the WhatsApp
simulator and a worker thread, exactly as an agent would use the console."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PASSWORD = "a-long-test-password-1"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain blocking calls all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def running_worker(server: Any) -> Iterator[None]:
    """A worker thread, as `madoguchi serve` runs one without Redis."""
    from django.db import connections

    from madoguchi.realtime import wakeup
    from madoguchi.worker import Worker

    stop = threading.Event()

    def run() -> None:
        Worker(name="browser-test-worker").run_forever(stop)
        connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    wakeup.local_event.set()
    thread.join(timeout=15)


class Agent:
    """One person in one browser context (own cookies, own WebSocket)."""

    def __init__(self, browser: Any, base_url: str, username: str, **context: Any) -> None:
        self.context = browser.new_context(base_url=base_url, **context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.username = username
        self.page.goto("/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(lambda url: "/login/" not in url)

    def open_inbox(self, view: str = "all") -> None:
        self.page.goto(f"/?view={view}")
        self.page.wait_for_selector("#live-state.on")

    def open_conversation(self, conversation_id: int) -> None:
        self.page.goto(f"/c/{conversation_id}")
        self.page.wait_for_selector("#live-state.on")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    def close(self) -> None:
        assert self.errors == [], self.errors
        self.context.close()


@pytest.fixture
def agent(browser: Any, server: Any, users: Any, running_worker: None) -> Iterator[Any]:
    opened: list[Agent] = []

    def make(username: str, **context: Any) -> Agent:
        person = Agent(browser, server.url, username, **context)
        opened.append(person)
        return person

    yield make
    for person in opened:
        person.close()
