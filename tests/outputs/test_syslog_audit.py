"""Audit of the syslog output for lost, torn and mis-framed records, against small local peers.

Every peer runs on loopback (127.0.0.1 or ::1) on a free port. Where a peer must misbehave at a
precise moment (close while the output still holds an idle connection, never read, refuse a TLS
client without a certificate) it is a plain socket driven by the test, so the order of events is
the test's, not the scheduler's. Nothing waits for time to pass: every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import re
import select
import socket
import ssl
import struct
import termios
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
import trustme

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.outputs._syslog_message import escape_frame_delimiters
from forwarder.outputs._syslog_transport import StreamSender, describe
from forwarder.outputs.base import Delivered, Partial, Reject, Retry
from forwarder.outputs.syslog import SyslogOutput
from tests.outputs.test_syslog import OutputFactory, Sink, ca_file, closed_port, serving
from tests.outputs.test_syslog import event as event  # a fixture
from tests.outputs.test_syslog import make_output as make_output  # a fixture
from tests.outputs.test_syslog import server_ca as server_ca  # a fixture

WAIT_SECS = 10.0

# An attacker's user name at a fake SSH prompt: Cyrillic (2 bytes a character), emoji (4 bytes),
# a combining mark, CJK (3 bytes). Characters and bytes differ at every step.
HOSTILE_USERNAME = "админ😀ё\u0301漢字"


def test_a_lost_connection_is_described_by_what_was_seen() -> None:
    """The kernel's reset, or this side's own finding (a close before the acknowledgement)."""
    assert describe(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")) == (
        "connection reset by the peer"
    )
    closed = ConnectionResetError("the connection closed before the receiver had the batch")
    assert describe(closed) == "the connection closed before the receiver had the batch"


def frames(data: bytes) -> list[bytes]:
    """Split an octet-counted stream (RFC 6587 §3.4.1) into its messages; strict."""
    messages: list[bytes] = []
    position = 0
    while position < len(data):
        match = re.compile(rb"[1-9][0-9]* ").match(data, position)
        assert match is not None, (
            f"no MSG-LEN at byte {position}: {data[position : position + 20]!r}"
        )
        length = int(match.group()[:-1])
        start = match.end()
        assert start + length <= len(data), "the stream ends inside a frame"
        messages.append(data[start : start + length])
        position = start + length
    return messages


async def until(predicate: Callable[[], bool], timeout: float = WAIT_SECS) -> None:
    """Wait until `predicate()` holds, letting the event loop run between looks."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


def stream_sender(output: SyslogOutput) -> StreamSender:
    sender = output._sender
    assert isinstance(sender, StreamSender)
    return sender


@contextlib.asynccontextmanager
async def output_to(
    sink: Sink, transport: str, server_ca: trustme.CA, make_output: OutputFactory
) -> AsyncIterator[SyslogOutput]:
    """An output over `transport` (tcp, or tls with a certificate from `server_ca`) to `sink`,
    which serves for the block."""
    context = None
    options: dict[str, Any] = {}
    if transport == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert("127.0.0.1").configure_cert(context)
    with ca_file(server_ca) as trusted:
        if transport == "tls":
            options["tls"] = {"ca_file": trusted}
        async with serving(sink, context) as where:
            yield make_output(hosts=[where], transport=transport, **options)


def usable(output: SyslogOutput) -> bool:
    """Whether the output's connection is still usable, as its next send will see it."""
    stream = stream_sender(output)._stream
    return stream is not None and stream.usable()


def client_socket(output: SyslogOutput) -> socket.socket:
    """The output's connected socket (the TCP one, under TLS too)."""
    stream = stream_sender(output)._stream
    assert stream is not None
    sock: socket.socket = stream.writer.get_extra_info("socket")
    return sock


def readable(sock: socket.socket, timeout: float = WAIT_SECS) -> bool:
    """Block until the kernel has something for `sock` (data, FIN or RST); not the loop's turn."""
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


def recv_until(conn: socket.socket, predicate: Callable[[bytes], bool]) -> bytes:
    """Read from a blocking socket until `predicate(everything so far)` holds."""
    received = b""
    conn.settimeout(WAIT_SECS)
    while not predicate(received):
        chunk = conn.recv(65536)
        assert chunk, f"the output closed the connection; got {received!r}"
        received += chunk
    return received


