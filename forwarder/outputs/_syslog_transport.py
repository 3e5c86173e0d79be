"""The sockets behind the syslog output: one persistent TCP/TLS stream, or UDP datagrams.

Both pick the destination among the configured endpoints with `Endpoints` (round-robin, a failing
endpoint benched for a growing cooldown) and try the next endpoint at once when one cannot be
reached, so one send fails only when no endpoint takes it. A stream stays on the endpoint it
reached until that fails; datagrams go round-robin, batch by batch.

Neither retries or sleeps: a failure comes back as a `Retry` with the reason, and the dispatcher
decides when to try again. The bounded waits are after a TLS 1.3 handshake (see `_verdict`), for
the receiver's TCP to acknowledge a batch (see `StreamSender._acknowledged`), and for an ICMP
error after the first datagrams on a new UDP socket (see `DatagramSender`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import ssl
import struct
import termios
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from forwarder.outputs._failover import Endpoints, first_to_pass
from forwarder.outputs._tls import TlsClientConfig, TlsFilesUnusable
from forwarder.outputs.base import HealthcheckError, Retry

__all__ = ["DatagramSender", "Endpoint", "Sender", "StreamSender"]

log = structlog.get_logger("forwarder.outputs.syslog")

_Opened = TypeVar("_Opened")

# After a TLS 1.3 handshake the server judges our certificate (or its absence) one round trip
# later. Wait that long, a few handshake durations but at least this, before trusting the link.
_MIN_VERDICT_SECS = 0.1
_VERDICT_HANDSHAKES = 3

# How often to look whether the receiver's TCP acknowledged a batch: at once, then less and
# less often while it does not (a receiver that reads slowly), up to this.
_ACK_FIRST_POLL_SECS = 0.0005
_ACK_MAX_POLL_SECS = 0.05
# SIOCOUTQ (Linux): bytes of a TCP socket's send queue the peer has not acknowledged yet.
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
# Linux's struct tcp_info (since 4.1): tcpi_bytes_acked, RFC 4898's tcpEStatsAppHCThruOctetsAcked,
# the bytes of the stream the peer has acknowledged so far; a u64 at this offset.
_TCP_INFO_BYTES_ACKED = struct.Struct("=Q")
_TCP_INFO_BYTES_ACKED_OFFSET = 120

# TCP keepalive on syslog connections: the first probe after a minute of silence, well under
# the idle timeouts of load balancers and firewalls; a peer gone for good is noticed after
# another minute of unanswered probes.
KEEPALIVE_IDLE_SECS = 60
KEEPALIVE_INTERVAL_SECS = 10
KEEPALIVE_PROBES = 6

# A receiver that is not listening answers a datagram with ICMP port unreachable within a round
# trip. The first batch on a new UDP socket waits this long (at most) for that answer, so that a
# batch sent while nobody listens is retried rather than reported delivered into the void.
_UDP_CONFIRM_SECS = 0.2

# OpenSSL's reasons for a handshake with something that does not speak TLS at all.
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "WRONG_SSL_VERSION",
        "UNEXPECTED_RECORD",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Sender(Protocol):
    async def send(self, messages: Sequence[bytes]) -> Retry | None:
        """Send the messages in order; None once they are delivered as far as the transport
        can tell (TCP/TLS: acknowledged by the receiver's TCP; UDP: sent, without an ICMP
        error)."""

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
        # Without an errno it is this module's own finding, which says more.
        return "connection reset by the peer" if exc.errno else str(exc) or "connection lost"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _handshake_failed(exc: ssl.SSLError) -> _Unreachable:
    """Classify a failed TLS handshake. A refusal or a verification failure does not go away by
    waiting: it is for an operator, with OpenSSL's reason and where to look."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _Unreachable(describe(exc), operator_action=True)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLSyscallError, ssl.SSLZeroReturnError)):
        return _Unreachable(f"the connection ended during the TLS handshake ({describe(exc)})")
    reason = exc.reason or str(exc)
    if "ALERT" in reason:
        why = (
            f"the server refused the TLS handshake ({reason}); check the client certificate "
            "(a server that requires one refuses a client without), the TLS version and the "
            "cipher suites it accepts"
        )
    elif reason in _NOT_TLS:
        why = f"the server does not answer in TLS ({reason}); check that the port speaks TLS"
    else:
        why = f"the TLS handshake failed ({reason})"
    return _Unreachable(why, operator_action=True)


