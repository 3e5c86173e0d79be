"""What both fake peers share: scripted faults, request recording, start/stop, standalone mode.

A fault script is a queue: each request to a scripted route takes the next fault, if any, and
suffers it; an empty queue means normal, documented behaviour. A test (or a benchmark in another
process, through the `/_fake/...` control routes) queues faults such as "429 with Retry-After
five times", "answer after 2 s" or "reset the connection".

Control routes: `GET /_fake/stats`; `POST /_fake/faults` (a JSON list, see `fault_from_json`);
`POST /_fake/down` `{"down": true|false}` (every scripted route resets connections while down);
`POST /_fake/reset` (forget everything received). The peers add their own (`/_fake/events`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web

__all__ = [
    "BodyError",
    "Delay",
    "FakePeer",
    "Fault",
    "FaultScript",
    "Received",
    "Reset",
    "Respond",
    "fault_from_json",
    "json_response",
    "serve_standalone",
]

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer this instead of doing the work (a JSON body for a dict or list)."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delay:
    """Do the work normally, but answer only after this many seconds."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop the connection with a TCP reset instead of answering."""


Fault = Respond | Delay | Reset


class FaultScript:
    """The faults the next requests suffer, in order."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def push(self, *faults: Fault) -> None:
        self._queue.extend(faults)

    def storm(
        self, count: int, status: int = 429, retry_after: str | None = "1", body: Any = None
    ) -> None:
        """`count` answers of `status` (a 429 storm by default) with a Retry-After header."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.push(*(Respond(status, body, headers) for _ in range(count)))

    def take(self) -> Fault | None:
        return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


def fault_from_json(data: Mapping[str, Any]) -> Fault:
    """A fault from JSON: `{"respond": {"status", "body", "headers"}}`, `{"delay": 2}`,
    `{"reset": true}`."""
    if "respond" in data:
        spec = data["respond"]
        return Respond(int(spec["status"]), spec.get("body"), dict(spec.get("headers", {})))
    if "delay" in data:
        return Delay(float(data["delay"]))
    if data.get("reset"):
        return Reset()
    raise ValueError(f"unknown fault {data!r}")


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived; `body` is decompressed."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    wire_bytes: int
    arrived: float


class BodyError(Exception):
    """The request body cannot be read (bad encoding); the peer answers it its own way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(status: int, data: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers=headers,
    )


class FakePeer:
    """An aiohttp server on loopback (127.0.0.1 unless told) with a fault script and a record
    of what it received."""

    def __init__(self) -> None:
        self.faults = FaultScript()
        self.requests: list[Received] = []
        self.app = web.Application(client_max_size=1024**3)
        self.app.router.add_get("/_fake/stats", self._stats_route)
        self.app.router.add_post("/_fake/faults", self._faults_route)
        self.app.router.add_post("/_fake/reset", self._reset_route)
        self.app.router.add_post("/_fake/down", self._down_route)
        self.down = False
        """While True every scripted route resets the connection, as a node that is down."""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._changed: asyncio.Condition | None = None
        self.port = 0
        self.host = HOST
        self._tls = False

    # Life cycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    async def start(
        self, port: int = 0, ssl_context: ssl.SSLContext | None = None, *, host: str = HOST
    ) -> Self:
        """Listen on `host` (127.0.0.1; "::1" for IPv6) and `port` (0: a free one), over TLS
        with `ssl_context`."""
        self._tls = ssl_context is not None
        self.host = host
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server  # aiohttp exposes the bound port nowhere else
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Waiting on what arrived

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def changed(self) -> None:
        """Wake whoever waits in `wait_until`; call after recording something."""
        condition = self._condition()
        async with condition:
            condition.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds (re-checked whenever the peer records something)."""
        condition = self._condition()
        async with condition:
            await asyncio.wait_for(condition.wait_for(predicate), timeout)

    # Helpers for the routes of a peer

    async def read_body(self, request: web.Request) -> tuple[bytes, int]:
        """The decompressed body and its size on the wire; BodyError for an unknown encoding."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            raise BodyError(415, f"unsupported Content-Encoding {encoding!r}")
        try:
            body = await request.read()  # aiohttp's parser has already gunzipped it
        except Exception as exc:  # a corrupt gzip stream surfaces here
            raise BodyError(400, f"cannot read the body: {exc}") from None
        return body, request.content_length or len(body)

    def record(self, request: web.Request, body: bytes, wire_bytes: int) -> Received:
        received = Received(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            wire_bytes=wire_bytes,
            arrived=time.time(),
        )
        self.requests.append(received)
        return received

    async def suffer(self, script: FaultScript, request: web.Request) -> web.StreamResponse | None:
        """Apply the next fault of `script`: an answer to return, or None to carry on."""
        if self.down:
            _reset(request)
            return web.Response(status=500)  # never reaches the client
        fault = script.take()
        match fault:
            case None:
                return None
            case Delay(seconds=seconds):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), seconds)
                return None
            case Respond(status=status, body=body, headers=headers):
                if isinstance(body, str):
                    return web.Response(status=status, text=body, headers=headers)
                if body is None:
                    return web.Response(status=status, headers=headers)
                return json_response(status, body, headers)
            case Reset():
                _reset(request)
                return web.Response(status=500)  # never reaches the client
        raise AssertionError(fault)

    # Control routes, for a benchmark that runs the peer in another process

    def stats(self) -> dict[str, Any]:
        return {"requests": len(self.requests)}

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()

    async def _stats_route(self, request: web.Request) -> web.Response:
        return json_response(200, self.stats())

    async def _faults_route(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())
        self.faults.push(*(fault_from_json(item) for item in data))
        return json_response(200, {"queued": len(self.faults)})

    async def _down_route(self, request: web.Request) -> web.Response:
        # A harness takes the peer "down" before reading what arrived and stopping it, so
        # nothing is accepted between the read and the stop.
        self.down = bool(orjson.loads(await request.read()).get("down", True))
        return json_response(200, {"down": self.down})

    async def _reset_route(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response(200, {"reset": True})


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST instead of FIN: the client sees a reset connection.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def serve_standalone(
    description: str,
    build: Callable[[argparse.Namespace], FakePeer],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    argv: Iterable[str] | None = None,
) -> None:
    """Run a peer until SIGTERM or SIGINT; print its port on the first line of stdout."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    add_arguments(parser)
    args = parser.parse_args(None if argv is None else list(argv))
    # A peer keeps everything it receives. With the default thresholds the collector walked
    # every kept envelope again and again (a 100,000-event drain: 60 instead of 35 us of the
    # peer's CPU per event, on the cores the daemon under test shares). Young collections
    # still free cyclic garbage; full ones, which only revisit what is kept, never run.
    gc.set_threshold(10_000, 10, 1_000_000_000)

    async def main() -> None:
        peer = build(args)
        await peer.start(args.port)
        print(peer.port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await peer.stop()

    asyncio.run(main())
    sys.exit(0)
