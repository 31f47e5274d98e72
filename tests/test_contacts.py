"""One contact, several channels: merging contacts, the whole history across channels (with the
viewer's visibility kept), replying on another channel under that channel's own rule.

The second channel is a second WhatsApp number of the same account on the same simulator."""

from __future__ import annotations

import time
from typing import Any

import pytest

from madoguchi.models import (
    AuditEvent,
    Contact,
    ContactIdentity,
    Conversation,
    Message,
    Team,
    Visibility,
)
from tests.helpers import (
    DISPLAY_NUMBER,
    PHONE_NUMBER_ID,
    SECOND_NUMBER_ID,
    envelope,
    post_webhook,
    run_worker_until,
)

CUSTOMER = "819012345678"
OTHER_PHONE = "819087654321"  # the same person's second phone, first seen as a new contact


@pytest.fixture
def second(second_number):
    """The second WhatsApp number of the same account, on the same simulator."""
    return second_number


def writes(server, worker, channel, wa_id, name, text, *, hours_ago=0.0) -> Conversation:
    """A customer message on ``channel`` through the webhook and the worker."""
    stamp = int(time.time() - hours_ago * 3600)
    message = {
        "from": wa_id,
        "id": f"wamid.contacts{time.monotonic_ns()}",
        "timestamp": str(stamp),
        "type": "text",
        "text": {"body": text},
    }
    payload = envelope(
        {"contacts": [{"profile": {"name": name}, "wa_id": wa_id}], "messages": [message]},
        phone_number_id=channel.business_handle,
    )
    assert post_webhook(server, channel, payload).status_code == 200
    worker.run_until_idle()
    return Conversation.objects.get(
        identity__channel=channel, identity__handle=wa_id, status="open"
    )


@pytest.fixture
def two_contacts(server, worker, sim, second, users, api_as) -> dict[str, Any]:
    """Yuki wrote on the first number (Aiko owns it) and, from her other phone, on the second
    (unassigned): two contacts until someone merges them."""
    first = writes(server, worker, sim.channel, CUSTOMER, "Yuki Tanaka", "order 48213?")
    api_as("sora").post(f"/conversations/{first.pk}/assign", {"assignee": users["aiko"].pk})
    other = writes(server, worker, second, OTHER_PHONE, "Yuki T.", "osaka shop question")
    assert first.contact_id != other.contact_id
    return {"first": first, "other": other, "keep": first.contact, "merge": other.contact}


def merge(api_as, keep, merge, user="sora", status=200):
    return api_as(user).post(f"/contacts/{keep.pk}/merge", {"contact": merge.pk}, status)


# -- merging ---------------------------------------------------------------------------------


def test_it_merges_two_contacts_keeping_all_history_and_the_owner(api_as, two_contacts, users):
    keep, gone = two_contacts["keep"], two_contacts["merge"]
    messages_before = Message.objects.count()
    merged = merge(api_as, keep, gone)
    assert merged["id"] == keep.pk
    assert sorted(i["handle"] for i in merged["identities"]) == [CUSTOMER, OTHER_PHONE]
    assert not Contact.objects.filter(pk=gone.pk).exists()
    assert Conversation.objects.filter(contact=keep).count() == 2
    assert ContactIdentity.objects.filter(contact=keep).count() == 2
    assert Message.objects.count() == messages_before
    assert Message.objects.filter(conversation__contact=keep).count() == messages_before
    keep.refresh_from_db()
    assert keep.owner == users["aiko"]  # the kept contact's sticky owner
    # nobody's conversation changed hands
    assert Conversation.objects.get(pk=two_contacts["other"].pk).assignee is None
    row = AuditEvent.objects.get(action="contact.merged")
    assert row.actor == users["sora"]
    assert row.data["merged"] == gone.pk
    assert row.data["conversations"] == [two_contacts["other"].pk]


def test_a_merge_into_a_contact_without_owner_keeps_the_other_owner(api_as, two_contacts, users):
    keep, gone = two_contacts["merge"], two_contacts["keep"]  # the unowned one is kept
    merge(api_as, keep, gone, user="admin")
    keep.refresh_from_db()
    assert keep.owner == users["aiko"]
    # and the next conversation of either phone goes to her (sticky ownership)
    assert ContactIdentity.objects.filter(contact=keep).count() == 2


