"""Every console string has its Japanese translation, and the compiled catalog is current."""

from __future__ import annotations

import gettext
import json
from pathlib import Path

import pytest

LOCALE = Path(__file__).resolve().parents[1] / "src" / "madoguchi" / "locale" / "ja" / "LC_MESSAGES"


def entries(po: Path) -> list[tuple[str, str, bool]]:
    """(msgid, msgstr, fuzzy) of every entry but the header; continuation lines joined."""
    found, msgid, msgstr, fuzzy, field = [], None, None, False, None
    for line in [*po.read_text().splitlines(), ""]:
        if line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        elif line.startswith("msgid "):
            msgid, field = line[7:-1], "id"
        elif line.startswith("msgstr "):
            msgstr, field = line[8:-1], "str"
        elif line.startswith('"') and field == "id":
            msgid += line[1:-1]
        elif line.startswith('"') and field == "str":
            msgstr += line[1:-1]
        elif not line.strip():
            if msgid:
                found.append((msgid, msgstr or "", fuzzy))
            msgid, msgstr, fuzzy, field = None, None, False, None
    return found


def unescape(po_string: str) -> str:
    """A PO string's C escapes (\\n, \\", \\\\) are JSON's."""
    return json.loads(f'"{po_string}"')


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_every_string_is_translated_into_japanese(domain):
    missing = [m for m, s, fuzzy in entries(LOCALE / f"{domain}.po") if not s or fuzzy]
    assert missing == []


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_the_compiled_catalog_matches_the_po_file(domain):
    with (LOCALE / f"{domain}.mo").open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)
    stale = [
        m
        for m, s, _ in entries(LOCALE / f"{domain}.po")
        if catalog.gettext(unescape(m)) != unescape(s)
    ]
    assert stale == []


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_every_string_in_the_code_has_an_entry(domain, tmp_path):
    """makemessages over a copy of the package finds no string the catalog lacks."""
    import shutil
    import subprocess
    import sys

    package = LOCALE.parents[2]
    copy = tmp_path / "madoguchi"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    subprocess.run(
        [sys.executable, "-m", "django", "makemessages", "-l", "ja", "-d", domain],
        cwd=copy,
        check=True,
        capture_output=True,
    )
    ours = {m for m, _, _ in entries(LOCALE / f"{domain}.po")}
    found = {m for m, _, _ in entries(copy / "locale" / "ja" / "LC_MESSAGES" / f"{domain}.po")}
    assert sorted(found - ours) == []
