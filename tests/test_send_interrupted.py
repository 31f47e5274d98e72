"""A send interrupted after the platform accepted it (the worker died before recording the
answer): WhatsApp has no idempotency key. Each send carries its message's reference
(biz_opaque_callback_data), which the platform echoes in its receipts: the retry waits for a
receipt naming the message (its platform id is then recorded, nothing sent again); without one
it sends again after the wait, and the message says so."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from madoguchi.models import AuditEvent, Job, Message, RawEvent
from madoguchi.queries.threads import send_reference
from tests.helpers import PHONE_NUMBER_ID, post_webhook, run_worker_until, status_payload

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


def killed_after_the_platform_accepted(worker, monkeypatch) -> Job:
    """Run the worker until it dies right after the platform's answer, before the platform id is
    committed; then let its claim run out. Returns the send job, as the next worker finds it."""
    from madoguchi.actions import outbound

    original = outbound.do_commit_platform_id

    def die(*args, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(outbound, "do_commit_platform_id", die)
    with pytest.raises(WorkerDied):
        worker.run_until_idle()
    monkeypatch.setattr(outbound, "do_commit_platform_id", original)
    Job.objects.filter(kind="send_message").update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    return Job.objects.get(kind="send_message")


def the_wait_is_over(settings) -> None:
    """SEND_RECONCILE_SECONDS have passed since the interrupted attempt (without a receipt)."""
    settings.SEND_RECONCILE_SECONDS = 0
    Job.objects.filter(kind="send_message").update(run_at=timezone.now())


def test_it_sends_again_and_marks_a_message_whose_interrupted_attempt_no_receipt_names(
    sim, worker, users, conversation, monkeypatch, settings
):
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.tasks import SENDING

    sim.simulator.auto_statuses = False  # the receipts of the first attempt never come
    message = check_send_text(users["aiko"], conversation, "once, we hope")
    job = killed_after_the_platform_accepted(worker, monkeypatch)
    assert job.last_error.startswith(SENDING)
    assert len(sim.sent_to(CUSTOMER)) == 1
    assert Message.objects.get(pk=message.pk).status == "queued"

    before = timezone.now()
    worker.run_once()  # the attempt is recent: its receipt may be on its way
    assert len(sim.sent_to(CUSTOMER)) == 1
    waiting = Job.objects.get(pk=job.pk)
    assert waiting.attempts == job.attempts  # waiting is no failure
    assert waiting.run_at > before and waiting.last_error == job.last_error
    assert Message.objects.get(pk=message.pk).status == "queued"

    the_wait_is_over(settings)
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")

    sent = [s.body["text"]["body"] for s in sim.sent_to(CUSTOMER)]
    assert sent == ["once, we hope", "once, we hope"]  # the double is real, and not silent:
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
    assert message.platform_message_id == sim.sent_to(CUSTOMER)[1].wamid
    audit = AuditEvent.objects.get(action="message.sent", message=message)
    assert audit.data.get("maybe_sent_twice") is True


def test_it_records_the_platform_id_from_a_receipt_instead_of_sending_again(
    sim, worker, users, conversation, monkeypatch, events
):
    from madoguchi.actions.outbound import check_send_text

    message = check_send_text(users["aiko"], conversation, "once, for sure")
    killed_after_the_platform_accepted(worker, monkeypatch)
    first = sim.sent_to(CUSTOMER)[0]
    # the receipts of the attempt arrive (the simulator sends sent, delivered, read)
    run_worker_until(
        worker,
        lambda: (
            Message.objects.get(pk=message.pk).status == "read"
            and not Job.objects.filter(kind="send_message").exists()
        ),
    )
    assert len(sim.sent_to(CUSTOMER)) == 1  # not sent again
    message.refresh_from_db()
    assert message.platform_message_id == first.wamid
    assert "maybe_sent_twice" not in message.data and "sent_twice" not in message.data
    audit = AuditEvent.objects.get(action="message.sent", message=message)
    assert audit.data == {"platform_id": first.wamid, "from_receipt": True}
    assert message.data["platform_id_from_receipt"] == first.wamid
    assert AuditEvent.objects.filter(action="message.read", message=message).exists()
    updates = [e for e, _r in events.of_type("message") if e["op"] == "update"]
    assert {e["message"]["status"] for e in updates if e["message"]["id"] == message.pk} >= {
        "sent",
        "read",
    }


def test_a_late_receipt_of_the_interrupted_attempt_records_the_double(
    server, sim, worker, users, conversation, monkeypatch, settings
):
    from madoguchi.actions.outbound import check_send_text

    sim.simulator.auto_statuses = False
    message = check_send_text(users["aiko"], conversation, "twice, as it turns out")
    killed_after_the_platform_accepted(worker, monkeypatch)
    the_wait_is_over(settings)
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    first, second = sim.sent_to(CUSTOMER)
    message.refresh_from_db()
    assert message.platform_message_id == second.wamid

    # the first attempt's receipts come in at last (Meta names the message in every one)
    for status in ("sent", "delivered"):
        payload = status_payload(
            first.wamid, status, recipient=CUSTOMER, reference=send_reference(message.pk)
        )
        assert post_webhook(server, sim.channel, payload).status_code == 200
        worker.run_until_idle()
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()  # not left waiting
    message.refresh_from_db()
    assert message.platform_message_id == second.wamid
    assert message.data["sent_twice"] == [first.wamid]
    assert message.data["maybe_sent_twice"] is True
    audit = AuditEvent.objects.get(action="message.sent_twice", message=message)
    assert audit.data == {"platform_id": first.wamid, "kept": second.wamid}


def test_a_receipt_before_the_answer_of_a_live_send_records_it_once(
    sim, worker, users, conversation
):
    """The platform's receipt may arrive before the sender recorded the answer: the receipt
    records the platform id, and the sender adds no second audit row nor event."""
    from madoguchi.actions.outbound import check_send_text, do_apply_status, do_record_sent
    from madoguchi.providers.base import SentMessage, StatusUpdate

    message = check_send_text(users["aiko"], conversation, "quick")
    update = StatusUpdate(
        platform_message_id="wamid.quick",
        business_handle=sim.channel.business_handle,
        recipient_handle=CUSTOMER,
        status="sent",
        timestamp=timezone.now(),
        reference=send_reference(message.pk),
    )
    assert do_apply_status(sim.channel, update) is True
    do_record_sent(message.pk, SentMessage(platform_message_id="wamid.quick"))
    message.refresh_from_db()
    assert (message.status, message.platform_message_id) == ("sent", "wamid.quick")
    assert AuditEvent.objects.filter(action="message.sent", message=message).count() == 1


def test_a_receipt_naming_a_message_of_another_channel_is_not_taken(
    server, sim, worker, users, conversation
):
    from madoguchi.actions.channels import do_create_channel
    from madoguchi.actions.outbound import check_send_text, do_apply_status
    from madoguchi.providers.base import StatusUpdate

    other = do_create_channel(
        None,
        kind="whatsapp",
        name="Other shop",
        business_handle="999000111",
        account_handle="999000222",
        api_base="http://127.0.0.1:9",
        secrets={"access_token": "t", "app_secret": "s", "verify_token": "v"},
    )
    message = check_send_text(users["aiko"], conversation, "mine")
    update = StatusUpdate(
        platform_message_id="wamid.elsewhere",
        business_handle="999000111",
        recipient_handle=CUSTOMER,
        status="sent",
        timestamp=timezone.now(),
        reference=send_reference(message.pk),
    )
    assert do_apply_status(other, update) is None
    assert Message.objects.get(pk=message.pk).platform_message_id in ("", None)


@pytest.mark.parametrize("foreign", ["another install", "another recipient"])
def test_a_receipt_whose_reference_is_not_ours_is_not_taken(
    server, sim, worker, users, conversation, foreign
):
    """Another tool or a staging copy sending through the same number gets the same webhooks:
    its reference "mg:<id>" (without our tag, or to another customer) names nothing here."""
    from madoguchi.actions.outbound import check_send_text, do_apply_status
    from madoguchi.providers.base import StatusUpdate

    message = check_send_text(users["aiko"], conversation, "mine")
    reference, recipient = send_reference(message.pk), CUSTOMER
    if foreign == "another install":
        reference = f"mg:{message.pk}:{'0' * 16}"
    else:
        recipient = "14155550000"
    update = StatusUpdate(
        platform_message_id="wamid.foreign",
        business_handle=PHONE_NUMBER_ID,
        recipient_handle=recipient,
        status="read",
        timestamp=timezone.now(),
        reference=reference,
    )
    assert do_apply_status(sim.channel, update) is None
    message.refresh_from_db()
    assert message.platform_message_id in ("", None) and message.status == "queued"


def test_each_send_names_its_message_for_the_receipts(api_as, sim, worker, users, conversation):
    from madoguchi.actions.outbound import check_send_text

    text = check_send_text(users["aiko"], conversation, "with a reference")
    api_as("sora").post(f"/channels/{sim.channel.pk}/templates/sync", status=202)
    worker.run_until_idle()
    template = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages",
        {"template": {"name": "order_update", "language": "en_US", "parameters": ["R", "#1"]}},
        202,
    )
    run_worker_until(worker, lambda: len(sim.sent_to(CUSTOMER)) == 2)
    bodies = [s.body for s in sim.sent_to(CUSTOMER)]
    assert [b["type"] for b in bodies] == ["text", "template"]
    assert [b["biz_opaque_callback_data"] for b in bodies] == [
        send_reference(text.pk),
        send_reference(template["id"]),
    ]


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
    settings.SEND_RECONCILE_SECONDS = 0  # no receipt will name the dropped attempt
    sim.simulator.inject_faults(PHONE_NUMBER_ID, [("timeout", 1.0)])
    message = check_send_text(users["aiko"], conversation, "slow")
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
    assert 1 <= len(sim.sent_to(CUSTOMER)) <= 2


def test_the_mark_lands_with_the_platform_id_when_the_retrying_worker_dies_too(
    sim, worker, users, conversation, monkeypatch, settings
):
    """Two kills in a row: the first after the platform accepted the send, the second after
    the retry's platform id was committed but before its audit row. The retry's job then finds
    the id and never comes back: the double must already be marked."""
    from madoguchi.actions import outbound
    from madoguchi.actions.outbound import check_send_text

    sim.simulator.auto_statuses = False  # no receipt: the retry sends again
    settings.SEND_RECONCILE_SECONDS = 0
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


@pytest.mark.parametrize(
    "setback",
    ["busy number", "server error", "throttled number"],
)
def test_the_interrupted_attempt_is_remembered_through_a_retry_that_does_not_send(
    sim, worker, users, conversation, monkeypatch, settings, setback
):
    """The retry of an interrupted send is put off (the number's slots are taken, or the platform
    answers 5xx or 130429): the job must still say that its first attempt may have left, so the
    send that finally goes is marked."""
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.models import Throttle
    from madoguchi.tasks import SENDING

    sim.simulator.auto_statuses = False  # no receipt names the first attempt
    message = check_send_text(users["aiko"], conversation, "maybe twice")
    job = killed_after_the_platform_accepted(worker, monkeypatch)
    the_wait_is_over(settings)
    if setback == "busy number":
        Throttle.objects.filter(name=f"channel:{message.channel_id}").update(
            next_free=timezone.now().timestamp() + 30
        )
    elif setback == "server error":
        sim.simulator.inject_faults(PHONE_NUMBER_ID, [("http", 503)])
    else:
        sim.simulator.inject_faults(PHONE_NUMBER_ID, [("graph", 130429)])

    worker.run_once()
    put_off = Job.objects.get(pk=job.pk)
    assert put_off.last_error == job.last_error and put_off.last_error.startswith(SENDING)
    assert Message.objects.get(pk=message.pk).status == "queued"

    Throttle.objects.all().update(next_free=0)
    Job.objects.filter(pk=job.pk).update(run_at=timezone.now())
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
    assert len(sim.sent_to(CUSTOMER)) == 2


def test_a_call_that_failed_unexpectedly_is_retried_as_one_that_may_have_sent(
    sim, worker, users, conversation, monkeypatch, settings
):
    """The platform accepted the send but the provider could not read its answer (an error
    that is neither a refusal nor a timeout): the retry waits for a receipt, then sends again
    marked, never silently twice."""
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.providers.whatsapp import WhatsAppProvider
    from madoguchi.tasks import SENDING

    sim.simulator.auto_statuses = False  # no receipt will name the first attempt
    sending = WhatsAppProvider.send_text

    def unreadable_answer(self, *args, **kwargs):
        sending(self, *args, **kwargs)
        raise KeyError("messages")

    monkeypatch.setattr(WhatsAppProvider, "send_text", unreadable_answer)
    message = check_send_text(users["aiko"], conversation, "once, we hope")
    worker.run_once()
    monkeypatch.setattr(WhatsAppProvider, "send_text", sending)
    assert len(sim.sent_to(CUSTOMER)) == 1
    job = Job.objects.get(kind="send_message")
    assert job.last_error.startswith(SENDING)

    Job.objects.filter(pk=job.pk).update(run_at=timezone.now())
    worker.run_once()  # the call is recent: its receipt may be on its way
    assert len(sim.sent_to(CUSTOMER)) == 1

    the_wait_is_over(settings)
    run_worker_until(worker, lambda: Message.objects.get(pk=message.pk).status != "queued")
    assert len(sim.sent_to(CUSTOMER)) == 2
    message.refresh_from_db()
    assert message.data.get("maybe_sent_twice") is True
