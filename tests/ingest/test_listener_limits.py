"""The listener as `run` serves it (a `ListenSocket` under a `ListenSite`, aiohttp logging to
HTTP_LOGGER): the cap on the connections one client may hold, the count of malformed requests,
the expiry of the TLS certificate, and the lines a `LogBudget` left out reaching the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

from forwarder.app import IN_FLIGHT, build_app
from forwarder.ingest import listener
from forwarder.ingest.handlers import PIPELINE
from forwarder.ingest.listener import (
    CLIENT_CONNECTIONS,
    HTTP_LOGGER,
    ClientConnections,
    ListenSite,
    ListenSocket,
    LogBudget,
)
from forwarder.ingest.tls import reload_certificates, server_context
from forwarder.pipeline import Pipeline
from forwarder.settings import ConfigError, ListenConfig, Settings, parse_settings
from forwarder.telemetry import metrics
from tests.daemon.harness import wait_until, wait_until_async
from tests.ingest.test_handlers import quarantined
from tests.ingest.test_listener_audit import READ_SECS, TlsDaemon, closed_after
from tests.ingest.test_tls import client_context, issue

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
QUICK_SECS = 0.5  # handshake and idle timeouts of the listeners that a test waits out
CLOSED = "canary_forwarder_connections_closed_at_accept_total"
MALFORMED = "canary_forwarder_malformed_requests_total"
EXPIRY = "canary_forwarder_listener_certificate_expiry_timestamp_seconds"


def sample_value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Listening:
    app: web.Application
    runner: web.AppRunner
    port: int
    tls: ssl.SSLContext | None  # the client's, trusting the listener's certificate
    stopped: bool = False

    async def stop(self) -> None:
        """Shut the listener down as `run` does at the end; once."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    @property
    def clients(self) -> ClientConnections:
        return self.app[CLIENT_CONNECTIONS]

    def open_from_loopback(self) -> int:
        return self.clients.open.get("127.0.0.1", 0)

    async def connect(self, *, tls: bool = True) -> tuple[asyncio.StreamReader, Any]:
        context = self.tls if tls else None
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=context, server_hostname="127.0.0.1" if context else None
        )


Listen = Callable[..., contextlib.AbstractAsyncContextManager[Listening]]


