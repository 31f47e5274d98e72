"""Reading the User Profile API's answer (messenger_wire.parse_profile): pure, no network."""

from __future__ import annotations

from typing import Any

import pytest

from madoguchi.providers.base import ContactProfile
from madoguchi.providers.messenger_wire import PROFILE_FIELDS, parse_profile, profile_name


def test_it_asks_only_the_fields_every_app_may_read() -> None:
    assert PROFILE_FIELDS.split(",") == ["first_name", "last_name", "profile_pic"]


def test_it_reads_a_documented_answer() -> None:
    answer = {
        "first_name": "Peter",
        "last_name": "Chang",
        "profile_pic": "https://platform-lookaside.fbsbx.com/platform/profilepic/?psid=1",
        "id": "1254459154682919",
    }
    assert parse_profile(answer) == ContactProfile(
        name="Peter Chang",
        avatar_url="https://platform-lookaside.fbsbx.com/platform/profilepic/?psid=1",
    )


@pytest.mark.parametrize(
    ("first", "last", "name"),
    [
        ("Lucía", "Gómez", "Lucía Gómez"),
        ("花子", "佐藤", "佐藤 花子"),
        ("민준", "김", "김 민준"),
        ("Cher", "", "Cher"),
        ("", "Smith", "Smith"),
        ("  Anne   Marie ", " Dupont ", "Anne Marie Dupont"),
        ("花子", "Sato", "花子 Sato"),
    ],
)
def test_names_read_as_people_write_them(first: str, last: str, name: str) -> None:
    assert profile_name(first, last) == name


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "1"},
        {"first_name": "", "last_name": " ", "id": "1"},
        None,
        [],
        "Peter",
        {"first_name": {"x": 1}},
    ],
)
def test_an_answer_without_a_name_is_no_profile(answer: Any) -> None:
    assert parse_profile(answer) is None


def test_a_picture_that_is_not_a_web_url_is_dropped_and_names_are_bounded() -> None:
    found = parse_profile({"first_name": "A" * 300, "profile_pic": "javascript:alert(1)"})
    assert found is not None
    assert found.avatar_url == ""
    assert len(found.name) == 200
    assert parse_profile({"first_name": "Nul\x00l"}).name == "Null"
