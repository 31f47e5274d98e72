"""Tests of the pure Messenger wire module and of the provider's request checks (no network,
no database). Fixtures (``tests/fixtures/messenger/``) are built from PROTOCOLS.md §C's
examples and cover every event type the provider reads."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madoguchi.errors import Invalid
from madoguchi.providers.base import (
    ChannelConfig,
    InboundMessage,
    OutboundEcho,
    PlatformError,
    ReceiptWatermark,
    StatusUpdate,
    as_json,
)
from madoguchi.providers.messenger import MessengerProvider
from madoguchi.providers.messenger_wire import (
    LOCAL_ERROR_CODE,
    MAX_TEXT_LENGTH,
    UnsupportedTag,
    WebhookPayloadError,
    attachment_body,
    check_envelope,
    classify_error,
    is_unavailable_error,
    is_window_error,
    messaging_fields,
    network_error,
    parse_webhook,
    parse_webhook_report,
    readable_reason,
    sender_action_body,
    text_body,
    timeout_error,
    unix_ms_to_utc,
    upload_form,
    utc_to_unix_ms,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "messenger"
PAGE_ID = "106893398573421"
PSID = "5127349273929834"
OWN_APP_ID = "1840793126084211"
APP_SECRET = "messenger-app-secret-0123"
VERIFY_TOKEN = "messenger-verify-token"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def parse_fixture(name: str, own_app_id: str = OWN_APP_ID) -> list[Any]:
    result = parse_webhook_report(fixture_bytes(name), own_app_id=own_app_id)
    assert result.skipped == []
    return result.events


def only_message(name: str) -> InboundMessage:
    events = parse_fixture(name)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, InboundMessage)
    assert (event.business_handle, event.sender_handle) == (PAGE_ID, PSID)
    assert event.text.strip()
    return event


def ms(value: int) -> datetime:
    return unix_ms_to_utc(value)


def provider(**options: Any) -> MessengerProvider:
    return MessengerProvider(
        ChannelConfig(
            id=1,
            kind="messenger",
            business_handle=PAGE_ID,
            secrets={
                "page_access_token": "EAAG-page-token",
                "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN,
            },
            options=options,
        )
    )


def envelope(*events: Any) -> bytes:
    body = {"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": list(events)}]}
    return json.dumps(body).encode()


# ---------------------------------------------------------------------------------------------
# Every fixture
# ---------------------------------------------------------------------------------------------

ALL_FIXTURES = sorted(p.stem for p in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_it_reads_every_fixture_into_json_safe_events(name: str) -> None:
    result = parse_webhook_report(fixture_bytes(name), own_app_id=OWN_APP_ID)
    for event in result.events:
        json.dumps(as_json(event))
        if isinstance(event, InboundMessage | OutboundEcho):
            assert event.text.strip()
            assert event.timestamp.tzinfo is not None
    check_envelope(fixture_bytes(name))


def test_it_reads_a_text_message() -> None:
    event = only_message("text")
    assert event.platform_message_id == "mid.1457764197618:41d102a3e1ae206a38"
    assert event.kind == "text"
    assert event.text == "hello, world!"
    assert event.timestamp == datetime(2016, 3, 23, 0, 25, 52, 478000, tzinfo=UTC)
    assert event.sender_name == ""
    assert event.media is None and event.reply_to_platform_id is None


def test_it_keeps_the_quick_reply_payload() -> None:
    event = only_message("text_full_fields")
    assert event.text == "Hello, bot!"
    assert event.data == {"quick_reply_payload": "Hi, I am a quick reply!"}


def test_it_reads_the_quoted_message() -> None:
    event = only_message("reply_to")
    assert event.reply_to_platform_id == "m_Abc0previous0business0message"
    assert event.timestamp == ms(1763970000123)


@pytest.mark.parametrize(
    ("name", "kind", "placeholder"),
    [
        ("image", "image", "[Image]"),
        ("video", "video", "[Video]"),
        ("audio", "audio", "[Audio]"),
        ("file", "document", "[Document]"),
    ],
)
def test_it_reads_media_attachments_by_their_url(name: str, kind: str, placeholder: str) -> None:
    event = only_message(name)
    assert event.kind == kind
    assert event.text == placeholder
    assert event.media is not None
    assert event.media.url.startswith("https://")
    assert event.media.platform_media_id == event.media.url
    raw = json.loads(fixture_bytes(name))
    assert (
        event.data["attachment_type"]
        == raw["entry"][0]["messaging"][0]["message"]["attachments"][0]["type"]
    )


def test_a_file_keeps_its_name() -> None:
    event = only_message("file")
    assert event.media is not None and event.media.filename == "receipt-48213.pdf"


def test_it_reads_a_location() -> None:
    event = only_message("location")
    assert event.kind == "location"
    assert event.text == "📍 Pinned Location (35.658034, 139.701636)"
    assert event.data["latitude"] == 35.658034
    assert event.data["longitude"] == 139.701636
    assert event.data["name"] == "Pinned Location"


def test_a_shared_link_stays_a_text_message() -> None:
    event = only_message("fallback_link")
    assert event.kind == "text"
    assert event.text == "look https://example.com/shoes"  # the URL is not repeated
    assert event.data["links"] == [{"title": "Running shoes", "url": "https://example.com/shoes"}]


def test_a_link_without_text_reads_as_its_title_and_url() -> None:
    body = envelope(
        {
            "sender": {"id": PSID},
            "recipient": {"id": PAGE_ID},
            "timestamp": 1763970000000,
            "message": {
                "mid": "m_l",
                "attachments": [
                    {"type": "fallback", "payload": {"url": "https://e.x/a", "title": "A"}}
                ],
            },
        }
    )
    [event] = parse_webhook(body)
    assert isinstance(event, InboundMessage)
    assert event.text == "A https://e.x/a"


def test_it_reads_a_sticker() -> None:
    event = only_message("sticker")
    assert event.kind == "sticker"
    assert event.data["sticker_id"] == "369239263222822"
    assert event.text == "[Sticker]"


def test_several_attachments_become_several_messages() -> None:
    events = parse_fixture("two_images")
    assert [e.platform_message_id for e in events] == ["m_two1", "m_two1#1"]
    assert [e.kind for e in events] == ["image", "image"]
    assert events[0].text == "both boxes"
    assert events[0].media is not None and events[0].media.caption == "both boxes"
    assert events[1].text == "[Image]"
    assert events[1].media is not None and events[1].media.url.endswith("/b.jpg")


def test_an_unknown_attachment_is_kept_as_unsupported() -> None:
    event = only_message("unknown_attachment")
    assert event.kind == "unsupported"
    assert event.text == "[Unsupported message type: poll]"
    assert event.data == {"unsupported_type": "poll", "reason": "unknown_type"}


def test_it_reads_a_postback_and_names_it_stably() -> None:
    event = only_message("postback")
    assert event.kind == "button"
    assert event.text == "Get Started"
    assert event.data == {"payload": "GET_STARTED", "title": "Get Started"}
    # A redelivery yields the same id, so the core's unique constraint drops it.
    assert event.platform_message_id == only_message("postback").platform_message_id
    assert event.platform_message_id == f"postback.{PSID}.1458692752478"


def test_a_postback_with_a_mid_keeps_it() -> None:
    event = only_message("postback_with_mid")
    assert event.platform_message_id == "m_postback1"
    assert event.data["payload"] == "AGENT"


def test_it_reads_reactions_and_their_removal() -> None:
    event = only_message("reaction")
    assert event.kind == "reaction"
    assert event.text == "❤️"
    assert event.reaction_to_platform_id == "m_business1"
    assert event.data == {"emoji": "❤️", "reaction": "love", "removed": False}
    removed = only_message("reaction_removed")
    assert removed.text == "Reaction removed"
    assert removed.data["removed"] is True


def test_a_delivery_gives_a_watermark_and_the_listed_mids() -> None:
    events = parse_fixture("delivery")
    assert events == [
        ReceiptWatermark(
            business_handle=PAGE_ID,
            recipient_handle=PSID,
            status="delivered",
            watermark=ms(1458668856253),
        ),
        StatusUpdate(
            platform_message_id="mid.1458668856218:ed81099e15d3f4f233",
            business_handle=PAGE_ID,
            recipient_handle=PSID,
            status="delivered",
            timestamp=ms(1458668856253),  # the doc's delivery has no timestamp
        ),
    ]


def test_a_delivery_without_mids_is_only_a_watermark() -> None:
    [event] = parse_fixture("delivery_watermark_only")
    assert isinstance(event, ReceiptWatermark)
    assert event.status == "delivered"
    assert event.watermark == ms(1458668856253)


def test_a_read_is_a_watermark() -> None:
    [event] = parse_fixture("read")
    assert event == ReceiptWatermark(
        business_handle=PAGE_ID, recipient_handle=PSID, status="read", watermark=ms(1458668856253)
    )


def test_it_drops_echoes_of_our_own_sends() -> None:
    result = parse_webhook_report(fixture_bytes("echo_own_app"), own_app_id=OWN_APP_ID)
    assert result.events == [] and result.skipped == []
    assert result.own_echoes == 1
    # The provider reads our app id from the channel's options.
    assert provider(app_id=OWN_APP_ID).parse_webhook(fixture_bytes("echo_own_app")) == []
    assert provider(app_id=int(OWN_APP_ID)).parse_webhook(fixture_bytes("echo_own_app")) == []


def test_it_keeps_every_echo_when_our_app_is_not_known() -> None:
    [event] = provider().parse_webhook(fixture_bytes("echo_own_app"))
    assert isinstance(event, OutboundEcho)
    assert event.platform_message_id == "m_ourSend1"


def test_echoes_of_other_apps_become_outbound_messages() -> None:
    [event] = parse_fixture("echo_page_inbox")
    assert event == OutboundEcho(
        platform_message_id="m_inboxReply1",
        business_handle=PAGE_ID,  # the page sent it
        recipient_handle=PSID,
        timestamp=ms(1458692752478),
        kind="text",
        text="Hi! This is Mika from the shop.",
    )
    [image] = parse_fixture("echo_other_app_image")
    assert isinstance(image, OutboundEcho)
    assert image.kind == "image" and image.media is not None


def test_app_ids_beyond_double_precision_are_compared_exactly() -> None:
    body = fixture_bytes("echo_other_app_image")
    assert parse_webhook(body, own_app_id="184719329217930000") == []
    assert len(parse_webhook(body, own_app_id="184719329217930001")) == 1


def test_it_keeps_non_ascii_text() -> None:
    assert only_message("non_ascii").text == "こんにちは、注文番号は 48213 です。äöå 🙏"


@pytest.mark.parametrize("name", ["referral", "standby"])
def test_other_events_are_ignored_quietly(name: str) -> None:
    result = parse_webhook_report(fixture_bytes(name))
    assert result.events == [] and result.skipped == []
    assert len(result.ignored) == 1


def test_it_reads_several_events_and_entries_in_order() -> None:
    events = parse_fixture("batch")
    assert [type(e).__name__ for e in events] == [
        "InboundMessage",
        "InboundMessage",
        "ReceiptWatermark",
        "ReceiptWatermark",
        "StatusUpdate",
        "StatusUpdate",
    ]
    assert [e.platform_message_id for e in events if isinstance(e, StatusUpdate)] == [
        "m_x1",
        "m_x2",
    ]


def test_one_bad_item_does_not_sink_its_siblings() -> None:
    result = parse_webhook_report(fixture_bytes("one_bad_item"))
    assert [e.platform_message_id for e in result.events] == ["m_good", "m_badtext"]
    assert result.events[1].kind == "unsupported"
    assert [s.path for s in result.skipped] == ["entry[0].messaging[1]"]
    assert "recipient" in result.skipped[0].reason


def test_a_message_without_any_timestamp_is_skipped() -> None:
    event = {
        "sender": {"id": PSID},
        "recipient": {"id": PAGE_ID},
        "message": {"mid": "m", "text": "x"},
    }
    body = json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "messaging": [event]}]})
    result = parse_webhook_report(body.encode())
    assert result.events == [] and result.skipped[0].reason == "no timestamp"


def test_the_entry_time_stands_in_for_a_missing_timestamp() -> None:
    event = {
        "sender": {"id": PSID},
        "recipient": {"id": PAGE_ID},
        "message": {"mid": "m", "text": "x"},
    }
    [parsed] = parse_webhook(envelope(event))
    assert parsed.timestamp == ms(1)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "malformed_json"),
        (b'{"object": "page", "entry": [NaN]}', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b'"\\ud83d"', "malformed_json"),
        (b"[]", "invalid_payload"),
        (b'{"object": "page"}', "invalid_payload"),
        (b'{"object": "page", "entry": [1]}', "invalid_payload"),
        (b'{"object": "instagram", "entry": []}', "unexpected_object"),
        (b'{"object": "whatsapp_business_account", "entry": []}', "unexpected_object"),
        (b'{"entry": []}', "unexpected_object"),
    ],
)
def test_it_refuses_what_is_not_a_page_webhook(body: bytes, code: str) -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        parse_webhook(body)
    assert caught.value.code == code
    with pytest.raises(WebhookPayloadError):
        check_envelope(body)
    with pytest.raises(WebhookPayloadError):
        provider().precheck_webhook(body)


@given(st.integers(min_value=0, max_value=10**14 - 1))
def test_timestamps_round_trip_to_the_millisecond(millis: int) -> None:
    assert utc_to_unix_ms(unix_ms_to_utc(millis)) == millis


@pytest.mark.parametrize("value", [True, -1, 10**14, "12a", 1.5, None, "1e3"])
def test_it_refuses_impossible_timestamps(value: Any) -> None:
    with pytest.raises(ValueError):
        unix_ms_to_utc(value)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
EVENT_KEYS = st.sampled_from(
    ["sender", "recipient", "timestamp", "message", "postback", "delivery", "read", "reaction"]
)
MESSAGE_KEYS = st.sampled_from(
    ["mid", "text", "is_echo", "app_id", "attachments", "quick_reply", "reply_to", "sticker_id"]
)


@st.composite
def messaging_items(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {
        "sender": {"id": draw(st.sampled_from([PSID, PAGE_ID, "", 7]))},
        "recipient": {"id": draw(st.sampled_from([PAGE_ID, PSID]))},
    }
    if draw(st.booleans()):
        item["timestamp"] = draw(st.integers(min_value=-5, max_value=10**15) | JSON)
    for key in draw(st.lists(EVENT_KEYS, max_size=3)):
        item[key] = draw(JSON)
    message = {key: draw(JSON) for key in draw(st.lists(MESSAGE_KEYS, max_size=5))}
    if draw(st.booleans()):
        message["mid"] = draw(st.text(min_size=1, max_size=10))
        message["attachments"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["image", "file", "location", "fallback", "x"])},
                    optional={"payload": JSON | st.fixed_dictionaries({"url": st.text()})},
                ),
                max_size=3,
            )
        )
    item["message"] = message
    return item


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messaging_items(), max_size=4))
def test_it_never_fails_on_odd_items(items: list[dict[str, Any]]) -> None:
    result = parse_webhook_report(envelope(*items), own_app_id=OWN_APP_ID)
    for event in result.events:
        json.dumps(as_json(event))
        if isinstance(event, InboundMessage | OutboundEcho):
            assert event.text.strip()
            assert event.platform_message_id


@settings(max_examples=200)
@given(JSON)
def test_any_json_is_either_a_payload_or_a_payload_error(document: Any) -> None:
    try:
        parse_webhook_report(json.dumps(document).encode())
    except WebhookPayloadError:
        pass


# ---------------------------------------------------------------------------------------------
# Handshake and signature (C1, C2)
# ---------------------------------------------------------------------------------------------


def test_it_answers_the_handshake_with_the_challenge() -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    assert provider().handshake(query) == (200, "1158201444")


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {},
    ],
)
def test_it_refuses_a_bad_handshake_with_403(query: dict[str, str]) -> None:
    assert provider().handshake(query) == (403, "Forbidden")


def test_a_channel_without_a_verify_token_refuses_every_handshake() -> None:
    bare = MessengerProvider(ChannelConfig(id=1, kind="messenger", business_handle=PAGE_ID))
    query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
    assert bare.handshake(query)[0] == 403


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_it_accepts_the_signature_over_the_escaped_body() -> None:
    # C2: Meta signs the escaped-unicode serialization (äöå -> \u00e4\u00f6\u00e5).
    payload = json.loads(fixture_bytes("non_ascii"))
    escaped = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
    assert b"\\u3053" in escaped
    headers = {"x-hub-signature-256": signature(escaped)}
    assert provider().verify_signature(headers, escaped)
    upper = {"x-hub-signature-256": "sha256=" + signature(escaped)[7:].upper()}
    assert provider().verify_signature(upper, escaped)
    # The same JSON with raw UTF-8 is other bytes: the signature does not fit it.
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert not provider().verify_signature(headers, raw)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha256=",
        "sha1=" + "0" * 40,
        signature(b"{}", secret="another-secret"),
        signature(b'{"object":"page","entry":[]} '),
    ],
)
def test_it_rejects_forged_signatures(header: str) -> None:
    body = b'{"object":"page","entry":[]}'
    headers = {"x-hub-signature-256": header} if header else {}
    assert not provider().verify_signature(headers, body)


def test_without_an_app_secret_nothing_verifies() -> None:
    body = b"{}"
    bare = MessengerProvider(ChannelConfig(id=1, kind="messenger", business_handle=PAGE_ID))
    assert not bare.verify_signature({"x-hub-signature-256": signature(body, "")}, body)


# ---------------------------------------------------------------------------------------------
# Send API bodies (C5)
# ---------------------------------------------------------------------------------------------


def test_a_reply_inside_the_window_is_a_response() -> None:
    assert text_body(PSID, "Hello, world!") == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Hello, world!"},
    }


def test_a_human_agent_reply_is_a_tagged_message() -> None:
    assert text_body(PSID, "Sorry for the wait", tag="HUMAN_AGENT", reply_to="m_1") == {
        "recipient": {"id": PSID},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": "Sorry for the wait"},
        "reply_to": {"mid": "m_1"},
    }


@pytest.mark.parametrize("tag", ["ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE", "human_agent", ""])
def test_it_sends_no_other_tag(tag: str) -> None:
    with pytest.raises(UnsupportedTag):
        messaging_fields(tag)
    with pytest.raises(UnsupportedTag):
        text_body(PSID, "x", tag=tag)


def test_text_is_limited_to_2000_characters() -> None:
    assert text_body(PSID, "あ" * MAX_TEXT_LENGTH)["message"]["text"] == "あ" * 2000
    with pytest.raises(ValueError):
        text_body(PSID, "a" * (MAX_TEXT_LENGTH + 1))
    with pytest.raises(ValueError):
        text_body(PSID, "  \n")


def test_attachment_bodies() -> None:
    assert attachment_body(PSID, "image", url="http://www.messenger-rocks.com/image.jpg") == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {
            "attachment": {
                "type": "image",
                "payload": {
                    "url": "http://www.messenger-rocks.com/image.jpg",
                    "is_reusable": False,
                },
            }
        },
    }
    by_id = attachment_body(PSID, "document", attachment_id="1857777774821032", tag="HUMAN_AGENT")
    assert by_id["message"]["attachment"] == {
        "type": "file",
        "payload": {"attachment_id": "1857777774821032"},
    }
    assert by_id["tag"] == "HUMAN_AGENT"
    with pytest.raises(ValueError):
        attachment_body(PSID, "location", url="http://x")
    with pytest.raises(ValueError):
        attachment_body(PSID, "image", url="http://x", attachment_id="1")


def test_an_upload_form_encodes_its_objects_as_json() -> None:
    form = upload_form(PSID, "audio", reply_to="m_9", tag="HUMAN_AGENT")
    assert form == {
        "recipient": f'{{"id":"{PSID}"}}',
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": '{"attachment":{"type":"audio","payload":{"is_reusable":false}}}',
        "reply_to": '{"mid":"m_9"}',
    }


def test_sender_actions() -> None:
    assert sender_action_body(PSID, "mark_seen") == {
        "recipient": {"id": PSID},
        "sender_action": "mark_seen",
    }
    with pytest.raises(ValueError):
        sender_action_body(PSID, "mark_read")


# ---------------------------------------------------------------------------------------------
# Errors (C6)
# ---------------------------------------------------------------------------------------------


def graph(code: int, subcode: int | None = None, message: str = "", **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message or f"(#{code}) Something",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AxIIVeNpuf3y2jeXdufRcEX",
        **extra,
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


@pytest.mark.parametrize(
    ("code", "subcode", "permanent", "scope", "retry_after"),
    [
        (10, 2018278, True, "request", None),  # outside the window
        (10, 2534022, True, "request", None),  # Instagram's window pair
        (10, None, True, "request", None),  # permission (Human Agent missing)
        (200, None, True, "request", None),
        (551, None, True, "request", None),  # person unavailable
        (551, 1545041, True, "request", None),
        (100, None, True, "request", None),  # invalid parameter / deprecated tag
        (190, None, True, "request", None),  # token
        (368, None, True, "request", None),
        (613, None, False, "number", 30.0),  # Send API rate limit
        (4, None, False, "number", 60.0),
        (17, None, False, "number", 60.0),
        (32, None, False, "number", 60.0),
        (1, None, False, "request", None),
        (2, None, False, "request", None),
        (1200, None, False, "request", None),
        (2, 2018344, False, "request", None),
        (100, 2018344, False, "request", None),  # the subcode says "temporary"
        (123456, None, True, "request", None),  # unknown: never retried blindly
    ],
)
def test_it_maps_every_listed_error(
    code: int, subcode: int | None, permanent: bool, scope: str, retry_after: float | None
) -> None:
    error = classify_error(400, graph(code, subcode))
    assert error.error.code == code
    assert error.error.subcode == subcode
    assert error.permanent is permanent
    assert error.scope == scope
    assert error.retry_after == retry_after
    assert error.http_status == 400
    assert readable_reason(error.error)


def test_the_window_error_reads_as_such() -> None:
    body = graph(
        10,
        2018278,
        "(#10) This message is sent outside of allowed window. Learn more about the new policy "
        "here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
    )
    error = classify_error(400, body).error
    assert is_window_error(error) and not is_unavailable_error(error)
    assert error.title.startswith("This message is sent outside of allowed window")
    assert "24 hours" in MessengerProvider.explain_error(error)
    permission = classify_error(400, graph(10)).error
    assert not is_window_error(permission)
    assert "permission" in MessengerProvider.explain_error(permission)


def test_the_unavailable_person_reads_as_such() -> None:
    error = classify_error(400, graph(551, message="This person isn't available right now.")).error
    assert is_unavailable_error(error)
    assert "isn't available" in readable_reason(error)
    assert is_unavailable_error(PlatformError(code=10, subcode=1545041))


def test_an_unknown_error_flagged_transient_is_retried() -> None:
    assert classify_error(500, graph(99999, is_transient=True)).permanent is False
    # A known permanent code stays permanent even when flagged.
    assert classify_error(400, graph(190, is_transient=True)).permanent is True


@pytest.mark.parametrize(
    ("status", "payload", "permanent"),
    [
        (500, None, False),
        (503, "gateway", False),
        (429, {}, False),
        (None, None, False),
        (400, None, True),
        (404, {"error": "nope"}, True),
    ],
)
def test_errors_without_a_graph_body_are_judged_by_status(
    status: int | None, payload: Any, permanent: bool
) -> None:
    error = classify_error(status, payload)
    assert error.error.code == LOCAL_ERROR_CODE
    assert error.permanent is permanent
    assert readable_reason(error.error)


def test_local_failures_are_transient() -> None:
    assert timeout_error().permanent is False
    assert network_error("ConnectError").error.details == "ConnectError"
    assert "retried" in readable_reason(timeout_error().error)


@given(st.integers(), st.one_of(st.none(), st.integers()), st.text(max_size=30), st.booleans())
def test_any_graph_error_is_classified(
    code: int, subcode: int | None, message: str, transient: bool
) -> None:
    error = classify_error(400, graph(code, subcode, message or "x", is_transient=transient))
    assert error.error.code == code
    assert isinstance(readable_reason(error.error), str)


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


def test_capabilities_declare_the_window_and_the_human_agent_tag() -> None:
    caps = MessengerProvider.capabilities
    assert (caps.window_hours, caps.tagged_window_hours) == (24, 168)
    assert caps.has_templates is False and caps.read_receipts is True
    assert caps.max_text_length == 2000
    assert caps.caption_kinds == frozenset()


def test_it_normalizes_page_scoped_ids() -> None:
    assert MessengerProvider.normalize_handle(f"  {PSID} ") == PSID
    for raw in ["", "abc", "+15551234", "１２３４５６７", "1234", "9" * 33]:
        with pytest.raises(Invalid):
            MessengerProvider.normalize_handle(raw)


def test_shared_links_without_title_or_url_still_read_as_a_message() -> None:
    """Found by hypothesis: two empty ``fallback`` attachments once gave the text "\\n"."""
    empty = {"type": "fallback", "payload": None}
    body = envelope(
        {
            "sender": {"id": PSID},
            "recipient": {"id": PAGE_ID},
            "timestamp": 1763970000000,
            "message": {"mid": "m_links", "attachments": [empty, empty]},
        }
    )
    [event] = parse_webhook(body)
    assert isinstance(event, InboundMessage)
    assert event.text.strip()