def test_two_handles_on_one_channel_may_belong_to_one_contact(api_as, server, worker, sim, users):
    one = writes(server, worker, sim.channel, CUSTOMER, "Yuki", "from my phone")
    two = writes(server, worker, sim.channel, OTHER_PHONE, "Yuki", "from my work phone")
    merge(api_as, one.contact, two.contact)
    assert ContactIdentity.objects.filter(contact=one.contact, channel=sim.channel).count() == 2
    # each phone still has its own conversation, and the customer can keep writing on both
    writes(server, worker, sim.channel, OTHER_PHONE, "Yuki", "again")
    assert Conversation.objects.filter(contact=one.contact).count() == 2


def test_only_supervisors_and_admins_merge(api_as, two_contacts):
    keep, gone = two_contacts["keep"], two_contacts["merge"]
    for agent in ("aiko", "wendy"):
        error = merge(api_as, keep, gone, user=agent, status=403)["error"]
        assert error["code"] == "forbidden"
    assert Contact.objects.filter(pk=gone.pk).exists()
    assert merge(api_as, keep, keep, status=422)["error"]["code"] == "same_contact"
    assert api_as("sora").post(f"/contacts/{keep.pk}/merge", {"contact": 10**12}, 404)


def test_do_merge_contacts_refuses_an_agent(two_contacts, users):
    from madoguchi.actions.contacts import do_merge_contacts
    from madoguchi.errors import Forbidden

    with pytest.raises(Forbidden) as refused:
        do_merge_contacts(users["ben"], two_contacts["keep"], two_contacts["merge"])
    assert refused.value.code == "forbidden" and refused.value.status == 403


def test_a_merge_is_announced_only_to_permitted_viewers(
    api_as, two_contacts, second, users, events
):
    team = Team.objects.create(name="Osaka")
    users["ben"].teams.add(team)
    second.visibility, second.team = Visibility.TEAM, team
    second.save()
    events.events.clear()
    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    upserts = [(e, r) for e, r in events.of_type("conversation") if e["op"] == "upsert"]
    [(event, recipients)] = upserts  # only the moved conversation changed
    assert event["conversation"]["contact"]["id"] == two_contacts["keep"].pk
    assert users["ben"].pk in recipients and users["aiko"].pk not in recipients
    [(_merged, audience)] = events.of_type("contact")
    assert users["aiko"].pk in audience  # she reads the first number's conversation


# -- the whole history -------------------------------------------------------------------------


def test_the_history_with_the_contact_spans_every_channel_with_labels(
    api_as, two_contacts, second, sim
):
    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    first = two_contacts["first"]
    items = api_as("aiko").get(f"/conversations/{first.pk}/messages?scope=contact")["items"]
    assert [(m["text"], m["channel"]["name"]) for m in items] == [
        ("order 48213?", "Shop WhatsApp"),
        ("osaka shop question", "Shop Osaka"),
    ]
    assert items[1]["channel"] == {"id": second.pk, "kind": "whatsapp", "name": "Shop Osaka"}
    # the existing contract: this channel's conversations only
    plain = api_as("aiko").get(f"/conversations/{first.pk}/messages")["items"]
    assert [m["text"] for m in plain] == ["order 48213?"]
    # pages back by id
    page = api_as("aiko").get(f"/conversations/{first.pk}/messages?scope=contact&limit=1")
    assert [m["text"] for m in page["items"]] == ["osaka shop question"]
    older = api_as("aiko").get(
        f"/conversations/{first.pk}/messages?scope=contact&limit=1&before={page['next_before']}"
    )
    assert [m["text"] for m in older["items"]] == ["order 48213?"]


def test_an_agent_without_access_to_a_channel_never_sees_its_messages_or_events(
    api_as, two_contacts, second, server, worker, users, events
):
    team = Team.objects.create(name="Osaka")
    users["ben"].teams.add(team)
    second.visibility, second.team = Visibility.TEAM, team
    second.save()
    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    first = two_contacts["first"]
    texts = [
        m["text"]
        for m in api_as("aiko").get(f"/conversations/{first.pk}/messages?scope=contact")["items"]
    ]
    assert texts == ["order 48213?"]
    assert "osaka shop question" in [
        m["text"]
        for m in api_as("ben").get(f"/conversations/{first.pk}/messages?scope=contact")["items"]
    ]
    channels = api_as("aiko").get(f"/conversations/{first.pk}/channels")["items"]
    assert [c["channel"]["id"] for c in channels] == [first.channel_id]
    # a new message on the second number reaches Ben and the supervisors, never Aiko
    events.events.clear()
    writes(server, worker, second, OTHER_PHONE, "Yuki T.", "still there?")
    for _event, recipients in events.events:
        assert users["aiko"].pk not in recipients
    assert any(users["ben"].pk in r for e, r in events.of_type("message"))
    # and she cannot send there either
    error = api_as("aiko").post(
        f"/conversations/{first.pk}/messages", {"text": "hi", "channel": second.pk}, 403
    )["error"]
    assert error["code"] == "forbidden"


