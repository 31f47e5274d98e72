"""Search (queries.search): substrings in any script through the index of migration 0005, only
what the user may read, short queries, and text that looks like query syntax."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from madoguchi.actions.conversations import do_assign
from madoguchi.actions.inbound import do_receive_message
from madoguchi.models import Message
from madoguchi.providers.base import InboundMessage
from madoguchi.queries import search as search_module
from madoguchi.queries.search import search

from .helpers import PHONE_NUMBER_ID

_ids = count(1)


@pytest.fixture
def receive(channel: Any) -> Any:
    """A customer message stored through the real write path; returns the Message."""

    def write(text: str, wa_id: str = "819012345678", name: str = "Sato Hanako") -> Message:
        message = do_receive_message(
            channel,
            InboundMessage(
                platform_message_id=f"wamid.search.{next(_ids)}",
                business_handle=PHONE_NUMBER_ID,
                sender_handle=wa_id,
                sender_name=name,
                timestamp=datetime.now(UTC),
                kind="text",
                text=text,
            ),
        )
        assert message is not None
        return message

    return write


def found(user: Any, text: str) -> list[int]:
    return [m.pk for m in search(user, text)[1]]


def test_it_finds_japanese_and_latin_substrings(users, receive):
    japanese = receive("先週注文した商品がまだ届いていません。")
    latin = receive("My running shoes have not arrived yet")
    receive("Something else entirely")
    admin = users["admin"]
    assert found(admin, "商品がまだ") == [japanese.pk]
    assert found(admin, "注文し") == [japanese.pk]
    assert found(admin, "UNNING SHO") == [latin.pk]  # case does not matter
    assert found(admin, "shoes have") == [latin.pk]
    assert found(admin, "not there") == []


def test_it_lists_the_newest_matches_first_within_the_limit(users, receive):
    ids = [receive(f"order number {n}").pk for n in range(5)]
    hits = search(users["admin"], "order number", limit=3)[1]
    assert [m.pk for m in hits] == ids[::-1][:3]


def test_the_index_follows_edits_and_deletions(users, receive):
    message = receive("original wording")
    Message.objects.filter(pk=message.pk).update(text="rewritten sentence")
    assert found(users["admin"], "original") == []
    assert found(users["admin"], "rewritten") == [message.pk]
    Message.objects.filter(pk=message.pk).delete()
    assert found(users["admin"], "rewritten") == []


def test_it_only_finds_what_the_user_may_read(users, receive, channel):
    message = receive("a private matter about the refund")
    channel.visibility = "assigned_only"
    channel.save()
    assert found(users["aiko"], "private matter") == []
    assert found(users["wendy"], "private matter") == []
    assert found(users["sora"], "private matter") == [message.pk]
    do_assign(users["sora"], message.conversation, users["aiko"])
    assert found(users["aiko"], "private matter") == [message.pk]
    assert found(users["ben"], "private matter") == []
    # Contacts follow the same rule.
    assert [c.pk for c in search(users["ben"], "Sato")[0]] == []
    assert [c.pk for c in search(users["aiko"], "Sato")[0]] == [message.conversation_id]


def test_an_inactive_user_finds_nothing(users, receive):
    receive("visible to staff")
    users["aiko"].is_active = False
    users["aiko"].save()
    assert search(users["aiko"], "visible") == ([], [])


def test_two_characters_search_the_recent_messages(users, receive, monkeypatch):
    old = receive("返品したい")
    recent = receive("返品の方法を教えて")
    latin = receive("ok, thanks")
    assert found(users["admin"], "返品") == [recent.pk, old.pk]
    assert found(users["admin"], "OK") == [latin.pk]
    # Beyond the window of recent messages, a short query no longer reaches.
    monkeypatch.setattr(search_module, "SHORT_WINDOW", 2)
    assert found(users["admin"], "返品") == [recent.pk]


def test_one_character_finds_nothing(users, receive):
    receive("a")
    assert search(users["admin"], "a") == ([], [])
    assert search(users["admin"], "  ") == ([], [])


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '""',
        'say "hi',
        "*",
        "ship*",
        "NEAR(ship order)",
        "ship NEAR order",
        "ship OR order",
        "ship AND NOT order",
        "text: ship",
        "^ship",
        "-ship",
        "(ship",
        "%",
        "100%",
        "_",
        "a_b",
        "\\",
        "back\\slash",
        "nul\x00byte",
        "x" * 5000,
        "'; DROP TABLE madoguchi_message; --",
    ],
)
def test_query_syntax_is_only_text(users, receive, query):
    receive("ship the order to Osaka")
    conversations, messages = search(users["admin"], query)
    assert (conversations, messages) == ([], [])
    assert Message.objects.exists()


def test_special_characters_are_found_literally(users, receive):
    quoted = receive('He said "ship NEAR order" * twice')
    percent = receive("a 100% refund, file_name.pdf, C:\\path")
    receive("a 1000 refund, fileXname.pdf")
    admin = users["admin"]
    assert found(admin, '"ship NEAR order" *') == [quoted.pk]
    assert found(admin, "ship NEAR") == [quoted.pk]
    assert found(admin, "100%") == [percent.pk]
    assert found(admin, "file_name") == [percent.pk]
    assert found(admin, "C:\\path") == [percent.pk]


def test_system_notes_are_not_search_results(users, receive):
    message = receive("customer text")
    Message.objects.create(
        conversation=message.conversation,
        channel=message.channel,
        direction="out",
        kind="note",
        text="customer text moved by the system",
    )
    assert found(users["admin"], "customer text") == [message.pk]


def test_the_search_page_answers_any_text(users, receive):
    receive("注文番号は48213です")
    client = Client()
    response = client.post("/login/", {"username": "aiko", "password": "a-long-test-password-1"})
    assert response.status_code == 302
    for query in ["番号は", '"*NEAR(', "%_\\", "x"]:
        response = client.get("/search/", {"q": query})
        assert response.status_code == 200, query
    assert "注文番号は48213です" in client.get("/search/", {"q": "48213"}).content.decode()


def test_the_search_index_is_installed(db):
    """A later migration that rebuilds the message table on SQLite drops the FTS triggers: it
    must install them again (see migration 0005)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name = 'madoguchi_message' ORDER BY name"
            )
            assert [row[0] for row in cursor.fetchall()] == [
                "madoguchi_message_fts_delete",
                "madoguchi_message_fts_insert",
                "madoguchi_message_fts_update",
            ]
        else:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'msg_text_trgm'")
            assert "gin_trgm_ops" in cursor.fetchone()[0]


@pytest.mark.parametrize("candidates", [2_000, 0])  # a narrow text, and one counted as broad
def test_it_finds_contacts_by_name_or_handle(users, receive, channel, monkeypatch, candidates):
    monkeypatch.setattr(search_module, "CONTACT_CANDIDATES", candidates)
    hanako = receive("hello", wa_id="819011112222", name="佐藤花子").conversation
    receive("hello", wa_id="819033334444", name="Ben Jones")
    admin = users["admin"]
    assert [c.pk for c in search(admin, "藤花")[0]] == [hanako.pk]
    assert [c.pk for c in search(admin, "1111222")[0]] == [hanako.pk]
    assert len(search(admin, "8190")[0]) == 2
    assert [c.pk for c in search(admin, "花子")[0]] == [hanako.pk]  # two characters
    monkeypatch.setattr(search_module, "SHORT_CONVERSATIONS", 1)  # Ben's is the most recent
    assert search(admin, "花子")[0] == []
    channel.visibility = "assigned_only"
    channel.save()
    assert search(users["aiko"], "佐藤")[0] == []
