"""WebSocket clients for the real-time benchmarks, in their own process:
``python -m bench.rt_clients CONFIG.json OUT.json``.

CONFIG: {"url": "ws://host:port/ws/", "origin": "http://…", "sockets": [[index, token], …]}.
Opens every socket (Bearer token), waits for each one's ``hello``, prints ``ready <opened>
<failed>`` on stdout, then records every frame's arrival (time.monotonic, the same clock as the
load generator's on this machine) until SIGTERM, and writes OUT: a list of
[index, t, type, key] where key is the message's platform id (message events) or the
conversation's channel id (conversation events).

The client must read tens of thousands of frames a second on a machine it shares with the server
it measures, so it is lean: an asyncio protocol with a minimal RFC 6455 client (handshake,
unmasked server frames, pongs to pings), fields picked out with regular expressions instead of
parsing every JSON document. A general client library costs about ten times more per frame and
made the load generator the bottleneck."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import signal
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

TYPE = re.compile(rb'^\{"type":\s*"(\w+)"')
PLATFORM_ID = re.compile(rb'"platform_id":\s*"([^"]*)"')
CHANNEL_ID = re.compile(rb'"channel_id":\s*(\d+)')


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Client(asyncio.Protocol):
    def __init__(self, index: int, request: bytes, records: list[list[Any]]) -> None:
        self.index = index
        self.request = request
        self.records = records
        self.buffer = bytearray()
        self.upgraded = False
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.records.append([self.index, time.monotonic(), "closed", None])
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before hello"))

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 101 " not in status:
                self.hello.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()  # type: ignore[union-attr]
                return
            del buffer[: end + 4]
            self.upgraded = True
        start, size = 0, len(buffer)
        while size - start >= 2:
            opcode = buffer[start] & 0x0F
            length = buffer[start + 1] & 0x7F
            header = 2
            if length == 126:
                if size - start < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start + 2)
                header = 4
            elif length == 127:
                if size - start < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start + 2)
                header = 10
            if size - start < header + length:
                break
            payload = bytes(buffer[start + header : start + header + length])
            start += header + length
            if opcode == 0x1:
                self.frame(t, payload)
            elif opcode == 0x9:  # ping: answer with a masked pong carrying the same payload
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.records.append([self.index, t, "closed", None])
        del buffer[:start]

    def frame(self, t: float, payload: bytes) -> None:
        if payload.startswith(b"["):
            # Events that waited together: "[" + ",".join(encoded events) + "]". Inside an
            # encoded string a quote is escaped, so ',{"type":' only ever starts an event.
            for n, part in enumerate(payload[1:-1].split(b',{"type":')):
                self.event(t, part if n == 0 else b'{"type":' + part)
            return
        self.event(t, payload)

    def event(self, t: float, payload: bytes) -> None:
        found = TYPE.match(payload)
        kind = found.group(1).decode() if found else "?"
        if kind == "message":
            pid = PLATFORM_ID.search(payload)
            self.records.append([self.index, t, kind, pid.group(1).decode() if pid else None])
        elif kind == "conversation":
            channel = CHANNEL_ID.search(payload)
            self.records.append([self.index, t, kind, int(channel.group(1)) if channel else None])
        elif kind == "hello" and not self.hello.done():
            self.hello.set_result(None)
        else:
            self.records.append([self.index, t, kind, None])


async def main(config: dict[str, Any], out_path: str) -> None:
    records: list[list[Any]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    url = urlsplit(config["url"])
    gate = asyncio.Semaphore(int(config.get("concurrency", 64)))
    clients: list[Client] = []
    failed = 0

    async def open_one(index: int, token: str) -> None:
        nonlocal failed
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {config['origin']}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        async with gate:
            try:
                _transport, client = await loop.create_connection(
                    lambda: Client(index, request, records), url.hostname, url.port
                )
                await asyncio.wait_for(client.hello, 120)
            except Exception as exc:
                failed += 1
                if failed <= 3:
                    print(f"socket {index} failed: {exc!r}", file=sys.stderr, flush=True)
                return
        clients.append(client)

    await asyncio.gather(*(open_one(i, t) for i, t in config["sockets"]))
    print(f"ready {len(clients)} {failed}", flush=True)
    await stop.wait()
    with open(out_path, "w") as handle:
        json.dump(records, handle)
    print("done", flush=True)
    # Closing thousands of sockets politely only slows the run down: the process exits.


if __name__ == "__main__":
    raise_nofile()
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    import uvloop

    uvloop.run(main(cfg, sys.argv[2]))
