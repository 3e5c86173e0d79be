"""Below the application: the listening sockets, the bounds on the connections one client may
hold and on a TLS connection before and after its requests, and logging that hostile clients
cannot turn into a flood.

What the Internet sends the listener (scans, malformed requests, idle connections by the
thousand) costs the daemon a bounded amount of log: each kind of refusal is logged within a
`LogBudget`, and the lines left out are counted in the next one that is written, or, when none
comes, in a line of their own within about a minute (`flushing_log_budgets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import sys
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import structlog
from aiohttp import StreamReader, web, web_protocol
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from forwarder.ingest.auth import client_key, from_trusted_proxy
from forwarder.settings import ListenConfig
from forwarder.telemetry import metrics

__all__ = [
    "CLIENT_CONNECTIONS",
    "HTTP_LOGGER",
    "ClientConnections",
    "ListenSite",
    "ListenSocket",
    "LogBudget",
    "flush_log_budgets",
    "flushing_log_budgets",
    "held_back",
]

log = structlog.get_logger("forwarder.ingest")

# How long the daemon waits for a TLS client's close_notify once it has closed the connection
# (asyncio's default is 30 s): a client that never answers holds the connection that long.
TLS_SHUTDOWN_TIMEOUT_SECS = 5.0
# How long a client may leave answers unread, with the daemon's send buffers full, before its
# connection is closed.
WRITE_STALL_TIMEOUT_SECS = 30.0
# The share of the open-file limit kept free of connections: the store, the outputs' own
# connections and the files they write must still open when clients hold all the rest.
FD_RESERVE_SHARE = 8
FD_RESERVE_MIN = 64
# How many connections in a row one accept() closes at once before it gives the loop its turn.
CLOSED_PER_ACCEPT = 100
# How often the listener looks for lines left out that no later line has reported.
FLUSH_EVERY_SECS = 10.0


class LogBudget:
    """How many lines a source that clients drive may log: `burst` at once, then `per_minute`.

    A refusal is logged per request, and a client may send as many requests, from as many
    addresses, as it likes: without a budget it would decide how much the journal gets.
    `what` names the lines, for the line that reports those left out when no other line does
    (`flush`).
    """

    def __init__(self, burst: int = 20, per_minute: float = 60, *, what: str = "refusals") -> None:
        self.burst = burst
        self.rate = per_minute / 60
        self.what = what
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._held = 0
        _BUDGETS.add(self)

    def _spend(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def take(self) -> int | None:
        """None if this line is to be left out; else how many were left out since the last."""
        if not self._spend():
            self._held += 1
            return None
        held, self._held = self._held, 0
        return held

    def flush(self, *, force: bool = False) -> int:
        """How many lines were left out and not reported yet, to be reported now by a line of
        their own; 0 if none were, or if the budget has no room for that line (unless `force`),
        and then the count waits for the next line or flush."""
        if not self._held or not (self._spend() or force):
            return 0
        held, self._held = self._held, 0
        return held


# Every budget, for the flush that reports their held-back lines; weak, so that an app's
# budget goes with the app.
_BUDGETS: weakref.WeakSet[LogBudget] = weakref.WeakSet()


def held_back(count: int) -> dict[str, int]:
    """The field that says how many lines like this one were left out before it, if any."""
    return {"suppressed": count} if count else {}


def flush_log_budgets(*, force: bool = False) -> None:
    """Log, for each budget, the lines left out that no line written since has counted.

    The count otherwise comes only with the next line of the same kind: after a burst that
    stops, never. Each such line is taken from the budget it reports on (so it keeps to it),
    unless `force`.
    """
    for budget in list(_BUDGETS):
        held = budget.flush(force=force)
        if held:
            log.warning("Log lines left out.", lines=budget.what, suppressed=held)


async def _flush_every(secs: float) -> None:
    while True:
        await asyncio.sleep(secs)
        flush_log_budgets()


async def flushing_log_budgets(app: web.Application) -> AsyncIterator[None]:
    """An app's cleanup context: flush the log budgets every FLUSH_EVERY_SECS while the
    listener runs, and once more, whatever the budgets allow, when it stops."""
    flusher = asyncio.create_task(_flush_every(FLUSH_EVERY_SECS), name="log-budget-flush")
    try:
        yield
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        flush_log_budgets(force=True)


_CONNECTIONS_LOG = LogBudget(burst=1, per_minute=1, what="connections past the open-file limit")
_CLIENT_CAP_LOG = LogBudget(
    burst=5, per_minute=1, what="connections past listen.max_connections_per_client"
)


class ClientConnections:
    """The connections each client holds open (an IPv4 address, an IPv6 /64, as the failure
    limiter counts them), capped at `listen.max_connections_per_client`; 0 is no cap.

    Without it one client could hold every connection the open-file limit leaves, and the
    console's posts would be closed at accept with the rest. Connections from
    `listen.trusted_proxies` are not capped: every client behind a proxy shares its address.
    Only clients with a connection open have an entry, so memory is bounded by the connections.
    """

    def __init__(self, listen: ListenConfig) -> None:
        self.limit = listen.max_connections_per_client
        self._listen = listen
        self.open: dict[str, int] = {}

    def client(self, address: str) -> str | None:
        """Whom a connection from `address` counts for; None if it is not capped."""
        if not self.limit or from_trusted_proxy(address, self._listen):
            return None
        return client_key(address)

    def opened(self, client: str) -> bool:
        """Count a connection of `client`'s; False, counting nothing, if it is at the cap."""
        count = self.open.get(client, 0)
        if count >= self.limit:
            return False
        self.open[client] = count + 1
        return True

    def closed(self, client: str) -> None:
        count = self.open.pop(client, 0) - 1
        if count > 0:
            self.open[client] = count


