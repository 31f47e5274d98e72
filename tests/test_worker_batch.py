"""The worker's busy path: a batch of bodies over several channels costs a fixed number of
queries, and each event reaches exactly the people allowed to read its conversation."""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

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


@pytest.fixture
def setup(db: None, users: dict[str, Any]) -> dict[str, Any]:
    """Six WhatsApp channels of one business account, as in bench B3: one visible to all, four
    visible to one team each, one assigned_only; one agent in each team, and a deactivated
    one in the first."""
    from madoguchi.actions.channels import do_create_channel
    from madoguchi.actions.users import do_create_user
    from madoguchi.models import Team

    teams = [Team.objects.create(name=f"team {n}") for n in range(4)]
    agents = []
    for n, team in enumerate(teams):
        agent, _ = do_create_user(
            None, f"agent{n}", role="agent", password="a-long-test-password-1"
        )
        agent.teams.add(team)
        agents.append(agent)
    gone, _ = do_create_user(None, "gone", role="agent", password="a-long-test-password-1")
    gone.teams.add(teams[0])
    gone.is_active = False
    gone.save(update_fields=["is_active"])
    kinds = [("all", None)] + [("team", t) for t in teams] + [("assigned_only", None)]
    channels = [
        do_create_channel(
            None,
            kind="whatsapp",
            name=f"Line {n}",
            business_handle=f"10{n}000",
            account_handle=WABA_ID,
            display_handle=f"+1555000{n}",
            api_base=f"http://127.0.0.1:{free_port()}",
            secrets={
                "access_token": ACCESS_TOKEN,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN,
            },
            visibility=visibility,
            team=team,
        )
        for n, (visibility, team) in enumerate(kinds)
    ]
    return {"teams": teams, "agents": agents, "channels": channels, "users": users}


def store_bodies(channels: list[Any], messages: int, *, senders: list[str] | None = None) -> None:
    """``messages`` webhook bodies, one text each, spread over ``channels`` in turn, each from a
    new customer unless ``senders`` (cycled) says who writes."""
    from django.utils import timezone

    from madoguchi.models import RawEvent

    for n in range(messages):
        channel = channels[n % len(channels)]
        wa_id = senders[n % len(senders)] if senders else f"4477009{next(_ids):05d}"
        body = envelope(
            {
                "contacts": [{"profile": {"name": f"Customer {wa_id}"}, "wa_id": wa_id}],
                "messages": [
                    {
                        "from": wa_id,
                        "id": f"wamid.batch{next(_ids)}",
                        "timestamp": str(1_800_000_000 + n),
                        "type": "text",
                        "text": {"body": f"hello {n}"},
                    }
                ],
            },
            phone_number_id=channel.business_handle,
        )
        RawEvent.objects.create(
            channel_id=channel.pk, body=compact(body), received_at=timezone.now()
        )


def run_batch(worker: Any, on_commit: Any) -> int:
    """Claim and apply what is due, running the commit hooks (the events); returns how many
    queries that took."""
    with on_commit(execute=True), CaptureQueriesContext(connection) as ctx:
        worker.process_raw_events(worker.claim_raw_events(limit=250))
    return len(ctx.captured_queries)


def test_it_applies_a_batch_over_several_channels_in_a_constant_number_of_queries(
    setup, worker, events, django_capture_on_commit_callbacks
):
    from madoguchi.models import Conversation, Message, RawEvent

    channels = setup["channels"]
    store_bodies(channels[:1], 1)
    one = run_batch(worker, django_capture_on_commit_callbacks)
    store_bodies(channels, 6)
    six = run_batch(worker, django_capture_on_commit_callbacks)
    store_bodies(channels, 24)
    twenty_four = run_batch(worker, django_capture_on_commit_callbacks)
    assert six == twenty_four
    # Claim (2), channels, known messages, identities, contacts, identities, conversations,
    # messages, audit rows, audience, processed (12), plus the test transaction's savepoint and
    # its release.
    assert one <= six <= 14
    assert Message.objects.count() == 31
    assert Conversation.objects.count() == 31
    assert not RawEvent.objects.filter(processed_at__isnull=True).exists()

    # Returning customers: their window, their locked conversations, their summaries (3 more).
    returning = [f"4477008{n:05d}" for n in range(6)]
    store_bodies(channels, 6, senders=returning)
    run_batch(worker, django_capture_on_commit_callbacks)
    store_bodies(channels, 6, senders=returning)
    again = run_batch(worker, django_capture_on_commit_callbacks)
    store_bodies(channels, 18, senders=returning)
    assert run_batch(worker, django_capture_on_commit_callbacks) == again <= 17
    assert Conversation.objects.count() == 37
    assert (
        sorted(
            Conversation.objects.filter(identity__handle__in=returning).values_list(
                "unread_count", flat=True
            )
        )
        == [5] * 6
    )


def test_it_sends_each_batch_event_only_to_those_who_may_read_it(
    setup, worker, events, django_capture_on_commit_callbacks
):
    """Every channel kind in one batch: the audience of each event is exactly the users
    allowed to read its conversation (recipients_for, one conversation at a time)."""
    from madoguchi.models import Conversation
    from madoguchi.rules.access import recipients_for

    channels = setup["channels"]
    # A returning customer on the assigned_only channel, owned by an agent (sticky routing).
    store_bodies(channels[5:], 1, senders=["447700111111"])
    worker.process_raw_events(worker.claim_raw_events())
    owned = Conversation.objects.get(identity__handle="447700111111")
    owned.assignee = setup["agents"][2]
    owned.save(update_fields=["assignee"])
    events.events.clear()
    store_bodies(channels, 12)
    store_bodies(channels[5:], 2, senders=["447700111111"])
    with django_capture_on_commit_callbacks(execute=True):
        worker.process_raw_events(worker.claim_raw_events())

    conversations = {
        c.pk: c for c in Conversation.objects.select_related("channel", "assignee", "team")
    }
    published = events.of_type("message") + events.of_type("conversation")
    assert len(events.of_type("message")) == 14
    for event, recipients in published:
        conversation_id = event.get("conversation_id") or event["conversation"]["id"]
        expected = sorted(recipients_for(conversations[conversation_id]))
        assert recipients == expected, event
    agents, users = setup["agents"], setup["users"]
    owned_events = [
        r for e, r in published if (e.get("conversation_id") or e["conversation"]["id"]) == owned.pk
    ]
    assert owned_events and all(
        agents[2].pk in r and agents[0].pk not in r and users["aiko"].pk not in r
        for r in owned_events
    )