@pytest.fixture
def listen(make_settings: Callable[..., Settings], tmp_path: Path) -> Listen:
    """`async with listen(tls=False, **listen settings) as listening:` the daemon's listener on
    127.0.0.1, set up as `run` sets it up, with short timeouts."""

    @contextlib.asynccontextmanager
    async def serving(*, tls: bool = False, **options: Any) -> AsyncIterator[Listening]:
        client_tls = server_tls = None
        if tls:
            authority = trustme.CA()
            cert, key = issue(authority, tmp_path)
            key.chmod(0o600)
            options["tls"] = {"cert": str(cert), "key": str(key)}
            client_tls = client_context(authority)
        settings = make_settings(listen=options)
        server_tls = server_context(settings.listen)
        pipeline = await Pipeline.start(settings)
        app = build_app(pipeline)
        # What of `run`'s runner matters here: aiohttp's logger, and a header timeout.
        runner = web.AppRunner(
            app, shutdown_timeout=1.0, keepalive_timeout=QUICK_SECS, logger=HTTP_LOGGER
        )
        await runner.setup()
        sock = ListenSocket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            site = ListenSite(runner, sock, ssl_context=server_tls, handshake_timeout=QUICK_SECS)
            await site.start()
            listening = Listening(app, runner, sock.getsockname()[1], client_tls)
            try:
                yield listening
            finally:
                await listening.stop()
        finally:
            sock.close()
            await pipeline.stop(1)

    return serving


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The status line of GET /healthz on an open connection."""
    writer.write(HEALTHZ)
    async with asyncio.timeout(READ_SECS):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def closed_unanswered(listening: Listening, *, tls: bool) -> None:
    """A new connection is closed before its TLS handshake or its request gets an answer."""
    if tls:
        # The handshake fails: the listener closed the connection before it read the hello.
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(READ_SECS):
                await listening.connect()
        return
    reader, writer = await listening.connect(tls=False)
    try:
        with contextlib.suppress(ConnectionResetError):
            writer.write(HEALTHZ)
            assert (await closed_after(reader))[0] == b""
    finally:
        writer.close()


def close_all(writers: list[Any]) -> None:
    for writer in writers:
        writer.close()


# The setting


def listen_problems(**options: Any) -> list[str]:
    outputs = [{"name": "mem", "type": "memory"}]
    with pytest.raises(ConfigError) as caught:
        parse_settings({"listen": options, "outputs": outputs}, environ={})
    return caught.value.problems


def test_max_connections_per_client_defaults_to_a_cap_and_0_is_none() -> None:
    assert ListenConfig().max_connections_per_client == 64
    assert ListenConfig(max_connections_per_client=0).max_connections_per_client == 0
    assert listen_problems(max_connections_per_client=-1) == [
        "listen.max_connections_per_client: Input should be greater than or equal to 0"
    ]
    assert listen_problems(max_connections_per_client="many") == [
        "listen.max_connections_per_client: Input should be a valid integer, unable to parse "
        "string as an integer"
    ]


def test_a_client_is_an_ipv4_address_however_written_or_an_ipv6_64() -> None:
    """As the failure limiter counts clients: one host has a whole /64 to connect from."""
    clients = ClientConnections(ListenConfig(max_connections_per_client=2))
    for address in ("2001:db8:0:1::1", "2001:db8:0:1:ffff:ffff:ffff:ffff"):
        client = clients.client(address)
        assert client == "2001:db8:0:1::/64"
        assert clients.opened(client)
    assert not clients.opened("2001:db8:0:1::/64")
    assert clients.client("2001:db8:0:2::1") == "2001:db8:0:2::/64"  # someone else
    assert clients.client("::ffff:192.0.2.1") == clients.client("192.0.2.1") == "192.0.2.1"
    clients.closed("2001:db8:0:1::/64")
    clients.closed("2001:db8:0:1::/64")
    assert clients.open == {}
    # Uncapped: no key at all, so nothing is counted.
    assert ClientConnections(ListenConfig(max_connections_per_client=0)).client("::1") is None
    behind_proxy = ListenConfig(trusted_proxies=("192.0.2.0/24", "2001:db8::/32"))
    for address in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8:0:1::1"):
        assert ClientConnections(behind_proxy).client(address) is None


def test_the_client_of_an_address_is_worked_out_once_not_at_each_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each connection's client is looked up as it is accepted. Parsing its address each time
    was half of what the cap added to a connection (about 10 of 18 us, measured on the accept
    path), and a console that opens a connection per post paid it on every post."""
    parsed: list[str] = []
    parse = ipaddress.ip_address

    def counted(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        parsed.append(address)
        return parse(address)

    monkeypatch.setattr(ipaddress, "ip_address", counted)
    clients = ClientConnections(ListenConfig())
    for address in ("198.51.100.77", "2001:db8:77::1"):  # used by no other test
        for _ in range(3):
            clients.client(address)
        assert parsed.count(address) <= 1, address


# The cap at work


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_client_past_its_cap_is_closed_at_accept_counted_and_logged(
    listen: Listen, tls: bool
) -> None:
    """One address could hold every connection the open-file limit leaves, and the console's
    posts were then closed at accept with everyone else's."""
    async with listen(tls=tls, max_connections_per_client=3) as listening:
        held = [await listening.connect(tls=tls) for _ in range(3)]
        try:
            await wait_until(lambda: listening.open_from_loopback() == 3, timeout=5, what="3 open")
            before = sample_value(CLOSED, reason="per_client")
            with structlog.testing.capture_logs() as logs:
                await closed_unanswered(listening, tls=tls)
            assert sample_value(CLOSED, reason="per_client") == before + 1
            assert listening.open_from_loopback() == 3  # the refused one was never counted
            [warned] = [line for line in logs if line["event"].startswith("A client holds too")]
            assert warned["log_level"] == "warning"
            assert warned["client"] == "127.0.0.1"
            assert warned["max_connections_per_client"] == 3
            # The ones within the cap are served as before.
            assert await healthz(*held[0]) == b"HTTP/1.1 200 OK"

            # One closed, one more may open.
            held.pop()[1].close()
            await wait_until(lambda: listening.open_from_loopback() == 2, timeout=5, what="2 open")
            held.append(await listening.connect(tls=tls))
            assert await healthz(*held[-1]) == b"HTTP/1.1 200 OK"
        finally:
            close_all([writer for _, writer in held])


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections_per_client": 1, "trusted_proxies": ["127.0.0.0/8"]},
        {"max_connections_per_client": 0},
    ],
    ids=["trusted_proxy", "no_cap"],
)
async def test_a_trusted_proxy_or_a_cap_of_0_is_not_capped(
    listen: Listen, options: dict[str, Any]
) -> None:
    """Every client behind a reverse proxy connects from the proxy's address."""
    async with listen(**options) as listening:
        held = [await listening.connect(tls=False) for _ in range(4)]
        try:
            for reader, writer in held:
                assert await healthz(reader, writer) == b"HTTP/1.1 200 OK"
            assert listening.clients.open == {}
        finally:
            close_all([writer for _, writer in held])