def test_the_history_costs_the_same_queries_whatever_its_size(
    api_as, two_contacts, second, server, worker, users, sim
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from madoguchi.queries.contacts import contact_history

    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    first = Conversation.objects.get(pk=two_contacts["first"].pk)

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            messages = contact_history(users["ben"], first, limit=50)
            from madoguchi.queries.serialize import message_json

            [message_json(m) for m in messages]
        return len(ctx.captured_queries)

    before = count()
    for i in range(4):
        writes(server, worker, second, OTHER_PHONE, "Yuki T.", f"more {i}")
        writes(server, worker, sim.channel, CUSTOMER, "Yuki", f"and more {i}")
    api_as("aiko").post(f"/conversations/{first.pk}/messages", {"text": "an answer"}, 202)
    assert count() == before


# -- replying on another channel ----------------------------------------------------------------


def test_a_reply_on_another_channel_goes_out_on_that_number(
    api_as, two_contacts, second, sim, worker, users
):
    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    first, other = two_contacts["first"], two_contacts["other"]
    channels = api_as("aiko").get(f"/conversations/{first.pk}/channels")["items"]
    # the customer wrote on the second number last: it comes first
    assert [c["channel"]["id"] for c in channels] == [second.pk, first.channel_id]
    assert channels[0]["last_used"] and channels[0]["mode"] == "free"
    sent = api_as("aiko").post(
        f"/conversations/{first.pk}/messages",
        {"text": "We can help in Osaka", "channel": second.pk},
        202,
    )
    assert sent["conversation"] == other.pk
    assert sent["channel"]["id"] == second.pk
    other.refresh_from_db()
    assert other.assignee == users["aiko"]  # it was unassigned: she claimed it
    assert AuditEvent.objects.filter(conversation=other, action="conversation.claimed").exists()
    run_worker_until(worker, lambda: sim.simulator.sent_to(SECOND_NUMBER_ID, OTHER_PHONE))
    [out] = sim.simulator.sent_to(SECOND_NUMBER_ID, OTHER_PHONE)
    assert out.body["text"]["body"] == "We can help in Osaka"
    assert sim.simulator.sent_to(PHONE_NUMBER_ID, CUSTOMER) == []


def test_a_reply_on_another_channel_obeys_that_channels_window(
    api_as, server, worker, sim, second, users
):
    first = writes(server, worker, sim.channel, CUSTOMER, "Yuki", "hello")
    old = writes(server, worker, second, OTHER_PHONE, "Yuki", "long ago", hours_ago=30)
    api_as("sora").post(f"/conversations/{old.pk}/status", {"status": "resolved"})
    api_as("sora").post(f"/conversations/{first.pk}/assign", {"assignee": users["aiko"].pk})
    merge(api_as, first.contact, old.contact)
    conversations = Conversation.objects.count()
    error = api_as("aiko").post(
        f"/conversations/{first.pk}/messages", {"text": "hi", "channel": second.pk}, 422
    )["error"]
    assert error["code"] == "window_closed"
    # nothing was left behind: no conversation opened, nothing queued
    assert Conversation.objects.count() == conversations
    assert not Message.objects.filter(direction="out").exists()
    [state] = [
        c
        for c in api_as("aiko").get(f"/conversations/{first.pk}/channels")["items"]
        if c["channel"]["id"] == second.pk
    ]
    assert (state["mode"], state["refusal"], state["conversation"]) == (
        "template",
        "window_closed",
        None,
    )


def test_a_reply_on_another_channel_opens_a_conversation_owned_by_the_replier(
    api_as, server, worker, sim, second, users
):
    first = writes(server, worker, sim.channel, CUSTOMER, "Yuki", "hello")
    other = writes(server, worker, second, OTHER_PHONE, "Yuki", "a question")
    api_as("sora").post(f"/conversations/{other.pk}/status", {"status": "resolved"})
    api_as("sora").post(f"/conversations/{first.pk}/assign", {"assignee": users["aiko"].pk})
    merge(api_as, first.contact, other.contact)
    sent = api_as("aiko").post(
        f"/conversations/{first.pk}/messages", {"text": "following up", "channel": second.pk}, 202
    )
    opened = Conversation.objects.get(pk=sent["conversation"])
    assert opened.pk != other.pk and opened.channel == second
    assert opened.assignee == users["aiko"] and opened.contact_id == first.contact_id
    started = AuditEvent.objects.get(conversation=opened, action="conversation.started")
    assert started.data["via"] == first.pk
    run_worker_until(worker, lambda: sim.simulator.sent_to(SECOND_NUMBER_ID, OTHER_PHONE))


def test_only_the_assignee_replies_on_another_channel(api_as, two_contacts, second, users):
    merge(api_as, two_contacts["keep"], two_contacts["merge"])
    first, other = two_contacts["first"], two_contacts["other"]
    error = api_as("ben").post(
        f"/conversations/{first.pk}/messages", {"text": "hi", "channel": second.pk}, 403
    )["error"]
    assert error["code"] == "not_assignee"
    # a colleague holds the conversation on the other number: Aiko may not write there
    api_as("sora").post(f"/conversations/{other.pk}/assign", {"assignee": users["ben"].pk})
    error = api_as("aiko").post(
        f"/conversations/{first.pk}/messages", {"text": "hi", "channel": second.pk}, 403
    )["error"]
    assert error["code"] == "not_assignee"
    assert not Message.objects.filter(direction="out", kind="text").exists()


def test_a_channel_the_contact_is_not_on_is_refused(api_as, two_contacts, second):
    first = two_contacts["first"]  # not merged: the contact has no handle on the second number
    error = api_as("aiko").post(
        f"/conversations/{first.pk}/messages", {"text": "hi", "channel": second.pk}, 422
    )["error"]
    assert error["code"] == "invalid_channel"


def test_a_handle_added_by_hand_needs_a_template_on_whatsapp(api_as, two_contacts, second):
    first, other = two_contacts["first"], two_contacts["other"]
    added = api_as("aiko").post(
        f"/contacts/{first.contact_id}/identities",
        {"channel": second.pk, "handle": "+81 90 1111 2222"},
        201,
    )
    assert "819011112222" in [i["handle"] for i in added["identities"]]
    error = api_as("aiko").post(
        f"/conversations/{first.pk}/messages",
        {"text": "hi", "identity": max(i["id"] for i in added["identities"])},
        422,
    )["error"]
    assert error["code"] == "template_required"
    taken = api_as("aiko").post(
        f"/contacts/{first.contact_id}/identities",
        {"channel": second.pk, "handle": OTHER_PHONE},
        409,
    )["error"]
    assert (taken["code"], taken["contact"]) == ("identity_taken", other.contact_id)


def test_the_contact_search_finds_by_name_and_handle(api_as, two_contacts):
    found = api_as("sora").get("/contacts?q=Yuki")["items"]
    assert {c["id"] for c in found} == {two_contacts["keep"].pk, two_contacts["merge"].pk}
    by_handle = api_as("sora").get(f"/contacts?q={OTHER_PHONE[-6:]}")["items"]
    assert [c["id"] for c in by_handle] == [two_contacts["merge"].pk]
    assert api_as("sora").get("/contacts?q=%25%25")["items"] == []
    assert DISPLAY_NUMBER  # the first number's display handle is not a contact's


# -- the console ---------------------------------------------------------------------------------


def test_the_console_merges_and_offers_the_contacts_channels(two_contacts, second, users):
    from django.test import Client

    from tests.test_console import login

    first, other = two_contacts["first"], two_contacts["other"]
    sora, aiko = Client(), Client()
    login(sora, "sora")
    login(aiko, "aiko")
    found = sora.get(f"/c/{first.pk}?merge_q=Yuki+T").content.decode()
    assert f'name="contact" value="{other.contact_id}"' in found
    refused = aiko.post(
        f"/c/{first.pk}/merge", {"contact": other.contact_id}, HTTP_ACCEPT="application/json"
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    merged = sora.post(
        f"/c/{first.pk}/merge", {"contact": other.contact_id}, HTTP_ACCEPT="application/json"
    )
    assert merged.status_code == 200
    page = aiko.get(f"/c/{first.pk}").content.decode()
    assert "osaka shop question" in page and 'title="On Shop Osaka">Shop Osaka</span>' in page
    assert "data-via-chooser" in page
    # another channel chosen: the form posts it, and the reply goes there
    chosen = ContactIdentity.objects.get(handle=OTHER_PHONE)
    page = aiko.get(f"/c/{first.pk}?via={chosen.pk}").content.decode()
    assert f'name="via" value="{chosen.pk}"' in page
    sent = aiko.post(
        f"/c/{first.pk}/send",
        {"text": "from the console", "via": chosen.pk},
        HTTP_ACCEPT="application/json",
    )
    assert sent.json()["message"]["conversation"] == other.pk
