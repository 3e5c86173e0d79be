"""Misbehaving TCP peers for the stalled-receiver tests: they accept and then never help.

- `silent`: reads everything, never answers (an HTTP receiver that hangs).
- `half_close`: reads the request head, then shuts down its sending side (FIN) and keeps the
  connection open without ever answering: a half-closed TCP connection.
- `no_read`: never reads, so the kernel's buffers fill and the sender's writes block.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Literal, Self

__all__ = ["StalledPeer", "TcpProxy"]

Mode = Literal["silent", "half_close", "no_read"]


class _Stall(asyncio.Protocol):
    def __init__(self, peer: StalledPeer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer.accepted += 1
        self.peer.transports.append(transport)
        if self.peer.mode == "no_read":
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.peer.received += len(data)
        if self.peer.mode == "half_close" and self.transport is not None and self.head is not None:
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.head = b""
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                    self.peer.half_closed += 1

    def eof_received(self) -> bool:
        return True  # keep our side open: never answer, never close


class StalledPeer:
    """A TCP server on 127.0.0.1 that accepts connections and then stalls them (see module)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.accepted = 0
        self.received = 0
        self.half_closed = 0
        self.transports: list[asyncio.Transport] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.mode == "no_read":
            # Set before listen(), so accepted connections start with a small window that
            # fills after a few kilobytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        self._server = await loop.create_server(lambda: _Stall(self), sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for transport in self.transports:
            transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target port; `down()` makes the port refuse connections
    and cuts the open ones, `up()` listens again on the same port.

    A receiver behind it "goes down" without dying, so what it received stays countable.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, target_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, target_writer)),
            asyncio.create_task(self._pump(target_reader, writer)),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)
        await asyncio.gather(*pumps, return_exceptions=True)
        for end in (writer, target_writer):
            self._links.discard(end)
            end.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if sink.can_write_eof():
                with contextlib.suppress(OSError):
                    sink.write_eof()
