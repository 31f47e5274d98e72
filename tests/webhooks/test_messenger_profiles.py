"""Messenger contacts get their name from the User Profile API: page webhooks carry only a PSID,
so a new identity queues one fetch_profile job, which the worker runs against the simulator
(outside any transaction) and records with do_update_profile. Through the live server: webhook,
worker, job, simulator, then the REST API's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import transaction
from django.utils import timezone

from madoguchi.models import AuditEvent, Contact, ContactIdentity, Conversation, Job
from madoguchi.providers.base import InboundMessage
from madoguchi.tasks import PROFILE_MAX_ATTEMPTS
from tests.channels_helpers import PAGE_ID, fixture_bytes, post_messenger

PSID = "7302184659238471"
FIXTURE_PSID = "5127349273929834"  # the sender of tests/fixtures/messenger/*.json


def lookups(messenger_sim, psid: str = PSID) -> list[int]:
    """The HTTP status of each User Profile API request the simulator answered for ``psid``."""
    return [s for _p, who, _f, s in messenger_sim.simulator.profile_lookups if who == psid]


def profile_jobs() -> list[Job]:
    return list(Job.objects.filter(kind="fetch_profile").order_by("id"))


def written(messenger_sim, worker, name: str = "Chloé Martin", psid: str = PSID) -> Conversation:
    """A person writes through the simulator; the worker stores the message only (the profile
    job is left queued)."""
    messenger_sim.customer_sends(psid, "Bonjour, ma commande n'est pas arrivée.", name=name)
    worker.process_raw_events(worker.claim_raw_events())
    return Conversation.objects.select_related("contact").get(identity__handle=psid)


def test_a_new_contact_is_named_from_its_profile(api_as, messenger_sim, worker, users, events):
    messenger_sim.customer_sends(PSID, "Bonjour !", name="Chloé Martin")
    worker.run_until_idle()
    conversation = Conversation.objects.get(identity__handle=PSID)
    shown = api_as("aiko").get(f"/conversations/{conversation.pk}")
    assert shown["contact"]["name"] == "Chloé Martin"
    contact = api_as("aiko").get(f"/contacts/{conversation.contact_id}")
    assert contact["name"] == "Chloé Martin"
    assert [(i["handle"], i["name"]) for i in contact["identities"]] == [(PSID, "Chloé Martin")]
    listed = api_as("ben").get("/conversations?status=all")["items"]
    assert [c["contact"]["name"] for c in listed] == ["Chloé Martin"]
    assert lookups(messenger_sim) == [200]
    assert not Job.objects.exists()
    # The inbox learns the name at once: an upsert to the people who may read it.
    upserts = [
        (event["conversation"]["contact"]["name"], recipients)
        for event, recipients in events.of_type("conversation")
        if event["op"] == "upsert"
    ]
    assert upserts[-1][0] == "Chloé Martin"
    assert users["aiko"].pk in upserts[-1][1] and users["ben"].pk in upserts[-1][1]
    audit = AuditEvent.objects.get(action="contact.profile_updated")
    assert audit.data["renamed"] is True and audit.data["previous_name"] == PSID


def test_the_name_is_shown_in_the_order_it_is_written(messenger_sim, worker):
    messenger_sim.customer_sends(PSID, "こんにちは", name="佐藤 花子")
    worker.run_until_idle()
    assert Contact.objects.get().name == "佐藤 花子"


def test_a_name_an_agent_gave_the_contact_is_kept(api_as, messenger_sim, worker, events):
    conversation = written(messenger_sim, worker)
    assert conversation.contact.name == PSID  # until the profile is known
    # Somebody named the contact meanwhile (the lookup is not instant).
    Contact.objects.filter(pk=conversation.contact_id).update(name="Mme Martin (VIP)")
    worker.run_until_idle()
    contact = api_as("aiko").get(f"/contacts/{conversation.contact_id}")
    assert contact["name"] == "Mme Martin (VIP)"
    assert contact["identities"][0]["name"] == "Chloé Martin"  # the platform's name, kept aside
    audit = AuditEvent.objects.get(action="contact.profile_updated")
    assert audit.data["renamed"] is False
    assert all(
        event["conversation"]["contact"]["name"] != "Chloé Martin"
        for event, _recipients in events.of_type("conversation")
        if event["op"] == "upsert"
    )


def test_a_person_the_page_may_not_look_up_keeps_the_psid(server, messenger_sim, worker):
    """A PSID the page cannot read (never opted in, unknown): the Graph answers 100, which is
    permanent: one request, no retry, the PSID stays the name."""
    messenger_sim.simulator.add_user(PAGE_ID, FIXTURE_PSID, "Not Opted In")
    assert post_messenger(server, messenger_sim.channel, fixture_bytes("messenger", "text"))
    worker.run_until_idle()
    assert lookups(messenger_sim, FIXTURE_PSID) == [400]
    assert not Job.objects.exists()
    identity = ContactIdentity.objects.select_related("contact").get()
    assert (identity.contact.name, identity.profile_name) == (FIXTURE_PSID, "")
    assert not AuditEvent.objects.filter(action="contact.profile_updated").exists()


def test_a_transient_failure_is_retried(messenger_sim, worker, settings):
    settings.MADOGUCHI_RETRY_BASE_SECONDS = 60  # the test moves the job forward itself
    messenger_sim.simulator.inject_profile_faults(PAGE_ID, [("http", 503)])
    written(messenger_sim, worker)
    worker.run_until_idle()
    job = Job.objects.get(kind="fetch_profile")
    assert job.run_at > timezone.now() and job.last_error.startswith("2 ")
    Job.objects.update(run_at=timezone.now())
    worker.run_until_idle()
    assert lookups(messenger_sim) == [503, 200]
    assert Contact.objects.get().name == "Chloé Martin"
    assert not Job.objects.exists()


def test_a_lookup_that_keeps_failing_is_given_up(messenger_sim, worker, settings):
    settings.MADOGUCHI_RETRY_BASE_SECONDS = 60
    messenger_sim.simulator.inject_profile_faults(PAGE_ID, [("graph", 2)] * 10)
    written(messenger_sim, worker)
    for _ in range(PROFILE_MAX_ATTEMPTS + 2):
        Job.objects.update(run_at=timezone.now())
        worker.run_until_idle()
    assert lookups(messenger_sim) == [500] * PROFILE_MAX_ATTEMPTS
    assert not Job.objects.exists()
    assert Contact.objects.get().name == PSID


def test_the_lookup_runs_once_per_identity(messenger_sim, worker):
    for text in ("Bonjour", "Vous êtes là ?", "Ma commande 48213"):
        messenger_sim.customer_sends(PSID, text, name="Chloé Martin")
    messenger_sim.simulator.add_user(PAGE_ID, "7302184659238472", "Jonas Becker")
    messenger_sim.customer_sends("7302184659238472", "Hallo")
    worker.process_raw_events(worker.claim_raw_events())
    identities = dict(ContactIdentity.objects.values_list("handle", "pk"))
    assert sorted(j.key for j in profile_jobs()) == sorted(
        f"profile:{pk}" for pk in identities.values()
    )
    worker.run_until_idle()
    messenger_sim.customer_sends(PSID, "Merci !")  # a known contact: nothing to look up
    worker.run_until_idle()
    assert lookups(messenger_sim) == [200]
    assert lookups(messenger_sim, "7302184659238472") == [200]
    assert sorted(Contact.objects.values_list("name", flat=True)) == [
        "Chloé Martin",
        "Jonas Becker",
    ]


# -- where the jobs are queued ------------------------------------------------------------------


def inbound(psid: str, mid: str, name: str = "") -> InboundMessage:
    return InboundMessage(
        platform_message_id=mid,
        business_handle=PAGE_ID,
        sender_handle=psid,
        sender_name=name,
        timestamp=datetime(2026, 5, 1, 9, 0, tzinfo=UTC),
        kind="text",
        text="hello",
    )


def test_the_bulk_path_queues_one_job_per_new_identity(messenger_channel):
    from madoguchi.actions.inbound import contact_identity, do_receive_messages

    known = contact_identity(messenger_channel, "1000000000000001")
    Job.objects.all().delete()
    with transaction.atomic():
        do_receive_messages(
            messenger_channel,
            [
                inbound("1000000000000001", "m1"),
                inbound("1000000000000002", "m2"),
                inbound("1000000000000002", "m3"),
                inbound("1000000000000003", "m4"),
            ],
        )
    new = ContactIdentity.objects.exclude(pk=known.pk).order_by("pk")
    assert [(j.args, j.key) for j in profile_jobs()] == [
        ({"identity_id": i.pk}, f"profile:{i.pk}") for i in new
    ]


def test_the_single_path_queues_a_job_for_a_new_identity_only(messenger_channel):
    from madoguchi.actions.inbound import do_receive_message

    with transaction.atomic():
        do_receive_message(messenger_channel, inbound("1000000000000004", "m1"))
        do_receive_message(messenger_channel, inbound("1000000000000004", "m2"))
    identity = ContactIdentity.objects.get()
    assert [(j.args, j.key) for j in profile_jobs()] == [
        ({"identity_id": identity.pk}, f"profile:{identity.pk}")
    ]


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "single"])
def test_channels_without_profile_lookups_queue_nothing(channel, bulk):
    """WhatsApp (the ``channel`` fixture) names contacts in its webhooks."""
    from madoguchi.actions.inbound import do_receive_message, do_receive_messages

    message = inbound("819012345678", "wamid.1")
    with transaction.atomic():
        if bulk:
            do_receive_messages(channel, [message])
        else:
            do_receive_message(channel, message)
    assert ContactIdentity.objects.count() == 1
    assert profile_jobs() == []


# -- the action -----------------------------------------------------------------------------------


def test_the_action_names_a_contact_still_called_by_any_of_its_handles(messenger_channel):
    from madoguchi.actions.contacts import do_update_profile
    from madoguchi.actions.inbound import contact_identity
    from madoguchi.providers.base import ContactProfile

    first = contact_identity(messenger_channel, "1000000000000005")
    second = ContactIdentity.objects.create(
        contact=first.contact, channel=messenger_channel, handle="1000000000000006"
    )
    assert do_update_profile(second.pk, ContactProfile(name=" Ana Lima ")).profile_name == (
        "Ana Lima"
    )
    assert Contact.objects.get().name == "Ana Lima"
    do_update_profile(second.pk, ContactProfile(name="Ana Lima"))  # nothing new: no audit row
    assert AuditEvent.objects.filter(action="contact.profile_updated").count() == 1
    assert do_update_profile(10**9, ContactProfile(name="Nobody")) is None
