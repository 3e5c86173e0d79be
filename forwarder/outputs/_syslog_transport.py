"""The sockets behind the syslog output: one persistent TCP/TLS stream, or UDP datagrams.

Both pick the destination among the configured endpoints with `Endpoints` (round-robin, a failing
endpoint benched for a growing cooldown) and try the next endpoint at once when one cannot be
reached, so one send fails only when no endpoint takes it. A stream stays on the endpoint it
reached until that fails; datagrams go round-robin, batch by batch.

Neither retries or sleeps: a failure comes back as a `Retry` with the reason, and the dispatcher
decides when to try again. The one bounded wait is after a TLS 1.3 handshake (see `_verdict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from forwarder.outputs._failover import Endpoints
from forwarder.outputs._tls import TlsClientConfig, TlsFilesUnusable
from forwarder.outputs.base import HealthcheckError, Retry

__all__ = ["DatagramSender", "Endpoint", "Sender", "StreamSender"]

log = structlog.get_logger("forwarder.outputs.syslog")

# After a TLS 1.3 handshake the server judges our certificate (or its absence) one round trip
# later. Wait that long, a few handshake durations but at least this, before trusting the link.
_MIN_VERDICT_SECS = 0.1
_VERDICT_HANDSHAKES = 3


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Sender(Protocol):
    async def send(self, messages: Sequence[bytes]) -> Retry | None:
        """Send the messages in order; None once they were handed to the kernel."""

    async def check(self) -> None:
        """Raise `HealthcheckError` unless some endpoint can be reached now."""

    async def reset(self) -> None:
        """Drop connections and cached TLS state, so the next send starts afresh."""

    async def close(self) -> None:
        """Close everything, politely (TLS close_notify)."""


class _Unreachable(Exception):
    """One endpoint could not be reached; the message says why."""

    def __init__(self, reason: str, *, operator_action: bool = False) -> None:
        super().__init__(reason)
        self.operator_action = operator_action


def describe(exc: BaseException) -> str:
    """A short reason for an I/O error, fit for a log line and a Retry."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _distinct_picks(endpoints: Endpoints[Endpoint]) -> Iterator[Endpoint]:
    """Endpoints in the order `Endpoints` offers them, each at most once."""
    seen: set[Endpoint] = set()
    for _ in range(len(endpoints)):
        endpoint = endpoints.pick()
        if endpoint in seen:  # every endpoint is benched: pick() repeats the soonest
            return
        seen.add(endpoint)
        yield endpoint


def _all_failed(label: str, reasons: list[str], operator_action: bool) -> Retry:
    return Retry(f"{label}: no endpoint reachable: {'; '.join(reasons)}", None, operator_action)


@dataclass(slots=True)
class _Stream:
    endpoint: Endpoint
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        # A receiver that closed an idle connection shows up as EOF; writing into it would
        # "succeed" into the kernel and be lost with the RST that follows.
        return not (
            self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None
        )


