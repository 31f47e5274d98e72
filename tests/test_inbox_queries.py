"""Reading a thread costs the same number of queries whatever its length (bench B4)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext

from madoguchi.actions.inbound import do_receive_message
from madoguchi.providers.base import InboundMessage
from madoguchi.queries.conversations import history
from madoguchi.queries.serialize import message_json

from .helpers import PHONE_NUMBER_ID


def test_a_thread_costs_the_same_queries_for_5_or_50_messages(users, channel):
    for n in range(60):
        message = do_receive_message(
            channel,
            InboundMessage(
                platform_message_id=f"wamid.thread.{n}",
                business_handle=PHONE_NUMBER_ID,
                sender_handle="819012345678",
                sender_name="Sato",
                timestamp=datetime.now(UTC),
                kind="text",
                text=f"message {n}",
            ),
        )
    conversation = message.conversation

    def count(limit: int) -> int:
        with CaptureQueriesContext(connection) as ctx:
            items = [message_json(m) for m in history(users["aiko"], conversation, limit=limit)]
        assert len(items) == limit
        return len(ctx.captured_queries)

    assert count(5) == count(50)
