"""The Viber provider's own logic, without the network: signatures on real header names, the
probe, the welcome response, handles, media URLs and hosts. Its calls to the platform are
tested against the simulator in tests/simulators/test_viber_simulator.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from madoguchi.errors import Invalid
from madoguchi.providers.base import ChannelConfig, PlatformError, SendError, SubscriptionUpdate
from madoguchi.providers.viber import (
    MEDIA_HOST_REFUSED,
    MEDIA_URL_MISSING,
    NOT_SENDABLE,
    ViberProvider,
)
from madoguchi.providers.viber_wire import ViberPayloadError, signature

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "viber"
TOKEN = "4453b6ac12345678-e02c5f12174805f9-daec1cbd0f0e6b2b"
BOT = "pa:5727430493459823123"


def provider(api_base: str = "", **options: Any) -> ViberProvider:
    return ViberProvider(
        ChannelConfig(
            id=7,
            kind="viber",
            business_handle=BOT,
            api_base=api_base,
            secrets={"auth_token": TOKEN},
            options=options,
        )
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def test_it_declares_vibers_rules() -> None:
    caps = ViberProvider.capabilities
    assert (caps.has_templates, caps.window_hours, caps.requires_subscription) == (
        False,
        None,
        True,
    )
    assert (caps.max_text_length, caps.caption_kinds, caps.has_webhooks) == (
        7000,
        frozenset({"image"}),
        True,
    )
    assert ViberProvider.kind == "viber"


def test_it_checks_the_signature_header_over_the_raw_body() -> None:
    body = fixture("message_text")
    good = {"x-viber-content-signature": signature(body, TOKEN)}
    assert provider().verify_signature(good, body)
    assert not provider().verify_signature(good, body + b" ")
    assert not provider().verify_signature({}, body)
    assert not provider().verify_signature(
        {"x-viber-content-signature": signature(body, "another-token")}, body
    )
    assert not provider().verify_signature(
        {"x-hub-signature-256": good["x-viber-content-signature"]}, body
    )


def test_a_channel_without_a_token_accepts_no_signature() -> None:
    tokenless = ViberProvider(ChannelConfig(id=1, kind="viber", business_handle=BOT))
    body = b'{"event":"webhook","timestamp":1}'
    assert not tokenless.verify_signature({"x-viber-content-signature": signature(body, "")}, body)


def test_the_probe_passes_the_precheck_and_yields_nothing() -> None:
    probe = fixture("webhook")
    provider().precheck_webhook(probe)
    assert provider().parse_webhook(probe) == []
    assert provider().webhook_response(probe) is None


def test_the_precheck_refuses_what_is_not_a_callback() -> None:
    with pytest.raises(ViberPayloadError):
        provider().precheck_webhook(b'{"object":"whatsapp_business_account","entry":[]}')


def test_there_is_no_get_handshake() -> None:
    assert provider().handshake({"hub.mode": "subscribe"})[0] == 405


def test_events_carry_the_channels_bot_id() -> None:
    events = provider().parse_webhook(fixture("subscribed"))
    assert isinstance(events[0], SubscriptionUpdate) and events[0].business_handle == BOT


def test_it_answers_a_conversation_start_with_the_welcome_message() -> None:
    welcoming = provider(welcome_text="ようこそ! How can we help?", sender_name="Madoguchi Shop")
    answer = welcoming.webhook_response(fixture("conversation_started"))
    assert answer is not None
    assert json.loads(answer) == {
        "type": "text",
        "text": "ようこそ! How can we help?",
        "sender": {"name": "Madoguchi Shop"},
        "tracking_data": "welcome",
    }
    assert "ようこそ".encode() in answer  # UTF-8, not escaped
    assert welcoming.webhook_response(fixture("conversation_started_subscribed")) is not None
    for other in ("message_text", "subscribed", "delivered", "webhook"):
        assert welcoming.webhook_response(fixture(other)) is None


@pytest.mark.parametrize("text", [None, "", "   ", "x" * 7001])
def test_it_sends_no_welcome_without_a_usable_text(text: str | None) -> None:
    options = {} if text is None else {"welcome_text": text}
    assert provider(**options).webhook_response(fixture("conversation_started")) is None


def test_the_sender_comes_from_the_options() -> None:
    assert provider().sender() == {"name": "Madoguchi"}
    assert provider(
        sender_name="A very long shop name that goes on", sender_avatar="https://a/b.png"
    ).sender() == {
        "name": "A very long shop name that g",
        "avatar": "https://a/b.png",
    }


def test_it_takes_viber_ids_as_handles() -> None:
    assert (
        ViberProvider.normalize_handle(" 3SQNc4FPUQmysaM/AQEhXg== ") == "3SQNc4FPUQmysaM/AQEhXg=="
    )
    for bad in ("+81 90 1234 5678", "", "not an id!"):
        with pytest.raises(Invalid) as caught:
            ViberProvider.normalize_handle(bad)
        assert caught.value.code == "invalid_viber_id"


def test_media_is_sent_by_a_public_url_under_the_configured_base() -> None:
    viber = provider(media_base_url="https://files.example.com/m/")
    assert viber.media_url("outbound/2026/a b+ü.jpg") == (
        "https://files.example.com/m/outbound/2026/a%20b%2B%C3%BC.jpg"
    )
    with pytest.raises(SendError) as caught:
        provider().media_url("outbound/a.jpg")
    assert caught.value.permanent and caught.value.error.code == MEDIA_URL_MISSING
    assert "media URL" in ViberProvider.explain_error(caught.value.error)


def test_a_file_too_large_for_viber_is_refused_before_the_call(
    settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    (tmp_path / "big.jpg").write_bytes(b"\xff" * (1024 * 1024 + 1))
    viber = provider(api_base="http://127.0.0.1:9", media_base_url="https://files.example.com")
    with pytest.raises(SendError) as caught:
        viber.send_media("01234567890A=", "image", "big.jpg", "image/jpeg")
    assert caught.value.permanent and caught.value.error.code == NOT_SENDABLE
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 10)
    with pytest.raises(SendError) as caught:
        viber.send_media("01234567890A=", "video", "clip.mp4", "video/mp4", caption="no")
    assert caught.value.error.code == NOT_SENDABLE


@pytest.mark.parametrize(
    ("api_base", "options", "url", "allowed"),
    [
        ("", {}, "https://dl-media.viber.com/1/share/a.jpg", True),
        ("", {}, "https://viber.com/stickers/1.png", True),
        ("", {}, "http://dl-media.viber.com/a.jpg", False),  # not https
        ("", {}, "https://dl-media.viber.com.evil.example/a.jpg", False),
        ("", {}, "https://evilviber.com/a.jpg", False),
        ("", {}, "https://169.254.169.254/latest/meta-data", False),
        ("", {"media_hosts": ["cdn.example.net"]}, "https://cdn.example.net/a.jpg", True),
        ("http://127.0.0.1:8123", {}, "http://127.0.0.1:8123/media/1", True),
        ("http://127.0.0.1:8123", {}, "http://127.0.0.1:8124/media/1", False),
        ("http://127.0.0.1:8123", {}, "https://dl-media.viber.com/a.jpg", False),
        ("", {}, "file:///etc/passwd", False),
    ],
)
def test_media_is_fetched_only_from_allowed_hosts(
    api_base: str, options: dict[str, Any], url: str, allowed: bool
) -> None:
    viber = provider(api_base, **options)
    if allowed:
        viber.check_media_host(url)
    else:
        with pytest.raises(SendError) as caught:
            viber.check_media_host(url)
        assert caught.value.permanent and caught.value.error.code == MEDIA_HOST_REFUSED


def test_it_explains_errors_for_agents() -> None:
    assert "not subscribed" in ViberProvider.explain_error(PlatformError(code=6))
    assert "retried" in ViberProvider.explain_error(PlatformError(code=12))
    assert ViberProvider.explain_error(PlatformError(code=77, details="odd")) == "odd"