def queued_connections(port: int, source: str, count: int) -> list[socket.socket]:
    """`count` connections from `source`, set up by the kernel and waiting to be accepted."""
    clients = []
    for _ in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))  # returns once the connection is in the queue
        clients.append(client)
    return clients


def test_a_connection_closed_at_accept_does_not_end_the_batch_of_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio accepts up to the backlog at each turn of the loop, but stops at the first
    ConnectionAbortedError. When each connection closed at accept raised it, a client at its cap
    that kept connecting had one connection handled per turn of the loop, however busy: the
    queue filled, and the kernel dropped the connections of everyone else (a console's connect
    took seconds, measured with the loop at 1 ms a turn). accept() now closes those and goes on
    to the next connection, up to CLOSED_PER_ACCEPT of them."""
    monkeypatch.setattr(listener, "CLOSED_PER_ACCEPT", 3)
    sock = ListenSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.clients = ClientConnections(ListenConfig(max_connections_per_client=1))
    queued: list[socket.socket] = []
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        queued += queued_connections(port, "127.0.0.1", 3)  # the first within the cap
        before = sample_value(CLOSED, reason="per_client")
        queued.append(sock.accept()[0])
        queued += queued_connections(port, "127.0.0.2", 1)
        accepted, address = sock.accept()  # past two closed at accept
        assert address[0] == "127.0.0.2"
        queued.append(accepted)
        assert sample_value(CLOSED, reason="per_client") == before + 2

        # A flood past the cap gives the loop its turn back after CLOSED_PER_ACCEPT of them.
        queued += queued_connections(port, "127.0.0.1", 4)
        with pytest.raises(ConnectionAbortedError):
            sock.accept()
        assert sample_value(CLOSED, reason="per_client") == before + 5
        with pytest.raises(BlockingIOError):  # the queue is empty: asyncio's end of a batch
            sock.accept()
        assert sample_value(CLOSED, reason="per_client") == before + 6
    finally:
        close_all(queued)
        sock.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP reset, as a client that crashed or was cut off does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Wait for the listener to close the connection, with or without a TLS alert or a reset."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await closed_after(reader)


async def test_a_connection_gives_its_place_back_however_it_ends(
    listen: Listen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A place never given back would, one path at a time, lock the client out for good."""
    monkeypatch.setattr(listener, "TLS_SHUTDOWN_TIMEOUT_SECS", QUICK_SECS)
    async with listen(tls=True, max_connections_per_client=8) as listening:

        async def counted_then_released(what: str, end: Callable[[], Any]) -> None:
            await wait_until(lambda: listening.open_from_loopback() == 1, timeout=5, what=what)
            result = end()
            if asyncio.iscoroutine(result):
                await result
            await wait_until(
                lambda: not listening.clients.open, timeout=5, what=f"{what}: given back"
            )

        # The client closes after its request.
        reader, writer = await listening.connect()
        assert await healthz(reader, writer) == b"HTTP/1.1 200 OK"
        await counted_then_released("a closed connection", writer.close)

        # The client resets the connection, after its handshake and in the middle of it.
        reader, writer = await listening.connect()
        await counted_then_released("a reset connection", lambda: reset(writer))
        _, writer = await listening.connect(tls=False)
        await counted_then_released("a reset handshake", lambda: reset(writer))

        # The handshake fails: plain HTTP on the TLS port.
        reader, writer = await listening.connect(tls=False)
        writer.write(HEALTHZ)
        await counted_then_released("a failed handshake", lambda: until_closed(reader))
        writer.close()

        # The handshake times out: nothing sent at all.
        reader, writer = await listening.connect(tls=False)
        await counted_then_released("a handshake timed out", lambda: until_closed(reader))
        writer.close()

        # Idle past the header timeout once the handshake is done.
        reader, writer = await listening.connect()
        await counted_then_released("an idle connection", lambda: until_closed(reader))
        writer.close()

        # The server shuts down with connections open: one idle, one in the middle of a request,
        # one in the middle of its handshake (asyncio's server lets that one run to its timeout).
        held = [await listening.connect(), await listening.connect()]
        held[1][1].write(b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        held.append(await listening.connect(tls=False))
        try:
            await wait_until(lambda: listening.open_from_loopback() == 3, timeout=5, what="three")
            await listening.stop()
            await wait_until(lambda: not listening.clients.open, timeout=5, what="the shutdown")
        finally:
            close_all([writer for _, writer in held])


# Malformed requests


REFUSED = [
    # A connection's first request with a bad method: aiohttp logs it at DEBUG, not as an error.
    ("request_line", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("request_line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),  # TLS on plain
    ("request_line", b"POST /canary\xff HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("request_line", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
    (
        "headers",
        b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ),
    ("headers", b"GET / HTTP/1.1\r\nHost x\r\n\r\n"),
    ("too_long", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n"),
    ("too_long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"),
    (
        "body",
        b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
]


async def test_malformed_requests_are_counted_by_reason(listen: Listen) -> None:
    async with listen() as listening:
        for reason, request in REFUSED:
            before = {r: sample_value(MALFORMED, reason=r) for r in metrics.MALFORMED_REASONS}
            reader, writer = await listening.connect(tls=False)
            try:
                writer.write(request)
                answer, _ = await closed_after(reader)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.0 400 Bad Request"), (reason, answer)
            after = {r: sample_value(MALFORMED, reason=r) for r in metrics.MALFORMED_REASONS}
            changed = {r: after[r] - before[r] for r in after if after[r] != before[r]}
            assert changed == {reason: 1}, (request[:40], changed)

        # A body cut short while the webhook reads it: it answers that one itself.
        cut_short = sample_value(MALFORMED, reason="body")
        _, writer = await listening.connect(tls=False)
        writer.write(
            b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"Desc'
        )
        await writer.drain()
        writer.close()
        await wait_until(
            lambda: sample_value(MALFORMED, reason="body") == cut_short + 1,
            timeout=5,
            what="the body cut short counted",
        )


CHUNKED_POST = (
    b"POST /canary HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n6\r\n{"Desc\r\n'
)


async def test_a_chunked_body_the_parser_refuses_midway_is_answered_at_once(
    listen: Listen,
) -> None:
    """A chunk size that is not hex, arriving after the body began, was queued by aiohttp as a
    next request: the post waited for the rest of its body until the body timeout, 30 s, and
    got a 408. It is a malformed post: 400 at once, what had arrived kept, counted once."""
    async with listen() as listening:
        before = sample_value(MALFORMED, reason="body")
        in_flight = listening.app[IN_FLIGHT]
        with structlog.testing.capture_logs() as logs:
            reader, writer = await listening.connect(tls=False)
            try:
                writer.write(CHUNKED_POST)
                await wait_until(lambda: in_flight.count == 1, timeout=5, what="the handler")
                writer.write(b"zz\r\n")
                answer, took = await closed_after(reader)
            finally:
                writer.close()
            await wait_until(lambda: in_flight.count == 0, timeout=5, what="the handler's end")
        [(reason, body)] = quarantined(listening.app[PIPELINE])
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert answer.endswith(b'{"error":"invalid_payload"}'), answer
    assert took < 5
    assert reason.startswith("invalid_payload: cut off after 6 bytes"), reason
    assert body == b'{"Desc'
    assert sample_value(MALFORMED, reason="body") == before + 1
    warnings = [line["event"] for line in logs if line["log_level"] in ("warning", "error")]
    assert warnings == ["Post refused; its body is kept in quarantine."], logs


async def test_a_body_no_handler_reads_refused_midway_ends_the_connection_at_once(
    listen: Listen,
) -> None:
    """GET /healthz with a chunked body: answered without reading it, then aiohttp read on
    through the rest for 10 s; the refusal met there ends the connection, counted once."""
    async with listen() as listening:
        before = sample_value(MALFORMED, reason="body")
        with structlog.testing.capture_logs() as logs:
            reader, writer = await listening.connect(tls=False)
            try:
                writer.write(
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nab\r\n"
                )
                async with asyncio.timeout(READ_SECS):
                    head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"zz\r\n")
                _, took = await closed_after(reader)
            finally:
                writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert took < 5
    assert sample_value(MALFORMED, reason="body") == before + 1
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("Malformed request refused.", "warning")
    ], logs


def test_every_malformed_reason_starts_at_zero_and_is_a_fixed_set() -> None:
    for reason in metrics.MALFORMED_REASONS:
        assert metrics.REGISTRY.get_sample_value(MALFORMED, {"reason": reason}) is not None
    assert len(metrics.MALFORMED_REASONS) <= 5


def test_the_http_logger_lets_its_other_lines_through_at_the_configured_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HTTP_LOGGER takes every level, so that the refusals aiohttp logs at DEBUG are counted;
    its other lines must still keep to the daemon's level."""
    with caplog.at_level(logging.INFO):
        HTTP_LOGGER.debug("Ignored premature client disconnection")
        HTTP_LOGGER.info("an info line")
        HTTP_LOGGER.error("Unhandled exception")
    assert [record.getMessage() for record in caplog.records] == [
        "an info line",
        "Unhandled exception",
    ]


# The certificate's expiry


def certificate(authority: trustme.CA, directory: Path, not_after: datetime) -> tuple[Path, Path]:
    issued = authority.issue_cert("127.0.0.1", not_after=not_after)
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    key.chmod(0o600)
    return cert, key


def test_the_certificate_expiry_is_exported_at_start_and_at_each_reload(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    authority = trustme.CA()
    first = datetime(2031, 5, 1, 12, tzinfo=UTC)
    cert, key = certificate(authority, tmp_path, first)
    listen = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}}).listen
    context = server_context(listen)
    assert context is not None
    assert sample_value(EXPIRY, cert=str(cert)) == first.timestamp()

    renewed = datetime(2031, 8, 1, 12, tzinfo=UTC)
    certificate(authority, tmp_path, renewed)
    reload_certificates(context, listen)
    assert sample_value(EXPIRY, cert=str(cert)) == renewed.timestamp()

    # A reload that loads nothing leaves the certificate in use, and its expiry.
    cert.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        reload_certificates(context, listen)
    assert sample_value(EXPIRY, cert=str(cert)) == renewed.timestamp()


def test_the_expiry_of_a_certificate_file_with_text_not_ascii_is_exported(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """OpenSSL reads the certificate from a file with text around it, in any encoding: what
    `openssl pkcs12 -nokeys` writes, say, with a friendlyName or a subject not in ASCII. Its
    dates were read as ASCII text, so the certificate loaded with no expiry exported, and an
    alert on that expiry had no series to fire on."""
    not_after = datetime(2031, 5, 1, 12, tzinfo=UTC)
    cert, key = certificate(trustme.CA(), tmp_path, not_after)
    bag = "Bag Attributes\n    friendlyName: Société Générale webhook\nsubject=O = Société\n"
    cert.write_bytes(bag.encode() + cert.read_bytes())
    listen = make_settings(listen={"tls": {"cert": str(cert), "key": str(key)}}).listen
    assert server_context(listen) is not None
    assert sample_value(EXPIRY, cert=str(cert)) == not_after.timestamp()


def test_without_tls_no_expiry_is_exported(make_settings: Callable[..., Settings]) -> None:
    def expiries() -> int:
        return sum(len(family.samples) for family in metrics.listener_certificate_expiry.collect())

    before = expiries()
    assert server_context(make_settings().listen) is None
    assert expiries() == before


@pytest.mark.slow
async def test_a_reload_exports_the_renewed_certificates_expiry(tmp_path: Path) -> None:
    """SIGHUP to a running daemon, the renewed certificate's expiry in its /metrics."""
    authority = trustme.CA()
    daemon = TlsDaemon(tmp_path / "daemon", authority, graceful_secs=2)
    await daemon.start()
    try:
        cert = daemon.workdir / "cert.pem"
        renewed = datetime(2032, 2, 3, 4, 5, 6, tzinfo=UTC)
        first = await scraped_expiry(daemon, cert)
        assert first is not None
        assert first != renewed.timestamp()
        certificate(authority, daemon.workdir, renewed)
        daemon.send_signal(signal.SIGHUP)

        async def renewed_expiry() -> bool:
            return await scraped_expiry(daemon, cert) == renewed.timestamp()

        await wait_until_async(renewed_expiry, timeout=10, what="the renewed expiry")
    finally:
        daemon.close()


async def scraped_expiry(daemon: TlsDaemon, cert: Path) -> float | None:
    wanted = f'{EXPIRY}{{cert="{cert}"}} '
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.base_url}/metrics", ssl=daemon.client_tls) as answer,
    ):
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return None


# Lines left out of the log


def test_a_flush_reports_the_lines_left_out_within_the_budget() -> None:
    budget = LogBudget(burst=1, per_minute=0.001, what="test lines")
    assert budget.flush() == 0  # nothing held
    assert budget.take() == 0
    assert budget.take() is None
    assert budget.take() is None
    # No room in the budget for the line that would say so: the count waits.
    assert budget.flush() == 0
    assert budget.flush(force=True) == 2
    assert budget.flush(force=True) == 0  # reported once


@pytest.fixture
def quick_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "FLUSH_EVERY_SECS", 0.02)


