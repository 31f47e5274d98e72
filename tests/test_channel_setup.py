"""Channel set-up (issue #5 item 6): ``madoguchi channel add <kind>`` and the console's channel
page, with the credentials checked against each platform's simulator (or a real IMAP server and
an SMTP sink) before anything is saved, and secrets never shown again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from madoguchi.models import AuditEvent, Channel, RawEvent
from tests.helpers import (
    ACCESS_TOKEN,
    APP_SECRET,
    DISPLAY_NUMBER,
    PHONE_NUMBER_ID,
    WABA_ID,
    LiveServer,
    free_port,
)
from tests.test_outbound import database_url

VIBER_TOKEN = "4453b6ac12345678-e02c5f12174805f9-setup-token"
VIBER_BOT = "pa:5672893745648271931"
PAGE_ID = "106893398573421"
PAGE_TOKEN = "EAAGm0PX4ZCpsBAsetuppagetoken"
PAGE_SECRET = "messenger-app-secret-setup-0123"
APP_ID = 1840793126084211
MAILBOX = "support@example.test"
IMAP_PASSWORD = "imap-secret-setup"
SMTP_PASSWORD = "smtp-secret-setup"
PASSWORD = "a-long-test-password-1"


def madoguchi(*args: str, public_url: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url()}
    if public_url:
        env["MADOGUCHI_PUBLIC_URL"] = public_url
    return subprocess.run(
        [sys.executable, "-m", "madoguchi.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode != 0, result.stdout
    assert f"[{code}]" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def audit_text() -> str:
    return json.dumps([e.data for e in AuditEvent.objects.all()])


# -- simulators -------------------------------------------------------------------------------


@pytest.fixture
def viber() -> Iterator[Any]:
    from madoguchi.simulators.viber import ViberSimulator

    simulator = ViberSimulator(retry_delays=(0.05,), webhook_timeout=5.0)
    running = simulator.serve_in_thread()
    simulator.add_account(VIBER_TOKEN, account_id=VIBER_BOT, name="Osaka Shop", uri="osakashop")
    simulator.url = running.url
    yield simulator
    running.stop()
    simulator.close()


@pytest.fixture
def messenger() -> Iterator[Any]:
    from madoguchi.simulators.messenger import MessengerSimulator

    simulator = MessengerSimulator(retry_delays=(0.05,))
    running = simulator.serve_in_thread()
    simulator.add_page(
        page_id=PAGE_ID,
        access_token=PAGE_TOKEN,
        app_secret=PAGE_SECRET,
        app_id=APP_ID,
        webhook_url=None,
        name="Osaka Shop Page",
    )
    simulator.url = running.url
    yield simulator
    running.stop()
    simulator.close()


@pytest.fixture
def whatsapp() -> Iterator[Any]:
    from madoguchi.simulators.whatsapp import WhatsAppSimulator

    simulator = WhatsAppSimulator(retry_delays=(0.05,))
    running = simulator.serve_in_thread()
    simulator.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number=DISPLAY_NUMBER,
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=None,
        verified_name="Osaka Shop",
    )
    simulator.url = running.url
    yield simulator
    running.stop()
    simulator.close()


def viber_args(token: str = VIBER_TOKEN, api_base: str = "") -> list[str]:
    return ["channel", "add", "viber", "--name", "Viber", "--auth-token", token,
            "--api-base", api_base, "--json"]  # fmt: skip


def messenger_args(api_base: str, token: str = PAGE_TOKEN, *extra: str) -> list[str]:
    return ["channel", "add", "messenger", "--name", "Page", "--page-id", PAGE_ID,
            "--page-access-token", token, "--app-secret", PAGE_SECRET,
            "--verify-token", "verify-me", "--api-base", api_base, "--json", *extra]  # fmt: skip


def whatsapp_args(api_base: str, token: str = ACCESS_TOKEN, *extra: str) -> list[str]:
    return ["channel", "add", "whatsapp", "--name", "Shop", "--phone-number-id",
            PHONE_NUMBER_ID, "--waba-id", WABA_ID, "--access-token", token,
            "--app-secret", APP_SECRET, "--verify-token", "v", "--api-base", api_base,
            "--json", *extra]  # fmt: skip


# -- command line -----------------------------------------------------------------------------


def test_it_sets_up_viber_and_registers_the_webhook_which_viber_probes(
    server: LiveServer, viber: Any
) -> None:
    data = succeeded(madoguchi(*viber_args(api_base=viber.url), public_url=server.url))
    channel = Channel.objects.get(pk=data["id"])
    assert data["webhook_path"] == f"/webhooks/viber/{channel.pk}"
    assert channel.is_active
    assert channel.business_handle == VIBER_BOT  # the bot id get_account_info gave
    assert channel.display_handle == "Osaka Shop"
    assert channel.secrets == {"auth_token": VIBER_TOKEN}
    # set_webhook was answered only after its signed probe got 200 from the live server.
    assert viber.webhook_of(VIBER_TOKEN) == f"{server.url}{channel.webhook_path}"
    probe = RawEvent.objects.get(channel_id=channel.pk)
    assert json.loads(bytes(probe.body))["event"] == "webhook"
    assert VIBER_TOKEN not in audit_text()
    assert AuditEvent.objects.get(action="channel.created").data["secrets_set"] == ["auth_token"]


def test_it_refuses_a_wrong_viber_token_and_saves_nothing(server: LiveServer, viber: Any) -> None:
    stderr = refused(
        madoguchi(*viber_args("wrong-token", viber.url), public_url=server.url),
        "invalid_credentials",
    )
    assert "wrong-token" not in stderr
    assert not Channel.objects.exists()
    assert not AuditEvent.objects.exists()


def test_it_reports_an_unreachable_platform_and_saves_nothing(server: LiveServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    refused(madoguchi(*viber_args(api_base=dead), public_url=server.url), "platform_unreachable")
    assert not Channel.objects.exists()


def test_a_malformed_api_base_is_refused_before_any_call(transactional_db: None) -> None:
    refused(madoguchi(*viber_args(api_base="http://[::1")), "invalid_field")
    assert not Channel.objects.exists()


def test_viber_cannot_be_set_up_offline(server: LiveServer) -> None:
    result = madoguchi(*viber_args(api_base=server.url), "--no-check")
    assert result.returncode == 2 and "--no-check" in result.stderr  # argparse: no such flag
    assert not Channel.objects.exists()


def test_it_deletes_a_viber_channel_whose_webhook_viber_cannot_reach(
    transactional_db: None, viber: Any, settings: Any
) -> None:
    from madoguchi.actions.channels import check_create_channel
    from madoguchi.errors import Invalid

    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens: the probe fails
    with pytest.raises(Invalid) as refusal:
        check_create_channel(
            None,
            kind="viber",
            name="Viber",
            values={"auth_token": VIBER_TOKEN, "api_base": viber.url},
        )
    assert refusal.value.code == "webhook_registration_failed"
    assert settings.PUBLIC_URL in refusal.value.message
    assert not Channel.objects.exists()
    assert [e.action for e in AuditEvent.objects.order_by("id")] == [
        "channel.created",
        "channel.discarded",
    ]
    assert viber.webhook_of(VIBER_TOKEN) == ""


def test_it_sets_up_messenger_with_the_page_name_and_our_app_id(
    server: LiveServer, messenger: Any
) -> None:
    result = madoguchi(*messenger_args(messenger.url, PAGE_TOKEN, "--human-agent-tag"))
    data = succeeded(result)
    channel = Channel.objects.get(pk=data["id"])
    assert data["webhook_path"] == f"/webhooks/messenger/{channel.pk}"
    assert channel.business_handle == PAGE_ID
    assert channel.display_handle == "Osaka Shop Page"
    assert channel.options == {"human_agent_tag": True, "app_id": str(APP_ID)}
    assert set(channel.secrets) == {"page_access_token", "app_secret", "verify_token"}
    assert PAGE_TOKEN not in result.stdout and PAGE_SECRET not in result.stdout
    assert PAGE_TOKEN not in audit_text() and PAGE_SECRET not in audit_text()
    # Meta's dashboard handshake works with what was saved.
    messenger.add_page(
        page_id=PAGE_ID,
        access_token=PAGE_TOKEN,
        app_secret=PAGE_SECRET,
        app_id=APP_ID,
        webhook_url=f"{server.url}{channel.webhook_path}",
    )
    assert messenger.verify_subscription(PAGE_ID, "verify-me")


def test_it_refuses_a_wrong_page_token(transactional_db: None, messenger: Any) -> None:
    stderr = refused(madoguchi(*messenger_args(messenger.url, "EAAwrong")), "invalid_credentials")
    assert "EAAwrong" not in stderr
    assert not Channel.objects.exists()


def test_whatsapp_is_checked_and_learns_the_display_number(
    transactional_db: None, whatsapp: Any
) -> None:
    refused(madoguchi(*whatsapp_args(whatsapp.url, "bad-token")), "invalid_credentials")
    assert not Channel.objects.exists()
    data = succeeded(madoguchi(*whatsapp_args(whatsapp.url)))
    channel = Channel.objects.get(pk=data["id"])
    assert channel.display_handle == DISPLAY_NUMBER
    assert data["webhook_path"] == f"/webhooks/whatsapp/{channel.pk}"


def test_whatsapp_can_be_saved_offline_with_no_check(transactional_db: None) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    stderr = refused(madoguchi(*whatsapp_args(dead)), "platform_unreachable")
    assert "--no-check" in stderr
    data = succeeded(madoguchi(*whatsapp_args(dead, ACCESS_TOKEN, "--no-check")))
    assert Channel.objects.get(pk=data["id"]).api_base == dead


# -- email ------------------------------------------------------------------------------------


@pytest.fixture
def mail_servers() -> Iterator[tuple[Any, Any]]:
    from tests.email_servers import Dovecot, SmtpSink, dovecot_available

    reason = dovecot_available()
    if reason:
        pytest.skip(reason)
    imap = Dovecot({MAILBOX: IMAP_PASSWORD})
    imap.start()
    smtp = SmtpSink(login=MAILBOX, password=SMTP_PASSWORD)
    smtp.start()
    yield imap, smtp
    smtp.stop()
    imap.cleanup()


def email_args(imap: Any, smtp: Any, imap_password: str = IMAP_PASSWORD) -> list[str]:
    return ["channel", "add", "email", "--name", "Support mail", "--address", MAILBOX,
            "--imap-host", "127.0.0.1", "--imap-port", str(imap.port), "--imap-user", MAILBOX,
            "--imap-password", imap_password, "--smtp-host", "127.0.0.1",
            "--smtp-port", str(smtp.port), "--smtp-user", MAILBOX,
            "--smtp-password", SMTP_PASSWORD, "--security", "none", "--json"]  # fmt: skip


def test_it_sets_up_email_after_logging_in_to_both_servers(
    transactional_db: None, mail_servers: tuple[Any, Any]
) -> None:
    imap, smtp = mail_servers
    refused(madoguchi(*email_args(imap, smtp, "wrong-password")), "invalid_credentials")
    assert not Channel.objects.exists()
    result = madoguchi(*email_args(imap, smtp))
    data = succeeded(result)
    assert "webhook_path" not in data  # polled over IMAP: no webhook
    channel = Channel.objects.get(pk=data["id"])
    assert channel.business_handle == MAILBOX
    assert channel.options == {
        "imap_host": "127.0.0.1",
        "imap_port": imap.port,
        "imap_username": MAILBOX,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_username": MAILBOX,
        "imap_security": "none",
        "smtp_security": "none",
        "imap_start": "new",  # a new mailbox is read from now on
    }
    assert channel.secrets == {"imap_password": IMAP_PASSWORD, "smtp_password": SMTP_PASSWORD}
    assert IMAP_PASSWORD not in result.stdout + audit_text()


# -- console ----------------------------------------------------------------------------------


def console(username: str) -> Client:
    client = Client()
    response = client.post("/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.content
    return client


def test_only_admins_see_or_change_channels(users: dict[str, Any], channel: Any) -> None:
    for name in ("aiko", "sora", "wendy"):
        client = console(name)
        assert client.get("/channels/").status_code == 403
        assert client.post("/channels/add/viber", {"name": "x"}).status_code == 403
        assert client.post(f"/channels/{channel.pk}/edit", {"name": "x"}).status_code == 403
        assert client.post(f"/channels/{channel.pk}/active", {"active": "0"}).status_code == 403
    channel.refresh_from_db()
    assert channel.name == "Shop WhatsApp" and channel.is_active
    assert Channel.objects.count() == 1


def test_the_channel_page_shows_webhook_urls_and_never_secrets(
    users: dict[str, Any], channel: Any, settings: Any
) -> None:
    settings.PUBLIC_URL = "https://inbox.example.com"
    page = console("admin").get("/channels/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f"https://inbox.example.com/webhooks/whatsapp/{channel.pk}" in html
    for secret in channel.secrets.values():
        assert secret not in html
    japanese = console("admin").get("/channels/", HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert "チャネル" in japanese


def test_an_admin_adds_viber_in_the_console_and_the_probe_reaches_the_server(
    server: LiveServer, users: dict[str, Any], viber: Any, settings: Any
) -> None:
    settings.PUBLIC_URL = server.url
    admin = console("admin")
    response = admin.post(
        "/channels/add/viber",
        {
            "name": "Viber shop",
            "auth_token": VIBER_TOKEN,
            "api_base": viber.url,
            "visibility": "all",
            "welcome_text": "ようこそ",
        },
    )
    channel = Channel.objects.get(kind="viber")
    assert (
        response.status_code == 302 and response["Location"] == f"/channels/#channel-{channel.pk}"
    )
    assert channel.options == {"welcome_text": "ようこそ"}
    assert viber.webhook_of(VIBER_TOKEN) == f"{server.url}{channel.webhook_path}"
    html = admin.get("/channels/").content.decode()
    assert VIBER_TOKEN not in html and "Viber shop" in html


def test_a_refused_console_form_says_why_and_saves_nothing(
    server: LiveServer, users: dict[str, Any], messenger: Any
) -> None:
    response = console("admin").post(
        "/channels/add/messenger",
        {
            "name": "Page",
            "page_id": PAGE_ID,
            "page_access_token": "EAAwrong",
            "app_secret": PAGE_SECRET,
            "verify_token": "v",
            "api_base": messenger.url,
            "visibility": "all",
        },
    )
    html = response.content.decode()
    assert response.status_code == 422
    assert "EAAwrong" not in html and PAGE_SECRET not in html
    assert "Page" in html  # the other fields are kept for another try
    assert not Channel.objects.exists()


def test_an_admin_edits_a_channel_and_replaces_a_secret_only_when_it_works(
    server: LiveServer, users: dict[str, Any], messenger: Any
) -> None:
    from madoguchi.actions.channels import check_create_channel

    channel = check_create_channel(
        None,
        kind="messenger",
        name="Page",
        values={
            "page_id": PAGE_ID,
            "page_access_token": PAGE_TOKEN,
            "app_secret": PAGE_SECRET,
            "verify_token": "v",
            "api_base": messenger.url,
        },
    )
    admin = console("admin")
    form = {"name": "Osaka page", "visibility": "assigned_only", "api_base": messenger.url,
            "human_agent_tag": "on", "page_access_token": "", "app_secret": "",
            "verify_token": ""}  # fmt: skip
    assert admin.post(f"/channels/{channel.pk}/edit", form).status_code == 302
    channel.refresh_from_db()
    assert (channel.name, channel.visibility) == ("Osaka page", "assigned_only")
    assert channel.options["human_agent_tag"] is True
    assert channel.secrets["page_access_token"] == PAGE_TOKEN  # empty: kept

    refused_edit = admin.post(
        f"/channels/{channel.pk}/edit", {**form, "page_access_token": "EAAwrong"}
    )
    assert refused_edit.status_code == 422
    channel.refresh_from_db()
    assert channel.secrets["page_access_token"] == PAGE_TOKEN

    messenger.add_page(page_id=PAGE_ID, access_token="EAAnew", app_secret=PAGE_SECRET,
                       app_id=APP_ID, webhook_url=None)  # fmt: skip
    replaced = admin.post(f"/channels/{channel.pk}/edit", {**form, "page_access_token": "EAAnew"})
    assert replaced.status_code == 302
    channel.refresh_from_db()
    assert channel.secrets["page_access_token"] == "EAAnew"
    updated = AuditEvent.objects.filter(action="channel.updated").order_by("id").last()
    assert updated.data["secrets_replaced"] == ["page_access_token"]
    assert "EAAnew" not in audit_text() and "EAAnew" not in admin.get("/channels/").content.decode()


def test_an_admin_deactivates_a_channel_and_its_webhooks_are_refused(
    server: LiveServer, users: dict[str, Any], channel: Any
) -> None:
    import httpx

    admin = console("admin")
    assert admin.post(f"/channels/{channel.pk}/active", {"active": "0"}).status_code == 302
    channel.refresh_from_db()
    assert not channel.is_active
    assert httpx.post(f"{server.url}{channel.webhook_path}", content=b"{}").status_code == 404
    assert admin.post(f"/channels/{channel.pk}/active", {"active": "1"}).status_code == 302
    channel.refresh_from_db()
    assert channel.is_active


def test_reactivating_a_viber_channel_registers_its_webhook_again(
    server: LiveServer, users: dict[str, Any], viber: Any, settings: Any
) -> None:
    from madoguchi.actions.channels import check_create_channel
    from madoguchi.providers.registry import provider_for

    settings.PUBLIC_URL = server.url
    channel = check_create_channel(
        None, kind="viber", name="Viber", values={"auth_token": VIBER_TOKEN, "api_base": viber.url}
    )
    admin = console("admin")
    assert admin.post(f"/channels/{channel.pk}/active", {"active": "0"}).status_code == 302
    provider_for(channel).register_webhook("")  # meanwhile the bot's webhook was removed
    assert viber.webhook_of(VIBER_TOKEN) == ""
    assert admin.post(f"/channels/{channel.pk}/active", {"active": "1"}).status_code == 302
    channel.refresh_from_db()
    assert channel.is_active
    assert viber.webhook_of(VIBER_TOKEN) == f"{server.url}{channel.webhook_path}"