CLIENT_CONNECTIONS = web.AppKey("client_connections", ClientConnections)
"""The app's `ClientConnections`, which `ListenSite` gives its socket when it starts."""


class _ClientSocket(socket.socket):
    """An accepted connection that gives its place under the per-client cap back when it is
    closed: asyncio closes the socket on every way a connection ends (a reset, a failed or
    timed-out TLS handshake, a timeout, the server's shutdown)."""

    __slots__ = ("_release",)

    def __init__(
        self,
        family: int = -1,
        kind: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        release: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(family, kind, proto, fileno)
        self._release = release

    def _released(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._released()

    def detach(self) -> int:
        self._released()
        return super().detach()


def _connection_ceiling() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    return soft - max(FD_RESERVE_MIN, soft // FD_RESERVE_SHARE)


class ListenSocket(socket.socket):
    """A listening socket that closes at once a connection past its share of the open files.

    Without it, connections held open by clients use up the open-file limit; then every accept()
    fails, and asyncio logs each failure with its traceback, a thousand (the backlog) per retry,
    while the store and the outputs cannot open a file or a connection of their own.
    """

    clients: ClientConnections | None = None
    """The per-client cap, once a `ListenSite` starts on this socket; None: no cap."""

    def accept(self) -> tuple[socket.socket, Any]:
        # asyncio accepts up to its backlog at each turn of the loop, but ends the batch at the
        # first ConnectionAbortedError: raised for each connection closed here, a client at its
        # cap that kept connecting got one connection handled per turn, however long the turn,
        # and the queue filled with its connections while the kernel dropped everyone else's.
        for _ in range(CLOSED_PER_ACCEPT):
            accepted = self._accept_one()
            if accepted is not None:
                return accepted
        # What asyncio's accept loop takes for a client gone before it was accepted: the loop
        # has its turn, and the rest of the queue is accepted at the next one.
        raise ConnectionAbortedError

    def _accept_one(self) -> tuple[socket.socket, Any] | None:
        """The next connection; None if it was closed at once."""
        conn, address = super().accept()
        # The kernel gives the lowest free descriptor: one at the ceiling means every one below
        # is taken, so connections keep out of the reserve however the descriptors are spread.
        if conn.fileno() >= _connection_ceiling():
            _close_at_accept(
                conn,
                "open_files",
                _CONNECTIONS_LOG,
                "Too many open connections; new ones are closed at once.",
                open_files_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
            return None
        clients = self.clients
        client = None if clients is None else clients.client(str(address[0]))
        if clients is None or client is None:
            return conn, address
        if not clients.opened(client):
            # Before the TLS handshake and before any byte is read: the client costs no more.
            _close_at_accept(
                conn,
                "per_client",
                _CLIENT_CAP_LOG,
                "A client holds too many connections; its new ones are closed at once.",
                client=client,
                max_connections_per_client=clients.limit,
            )
            return None
        release = partial(clients.closed, client)
        fileno = conn.detach()
        return _ClientSocket(conn.family, conn.type, conn.proto, fileno, release=release), address


def _close_at_accept(
    conn: socket.socket, reason: str, budget: LogBudget, message: str, **fields: Any
) -> None:
    conn.close()
    metrics.connections_closed_at_accept.labels(reason).inc()
    held = budget.take()
    if held is not None:
        log.warning(message, **fields, **held_back(held))


class ListenSite(web.SockSite):
    """aiohttp's SockSite, with a TLS connection's handshake and shutdown bounded in time.

    asyncio gives a handshake 60 s, and aiohttp's header timeout starts only once it is done: a
    client that connects and sends nothing held the connection four times as long as over plain
    HTTP. Then, with the connection closed, asyncio waits 30 s more for the client's
    close_notify.
    """

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        handshake_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        runner = self._runner
        if isinstance(self._sock, ListenSocket) and isinstance(runner, web.AppRunner):
            self._sock.clients = runner.app.get(CLIENT_CONNECTIONS)
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {
                "ssl": self._ssl_context,
                "ssl_handshake_timeout": self._handshake_timeout,
                "ssl_shutdown_timeout": TLS_SHUTDOWN_TIMEOUT_SECS,
            }
        self._server = await asyncio.get_running_loop().create_server(
            partial(WriteStallLimit, server, WRITE_STALL_TIMEOUT_SECS),
            sock=self._sock,
            backlog=self._backlog,
            **tls,
        )


class WriteStallLimit(asyncio.Protocol):
    """aiohttp's protocol for one connection, closed once the client has read nothing of its
    answers for `timeout` seconds with the send buffers full.

    aiohttp's header and keep-alive timers do not run while an answer waits to be written: a
    client that pipelines requests and never reads held each connection, and megabytes of
    kernel buffers with it, for as long as it liked.

    It also sees every read first, so the parser's refusal of a body midway goes to that body
    (see `BodyRefusals`).
    """

    __slots__ = ("_inner", "_queued", "_refusals", "_stalled", "_timeout", "_transport")

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], timeout: float) -> None:
        self._inner = protocol_factory()
        # aiohttp's (private) queue of parsed requests, made once with its protocol; without
        # it, refusals are left to aiohttp.
        self._queued: deque[tuple[object, StreamReader]] | None = getattr(
            self._inner, "_messages", None
        )
        self._timeout = timeout
        self._transport: asyncio.BaseTransport | None = None
        self._stalled: asyncio.TimerHandle | None = None
        self._refusals = BodyRefusals()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        queued = self._queued
        before = len(queued) if queued is not None else 0
        self._inner.data_received(data)
        if queued is not None and len(queued) > before:
            self._refusals.route(queued)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()
        if self._stalled is None and isinstance(self._transport, asyncio.WriteTransport):
            self._watch(self._transport, self._transport.get_write_buffer_size())

    def _watch(self, transport: asyncio.WriteTransport, pending: int) -> None:
        self._stalled = asyncio.get_running_loop().call_later(
            self._timeout, self._check_progress, transport, pending
        )

    def _check_progress(self, transport: asyncio.WriteTransport, pending: int) -> None:
        # A client that reads, however slowly, drains some of what waits: it is given another
        # period. One that has read nothing in a whole period is cut off.
        now = transport.get_write_buffer_size()
        if now < pending:
            self._watch(transport, now)
        else:
            transport.abort()

    def resume_writing(self) -> None:
        self._end_stall()
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_stall()
        self._inner.connection_lost(exc)

    def _end_stall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None


# aiohttp's own (private) type for a queued refusal; were it gone, aiohttp answers as before.
_REFUSAL: type | None = getattr(web_protocol, "_ErrInfo", None)


class BodyRefusals:
    """Ends a body the parser refused midway, with the refusal, for whoever reads it.

    aiohttp queues every refusal of llhttp's as if it were the next request, even one in the
    middle of a body (a chunk size that is not hex, arriving after the body began). The post
    whose body it was then waited for the rest until the body timeout, 30 s, and got a 408.

    The body is that of the last request queued on the connection, wherever aiohttp has got
    with it: still queued, taken but not yet handled, or being read. Ended with the refusal,
    the webhook reads the refusal and answers 400 at once, keeping what had arrived, and ends
    the connection. A handler that does not read bodies answers as it would, and aiohttp, with
    no rest of the body to wait for, then answers the refusal, still queued, with its own 400;
    if the answer has gone already, aiohttp was reading on through the rest of the body and
    meets the refusal there, which ends the connection (logged without the client's address:
    aiohttp gives none). A refusal after a body that was complete is about the next request:
    left as it is.
    """

    __slots__ = ("_last_body",)

    def __init__(self) -> None:
        self._last_body: StreamReader | None = None

    def route(self, queued: deque[tuple[object, StreamReader]]) -> None:
        """After aiohttp queued what one read held: a refusal comes alone (the parser raises
        at it); anything else is requests."""
        try:
            message, body = queued[-1]
            if _REFUSAL is None or not isinstance(message, _REFUSAL):
                self._last_body = body
                return
            refused = getattr(message, "exc", None)
            last = self._last_body
            if not isinstance(refused, HttpProcessingError) or last is None or last.is_eof():
                return
            last.set_exception(refused)
            last.feed_eof()
        except (AttributeError, IndexError, TypeError, ValueError):
            return


def malformed_reason(error: HttpProcessingError) -> str:
    """The `reason` of `malformed_requests` for a request aiohttp's parser refused."""
    if isinstance(error, LineTooLong):  # the request line, or a header, past 8190 bytes
        return "too_long"
    if isinstance(error, BadStatusLine | InvalidURLError):  # BadHttpMethod is a BadStatusLine
        return "request_line"
    if isinstance(error, PayloadEncodingError):  # a body cut short, or its encoding broken
        return "body"
    # Most other refusals are llhttp's, all one class, with its description on the first line.
    problem = error.message.partition("\n")[0].lower()
    if "chunk" in problem:
        return "body"
    if any(word in problem for word in _REQUEST_LINE_WORDS):
        return "request_line"
    return "headers"  # a header not valid, Content-Length twice, and so on


# Words of llhttp's descriptions of a refused request line ("Expected HTTP/", "Invalid method",
# "Pause on PRI/Upgrade": HTTP/2's preface).
_REQUEST_LINE_WORDS = ("method", "url", "version", "http/", "pri/")


# The logger whose level HTTP_LOGGER's other lines keep to (see `_MalformedRequests`).
_LEVEL_OF = logging.getLogger("forwarder")


class _MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse as an ERROR with its traceback. That is the
    client's doing, not the daemon's: one line, a warning, within a budget; and a count.

    A bad request line as a connection's first request (a TLS ClientHello on a plain port, a
    scanner's garbage) aiohttp logs at DEBUG instead, which a logger at INFO never lets through
    to a filter. So HTTP_LOGGER takes every level, to count those too, and this filter passes
    its other lines only at the level of the loggers above it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.budget = LogBudget(what="malformed requests")
        self.failures = LogBudget(what="requests that failed in aiohttp")

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            if error is not None and record.levelno >= logging.ERROR:
                # A request that fails outside the app's own handling (aiohttp's Expect handler
                # on a header that is not UTF-8): any client can repeat it, so its traceback is
                # logged within a budget too, with the count of those left out.
                held = self.failures.take()
                if held is not None:
                    log.error(
                        "Request failed inside aiohttp.",
                        error=f"{error.__class__.__name__}: {error}"[:200],
                        exc_info=record.exc_info,
                        **held_back(held),
                    )
                return False
            return _LEVEL_OF.isEnabledFor(record.levelno)
        metrics.malformed_requests.labels(malformed_reason(error)).inc()
        if record.levelno < logging.ERROR:
            # What aiohttp itself takes for the Internet's noise: counted, logged as it was.
            return _LEVEL_OF.isEnabledFor(record.levelno)
        held = self.budget.take()
        if held is not None:
            # aiohttp's message is "Error handling request from %s", with the client's address.
            # A refusal read after the answer (the rest of a body no handler read; see
            # `BodyRefusals`) comes as "Unhandled exception", without it.
            client = record.args[0] if isinstance(record.args, tuple) and record.args else None
            # Its first line names the problem; the lines after it quote the request.
            problem = error.message.splitlines()[0] if error.message else ""
            log.warning(
                "Malformed request refused.",
                **({} if client is None else {"client": str(client)}),
                status=error.code,
                error=problem[:200].rstrip(":"),
                **held_back(held),
            )
        return False


HTTP_LOGGER = logging.getLogger("forwarder.http")
"""The logger of the listener's aiohttp server (its `logger` argument)."""
HTTP_LOGGER.addFilter(_MalformedRequests())
HTTP_LOGGER.setLevel(logging.DEBUG)
