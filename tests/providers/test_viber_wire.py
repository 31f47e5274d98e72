"""Tests of the pure Viber REST Bot API wire module (no Django, no database).

The fixtures (``tests/fixtures/viber/``) re-type the callback samples of PROTOCOLS.md §B4 and
add one per message type; the signature known-answer tests are Bottender's (B3).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madoguchi.providers.base import (
    InboundMessage,
    PlatformError,
    StatusUpdate,
    SubscriptionUpdate,
    as_json,
)
from madoguchi.providers.viber_wire import (
    FAILED_CALLBACK_CODE,
    LOCAL_ERROR_CODE,
    STATUS_NAMES,
    TEXT_MAX,
    ViberPayloadError,
    classify_error,
    is_conversation_started,
    is_user_id,
    load_callback,
    media_body,
    network_error,
    parse_webhook,
    read_answer,
    readable_reason,
    sender_object,
    set_webhook_body,
    signature,
    signature_matches,
    text_body,
    timeout_error,
    welcome_body,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "viber"
BOT = "pa:5727430493459823123"
TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
SENDER = sender_object("Madoguchi Shop")


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def events_of(name: str) -> list[Any]:
    return parse_webhook(fixture(name), BOT)


def only_message(name: str) -> InboundMessage:
    events = events_of(name)
    assert len(events) == 2
    message, subscription = events
    assert isinstance(message, InboundMessage)
    assert message.business_handle == BOT
    # B6: a user's message subscribes them, without a subscribed callback.
    assert subscription == SubscriptionUpdate(
        business_handle=BOT,
        contact_handle=message.sender_handle,
        contact_name=message.sender_name,
        subscribed=True,
        timestamp=message.timestamp,
    )
    return message


def callback(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# ---------------------------------------------------------------------------------------------
# Signature (B3)


def test_it_matches_bottenders_known_answers() -> None:
    assert (
        signature(b"rawBody", "ACCESS_TOKEN")
        == "250a5136d2f241195d4cb981a7293958434ec3ba9e50ed20788e9b030a1dd878"
    )
    body = (
        b'{"event":"subscribed","timestamp":1457764197627,"user":{"id":"01234567890A=",'
        b'"name":"John McClane","avatar":"http://avatar.example.com","country":"UK",'
        b'"language":"en","apiVersion":1},"messageToken":4912661846655238000}'
    )
    assert signature_matches(
        "a4b6913412505d2c6031e7ec75e75c51bdc2fe30dc367301528a28b2008300a4", body, "ACCESS_TOKEN"
    )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha256=" + signature(b"{}", TOKEN),  # Viber sends no prefix
        signature(b"{} ", TOKEN),  # another body
        signature(b"{}", TOKEN + "x"),  # another token
        "not hex at all",
    ],
)
def test_it_refuses_forged_signatures(header: str) -> None:
    assert not signature_matches(header, b"{}", TOKEN)


def test_it_accepts_upper_case_hex_and_refuses_an_empty_token() -> None:
    assert signature_matches(signature(b"{}", TOKEN).upper(), b"{}", TOKEN)
    assert not signature_matches(signature(b"{}", ""), b"{}", "")


# ---------------------------------------------------------------------------------------------
# Callbacks (B4)


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_every_fixture_yields_its_events_in_json_safe_form(name: str) -> None:
    events = events_of(name)
    if name == "webhook":
        assert events == []
    else:
        assert events
    for event in events:
        json.dumps(as_json(event))


def test_the_webhook_probe_yields_nothing() -> None:
    assert load_callback(fixture("webhook"))["event"] == "webhook"
    assert events_of("webhook") == []


def test_it_parses_a_text_message_with_its_token_and_sender() -> None:
    message = only_message("message_text")
    assert message.platform_message_id == "4912661846655238145"  # int64, not a float
    assert message.sender_handle == "01234567890A="
    assert message.sender_name == "John McClane"
    assert message.timestamp == datetime(2016, 3, 12, 6, 29, 57, 627000, tzinfo=UTC)
    assert (message.kind, message.text) == ("text", "a message to the service")
    assert message.data == {
        "viber_type": "text",
        "tracking_data": "tracking data",
        "sender_language": "en",
        "sender_country": "UK",
        "sender_api_version": 1,
    }
    assert message.media is None


def test_it_keeps_non_ascii_text() -> None:
    message = only_message("message_text_japanese")
    assert message.text == "こんにちは、注文の件です 🙏"
    assert message.sender_handle == "7TqXa1BpQkuZ3m+Vd/9hYw=="
    assert message.data["sender_language"] == "ja-JP"


def test_it_reads_a_keyboard_reply_with_its_tracking_data() -> None:
    message = only_message("message_keyboard_reply")
    assert (message.kind, message.text, message.data["tracking_data"]) == (
        "text",
        "order-status",
        "menu:main",
    )


def test_it_parses_a_picture_with_its_caption_and_url() -> None:
    message = only_message("message_picture")
    assert (message.kind, message.text) == ("image", "Here's the box")
    assert message.media is not None
    assert message.media.url.startswith("https://dl-media.viber.com/")
    assert message.media.platform_media_id == message.media.url  # short enough to keep
    assert message.media.mime_type == "image/jpeg"
    assert message.media.caption == "Here's the box"
    assert message.data["media_url"] == message.media.url
    assert message.data["size"] == 123456
    assert message.data["thumbnail"].endswith("_thumb.jpg")


def test_it_parses_a_video() -> None:
    message = only_message("message_video")
    assert (message.kind, message.text) == ("video", "[Video]")
    assert message.media is not None and message.media.mime_type == "video/mp4"
    assert (message.data["size"], message.data["duration"]) == (10000, 10)


def test_it_names_a_file_by_its_file_name() -> None:
    message = only_message("message_file")
    assert (message.kind, message.text) == ("document", "[Document: receipt-48213.pdf]")
    assert message.media is not None
    assert (message.media.filename, message.media.mime_type) == (
        "receipt-48213.pdf",
        "application/pdf",
    )


def test_it_keeps_a_long_media_url_whole_in_data_and_ids_the_media_by_token() -> None:
    document = json.loads(fixture("message_file"))
    document["message"]["media"] = "https://dl-media.viber.com/" + "a" * 300 + ".pdf"
    message = parse_webhook(json.dumps(document).encode(), BOT)[0]
    assert message.media.platform_media_id == message.platform_message_id
    assert message.media.url == message.data["media_url"] == document["message"]["media"]


def test_it_parses_a_sticker() -> None:
    message = only_message("message_sticker")
    assert (message.kind, message.text, message.data["sticker_id"]) == (
        "sticker",
        "[Sticker]",
        46105,
    )
    assert message.media is not None and message.media.mime_type == "image/png"


def test_it_renders_a_shared_contact_as_a_card() -> None:
    message = only_message("message_contact")
    assert (message.kind, message.text) == ("contacts", "👤 Itamar +972511123123")
    assert message.data["contacts"] == [
        {"name": {"formatted_name": "Itamar"}, "phones": [{"phone": "+972511123123"}]}
    ]


def test_it_reads_a_url_message_as_its_link() -> None:
    message = only_message("message_url")
    assert (message.kind, message.text) == ("text", "https://www.example.com/products/48213")
    assert message.data["url"] == message.text and message.media is None


@pytest.mark.parametrize(
    ("name", "text", "extra"),
    [
        ("message_location", "📍 (50.76891, 6.11499)", {}),
        (
            "message_location_address",
            "📍 東京都渋谷区道玄坂1丁目 (35.658034, 139.701636)",
            {"address": "東京都渋谷区道玄坂1丁目"},
        ),
    ],
)
def test_it_renders_a_location(name: str, text: str, extra: dict[str, str]) -> None:
    message = only_message(name)
    assert (message.kind, message.text) == ("location", text)
    assert {k: message.data[k] for k in ("latitude", "longitude")} == {
        "latitude": float(text.split("(")[1].split(",")[0]),
        "longitude": float(text.split(", ")[-1].rstrip(")")),
    }
    assert all(message.data[k] == v for k, v in extra.items())


def test_it_marks_a_silent_message() -> None:
    assert only_message("message_silent").data["silent"] is True


def test_it_keeps_an_unknown_type_as_unsupported() -> None:
    message = only_message("message_rich_media")
    assert (message.kind, message.text) == ("unsupported", "[Unsupported message type: rich_media]")
    assert message.data["unsupported_type"] == "rich_media"


def test_it_reads_the_documentations_catch_all_sample_as_text() -> None:
    message = only_message("message_doc_example")
    assert (message.kind, message.text, message.media) == ("text", "a message to the service", None)


def test_it_ignores_unknown_fields_everywhere() -> None:
    message = only_message("message_extra_fields")
    assert message.text == "extra fields everywhere"


@pytest.mark.parametrize(
    "content",
    [
        {"type": "location"},  # no location object
        {"type": "location", "location": {"lat": 91, "lon": 0}},
        {"type": "contact"},
        {"type": "picture"},  # no media
        {"type": "file", "media": "https://dl-media.viber.com/x", "size": -1},
        {"type": ""},
        {"text": "no type"},
    ],
)
def test_an_unreadable_message_is_kept_as_unsupported(content: dict[str, Any]) -> None:
    body = callback(
        event="message",
        timestamp=1457764197627,
        message_token=4912661846655238145,
        sender={"id": "01234567890A=", "name": "John"},
        message=content,
    )
    message, subscription = parse_webhook(body, BOT)
    assert message.kind == "unsupported"
    assert message.text.startswith("[Unreadable")
    assert message.platform_message_id == "4912661846655238145"
    assert subscription.subscribed is True


def test_it_parses_subscribed_and_unsubscribed() -> None:
    (subscribed,) = events_of("subscribed")
    (unsubscribed,) = events_of("unsubscribed")
    assert subscribed == SubscriptionUpdate(
        business_handle=BOT,
        contact_handle="01234567890A=",
        contact_name="John McClane",
        subscribed=True,
        timestamp=datetime(2016, 3, 12, 6, 29, 57, 627000, tzinfo=UTC),
    )
    assert (unsubscribed.contact_handle, unsubscribed.subscribed) == ("01234567890A=", False)


def test_a_conversation_start_says_nothing_about_subscription_unless_subscribed() -> None:
    (started,) = events_of("conversation_started")
    assert isinstance(started, SubscriptionUpdate)
    assert (started.subscribed, started.context, started.contact_name) == (
        None,
        "context information",
        "John McClane",
    )
    (again,) = events_of("conversation_started_subscribed")
    assert (again.subscribed, again.context, again.contact_handle) == (
        True,
        "",
        "7TqXa1BpQkuZ3m+Vd/9hYw==",
    )


@pytest.mark.parametrize(
    ("name", "status"),
    [("delivered", "delivered"), ("seen", "read"), ("delivered_second_device", "delivered")],
)
def test_it_parses_receipts(name: str, status: str) -> None:
    (update,) = events_of(name)
    assert isinstance(update, StatusUpdate)
    assert (update.status, update.business_handle, update.error) == (status, BOT, None)
    assert update.platform_message_id.isdigit()


def test_it_parses_a_failure_with_its_description() -> None:
    (update,) = events_of("failed")
    assert (update.status, update.recipient_handle) == ("failed", "01234567890A=")
    assert update.error == PlatformError(
        code=FAILED_CALLBACK_CODE, title="Delivery failed", details="failure description"
    )
    assert readable_reason(update.error) == (
        "Viber could not deliver the message: failure description"
    )


def test_it_ignores_unknown_events_and_skips_unreadable_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert parse_webhook(callback(event="client_status", timestamp=1), BOT) == []
    assert parse_webhook(callback(event="delivered", timestamp=1, user_id="x"), BOT) == []
    assert (
        parse_webhook(callback(event="seen", timestamp=-5, message_token=1, user_id="x"), BOT) == []
    )
    assert "skipped delivered" in caplog.text
    assert "message_token" in caplog.text  # the field, never its value


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "malformed_json"),
        (b"\xff{}", "malformed_json"),
        (b'{"event": NaN}', "malformed_json"),
        (b'{"event":"seen","x":"\\ud83d"}', "malformed_json"),
        (b"[]", "invalid_payload"),
        (b'{"object":"page","entry":[]}', "invalid_payload"),
        (b'{"event":""}', "invalid_payload"),
        (b'{"event":5}', "invalid_payload"),
    ],
)
def test_it_refuses_what_is_not_a_viber_callback(body: bytes, code: str) -> None:
    with pytest.raises(ViberPayloadError) as caught:
        parse_webhook(body, BOT)
    assert caught.value.code == code


def test_it_recognizes_a_conversation_start_cheaply() -> None:
    assert is_conversation_started(fixture("conversation_started"))
    assert not is_conversation_started(fixture("message_text"))
    assert not is_conversation_started(b'{"event":"message","text":"conversation_started"}')
    assert not is_conversation_started(b"conversation_started{")


# -- open-ended input -------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)))  # no lone surrogates
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
events = st.sampled_from(
    ["webhook", "message", "subscribed", "unsubscribed", "conversation_started", "delivered",
     "seen", "failed", "other"]
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_it_never_raises_anything_else_on_arbitrary_bytes(body: bytes) -> None:
    try:
        parse_webhook(body, BOT)
    except ViberPayloadError:
        pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.dictionaries(st.sampled_from(
    ["timestamp", "message_token", "user", "user_id", "sender", "message", "desc", "context",
     "subscribed", "silent"]), json_values, max_size=8))  # fmt: skip
def test_it_never_raises_anything_else_on_viber_shaped_json(
    event: str, fields: dict[str, Any]
) -> None:
    for parsed in parse_webhook(json.dumps({"event": event, **fields}).encode(), BOT):
        json.dumps(as_json(parsed))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1), st.text())
def test_any_text_is_parsed_back_as_sent(text: str, tracking: str) -> None:
    body = json.dumps(
        {
            "event": "message",
            "timestamp": 1747130000000,
            "message_token": 5491234567890126001,
            "sender": {"id": "01234567890A=", "name": "N"},
            "message": {"type": "text", "text": text, "tracking_data": tracking},
        },
        ensure_ascii=False,
    ).encode("utf-8", "surrogatepass")
    try:
        events = parse_webhook(body, BOT)
    except ViberPayloadError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text + tracking)  # lone surrogates only
        return
    message = events[0]
    assert message.text == (text if text.strip() else "[Empty message]")
    assert message.data.get("tracking_data", "") == tracking


# ---------------------------------------------------------------------------------------------
# Request bodies (B2, B5, B6)


def test_a_text_body_matches_the_documented_shape() -> None:
    body = text_body(
        "jc9HsWTZ2Yf2NkRZ8KcNug==",
        "Hello world!",
        sender={"name": "My Awesome Bote", "avatar": "http://avatar.example.com"},
        tracking_data="tracking data",
    )
    assert body == {
        "receiver": "jc9HsWTZ2Yf2NkRZ8KcNug==",
        "sender": {"name": "My Awesome Bote", "avatar": "http://avatar.example.com"},
        "tracking_data": "tracking data",
        "type": "text",
        "text": "Hello world!",
    }


@pytest.mark.parametrize("text", ["", "   ", "x" * (TEXT_MAX + 1)])
def test_a_text_body_refuses_what_viber_would(text: str) -> None:
    with pytest.raises(ValueError):
        text_body("01234567890A=", text, sender=SENDER)


def test_the_sender_name_is_required_and_cut_to_28_characters() -> None:
    assert sender_object("A" * 40) == {"name": "A" * 28}
    assert sender_object("  ") == {"name": "Madoguchi"}
    assert sender_object("Shop", "https://x/a.png") == {"name": "Shop", "avatar": "https://x/a.png"}


def test_media_bodies_per_kind() -> None:
    url = "https://files.example.com/m/a.jpg"
    picture = media_body("U=", "image", url, sender=SENDER, size=10, caption="Box")
    assert picture == {
        "receiver": "U=",
        "type": "picture",
        "media": url,
        "text": "Box",
        "sender": SENDER,
    }
    video = media_body("U=", "video", url, sender=SENDER, size=2048, duration=7)
    assert (video["type"], video["size"], video["duration"]) == ("video", 2048, 7)
    file = media_body("U=", "document", url, sender=SENDER, size=5, filename="r.pdf")
    assert (file["type"], file["size"], file["file_name"]) == ("file", 5, "r.pdf")
    audio = media_body("U=", "audio", url, sender=SENDER, size=5, filename="v.ogg")
    assert audio["type"] == "file"
    assert media_body("U=", "sticker", url, sender=SENDER, size=5)["type"] == "picture"


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("reaction", {}),
        ("video", {"caption": "no captions on video"}),
        ("document", {"caption": "nor on files", "filename": "a.pdf"}),
        ("document", {}),  # a file needs its name
    ],
)
def test_media_bodies_refuse_what_viber_does_not_take(kind: str, options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        media_body("U=", kind, "https://x/y", sender=SENDER, size=1, **options)


def test_the_welcome_body_has_no_receiver() -> None:
    assert welcome_body("Welcome!", sender=SENDER) == {
        "type": "text",
        "text": "Welcome!",
        "sender": SENDER,
        "tracking_data": "welcome",
    }


def test_the_webhook_body_asks_for_every_handled_event() -> None:
    assert set_webhook_body("https://my.host.com/webhooks/viber/1") == {
        "url": "https://my.host.com/webhooks/viber/1",
        "event_types": [
            "delivered",
            "seen",
            "failed",
            "subscribed",
            "unsubscribed",
            "conversation_started",
        ],
        "send_name": True,
        "send_photo": True,
    }


# ---------------------------------------------------------------------------------------------
# Status codes (B5)


def test_the_status_table_is_the_contracts() -> None:
    assert list(STATUS_NAMES) == list(range(25))
    assert (STATUS_NAMES[5], STATUS_NAMES[6], STATUS_NAMES[12]) == (
        "receiverNotRegistered",
        "receiverNotSubscribed",
        "tooManyRequests",
    )


@pytest.mark.parametrize("code", [c for c in range(1, 25) if c != 12] + [99])
def test_every_error_but_too_many_requests_is_permanent(code: int) -> None:
    error = classify_error(200, code, "some message")
    assert error.permanent
    assert error.error.code == code
    assert error.error.title == STATUS_NAMES.get(code, "generalError")
    assert error.error.details == "some message"
    assert readable_reason(error.error)


def test_too_many_requests_holds_only_that_recipient_for_a_while() -> None:
    error = classify_error(200, 12, "Too many requests")
    assert not error.permanent
    assert (error.scope, error.retry_after) == ("pair", 60.0)


@pytest.mark.parametrize(
    ("http_status", "permanent"), [(None, False), (500, False), (503, False), (429, False),
                                   (408, False), (404, True), (401, True)]
)  # fmt: skip
def test_without_a_status_code_the_http_status_decides(
    http_status: int | None, permanent: bool
) -> None:
    error = classify_error(http_status, None)
    assert (error.permanent, error.error.code) == (permanent, LOCAL_ERROR_CODE)
    assert readable_reason(error.error).startswith(
        "Viber refused" if permanent else "Viber could not be reached"
    )


def test_it_reads_answers() -> None:
    answer = read_answer(
        200,
        b'{"status":0,"status_message":"ok","message_token":5741311803571721087,'
        b'"chat_hostname":"SN-CHAT-05_","billing_status":1}',
    )
    assert answer.payload["message_token"] == 5741311803571721087
    with pytest.raises(Exception) as caught:
        read_answer(200, b'{"status":6,"status_message":"notSubscribed"}')
    assert caught.value.error.code == 6 and caught.value.permanent
    for content in (b"<html>", b'{"no":"status"}', b"[]"):
        with pytest.raises(Exception) as caught:
            read_answer(200, content)
        assert caught.value.error.code == LOCAL_ERROR_CODE and caught.value.permanent
    with pytest.raises(Exception) as caught:
        read_answer(502, b"Bad gateway")
    assert not caught.value.permanent


def test_local_errors_are_transient() -> None:
    assert not timeout_error().permanent
    assert not network_error("ConnectError").permanent


def test_it_recognizes_viber_user_ids() -> None:
    for good in ("01234567890A=", "3SQNc4FPUQmysaM/AQEhXg==", "jc9HsWTZ2Yf2NkRZ8KcNug=="):
        assert is_user_id(good)
    for bad in ("", "abc", "has space==", "x" * 80, "a=b=", "+81 90 1234 5678"):
        assert not is_user_id(bad)
