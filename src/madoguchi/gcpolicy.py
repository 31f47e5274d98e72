"""Short garbage-collector pauses in the server and worker processes.

CPython 3.11's full collection walks every tracked object while holding the GIL. A server with
5,000 open sockets holds about 800,000 of them (some 160 per socket: uvicorn's protocol,
websockets' state, the consumer's coroutines and tasks), and a full collection then stops the
event loop for 0.6 s on a 2-core host (bench B6), delaying every delivery and webhook in flight.
Full collections come each time the long-lived objects grow by a quarter, so while sockets
are opening they come again and again, each longer than the last.

The policy: when a full collection ends, its survivors go to the permanent generation
(``gc.freeze``), so the next one walks only what became long-lived since (measured: 30-70 ms
at 5,000 sockets instead of 600). Frozen objects are still freed by reference counting, which
is how a closed socket's objects go; only a garbage *cycle* among frozen objects stays, since
no collection walks them. So that such garbage cannot pile up, a full collection at least every
``GC_FULL_SECONDS`` starts by thawing everything (``gc.unfreeze``) and walks it all. Measured
in B6: after 5,000 sockets opened and closed, such a walk found 36 to 63 objects to free.

What exists when the policy is installed (the imported code, Django's settings and apps) is
frozen at once. A worker's full collections otherwise walk all of it: 45-90 ms every one to three
seconds while it sends at a number's pace (bench B5, measured with a ``gc.callbacks`` probe),
during which none of its reserved send slots are used; frozen, 6-15 ms.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class FreezeSurvivors:
    """A ``gc.callbacks`` entry applying the policy above."""

    def __init__(self, full_every_seconds: float) -> None:
        self.full_every = full_every_seconds
        self.last_full = time.monotonic()
        self.thawed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        now = time.monotonic()
        if phase == "start":
            if now - self.last_full >= self.full_every:
                gc.unfreeze()  # this collection walks every object, frozen ones included
                self.thawed = True
            return
        if self.thawed:
            self.last_full = now
            self.thawed = False
        gc.freeze()


_installed: FreezeSurvivors | None = None


def install(full_every_seconds: float) -> None:
    """At start-up: the server's lifespan, ``madoguchi worker``. ``full_every_seconds <= 0``:
    leave CPython's own policy."""
    global _installed
    if _installed is not None or full_every_seconds <= 0:
        return
    _installed = FreezeSurvivors(full_every_seconds)
    gc.callbacks.append(_installed)
    gc.freeze()  # what exists at start-up (imported code, settings) lives as long as the process


def uninstall() -> None:
    """Back to CPython's own policy, with every frozen object thawed."""
    global _installed
    if _installed is None:
        return
    gc.callbacks.remove(_installed)
    _installed = None
    gc.unfreeze()