@contextlib.contextmanager
def plain_listener(rcvbuf: int | None = None) -> Iterator[socket.socket]:
    """A listening socket the test accepts on and drives by hand (blocking calls)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # inherited by accepted sockets; must precede listen()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(WAIT_SECS)
    with listener:
        yield listener


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def accept_pending(listener: socket.socket) -> list[socket.socket]:
    """Every connection already waiting on `listener`, without blocking."""
    accepted: list[socket.socket] = []
    while select.select([listener], [], [], 0)[0]:
        conn, _ = listener.accept()
        accepted.append(conn)
    return accepted


def drain_available(conn: socket.socket) -> bytes:
    """Everything the kernel has already received on `conn`, without waiting for more."""
    received = b""
    conn.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while chunk := conn.recv(65536):
            received += chunk
    return received


def rst(conn: socket.socket) -> None:
    """Close with RST, as a receiver that crashes or drops a connection it still had data on."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# --- octet counting counts bytes -------------------------------------------------------------


class TestOctetCounting:
    async def test_msg_len_is_the_utf8_byte_count(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        texts = [f"user={HOSTILE_USERNAME}", "😀" * 300, "plain ascii after"]
        async with serving(sink) as where:
            output = make_output(hosts=[where])
            batch = [Record(event, text) for text in texts]
            assert await output.send(batch) == Delivered()
            await sink.wait_until(lambda: b"plain ascii after" in sink.data())
        messages = frames(sink.data())  # would fail if any MSG-LEN counted characters
        assert len(messages) == 3
        for message, text in zip(messages, texts, strict=True):
            assert message.decode("utf-8").endswith(" " + text)


# --- embedded line breaks --------------------------------------------------------------------

BREAKS = "one\ntwo\rthree\r\nfour\x00five"
FORGED = "\r<13>1 2026-01-01T00:00:00Z forged-host sshd - - - root login"


class TestLineBreaks:
    def test_lf_framing_escapes_cr_too(self) -> None:
        # A receiver that ends lines at CR as well as LF (Java's BufferedReader.readLine, Python's
        # splitlines, "universal newline" readers) would read the part after a CR as a record.
        assert (
            escape_frame_delimiters(BREAKS.encode()) == b"one#012two#015three#015#012four#000five"
        )

    async def test_lf_framing_sends_one_line_whatever_the_line_breaks(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        async with serving(sink) as where:
            output = make_output(hosts=[where], framing="lf")
            batch = [Record(event, BREAKS + FORGED), Record(event, "after")]
            assert await output.send(batch) == Delivered()
            await sink.wait_until(lambda: sink.data().endswith(b"after\n"))
        lines = re.split(rb"\r\n|\r|\n|\x00", sink.data())
        assert lines[-1] == b""  # the stream ends with the last record's LF
        assert len(lines[:-1]) == 2, lines
        assert b"forged-host" in lines[0]

    async def test_lf_framing_reject_policy_refuses_cr_too(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        async with serving(sink) as where:
            output = make_output(hosts=[where], framing="lf", newline_policy="reject")
            result = await output.send([Record(event, "only a CR\rhere"), Record(event, "after")])
            await sink.wait_until(lambda: sink.data().endswith(b"after\n"))
        assert isinstance(result, Partial)
        assert list(result.results) == [0]
        assert isinstance(result.results[0], Reject)
        assert b"only a CR" not in sink.data()

    async def test_octet_counting_carries_every_byte_in_one_frame(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        async with serving(sink) as where:
            output = make_output(hosts=[where])
            batch = [Record(event, BREAKS + FORGED), Record(event, "after")]
            assert await output.send(batch) == Delivered()
            await sink.wait_until(lambda: sink.data().endswith(b"after"))
        first, second = frames(sink.data())
        assert first.endswith((BREAKS + FORGED).encode())
        assert second.endswith(b" after")


# --- at least once over TCP and TLS ----------------------------------------------------------


class TestAtLeastOnce:
    async def test_a_close_not_yet_seen_by_the_loop_does_not_lose_the_batch(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        """The receiver closed; its FIN reached this host but the event loop has not read it
        when the next batch is written. The kernel takes the write and the receiver answers
        with RST: that batch must not be reported delivered."""
        with plain_listener() as listener:
            output = make_output(hosts=[address(listener)])
            assert await output.send([Record(event, "first batch")]) == Delivered()
            conn, _ = listener.accept()
            recv_until(conn, lambda got: b"first batch" in got)
            conn.close()
            assert readable(client_socket(output))  # the FIN is in; the loop has not run
            result = await output.send([Record(event, "second batch")])
            later = b""
            for again in accept_pending(listener):  # a new connection, if the close was seen
                with again:
                    later += recv_until(again, lambda got: b"second batch" in got)
        assert result != Delivered() or b"second batch" in later
        if result != Delivered():
            assert isinstance(result, Retry)
            assert "will be resent" in result.reason

    async def test_a_receiver_that_sent_something_and_closed_while_idle(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        """A receiver that wrote to the connection (a banner, an error line) leaves bytes the
        output never reads, so the end of stream behind them is not seen by `at_eof()`."""
        with plain_listener() as listener:
            output = make_output(hosts=[address(listener)])
            assert await output.send([Record(event, "first batch")]) == Delivered()
            conn, _ = listener.accept()
            conn.sendall(b"hello from the receiver\n")
            recv_until(conn, lambda got: b"first batch" in got)
            conn.close()
            stream = stream_sender(output)._stream
            assert stream is not None
            reader = stream.reader
            # The loop has seen the FIN, as after a long idle; with the banner still unread,
            # the private flag is the only sign of it.
            await until(lambda: reader._eof)  # type: ignore[attr-defined]
            result = await output.send([Record(event, "second batch")])
            if result != Delivered():  # a Retry: the dispatcher sends it again
                assert isinstance(result, Retry)
                result = await output.send([Record(event, "second batch")])
            again, _ = listener.accept()
            with again:
                got = recv_until(again, lambda got: b"second batch" in got)
        assert result == Delivered()
        assert b"second batch" in got

    async def test_delivered_means_the_receivers_tcp_acknowledged_it(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        """A batch still in this host's send buffer is lost if the receiver then resets (a
        crash, a load balancer that forgot the flow): only what the receiver's TCP acknowledged
        may be reported delivered. The receiver here never reads, so its window closes."""
        delivered: list[int] = []
        with plain_listener(rcvbuf=4096) as listener:
            output = make_output(hosts=[address(listener)], write_timeout_secs=0.5)
            for number in range(20_000):
                result = await output.send([Record(event, f"record {number:06d} " + "q" * 2000)])
                if result != Delivered():
                    break
                delivered.append(number)
            assert isinstance(result, Retry)
            assert "did not finish within 0.5s" in result.reason
            conn, _ = listener.accept()
            # What the receiver's kernel holds, hence acknowledged; then it crashes.
            queued = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0" * 4))[0]
            received = recv_until(conn, lambda got: len(got) >= queued)
            rst(conn)
        arrived = {int(n) for n in re.findall(rb"record (\d{6}) q{2000}", received)}
        assert delivered, "nothing was delivered before the timeout"
        lost = sorted(set(delivered) - arrived)
        assert not lost, f"{len(lost)} batches reported delivered were never acknowledged"

    async def test_tls_batches_reported_delivered_survive_a_later_write_timeout(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        """Under backpressure, TLS data can sit in the TCP transport's buffer after `drain()`;
        a later batch's timeout aborts the connection and that buffer with it."""
        sink = Sink("stall")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert("127.0.0.1").configure_cert(context)
        delivered: list[int] = []
        async with serving(sink, context) as where:
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[where], transport="tls", tls={"ca_file": trusted}, write_timeout_secs=0.5
                )
                for number in range(100_000):
                    record = Record(event, f"record {number:06d} " + "p" * 8000)
                    result = await output.send([record])
                    if result != Delivered():
                        break
                    delivered.append(number)
                assert isinstance(result, Retry)
                sink.released.set()
                await until(lambda: len(sink.connections) == 1 and sink.writers[0].is_closing())
        arrived = {int(m) for m in re.findall(rb"record (\d{6}) p{8000}", sink.data())}
        assert delivered, "nothing was delivered before the timeout"
        lost = sorted(set(delivered) - arrived)
        assert not lost, f"{len(lost)} records reported delivered never arrived: {lost[:5]}..."

    async def test_peer_closing_mid_batch_is_a_retry(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        with plain_listener(rcvbuf=4096) as listener:
            output = make_output(hosts=[address(listener)], write_timeout_secs=5)
            batch = [Record(event, f"record {n} " + "y" * 1000) for n in range(4000)]
            sending = asyncio.ensure_future(output.send(batch))
            conn = await asyncio.to_thread(lambda: listener.accept()[0])
            await asyncio.to_thread(recv_until, conn, lambda got: len(got) > 100_000)
            conn.close()  # unread data: the kernel answers with RST
            result = await sending
        assert isinstance(result, Retry)
        assert "will be resent" in result.reason

    @pytest.mark.parametrize("transport", ["tcp", "tls"])
    @pytest.mark.parametrize("how", ["close", "reset"])
    async def test_a_connection_dropped_while_idle_is_reopened(
        self,
        make_output: OutputFactory,
        event: CanaryEvent,
        server_ca: trustme.CA,
        transport: str,
        how: str,
    ) -> None:
        sink = Sink()
        async with output_to(sink, transport, server_ca, make_output) as output:
            assert await output.send([Record(event, "first batch")]) == Delivered()
            await sink.wait_until(lambda: b"first batch" in sink.data())
            writer = sink.writers[0]
            if how == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()  # TLS: close_notify, then FIN
            await until(lambda: not usable(output))
            assert await output.send([Record(event, "second batch")]) == Delivered()
            await sink.wait_until(
                lambda: len(sink.connections) == 2 and b"second batch" in sink.connections[1]
            )
        assert b"second batch" not in sink.connections[0]

    @pytest.mark.parametrize("transport", ["tcp", "tls"])
    async def test_a_receiver_that_closes_after_each_batch_gets_each_batch_once(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA, transport: str
    ) -> None:
        """The receiver's close (under TLS its close_notify, which ends the connection on this
        side at once) can come before this side has seen the acknowledgement of the batch.
        That batch was had, and must not be sent again, and again after that."""
        sink = Sink(close_after=b"end of batch")
        async with output_to(sink, transport, server_ca, make_output) as output:
            for number in range(5):
                batch = [
                    Record(event, f"batch {number} " + "x" * 2000),
                    Record(event, f"batch {number} end of batch"),
                ]
                assert await output.send(batch) == Delivered(), number
                # The next batch comes once this side has seen the close, as it has when
                # batches are not back to back.
                await until(lambda: not usable(output))
        assert len(sink.connections) == 5
        for number in range(5):
            assert sink.data().count(f"batch {number} end of batch".encode()) == 1

    async def test_reconnects_when_the_receiver_comes_back(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        port = closed_port()
        output = make_output(hosts=[f"127.0.0.1:{port}"])
        first = Sink()
        async with serving(first, port=port):
            assert await output.send([Record(event, "before")]) == Delivered()
            await first.wait_until(lambda: b"before" in first.data())
        stream = stream_sender(output)._stream
        assert stream is not None
        await until(lambda: not stream.usable())  # the receiver is gone, and that was seen
        with structlog.testing.capture_logs() as logs:
            down = await output.send([Record(event, "while down")])
        assert isinstance(down, Retry)
        assert "connection refused" in down.reason
        assert [log["event"] for log in logs if log["log_level"] == "warning"]
        second = Sink()
        async with serving(second, port=port):
            assert await output.send([Record(event, "after")]) == Delivered()
            await second.wait_until(lambda: b"after" in second.data())


# --- TLS handshake failures are for an operator, with the cause ------------------------------


@contextlib.contextmanager
def blocking_tls_server(context: ssl.SSLContext) -> Iterator[str]:
    """One TLS handshake on a thread, the way OpenSSL servers answer (alerts included)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(WAIT_SECS)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(100)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address(listener)
    finally:
        thread.join(WAIT_SECS)
        listener.close()


class TestKeepalive:
    @pytest.mark.parametrize("transport", ["tcp", "tls"])
    async def test_an_idle_connection_is_kept_alive_and_a_dead_peer_found(
        self,
        make_output: OutputFactory,
        event: CanaryEvent,
        server_ca: trustme.CA,
        transport: str,
    ) -> None:
        # A load balancer forgets an idle flow and drops the next batch without a reset.
        context = None
        if transport == "tls":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ca.issue_cert("127.0.0.1").configure_cert(context)
        sink = Sink()
        async with serving(sink, context) as where:
            with ca_file(server_ca) as trusted:
                options: dict[str, Any] = {"hosts": [where], "transport": transport}
                if transport == "tls":
                    options["tls"] = {"ca_file": trusted}
                output = make_output(**options)
                assert await output.send([Record(event, "kept alive")]) == Delivered()
                sock = client_socket(output)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6


class TestTlsHandshake:
    async def test_tls12_server_requiring_a_client_certificate(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert("127.0.0.1").configure_cert(context)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        server_ca.configure_trust(context)
        with ca_file(server_ca) as trusted, blocking_tls_server(context) as where:
            output = make_output(hosts=[where], transport="tls", tls={"ca_file": trusted})
            result = await output.send([Record(event, "x")])
        assert isinstance(result, Retry)
        assert result.operator_action, result.reason
        assert "client certificate" in result.reason
        assert "HANDSHAKE_FAILURE" in result.reason

    async def test_expired_server_certificate(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert(
            "127.0.0.1",
            not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
        ).configure_cert(context)
        async with serving(Sink(), context) as where:
            with ca_file(server_ca) as trusted:
                output = make_output(hosts=[where], transport="tls", tls={"ca_file": trusted})
                result = await output.send([Record(event, "x")])
        assert isinstance(result, Retry)
        assert result.operator_action
        assert "certificate has expired" in result.reason

    async def test_wrong_server_name_is_for_an_operator(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert("127.0.0.1").configure_cert(context)
        async with serving(Sink(), context) as where:
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[where],
                    transport="tls",
                    tls={"ca_file": trusted, "server_name": "siem.example"},
                )
                result = await output.send([Record(event, "x")])
        assert isinstance(result, Retry)
        assert result.operator_action
        assert "siem.example" in result.reason

    async def test_a_plaintext_service_on_the_tls_port(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 mail.example ESMTP ready\r\n")
            with contextlib.suppress(OSError):
                await reader.read(65536)
            writer.close()

        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[f"127.0.0.1:{port}"], transport="tls", tls={"ca_file": trusted}
                )
                result = await output.send([Record(event, "x")])
        finally:
            server.close()
        assert isinstance(result, Retry)
        assert result.operator_action, result.reason
        assert "speaks TLS" in result.reason

    async def test_a_silent_peer_times_out_the_handshake_and_says_so(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        sink = Sink("stall")  # accepts and never answers: a plain syslog port, say
        async with serving(sink) as where:
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[where],
                    transport="tls",
                    tls={"ca_file": trusted},
                    connect_timeout_secs=0.3,
                )
                result = await output.send([Record(event, "x")])
        assert isinstance(result, Retry)
        assert "TLS handshake" in result.reason
        assert "0.3s" in result.reason


# --- UDP -------------------------------------------------------------------------------------


class UdpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)


@contextlib.asynccontextmanager
async def udp_sink(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[UdpSink, str]]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(UdpSink, local_addr=(host, port))
    bound = transport.get_extra_info("sockname")
    try:
        yield sink, f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"
    finally:
        transport.close()


class TestUdp:
    async def test_nothing_is_reported_delivered_while_nobody_listens(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        """ICMP port unreachable comes back for a datagram after it was sent; each retry on a
        fresh socket must not be reported delivered into the void either."""
        port = closed_port(socket.SOCK_DGRAM)
        output = make_output(hosts=[f"127.0.0.1:{port}"], transport="udp")
        results = [await output.send([Record(event, f"lost? {n}")]) for n in range(6)]
        for result in results:
            assert isinstance(result, Retry), results
            assert "connection refused" in result.reason
        async with udp_sink(port=port) as (sink, _):
            assert await output.send([Record(event, "now it listens")]) == Delivered()
            await until(lambda: any(b"now it listens" in d for d in sink.datagrams))

    async def test_a_refused_endpoint_hands_the_batch_to_the_next(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        dead = f"127.0.0.1:{closed_port(socket.SOCK_DGRAM)}"
        async with udp_sink() as (sink, live):
            output = make_output(hosts=[dead, live], transport="udp")
            with structlog.testing.capture_logs() as logs:
                for n in range(4):
                    assert await output.send([Record(event, f"batch {n}")]) == Delivered()
            await until(lambda: len(sink.datagrams) == 4)
        assert [d.rsplit(b" ", 1)[1] for d in sink.datagrams] == [b"0", b"1", b"2", b"3"]
        refused = [log for log in logs if log["event"] == "Syslog endpoint refused datagrams."]
        assert [log["endpoint"] for log in refused] == [dead]  # then benched, not tried again

    async def test_ipv6_loopback(self, make_output: OutputFactory, event: CanaryEvent) -> None:
        if not socket.has_ipv6:
            pytest.skip("no IPv6 on this machine")
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"cannot bind ::1: {exc}")
        async with udp_sink("::1") as (sink, where):
            output = make_output(hosts=[where], transport="udp", name="udp6")
            batch = [Record(event, "one"), Record(event, "é" * 2000)]
            assert await output.send(batch) == Delivered()
            await until(lambda: len(sink.datagrams) == 2)
        assert sink.datagrams[0].endswith(b" one")
        assert len(sink.datagrams[1]) <= 2048
        assert sink.datagrams[1].endswith("é...[truncated]".encode())

    async def test_a_refused_batch_inside_one_send_does_not_raise(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        port = closed_port(socket.SOCK_DGRAM)
        output = make_output(hosts=[f"127.0.0.1:{port}"], transport="udp")
        result = await output.send([Record(event, f"d{n}") for n in range(50)])
        assert isinstance(result, Retry)
        assert "connection refused" in result.reason
        assert not result.operator_action


# --- backpressure and timeouts ---------------------------------------------------------------


class TestBackpressure:
    async def test_concurrent_large_batches_to_a_slow_reader_stay_whole(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        with plain_listener(rcvbuf=4096) as listener:
            output = make_output(hosts=[address(listener)], write_timeout_secs=30)
            batches = [
                [
                    Record(event, f"batch {b} record {n} {HOSTILE_USERNAME * (n % 7)}")
                    for n in range(800)
                ]
                for b in range(3)
            ]
            sending = [asyncio.ensure_future(output.send(batch)) for batch in batches]
            conn = await asyncio.to_thread(lambda: listener.accept()[0])

            def slow_read() -> bytes:  # small reads, the way a busy receiver takes them
                received = b""
                conn.settimeout(WAIT_SECS)
                while received.count(b" record 799 ") < 3:
                    chunk = conn.recv(997)
                    assert chunk
                    received += chunk
                return received

            data = await asyncio.to_thread(slow_read)
            results = await asyncio.gather(*sending)
            conn.close()
        assert results == [Delivered()] * 3
        texts = [message.decode().split(" - ", 2)[2] for message in frames(data)]
        order = [int(text.split(" ")[1]) for text in texts]
        # One batch after the other, never interleaved, each record whole and in order.
        assert order == sorted(order)
        assert texts == [record.text() for b in dict.fromkeys(order) for record in batches[b]]


class TestTimeouts:
    async def test_connect_timeout_with_a_full_accept_queue(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            fillers = []
            for _ in range(4):  # the accept queue overflows: further SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(listener.getsockname())
                fillers.append(filler)
            try:
                output = make_output(hosts=[address(listener)], connect_timeout_secs=0.3)
                result = await output.send([Record(event, "x")])
            finally:
                for filler in fillers:
                    filler.close()
        assert isinstance(result, Retry)
        assert "no connection within 0.3s" in result.reason

    async def test_tls_write_timeout_with_a_peer_that_never_reads(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ca.issue_cert("127.0.0.1").configure_cert(context)
        async with serving(Sink("stall"), context) as where:
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[where],
                    transport="tls",
                    tls={"ca_file": trusted},
                    write_timeout_secs=0.3,
                    max_message_bytes=64 * 1024 * 1024,
                )
                result = await output.send([Record(event, "z" * (32 * 1024 * 1024))])
        assert isinstance(result, Retry)
        assert "did not finish within 0.3s" in result.reason
