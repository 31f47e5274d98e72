"""Real-time events: published after commit, only to users allowed to see the conversation,
delivered over the WebSocket of the real server."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from datetime import timedelta

import pytest
import websockets
from django.db import transaction
from django.utils import timezone

from madoguchi.models import Visibility
from tests.helpers import run_async


def test_an_inbound_message_is_announced_to_every_reader(customer_writes, users, events):
    conversation = customer_writes(text="Hello there")
    added = [e for e, _ in events.of_type("message") if e["op"] == "add"]
    assert [e["message"]["text"] for e in added] == ["Hello there"]
    recipients = events.of_type("message")[0][1]
    assert set(recipients) == {u.pk for u in users.values()}
    upserts = [e for e, _ in events.of_type("conversation") if e["op"] == "upsert"]
    assert upserts[-1]["conversation"]["id"] == conversation.pk


def test_events_in_assigned_only_go_to_the_assignee_and_supervisors_only(
    customer_writes, channel, users, events, api_as
):
    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    conversation = customer_writes()
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": users["aiko"].pk})
    events.events.clear()
    customer_writes(text="Second message")
    recipients = events.of_type("message")[0][1]
    assert set(recipients) == {users["aiko"].pk, users["sora"].pk, users["admin"].pk}


def test_a_rolled_back_change_publishes_nothing(customer_writes, users, events):
    from madoguchi.actions.outbound import check_add_note

    conversation = customer_writes()
    events.events.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        check_add_note(users["aiko"], conversation, "a note that never was")
        raise RuntimeError
    assert events.events == []


def test_a_reassignment_in_assigned_only_removes_the_conversation_from_the_previous_agent(
    customer_writes, channel, users, events, api_as
):
    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    conversation = customer_writes()
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": users["aiko"].pk})
    events.events.clear()
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": users["ben"].pk})
    removals = [(e, r) for e, r in events.of_type("conversation") if e["op"] == "remove"]
    assert removals and removals[0][1] == [users["aiko"].pk]


def frame_events(text: str) -> list[dict]:
    """The events of one frame: an object, or an array of events that waited together."""
    frame = json.loads(text)
    return frame if isinstance(frame, list) else [frame]


async def receive_types(ws: websockets.ClientConnection, count: int) -> list[dict]:
    received = []
    while len(received) < count:
        received.extend(frame_events(await asyncio.wait_for(ws.recv(), timeout=10)))
    return received


def test_the_websocket_delivers_events_to_a_permitted_viewer_only(
    server, users, channel, api_as, customer_writes
):
    from madoguchi.actions.users import do_create_token

    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    conversation = customer_writes()
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": users["aiko"].pk})
    aiko_token = do_create_token(None, users["aiko"], "ws")
    ben_token = do_create_token(None, users["ben"], "ws")
    url = server.url.replace("http", "ws") + "/ws/"

    async def scenario() -> tuple[list[dict], list[dict]]:
        async with (
            websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {aiko_token}", "Origin": server.url},
            ) as aiko,
            websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {ben_token}", "Origin": server.url},
            ) as ben,
        ):
            hello = await receive_types(aiko, 1)
            await receive_types(ben, 1)
            await asyncio.to_thread(customer_writes, "16505551234", "Sheena", "Are you there?")
            got = await receive_types(aiko, 2)
            try:
                leaked = frame_events(await asyncio.wait_for(ben.recv(), timeout=0.5))
            except TimeoutError:
                leaked = []
            return hello + got, leaked

    aiko_events, ben_events = run_async(scenario())
    assert aiko_events[0]["type"] == "hello"
    assert {e["type"] for e in aiko_events[1:]} == {"message", "conversation"}
    assert ben_events == []


def test_the_websocket_refuses_an_anonymous_connection(server, users):
    url = server.url.replace("http", "ws") + "/ws/"

    async def scenario() -> int | None:
        try:
            async with websockets.connect(url, additional_headers={"Origin": server.url}) as ws:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        return None

    assert run_async(scenario()) in (403, 4401)


def test_a_batch_of_bodies_announces_each_conversation_as_stored(
    server, channel, worker, users, events
):
    """The worker's bulk path builds its events from the rows it locked: what the browser is
    told must equal what a re-read of the database says."""
    from madoguchi.models import Conversation
    from madoguchi.queries.serialize import conversation_json
    from tests.helpers import post_webhook, text_payload

    now = int(time.time())
    post_webhook(server, channel, text_payload("447700900001", "Ada", "first", timestamp=now - 5))
    worker.run_until_idle()
    snoozed = Conversation.objects.get(identity__handle="447700900001")
    snoozed.status, snoozed.snoozed_until = "snoozed", timezone.now() + timedelta(hours=1)
    snoozed.save(update_fields=["status", "snoozed_until"])
    events.events.clear()
    for n, (wa_id, name) in enumerate(
        [("447700900001", "Ada"), ("447700900002", "Bo"), ("447700900001", "Ada")]
    ):
        body = text_payload(wa_id, name, f"message {n}", timestamp=now + n)
        assert post_webhook(server, channel, body).status_code == 200
    worker.run_until_idle()

    announced = {
        e["conversation"]["id"]: e["conversation"] for e, _ in events.of_type("conversation")
    }
    stored = Conversation.objects.select_related("channel", "contact", "identity", "assignee")
    assert len(announced) == 2
    for conversation in stored:
        assert announced[conversation.pk] == conversation_json(conversation)
    assert announced[snoozed.pk]["status"] == "open"
    assert announced[snoozed.pk]["unread_count"] == 3
    assert announced[snoozed.pk]["last_message_preview"] == "message 2"


def test_it_sends_a_socket_its_events_in_the_order_published_after_the_hello(server, users):
    """Events are encoded once and queued per socket: a burst from another thread arrives
    whole, in order, and after the hello."""
    from madoguchi.actions.users import do_create_token
    from madoguchi.realtime import publish

    token = do_create_token(None, users["aiko"], "ws")
    url = server.url.replace("http", "ws") + "/ws/"
    burst = [{"type": "probe", "n": n, "text": "x" * 200} for n in range(200)]

    async def scenario() -> list[dict]:
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}", "Origin": server.url}
        ) as ws:
            received = frame_events(await asyncio.wait_for(ws.recv(), timeout=10))

            def publish_burst() -> None:
                for event in burst:
                    publish.publish(event, [users["ben"].pk, users["aiko"].pk])

            await asyncio.to_thread(publish_burst)
            while len(received) < len(burst) + 1:
                received.extend(frame_events(await asyncio.wait_for(ws.recv(), timeout=10)))
            return received

    received = run_async(scenario())
    assert received[0]["type"] == "hello"
    assert received[1:] == burst


def test_it_names_the_redis_channels_after_the_database(settings):
    """Pub/sub ignores Redis database numbers: two deployments on one Redis server (databases 1
    and 2) must not hear each other's events or wake-ups."""
    from madoguchi.realtime import redisconn

    settings.REDIS_URL = "redis://127.0.0.1:6379/1"
    first = redisconn.channel_name("events")
    settings.REDIS_URL = "redis://127.0.0.1:6379/2"
    second = redisconn.channel_name("events")
    settings.REDIS_URL = "redis://127.0.0.1:6379"
    default = redisconn.channel_name("events")
    assert len({first, second, default}) == 3
    assert redisconn.channel_name("wakeup") != default


