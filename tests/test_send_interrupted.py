"""A send interrupted after the platform accepted it (the worker died before recording the
answer): WhatsApp has no idempotency key, so the retry sends it again, and the message says so."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from madoguchi.models import AuditEvent, Job, Message
from tests.helpers import run_worker_until

CUSTOMER = "819012345679"


class WorkerDied(BaseException):
    """Stands for SIGKILL: not an Exception, so the worker's error handling never sees it."""


@pytest.fixture
def conversation(sim, worker, users):
    from madoguchi.actions.conversations import check_claim
    from madoguchi.models import Conversation

    sim.customer_sends(CUSTOMER, "Ren", "hello")
    worker.run_until_idle()
    return check_claim(users["aiko"], Conversation.objects.get(identity__handle=CUSTOMER))


def test_it_marks_a_message_resent_after_an_attempt_that_reached_the_platform(
    sim, worker, users, conversation, monkeypatch
):
    from madoguchi.actions import outbound
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.tasks import SENDING

    message = check_send_text(users["aiko"], conversation, "once, we hope")
    original = outbound.do_commit_platform_id

    def die(*args, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(outbound, "do_commit_platform_id", die)
    with pytest.raises(WorkerDied):
        worker.run_until_idle()
    job = Job.objects.get(kind="send_message")
    assert job.last_error == SENDING
    assert len(sim.sent_to(CUSTOMER)) == 1
    assert Message.objects.get(pk=message.pk).status == "queued"

    monkeypatch.setattr(outbound, "do_commit_platform_id", original)
    Job.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")

    sent = [s.body["text"]["body"] for s in sim.sent_to(CUSTOMER)]
    assert sent == ["once, we hope", "once, we hope"]  # the double is real, and not silent:
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
    assert message.platform_message_id == sim.sent_to(CUSTOMER)[1].wamid
    audit = AuditEvent.objects.get(action="message.sent", message=message)
    assert audit.data.get("maybe_sent_twice") is True


def test_it_does_not_mark_a_send_that_was_not_interrupted(sim, worker, users, conversation):
    from madoguchi.actions.outbound import check_send_text

    message = check_send_text(users["aiko"], conversation, "plain")
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    message.refresh_from_db()
    assert "maybe_sent_twice" not in message.data
    assert len(sim.sent_to(CUSTOMER)) == 1
    assert not Job.objects.filter(kind="send_message").exists()


def test_it_marks_a_message_resent_after_a_timeout(sim, worker, users, conversation, settings):
    """Whether the platform accepted a request whose answer timed out cannot be known (this
    simulator drops it, as the client hung up before it read the body; the platform may not):
    the retry is marked either way."""
    from madoguchi.actions.outbound import check_send_text
    from tests.helpers import PHONE_NUMBER_ID

    settings.HTTP_TIMEOUT_SECONDS = 0.3
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("timeout", 1.0)])
    message = check_send_text(users["aiko"], conversation, "slow")
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
    assert 1 <= len(sim.sent_to(CUSTOMER)) <= 2


def test_the_mark_lands_with_the_platform_id_when_the_retrying_worker_dies_too(
    sim, worker, users, conversation, monkeypatch
):
    """Two kills in a row: the first after the platform accepted the send, the second after
    the retry's platform id was committed but before its audit row. The retry's job then finds
    the id and never comes back: the double must already be marked."""
    from madoguchi.actions import outbound
    from madoguchi.actions.outbound import check_send_text

    message = check_send_text(users["aiko"], conversation, "twice, alas")
    original = outbound.do_commit_platform_id

    def die(*args, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(outbound, "do_commit_platform_id", die)
    with pytest.raises(WorkerDied):
        worker.run_until_idle()

    def commit_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise WorkerDied

    monkeypatch.setattr(outbound, "do_commit_platform_id", commit_then_die)
    Job.objects.filter(kind="send_message").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(WorkerDied):
        worker.run_until_idle()

    assert len(sim.sent_to(CUSTOMER)) == 2
    message.refresh_from_db()
    assert message.platform_message_id == sim.sent_to(CUSTOMER)[1].wamid
    assert message.data.get("maybe_sent_twice") is True
