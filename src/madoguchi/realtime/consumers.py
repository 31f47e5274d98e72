"""The one WebSocket per browser tab: session- or token-authenticated, per-user group."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .publish import user_group


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """Pushes the events that actions addressed to this user (recipients are computed by
    permission when the event is published). Sends ``{"type": "hello"}`` first; the browser then
    re-fetches state, since events missed during a disconnect are not replayed."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            user = await self.token_user()
        if user is None or not user.is_active:
            await self.close(code=4401)
            return
        self.user = user
        self.group = user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": user.pk})

    @database_sync_to_async
    def token_user(self) -> Any:
        from madoguchi.views.auth import user_for_token

        for name, value in self.scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                return user_for_token(value[7:].decode("latin-1"))
        return None

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def madoguchi_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
