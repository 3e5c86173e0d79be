"""`syslog`: records to syslog receivers over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

Records that carry their own syslog header (the `rfc5424` and `rfc3164` formats, CEF or LEEF
configured with one) are sent as they are; the others (CEF, LEEF, JSON documents) get an RFC 5424
or RFC 3164 header from this output. Over TCP and TLS each message is framed by octet counting
(`MSG-LEN SP MSG`) unless `framing: lf` is chosen; with LF framing a line break inside a record
would split it into two (the second one forged by whoever wrote the text), so LF is escaped as
`#012`, CR as `#015` and NUL as `#000` (the way rsyslog writes control characters) or, with
`newline_policy: reject`, the record is dead-lettered. The built-in formats never put a raw CR
or LF into a record; this guards records of other formats (plugins).

What "delivered" means. TCP syslog has no application-level acknowledgement: a batch counts as
delivered once the receiver's TCP acknowledged every byte of it (Linux tells; elsewhere, once
every byte was handed to the kernel). A receiver that has gone (crashed, closed the connection
a moment before, dropped by a load balancer that forgot an idle flow) answers with a reset or
not at all, and the batch is sent again. A receiver that acknowledges the bytes and dies before
reading them loses them, and no syslog client can tell; use a receiver-side queue (or
HEC/Elasticsearch) where that matters. When a write fails part-way the whole batch is sent
again, so a receiver may see some records twice: delivery is at least once. A connection the
receiver closed while idle is noticed before the next batch and reopened, not written into.
Over UDP a datagram is delivered once sent; a receiver that is down is noticed through ICMP
only after the fact. So the first batch on a new socket (the first one, and the next after an
error) waits up to 0.2 s for that ICMP error before it counts as delivered: while nobody
listens, only a batch sent in the moment the receiver went down is lost.

Oversize records (`max_message_bytes`, 2048 by default for UDP, 8096 over TCP/TLS) are never
dropped silently: `oversize: truncate` cuts MSG between UTF-8 characters and never inside a
backslash escape, keeps the header and structured data whole and appends `...[truncated]` (when
they alone leave no room, the longest SD values are cut instead, each with the marker),
counted in `canary_forwarder_output_truncated_records_total` once sent (not per attempt);
`oversize: reject` dead-letters the record. Over TCP/TLS, `max_message_bytes` must not exceed
the receiver's own limit: rsyslog (`maxMessageSize`, 8096 bytes by default) cuts a longer
message and reads the rest as a record of its own, whose header is then whatever text stood
there, an attacker's included (unless imtcp has `discardTruncatedMsg="on"`). Hence the 8096
default; raise both together.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Literal, Self

import structlog
from pydantic import AliasChoices, Field, field_validator, model_validator

from forwarder.mappers._syslog import Facility
from forwarder.mappers.base import Record
from forwarder.outputs._syslog_message import (
    FRAME_DELIMITER,
    HeaderStyle,
    MessageTooLarge,
    Wrapper,
    escape_frame_delimiters,
    octet_counted,
    truncate,
)
from forwarder.outputs._syslog_transport import DatagramSender, Endpoint, Sender, StreamSender
from forwarder.outputs._tls import TlsClientConfig
from forwarder.outputs.base import (
    Delivered,
    Output,
    OutputConfig,
    Partial,
    Reject,
    Retry,
    SendResult,
    one_or_many,
)
from forwarder.telemetry import metrics

__all__ = ["SyslogConfig", "SyslogOutput", "parse_endpoint"]

log = structlog.get_logger("forwarder.outputs.syslog")

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
DEFAULT_UDP_MAX_MESSAGE_BYTES = 2048  # RFC 5426 §3.2: receivers SHOULD take 2048 octets
# What rsyslog takes unless told otherwise: its built-in maxMessageSize is 8096 bytes, not the
# "8k" its documentation gives nor RFC 5425's 8192 (a record of 8097 reached rsyslogd 8.2302 as
# two). A receiver splits a longer message and reads its tail, an attacker's text, as a record
# of its own.
DEFAULT_STREAM_MAX_MESSAGE_BYTES = 8096
UDP_MAX_PAYLOAD = 65_507  # IPv4: 65,535 - 8 (UDP header) - 20 (IP header)
MIN_MESSAGE_BYTES = 480  # RFC 5426 §3.2: every IPv4 receiver MUST take 480 octets

_HOST_PORT = re.compile(
    r"(?:\[(?P<bracketed>[^\]]+)\]|(?P<name>[^\s:\[\]\x00-\x1f\x7f]+))(?::(?P<port>\d{1,5}))?"
)


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, as (host, port)."""
    if text.count(":") > 1 and not text.startswith("["):
        return _ipv6(text, text), None
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not host, host:port or [IPv6]:port")
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and not 1 <= port <= 65_535:
        raise ValueError(f"port {port} in {text!r} is out of range")
    if match["bracketed"] is not None:
        return _ipv6(match["bracketed"], text), port
    return match["name"], port