def test_it_replaces_the_queue_of_a_socket_that_stopped_reading_by_a_resync():
    """A client that no longer reads must not make the server hold its events forever."""
    from madoguchi.realtime.consumers import OUTBOX_MAX, EventsConsumer

    async def scenario() -> list[str]:
        stalled = asyncio.Event()
        sent: list[str] = []

        async def raw_send(message: dict) -> None:
            sent.append(message["text"])
            await stalled.wait()  # the client's window is full: the send never completes

        consumer = EventsConsumer()
        consumer.outbox, consumer.draining, consumer.raw_send = deque(), None, raw_send
        for n in range(OUTBOX_MAX + 10):
            consumer.push(json.dumps({"type": "probe", "n": n}))
            await asyncio.sleep(0)
        queued = list(consumer.outbox)
        consumer.draining.cancel()
        return sent + queued

    frames = [event for text in run_async(scenario()) for event in frame_events(text)]
    assert frames[0] == {"type": "probe", "n": 0}  # being sent when the client stalled
    resync = frames.index({"type": "resync"})
    assert len(frames) - 1 <= OUTBOX_MAX + 1
    assert [f["n"] for f in frames[resync + 1 :]] == list(
        range(frames[resync + 1]["n"], OUTBOX_MAX + 10)
    )


def test_events_waiting_together_for_a_socket_leave_in_one_frame_in_order():
    """A burst costs one frame per socket; a lone event still goes alone, as an object."""
    from madoguchi.realtime.consumers import EventsConsumer

    async def scenario() -> list[str]:
        sent: list[str] = []

        async def raw_send(message: dict) -> None:
            sent.append(message["text"])

        consumer = EventsConsumer()
        consumer.outbox, consumer.draining, consumer.raw_send = deque(), None, raw_send
        for n in range(5):  # pushed before the socket's drain task gets to run
            consumer.push(json.dumps({"type": "probe", "n": n}))
        await consumer.draining
        consumer.push(json.dumps({"type": "probe", "n": 5}))
        await consumer.draining
        return sent

    burst, alone = run_async(scenario())
    assert json.loads(burst) == [{"type": "probe", "n": n} for n in range(5)]
    assert json.loads(alone) == {"type": "probe", "n": 5}
