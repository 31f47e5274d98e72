"""Tests of the pure WhatsApp Cloud API wire module (no Django, no database).

Meta's official examples (``/work/shared/platforms/whatsapp/*_examples.json``) are checked
as they are; our own fixtures (``tests/fixtures/whatsapp/``) cover every A4 type of
PROTOCOLS.md and are also used by the integration tests that POST them signed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madoguchi.providers.base import (
    InboundMessage,
    PlatformError,
    PlatformNotice,
    StatusUpdate,
    TemplateStatusUpdate,
    as_json,
)
from madoguchi.providers.whatsapp_wire import (
    LOCAL_ERROR_CODE,
    ParamProblem,
    TemplateSpec,
    WebhookPayloadError,
    check_template_params,
    classify_error,
    is_window_error,
    media_body,
    network_error,
    parse_webhook,
    parse_webhook_report,
    reaction_body,
    read_receipt_body,
    readable_reason,
    render_template_text,
    template_body,
    text_body,
    timeout_error,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
META_DIR = Path("/work/shared/platforms/whatsapp")
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse_fixture(name: str) -> list[Any]:
    result = parse_webhook_report(fixture_bytes(name))
    assert result.skipped == []
    return result.events


def only_message(name: str) -> InboundMessage:
    events = parse_fixture(name)
    assert len(events) == 1
    assert isinstance(events[0], InboundMessage)
    assert events[0].business_handle == PHONE_NUMBER_ID
    return events[0]


def only_status(name: str) -> StatusUpdate:
    events = parse_fixture(name)
    assert len(events) == 1
    assert isinstance(events[0], StatusUpdate)
    assert events[0].business_handle == PHONE_NUMBER_ID
    return events[0]


def envelope(*values: dict[str, Any], field: str = "messages") -> bytes:
    """A one-entry delivery; each value becomes one change."""
    changes = [{"field": field, "value": value} for value in values]
    body = {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": changes}]}
    return json.dumps(body).encode()


def messages_value(
    messages: list[Any] | None = None, statuses: list[Any] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Maya"}, "wa_id": "16505550123"}],
    }
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return value


def message(type_: str, content: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "from": "16505550123",
        "id": f"wamid.test-{type_}-{len(extra)}",
        "timestamp": "1763970000",
        "type": type_,
    }
    if content is not None:
        item[type_] = content
    item.update(extra)
    return item


# ---------------------------------------------------------------------------------------------
# Meta's official webhook examples
# ---------------------------------------------------------------------------------------------

META_WEBHOOKS: dict[str, Any] = json.loads((META_DIR / "webhook_examples.json").read_text())


def count_items(payload: dict[str, Any], key: str) -> int:
    return sum(
        len(change["value"].get(key, []))
        for entry in payload["entry"]
        for change in entry["changes"]
        if change["field"] == "messages"
    )


@pytest.mark.parametrize("name", sorted(META_WEBHOOKS))
def test_it_parses_every_official_webhook_example(name: str) -> None:
    payload = META_WEBHOOKS[name]
    result = parse_webhook_report(json.dumps(payload).encode())

    assert result.skipped == []
    messages = [e for e in result.events if isinstance(e, InboundMessage)]
    statuses = [e for e in result.events if isinstance(e, StatusUpdate)]
    assert len(messages) == count_items(payload, "messages")
    assert len(statuses) == count_items(payload, "statuses")
    for event in messages:
        assert event.text.strip()
        assert event.business_handle == "106540352242922"
        assert event.timestamp.tzinfo is UTC
    json.dumps([as_json(e) for e in result.events], allow_nan=False)


def test_it_reads_the_official_examples_as_agents_expect() -> None:
    def first(name: str) -> InboundMessage:
        event = parse_webhook(json.dumps(META_WEBHOOKS[name]).encode())[0]
        assert isinstance(event, InboundMessage)
        return event

    assert first("Location Message").text == (
        "📍 Philz Coffee, 101 Forest Ave, Palo Alto, CA 94301 (37.442215, -122.161659)"
    )
    assert first("Contact Sharing Message").text == "👤 Lucía Gómez +1 (983) 555-2319"
    assert first("Order Message").text == "🛒 Order: 2 items (USD 85.00)"
    assert first("Reaction Message").text == "👍"
    assert first("Unsupported Message").error == PlatformError(
        131051, "Message type unknown", "Message type is currently not supported."
    )
    product = first("Text Message with Context (Product Inquiry)")
    assert product.data["referred_product"] == {
        "catalog_id": "194836987003835",
        "product_retailer_id": "di9ozbzfi4",
    }
    assert product.reply_to_platform_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGA9wcm9kdWN0X2lucXVpcnkA"
    ad = first("Text Message from Click to WhatsApp Ad")
    assert ad.data["referral"]["source_type"] == "ad"
    system = first("System Message")
    assert system.sender_name == ""  # system messages come without contacts[]
    assert system.data["new_wa_id"] == "12195555358"


# ---------------------------------------------------------------------------------------------
# Our fixtures, one per A4 type
# ---------------------------------------------------------------------------------------------

ALL_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_it_parses_every_fixture_without_skipping(name: str) -> None:
    raw = json.loads(fixture_bytes(name))
    for entry in raw["entry"]:
        assert entry["id"] == WABA_ID
        for change in entry["changes"]:
            metadata = change["value"].get("metadata")
            if metadata:
                assert metadata["display_phone_number"] == "15550783881"
                assert metadata["phone_number_id"] == PHONE_NUMBER_ID
    events = parse_fixture(name)
    assert events
    for event in events:
        if isinstance(event, InboundMessage):
            assert event.text.strip()
    json.dumps([as_json(e) for e in events], allow_nan=False)


def test_fixtures_use_distinct_message_ids() -> None:
    seen: dict[str, str] = {}
    for name in ALL_FIXTURES:
        for event in parse_fixture(name):
            key = getattr(event, "platform_message_id", None)
            if key:
                assert key not in seen, f"{key} in {name} and {seen.get(key)}"
                seen[key] = name


def test_it_parses_a_text_message() -> None:
    event = only_message("text.json")
    assert event.kind == "text"
    assert event.text == "Hi! Do you ship to Osaka?"
    assert event.sender_handle == "16505550123"
    assert event.sender_name == "Maya Fernández"
    assert event.timestamp == datetime(2025, 11, 24, 7, 40, tzinfo=UTC)
    assert event.reply_to_platform_id is None
    assert event.media is None


def test_it_parses_an_image_with_its_caption_and_media() -> None:
    event = only_message("image.json")
    assert event.kind == "image"
    assert event.text == "The box arrived damaged"
    assert event.media is not None
    assert event.media.platform_media_id == "1482053719264631"
    assert event.media.mime_type == "image/jpeg"
    assert event.media.caption == "The box arrived damaged"
    assert event.media.url.startswith("https://lookaside.fbsbx.com/")


def test_it_parses_a_voice_message() -> None:
    event = only_message("audio_voice.json")
    assert event.kind == "audio"
    assert event.text == "[Voice message]"
    assert event.media is not None and event.media.voice


def test_it_parses_a_forwarded_video() -> None:
    event = only_message("video.json")
    assert event.kind == "video"
    assert event.forwarded
    assert event.reply_to_platform_id is None  # a forward has no quoted message


def test_it_names_a_document_by_its_filename() -> None:
    event = only_message("document.json")
    assert event.kind == "document"
    assert event.text == "[Document: invoice-2025-1187.pdf]"
    assert event.media is not None and event.media.filename == "invoice-2025-1187.pdf"


def test_it_parses_a_sticker() -> None:
    event = only_message("sticker.json")
    assert (event.kind, event.text) == ("sticker", "[Sticker]")
    assert event.media is not None and not event.media.animated


def test_it_renders_a_location() -> None:
    event = only_message("location.json")
    assert event.kind == "location"
    assert event.text == (
        "📍 Umeda Sky Building, 1-1-88 Oyodonaka, Kita Ward, Osaka (34.702485, 135.495951)"
    )
    assert event.data == {
        "latitude": 34.702485,
        "longitude": 135.495951,
        "name": "Umeda Sky Building",
        "address": "1-1-88 Oyodonaka, Kita Ward, Osaka",
        "url": "https://www.skybldg.co.jp/",
    }


def test_it_renders_a_current_location_without_a_name() -> None:
    body = envelope(messages_value([message("location", {"latitude": 35.6, "longitude": 139.7})]))
    [event] = parse_webhook(body)
    assert isinstance(event, InboundMessage)
    assert event.text == "📍 (35.6, 139.7)"


def test_it_renders_shared_contacts() -> None:
    event = only_message("contacts.json")
    assert event.kind == "contacts"
    assert event.text == "👤 Tomás Reyes +52 55 5550 1942"
    assert event.data["contacts"][0]["org"]["company"] == "Reyes Imports"


@pytest.mark.parametrize(
    ("name", "text", "reply_id"),
    [
        ("interactive_button_reply.json", "Yes, confirm", "confirm-delivery"),
        ("interactive_list_reply.json", "Morning (9-12)", "slot_morning"),
    ],
)
def test_it_parses_interactive_replies(name: str, text: str, reply_id: str) -> None:
    event = only_message(name)
    assert event.kind == "interactive"
    assert event.text == text
    assert event.data["reply_id"] == reply_id
    assert event.reply_to_platform_id is not None


def test_it_parses_a_flow_reply() -> None:
    event = only_message("interactive_nfm_reply.json")
    assert event.text == "Sent"
    assert event.data["interactive_type"] == "nfm_reply"
    assert json.loads(event.data["response_json"])["reason"] == "damaged"


def test_it_parses_a_template_quick_reply_button() -> None:
    event = only_message("button.json")
    assert event.kind == "button"
    assert event.text == "Stop promotions"
    assert event.data["payload"] == "STOP_PROMOS"


def test_it_parses_a_reaction() -> None:
    event = only_message("reaction.json")
    assert event.kind == "reaction"
    assert event.text == "❤️"
    assert event.reaction_to_platform_id is not None
    assert event.data == {"emoji": "❤️", "removed": False}


@pytest.mark.parametrize("removal", [{"emoji": ""}, {}])
def test_it_reads_a_removed_reaction(removal: dict[str, str]) -> None:
    reaction = {"message_id": "wamid.original", **removal}
    [event] = parse_webhook(envelope(messages_value([message("reaction", reaction)])))
    assert isinstance(event, InboundMessage)
    assert event.text == "Reaction removed"
    assert event.data["removed"]
    assert event.reaction_to_platform_id == "wamid.original"
    assert only_message("reaction_removed.json").data["removed"]


def test_it_summarizes_an_order() -> None:
    event = only_message("order.json")
    assert event.kind == "order"
    assert event.text == "🛒 Order: 2 items (USD 127.40)\nGift wrap please"
    assert event.data["total"] == "127.40"
    assert [item["quantity"] for item in event.data["items"]] == [3, 1]


def test_it_totals_zero_decimal_currencies_without_cents() -> None:
    order = {"product_items": [{"quantity": 2, "item_price": 1500, "currency": "JPY"}]}
    [event] = parse_webhook(envelope(messages_value([message("order", order)])))
    assert isinstance(event, InboundMessage)
    assert event.text == "🛒 Order: 1 item (JPY 3000)"


def test_it_parses_a_number_change() -> None:
    event = only_message("system.json")
    assert event.kind == "system"
    assert event.text.startswith("User Maya Fernández changed from")
    assert event.data["system_type"] == "user_changed_number"
    assert event.data["new_wa_id"] == "16505550199"


def test_it_keeps_an_unsupported_message_with_its_error() -> None:
    event = only_message("unsupported.json")
    assert event.kind == "unsupported"
    assert event.text == "[Unsupported message type: poll]"
    assert event.error is not None and event.error.code == 131051


def test_it_keeps_an_unknown_type_as_unsupported() -> None:
    event = only_message("unknown_type_poll.json")
    assert event.kind == "unsupported"
    assert event.text == "[Unsupported message type: poll]"
    assert event.data == {"unsupported_type": "poll", "reason": "unknown_type"}


def test_it_links_a_reply_to_the_quoted_message() -> None:
    event = only_message("reply_with_context.json")
    assert event.kind == "text"
    assert event.reply_to_platform_id is not None
    assert event.reply_to_platform_id.startswith("wamid.")
    assert not event.forwarded


def test_it_ignores_unknown_fields_everywhere() -> None:
    event = only_message("extra_unknown_fields.json")
    assert event.text == "Is the shop open on Sunday?"
    assert event.sender_name == "Maya Fernández"
    assert event.data == {"from_user_id": "US.1349275018203746"}


def test_it_decodes_escaped_japanese_and_emoji() -> None:
    raw = fixture_bytes("non_ascii.json")
    assert raw.isascii() and b"\\u3053" in raw and b"\n" not in raw
    event = only_message("non_ascii.json")
    assert event.text == "こんにちは！注文した商品はいつ届きますか？🙏📦"
    assert event.sender_name == "山田 花子 🌸"


def test_it_parses_revoke_and_welcome_requests() -> None:
    items = [
        message("revoke", {"original_message_id": "wamid.gone"}),
        message("request_welcome"),
    ]
    deleted, welcome = parse_webhook(envelope(messages_value(items)))
    assert isinstance(deleted, InboundMessage) and isinstance(welcome, InboundMessage)
    assert (deleted.kind, deleted.text) == ("system", "[Message deleted]")
    assert deleted.data["original_message_id"] == "wamid.gone"
    assert welcome.kind == "system" and welcome.text


# --- statuses and other fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("status_sent.json", "sent"),  # PMP pricing
        ("status_delivered.json", "delivered"),  # CBP pricing (before July 2025)
        ("status_read.json", "read"),
    ],
)
def test_it_parses_delivery_statuses(name: str, status: str) -> None:
    event = only_status(name)
    assert event.status == status
    assert event.recipient_handle == "16505550123"
    assert event.error is None


def test_it_reads_a_window_failure_in_zammads_shape() -> None:
    event = only_status("status_failed_131047.json")
    assert event.status == "failed"
    assert event.error is not None
    assert event.error.code == 131047
    assert event.error.title == "Re-engagement message"
    assert "24 hours" in event.error.details
    assert is_window_error(event.error.code)


def test_it_reads_an_ecosystem_failure() -> None:
    event = only_status("status_failed_131049.json")
    assert event.error is not None and event.error.code == 131049
    assert not is_window_error(event.error.code)


def test_it_treats_legacy_470_as_a_window_error_but_keeps_the_code() -> None:
    status = {
        "id": "wamid.legacy",
        "status": "failed",
        "timestamp": "1700000000",
        "recipient_id": "16505550123",
        "errors": [{"code": 470, "title": "Failed to send message because you are outside..."}],
    }
    [event] = parse_webhook(envelope(messages_value(statuses=[status])))
    assert isinstance(event, StatusUpdate)
    assert event.error is not None and event.error.code == 470
    assert is_window_error(470) and is_window_error(131047) and not is_window_error(131026)


def test_it_reads_played_as_read() -> None:
    status = {"id": "wamid.v", "status": "played", "timestamp": "1700000000", "recipient_id": "1"}
    [event] = parse_webhook(envelope(messages_value(statuses=[status])))
    assert isinstance(event, StatusUpdate) and event.status == "read"


def test_it_parses_a_template_rejection() -> None:
    [event] = parse_fixture("template_status_rejected.json")
    assert event == TemplateStatusUpdate(
        account_handle=WABA_ID,
        template_id="1720394857261843",  # an integer on the wire
        name="order_delay_notice",
        language="en_US",
        event="REJECTED",
        reason="INVALID_FORMAT: Your template has parameters placed next to each other "
        "(like {{1}}{{2}}) without text or punctuation between them.",
    )


def test_it_turns_value_errors_into_notices() -> None:
    [event] = parse_fixture("value_errors.json")
    assert event == PlatformNotice(
        business_handle=PHONE_NUMBER_ID,
        error=PlatformError(131000, "Something went wrong", "Unsupported webhook payload"),
    )


def test_it_keeps_a_message_that_comes_with_value_errors() -> None:
    # pywa's real case: an interactive message and a top-level 131000 in the same value.
    value = messages_value([message("interactive", {"type": "button_reply"})])
    value["errors"] = [{"code": 131000, "title": "Something went wrong"}]
    reply, notice = parse_webhook(envelope(value))
    assert isinstance(reply, InboundMessage) and reply.kind == "interactive" and reply.text
    assert isinstance(notice, PlatformNotice)


def test_it_yields_nothing_for_other_fields() -> None:
    body = envelope(
        {"phone_number": "15550783881", "event": "VERIFIED_ACCOUNT"}, field="account_update"
    )
    assert parse_webhook_report(body).events == []
    assert parse_webhook_report(body).skipped == []


# --- batches and leniency --------------------------------------------------------------------


def test_it_iterates_every_entry_change_message_and_status() -> None:
    events = parse_fixture("batch_two_entries.json")
    summary = [
        (type(e).__name__, getattr(e, "kind", None) or getattr(e, "status", None)) for e in events
    ]
    assert summary == [
        ("InboundMessage", "text"),
        ("InboundMessage", "image"),
        ("StatusUpdate", "delivered"),
        ("StatusUpdate", "read"),
        ("InboundMessage", "text"),
        ("StatusUpdate", "sent"),
    ]
    names = {e.sender_handle: e.sender_name for e in events if isinstance(e, InboundMessage)}
    assert names == {"16505550123": "Maya Fernández", "5511955550147": "Carlos Mendes"}


def test_a_bad_message_does_not_lose_its_siblings() -> None:
    good = message("text", {"body": "still here"})
    broken_but_identified = message("image", {"caption": "no media id"})
    unidentifiable = {"type": "text", "text": {"body": "who sent this?"}}
    not_an_object = ["nonsense"]
    value = messages_value([broken_but_identified, unidentifiable, good, not_an_object])
    result = parse_webhook_report(envelope(value))

    kept, survivor = result.events
    assert isinstance(kept, InboundMessage) and isinstance(survivor, InboundMessage)
    assert (kept.kind, kept.text) == ("unsupported", "[Unreadable image message]")
    assert kept.data["reason"] == "invalid"
    assert survivor.text == "still here"
    assert [item.path for item in result.skipped] == [
        "entry[0].changes[0].value.messages[1]",
        "entry[0].changes[0].value.messages[3]",
    ]
    assert all("who sent this" not in item.reason for item in result.skipped)


def test_a_bad_status_entry_or_change_does_not_lose_the_others() -> None:
    good_status = {
        "id": "wamid.ok",
        "status": "read",
        "timestamp": "1700000000",
        "recipient_id": "1",
    }
    bad_status = {"id": "wamid.bad", "status": "read", "timestamp": "yesterday"}
    weird_status = {"id": "wamid.w", "status": "deleted", "timestamp": "1700000000"}
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {"changes": []},  # no id
            {
                "id": WABA_ID,
                "changes": [
                    {"field": "messages", "value": {"messages": []}},  # no metadata
                    "garbage",
                    {
                        "field": "messages",
                        "value": messages_value(statuses=[bad_status, weird_status, good_status]),
                    },
                ],
            },
        ],
    }
    result = parse_webhook_report(json.dumps(body).encode())
    assert [e.platform_message_id for e in result.events] == ["wamid.ok"]
    assert [item.path for item in result.skipped] == [
        "entry[0]",
        "entry[1].changes[0].value",
        "entry[1].changes[1]",
        "entry[1].changes[2].value.statuses[0]",
        "entry[1].changes[2].value.statuses[1]",
    ]


def test_it_logs_skipped_items(caplog: pytest.LogCaptureFixture) -> None:
    body = envelope(messages_value([{"type": "text"}]))
    with caplog.at_level("WARNING", logger="madoguchi.providers.whatsapp_wire"):
        assert parse_webhook(body) == []
    assert "entry[0].changes[0].value.messages[0]" in caplog.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"object": NaN}', "malformed_json"),
        (b'{"x": 1e999}', "malformed_json"),
        (b'{"x": "\\ud83d"}', "malformed_json"),  # a lone surrogate
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
        (b"[]", "invalid_payload"),
        (b'"whatsapp_business_account"', "invalid_payload"),
        (b'{"entry": []}', "invalid_payload"),
        (b'{"object": "whatsapp_business_account"}', "invalid_payload"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "invalid_payload"),
        (b'{"object": "page", "entry": []}', "unexpected_object"),
        (b'{"object": "instagram", "entry": []}', "unexpected_object"),
    ],
)
def test_it_refuses_what_is_not_a_whatsapp_payload(body: bytes, code: str) -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        parse_webhook(body)
    assert caught.value.code == code


def test_it_accepts_paired_surrogate_escapes() -> None:
    body = envelope(messages_value([message("text", {"body": "ok"})])).replace(
        b'"ok"', b'"\\ud83d\\udc4d"'
    )
    [event] = parse_webhook(body)
    assert isinstance(event, InboundMessage) and event.text == "👍"


# --- property tests: nothing but WebhookPayloadError, whatever arrives -----------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

MESSAGE_KEYS = [
    "from",
    "id",
    "timestamp",
    "type",
    "context",
    "errors",
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "unsupported",
    "referral",
    "revoke",
    "identity",
]
TYPES = [
    "text",
    "image",
    "audio",
    "voice",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "order",
    "system",
    "unsupported",
    "revoke",
    "edit",
    "request_welcome",
    "poll",
]


SUB_KEYS = [
    "body",
    "id",
    "caption",
    "filename",
    "mime_type",
    "voice",
    "animated",
    "latitude",
    "longitude",
    "name",
    "address",
    "url",
    "message_id",
    "emoji",
    "type",
    "button_reply",
    "list_reply",
    "nfm_reply",
    "title",
    "payload",
    "text",
    "product_items",
    "quantity",
    "item_price",
    "currency",
    "wa_id",
    "original_message_id",
    "phones",
    "forwarded",
]


@st.composite
def whatsapp_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """Envelopes with known keys at every level and random values under them.

    ``mostly(good, bad)`` keeps each level valid most of the time, so that the random values
    reach the renderers instead of stopping at the first invalid container.
    """

    def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        # Four times in five the valid shape (one_of does not weight duplicated branches).
        return st.integers(0, 4).flatmap(lambda pick: bad if pick == 0 else good)

    plausible = json_values | st.sampled_from(
        ["1700000000", "16505550123", "wamid.x", "", "read", "failed", "USD", "😀", *TYPES]
    )
    content = st.recursive(
        plausible,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(SUB_KEYS), children, max_size=5)
        ),
        max_leaves=12,
    )
    message_item = st.fixed_dictionaries(
        {
            "id": mostly(st.just("wamid.x"), plausible),
            "from": mostly(st.just("16505550123"), plausible),
            "timestamp": mostly(st.just("1700000000"), plausible),
            "type": mostly(st.sampled_from(TYPES), plausible),
        },
        optional={key: content for key in MESSAGE_KEYS[4:]},
    )
    status_item = st.fixed_dictionaries(
        {
            "id": mostly(st.just("wamid.s"), plausible),
            "status": st.sampled_from(["sent", "delivered", "read", "failed", "played", "x"]),
            "timestamp": mostly(st.just("1700000000"), plausible),
        },
        optional={
            "recipient_id": plausible,
            "errors": content,
            "pricing": content,
            "conversation": content,
        },
    )
    value = st.fixed_dictionaries(
        {"metadata": mostly(st.just({"phone_number_id": "1"}), json_values)},
        optional={
            "contacts": st.lists(content, max_size=2),
            "messages": st.lists(mostly(message_item, json_values), max_size=3),
            "statuses": st.lists(mostly(status_item, json_values), max_size=3),
            "errors": st.lists(content, max_size=2),
            "event": plausible,
            "message_template_id": plausible,
            "reason": plausible,
            "rejection_info": content,
        },
    )
    change = st.fixed_dictionaries(
        {
            "field": st.sampled_from(["messages", "message_template_status_update", "x"]),
            "value": value,
        }
    )
    entry = st.fixed_dictionaries(
        {
            "id": mostly(st.just(WABA_ID), json_values),
            "changes": st.lists(mostly(change, json_values), max_size=3),
        }
    )
    return {"object": "whatsapp_business_account", "entry": draw(st.lists(entry, max_size=3))}


def json_paths(document: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from json_paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from json_paths(value, (*prefix, index))


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


def assert_parses_or_refuses(body: bytes) -> None:
    try:
        result = parse_webhook_report(body)
    except WebhookPayloadError as exc:
        assert exc.code in {"malformed_json", "invalid_payload", "unexpected_object"}
        return
    assert not [item for item in result.skipped if item.reason.startswith("internal error")]
    for event in result.events:
        if isinstance(event, InboundMessage):
            assert event.text.strip()
            assert event.timestamp.tzinfo is UTC
    json.dumps([as_json(e) for e in result.events], allow_nan=False).encode("utf-8")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_it_never_raises_anything_else_on_arbitrary_bytes(body: bytes) -> None:
    assert_parses_or_refuses(body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_it_never_raises_anything_else_on_arbitrary_json(document: Any) -> None:
    assert_parses_or_refuses(json.dumps(document).encode())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(whatsapp_shaped())
def test_it_never_raises_anything_else_on_whatsapp_shaped_json(document: Any) -> None:
    assert_parses_or_refuses(json.dumps(document).encode())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_it_never_raises_anything_else_on_mutated_fixtures(name: str, data: st.DataObject) -> None:
    document = json.loads(fixture_bytes(name))
    path = data.draw(st.sampled_from(list(json_paths(document))))
    value = data.draw(json_values)
    assert_parses_or_refuses(json.dumps(replaced(document, path, value)).encode())


# ---------------------------------------------------------------------------------------------
# Outbound bodies against Meta's send examples
# ---------------------------------------------------------------------------------------------

SEND: dict[str, Any] = json.loads((META_DIR / "send_examples.json").read_text())
TO = "{{Recipient-Phone-Number}}"


def test_text_bodies_match_metas_examples() -> None:
    assert text_body(TO, "text-message-content") == SEND["Send Text Message"]
    assert (
        text_body(TO, "<TEXT_MSG_CONTENT>", reply_to="<MSGID_OF_PREV_MSG>")
        == SEND["Send Reply to Text Message"]
    )
    preview = text_body(TO, "Please visit https://youtu.be/hpltvTEiRrY.", preview_url=True)
    example = SEND["Send Text Message with Preview URL"]
    assert preview["text"] == example["text"] and preview["to"] == example["to"]


@pytest.mark.parametrize(
    ("example", "kind", "media_id", "options"),
    [
        ("Send Image Message by ID", "image", "<IMAGE_OBJECT_ID>", {}),
        ("Send Audio Message by ID", "audio", "<AUDIO_OBJECT_ID>", {}),
        ("Send Sticker Message by ID", "sticker", "<MEDIA_OBJECT_ID>", {}),
        (
            "Send Video Message by ID",
            "video",
            "<VIDEO_OBJECT_ID>",
            {"caption": "<VIDEO_CAPTION_TEXT>"},
        ),
        (
            "Send Document Message by ID",
            "document",
            "<DOCUMENT_OBJECT_ID>",
            {"caption": "<DOCUMENT_CAPTION_TO_SEND>", "filename": "<DOCUMENT_FILENAME>"},
        ),
        (
            "Send Reply to Image Message by ID",
            "image",
            "<IMAGE_OBJECT_ID>",
            {"reply_to": "<MSGID_OF_PREV_MSG>"},
        ),
        (
            "Send Reply to Audio Message by ID",
            "audio",
            "<AUDIO_OBJECT_ID>",
            {"reply_to": "<MSGID_OF_MSG_YOU_ARE_REPLYING_TO>"},
        ),
        (
            "Send Reply to Document Message by ID",
            "document",
            "<DOCUMENT_OBJECT_ID>",
            {
                "caption": "<DOCUMENT_CAPTION_TO_SEND>",
                "filename": "<DOCUMENT_FILENAME>",
                "reply_to": "<MSGID_OF_MSG_YOU_ARE_REPLYING_TO>",
            },
        ),
        (
            "Send Reply to Sticker Message by ID",
            "sticker",
            "<MEDIA_OBJECT_ID>",
            {"reply_to": "<MSGID_OF_MSG_YOU_ARE_REPLYING_TO>"},
        ),
        (
            "Send Reply to Video Message by ID",
            "video",
            "<VIDEO_OBJECT_ID>",
            {"caption": "<VIDEO_CAPTION_TEXT>", "reply_to": "<MSGID_OF_MSG_YOU_ARE_REPLYING_TO>"},
        ),
    ],
)
def test_media_bodies_match_metas_examples(
    example: str, kind: str, media_id: str, options: dict[str, str]
) -> None:
    assert media_body(TO, kind, media_id, **options) == SEND[example]


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("gif", {}),
        ("audio", {"caption": "hello"}),
        ("sticker", {"caption": "hello"}),
        ("image", {"filename": "a.jpg"}),
    ],
)
def test_media_bodies_refuse_what_meta_does_not_accept(kind: str, options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        media_body("16505550123", kind, "123", **options)


CURRENCY = {
    "type": "currency",
    "currency": {"fallback_value": "$100.99", "code": "USD", "amount_1000": 100990},
}
DATE_TIME = {
    "type": "date_time",
    "date_time": {
        "fallback_value": "February 25, 1977",
        "day_of_week": 5,
        "year": 1977,
        "month": 2,
        "day_of_month": 25,
        "hour": 15,
        "minute": 33,
        "calendar": "GREGORIAN",
    },
}


def test_template_bodies_match_metas_examples() -> None:
    params = ["text-string", CURRENCY, DATE_TIME]
    language = "language-and-locale-code"
    assert (
        template_body(TO, "template-name", language, body_params=params)
        == SEND["Send Message Template Text"]
    )
    assert (
        template_body(
            TO,
            "template-name",
            language,
            body_params=params,
            header={"type": "image", "link": "http(s)://the-image-url"},
        )
        == SEND["Send Message Template Media"]
    )
    assert (
        template_body(
            TO,
            "template-name",
            language,
            body_params=params,
            header={"type": "image", "link": "http(s)://the-image-url"},
            buttons=[
                {"index": 0, "sub_type": "quick_reply", "value": "aGlzIHRoaXMgaXMgY29v"},
                {"index": 1, "sub_type": "quick_reply", "value": "9rwnB8RbYmPF5t2Mn09x4h"},
            ],
        )
        == SEND["Send Message Template Interactive"]
    )
    hello = template_body(TO, "hello_world", "en_US")
    assert hello["template"] == SEND["Send Test Message"]["template"]


def test_template_bodies_for_named_params_headers_and_url_buttons() -> None:
    body = template_body(
        "16505550123",
        "order_update",
        "en_US",
        body_params={"first_name": "Maya", "order_id": "1187"},
        header={"type": "document", "id": "998877", "filename": "receipt.pdf"},
        buttons=[
            {"index": 1, "sub_type": "url", "value": "1187"},
            {"index": 2, "sub_type": "copy_code", "value": "SAVE10"},
        ],
        named=True,
    )
    assert body["template"]["components"] == [
        {
            "type": "header",
            "parameters": [
                {"type": "document", "document": {"id": "998877", "filename": "receipt.pdf"}}
            ],
        },
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Maya", "parameter_name": "first_name"},
                {"type": "text", "text": "1187", "parameter_name": "order_id"},
            ],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": "1",
            "parameters": [{"type": "text", "text": "1187"}],
        },
        {
            "type": "button",
            "sub_type": "copy_code",
            "index": "2",
            "parameters": [{"type": "coupon_code", "coupon_code": "SAVE10"}],
        },
    ]
    text_header = template_body(
        "1", "t", "en", body_params=[], header={"type": "text", "text": "Maya"}
    )
    assert text_header["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "text", "text": "Maya"}]}
    ]
    assert template_body("1", "t", "en", header="Maya") == text_header
    with pytest.raises(ValueError):
        template_body("1", "t", "en", body_params=["a"], named=True)


def test_read_receipt_and_reaction_bodies_match_metas_examples() -> None:
    example = SEND["Send typing indicator and read receipt"]
    assert read_receipt_body(example["message_id"], typing_indicator=True) == example
    assert read_receipt_body("wamid.x") == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.x",
    }
    assert reaction_body(TO, "wamid.HBgLM...", "😀") == SEND["Send Reply with Reaction Message"]


# ---------------------------------------------------------------------------------------------
# Templates: requirements, parameter checks, rendering
# ---------------------------------------------------------------------------------------------

TEMPLATE_EXAMPLES: dict[str, Any] = json.loads((META_DIR / "template_examples.json").read_text())
TUSCAN = TEMPLATE_EXAMPLES[
    "POST request: Create template w/ image header, text body, text footer, and 2 call-to-action "
    "buttons"
]
SEASONAL = TEMPLATE_EXAMPLES[
    "POST request: Create template w/ text header, text body, text footer, and 2 quick reply "
    "buttons"
]
NAMED = {
    "name": "order_ready",
    "language": "en_US",
    "status": "APPROVED",
    "category": "UTILITY",
    "id": "1402938475610293",
    "parameter_format": "NAMED",
    "components": [
        {
            "type": "HEADER",
            "format": "TEXT",
            "text": "Hello {{first_name}}",
            "example": {
                "header_text_named_params": [{"param_name": "first_name", "example": "Maya"}]
            },
        },
        {
            "type": "BODY",
            "text": "Your order {{order_id}} is ready, {{first_name}}. Total: {{total}}.",
            "example": {
                "body_text_named_params": [
                    {"param_name": "order_id", "example": "1187"},
                    {"param_name": "first_name", "example": "Maya"},
                    {"param_name": "total", "example": "$12.00"},
                ]
            },
        },
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
    ],
}


def problems_of(
    spec: TemplateSpec, body: Any, header: Any = None, buttons: Any = None
) -> set[tuple[str, str]]:
    found = check_template_params(spec, body, header, buttons)
    assert all(isinstance(p, ParamProblem) and p.message for p in found)
    return {(p.field, p.code) for p in found}


def test_it_reads_a_graph_template_list_item() -> None:
    listed = TEMPLATE_EXAMPLES["GET 200 response: Example response"]["data"]
    hello, promo = (TemplateSpec.from_graph(item) for item in listed)
    assert (hello.name, hello.status, hello.header_format, hello.header_text) == (
        "hello_world",
        "APPROVED",
        "text",
        "Hello World",
    )
    needs = hello.required_parameters()
    assert needs.header == "none" and needs.body_count == 0 and needs.buttons == ()
    promo_needs = promo.required_parameters()
    assert [(s.key, s.example) for s in promo_needs.body] == [("1", "Mark"), ("2", "FALL25")]
    assert promo.buttons[0].type == "QUICK_REPLY"


def test_it_describes_a_media_header_and_a_url_button() -> None:
    spec = TemplateSpec.from_graph(TUSCAN)
    needs = spec.required_parameters()
    assert needs.header == "image"
    assert needs.body_count == 3
    assert [(b.index, b.sub_type, b.example) for b in needs.buttons] == [(1, "url", "summer2023")]


def test_it_describes_named_parameters() -> None:
    needs = TemplateSpec.from_graph(NAMED).required_parameters()
    assert needs.named
    assert [(s.key, s.example) for s in needs.body] == [
        ("order_id", "1187"),
        ("first_name", "Maya"),
        ("total", "$12.00"),
    ]
    assert needs.header == "text"
    assert needs.header_param is not None and needs.header_param.key == "first_name"


def test_it_accepts_fitting_positional_values() -> None:
    spec = TemplateSpec.from_graph(TUSCAN)
    image = {"type": "image", "id": "1029384756"}
    buttons = [{"index": 1, "sub_type": "url", "value": "maya-1187"}]
    assert problems_of(spec, ["Maya", "Tuscan Getaway", CURRENCY], image, buttons) == set()
    assert (
        problems_of(spec, ["Maya", {"type": "text", "text": "Rome"}, DATE_TIME], image, buttons)
        == set()
    )


def test_it_accepts_fitting_named_values() -> None:
    spec = TemplateSpec.from_graph(NAMED)
    body = {"first_name": "Maya", "order_id": "1187", "total": "$12.00"}
    assert problems_of(spec, body, "Maya") == set()
    assert problems_of(spec, body, {"type": "text", "text": "Maya"}) == set()


def test_it_reports_missing_and_unexpected_values() -> None:
    spec = TemplateSpec.from_graph(TUSCAN)
    image = {"type": "image", "id": "1"}
    url = [{"index": 1, "sub_type": "url", "value": "x"}]
    assert problems_of(spec, ["Maya"], image, url) == {("body.2", "missing"), ("body.3", "missing")}
    assert problems_of(spec, ["a", "b", "c", "d"], image, url) == {("body.4", "unexpected")}
    assert problems_of(spec, ["a", "b", "c"], None, None) == {
        ("header", "missing"),
        ("buttons.1", "missing"),
    }
    assert problems_of(
        spec, ["a", "b", "c"], image, [*url, {"index": 0, "sub_type": "url", "value": "x"}]
    ) == {("buttons.0", "unexpected")}
    assert problems_of(spec, ["a", "b", "c"], image, [*url, *url]) == {("buttons.1", "unexpected")}
    hello = TemplateSpec.from_graph(
        TEMPLATE_EXAMPLES["GET 200 response: Example response"]["data"][0]
    )
    assert problems_of(hello, [], {"type": "text", "text": "x"}) == {("header", "unexpected")}
    assert problems_of(hello, None) == set()

    named = TemplateSpec.from_graph(NAMED)
    assert problems_of(named, {"first_name": "Maya", "coupon": "X", "total": "1"}, "Maya") == {
        ("body.order_id", "missing"),
        ("body.coupon", "unexpected"),
    }


def test_it_reports_wrong_types() -> None:
    spec = TemplateSpec.from_graph(TUSCAN)
    url = [{"index": 1, "sub_type": "url", "value": "x"}]
    assert problems_of(spec, ["a", 42, None], {"type": "image", "id": "1"}, url) == {
        ("body.2", "wrong_type"),
        ("body.3", "wrong_type"),
    }
    assert problems_of(
        spec, ["a", "b", {"type": "image", "image": {}}], {"type": "video", "id": "1"}, url
    ) == {("body.3", "wrong_type"), ("header", "wrong_type")}
    assert problems_of(spec, {"1": "a"}, {"type": "image", "id": "1"}, url) == {
        ("body", "wrong_type")
    }
    assert problems_of(spec, "abc", {"type": "image", "id": "1"}, url) == {("body", "wrong_type")}
    assert problems_of(
        spec,
        ["a", "b", "c"],
        {"type": "image", "id": "1"},
        [{"index": 1, "sub_type": "quick_reply", "value": "x"}],
    ) == {("buttons.1", "wrong_type")}
    assert problems_of(spec, ["a", "b", "c"], {"type": "image", "id": "1"}, ["x"]) == {
        ("buttons.0", "wrong_type"),
        ("buttons.1", "missing"),
    }
    assert problems_of(TemplateSpec.from_graph(NAMED), ["Maya"], "Maya") == {("body", "wrong_type")}


def test_it_reports_empty_values_and_media_without_a_source() -> None:
    spec = TemplateSpec.from_graph(TUSCAN)
    assert problems_of(
        spec,
        ["", "  ", "c"],
        {"type": "image", "link": ""},
        [{"index": 1, "sub_type": "url", "value": ""}],
    ) == {("body.1", "empty"), ("body.2", "empty"), ("header", "missing"), ("buttons.1", "empty")}


def test_it_reports_values_that_are_too_long() -> None:
    spec = TemplateSpec.from_graph(SEASONAL)  # a TEXT header with {{1}}
    assert problems_of(spec, ["x" * 1024, "b", "c"], "h" * 60) == set()
    assert problems_of(spec, ["x" * 1025, "b", "c"], "h" * 61) == {
        ("body.1", "too_long"),
        ("header", "too_long"),
    }


@pytest.mark.parametrize("value", ["two\nlines", "a\ttab", "five     spaces"])
def test_it_reports_what_meta_refuses_in_a_body_value(value: str) -> None:
    spec = TemplateSpec.from_graph(SEASONAL)
    assert problems_of(spec, [value, "b", "c"], "Sale") == {("body.1", "invalid_format")}
    assert problems_of(spec, ["four    spaces", "b", "c"], "Sale") == set()


@pytest.mark.parametrize(
    "value",
    [
        {"type": "currency", "currency": {"code": "USD", "amount_1000": 1000}},
        {
            "type": "currency",
            "currency": {"fallback_value": "$1", "code": "US", "amount_1000": 1000},
        },
        {
            "type": "currency",
            "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1.5},
        },
        {"type": "currency"},
        {"type": "date_time", "date_time": {"year": 2025}},
        {"type": "date_time", "date_time": {"fallback_value": ""}},
    ],
)
def test_it_checks_currency_and_date_time_values(value: dict[str, Any]) -> None:
    spec = TemplateSpec.from_graph(SEASONAL)
    assert problems_of(spec, ["a", "b", value], "Sale") == {("body.3", "invalid_format")}


def test_it_checks_quick_reply_payloads_and_static_buttons() -> None:
    seasonal = TemplateSpec.from_graph(SEASONAL)
    assert (
        problems_of(
            seasonal,
            ["a", "b", "c"],
            "Sale",
            [{"index": 0, "sub_type": "quick_reply", "value": "UNSUB"}],
        )
        == set()
    )
    order_confirmation = TemplateSpec.from_graph(
        TEMPLATE_EXAMPLES[
            "POST request: Create template w/ document header, text body, a phone number button, "
            "and a URL button"
        ]
    )
    needs = order_confirmation.required_parameters()
    assert needs.header == "document" and needs.buttons == ()  # a static URL takes no value
    assert problems_of(
        order_confirmation,
        ["Mark", "860198"],
        {"type": "document", "id": "1"},
        [{"index": 0, "sub_type": "url", "value": "x"}],
    ) == {("buttons.0", "unexpected")}


def test_it_treats_authentication_templates_as_a_code_and_a_url_button() -> None:
    spec = TemplateSpec.from_graph(
        TEMPLATE_EXAMPLES["POST request: Create authentication template w/ OTP copy code button"]
    )
    needs = spec.required_parameters()
    assert needs.body_count == 1
    assert [(b.index, b.sub_type) for b in needs.buttons] == [(0, "url")]
    assert (
        problems_of(spec, ["482913"], None, [{"index": 0, "sub_type": "url", "value": "482913"}])
        == set()
    )


def test_it_checks_a_location_header() -> None:
    spec = TemplateSpec.from_graph(
        TEMPLATE_EXAMPLES[
            "POST request: Create template w/ location header, text body, text footer, and a website "
            "buttons"
        ]
    )
    location = {
        "type": "location",
        "location": {"latitude": 34.7, "longitude": 135.5, "name": "Umeda"},
    }
    assert problems_of(spec, ["Mark", "566701"], location) == set()
    assert problems_of(spec, ["Mark", "566701"], {"type": "location", "location": {}}) == {
        ("header", "invalid_format")
    }


def test_it_renders_a_template_as_text() -> None:
    seasonal = TemplateSpec.from_graph(SEASONAL)
    assert render_template_text(seasonal, ["the end of August", "25OFF", "25%"], "Summer Sale") == (
        "Our Summer Sale is on!\n"
        "Shop now through the end of August and use code 25OFF to get 25% off of all merchandise."
    )
    tuscan = TemplateSpec.from_graph(TUSCAN)
    assert render_template_text(
        tuscan, ["Mark", {"type": "text", "text": "Rome"}, CURRENCY], {"type": "image", "id": "1"}
    ) == (
        "Hi Mark! For a limited time only you can get our Rome for as low as $100.99. "
        "Tap the Offer Details button for more information."
    )
    named = TemplateSpec.from_graph(NAMED)
    assert render_template_text(
        named, {"first_name": "Maya", "order_id": "1187"}, {"type": "text", "text": "Maya"}
    ) == ("Hello Maya\nYour order 1187 is ready, Maya. Total: {{total}}.")
    auth = TemplateSpec.from_graph(
        TEMPLATE_EXAMPLES["POST request: Create authentication template w/ OTP copy code button"]
    )
    assert render_template_text(auth, ["482913"]) == (
        "[Template: authentication_code_copy_code_button]"
    )


def test_from_graph_refuses_an_item_without_name_or_language() -> None:
    with pytest.raises(ValueError):
        TemplateSpec.from_graph({"language": "en_US"})
    with pytest.raises(ValueError):
        TemplateSpec.from_graph({"name": "x"})


# ---------------------------------------------------------------------------------------------
# Error classification (A8)
# ---------------------------------------------------------------------------------------------


def graph_error(
    code: int, message: str = "Something", details: str = "", **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": f"(#{code}) {message}",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "Az8or2yhqkZfEZ",
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error.update(extra)
    return {"error": error}


@pytest.mark.parametrize(
    ("code", "scope", "retry_after"),
    [
        (130429, "number", 1.0),
        (131057, "number", 60.0),
        (80007, "number", 60.0),
        (4, "number", 60.0),
        (131056, "pair", 6.0),
        (131000, "request", None),
        (131016, "request", None),
    ],
)
def test_it_classifies_transient_codes(code: int, scope: str, retry_after: float | None) -> None:
    error = classify_error(400, graph_error(code))
    assert not error.permanent
    assert (error.scope, error.retry_after) == (scope, retry_after)
    assert error.error.code == code
    assert error.http_status == 400


PERMANENT_CODES = [
    131047,
    470,
    131026,
    131050,
    131049,
    132000,
    132001,
    132005,
    132007,
    132012,
    132015,
    132016,
    190,
    0,
    100,
    131008,
    131009,
    131051,
    131053,
    131021,
    131045,
    131031,
    368,
    130472,
    131048,
    131042,
    10,
    200,
    250,
    299,
    3,
    999_999,
]


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_it_classifies_permanent_codes(code: int) -> None:
    error = classify_error(400, graph_error(code))
    assert error.permanent
    assert readable_reason(error.error)


def test_it_keeps_code_title_and_details() -> None:
    payload = graph_error(
        130429,
        "Rate limit hit",
        "Cloud API message throughput has been reached.",
        error_subcode=2494055,
    )
    error = classify_error(400, payload)
    assert error.error == PlatformError(
        130429, "Rate limit hit", "Cloud API message throughput has been reached."
    )
    sync_window = classify_error(
        400,
        graph_error(
            131047, "Re-engagement message", "Message failed to send because more than 24 hours ..."
        ),
    )
    assert sync_window.error.title == "Re-engagement message"
    assert is_window_error(sync_window.error.code)


def test_it_follows_is_transient_for_generic_errors_only() -> None:
    assert not classify_error(
        500, graph_error(2, "Service temporarily unavailable", is_transient=True)
    ).permanent
    assert classify_error(400, graph_error(2, "Unknown")).permanent
    assert classify_error(400, graph_error(131047, is_transient=True)).permanent


@pytest.mark.parametrize(
    ("status", "payload", "permanent"),
    [
        (500, None, False),
        (502, {"html": "<h1>Bad gateway</h1>"}, False),
        (503, "Service Unavailable", False),
        (429, None, False),
        (None, None, False),
        (404, None, True),
        (400, {"error": {"message": "no code"}}, True),
    ],
)
def test_it_classifies_http_errors_without_a_graph_code(
    status: int | None, payload: Any, permanent: bool
) -> None:
    error = classify_error(status, payload)
    assert error.permanent is permanent
    assert error.error.code == LOCAL_ERROR_CODE
    assert error.scope == "request"
    assert readable_reason(error.error)


def test_timeouts_and_network_errors_are_transient() -> None:
    timeout = timeout_error()
    assert not timeout.permanent and timeout.scope == "request"
    assert timeout.error == PlatformError(LOCAL_ERROR_CODE, "Timeout")
    network = network_error("Connection refused")
    assert not network.permanent
    assert network.error == PlatformError(LOCAL_ERROR_CODE, "Network error", "Connection refused")
    assert "could not be reached" in readable_reason(network.error)


def test_readable_reasons_speak_to_agents() -> None:
    assert readable_reason(PlatformError(131047)) == (
        "More than 24 hours have passed since the customer last wrote; send an approved "
        "template instead."
    )
    assert readable_reason(PlatformError(470)) == readable_reason(PlatformError(131047))
    assert readable_reason(PlatformError(131026)) == (
        "The recipient cannot receive WhatsApp messages from this number (not on WhatsApp, or "
        "an old app version)."
    )
    assert "retried" in readable_reason(PlatformError(130429))
    assert readable_reason(PlatformError(123456, "Odd", "Meta's own words")) == "Meta's own words"
    assert readable_reason(PlatformError(123456, "Odd")) == "Odd"
    assert readable_reason(PlatformError(123456)) == "WhatsApp error 123456."
    assert "refused" in readable_reason(classify_error(404, None).error)
