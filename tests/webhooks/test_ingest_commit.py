"""The webhook path's group commit (views/webhooks.py ``RawEventWriter``): a 200 only after the
request's own body is committed, a 503 and nothing stored when the commit fails."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import DatabaseError, connection

from madoguchi.models import RawEvent
from madoguchi.realtime import wakeup
from madoguchi.views import webhooks
from tests.helpers import compact, post_webhook, text_payload


def test_each_webhook_is_answered_only_after_its_own_body_is_committed(
    server, channel, monkeypatch
):
    real_store = webhooks.store_raw_events
    committed: list[bytes] = []
    batches: list[int] = []
    first_commit_started = threading.Event()

    def slow_store(rows: list[tuple[int, bytes]]) -> None:
        batches.append(len(rows))
        first_commit_started.set()
        time.sleep(0.3)  # a slow commit: what arrives meanwhile waits for the next one
        real_store(rows)
        committed.extend(body for _channel, body in rows)

    monkeypatch.setattr(webhooks, "store_raw_events", slow_store)
    bodies = [compact(text_payload("16505551234", "Sheena", f"hi {i}")) for i in range(6)]

    def post(body: bytes) -> tuple[int, bool]:
        response = post_webhook(server, channel, None, raw=body)
        return response.status_code, body in committed  # read when the answer arrives

    with ThreadPoolExecutor(len(bodies)) as pool:
        first = pool.submit(post, bodies[0])
        assert first_commit_started.wait(10)
        rest = list(pool.map(post, bodies[1:]))  # sent while the first commit is under way
    assert [first.result(), *rest] == [(200, True)] * len(bodies)
    assert batches[0] == 1 and sum(batches) == len(bodies)
    assert sorted(bytes(e.body) for e in RawEvent.objects.all()) == sorted(bodies)


def test_a_failed_commit_answers_503_and_stores_nothing_of_its_batch(server, channel, monkeypatch):
    real_store = webhooks.store_raw_events

    def failing_store(rows: list[tuple[int, bytes]]) -> None:
        def written_then_failed(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
            execute(sql, params, many, context)  # the rows are written...
            raise DatabaseError("disk I/O error")  # ...but the transaction never commits

        with connection.execute_wrapper(written_then_failed):
            real_store(rows)

    monkeypatch.setattr(webhooks, "store_raw_events", failing_store)
    response = post_webhook(server, channel, text_payload("16505551234", "Sheena", "lost?"))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert RawEvent.objects.count() == 0

    monkeypatch.setattr(webhooks, "store_raw_events", real_store)
    body = compact(text_payload("16505551234", "Sheena", "again"))
    assert post_webhook(server, channel, None, raw=body).status_code == 200
    assert [bytes(e.body) for e in RawEvent.objects.all()] == [body]


def test_a_stored_body_wakes_the_worker(server, channel, monkeypatch):
    monkeypatch.setattr(wakeup, "local_event", threading.Event())
    response = post_webhook(server, channel, text_payload("16505551234", "Sheena", "wake"))
    assert response.status_code == 200
    assert wakeup.local_event.is_set()


def test_stored_rows_carry_the_models_defaults(server, channel):
    body = compact(text_payload("16505551234", "Sheena", "defaults"))
    assert post_webhook(server, channel, None, raw=body).status_code == 200
    event = RawEvent.objects.get()
    assert (event.channel_id, bytes(event.body)) == (channel.pk, body)
    assert event.received_at is not None and event.received_at.tzinfo is not None
    assert (event.processed_at, event.attempts, event.lease_until) == (None, 0, None)
    assert (event.claimed_by, event.error) == ("", "")