def _ipv6(address: str, text: str) -> str:
    """`address` in its one canonical spelling (`0:0::1` and `::1` are one receiver)."""
    try:
        return str(ipaddress.IPv6Address(address))
    except ValueError:
        raise ValueError(f"{address!r} in {text!r} is not an IPv6 address") from None


class SyslogConfig(OutputConfig):
    model_config = one_or_many("hosts", alias="host")

    hosts: list[str] = Field(min_length=1, validation_alias=AliasChoices("hosts", "host"))
    """Receivers as `host`, `host:port` or `[IPv6]:port`; several for a cluster: UDP datagrams
    go round-robin, a TCP or TLS connection stays on its node until it fails; a failing node is
    benched for a growing cooldown. `host:` with one value works too."""
    port: int | None = Field(default=None, ge=1, le=65_535)
    """Port for hosts listed without one: 514 for udp and tcp, 6514 for tls by default."""
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    """`udp` (RFC 5426), `tcp` (RFC 6587) or `tls` (RFC 5425)."""
    framing: Literal["octet_counting", "lf"] | None = None
    """TCP/TLS framing: `octet_counting` (the default; carries any byte) or `lf`."""
    newline_policy: Literal["escape", "reject"] = "escape"
    """With `framing: lf`, a record containing LF, CR or NUL is escaped (#012, #015, #000) or
    rejected."""
    header: HeaderStyle = "rfc5424"
    """Header put around records that have none (CEF, LEEF, JSON)."""
    facility: Facility = "local0"
    """Facility of that header."""
    hostname: str | None = None
    """HOSTNAME of that header; this machine's name by default."""
    app_name: str = Field(default="canary-forwarder", min_length=1, max_length=48)
    """APP-NAME (RFC 5424) or TAG (RFC 3164) of that header."""
    tls: TlsClientConfig = TlsClientConfig()
    """CA file, client certificate and key, server name; verification is on by default."""
    connect_timeout_secs: float = Field(default=10.0, gt=0, le=300)
    """Time allowed to connect, including the TLS handshake (and to resolve, for UDP)."""
    write_timeout_secs: float = Field(default=30.0, gt=0, le=3600)
    """Time allowed to write one batch and for the receiver's TCP to acknowledge it."""
    max_message_bytes: int | None = Field(default=None, ge=MIN_MESSAGE_BYTES)
    """Largest message in bytes: 2048 by default for UDP, 8096 over TCP/TLS (rsyslog's default,
    a little under RFC 5425's 8192). Never more than the receiver's limit: a receiver that
    splits a longer message reads its tail as a separate record."""
    oversize: Literal["truncate", "reject"] = "truncate"
    """A longer record is truncated with a visible marker, or rejected to dead letters."""

    @field_validator("hosts", mode="before")
    @classmethod
    def _one_host_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            parse_endpoint(host)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.transport == "udp" and self.framing is not None:
            raise ValueError("framing applies to tcp and tls only; UDP sends one datagram each")
        if self.transport != "tls" and "tls" in self.model_fields_set:
            raise ValueError("tls options need transport: tls")
        if self.transport == "udp" and (self.max_message_bytes or 0) > UDP_MAX_PAYLOAD:
            raise ValueError(f"max_message_bytes over UDP is at most {UDP_MAX_PAYLOAD}")
        # Compared with the default port filled in and IPv6 in one spelling (`::1` and
        # `[::1]:514`): failover tells receivers apart by host and port, and one listed twice
        # was never benched with its twin, so while it was down it got every other batch.
        seen: set[tuple[str, int]] = set()
        for endpoint in self.endpoints():
            # Names ignore case; an IPv6 zone (an interface name) does not.
            host = endpoint.host if ":" in endpoint.host else endpoint.host.lower()
            key = (host, endpoint.port)
            if key in seen:
                raise ValueError(f"hosts: {endpoint} is listed twice")
            seen.add(key)
        return self

    def endpoints(self) -> list[Endpoint]:
        default = self.port or DEFAULT_PORTS[self.transport]
        parsed = (parse_endpoint(host) for host in self.hosts)
        return [Endpoint(host, port or default) for host, port in parsed]

    @property
    def lf_framing(self) -> bool:
        return self.transport != "udp" and self.framing == "lf"

    @property
    def message_limit(self) -> int:
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        if self.transport == "udp":
            return DEFAULT_UDP_MAX_MESSAGE_BYTES
        return DEFAULT_STREAM_MAX_MESSAGE_BYTES


