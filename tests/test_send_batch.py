"""Sends claimed together run as one batch (tasks.send_messages): per-recipient order, pacing,
failures, and the statements a send costs."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from madoguchi.models import AuditEvent, Job, Message
from madoguchi.tasks import SENDING
from tests.helpers import PHONE_NUMBER_ID, SECOND_NUMBER_ID, WABA_ID, run_worker_until

CUSTOMERS = ["819011110001", "819011110002", "819011110003"]


@pytest.fixture
def conversations(sim, worker, users):
    """Three customers wrote; Aiko owns their conversations."""
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    for n, wa_id in enumerate(CUSTOMERS):
        sim.customer_sends(wa_id, f"Customer {n}", "hello")
    worker.run_until_idle()
    return [
        check_claim(users["aiko"], Conversation.objects.get(identity__handle=wa_id))
        for wa_id in CUSTOMERS
    ]


def queue_interleaved(users, conversations, per_recipient: int) -> dict[str, list[int]]:
    """``per_recipient`` texts to each conversation, queued round-robin; ids by recipient."""
    from madoguchi.actions.outbound import check_send_text

    queued: dict[str, list[int]] = {wa_id: [] for wa_id in CUSTOMERS}
    for i in range(per_recipient):
        for wa_id, conversation in zip(CUSTOMERS, conversations, strict=True):
            message = check_send_text(users["aiko"], conversation, f"{wa_id} #{i}")
            queued[wa_id].append(message.pk)
    return queued


def test_it_keeps_each_recipients_order_and_the_numbers_pace_in_batches(
    sim, server, worker, users, conversations, events
):
    sim.simulator.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number="15550783881",
        access_token="test-access-token",
        app_secret="test-app-secret-0123456789",
        webhook_url=f"{server.url}{sim.channel.webhook_path}",
        mps=10,
    )
    sim.channel.outbound_mps = 10
    sim.channel.save(update_fields=["outbound_mps"])
    queued = queue_interleaved(users, conversations, per_recipient=4)
    ids = [pk for pks in queued.values() for pk in pks]
    run_worker_until(
        worker,
        lambda: (
            not Message.objects.filter(pk__in=ids)
            .exclude(status__in=["sent", "delivered", "read"])
            .exists()
        ),
        timeout=30,
    )
    for wa_id in CUSTOMERS:
        texts = [s.body["text"]["body"] for s in sim.sent_to(wa_id)]
        assert texts == [f"{wa_id} #{i}" for i in range(4)]  # in order, each once
    errors = sim.simulator.stats()["errors_by_code"]
    assert not errors.get(130429) and not errors.get("130429")  # paced across the batch
    assert AuditEvent.objects.filter(action="message.sent", message_id__in=ids).count() == 12
    updates = [e for e, _r in events.of_type("message") if e["op"] == "update"]
    assert {e["message"]["id"] for e in updates if e["message"]["status"] == "sent"} == set(ids)
    assert not Job.objects.filter(kind="send_message").exists()


def test_it_records_a_permanent_failure_and_sends_the_rest_of_the_batch(
    sim, worker, users, conversations
):
    queued = queue_interleaved(users, conversations, per_recipient=1)
    # the batch's first send (the first queued) is refused for good
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("graph", 131026)])
    worker.run_once()  # one claim: the three sends are one batch
    failed = Message.objects.get(pk=queued[CUSTOMERS[0]][0])
    assert failed.status == "failed" and failed.error_code == 131026
    assert AuditEvent.objects.filter(action="message.failed", message=failed).exists()
    for wa_id in CUSTOMERS[1:]:
        message = Message.objects.get(pk=queued[wa_id][0])
        assert message.status == "sent"
        assert message.platform_message_id == sim.sent_to(wa_id)[0].wamid
    assert sim.sent_to(CUSTOMERS[0]) == []
    assert not Job.objects.filter(kind="send_message").exists()


def test_it_holds_the_rest_of_a_batch_when_the_number_is_out_of_throughput(
    sim, worker, users, conversations
):
    queued = queue_interleaved(users, conversations, per_recipient=1)
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("graph", 130429)])
    worker.run_once()
    # the first was refused for the number; the others were not sent into the refusal
    assert sim.sent_to() == []
    jobs = list(Job.objects.filter(kind="send_message").order_by("id"))
    assert len(jobs) == 3
    assert all(job.lease_until is None for job in jobs)
    assert [job.attempts for job in jobs] == [1, 0, 0]  # waiting on the number is no failure
    assert (
        Message.objects.filter(status="queued", pk__in=[q[0] for q in queued.values()]).count() == 3
    )


def test_it_costs_few_statements_per_send_in_a_batch(sim, worker, users, conversations):
    queued = queue_interleaved(users, conversations, per_recipient=1)
    with CaptureQueriesContext(connection) as queries:
        worker.run_once()
    assert (
        Message.objects.filter(pk__in=[q[0] for q in queued.values()], status="sent").count() == 3
    )
    sends = [
        q
        for q in queries.captured_queries
        if "platform_message_id" in q["sql"] and q["sql"].startswith(("UPDATE", "WITH"))
    ]
    assert len(sends) == 3  # the platform id, committed once per send
    marks = [q for q in queries.captured_queries if "SET last_error = 'sending" in q["sql"]]
    assert len(marks) == 3  # the SENDING mark, just before each call
    # one send alone took ~11 statements (plus transaction control); the batch shares its own
    # (15 at most: on PostgreSQL the number's first reservation also creates its pacing row),
    # and each send costs two, each committing by itself: its SENDING mark and its platform id
    statements = [
        q
        for q in queries.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE", "BEGIN", "COMMIT"))
    ]
    assert len(statements) <= 2 * 3 + 15, "\n".join(q["sql"][:100] for q in statements)


def test_a_number_waiting_for_the_platform_does_not_hold_another_numbers_sends(
    sim, second_number, worker, users, conversations, monkeypatch
):
    """Sends to different numbers overlap, one call in flight per number: the second number's
    send goes while the first number's call still waits for its answer."""
    from madoguchi.actions.conversations import check_claim
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.models import Conversation
    from madoguchi.providers.whatsapp import WhatsAppProvider

    sim.simulator.customer_sends(SECOND_NUMBER_ID, "819022220001", "Customer B", "hello")
    worker.run_until_idle()
    other = check_claim(users["aiko"], Conversation.objects.get(channel=second_number))
    first = check_send_text(users["aiko"], conversations[0], "on the first number")
    then = check_send_text(users["aiko"], other, "on the second number")
    second_sent = threading.Event()
    send_text = WhatsAppProvider.send_text

    def slow_on_the_first_number(provider, to, text, **kwargs):
        if text == "on the first number":
            assert second_sent.wait(10), "the second number's send waited for the first's answer"
        sent = send_text(provider, to, text, **kwargs)
        if text == "on the second number":
            second_sent.set()
        return sent

    monkeypatch.setattr(WhatsAppProvider, "send_text", slow_on_the_first_number)
    worker.run_once()
    assert Message.objects.get(pk=first.pk).status == "sent"
    assert Message.objects.get(pk=then.pk).status == "sent"
    assert len(sim.simulator.sent_to(SECOND_NUMBER_ID, "819022220001")) == 1
    assert not Job.objects.filter(kind="send_message").exists()


