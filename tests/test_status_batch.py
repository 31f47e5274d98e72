"""Receipts on the worker's busy path (do_apply_batch): applied in bulk with the same outcome as
one by one (statuses, audit rows, events), in a constant number of queries; receipts for
messages not known yet still wait, and a reference still reconciles."""

from __future__ import annotations

import time
from itertools import count
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from madoguchi.queries.threads import send_reference
from tests.helpers import (
    ACCESS_TOKEN,
    APP_SECRET,
    VERIFY_TOKEN,
    WABA_ID,
    compact,
    envelope,
    free_port,
)

_ids = count(1)
TWIN_KEYS = {"id", "platform_id", "created_at"}  # what differs between twins
FAILED = [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]


@pytest.fixture
def setup(db: None, users: dict[str, Any]) -> dict[str, Any]:
    """Two WhatsApp numbers of one account (one visible to all, one to its team only), a
    customer who wrote to each, and Aiko owning both conversations."""
    from madoguchi.actions.channels import do_create_channel
    from madoguchi.actions.inbound import do_receive_messages
    from madoguchi.models import Team
    from madoguchi.providers.base import InboundMessage

    team = Team.objects.create(name="Osaka")
    users["aiko"].teams.add(team)
    channels = []
    conversations = []
    for n, (visibility, channel_team) in enumerate([("all", None), ("team", team)]):
        channel = do_create_channel(
            None,
            kind="whatsapp",
            name=f"Line {n}",
            business_handle=f"20{n}000",
            account_handle=WABA_ID,
            display_handle=f"+1555100{n}",
            api_base=f"http://127.0.0.1:{free_port()}",
            secrets={
                "access_token": ACCESS_TOKEN,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN,
            },
            visibility=visibility,
            team=channel_team,
        )
        from django.utils import timezone

        [message] = do_receive_messages(
            channel,
            [
                InboundMessage(
                    platform_message_id=f"wamid.in{next(_ids)}",
                    business_handle=channel.business_handle,
                    sender_handle=f"44770020{n:04d}",
                    sender_name="Customer",
                    timestamp=timezone.now(),
                    kind="text",
                    text="hello",
                )
            ],
        )
        conversation = message.conversation
        conversation.assignee = users["aiko"]
        conversation.save(update_fields=["assignee"])
        channels.append(channel)
        conversations.append(conversation)
    return {"channels": channels, "conversations": conversations, "users": users}


def sent_messages(setup: dict[str, Any], how_many: int, prefix: str) -> list[Any]:
    """``how_many`` texts Aiko sent, spread over both numbers, each with its platform id."""
    from madoguchi.models import Message

    return [
        Message.objects.create(
            conversation=setup["conversations"][n % 2],
            channel=setup["channels"][n % 2],
            direction="out",
            kind="text",
            text=f"reply {n}",
            author=setup["users"]["aiko"],
            status="sent" if n % 3 else "queued",
            platform_message_id=f"wamid.{prefix}{n}",
        )
        for n in range(how_many)
    ]


def store_statuses(items: list[tuple[Any, str]], **extra: Any) -> Any:
    """One webhook body with a receipt for each ``(message, status)``, in that order (the
    messages of one channel), stored as the webhook view stores it."""
    from django.utils import timezone

    from madoguchi.models import RawEvent

    first = items[0][0]
    body = envelope(
        {
            "statuses": [
                {
                    "id": message.platform_message_id,
                    "status": status,
                    "timestamp": str(int(time.time())),
                    "recipient_id": message.conversation.identity.handle,
                    **extra,
                }
                for message, status in items
            ]
        },
        phone_number_id=first.channel.business_handle,
    )
    return RawEvent.objects.create(
        channel_id=first.channel_id, body=compact(body), received_at=timezone.now()
    )


def store_status(message: Any, status: str, **extra: Any) -> None:
    """A webhook body with one receipt for ``message``, stored as the webhook view stores it."""
    store_statuses([(message, status)], **extra)


def receipts(n: int) -> list[tuple[str, dict[str, Any]]]:
    """What message ``n`` receives, in order: the usual ticks, a failure, a late or repeated
    receipt (which change nothing)."""
    plans = [
        [("sent", {}), ("delivered", {}), ("read", {})],
        [("delivered", {}), ("read", {}), ("delivered", {})],
        [("sent", {}), ("failed", {"errors": FAILED})],
        [("read", {}), ("failed", {"errors": FAILED})],
        [("sent", {}), ("sent", {})],
    ]
    return plans[n % len(plans)]


def run_batch(worker: Any, on_commit: Any) -> int:
    """Claim and apply what is due with the commit hooks run; returns the number of queries."""
    with on_commit(execute=True), CaptureQueriesContext(connection) as ctx:
        worker.process_raw_events(worker.claim_raw_events(limit=250))
    return len(ctx.captured_queries)


