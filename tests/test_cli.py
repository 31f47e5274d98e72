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