def _keep_alive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive on a syslog connection, probing after `KEEPALIVE_IDLE_SECS` of silence.

    Between alerts a connection may idle for hours. A load balancer or firewall forgets an idle
    flow (AWS NLB after 350 s) and drops the next batch's packets without a reset, and a
    receiver host that died sends none either; only the write timeout would tell. Probes keep
    the flow alive and find a dead peer while idle, so the next batch gets a fresh connection.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _kernel_unacknowledged(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel still holds for this TCP socket that the peer has not acknowledged.

    Raises the socket's pending error: after the receiver's FIN the event loop no longer reads
    the socket, so a RST answering our write shows only here. 0 where the kernel cannot tell
    (SIOCOUTQ is Linux's): there "delivered" falls back to "handed to the kernel".
    """
    sock = transport.get_extra_info("socket")
    if sock is None or _SIOCOUTQ is None:
        return 0
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))  # the subclass for errno: BrokenPipeError, ...
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    queued: int = struct.unpack("i", answer)[0]
    return queued


def _duplicate(transport: asyncio.BaseTransport) -> socket.socket | None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        duplicate: socket.socket = sock.dup()
    except OSError:  # out of descriptors: without it, a close before the ack means a resend
        return None
    return duplicate


def _bytes_acknowledged(sock: socket.socket) -> int | None:
    """How many bytes of the stream the peer's TCP has acknowledged; None where the kernel does
    not say (not Linux, or older than 4.1), or the socket cannot be asked."""
    end = _TCP_INFO_BYTES_ACKED_OFFSET + _TCP_INFO_BYTES_ACKED.size
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", -1), 256)
    except OSError:
        return None
    if len(info) < end:
        return None
    acknowledged: int = _TCP_INFO_BYTES_ACKED.unpack_from(info, _TCP_INFO_BYTES_ACKED_OFFSET)[0]
    return acknowledged


async def _check_any(
    endpoints: Sequence[Endpoint],
    open_one: Callable[[Endpoint], Awaitable[_Opened]],
    close: Callable[[_Opened], Awaitable[None]],
    failure: str,
) -> None:
    """Return once any endpoint opens, trying them side by side (`first_to_pass`); else raise
    HealthcheckError with each one's reason. Whatever opened is closed."""

    async def attempt(endpoint: Endpoint) -> _Opened | _Unreachable:
        try:
            return await open_one(endpoint)
        except _Unreachable as exc:
            return exc

    async def release(opened: _Opened | _Unreachable) -> None:
        if not isinstance(opened, _Unreachable):
            await close(opened)

    results = await first_to_pass(
        [attempt(endpoint) for endpoint in endpoints],
        lambda opened: not isinstance(opened, _Unreachable),
        release,
    )
    if results is not None:
        reasons = (
            f"{endpoint}: {reason}" for endpoint, reason in zip(endpoints, results, strict=True)
        )
        raise HealthcheckError(f"{failure}: {'; '.join(reasons)}")


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
    tcp: asyncio.WriteTransport
    """The TCP transport; under TLS the one below the TLS layer, which has a buffer of its own."""
    probe: socket.socket | None = None
    """A second descriptor of the TCP socket, to ask the kernel about it after the event loop
    has closed its own: under TLS it does so as soon as the receiver's close_notify arrives,
    which can be before this side has seen the acknowledgement of the batch the receiver read
    just before closing. Closed by `release`; until then the kernel keeps the socket open."""
    batch_end: int | None = None
    """Where the batch being sent ends in the TCP stream (bytes acknowledged + bytes queued,
    taken once this process buffers nothing of it), or None while not known."""

    def release(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def usable(self) -> bool:
        # A receiver that closed an idle connection shows up as EOF; writing into it would
        # "succeed" into the kernel and be lost with the RST that follows.
        return not (
            self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None
        )

    def unacknowledged(self) -> int:
        """Bytes written that the receiver's TCP has not acknowledged yet: still in this
        process (the TLS layer's and the TCP transport's buffers) or in the kernel's send
        queue. Raises once the connection is lost with some of them."""
        exc = self.reader.exception()
        if exc is not None:
            raise exc if isinstance(exc, OSError) else ConnectionResetError(str(exc))
        if self.tcp.is_closing():
            # A close without a reset: the receiver may have read the whole batch, then closed.
            if self._batch_acknowledged():
                return 0
            raise ConnectionResetError("the connection closed before the receiver had the batch")
        buffered = self.tcp.get_write_buffer_size()
        if self.writer.transport is not self.tcp:
            buffered += self.writer.transport.get_write_buffer_size()
        queued = _kernel_unacknowledged(self.tcp)
        if not buffered and self.batch_end is None and self.probe is not None:
            # The queue first, then the acknowledged count: an acknowledgement between the two
            # can only put the end later than it is, never earlier.
            acknowledged = _bytes_acknowledged(self.probe)
            if acknowledged is not None:
                self.batch_end = acknowledged + queued
        return buffered + queued

    def _batch_acknowledged(self) -> bool:
        if self.batch_end is None or self.probe is None:
            return False
        acknowledged = _bytes_acknowledged(self.probe)
        return acknowledged is not None and acknowledged >= self.batch_end


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
        stream.batch_end = None
        try:
            async with asyncio.timeout(self._write_timeout):
                stream.writer.writelines(messages)
                await stream.writer.drain()
                await self._acknowledged(stream)
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

    @staticmethod
    async def _acknowledged(stream: _Stream) -> None:
        """Wait until the receiver's TCP has acknowledged every byte written.

        `drain()` returns once the bytes left this process's buffer, and under TLS not even
        that (the TLS layer hands them to a TCP transport with a buffer of its own). Bytes in
        the kernel's send queue are lost if the receiver resets or has gone (a crash, a
        receiver that closed the connection a moment before, a load balancer that forgot an
        idle flow), and a batch reported delivered then would be lost. TCP keeps no
        application-level acknowledgement, so a receiver that takes the bytes and dies before
        reading them still loses them; nothing short of RELP closes that gap.
        """
        delay = _ACK_FIRST_POLL_SECS
        while stream.unacknowledged():
            await asyncio.sleep(delay)
            delay = min(2 * delay, _ACK_MAX_POLL_SECS)

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
        loop = asyncio.get_running_loop()
        started = loop.time()
        handshaking = False
        try:
            async with asyncio.timeout(self._connect_timeout):
                # TCP first, then TLS over it: a failure names the step, and the TCP transport
                # under TLS stays at hand (its buffer is part of what is not yet delivered).
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                tcp = writer.transport
                _keep_alive(tcp)
                if context is not None and self._tls is not None:
                    handshaking = True
                    try:
                        await writer.start_tls(
                            context,
                            server_hostname=self._tls.server_name or endpoint.host,
                            ssl_handshake_timeout=self._connect_timeout,
                        )
                    except BaseException:
                        tcp.abort()
                        raise
        except TimeoutError as exc:
            if handshaking:
                raise _Unreachable(
                    f"connected, but the TLS handshake did not finish within "
                    f"{self._connect_timeout}s; check that the port speaks TLS"
                ) from exc
            raise _Unreachable(f"no connection within {self._connect_timeout}s") from exc
        except ssl.SSLError as exc:
            raise _handshake_failed(exc) from exc
        except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
            during = " during the TLS handshake" if handshaking else ""
            raise _Unreachable(f"{describe(exc)}{during}") from exc
        stream = _Stream(endpoint, reader, writer, tcp, probe=_duplicate(tcp))
        # Keep what this process buffers small: the plain transport pauses above `high`, the
        # TLS one at `high` and more (with 0 it would pause while empty and never resume).
        writer.transport.set_write_buffer_limits(high=0 if context is None else 1, low=0)
        if context is not None:
            try:
                await self._verdict(stream, loop.time() - started)
            except BaseException:
                writer.transport.abort()
                stream.release()
                raise
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
        try:
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
            except asyncio.CancelledError:  # a caller's own deadline (shutdown's graceful budget)
                stream.writer.transport.abort()
                raise
        finally:
            stream.release()

    async def check(self) -> None:
        async def close(stream: _Stream) -> None:
            await self._close_stream(stream, graceful=True)

        try:
            await _check_any(self._all, self._open, close, f"{self._label}: no endpoint reachable")
        except TlsFilesUnusable as exc:
            raise HealthcheckError(f"{self._label}: {exc}") from exc

    async def reset(self) -> None:
        await self._drop(graceful=True)
        self._context = None  # renewed certificates are read on the next connect

    async def close(self) -> None:
        await self._drop(graceful=True)


class _DatagramErrors(asyncio.DatagramProtocol):
    """Keeps the last error the socket reported, such as ICMP port unreachable."""

    def __init__(self) -> None:
        self._error: Exception | None = None
        self._arrived = asyncio.Event()

    def error_received(self, exc: Exception) -> None:
        self._error = exc
        self._arrived.set()

    def take(self) -> Exception | None:
        """The error reported since the last call, if any."""
        error, self._error = self._error, None
        self._arrived.clear()
        return error

    async def wait(self, seconds: float) -> Exception | None:
        """The error reported within `seconds`, if any."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._arrived.wait()
        return self.take()


@dataclass(slots=True)
class _Datagrams:
    transport: asyncio.DatagramTransport
    errors: _DatagramErrors
    confirmed: bool = False
    """A batch went out on this socket and drew no ICMP error within the confirmation window."""


class DatagramSender:
    """UDP (RFC 5426): one datagram per message; a connected socket per endpoint.

    UDP has no acknowledgement: a datagram is "delivered" once the kernel took it. The only
    feedback is an ICMP error for an earlier datagram, which benches that endpoint. So that a
    receiver that is down does not swallow every retry too (each on a new socket, the error
    of the last one already taken), the first batch on a new socket waits a moment for that
    error before it counts as delivered.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], *, label: str, output: str, connect_timeout: float
    ) -> None:
        self._all = list(endpoints)
        self._endpoints = Endpoints(self._all)
        self._label = label
        self._output = output
        self._connect_timeout = connect_timeout
        self._confirm_secs = min(_UDP_CONFIRM_SECS, connect_timeout)
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
            for message in messages:
                datagrams.transport.sendto(message)
            refused = datagrams.errors.take()  # the kernel refused a datagram right away
            if refused is None and not datagrams.confirmed:
                refused = await datagrams.errors.wait(self._confirm_secs)
            if refused is not None:  # the next endpoint gets the batch; if none, it is resent
                reasons.append(f"{endpoint}: {describe(refused)}")
                self._fail(endpoint, describe(refused))
                continue
            datagrams.confirmed = True
            self._endpoints.succeeded(endpoint)
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
        async def close(datagrams: _Datagrams) -> None:
            datagrams.transport.close()

        await _check_any(self._all, self._open, close, f"{self._label}: no endpoint usable")

    async def reset(self) -> None:
        await self.close()  # addresses are resolved again on the next send

    async def close(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for datagrams in sockets.values():
            with contextlib.suppress(OSError):
                datagrams.transport.close()