def flusher_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "log-budget-flush"]


@pytest.mark.usefixtures("quick_flush")
async def test_lines_left_out_reach_the_log_when_no_line_follows(listen: Listen) -> None:
    """Before, the count came only with the next line of the same kind: after a burst that
    stopped, nobody learnt how many lines had been left out."""
    budget = LogBudget(burst=2, per_minute=6000, what="test lines")
    with structlog.testing.capture_logs() as logs:
        async with listen():
            assert len(flusher_tasks()) == 1
            taken = [budget.take() for _ in range(10)]
            held = taken.count(None)
            assert held > 0  # past the burst (give or take a token refilled meanwhile)

            def reported() -> list[MutableMapping[str, Any]]:
                return [line for line in logs if line.get("lines") == "test lines"]

            [line] = await wait_until(reported, timeout=5, what="the lines left out reported")
            assert line["event"] == "Log lines left out."
            assert line["log_level"] == "warning"
            assert line["suppressed"] == held
            assert budget.flush(force=True) == 0  # reported once
        assert flusher_tasks() == []


async def test_the_listener_reports_what_it_left_out_when_it_stops(listen: Listen) -> None:
    budget = LogBudget(burst=1, per_minute=0.001, what="test lines")
    with structlog.testing.capture_logs() as logs:
        async with listen():
            budget.take()
            budget.take()
        assert flusher_tasks() == []
    [line] = [line for line in logs if line.get("lines") == "test lines"]
    assert line["suppressed"] == 1


