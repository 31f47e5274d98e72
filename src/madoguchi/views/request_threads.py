"""Threads for Django's synchronous request code, reused from one request to the next.

Django's ASGI handler runs the synchronous part of each request (middleware, views, the ORM) in
a thread of the request's own (asgiref ``ThreadSensitiveContext``): a thread is started for
every request and joined, through yet another new thread, after it. On this project's 2-core
benchmark machine under load that start and join alone cost up to 7 ms at p95 per request
(bench B4, bench/RESULTS.md).

``borrow()`` gives the request an idle single-thread executor instead (a new one only when all
are busy), and Django's own context then defers to it. Nothing else changes: each request still
runs on a thread no other request uses at the same time, so requests do not queue behind each
other and thread-local state (the database connection, returned to the pool when the request
finishes) belongs to one request at a time, as under a WSGI server's thread pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext


class RequestThreads:
    def __init__(self, keep: int = 16) -> None:
        self.keep = keep  # idle threads kept; more are only made for bursts, then stopped
        self.idle: list[ThreadPoolExecutor] = []

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[None]:
        """Run the enclosed request's thread-sensitive code on a reused thread.

        Only the event loop's thread touches ``idle``, so no lock is needed. If the request's
        sync code outlives the block (a cancelled request), the executor still runs one call at
        a time: the next request given it waits for that call, it never runs beside it."""
        executor = (
            self.idle.pop()
            if self.idle
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield
        finally:
            if len(self.idle) < self.keep:
                self.idle.append(executor)
            else:
                executor.shutdown(wait=False)


request_threads = RequestThreads()