class _Refused(ValueError):
    """This record cannot be sent as configured; it goes to dead letters with the reason."""


class SyslogOutput(Output[SyslogConfig]):
    config_class = SyslogConfig

    def __init__(self, config: SyslogConfig) -> None:
        super().__init__(config)
        self._wrapper = Wrapper(
            style=config.header,
            facility=config.facility,
            hostname=config.hostname or socket.gethostname(),
            app_name=config.app_name,
        )
        label = f"syslog {config.transport}"
        self._sender: Sender
        if config.transport == "udp":
            self._sender = DatagramSender(
                config.endpoints(),
                label=label,
                output=config.name,
                connect_timeout=config.connect_timeout_secs,
            )
        else:
            self._sender = StreamSender(
                config.endpoints(),
                label=label,
                output=config.name,
                tls=config.tls if config.transport == "tls" else None,
                connect_timeout=config.connect_timeout_secs,
                write_timeout=config.write_timeout_secs,
            )
        self._lock = asyncio.Lock()

    async def send(self, batch: Sequence[Record]) -> SendResult:
        frames: list[bytes] = []
        framed: list[int] = []
        truncated: list[tuple[Record, int]] = []
        results: dict[int, Retry | Reject] = {}
        for index, record in enumerate(batch):
            try:
                frame, full_size = self._frame(record)
            except _Refused as exc:
                results[index] = Reject(str(exc))
                continue
            frames.append(frame)
            framed.append(index)
            if full_size is not None:
                truncated.append((record, full_size))
        if frames:
            async with self._lock:
                retry = await self._sender.send(frames)
            if retry is None:
                # Counted once sent: a batch retried N times would otherwise count N times.
                self._report_truncated(truncated)
            elif not results:
                return retry
            else:
                results.update(dict.fromkeys(framed, retry))
        return Partial(results) if results else Delivered()

    def _frame(self, record: Record) -> tuple[bytes, int | None]:
        """The frame to send, and the message's size before truncation if it was truncated."""
        message = self._wrapper.message(record)
        if self.config.lf_framing:
            if self.config.newline_policy == "reject" and FRAME_DELIMITER.search(message):
                raise _Refused(
                    "the record contains a line break (LF or CR) or NUL, which LF framing would "
                    "split into two records; use framing: octet_counting to carry it"
                )
            message = escape_frame_delimiters(message)
        fitted = self._fit(message)
        full_size = len(message) if len(fitted) < len(message) else None
        if self.config.transport == "udp":
            return fitted, full_size
        framed = fitted + b"\n" if self.config.lf_framing else octet_counted(fitted)
        return framed, full_size

    def _fit(self, message: bytes) -> bytes:
        limit = self.config.message_limit
        if len(message) <= limit:
            return message
        if self.config.oversize == "reject":
            raise _Refused(f"the message is {len(message)} bytes, over max_message_bytes {limit}")
        try:
            return truncate(message, limit)
        except MessageTooLarge as exc:
            raise _Refused(str(exc)) from exc

    def _report_truncated(self, truncated: Sequence[tuple[Record, int]]) -> None:
        if not truncated:
            return
        metrics.output_truncated.labels(output=self.name).inc(len(truncated))
        for record, full_size in truncated:
            log.warning(
                "Syslog record truncated to fit max_message_bytes.",
                output=self.name,
                event_id=record.event.id,
                size=full_size,
                limit=self.config.message_limit,
            )

    async def healthcheck(self) -> None:
        await self._sender.check()

    async def reopen(self) -> None:
        async with self._lock:
            await self._sender.reset()

    async def aclose(self) -> None:
        async with self._lock:
            await self._sender.close()