def outcome(messages: list[Any], events: Any) -> list[dict[str, Any]]:
    """Each message's final state, audit rows and events, without what differs between twins."""
    from madoguchi.models import AuditEvent, Message

    published = events.of_type("message")
    result = []
    for message in messages:
        row = Message.objects.get(pk=message.pk)
        result.append(
            {
                "state": (
                    row.status,
                    row.error_code,
                    row.error_title,
                    row.error_details,
                    row.data,
                ),
                "audit": list(
                    AuditEvent.objects.filter(message=row)
                    .order_by("id")
                    .values_list("action", "data", "conversation_id")
                ),
                "events": [
                    (
                        event["op"],
                        event["conversation_id"],
                        event["assignee_id"],
                        {k: v for k, v in event["message"].items() if k not in TWIN_KEYS},
                        sorted(recipients),
                    )
                    for event, recipients in published
                    if event["message"]["id"] == row.pk
                ],
            }
        )
    return result


def test_it_applies_receipts_in_bulk_as_it_would_one_by_one(
    setup, worker, events, django_capture_on_commit_callbacks
):
    from madoguchi.actions.outbound import do_apply_status
    from madoguchi.models import RawEvent
    from madoguchi.providers.whatsapp_wire import parse_webhook

    bulk = sent_messages(setup, 10, "bulk")
    single = sent_messages(setup, 10, "single")
    for n, message in enumerate(bulk):
        for status, extra in receipts(n):
            store_status(message, status, **extra)
    run_batch(worker, django_capture_on_commit_callbacks)
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()
    bulk_outcome = outcome(bulk, events)
    events.events.clear()

    # the same receipts for the twins, through the single path (as a lone body would go)
    for n, message in enumerate(single):
        for status, extra in receipts(n):
            store_status(message, status, **extra)
    raws = list(RawEvent.objects.filter(processed_at__isnull=True).order_by("id"))
    with django_capture_on_commit_callbacks(execute=True):
        for raw in raws:
            [update] = parse_webhook(bytes(raw.body))
            channel = next(c for c in setup["channels"] if c.pk == raw.channel_id)
            do_apply_status(channel, update)
    assert outcome(single, events) == bulk_outcome
    assert {o["state"][0] for o in bulk_outcome} == {"read", "failed", "sent"}


def test_it_applies_receipts_in_a_constant_number_of_queries(
    setup, worker, events, django_capture_on_commit_callbacks
):
    from madoguchi.models import Message, RawEvent

    few = sent_messages(setup, 5, "few")
    for message in few:
        store_status(message, "delivered")
    five = run_batch(worker, django_capture_on_commit_callbacks)
    many = sent_messages(setup, 50, "many")
    for message in many:
        store_status(message, "delivered")
    fifty = run_batch(worker, django_capture_on_commit_callbacks)
    assert five == fifty
    # claim (2), channels, messages, UPDATE, audit rows, audience, processed, plus savepoints
    assert fifty <= 11
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()
    assert Message.objects.filter(status="delivered").count() == 55


def test_a_receipt_for_an_unknown_message_still_waits_and_a_reference_still_reconciles(
    setup, worker, events, django_capture_on_commit_callbacks
):
    from madoguchi.models import AuditEvent, Message, RawEvent

    [known, later, adopted] = sent_messages(setup, 3, "mixed")
    Message.objects.filter(pk__in=[later.pk, adopted.pk]).update(
        platform_message_id=None, status="queued"
    )
    store_status(known, "delivered")
    later.platform_message_id = "wamid.not-recorded-yet"
    store_status(later, "delivered")
    adopted.platform_message_id = "wamid.killed-attempt"
    store_status(adopted, "sent", biz_opaque_callback_data=send_reference(adopted.pk))
    run_batch(worker, django_capture_on_commit_callbacks)

    assert Message.objects.get(pk=known.pk).status == "delivered"
    row = Message.objects.get(pk=adopted.pk)
    assert (row.status, row.platform_message_id) == ("sent", "wamid.killed-attempt")
    assert AuditEvent.objects.filter(action="message.sent", message=row).exists()
    waiting = RawEvent.objects.get(processed_at__isnull=True)  # retried later, not lost
    assert waiting.lease_until is not None and "not stored yet" in waiting.error

    # the send's answer is recorded; the receipt applies on its next try
    Message.objects.filter(pk=later.pk).update(
        platform_message_id="wamid.not-recorded-yet", status="sent"
    )
    RawEvent.objects.filter(pk=waiting.pk).update(lease_until=None)
    run_batch(worker, django_capture_on_commit_callbacks)
    assert Message.objects.get(pk=later.pk).status == "delivered"
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()


