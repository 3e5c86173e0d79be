"""The syslog output: a real rsyslogd shows what arrives, tiny asyncio servers the failures."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cefp
import pytest
import structlog
import trustme
from pydantic import ValidationError

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.outputs._syslog_transport import StreamSender
from forwarder.outputs.base import Delivered, HealthcheckError, Partial, Reject, Retry
from forwarder.outputs.syslog import SyslogConfig, SyslogOutput
from forwarder.telemetry.metrics import REGISTRY
from tests.mappers.helpers import sample_event
from tests.support.rsyslog import Predicate, Rsyslog, RsyslogFactory, requires_rsyslogd
from tests.support.rsyslog import rsyslog_factory as rsyslog_factory  # a fixture

BOM = "\ufeff"
integration = [pytest.mark.integration, requires_rsyslogd]

# Every character RFC 5424 SD escaping and CEF escaping care about, plus a forged header.
TRICKY = 'quote" bracket] back\\slash =|<13>1 2026-01-01T00:00:00Z forged x - - - é'
FORGED_TAIL = "line1\nline2\r\n<13>1 2026-01-01T00:00:00Z forged app - - - pwned\x00nul"
CEF_LINE = r"CEF:0|Thinkst|Canary|1.0|1001|SSH \| login|7|src=192.0.2.1 msg=one\ntwo cs1=C:\\x \= y"


@pytest.fixture(scope="module")
def event() -> CanaryEvent:
    return sample_event("incident_ssh_login")


def sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424_record(event: CanaryEvent, msg: str = "hello", node: str = "n1") -> Record:
    body = (
        "<134>1 2026-05-29T10:11:12.123456Z canary-host ThinkstCanary 42 newincident "
        f'[canary@32473 value="{sd_escape(TRICKY)}" node="{node}"] {BOM}{msg}'
    )
    return Record(event, body, severity=3, syslog_header=True)


def cef_record(event: CanaryEvent) -> Record:
    return Record(event, CEF_LINE, severity=7)


def assert_rfc5424_arrived(record: dict[str, Any], msg: str = "hello", node: str = "n1") -> None:
    assert (record["pri"], record["facility"], record["severity"]) == (134, "local0", 6)
    assert record["timestamp"] == "2026-05-29T10:11:12.123456Z"
    assert record["hostname"] == "canary-host"
    assert (record["app_name"], record["procid"], record["msgid"]) == (
        "ThinkstCanary",
        "42",
        "newincident",
    )
    assert record["sd"] == {"canary@32473": {"value": TRICKY, "node": node}}
    assert record["msg"] == BOM + msg


def assert_cef_arrived(record: dict[str, Any]) -> None:
    # local0 with severity 7 of 10 -> syslog "error" (3)
    assert (record["pri"], record["hostname"], record["app_name"]) == (
        131,
        "relay.test",
        "canary-forwarder",
    )
    assert record["msgid"] == "incident"
    parsed = cefp.parse(record["msg"])
    assert parsed["name"] == "SSH | login"
    assert parsed["extension"] == {"src": "192.0.2.1", "msg": "one\ntwo", "cs1": "C:\\x = y"}


def saw_node(node: str) -> Predicate:
    """True once a record sent by `rfc5424_record(node=node)` arrived: the sentinel."""
    return lambda records: any(
        record["sd"].get("canary@32473", {}).get("node") == node for record in records
    )


OutputFactory = Callable[..., SyslogOutput]

# How rsyslogd logs the end of a TCP/TLS session: cleanly, or after an error.
SESSION_ENDED = "closed by remote peer|will be closed due to error"


@pytest.fixture
async def make_output() -> AsyncIterator[OutputFactory]:
    """Build syslog outputs from options; every one is closed when the test ends."""
    made: list[SyslogOutput] = []

    def build(**options: Any) -> SyslogOutput:
        config = {"name": "siem", "type": "syslog", "hostname": "relay.test", **options}
        output = SyslogOutput(SyslogConfig.model_validate(config))
        made.append(output)
        return output

    yield build
    for output in made:
        await output.aclose()


def output_for(make_output: OutputFactory, server: Rsyslog, **options: Any) -> SyslogOutput:
    """An output aimed at `server`, trusting its test CA when it speaks TLS."""
    if server.tls is not None:
        options.setdefault("tls", {"ca_file": str(server.tls.ca_file)})
    return make_output(hosts=[server.address], transport=server.transport, **options)


def closed_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def truncated_count(name: str) -> float:
    value = REGISTRY.get_sample_value(
        "canary_forwarder_output_truncated_records_total", {"output": name}
    )
    return value or 0.0


# --- configuration -----------------------------------------------------------------------------


class TestConfig:
    def test_one_host_and_default_ports(self) -> None:
        tcp = SyslogConfig.model_validate({"name": "s", "type": "syslog", "host": "siem.example"})
        tls = SyslogConfig.model_validate(
            {"name": "s", "type": "syslog", "hosts": ["a", "b:1514"], "transport": "tls"}
        )
        assert [str(e) for e in tcp.endpoints()] == ["siem.example:514"]
        assert [str(e) for e in tls.endpoints()] == ["a:6514", "b:1514"]

    def test_ipv6_hosts(self) -> None:
        config = SyslogConfig.model_validate(
            {"name": "s", "type": "syslog", "hosts": ["[::1]:1514", "::1", "[fe80::1]"]}
        )
        assert [(e.host, e.port) for e in config.endpoints()] == [
            ("::1", 1514),
            ("::1", 514),
            ("fe80::1", 514),
        ]

    def test_udp_defaults_to_a_2048_byte_limit_and_tcp_to_8096(self) -> None:
        udp = SyslogConfig.model_validate(
            {"name": "s", "type": "syslog", "hosts": ["h"], "transport": "udp"}
        )
        tcp = SyslogConfig.model_validate({"name": "s", "type": "syslog", "hosts": ["h"]})
        # rsyslog's default (RFC 5425 says 8192): a receiver splits a longer message and reads
        # its tail, attacker text, as a record of its own.
        assert (udp.message_limit, tcp.message_limit) == (2048, 8096)

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"hosts": []}, "at least 1"),
            ({"hosts": ["a b"]}, "not host"),
            ({"hosts": ["h:70000"]}, "out of range"),
            ({"hosts": ["[not-v6]:1"]}, "IPv6"),
            ({"hosts": ["h", "h"]}, "twice"),
            ({"hosts": ["h"], "transport": "udp", "framing": "lf"}, "framing applies"),
            ({"hosts": ["h"], "tls": {"ca_file": "ca.pem"}}, "need transport: tls"),
            ({"hosts": ["h"], "transport": "udp", "max_message_bytes": 70000}, "at most 65507"),
            ({"hosts": ["h"], "max_message_bytes": 100}, "greater than or equal to 480"),
            ({"hosts": ["h"], "facility": "local9"}, "local7"),
        ],
    )
    def test_invalid(self, options: dict[str, Any], error: str) -> None:
        with pytest.raises(ValidationError, match=error):
            SyslogConfig.model_validate({"name": "s", "type": "syslog", **options})


# --- against a real rsyslogd -------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "tls", "udp"])
class TestRsyslogReceives:
    pytestmark = integration

    async def test_header_structured_data_and_cef_arrive_as_sent(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        event: CanaryEvent,
        transport: Literal["tcp", "tls", "udp"],
    ) -> None:
        server = rsyslog_factory(transport)
        output = output_for(make_output, server)
        assert await output.send([rfc5424_record(event), cef_record(event)]) == Delivered()
        by_msgid = {record["msgid"]: record for record in await server.wait_for(2)}
        assert_rfc5424_arrived(by_msgid["newincident"])
        assert_cef_arrived(by_msgid["incident"])

    async def test_healthcheck_passes(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        transport: Literal["tcp", "tls", "udp"],
    ) -> None:
        await output_for(make_output, rsyslog_factory(transport)).healthcheck()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
class TestLineBreaks:
    pytestmark = integration

    async def test_octet_counting_carries_a_record_with_newlines_as_one(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        event: CanaryEvent,
        transport: Literal["tcp", "tls"],
    ) -> None:
        server = rsyslog_factory(transport)
        output = output_for(make_output, server)
        batch = [rfc5424_record(event, msg=FORGED_TAIL), rfc5424_record(event, node="after")]
        assert await output.send(batch) == Delivered()
        records = await server.wait_until(saw_node("after"))
        assert len(records) == 2
        # Every byte arrives as sent, but NUL: rsyslog's C strings cannot hold it.
        assert_rfc5424_arrived(records[0], msg=FORGED_TAIL.replace("\x00", "#000"))
        assert_rfc5424_arrived(records[1], node="after")

    async def test_lf_framing_escapes_instead_of_forging_a_record(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        event: CanaryEvent,
        transport: Literal["tcp", "tls"],
    ) -> None:
        server = rsyslog_factory(transport)
        output = output_for(make_output, server, framing="lf")
        batch = [rfc5424_record(event, msg=FORGED_TAIL), rfc5424_record(event, node="after")]
        assert await output.send(batch) == Delivered()
        records = await server.wait_until(saw_node("after"))
        assert [record["hostname"] for record in records] == ["canary-host", "canary-host"]
        escaped = FORGED_TAIL.replace("\n", "#012").replace("\r", "#015").replace("\x00", "#000")
        assert_rfc5424_arrived(records[0], msg=escaped)
        assert_rfc5424_arrived(records[1], node="after")

    async def test_lf_framing_can_reject_instead(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        event: CanaryEvent,
        transport: Literal["tcp", "tls"],
    ) -> None:
        server = rsyslog_factory(transport)
        output = output_for(make_output, server, framing="lf", newline_policy="reject")
        batch = [rfc5424_record(event, msg=FORGED_TAIL), rfc5424_record(event, node="after")]
        result = await output.send(batch)
        assert isinstance(result, Partial)
        assert list(result.results) == [0]
        assert isinstance(result.results[0], Reject)
        assert "octet_counting" in result.results[0].reason
        records = await server.wait_until(saw_node("after"))
        assert len(records) == 1
        assert_rfc5424_arrived(records[0], node="after")


class TestUdpOversize:
    pytestmark = integration

    async def test_truncate_marks_counts_and_shortens(
        self, rsyslog_factory: RsyslogFactory, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        server = rsyslog_factory("udp")
        output = output_for(make_output, server, name="udp-truncate")
        before = truncated_count("udp-truncate")
        long_msg = "é" * 3000  # 6000 bytes: the cut must land on a character boundary
        assert await output.send([rfc5424_record(event, msg=long_msg)]) == Delivered()
        (record,) = await server.wait_for(1)
        assert truncated_count("udp-truncate") == before + 1
        assert len(record["raw"].encode()) <= 2048
        assert record["msg"].startswith(BOM + "éé")
        assert record["msg"].endswith("é...[truncated]")
        assert record["sd"] == {"canary@32473": {"value": TRICKY, "node": "n1"}}

    async def test_reject_policy_dead_letters_only_that_record(
        self, rsyslog_factory: RsyslogFactory, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        server = rsyslog_factory("udp")
        output = output_for(make_output, server, name="udp-reject", oversize="reject")
        before = truncated_count("udp-reject")
        batch = [
            rfc5424_record(event, node="first"),
            rfc5424_record(event, msg="x" * 5000),
            rfc5424_record(event, node="last"),
        ]
        result = await output.send(batch)
        assert isinstance(result, Partial)
        assert list(result.results) == [1]
        assert isinstance(result.results[1], Reject)
        assert "max_message_bytes 2048" in result.results[1].reason
        records = await server.wait_for(2)
        assert sorted(r["sd"]["canary@32473"]["node"] for r in records) == ["first", "last"]
        assert truncated_count("udp-reject") == before


class TestFailover:
    pytestmark = integration

    async def test_events_arrive_and_the_dead_endpoint_is_benched(
        self, rsyslog_factory: RsyslogFactory, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        server = rsyslog_factory("tcp")
        dead = f"127.0.0.1:{closed_port()}"
        output = make_output(hosts=[dead, server.address])
        with structlog.testing.capture_logs() as logs:
            for node in ("a", "b", "c", "d"):
                assert await output.send([rfc5424_record(event, node=node)]) == Delivered()
                await output.reopen()  # the next send connects again, through round-robin
        records = await server.wait_for(4)
        assert [r["sd"]["canary@32473"]["node"] for r in records] == ["a", "b", "c", "d"]
        unreachable = [log for log in logs if log["event"] == "Syslog endpoint unreachable."]
        # Tried once, then benched for its cooldown instead of being tried on every reconnect.
        assert [log["endpoint"] for log in unreachable] == [dead]
        assert "connection refused" in unreachable[0]["reason"]


class TestTls:
    pytestmark = integration

    async def test_close_sends_close_notify(
        self, rsyslog_factory: RsyslogFactory, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        server = rsyslog_factory("tls")
        output = output_for(make_output, server)
        assert await output.send([rfc5424_record(event)]) == Delivered()
        await output.aclose()
        log = await server.wait_for_log(SESSION_ENDED)
        assert "closed by remote peer" in log
        assert "-110" not in log
        # The control: a client that drops the session without close_notify is logged as such.
        assert server.tls is not None
        context = ssl.create_default_context(cafile=str(server.tls.ca_file))
        _, writer = await asyncio.open_connection(server.host, server.port, ssl=context)
        writer.transport.abort()
        log = await server.wait_for_log("will be closed due to error")
        assert "non-properly terminated" in log

    async def test_client_certificate(
        self, rsyslog_factory: RsyslogFactory, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        server = rsyslog_factory("tls", client_auth=True)
        assert server.tls is not None
        files = server.tls
        with_cert = output_for(
            make_output,
            server,
            tls={
                "ca_file": str(files.ca_file),
                "cert_file": str(files.client_cert),
                "key_file": str(files.client_key),
            },
        )
        without_cert = output_for(make_output, server)
        refused = await without_cert.send([rfc5424_record(event, node="no-cert")])
        assert isinstance(refused, Retry)
        assert "client certificate" in refused.reason
        assert refused.operator_action
        with pytest.raises(HealthcheckError, match="client certificate"):
            await without_cert.healthcheck()
        assert await with_cert.send([rfc5424_record(event, node="cert")]) == Delivered()
        await with_cert.healthcheck()
        records = await server.wait_until(saw_node("cert"))
        assert [r["sd"]["canary@32473"]["node"] for r in records] == ["cert"]

    async def test_reopen_reloads_the_ca_file(
        self,
        rsyslog_factory: RsyslogFactory,
        make_output: OutputFactory,
        event: CanaryEvent,
        tmp_path: Path,
    ) -> None:
        server = rsyslog_factory("tls")
        assert server.tls is not None
        ca_file = tmp_path / "trusted.pem"
        ca_file.write_bytes(server.tls.other_ca_file.read_bytes())
        output = output_for(make_output, server, tls={"ca_file": str(ca_file)})
        first = await output.send([rfc5424_record(event)])
        assert isinstance(first, Retry)
        assert "certificate verification failed" in first.reason
        ca_file.write_bytes(server.tls.ca_file.read_bytes())
        await output.reopen()
        assert await output.send([rfc5424_record(event)]) == Delivered()
        assert len(await server.wait_for(1)) == 1


# --- failure modes, against tiny servers -------------------------------------------------------


@dataclass
class Sink:
    """A TCP or TLS server on loopback. `mode`: keep the bytes, reset on data, or never read;
    with `close_after`, it closes each connection as soon as it has read those bytes."""

    mode: Literal["keep", "reset", "stall"] = "keep"
    close_after: bytes | None = None
    connections: list[bytearray] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        self.connections.append(received)
        self.writers.append(writer)
        with contextlib.suppress(OSError):
            if self.mode == "stall":
                await self.released.wait()
            while chunk := await reader.read(65536):
                if self.mode == "reset":
                    # Linger 0: close() sends RST, the way a crashing receiver does.
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                received += chunk
                async with self.received:
                    self.received.notify_all()
                if self.close_after is not None and self.close_after in received:
                    break  # as a receiver that takes one batch per connection does
        writer.close()

    def data(self) -> bytes:
        return b"".join(self.connections)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds, checked again whenever bytes arrive."""
        async with self.received:
            await asyncio.wait_for(self.received.wait_for(predicate), timeout)

    async def hang_up(self) -> None:
        """Close every connection from this end, as a receiver does with idle clients."""
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(
    sink: Sink, context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run `sink` (on `port`, or any free one) and yield its address as a `hosts` entry."""
    server = await asyncio.start_server(sink.handle, host, port, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    finally:
        sink.released.set()
        server.close()
        for writer in sink.writers:
            writer.transport.abort()
        await server.wait_closed()


async def connection_closed_by_peer_seen(output: SyslogOutput) -> None:
    """Wait until the output's connection has read the receiver's FIN, as it has long before
    the next batch when a receiver drops idle clients. TCP gives a client that only writes no
    other sign, so this looks inside the output."""
    sender = output._sender
    assert isinstance(sender, StreamSender) and sender._stream is not None
    assert await asyncio.wait_for(sender._stream.reader.read(1), 5) == b""


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@contextlib.contextmanager
def ca_file(ca: trustme.CA) -> Iterator[str]:
    with ca.cert_pem.tempfile() as path:
        yield path


class TestFailures:
    async def test_connection_refused_is_a_retry_naming_the_endpoint(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        dead = f"127.0.0.1:{closed_port()}"
        result = await make_output(hosts=[dead]).send([cef_record(event)])
        assert isinstance(result, Retry)
        assert f"{dead}: connection refused" in result.reason
        assert not result.operator_action

    async def test_persistent_connection_across_batches(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        async with serving(sink) as address:
            output = make_output(hosts=[address])
            for _ in range(3):
                assert await output.send([cef_record(event)]) == Delivered()
            await sink.wait_until(lambda: sink.data().count(b"CEF:0") == 3)
        assert len(sink.connections) == 1
        assert re.match(rb"\d+ <131>1 ", sink.data())

    async def test_reset_is_a_retry_and_the_next_send_reconnects(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink("reset")
        async with serving(sink) as address:
            # Far more than the socket buffers hold, so the write is still going on at the RST.
            output = make_output(hosts=[address], max_message_bytes=64 * 1024 * 1024)
            big = Record(event, "x" * (32 * 1024 * 1024))
            result = await output.send([big])
            assert isinstance(result, Retry)
            assert "connection reset" in result.reason or "broken pipe" in result.reason
            sink.mode = "keep"
            assert await output.send([cef_record(event)]) == Delivered()
            await sink.wait_until(lambda: b"CEF:0" in sink.data())
        assert len(sink.connections) == 2

    async def test_a_connection_the_receiver_closed_while_idle_is_reopened_not_written_into(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        sink = Sink()
        async with serving(sink) as address:
            output = make_output(hosts=[address])
            assert await output.send([Record(event, "first batch")]) == Delivered()
            await sink.wait_until(lambda: b"first batch" in sink.data())
            await sink.hang_up()
            await connection_closed_by_peer_seen(output)
            result = await output.send([Record(event, "second batch")])
            # Written into the closed connection it would be "delivered" and lost with the RST.
            assert result == Delivered()
            await sink.wait_until(
                lambda: len(sink.connections) == 2 and b"second batch" in sink.connections[1]
            )
        assert b"second batch" not in sink.connections[0]

    async def test_a_truncated_record_is_counted_once_when_sent_not_per_attempt(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        port = closed_port()
        output = make_output(
            hosts=[f"127.0.0.1:{port}"], name="tcp-truncate", max_message_bytes=480
        )
        oversize = [Record(event, "x" * 1000)]
        before = truncated_count("tcp-truncate")
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                assert isinstance(await output.send(oversize), Retry)
            assert truncated_count("tcp-truncate") == before
            sink = Sink()
            async with serving(sink, port=port):
                assert await output.send(oversize) == Delivered()
                await sink.wait_until(lambda: b"...[truncated]" in sink.data())
        assert truncated_count("tcp-truncate") == before + 1
        (truncation,) = [log for log in logs if log["event"].startswith("Syslog record truncated")]
        assert truncation["limit"] == 480 and truncation["size"] > 1000

    async def test_write_timeout_is_a_retry(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        async with serving(Sink("stall")) as address:
            output = make_output(
                hosts=[address], write_timeout_secs=0.2, max_message_bytes=64 * 1024 * 1024
            )
            result = await output.send([Record(event, "x" * (32 * 1024 * 1024))])
        assert isinstance(result, Retry)
        assert "did not finish within 0.2s" in result.reason

    async def test_tls_verification_failure_is_a_retry_for_an_operator(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        async with serving(Sink(), server_context(server_ca)) as address:
            with ca_file(trustme.CA()) as untrusted:
                output = make_output(hosts=[address], transport="tls", tls={"ca_file": untrusted})
                result = await output.send([cef_record(event)])
                with pytest.raises(HealthcheckError, match="certificate verification failed"):
                    await output.healthcheck()
        assert isinstance(result, Retry)
        assert "TLS certificate verification failed" in result.reason
        assert result.operator_action

    async def test_tls_server_name_is_checked(
        self, make_output: OutputFactory, event: CanaryEvent, server_ca: trustme.CA
    ) -> None:
        sink = Sink()
        async with serving(sink, server_context(server_ca)) as address:
            with ca_file(server_ca) as trusted:
                wrong = make_output(
                    hosts=[address],
                    transport="tls",
                    tls={"ca_file": trusted, "server_name": "other.test"},
                )
                right = make_output(hosts=[address], transport="tls", tls={"ca_file": trusted})
                wrong_result = await wrong.send([cef_record(event)])
                assert await right.send([cef_record(event)]) == Delivered()
                await right.aclose()
                await sink.wait_until(lambda: b"CEF:0" in sink.data())
        assert isinstance(wrong_result, Retry)
        assert "other.test" in wrong_result.reason

    async def test_unreadable_tls_files_are_a_retry_for_an_operator(
        self, make_output: OutputFactory, event: CanaryEvent, tmp_path: Path
    ) -> None:
        output = make_output(
            hosts=[f"127.0.0.1:{closed_port()}"],
            transport="tls",
            tls={"ca_file": str(tmp_path / "missing.pem")},
        )
        result = await output.send([cef_record(event)])
        assert isinstance(result, Retry)
        assert "cannot load the TLS files" in result.reason
        assert result.operator_action

    async def test_healthcheck_names_the_reason(self, make_output: OutputFactory) -> None:
        dead = f"127.0.0.1:{closed_port()}"
        with pytest.raises(HealthcheckError, match=f"{dead}: connection refused"):
            await make_output(hosts=[dead]).healthcheck()

    async def test_healthcheck_is_not_held_up_by_a_silent_host(
        self, make_output: OutputFactory, server_ca: trustme.CA
    ) -> None:
        """A host that never answers takes `connect_timeout_secs` to give up on; the check
        (10 s in all) must not spend it before trying the next host."""
        silent = Sink("stall")  # takes the connection, never says a word: no TLS handshake
        async with serving(silent) as quiet, serving(Sink(), server_context(server_ca)) as live:
            with ca_file(server_ca) as trusted:
                output = make_output(
                    hosts=[quiet, live],
                    transport="tls",
                    tls={"ca_file": trusted},
                    connect_timeout_secs=60,
                )
                await asyncio.wait_for(output.healthcheck(), 10)
                await output.aclose()
            with ca_file(server_ca) as trusted:
                dead = f"127.0.0.1:{closed_port()}"
                both_fail = make_output(
                    hosts=[quiet, dead],
                    transport="tls",
                    tls={"ca_file": trusted},
                    connect_timeout_secs=0.5,
                )
                with pytest.raises(HealthcheckError) as failed:
                    await both_fail.healthcheck()
        assert f"{quiet}: connected, but the TLS handshake did not finish" in str(failed.value)
        assert f"{dead}: connection refused" in str(failed.value)

    async def test_refused_record_and_failed_transport_give_a_partial(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        output = make_output(
            hosts=[f"127.0.0.1:{closed_port()}"], framing="lf", newline_policy="reject"
        )
        result = await output.send([Record(event, "two\nlines"), cef_record(event)])
        assert isinstance(result, Partial)
        assert isinstance(result.results[0], Reject)
        assert isinstance(result.results[1], Retry)

    async def test_udp_port_unreachable_becomes_a_retry(
        self, make_output: OutputFactory, event: CanaryEvent
    ) -> None:
        output = make_output(hosts=[f"127.0.0.1:{closed_port(socket.SOCK_DGRAM)}"], transport="udp")
        # The first datagrams go out unanswered; the ICMP error comes back afterwards.
        deadline = time.monotonic() + 5
        result = await output.send([cef_record(event)])
        while not isinstance(result, Retry) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            result = await output.send([cef_record(event)])
        assert isinstance(result, Retry)
        assert "connection refused" in result.reason

    async def test_ipv6_loopback(self, make_output: OutputFactory, event: CanaryEvent) -> None:
        if not socket.has_ipv6:
            pytest.skip("no IPv6 on this machine")
        sink = Sink()
        try:
            async with serving(sink, host="::1") as address:
                assert await make_output(hosts=[address]).send([cef_record(event)]) == Delivered()
                await sink.wait_until(lambda: b"CEF:0" in sink.data())
        except OSError as exc:  # ::1 not configured
            pytest.skip(f"cannot listen on ::1: {exc}")