@pytest.fixture(autouse=True)
def _no_flush_left_over() -> Iterator[None]:
    yield
    # The budgets of this module's tests must not report into the next test's log.
    listener.flush_log_budgets(force=True)


# Clients that leave their answers unread


class _Recorded(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("made")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")


class _Transport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = asyncio.Event()
        self.pending = 1 << 20  # bytes waiting to be written: the client does not read

    def get_write_buffer_size(self) -> int:
        return self.pending

    def abort(self) -> None:
        self.aborted.set()


async def test_a_connection_whose_answers_stay_unread_is_closed_after_the_limit() -> None:
    inner, transport = _Recorded(), _Transport()
    guarded = listener.WriteStallLimit(lambda: inner, QUICK_SECS)
    guarded.connection_made(transport)
    guarded.pause_writing()  # the send buffers are full: the client does not read
    async with asyncio.timeout(READ_SECS):
        await transport.aborted.wait()
    assert inner.calls == ["made", "pause"]


async def test_a_client_that_reads_slowly_but_reads_keeps_its_connection() -> None:
    inner, transport = _Recorded(), _Transport()
    guarded = listener.WriteStallLimit(lambda: inner, QUICK_SECS)
    guarded.connection_made(transport)
    guarded.pause_writing()

    async def reading_slowly() -> None:  # a little, ten times a period
        while True:
            transport.pending -= 100
            await asyncio.sleep(QUICK_SECS / 10)

    reading = asyncio.create_task(reading_slowly())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QUICK_SECS * 3):
            await transport.aborted.wait()
    reading.cancel()
    # Then it reads nothing for a whole period.
    async with asyncio.timeout(READ_SECS):
        await transport.aborted.wait()


