"""Edge cases found in review: bad input never yields a 500, races and retries never double
or lose a message, one app never writes into another's channel."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from madoguchi.models import AuditEvent, Job, Message, RawEvent, Template, Visibility
from tests.helpers import (
    ACCESS_TOKEN,
    APP_SECRET,
    VERIFY_TOKEN,
    WABA_ID,
    compact,
    envelope,
    post_webhook,
    sign,
    text_payload,
)


@pytest.fixture
def claimed(customer_writes, users):
    from madoguchi.actions.conversations import check_claim

    return check_claim(users["aiko"], customer_writes())


def test_a_job_taken_over_by_another_worker_is_not_run_twice(claimed, users, db):
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.worker import Worker

    message = check_send_text(users["aiko"], claimed, "hello")
    slow, fast = Worker(name="slow"), Worker(name="fast")
    [job] = slow.claim_jobs()
    Job.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    [taken] = fast.claim_jobs()  # the slow worker's lease ran out: another worker took it
    assert taken.pk == job.pk
    calls = []
    import madoguchi.tasks as tasks

    original = tasks.HANDLERS["send_message"]
    tasks.HANDLERS["send_message"] = lambda job, message_id: calls.append(job.claimed_by)
    try:
        slow.run_job(job)
        fast.run_job(taken)
    finally:
        tasks.HANDLERS["send_message"] = original
    assert calls == ["fast"]
    assert Message.objects.get(pk=message.pk).status == "queued"


def test_a_job_that_keeps_crashing_fails_its_message_and_unblocks_the_next(
    claimed, users, worker, settings, monkeypatch
):
    from madoguchi.actions.outbound import check_send_text
    from madoguchi.providers.whatsapp import WhatsAppProvider

    settings.MADOGUCHI_SEND_MAX_ATTEMPTS = 2
    # a call that crashed may have sent (tasks.MaybeSent): its retry would first wait this long
    # for a receipt naming it
    settings.SEND_RECONCILE_SECONDS = 0
    first = check_send_text(users["aiko"], claimed, "first")
    second = check_send_text(users["aiko"], claimed, "second")

    def broken(self, to, text, *, reply_to=None):
        raise RuntimeError(f"bug while sending {text}")

    monkeypatch.setattr(WhatsAppProvider, "send_text", broken)
    for _ in range(6):
        Job.objects.update(run_at=timezone.now())
        worker.run_until_idle()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == "failed" and first.error_code == -5
    assert second.status == "failed"  # it was tried too: the first one no longer blocks it
    assert not Job.objects.exists()


def test_starting_a_conversation_cannot_take_one_the_agent_may_not_read(
    api_as, customer_writes, channel, users, sim
):
    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    conversation = customer_writes(wa_id="819012345678")
    Template.objects.create(
        channel=channel,
        name="hello",
        language="en_US",
        status="APPROVED",
        components=[{"type": "BODY", "text": "Hello"}],
    )
    api_as("ben").post(
        "/conversations",
        {
            "channel": channel.pk,
            "to": "+81 90 1234 5678",
            "template": {"name": "hello", "language": "en_US"},
        },
        status=404,
    )
    conversation.refresh_from_db()
    assert conversation.assignee is None


def test_a_webhook_body_cannot_write_into_another_apps_channel(server, channel, worker, db):
    from madoguchi.actions.channels import do_create_channel

    other = do_create_channel(
        None,
        kind="whatsapp",
        name="Other shop",
        business_handle="999000111",
        account_handle="555",
        secrets={"access_token": "x", "app_secret": "another-secret", "verify_token": "v"},
    )
    payload = text_payload("16505551234", "Mallory", "injected")
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000111"
    assert post_webhook(server, channel, payload).status_code == 200  # signed for `channel`
    worker.run_until_idle()
    assert not Message.objects.filter(channel=other).exists()
    assert not Message.objects.filter(text="injected").exists()


def test_a_wrong_kind_in_the_webhook_path_does_not_block_genuine_deliveries(
    server, channel, worker
):
    assert httpx.get(f"{server.url}/webhooks/viber/{channel.pk}", timeout=10).status_code == 404
    assert (
        post_webhook(server, channel, text_payload("16505551234", "Sheena", "hi")).status_code
        == 200
    )


@pytest.mark.parametrize("path", ["/webhooks/whatsapp/%C2%B2", "/webhooks/whatsapp/" + "9" * 40])
def test_odd_webhook_paths_get_404_not_500(server, db, path):
    assert httpx.post(f"{server.url}{path}", content=b"{}", timeout=10).status_code == 404


def test_a_nul_character_or_a_huge_filename_loses_nothing(server, channel, worker):
    payload = text_payload("16505551234", "Sheena", "bad\u0000text")
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"].append(
        {
            "from": "16505551234",
            "id": "wamid.longname",
            "timestamp": value["messages"][0]["timestamp"],
            "type": "document",
            "document": {
                "id": "123",
                "mime_type": "application/pdf",
                "filename": "x" * 400 + ".pdf",
            },
        }
    )
    value["messages"].append(
        {
            "from": "16505551234",
            "id": "wamid.fine",
            "timestamp": value["messages"][0]["timestamp"],
            "type": "text",
            "text": {"body": "still here"},
        }
    )
    assert post_webhook(server, channel, payload).status_code == 200
    worker.run_until_idle()
    texts = sorted(Message.objects.values_list("text", flat=True))
    assert "badtext" in texts and "still here" in texts
    assert len(Message.objects.get(platform_message_id="wamid.longname").media_filename) <= 255


@pytest.mark.parametrize(
    "query", ["assignee=%C2%B2", "channel=" + "9" * 25, "assignee=" + "9" * 25, "cursor=%00"]
)
def test_odd_list_parameters_are_refused_clearly(api_as, users, query):
    response = api_as("aiko").client.get(f"/api/v1/conversations?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"]


def test_a_snooze_time_without_a_time_zone_is_accepted(api_as, claimed):
    later = (timezone.now() + timedelta(days=2)).replace(tzinfo=None).isoformat()
    result = api_as("aiko").post(
        f"/conversations/{claimed.pk}/status", {"status": "snoozed", "snoozed_until": later}
    )
    assert result["status"] == "snoozed"


def test_a_nul_in_a_reply_is_dropped_not_a_500(api_as, claimed):
    sent = api_as("aiko").post(
        f"/conversations/{claimed.pk}/messages", {"text": "hi\u0000there"}, 202
    )
    assert sent["text"] == "hithere"


def test_unknown_api_paths_and_methods_answer_in_the_error_shape(api_as, users):
    missing = api_as("aiko").client.get("/api/v1/no/such/thing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = api_as("aiko").client.delete("/api/v1/conversations")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_template_status_changes_reach_every_number_of_the_account(server, channel, worker):
    from madoguchi.actions.channels import do_create_channel

    sibling = do_create_channel(
        None,
        kind="whatsapp",
        name="Second number",
        business_handle="222",
        account_handle=WABA_ID,
        secrets={
            "access_token": ACCESS_TOKEN,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
        },
    )
    for target in (channel, sibling):
        Template.objects.create(
            channel=target, name="order_update", language="en_US", status="APPROVED"
        )
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "time": 1,
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": "PAUSED",
                            "message_template_id": 1,
                            "message_template_name": "order_update",
                            "message_template_language": "en_US",
                            "reason": "NONE",
                        },
                    }
                ],
            }
        ],
    }
    post_webhook(server, channel, payload)
    worker.run_until_idle()
    assert set(Template.objects.values_list("status", flat=True)) == {"PAUSED"}


def test_a_transfer_note_is_published_live(api_as, claimed, users, events):
    events.events.clear()
    api_as("aiko").post(
        f"/conversations/{claimed.pk}/assign", {"assignee": users["ben"].pk, "note": "over to you"}
    )
    notes = [e for e, _ in events.of_type("message") if e["message"]["kind"] == "note"]
    assert [n["message"]["text"] for n in notes] == ["over to you"]


def test_the_history_shows_only_conversations_the_reader_may_see(
    api_as, customer_writes, channel, users
):
    first = customer_writes(text="secret order for Aiko")
    api_as("sora").post(f"/conversations/{first.pk}/assign", {"assignee": users["aiko"].pk})
    api_as("aiko").post(f"/conversations/{first.pk}/status", {"status": "resolved"})
    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    second = customer_writes(text="new question")
    api_as("sora").post(f"/conversations/{second.pk}/assign", {"assignee": users["ben"].pk})
    texts = [m["text"] for m in api_as("ben").get(f"/conversations/{second.pk}/messages")["items"]]
    assert "new question" in texts and "secret order for Aiko" not in texts


def test_templates_of_a_team_channel_are_not_listed_to_outsiders(api_as, channel, users):
    from madoguchi.models import Team

    team = Team.objects.create(name="Osaka")
    channel.visibility = Visibility.TEAM
    channel.team = team
    channel.save()
    api_as("ben").get(f"/templates?channel={channel.pk}", status=403)
    users["ben"].teams.add(team)
    api_as("ben").get(f"/templates?channel={channel.pk}")


def test_a_platform_notice_is_recorded_once_even_when_the_body_is_retried(server, channel, worker):
    error = {"code": 131000, "title": "Something went wrong", "error_data": {"details": "d"}}
    status = {"id": "wamid.unknown", "status": "delivered", "timestamp": "1", "recipient_id": "1"}
    payload = envelope({"errors": [error], "statuses": [status]})
    post_webhook(server, channel, payload)
    worker.run_until_idle()
    RawEvent.objects.update(lease_until=None)
    worker.run_until_idle()
    assert AuditEvent.objects.filter(action="channel.platform_error").count() == 1


def test_raw_webhook_bytes_are_signed_over_not_parsed_json(server, channel):
    body = compact(text_payload("1", "x", "y"))
    response = httpx.post(
        f"{server.url}{channel.webhook_path}",
        content=body + b" ",
        headers={"X-Hub-Signature-256": sign(body), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401
    assert json.loads(response.text)["error"]["code"] == "invalid_signature"
