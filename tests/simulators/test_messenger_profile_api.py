"""The User Profile API (``GET /{PSID}?fields=first_name,last_name,profile_pic``): the Messenger
simulator serving it and MessengerProvider.fetch_profile reading it, through real HTTP on the
loopback (the simulator fixtures of test_messenger_simulator)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from madoguchi.providers.base import ContactProfile
from madoguchi.providers.messenger import MessengerProvider
from madoguchi.simulators.messenger import split_name
from tests.simulators.test_messenger_simulator import PAGE, PSID, TOKEN, World, send_error


def profile(world: World, psid: str = PSID, *, token: str = TOKEN, **params: Any):
    return httpx.get(
        f"{world.server.url}/v25.0/{psid}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_it_answers_the_documented_fields_once_the_person_wrote(world: World) -> None:
    world.sim.customer_sends(PAGE, PSID, "Hola", name="Lucía Gómez")
    answer = profile(world, fields="first_name,last_name,profile_pic")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["id"], body["first_name"], body["last_name"]) == (PSID, "Lucía", "Gómez")
    picture = httpx.get(body["profile_pic"])  # served without credentials, like Meta's CDN
    assert picture.status_code == 200 and picture.content[:4] == b"\x89PNG"
    assert world.sim.profile_lookups == [
        (PAGE, PSID, ("first_name", "last_name", "profile_pic"), 200)
    ]


def test_fields_are_validated_and_only_the_asked_ones_returned(world: World) -> None:
    world.customer_writes()
    assert profile(world, fields="first_name").json() == {"first_name": "Maya", "id": PSID}
    # Locale, timezone and gender need permissions the simulated app lacks: left out.
    assert profile(world, fields="last_name,locale,gender").json() == {"last_name": "", "id": PSID}
    refused = profile(world, fields="first_name,email")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == 100 and "(email)" in error["message"]


def test_a_person_who_never_wrote_or_is_unknown_gets_100(world: World) -> None:
    world.sim.add_user(PAGE, PSID, "Not Yet")  # known to the page, never opted in
    for psid in (PSID, "1000000000000001"):
        answer = profile(world, psid, fields="first_name")
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["code"], error["error_subcode"], error["type"]) == (
            100,
            33,
            "OAuthException",
        )
        assert error["fbtrace_id"]


def test_a_token_of_no_page_gets_190(world: World) -> None:
    world.customer_writes()
    answer = profile(world, token="EAAG-nope", fields="first_name")
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, 190)
    bare = httpx.get(f"{world.server.url}/v25.0/{PSID}", params={"fields": "first_name"})
    assert bare.json()["error"]["code"] == 190


def test_names_split_as_people_write_them() -> None:
    assert split_name("Lucía Gómez") == ("Lucía", "Gómez")
    assert split_name("Maria de la Cruz") == ("Maria", "de la Cruz")
    assert split_name("佐藤 花子") == ("花子", "佐藤")
    assert split_name("Cher") == ("Cher", "")
    assert split_name("") == ("", "")


# -- the provider ------------------------------------------------------------------------------


def test_the_provider_reads_the_name_and_picture(world: World) -> None:
    world.sim.customer_sends(PAGE, PSID, "こんにちは", name="佐藤 花子")
    found = world.provider.fetch_profile(PSID)
    assert isinstance(found, ContactProfile)
    assert found.name == "佐藤 花子"  # family name first, as it is written
    assert found.avatar_url.startswith(world.server.url)
    page, psid, fields, status = world.sim.profile_lookups[-1]
    assert (page, psid, set(fields), status) == (
        PAGE,
        PSID,
        {"first_name", "last_name", "profile_pic"},
        200,
    )


def test_explicit_first_and_last_names_are_served(world: World) -> None:
    world.sim.add_user(PAGE, PSID, "ignored", first_name="Jean-Luc", last_name="Picard")
    world.customer_writes()  # a message under another display name keeps the explicit parts
    assert world.provider.fetch_profile(PSID).name == "Jean-Luc Picard"


def test_the_provider_maps_a_person_who_never_opted_in_as_permanent(world: World) -> None:
    world.sim.add_user(PAGE, PSID, "Not Yet")
    error = send_error(lambda: world.provider.fetch_profile(PSID))
    assert (error.error.code, error.error.subcode, error.permanent) == (100, 33, True)


@pytest.mark.parametrize(
    ("fault", "code", "permanent"),
    [
        (("http", 503), 2, False),
        (("graph", 613), 613, False),
        (("graph", 4), 4, False),
        (("graph", 190), 190, True),
    ],
)
def test_the_provider_maps_profile_errors(
    world: World, fault: tuple[Any, ...], code: int, permanent: bool
) -> None:
    world.customer_writes()
    world.sim.inject_profile_faults(PAGE, [fault])
    error = send_error(lambda: world.provider.fetch_profile(PSID))
    assert (error.error.code, error.permanent) == (code, permanent)
    assert world.provider.fetch_profile(PSID).name == "Maya"  # one fault, one request
    world.provider.send_text(PSID, "Sends keep their own fault queue")


def test_profile_faults_and_send_faults_are_separate(world: World) -> None:
    world.customer_writes()
    world.sim.inject_faults(PAGE, [("graph", 613)])
    assert world.provider.fetch_profile(PSID).name == "Maya"
    assert send_error(lambda: world.provider.send_text(PSID, "x")).error.code == 613


def test_other_providers_know_no_profiles() -> None:
    from madoguchi.providers.base import Provider
    from madoguchi.providers.registry import provider_class

    assert MessengerProvider.capabilities.has_profile_lookup
    for kind in ("whatsapp", "viber", "email"):
        cls = provider_class(kind)
        assert not cls.capabilities.has_profile_lookup
        assert cls.fetch_profile is Provider.fetch_profile