async def test_a_client_that_reads_again_in_time_keeps_its_connection() -> None:
    inner, transport = _Recorded(), _Transport()
    guarded = listener.WriteStallLimit(lambda: inner, QUICK_SECS)
    guarded.connection_made(transport)
    guarded.pause_writing()
    guarded.resume_writing()
    guarded.pause_writing()
    guarded.connection_lost(None)
    # Past the limit counted from the first pause, and from the second: neither closes it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QUICK_SECS * 3):
            await transport.aborted.wait()
    assert inner.calls == ["made", "pause", "resume", "pause", "lost"]


async def test_a_pipelining_client_that_never_reads_is_closed(
    listen: Listen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "WRITE_STALL_TIMEOUT_SECS", QUICK_SECS)
    async with listen() as listening:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", listening.port))
        client.setblocking(False)
        metrics_request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        loop = asyncio.get_running_loop()
        try:
            # Requests until the daemon stops taking them, its answers piling up unread;
            # then it must close the connection (a reset once this side's data is unread).
            async with asyncio.timeout(30):
                with contextlib.suppress(ConnectionError):
                    while True:
                        await loop.sock_sendall(client, metrics_request * 50)
            assert listening.open_from_loopback() == 0
        finally:
            client.close()


# Expect headers


async def raw_answer(listening: Listening, request: bytes) -> bytes:
    reader, writer = await listening.connect(tls=False)
    try:
        writer.write(request)
        async with asyncio.timeout(READ_SECS):
            return await reader.read()
    finally:
        writer.close()