class WorkerDied(BaseException):
    """Stands for SIGKILL: not an Exception, so the worker's error handling never sees it."""


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_batch_retried_after_a_kill_sends_nothing_twice(
    sim, worker, users, conversations, monkeypatch, killed_at
):
    """Killed right after the platform accepted the batch's ``killed_at``-th send, before its
    platform id was committed: that send carries the SENDING mark (written just before its
    call), so its retry waits for the receipt, which records it (not sent again); the sends
    after it were not marked and go at once; nothing is marked maybe_sent_twice."""
    from datetime import timedelta

    from django.utils import timezone

    from madoguchi.actions import outbound

    queued = queue_interleaved(users, conversations, per_recipient=1)
    original = outbound.do_commit_platform_id
    calls = []

    def die_at_the_nth(*args, **kwargs):
        calls.append(args)
        if len(calls) == killed_at:
            raise WorkerDied
        original(*args, **kwargs)

    monkeypatch.setattr(outbound, "do_commit_platform_id", die_at_the_nth)
    with pytest.raises(WorkerDied):
        worker.run_once()
    monkeypatch.setattr(outbound, "do_commit_platform_id", original)
    Job.objects.filter(kind="send_message").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert len(sim.sent_to()) == killed_at
    in_flight = Message.objects.get(text=sim.sent_to()[-1].body["text"]["body"]).pk
    jobs = {job.args["message_id"]: job for job in Job.objects.filter(kind="send_message")}
    assert jobs[in_flight].last_error.startswith(SENDING)
    assert not any(job.last_error for pk, job in jobs.items() if pk != in_flight)
    ids = [pks[0] for pks in queued.values()]
    run_worker_until(
        worker,
        lambda: (
            not Message.objects.filter(pk__in=ids, status="queued").exists()
            and not Job.objects.filter(kind="send_message").exists()
        ),
    )
    for wa_id in CUSTOMERS:
        assert len(sim.sent_to(wa_id)) == 1
    for message in Message.objects.filter(pk__in=ids):
        assert (
            message.platform_message_id
            == sim.sent_to(message.conversation.identity.handle)[0].wamid
        )
        assert "maybe_sent_twice" not in message.data
    assert Message.objects.get(pk=in_flight).data.get("platform_id_from_receipt")


