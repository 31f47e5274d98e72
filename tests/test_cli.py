"""The madoguchi command (SPEC §4), run as a real subprocess against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from madoguchi.models import ApiToken, Channel, User
from tests.test_outbound import database_url


def madoguchi(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "madoguchi.cli", *args],
        env={**os.environ, "DATABASE_URL": database_url()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def cli_db(transactional_db):
    return None


def test_user_add_creates_a_user_with_a_role_and_team(cli_db):
    madoguchi(
        "user",
        "add",
        "kenji",
        "--role",
        "agent",
        "--password",
        "a-long-password-99",
        "--team",
        "Sales",
    )
    user = User.objects.get(username="kenji")
    assert user.role == "agent"
    assert [t.name for t in user.teams.all()] == ["Sales"]
    assert user.password.startswith("argon2")  # the subprocess hashes as production does


def test_user_add_refuses_an_unknown_role(cli_db):
    result = madoguchi("user", "add", "x", "--role", "boss", ok=False)
    assert result.returncode != 0


def test_token_create_prints_the_token_alone(cli_db):
    madoguchi("user", "add", "kenji", "--role", "agent", "--password", "a-long-password-99")
    out = madoguchi("token", "create", "kenji").stdout
    token = out.strip()
    assert out.count("\n") == 1 and token.startswith("mdg_")
    assert ApiToken.objects.get().user.username == "kenji"
    assert token not in ApiToken.objects.get().digest  # only a digest is stored


def test_channel_add_whatsapp_prints_json_with_the_webhook_path(cli_db):
    out = madoguchi(
        "channel",
        "add",
        "whatsapp",
        "--name",
        "Osaka shop",
        "--phone-number-id",
        "1065",
        "--waba-id",
        "1022",
        "--access-token",
        "EAAG-secret",
        "--app-secret",
        "s3cret",
        "--verify-token",
        "v",
        "--api-base",
        "http://127.0.0.1:9",
        "--no-check",  # offline: nothing listens there (tests/test_channel_setup.py checks)
        "--json",
    ).stdout
    data = json.loads(out)
    channel = Channel.objects.get(pk=data["id"])
    assert data["webhook_path"] == f"/webhooks/whatsapp/{channel.pk}"
    assert channel.api_base == "http://127.0.0.1:9"
    assert "EAAG-secret" not in out and "s3cret" not in out


def test_an_outdated_database_is_reported_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "madoguchi.cli", "user", "add", "x", "--role", "agent"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/empty.sqlite3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "madoguchi migrate" in result.stderr


def test_the_demo_runs_serves_logins_and_stops_cleanly_on_ctrl_c(tmp_path):
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "madoguchi.cli", "demo", "--port", str(port)],
        env={
            **os.environ,
            "MADOGUCHI_DATA_DIR": str(tmp_path),
            "DATABASE_URL": "postgres://x@127.0.0.1:1/nope",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/login/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.3)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        form = client.get("/login/")
        csrf = client.cookies["csrftoken"]
        response = client.post(
            "/login/",
            data={"username": "aiko", "password": "madoguchi-demo", "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"http://127.0.0.1:{port}/login/"},
        )
        assert form.status_code == 200 and response.status_code == 302
        assert (tmp_path / "madoguchi.sqlite3").exists()  # embedded SQLite, not DATABASE_URL
        # Simulated customers write on all four channels (email through the IMAP simulator
        # and the worker's receiver): the agent's inbox shows each kind.
        kinds: set[str] = set()
        deadline = time.monotonic() + 120
        while kinds != {"whatsapp", "viber", "messenger", "email"}:
            assert time.monotonic() < deadline, f"only {sorted(kinds)} after two minutes"
            time.sleep(1)
            page = client.get("/api/v1/conversations", params={"status": "all", "limit": 200})
            assert page.status_code == 200, page.text
            kinds = {item["channel"]["kind"] for item in page.json()["items"]}
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Logins" in output and "aiko" in output
    assert "Email (IMAP) simulator: imap://127.0.0.1:" in output
    assert "Traceback" not in output