async def test_an_expect_header_on_a_status_route_is_ignored(listen: Listen) -> None:
    async with listen() as listening:
        for expect in (b"\xff", b"<b>hi</b>"):
            answer = await raw_answer(
                listening,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: %b\r\nConnection: close\r\n\r\n"
                % expect,
            )
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert expect not in answer


async def test_requests_that_fail_in_aiohttp_are_logged_within_a_budget(listen: Listen) -> None:
    with structlog.testing.capture_logs() as logs:
        async with listen() as listening:
            request = (
                b"GET /nowhere HTTP/1.1\r\nHost: x\r\nExpect: \xff\r\nConnection: close\r\n\r\n"
            )
            for _ in range(60):
                await raw_answer(listening, request)
        listener.flush_log_budgets(force=True)
    errors = [entry for entry in logs if entry["event"] == "Request failed inside aiohttp."]
    assert 1 <= len(errors) <= 20, len(errors)
    assert "UnicodeEncodeError" in errors[0]["error"]
    # Those left out are counted, by a later line or by the flush.
    left_out = [entry for entry in logs if entry.get("lines") == "requests that failed in aiohttp"]
    reported = sum(e.get("suppressed", 0) for e in errors) + sum(e["suppressed"] for e in left_out)
    assert len(errors) + reported == 60, (len(errors), reported)


