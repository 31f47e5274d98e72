"""The installable-app files: manifest, icons, service worker, offline page (no database)."""

from __future__ import annotations

import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest

import madoguchi

PACKAGE = Path(madoguchi.__file__).parent
STATIC = PACKAGE / "static"
ASSETS = STATIC / "madoguchi"
ICONS = ASSETS / "icons"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EXPECTED_PNGS = {
    "icon-192.png": 192,
    "icon-512.png": 512,
    "maskable-192.png": 192,
    "maskable-512.png": 512,
    "apple-touch-icon.png": 180,
    "favicon-32.png": 32,
}
SHELL = [
    "/static/madoguchi/app.css",
    "/static/madoguchi/app.js",
    "/static/madoguchi/icons/icon-192.png",
    "/offline/",
]
NEVER_CACHED = ["/api/", "/ws/", "/webhooks/", "/media/", "/login/", "/logout/"]


# --- a small PNG reader ------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def png_size(path: Path) -> tuple[int, int]:
    kind, ihdr = png_chunks(path.read_bytes())[0]
    assert kind == b"IHDR" and len(ihdr) == 13
    width, height = struct.unpack(">II", ihdr[:8])
    return width, height


def png_rgba(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGBA, non-interlaced PNG into rows of RGBA bytes."""
    chunks = png_chunks(path.read_bytes())
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 6, 0), "expected 8-bit RGBA, not interlaced"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride, bpp = width * 4, 4
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(stride):
            left = cur[i - bpp] if i >= bpp else 0
            up = previous[i]
            up_left = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                cur[i] = (cur[i] + left) & 0xFF
            elif kind == 2:
                cur[i] = (cur[i] + up) & 0xFF
            elif kind == 3:
                cur[i] = (cur[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                cur[i] = (cur[i] + pred) & 0xFF
            else:
                assert kind == 0, f"unknown filter {kind}"
        rows.append(bytes(cur))
        previous = cur
    return width, height, rows


# --- manifest ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((ASSETS / "manifest.webmanifest").read_text(encoding="utf-8"))


def test_manifest_has_the_required_members(manifest: dict) -> None:
    assert manifest["name"] == "Madoguchi 窓口"
    assert manifest["short_name"] == "Madoguchi"
    assert manifest["start_url"] == "/"
    assert manifest["scope"] == "/"
    assert manifest["display"] == "standalone"
    assert manifest["background_color"] == "#f7f8fa"
    assert manifest["theme_color"] == "#0f766e"
    assert manifest["description"]
    assert manifest["lang"] and manifest["dir"] in {"ltr", "rtl", "auto"}


def test_manifest_icons_exist_with_their_declared_sizes(manifest: dict) -> None:
    purposes: dict[str, set[str]] = {}
    for icon in manifest["icons"]:
        assert icon["src"].startswith("/static/"), icon
        path = STATIC / icon["src"].removeprefix("/static/")
        assert path.is_file(), f"{icon['src']} is missing"
        for purpose in icon.get("purpose", "any").split():
            purposes.setdefault(purpose, set()).add(icon["sizes"])
        if icon["type"] == "image/png":
            width, height = png_size(path)
            assert icon["sizes"] == f"{width}x{height}", icon["src"]
        else:
            assert icon["type"] == "image/svg+xml" and icon["sizes"] == "any"
    # Chrome's installability wants 192 and 512 "any" icons; Android wants maskable ones.
    assert {"192x192", "512x512"} <= purposes["any"]
    assert {"192x192", "512x512"} <= purposes["maskable"]


# --- icons -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), EXPECTED_PNGS.items())
def test_icons_are_valid_pngs_of_the_right_size(name: str, size: int) -> None:
    chunks = png_chunks((ICONS / name).read_bytes())
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    assert any(kind == b"IDAT" for kind, _ in chunks)
    assert png_size(ICONS / name) == (size, size)
    width, height, rows = png_rgba(ICONS / name)  # the pixel data decodes completely
    assert (width, height, len(rows)) == (size, size, size)


@pytest.mark.parametrize("name", ["maskable-192.png", "maskable-512.png"])
def test_maskable_icons_keep_the_glyph_in_the_safe_zone(name: str) -> None:
    """Outside the central circle (radius 40 %) there is only the opaque background."""
    size, _, rows = png_rgba(ICONS / name)
    background = rows[0][:4]
    assert background[3] == 255
    centre, radius = size / 2, 0.4 * size
    for y, row in enumerate(rows):
        for x in range(size):
            if (x + 0.5 - centre) ** 2 + (y + 0.5 - centre) ** 2 > radius**2:
                assert row[x * 4 : x * 4 + 4] == background, f"glyph pixel at {x},{y}"


def test_apple_touch_icon_is_opaque() -> None:
    _, _, rows = png_rgba(ICONS / "apple-touch-icon.png")
    assert all(row[3::4] == b"\xff" * (len(row) // 4) for row in rows)


def test_svg_icon_is_square_svg() -> None:
    root = ElementTree.fromstring((ICONS / "icon.svg").read_text(encoding="utf-8"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    _, _, width, height = root.attrib["viewBox"].split()
    assert width == height


# --- service worker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service_worker() -> str:
    return (ASSETS / "sw.js").read_text(encoding="utf-8")


def js_string_list(source: str, name: str) -> list[str]:
    match = re.search(rf"const {name} = \[(.*?)\];", source, re.DOTALL)
    assert match, f"const {name} = [...] not found"
    body = match.group(1).replace("OFFLINE_URL", '"/offline/"')
    return re.findall(r'"([^"]*)"', body)


def test_service_worker_precaches_the_shell(service_worker: str) -> None:
    assert 'const CACHE = "madoguchi-shell-v1";' in service_worker
    assert 'const OFFLINE_URL = "/offline/";' in service_worker
    assert js_string_list(service_worker, "SHELL") == SHELL
    for url in SHELL:
        assert url in service_worker
    for call in ("self.skipWaiting()", "self.clients.claim()", "caches.delete("):
        assert call in service_worker


def test_service_worker_never_caches_private_or_live_paths(service_worker: str) -> None:
    never = js_string_list(service_worker, "NEVER_CACHE")
    assert set(NEVER_CACHED) <= set(never)
    shell = js_string_list(service_worker, "SHELL")
    assert not [url for url in shell for prefix in never if url.startswith(prefix)]
    # Only GET, same-origin, 200 "basic" responses are handled/stored.
    assert 'request.method !== "GET"' in service_worker
    assert "url.origin !== self.location.origin" in service_worker
    assert 'response.status === 200 && response.type === "basic"' in service_worker
    assert 'request.mode === "navigate"' in service_worker


# --- offline page ------------------------------------------------------------------------------


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in {"src", "href", "action", "srcset"} and v]


def test_offline_page_is_standalone_and_bilingual() -> None:
    html = (PACKAGE / "templates" / "madoguchi" / "offline.html").read_text(encoding="utf-8")
    assert "{% extends" not in html
    assert "You're offline" in html and "オフラインです" in html
    assert "location.reload()" in html
    collector = _Collector()
    collector.feed(html)
    assert collector.urls == ["/static/madoguchi/icons/icon-192.png"]
    assert "link" not in collector.tags  # no external stylesheet (inline CSS only)
    assert "url(" not in html and "@import" not in html