@pytest.mark.parametrize("burst", [0.25, 0.0])
def test_the_pace_makes_up_at_most_the_burst_of_throughput_that_went_unused(
    channel, settings, burst
):
    """The pace is a token bucket: slots that passed unused (every worker busy, or the one that
    reserved them killed) may be taken for PACING_BURST_SECONDS back, sent at once; beyond
    that, at the number's rate. 0 paces strictly from now."""
    import time

    from madoguchi.models import Throttle
    from madoguchi.tasks import reserve_send_slots

    settings.PACING_BURST_SECONDS = burst
    channel.outbound_mps = 80
    before = time.time()
    slots = reserve_send_slots(channel, 200)  # the number was idle: next_free is long past
    after = time.time()
    interval = 1 / 80
    assert slots == sorted(slots)
    assert all(abs(b - a - interval) < 1e-6 for a, b in itertools.pairwise(slots))
    assert before - burst <= slots[0] <= after - burst
    # the slots already due are the burst's, and the one of now
    assert len([s for s in slots if s <= before]) <= int(burst / interval) + 1
    assert slots[-1] <= after + 1.0  # never more than MAX_PACING_SLEEP ahead
    throttle = Throttle.objects.get(name=f"channel:{channel.pk}")
    assert throttle.next_free == pytest.approx(slots[-1] + interval)

    # slots reserved and left unused a moment ago (a killed worker's) are made up, within it
    unused_since = time.time() - 0.1
    Throttle.objects.filter(pk=throttle.pk).update(next_free=unused_since)
    [made_up] = reserve_send_slots(channel, 1)
    assert made_up == pytest.approx(max(unused_since, time.time() - burst), abs=0.01)


def test_reservations_on_a_number_follow_each_other_up_to_the_horizon(channel):
    """Each reservation starts where the last one ended (on PostgreSQL the batch path reserves in
    one statement once the number has its row); nothing is reserved, and nothing changes, while
    the number is taken further ahead than MAX_PACING_SLEEP."""
    import time

    from madoguchi.models import Throttle
    from madoguchi.tasks import MAX_PACING_SLEEP, reserve_send_slots

    channel.outbound_mps = 80
    interval = 1 / 80
    first = reserve_send_slots(channel, 10)  # the number's first: its row is created
    second = reserve_send_slots(channel, 10)
    assert len(first) == len(second) == 10
    assert second[0] == pytest.approx(first[-1] + interval)
    assert all(abs(b - a - interval) < 1e-6 for a, b in itertools.pairwise(second))
    throttle = Throttle.objects.get(name=f"channel:{channel.pk}")
    assert throttle.next_free == pytest.approx(second[-1] + interval)

    rest = reserve_send_slots(channel, 1000)
    assert 0 < len(rest) < 1000
    assert rest[0] == pytest.approx(second[-1] + interval)
    assert rest[-1] <= time.time() + MAX_PACING_SLEEP
    throttle.refresh_from_db()
    held = throttle.next_free
    assert held == pytest.approx(rest[-1] + interval)
    assert reserve_send_slots(channel, 5) == []
    throttle.refresh_from_db()
    assert throttle.next_free == held
