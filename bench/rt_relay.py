"""The B3/B6 baseline: a bare WebSocket relay, run under the same uvicorn as the server
(``uvicorn bench.rt_relay:app``, RELAY_TOKENS = a JSON file mapping token -> user id).

A socket authenticates with ``Authorization: Bearer <token>`` (a dict lookup, no database) and
gets ``{"type": "hello"}``. ``POST /`` with ``{"users": [ids], "events": [event, …]}`` encodes
each event once and sends it to every open socket of those users, then answers 200. No framework,
no database, no worker: the least a server can do to put a POSTed event on the right sockets."""

from __future__ import annotations

import json
import os
from typing import Any

TOKENS: dict[str, int] = json.loads(open(os.environ["RELAY_TOKENS"]).read())
SOCKETS: dict[int, set[Any]] = {}


async def websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    token = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value.startswith(b"Bearer "):
            token = value[7:].decode("latin-1")
    user = TOKENS.get(token)
    if user is None:
        await send({"type": "websocket.close", "code": 4401})
        return
    await send({"type": "websocket.accept"})
    SOCKETS.setdefault(user, set()).add(send)
    await send({"type": "websocket.send", "text": json.dumps({"type": "hello", "user": user})})
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        SOCKETS[user].discard(send)


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        data = json.loads(b"".join(chunks))
        for event in data["events"]:
            text = json.dumps(event)
            for user in data["users"]:
                for socket in tuple(SOCKETS.get(user, ())):
                    await socket({"type": "websocket.send", "text": text})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
