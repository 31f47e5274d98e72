#!/usr/bin/env python3
"""Draw Madoguchi's app icons (PNG and SVG) with nothing but the standard library.

The mark is a service-counter window (窓口) on a teal (#0f766e) square: a white window
frame with rounded top corners standing on a counter ledge, and a clerk (head and
shoulders, cut off by the ledge) in the opening. No text: there are no fonts to rely on.

    python scripts/make_icons.py          # writes src/madoguchi/static/madoguchi/icons/
    python scripts/make_icons.py OUT_DIR  # somewhere else (to preview)

Shapes are described in unit coordinates (0..1 across the icon) and rasterised row by
row as horizontal spans; anti-aliasing comes from supersampling (SS x SS samples per
pixel). The SVG is written from the same geometry, so the two always agree.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = (
    Path(__file__).resolve().parent.parent / "src" / "madoguchi" / "static" / "madoguchi" / "icons"
)

TEAL = (0x0F, 0x76, 0x6E)
GLASS = (0x13, 0x8A, 0x80)  # the window opening: a touch lighter than the background
WHITE = (0xFF, 0xFF, 0xFF)
SS = 4  # supersampling factor per axis

Span = tuple[float, float]
Shape = Callable[[float], list[Span]]  # y (unit coords) -> sorted, disjoint x spans


# --- shapes: each maps a y coordinate to the x spans inside the shape ---------------------


def rounded_rect(
    x0: float, y0: float, x1: float, y1: float, r: float, r_bottom: float | None = None
) -> Shape:
    """A rectangle with radius r on the top corners and r_bottom (default r) on the bottom."""
    rt = min(r, (x1 - x0) / 2, y1 - y0)
    rb = min(r if r_bottom is None else r_bottom, (x1 - x0) / 2, y1 - y0 - rt)

    def spans(y: float) -> list[Span]:
        if not y0 <= y < y1:
            return []
        if y < y0 + rt:
            rad, dy = rt, y0 + rt - y
        elif y > y1 - rb:
            rad, dy = rb, y - (y1 - rb)
        else:
            return [(x0, x1)]
        inset = rad - math.sqrt(max(rad * rad - dy * dy, 0.0))
        return [(x0 + inset, x1 - inset)]

    return spans


def circle(cx: float, cy: float, r: float) -> Shape:
    def spans(y: float) -> list[Span]:
        dy = y - cy
        if abs(dy) >= r:
            return []
        half = math.sqrt(r * r - dy * dy)
        return [(cx - half, cx + half)]

    return spans


def union(*shapes: Shape) -> Shape:
    def spans(y: float) -> list[Span]:
        merged: list[Span] = []
        for a, b in sorted(s for shape in shapes for s in shape(y)):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    return spans


def difference(outer: Shape, hole: Shape) -> Shape:
    def spans(y: float) -> list[Span]:
        result = outer(y)
        for ha, hb in hole(y):
            cut: list[Span] = []
            for a, b in result:
                if hb <= a or ha >= b:
                    cut.append((a, b))
                    continue
                if a < ha:
                    cut.append((a, ha))
                if hb < b:
                    cut.append((hb, b))
            result = cut
        return result

    return spans


# --- the design ------------------------------------------------------------------------------


Rect = tuple[float, float, float, float, float, float]  # x0, y0, x1, y1, top r, bottom r
Circle = tuple[float, float, float]  # cx, cy, r


@dataclass(frozen=True)
class Glyph:
    """The window-at-a-counter mark, in unit coordinates, scaled about the icon's centre.

    At scale 1 it spans x 0.17..0.83, y 0.25..0.74 (every point lies within 0.4 of the
    centre, so even unscaled it would fit a maskable icon's safe zone).
    """

    scale: float = 1.0
    weight: float = 1.0  # stroke thickness multiplier (bolder for tiny sizes)

    def rects(self) -> dict[str, Rect]:
        w = 0.06 * self.weight  # frame stroke
        h = 0.08 * self.weight  # ledge thickness
        ledge_top = 0.74 - h
        # The frame, its opening and the clerk all run a little into the ledge, so they join
        # it without a seam and the frame is an arch with no bottom bar.
        rects = {
            "outer": (0.25, 0.25, 0.75, ledge_top + 0.01, 0.11, 0.0),
            "opening": (0.25 + w, 0.25 + w, 0.75 - w, ledge_top + 0.01, 0.11 - w, 0.0),
            "ledge": (0.17, ledge_top, 0.83, 0.74, h / 2, h / 2),
            "shoulders": (0.38, 0.525, 0.62, ledge_top + 0.01, 0.11, 0.0),
        }
        return {name: self._rect(*r) for name, r in rects.items()}

    def head(self) -> Circle:
        return (self._at(0.5), self._at(0.43), 0.066 * self.scale)

    def _at(self, v: float) -> float:
        return 0.5 + (v - 0.5) * self.scale

    def _rect(self, x0: float, y0: float, x1: float, y1: float, rt: float, rb: float) -> Rect:
        k = self.scale
        return (self._at(x0), self._at(y0), self._at(x1), self._at(y1), rt * k, rb * k)

    def glass(self) -> Shape:
        return rounded_rect(*self.rects()["opening"])

    def white(self) -> Shape:
        r = self.rects()
        return union(
            difference(rounded_rect(*r["outer"]), rounded_rect(*r["opening"])),
            rounded_rect(*r["ledge"]),
            rounded_rect(*r["shoulders"]),
            circle(*self.head()),
        )


@dataclass(frozen=True)
class Icon:
    name: str
    size: int
    glyph: Glyph
    corner: float  # background corner radius (unit coords); 0 = full-bleed square


ANY = Glyph()
ICONS = [
    Icon("icon-192.png", 192, ANY, corner=0.22),
    Icon("icon-512.png", 512, ANY, corner=0.22),
    # Maskable: full-bleed background; the glyph shrunk well inside the central 80 % circle.
    Icon("maskable-192.png", 192, Glyph(scale=0.88), corner=0.0),
    Icon("maskable-512.png", 512, Glyph(scale=0.88), corner=0.0),
    # iOS rounds the corners itself and shows transparency as black: opaque square.
    Icon("apple-touch-icon.png", 180, ANY, corner=0.0),
    # Tiny: bigger and bolder; the scale puts the frame's edges on whole pixels.
    Icon("favicon-32.png", 32, Glyph(scale=1.25, weight=1.25), corner=0.19),
]


# --- rasteriser ------------------------------------------------------------------------------


def coverage(shape: Shape, size: int) -> list[float]:
    """Fraction (0..1) of each pixel inside shape, from SS x SS samples per pixel."""
    counts = [0] * (size * size)
    n = size * SS
    for sy in range(n):
        y = (sy + 0.5) / n
        row = (sy // SS) * size
        for a, b in shape(y):
            # samples sit at x = (j + 0.5) / n; those with a <= x < b are inside
            j0 = max(0, math.ceil(a * n - 0.5))
            j1 = min(n, math.ceil(b * n - 0.5))
            if j1 <= j0:
                continue
            p0, p1 = j0 // SS, (j1 - 1) // SS
            if p0 == p1:
                counts[row + p0] += j1 - j0
                continue
            counts[row + p0] += SS * (p0 + 1) - j0
            for p in range(p0 + 1, p1):
                counts[row + p] += SS
            counts[row + p1] += j1 - SS * p1
    return [c / (SS * SS) for c in counts]


def render(icon: Icon) -> bytes:
    """RGBA rows: background, glass, then the white glyph, composited 'over' in order."""
    size = icon.size
    layers: list[tuple[Shape, tuple[int, int, int]]] = [
        (rounded_rect(0, 0, 1, 1, icon.corner), TEAL),
        (icon.glyph.glass(), GLASS),
        (icon.glyph.white(), WHITE),
    ]
    # premultiplied RGBA accumulators
    r = [0.0] * (size * size)
    g = [0.0] * (size * size)
    b = [0.0] * (size * size)
    a = [0.0] * (size * size)
    for shape, (cr, cg, cb) in layers:
        for i, c in enumerate(coverage(shape, size)):
            if c:
                k = 1.0 - c
                r[i] = cr * c + r[i] * k
                g[i] = cg * c + g[i] * k
                b[i] = cb * c + b[i] * k
                a[i] = c + a[i] * k
    out = bytearray()
    for y in range(size):
        out.append(0)  # PNG filter type: None
        for i in range(y * size, (y + 1) * size):
            alpha = a[i]
            if alpha <= 0:
                out += b"\0\0\0\0"
                continue
            out += bytes(
                (
                    min(255, round(r[i] / alpha)),
                    min(255, round(g[i] / alpha)),
                    min(255, round(b[i] / alpha)),
                    min(255, round(alpha * 255)),
                )
            )
    return bytes(out)


def png(size: int, raw_rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw_rows, 9))
        + chunk(b"IEND", b"")
    )


# --- SVG -------------------------------------------------------------------------------------


def svg(glyph: Glyph = ANY, corner: float = 0.22) -> str:
    u = 512  # viewBox units

    def f(v: float) -> str:
        return f"{v * u:.2f}".rstrip("0").rstrip(".")

    def path(x0: float, y0: float, x1: float, y1: float, rt: float, rb: float) -> str:
        def arc(r: float, x: float, y: float) -> str:
            return f"A{f(r)} {f(r)} 0 0 1 {f(x)} {f(y)}" if r else ""

        return (
            f"M{f(x0 + rt)} {f(y0)}H{f(x1 - rt)}{arc(rt, x1, y0 + rt)}"
            f"V{f(y1 - rb)}{arc(rb, x1 - rb, y1)}"
            f"H{f(x0 + rb)}{arc(rb, x0, y1 - rb)}"
            f"V{f(y0 + rt)}{arc(rt, x0 + rt, y0)}Z"
        )

    r = glyph.rects()
    frame = path(*r["outer"]) + path(*r["opening"])  # even-odd: the outline only
    hx, hy, hr = glyph.head()
    hexa = "#{:02x}{:02x}{:02x}".format
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {u} {u}">\n'
        "  <title>Madoguchi</title>\n"
        f'  <rect width="{u}" height="{u}" rx="{f(corner)}" fill="{hexa(*TEAL)}"/>\n'
        f'  <path fill="{hexa(*GLASS)}" d="{path(*r["opening"])}"/>\n'
        '  <g fill="#fff">\n'
        f'    <path fill-rule="evenodd" d="{frame}"/>\n'
        f'    <path d="{path(*r["ledge"])}{path(*r["shoulders"])}"/>\n'
        f'    <circle cx="{f(hx)}" cy="{f(hy)}" r="{f(hr)}"/>\n'
        "  </g>\n"
        "</svg>\n"
    )


def main(argv: Iterable[str] = ()) -> int:
    out_dir = Path(next(iter(argv), OUT_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)
    for icon in ICONS:
        (out_dir / icon.name).write_bytes(png(icon.size, render(icon)))
        print(f"wrote {out_dir / icon.name} ({icon.size}x{icon.size})")
    (out_dir / "icon.svg").write_text(svg(), encoding="utf-8")
    print(f"wrote {out_dir / 'icon.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
