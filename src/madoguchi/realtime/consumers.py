"""The one WebSocket per browser tab: session- or token-authenticated."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import publish

# The ASGI server's own ``send`` for the socket, put in the scope by madoguchi.asgi: events skip
# the session and auth middlewares' per-message wrappers (they act on HTTP responses only).
RAW_SEND = "madoguchi.raw_send"
# Events queued for one socket at most. A client that stops reading (a sleeping laptop with its
# connection still open) would otherwise make the server hold every event for it; past this the
# queue is dropped and the client told to re-fetch, as after a reconnection.
OUTBOX_MAX = 1000
RESYNC = json.dumps({"type": "resync"})
# Events that wait together for a socket leave in one frame, a JSON array (at most this many):
# under load a burst costs one frame per socket instead of one per event, and a quiet socket
# still gets each event alone, at once.
FRAME_EVENTS_MAX = 100


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes the events that actions addressed to this user (recipients are computed by
    permission when the event is published; see realtime.publish for the delivery). Sends
    ``{"type": "hello"}`` first; the browser then re-fetches state, since events missed during a
    disconnect are not replayed. ``{"type": "resync"}`` later means the same. A frame holds one
    event (an object) or, when several were waiting, a JSON array of events in order."""

    # Events do not travel through a channel layer (see realtime.publish): no layer, so a
    # socket opens even while Redis is away.
    channel_layer_alias = "madoguchi-no-layer"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            user = await self.token_user()
        if user is None or not user.is_active:
            await self.close(code=4401)
            return
        self.user_id = user.pk
        await self.accept()
        self.outbox: deque[str] = deque()
        self.draining: asyncio.Task[None] | None = None
        self.raw_send = self.scope.get(RAW_SEND) or self.base_send
        self.push(json.dumps({"type": "hello", "user": user.pk}))  # before any event
        publish.register_socket(self.user_id, self)

    @database_sync_to_async
    def token_user(self) -> Any:
        from madoguchi.views.auth import user_for_token

        for name, value in self.scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                return user_for_token(value[7:].decode("latin-1"))
        return None

    async def disconnect(self, code: int) -> None:
        user_id = getattr(self, "user_id", None)
        if user_id is not None:
            publish.unregister_socket(user_id, self)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    def push(self, text: str) -> None:
        """Called on the server loop by realtime.publish with an encoded event; sends in the
        order called. One task drains the socket's queue while it is not empty (not one per
        event), so a slow socket delays only itself. Past OUTBOX_MAX queued events the queue is
        replaced by one ``resync``."""
        if len(self.outbox) >= OUTBOX_MAX:
            self.outbox.clear()
            self.outbox.append(RESYNC)
        self.outbox.append(text)
        if self.draining is None:
            self.draining = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        try:
            while self.outbox:
                outbox = self.outbox
                if len(outbox) == 1:
                    text = outbox.popleft()
                else:
                    count = min(len(outbox), FRAME_EVENTS_MAX)
                    text = "[" + ",".join([outbox.popleft() for _ in range(count)]) + "]"
                await self.raw_send({"type": "websocket.send", "text": text})
        except Exception:  # the socket went away: disconnect() unregisters it
            self.outbox.clear()
        finally:
            self.draining = None