def test_a_body_with_a_customer_message_and_a_receipt_is_applied_in_the_batch(
    setup, worker, events, django_capture_on_commit_callbacks, monkeypatch
):
    from django.utils import timezone

    from madoguchi.models import Message, RawEvent

    [reply] = sent_messages(setup, 1, "mixed-body")
    handle = reply.conversation.identity.handle
    body = envelope(
        {
            "contacts": [{"profile": {"name": "Customer"}, "wa_id": handle}],
            "messages": [
                {
                    "from": handle,
                    "id": "wamid.in-mixed",
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": "thanks!"},
                }
            ],
            "statuses": [
                {
                    "id": reply.platform_message_id,
                    "status": "read",
                    "timestamp": str(int(time.time())),
                    "recipient_id": handle,
                }
            ],
        },
        phone_number_id=reply.channel.business_handle,
    )
    RawEvent.objects.create(
        channel_id=reply.channel_id, body=compact(body), received_at=timezone.now()
    )
    monkeypatch.setattr(worker, "process_raw_event", lambda raw: pytest.fail("not in bulk"))
    run_batch(worker, django_capture_on_commit_callbacks)
    assert Message.objects.get(pk=reply.pk).status == "read"
    assert Message.objects.get(platform_message_id="wamid.in-mixed").direction == "in"
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()


def test_two_bodies_naming_the_same_messages_in_other_orders_apply_whole(
    setup, transactional_db, monkeypatch
):
    """Two workers apply, one event at a time (the single path), two bodies whose receipts name
    the same two messages in opposite orders, each pausing after its first event until the
    other has applied its own. Locked in each body's order, that is a deadlock on PostgreSQL:
    one receipt refused after a second's wait, and lost. Locked in id order up front, the
    second worker waits for the first (the pause gives up) and both bodies apply whole."""
    import threading

    from django.db import connection as default_connection

    from madoguchi.actions import inbound
    from madoguchi.models import Message, RawEvent
    from madoguchi.providers.registry import provider_for

    one, _other_number, two = sent_messages(setup, 3, "order")  # one and two: the same number
    bodies = [
        store_statuses([(one, "delivered"), (two, "delivered")]),
        store_statuses([(two, "read"), (one, "read")]),
    ]
    both_applied_one = threading.Barrier(2, timeout=1.0)
    applying = inbound.apply_event
    local = threading.local()

    def apply_then_pause(*args: Any, **kwargs: Any) -> None:
        applying(*args, **kwargs)
        if not getattr(local, "paused", False):
            local.paused = True
            try:
                both_applied_one.wait()
            except threading.BrokenBarrierError:
                pass  # the other is waiting for our locks

    monkeypatch.setattr(inbound, "apply_event", apply_then_pause)
    errors: list[BaseException] = []

    def process(raw: Any) -> None:
        try:
            events = provider_for(setup["channels"][0]).parse_webhook(bytes(raw.body))
            inbound.do_process_raw_event(raw, events)
        except BaseException as exc:
            errors.append(exc)
        finally:
            default_connection.close()

    threads = [threading.Thread(target=process, args=(raw,)) for raw in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert list(RawEvent.objects.filter(pk__in=[b.pk for b in bodies]).values_list("error")) == [
        ("",),
        ("",),
    ]
    assert not RawEvent.objects.filter(pk__in=[b.pk for b in bodies], processed_at=None).exists()
    assert set(
        Message.objects.filter(pk__in=[one.pk, two.pk]).values_list("status", flat=True)
    ) == {"read"}


def test_a_body_the_database_asks_to_try_again_is_retried_whole(setup, monkeypatch):
    """A deadlock (or a serialization failure) refuses a statement for the moment only: the
    body is rolled back and retried later, not stored as processed with that receipt lost."""
    import psycopg
    from django.db import OperationalError

    from madoguchi.actions import inbound
    from madoguchi.actions.inbound import RetryLater, do_process_raw_event
    from madoguchi.models import Message
    from madoguchi.providers.registry import provider_for

    one, _other_number, two = sent_messages(setup, 3, "again")
    raw = store_statuses([(one, "delivered"), (two, "delivered")])
    events = provider_for(setup["channels"][0]).parse_webhook(bytes(raw.body))
    applying = inbound.apply_event
    calls = count()

    def second_one_deadlocks(*args: Any, **kwargs: Any) -> None:
        if next(calls) == 1:
            try:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            except psycopg.Error as exc:
                raise OperationalError(str(exc)) from exc
        applying(*args, **kwargs)

    monkeypatch.setattr(inbound, "apply_event", second_one_deadlocks)
    with pytest.raises(RetryLater, match="deadlock detected"):
        do_process_raw_event(raw, events)
    raw.refresh_from_db()
    assert (raw.processed_at, raw.error) == (None, "")
    assert set(
        Message.objects.filter(pk__in=[one.pk, two.pk]).values_list("status", flat=True)
    ) == {"sent", "queued"}  # the first receipt was rolled back with the body

    do_process_raw_event(raw, events)  # tried again
    raw.refresh_from_db()
    assert raw.processed_at is not None and raw.error == ""
    assert set(
        Message.objects.filter(pk__in=[one.pk, two.pk]).values_list("status", flat=True)
    ) == {"delivered"}