class StreamSender:
    """TCP or TLS: one persistent connection, reopened on the next send after a failure."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        label: str,
        output: str,
        tls: TlsClientConfig | None,
        connect_timeout: float,
        write_timeout: float,
    ) -> None:
        self._all = list(endpoints)
        self._endpoints = Endpoints(self._all)
        self._label = label
        self._output = output
        self._tls = tls
        self._context: ssl.SSLContext | None = None
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._stream: _Stream | None = None

    async def send(self, messages: Sequence[bytes]) -> Retry | None:
        stream = self._stream
        if stream is not None and not stream.usable():
            await self._drop(graceful=False)
            stream = None
        if stream is None:
            opened = await self._connect_any()
            if isinstance(opened, Retry):
                return opened
            stream = self._stream = opened
        try:
            async with asyncio.timeout(self._write_timeout):
                stream.writer.writelines(messages)
                await stream.writer.drain()
        except OSError as exc:  # TimeoutError and ssl.SSLError are OSErrors too
            reason = (
                f"write did not finish within {self._write_timeout}s"
                if isinstance(exc, TimeoutError)
                else describe(exc)
            )
            self._endpoints.failed(stream.endpoint)
            await self._drop(graceful=False)
            log.warning(
                "Syslog endpoint failed; the batch will be resent.",
                output=self._output,
                endpoint=str(stream.endpoint),
                reason=reason,
            )
            return Retry(f"{self._label} {stream.endpoint}: {reason}; the batch will be resent")
        self._endpoints.succeeded(stream.endpoint)
        return None

    async def _connect_any(self) -> _Stream | Retry:
        reasons: list[str] = []
        operator_action = False
        for endpoint in _distinct_picks(self._endpoints):
            try:
                return await self._open(endpoint)
            except TlsFilesUnusable as exc:  # no endpoint would do better
                return Retry(f"{self._label}: {exc}", None, True)
            except _Unreachable as exc:
                self._endpoints.failed(endpoint)
                reasons.append(f"{endpoint}: {exc}")
                operator_action = operator_action or exc.operator_action
                log.warning(
                    "Syslog endpoint unreachable.",
                    output=self._output,
                    endpoint=str(endpoint),
                    reason=str(exc),
                )
        return _all_failed(self._label, reasons, operator_action)

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        if self._context is None:
            self._context = self._tls.context()
        return self._context

    async def _open(self, endpoint: Endpoint) -> _Stream:
        context = self._tls_context()
        server_name = None
        if context is not None and self._tls is not None:
            server_name = self._tls.server_name or endpoint.host
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=server_name,
                    ssl_shutdown_timeout=self._connect_timeout if context is not None else None,
                )
        except TimeoutError as exc:
            raise _Unreachable(f"no connection within {self._connect_timeout}s") from exc
        except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
            raise _Unreachable(
                describe(exc), operator_action=isinstance(exc, ssl.SSLCertVerificationError)
            ) from exc
        stream = _Stream(endpoint, reader, writer)
        # drain() then returns only once our buffer is empty, so "delivered" means handed to the
        # kernel rather than queued in this process. The plain transport pauses above `high`,
        # the TLS one at `high` and more (with 0 it would pause while empty and never resume).
        writer.transport.set_write_buffer_limits(high=0 if context is None else 1, low=0)
        if context is not None:
            await self._verdict(stream, loop.time() - started)
        return stream

    async def _verdict(self, stream: _Stream, handshake_secs: float) -> None:
        """Catch a server that refuses our client certificate (or its absence) under TLS 1.3.

        TLS 1.3 completes the client's handshake before the server has checked the client's
        certificate; a refusal arrives as an alert or EOF one round trip later. Without this
        wait the first batch would be written into a connection the server is closing.
        """
        ssl_object = stream.writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.version() != "TLSv1.3":
            return
        window = min(
            max(_VERDICT_HANDSHAKES * handshake_secs, _MIN_VERDICT_SECS), self._connect_timeout
        )
        try:
            async with asyncio.timeout(window):
                # A syslog receiver sends no application data: only a refusal can come.
                if await stream.reader.read(1):
                    return
        except TimeoutError:
            return  # no refusal: the server accepted us
        except OSError as exc:
            stream.writer.transport.abort()
            raise _Unreachable(
                f"the server refused the TLS session after the handshake ({describe(exc)}); "
                "check the client certificate",
                operator_action=True,
            ) from exc
        stream.writer.transport.abort()
        raise _Unreachable(
            "the server closed the connection right after the TLS handshake; it may require "
            "a client certificate or refuse this one",
            operator_action=True,
        )

    async def _drop(self, *, graceful: bool) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await self._close_stream(stream, graceful=graceful)

    async def _close_stream(self, stream: _Stream, *, graceful: bool) -> None:
        if not graceful:
            stream.writer.transport.abort()
            return
        # For TLS, close() sends close_notify first (RFC 5425 §4.4); receivers log an error
        # for a session that just stops.
        stream.writer.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await stream.writer.wait_closed()
        except OSError:  # the peer may close TCP without answering close_notify
            stream.writer.transport.abort()

    async def check(self) -> None:
        reasons: list[str] = []
        for endpoint in self._all:
            try:
                stream = await self._open(endpoint)
            except TlsFilesUnusable as exc:
                raise HealthcheckError(f"{self._label}: {exc}") from exc
            except _Unreachable as exc:
                reasons.append(f"{endpoint}: {exc}")
                continue
            await self._close_stream(stream, graceful=True)
            return
        raise HealthcheckError(f"{self._label}: no endpoint reachable: {'; '.join(reasons)}")

    async def reset(self) -> None:
        await self._drop(graceful=True)
        self._context = None  # renewed certificates are read on the next connect

    async def close(self) -> None:
        await self._drop(graceful=True)


class _DatagramErrors(asyncio.DatagramProtocol):
    """Keeps the last error the socket reported, such as ICMP port unreachable."""

    def __init__(self) -> None:
        self._error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self._error = exc

    def take(self) -> Exception | None:
        """The error reported since the last call, if any."""
        error, self._error = self._error, None
        return error


@dataclass(slots=True)
class _Datagrams:
    transport: asyncio.DatagramTransport
    errors: _DatagramErrors


class DatagramSender:
    """UDP (RFC 5426): one datagram per message; a connected socket per endpoint.

    UDP has no acknowledgement: a datagram is "delivered" once the kernel took it. The only
    feedback is an ICMP error for an earlier datagram, which benches that endpoint.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], *, label: str, output: str, connect_timeout: float
    ) -> None:
        self._all = list(endpoints)
        self._endpoints = Endpoints(self._all)
        self._label = label
        self._output = output
        self._connect_timeout = connect_timeout
        self._sockets: dict[Endpoint, _Datagrams] = {}

    async def send(self, messages: Sequence[bytes]) -> Retry | None:
        reasons: list[str] = []
        for endpoint in _distinct_picks(self._endpoints):
            try:
                datagrams = await self._socket(endpoint)
            except _Unreachable as exc:
                reasons.append(f"{endpoint}: {exc}")
                self._endpoints.failed(endpoint)
                continue
            earlier = datagrams.errors.take()
            if earlier is not None:
                reasons.append(f"{endpoint}: {describe(earlier)}")
                self._fail(endpoint, describe(earlier))
                continue
            self._endpoints.succeeded(endpoint)  # earlier datagrams drew no complaint
            for message in messages:
                datagrams.transport.sendto(message)
            refused = datagrams.errors.take()  # the kernel refused a datagram right away
            if refused is not None:
                self._fail(endpoint, describe(refused))
                return Retry(
                    f"{self._label} {endpoint}: {describe(refused)}; the batch will be resent"
                )
            return None
        return _all_failed(self._label, reasons, False)

    def _fail(self, endpoint: Endpoint, reason: str) -> None:
        self._endpoints.failed(endpoint)
        log.warning(
            "Syslog endpoint refused datagrams.",
            output=self._output,
            endpoint=str(endpoint),
            reason=reason,
        )
        datagrams = self._sockets.pop(endpoint, None)
        if datagrams is not None:
            datagrams.transport.close()

    async def _socket(self, endpoint: Endpoint) -> _Datagrams:
        datagrams = self._sockets.get(endpoint)
        if datagrams is None:
            datagrams = self._sockets[endpoint] = await self._open(endpoint)
        return datagrams

    async def _open(self, endpoint: Endpoint) -> _Datagrams:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):  # name resolution
                transport, errors = await loop.create_datagram_endpoint(
                    _DatagramErrors, remote_addr=(endpoint.host, endpoint.port)
                )
        except TimeoutError as exc:
            raise _Unreachable(f"no address within {self._connect_timeout}s") from exc
        except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
            raise _Unreachable(describe(exc)) from exc
        return _Datagrams(transport, errors)

    async def check(self) -> None:
        # Without an acknowledgement, all a check can prove is that an address resolves and a
        # socket opens; a receiver that does not listen is only noticed after a send.
        reasons: list[str] = []
        for endpoint in self._all:
            try:
                datagrams = await self._open(endpoint)
            except _Unreachable as exc:
                reasons.append(f"{endpoint}: {exc}")
                continue
            datagrams.transport.close()
            return
        raise HealthcheckError(f"{self._label}: no endpoint usable: {'; '.join(reasons)}")

    async def reset(self) -> None:
        await self.close()  # addresses are resolved again on the next send

    async def close(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for datagrams in sockets.values():
            with contextlib.suppress(OSError):
                datagrams.transport.close()
