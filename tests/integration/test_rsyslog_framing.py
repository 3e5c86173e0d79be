"""Framing as a real rsyslogd reads it: multi-byte text, line breaks, and its size limit.

rsyslogd reads each TCP/TLS session by octet counting or by LF, whichever the frame starts with,
so a MSG-LEN that counted characters instead of bytes, or a line break left in an LF-framed
record, shows as a record cut short, a record too many, or a forged one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.outputs.base import Delivered
from forwarder.outputs.syslog import SyslogConfig, SyslogOutput
from forwarder.registry import mapper_class
from tests.mappers.helpers import event_from
from tests.support.rsyslog import Rsyslog, RsyslogFactory, requires_rsyslogd
from tests.support.rsyslog import rsyslog_factory as rsyslog_factory  # a fixture

pytestmark = [pytest.mark.integration, requires_rsyslogd]

# Typed by an attacker at a fake login prompt: 2-, 3- and 4-byte UTF-8, a combining mark, and
# characters that look like the syslog header's own.
HOSTILE_USERNAME = "админ😀ё\u0301漢字 <13>1 - - - 📛"
# rsyslogd's maxMessageSize when its configuration sets none (8.2302: `iMaxLine`), which the
# tests below leave at that default.
RSYSLOG_DEFAULT_MAX_MESSAGE_SIZE = 8096
FORGED = "<10>1 2026-01-01T00:00:00Z forged-host sshd - - - root login from 203.0.113.9"


def incident(username: str, **extra: Any) -> CanaryEvent:
    return event_from(
        {
            "Description": "SSH Login Attempt",
            "Timestamp": "2026-03-05 08:00:01 (UTC)",
            "CanaryName": "web-dmz-02",
            "CanaryID": "00034d476a2c9f22",
            "CanaryIP": "10.20.30.42",
            "SourceIP": "10.99.0.7",
            "CanaryPort": "22",
            "IncidentHash": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "AdditionalDetails": [["Username", username], *extra.get("details", [])],
            "AlertType": "CanaryIncident",
            "LogType": "4002",
        }
    )


def rfc5424(event: CanaryEvent) -> Record:
    mapper_type = mapper_class("rfc5424")
    return mapper_type(mapper_type.config_class(type="rfc5424")).map(event)


def sentinel(event: CanaryEvent, number: int) -> Record:
    return Record(
        event, f'<13>1 - sentinel - - - [sentinel@32473 n="{number}"]', syslog_header=True
    )


def saw_sentinel(number: int) -> Any:
    return lambda records: any(
        record["sd"].get("sentinel@32473", {}).get("n") == str(number) for record in records
    )


@pytest.fixture
async def outputs() -> AsyncIterator[list[SyslogOutput]]:
    made: list[SyslogOutput] = []
    yield made
    for output in made:
        await output.aclose()


def output_for(made: list[SyslogOutput], server: Rsyslog, **options: Any) -> SyslogOutput:
    if server.tls is not None:
        options.setdefault("tls", {"ca_file": str(server.tls.ca_file)})
    config = {"name": "framing", "type": "syslog", "hosts": [server.address], **options}
    config["transport"] = server.transport
    output = SyslogOutput(SyslogConfig.model_validate(config))
    made.append(output)
    return output


@pytest.mark.parametrize("framing", ["octet_counting", "lf"])
@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_a_multibyte_username_arrives_whole_and_the_next_record_intact(
    rsyslog_factory: RsyslogFactory,
    outputs: list[SyslogOutput],
    transport: Literal["tcp", "tls"],
    framing: str,
) -> None:
    server = rsyslog_factory(transport)
    output = output_for(outputs, server, framing=framing)
    events = [incident(HOSTILE_USERNAME * n) for n in (1, 7, 40)]
    batch = [rfc5424(event) for event in events] + [sentinel(events[0], 1)]
    assert await output.send(batch) == Delivered()
    records = await server.wait_until(saw_sentinel(1))
    # Exactly the three records and the sentinel; a MSG-LEN counting characters would have
    # cut each record short and read its tail as the start of the next frame.
    assert len(records) == 4
    for record, event in zip(records[:3], events, strict=True):
        assert record["hostname"] == "web-dmz-02"
        sent = rfc5424(event)
        assert isinstance(sent.body, str)
        assert record["raw"] == sent.body
        assert HOSTILE_USERNAME in record["sd_raw"]


def planted(offset: int, limit: int) -> str:
    """An RFC 5424 record whose MSG puts a forged header `offset` bytes into the message."""
    head = "<134>1 2026-03-05T08:00:01Z web-dmz-02 canary - incident - "
    return head + "u" * (offset - len(head)) + FORGED + "v" * 50


@pytest.mark.parametrize("framing", ["octet_counting", "lf"])
async def test_max_message_bytes_at_the_receivers_limit_forges_nothing(
    rsyslog_factory: RsyslogFactory, outputs: list[SyslogOutput], framing: str
) -> None:
    """rsyslogd cuts a message at its maxMessageSize and reads the rest as a record of its own
    (imtcp's discardTruncatedMsg is off by default): text an attacker places there would be
    a record with a header of the attacker's choosing. Set to the receiver's limit, the output
    truncates instead, with its marker."""
    limit = RSYSLOG_DEFAULT_MAX_MESSAGE_SIZE
    server = rsyslog_factory("tcp", max_message_size=None)
    output = output_for(outputs, server, framing=framing, max_message_bytes=limit)
    event = incident("root")
    offsets = range(limit - 4, limit + 4)
    batch = [Record(event, planted(offset, limit), syslog_header=True) for offset in offsets]
    assert await output.send([*batch, sentinel(event, 2)]) == Delivered()
    records = await server.wait_until(saw_sentinel(2))
    assert [record["hostname"] for record in records] == ["web-dmz-02"] * len(offsets) + [
        "sentinel"
    ]
    assert all(record["raw"].endswith("...[truncated]") for record in records[:-1])


async def test_by_default_a_record_over_the_receivers_limit_forges_nothing(
    rsyslog_factory: RsyslogFactory, outputs: list[SyslogOutput]
) -> None:
    limit = RSYSLOG_DEFAULT_MAX_MESSAGE_SIZE
    server = rsyslog_factory("tcp", max_message_size=None)  # neither side configured
    output = output_for(outputs, server)
    event = incident("root")
    # Up to RFC 5425's 8192 too, which the default was: rsyslogd split every record over 8096.
    offsets = [*range(limit - 4, limit + 4), 8150, 8188]
    batch = [Record(event, planted(offset, limit), syslog_header=True) for offset in offsets]
    assert await output.send([*batch, sentinel(event, 3)]) == Delivered()
    records = await server.wait_until(saw_sentinel(3))
    assert "forged-host" not in [record["hostname"] for record in records]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_value_too_long_for_the_limit_is_cut_not_the_alert_kept_from_the_siem(
    rsyslog_factory: RsyslogFactory,
    outputs: list[SyslogOutput],
    transport: Literal["udp", "tcp"],
) -> None:
    """An attacker typing a password longer than the message limit into a honeypot must not
    keep the alert out of the SIEM: the value is cut, with the marker, and the rest arrives."""
    server = rsyslog_factory(transport)
    output = output_for(outputs, server, max_message_bytes=2048)
    password = "A" * 9000
    event = incident("root", details=[["Password", password]])
    assert await output.send([rfc5424(event), sentinel(event, 4)]) == Delivered()
    records = await server.wait_until(saw_sentinel(4))
    [record] = [r for r in records if r["hostname"] == "web-dmz-02"]
    details = record["sd"]["canaryDetails@32473"]
    assert details["Username"] == "root"
    assert details["Password"].startswith("AAAA")
    assert details["Password"].endswith("...[truncated]")
    assert len(record["raw"].encode()) <= 2048
    assert record["sd"]["canary@32473"]["source_ip"] == "10.99.0.7"
