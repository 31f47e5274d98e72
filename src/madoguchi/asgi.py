"""The ASGI application: webhooks (lean), Django (console, API), WebSocket, lifespan."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "madoguchi.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

from madoguchi import gcpolicy  # noqa: E402
from madoguchi.realtime.consumers import RAW_SEND, EventsConsumer  # noqa: E402
from madoguchi.realtime.publish import register_server_loop, relay_from_redis  # noqa: E402
from madoguchi.views.request_threads import request_threads  # noqa: E402
from madoguchi.views.webhooks import webhook_app  # noqa: E402

static_app = StaticFiles(directory=settings.PACKAGE_DIR / "static")

websocket_app = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter([path("ws/", EventsConsumer.as_asgi())]))
)


class InProcessWorker:
    """A worker thread inside the server process (the demo, and any single-process setup
    without Redis, where events can only reach sockets from inside this process)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        from madoguchi.worker import Worker

        self.thread = threading.Thread(
            target=Worker().run_forever, args=(self.stop,), name="madoguchi-worker", daemon=True
        )
        self.thread.start()

    def shutdown(self) -> None:
        from madoguchi.realtime import wakeup

        self.stop.set()
        wakeup.local_event.set()
        if self.thread is not None:
            self.thread.join(timeout=20)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    worker: InProcessWorker | None = None
    relay: asyncio.Task[None] | None = None
    stop_relay = asyncio.Event()
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            gcpolicy.install(settings.GC_FULL_SECONDS)
            register_server_loop(asyncio.get_running_loop())
            if settings.REDIS_URL:
                relay = asyncio.get_running_loop().create_task(relay_from_redis(stop_relay))
            if os.environ.get("MADOGUCHI_INPROCESS_WORKER", "") == "1":
                worker = InProcessWorker()
                worker.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if worker is not None:
                await asyncio.to_thread(worker.shutdown)
            if relay is not None:
                stop_relay.set()
                relay.cancel()
            register_server_loop(None)
            gcpolicy.uninstall()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        if scope["path"].startswith("/webhooks/"):
            await webhook_app(scope, receive, send)
        elif scope["path"].startswith("/static/"):
            await static_app({**scope, "root_path": "/static"}, receive, send)
        else:
            async with request_threads.borrow():  # not a new thread per request
                await django_app(scope, receive, send)
    elif kind == "websocket":
        await websocket_app({**scope, RAW_SEND: send}, receive, send)
    elif kind == "lifespan":
        await lifespan(scope, receive, send)
