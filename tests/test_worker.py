"""The durable queue: schedules, retries of raw events, ordering, media limits."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from madoguchi.models import AuditEvent, Job, Message, RawEvent, Template
from tests.helpers import PHONE_NUMBER_ID, post_webhook, run_worker_until, status_payload


def test_templates_are_synced_on_a_schedule(sim, worker):
    worker.run_schedules()
    worker.run_until_idle()
    assert Template.objects.filter(channel=sim.channel, status="APPROVED").exists()
    worker.last_schedule_check = 0
    worker.run_schedules()
    assert not Job.objects.filter(kind="sync_templates").exists()  # fresh: nothing to do


def test_a_status_before_its_message_is_retried_not_lost(
    server, channel, worker, customer_writes, users
):
    from madoguchi.actions.conversations import check_claim
    from madoguchi.actions.outbound import check_send_text, do_record_sent
    from madoguchi.providers.base import SentMessage

    conversation = check_claim(users["aiko"], customer_writes())
    message = check_send_text(users["aiko"], conversation, "Hi")
    Job.objects.all().delete()  # the send is "in flight": its answer has not been recorded yet
    post_webhook(
        server, channel, status_payload("wamid.early", "delivered", recipient="16505551234")
    )
    worker.run_until_idle()
    raw = RawEvent.objects.filter(processed_at__isnull=True).get()
    assert "not stored yet" in raw.error
    do_record_sent(message.pk, SentMessage(platform_message_id="wamid.early"))
    RawEvent.objects.filter(pk=raw.pk).update(lease_until=None)
    worker.run_until_idle()
    assert Message.objects.get(pk=message.pk).status == "delivered"


def test_a_duplicate_status_changes_nothing(server, channel, worker, customer_writes, users):
    from madoguchi.actions.conversations import check_claim
    from madoguchi.actions.outbound import check_send_text, do_record_sent
    from madoguchi.providers.base import SentMessage

    conversation = check_claim(users["aiko"], customer_writes())
    message = check_send_text(users["aiko"], conversation, "Hi")
    Job.objects.all().delete()
    do_record_sent(message.pk, SentMessage(platform_message_id="wamid.dup"))
    for _ in range(3):
        post_webhook(
            server, channel, status_payload("wamid.dup", "delivered", recipient="16505551234")
        )
    worker.run_until_idle()
    assert AuditEvent.objects.filter(action="message.delivered", message=message).count() == 1


def test_a_snoozed_conversation_wakes_up_when_its_time_comes(customer_writes, users, worker):
    from madoguchi.actions.conversations import check_claim, check_set_status

    conversation = check_claim(users["aiko"], customer_writes())
    check_set_status(
        users["aiko"], conversation, "snoozed", snoozed_until=timezone.now() + timedelta(hours=1)
    )
    conversation.refresh_from_db()
    assert conversation.status == "snoozed"
    type(conversation).objects.filter(pk=conversation.pk).update(
        snoozed_until=timezone.now() - timedelta(seconds=1)
    )
    worker.run_schedules()
    conversation.refresh_from_db()
    assert conversation.status == "open"


def test_inbound_media_over_the_platform_limit_is_not_kept(sim, worker):
    media_id = sim.simulator.customer_uploads(
        PHONE_NUMBER_ID, b"\xff" * (5 * 1024 * 1024 + 1), "image/jpeg"
    )
    sim.customer_sends("819012345678", "Yuki", {"type": "image", "image": {"id": media_id}})
    run_worker_until(worker, lambda: Message.objects.filter(media_state="too_large").exists())
    assert Message.objects.get().media_path == ""


def test_a_raw_event_that_keeps_failing_is_parked_with_its_error(channel, worker, db):
    raw = RawEvent.objects.create(
        channel_id=channel.pk, body=b"not json", received_at=timezone.now()
    )
    worker.run_until_idle()
    raw.refresh_from_db()
    assert raw.processed_at is not None
    assert "unreadable" in raw.error