async def test_a_forwarded_hop_that_is_not_utf8_is_a_client_like_any_other(listen: Listen) -> None:
    async with listen(trusted_proxies=["127.0.0.1/32"]) as listening:
        answer = await raw_answer(
            listening,
            b"POST /canary HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \xff\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}",
        )
    # Taken and stored like any other post (these listeners need no credentials), not a 500.
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def _body(*, complete: bool) -> aiohttp.StreamReader:
    body = aiohttp.StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())
    body.feed_data(b'{"Desc')
    if complete:
        body.feed_eof()
    return body


REFUSAL = _ErrInfo(status=400, exc=BadHttpMessage("Invalid chunk size"), message="x")


async def test_a_refusal_ends_the_last_body_wherever_aiohttp_has_got_with_it() -> None:
    """Still queued; or taken off the queue, its handler not started yet (Python 3.11 starts
    the task a turn of the loop later), where it got a 408 after 30 s all the same. Ended, so
    that aiohttp does not wait for the rest after a handler that does not read it."""
    for taken in (False, True):
        refusals, body = listener.BodyRefusals(), _body(complete=False)
        queued: deque[tuple[object, Any]] = deque([(Mock(), body)])
        refusals.route(queued)
        if taken:
            queued.popleft()
        queued.append((REFUSAL, EMPTY_PAYLOAD))
        refusals.route(queued)
        assert body.is_eof()
        with pytest.raises(BadHttpMessage):
            await body.readany()


async def test_a_refusal_after_a_complete_body_is_left_to_aiohttp() -> None:
    """It is about the next request."""
    refusals, body = listener.BodyRefusals(), _body(complete=True)
    queued: deque[tuple[object, Any]] = deque([(Mock(), body)])
    refusals.route(queued)
    queued.append((REFUSAL, EMPTY_PAYLOAD))
    refusals.route(queued)
    assert await body.readany() == b'{"Desc'
    lone: deque[tuple[object, Any]] = deque([(REFUSAL, EMPTY_PAYLOAD)])
    listener.BodyRefusals().route(lone)  # no request before it at all


def test_what_aiohttp_queues_in_another_shape_is_left_alone() -> None:
    """aiohttp's queue is private: a future release may change it, and then the refusal is
    answered as aiohttp answers it, not a failed read of the connection."""
    for queued in (deque([object()]), deque([(REFUSAL,)]), deque([(REFUSAL, None, None)])):
        listener.BodyRefusals().route(queued)  # type: ignore[arg-type]
        assert len(queued) == 1
