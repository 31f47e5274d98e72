"""The rules of SPEC §2 through the REST API: who may send, read, claim, assign; the window."""

from __future__ import annotations

import time

from madoguchi.models import AuditEvent, Conversation, Job, Message, Visibility


def test_nobody_may_send_on_an_unassigned_conversation(api_as, customer_writes):
    conversation = customer_writes()
    error = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, status=403
    )["error"]
    assert error["code"] == "not_assignee"
    assert not Message.objects.filter(direction="out").exists()


def test_it_refuses_a_reply_from_a_non_assignee(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    error = api_as("ben").post(
        f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, status=403
    )["error"]
    assert error["code"] == "not_assignee"
    assert "aiko" in error["message"]
    assert not Job.objects.filter(kind="send_message").exists()


def test_the_assignee_reply_is_queued_with_its_send_job(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    message = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages", {"text": "How can I help?"}, status=202
    )
    assert message["status"] == "queued"
    assert message["author"]["username"] == "aiko"
    assert Job.objects.filter(kind="send_message", args={"message_id": message["id"]}).exists()


def test_a_claim_is_audited_and_a_second_claim_is_refused(api_as, customer_writes, users):
    conversation = customer_writes()
    claimed = api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    assert claimed["assignee"]["username"] == "aiko"
    error = api_as("ben").post(f"/conversations/{conversation.pk}/claim", status=403)["error"]
    assert error["code"] == "already_assigned"
    assert AuditEvent.objects.filter(
        action="conversation.claimed", actor=users["aiko"], conversation_id=conversation.pk
    ).exists()


def test_the_assignee_may_transfer_with_a_note(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    moved = api_as("aiko").post(
        f"/conversations/{conversation.pk}/assign",
        {"assignee": users["ben"].pk, "note": "Ben speaks Spanish"},
    )
    assert moved["assignee"]["username"] == "ben"
    event = AuditEvent.objects.get(action="conversation.transferred")
    assert event.data["note"] == "Ben speaks Spanish"
    assert Message.objects.filter(kind="note", text="Ben speaks Spanish").exists()


def test_an_agent_may_not_reassign_a_colleagues_conversation(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    api_as("ben").post(
        f"/conversations/{conversation.pk}/assign", {"assignee": users["ben"].pk}, status=403
    )
    assert Conversation.objects.get(pk=conversation.pk).assignee == users["aiko"]


def test_a_supervisor_may_reassign_and_it_is_audited(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": users["ben"].pk})
    assert Conversation.objects.get(pk=conversation.pk).assignee == users["ben"]
    event = AuditEvent.objects.get(action="conversation.assigned")
    assert event.actor == users["sora"]
    assert event.data["previous"] == users["aiko"].pk


def test_a_watcher_reads_but_may_not_claim_or_send(api_as, customer_writes):
    conversation = customer_writes()
    api_as("wendy").get(f"/conversations/{conversation.pk}")
    api_as("wendy").post(f"/conversations/{conversation.pk}/claim", status=403)
    api_as("wendy").post(f"/conversations/{conversation.pk}/messages", {"text": "x"}, status=403)


def test_a_returning_contact_goes_to_their_owner(api_as, customer_writes, users):
    conversation = customer_writes(text="First question")
    api_as("ben").post(f"/conversations/{conversation.pk}/claim")
    api_as("ben").post(f"/conversations/{conversation.pk}/status", {"status": "resolved"})
    again = customer_writes(text="Another question")
    assert again.pk != conversation.pk
    assert again.assignee == users["ben"]


def test_a_contact_of_a_deactivated_owner_stays_unassigned(api_as, customer_writes, users):
    conversation = customer_writes()
    api_as("ben").post(f"/conversations/{conversation.pk}/claim")
    api_as("ben").post(f"/conversations/{conversation.pk}/status", {"status": "resolved"})
    users["ben"].is_active = False
    users["ben"].save()
    assert customer_writes(text="Hello again").assignee is None


def test_assigned_only_visibility_hides_conversations_from_other_agents(
    api_as, customer_writes, channel
):
    channel.visibility = Visibility.ASSIGNED_ONLY
    channel.save()
    conversation = customer_writes()
    api_as("sora").post(f"/conversations/{conversation.pk}/assign", {"assignee": None})
    ids = lambda user: [c["id"] for c in api_as(user).get("/conversations?status=all")["items"]]  # noqa: E731
    assert conversation.pk not in ids("aiko")
    api_as("aiko").get(f"/conversations/{conversation.pk}", status=404)
    assert conversation.pk in ids("sora")


def test_a_free_form_send_outside_the_window_is_refused_before_queueing(api_as, customer_writes):
    old = int(time.time()) - 25 * 3600
    conversation = customer_writes(timestamp=old)
    api_as("aiko").post(f"/conversations/{conversation.pk}/claim")
    error = api_as("aiko").post(
        f"/conversations/{conversation.pk}/messages", {"text": "Hi"}, status=422
    )["error"]
    assert error["code"] == "window_closed"
    assert error["closed_at"].startswith(time.strftime("%Y-%m-%dT%H", time.gmtime(old + 24 * 3600)))
    assert not Job.objects.filter(kind="send_message").exists()


def test_the_window_runs_from_the_latest_platform_timestamp_not_arrival(api_as, customer_writes):
    recent = int(time.time()) - 3600
    customer_writes(timestamp=recent, text="recent")
    conversation = customer_writes(timestamp=recent - 30 * 3600, text="late delivery of an old one")
    window = api_as("aiko").get(f"/conversations/{conversation.pk}")["window"]
    assert window["open"] is True
    assert window["expires_at"].startswith(
        time.strftime("%Y-%m-%dT%H", time.gmtime(recent + 24 * 3600))
    )


def test_a_business_initiated_contact_needs_a_template(api_as, channel, users):
    error = api_as("aiko").post(
        "/conversations",
        {"channel": channel.pk, "to": "+81 90 1234 5678", "text": "Hi"},
        status=422,
    )["error"]
    assert error["code"] == "template_required"


def test_a_bad_phone_number_is_refused_clearly(api_as, channel, users):
    error = api_as("aiko").post(
        "/conversations",
        {"channel": channel.pk, "to": "12345", "template": {"name": "x", "language": "en"}},
        status=422,
    )["error"]
    assert error["code"] == "invalid_phone_number"


def test_api_errors_have_a_stable_shape(api_as, server, users):
    import httpx

    anonymous = httpx.get(f"{server.url}/api/v1/conversations", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    bad = api_as("aiko").call("POST", "/conversations/1/messages", 400, content=b"{not json")
    assert bad["error"]["code"] == "malformed_json"
    missing = api_as("aiko").get("/conversations/999999", status=404)
    assert missing["error"]["code"] == "not_found"


def test_the_conversation_list_pages_with_a_cursor(api_as, customer_writes):
    for i in range(5):
        customer_writes(wa_id=f"4477009001{i:02d}", name=f"Customer {i}", text=f"hello {i}")
    seen, cursor = [], None
    while True:
        query = "/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api_as("aiko").get(query)
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5
    api_as("aiko").get("/conversations?cursor=bogus", status=422)


def test_listing_costs_the_same_queries_whatever_the_page_size(customer_writes, users):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from madoguchi.queries.conversations import list_conversations

    for i in range(6):
        customer_writes(wa_id=f"4477009002{i:02d}", name=f"C{i}", text="hi")

    def count(limit: int) -> int:
        with CaptureQueriesContext(connection) as ctx:
            list_conversations(users["aiko"], limit=limit)
        return len(ctx.captured_queries)

    assert count(1) == count(6)


def test_it_shows_each_handle_as_its_platform_writes_it(customer_writes, api_as):
    conversation = customer_writes(wa_id="16505551234")
    shown = api_as("sora").get(f"/conversations/{conversation.pk}")
    assert shown["contact"]["handle"] == "16505551234"
    assert shown["contact"]["display_handle"] == "+16505551234"
