"""Hostile events, rendered by the formats and sent by the syslog output, read back by rsyslogd.

Issue 3's proof that no text an attacker can put into a Canary event (a reverse DNS name, a
username typed at a fake login prompt, a user agent) adds a record, a field or a line: each
generated event goes through a format and the syslog output to one real rsyslogd, followed by a
sentinel record. When the sentinel has arrived, exactly one record must have come before it,
and every field rsyslogd parsed (RFC 5424 structured data through mmpstrucdata, CEF through
cefp) must equal what the event held, after the documented escaping:

- RFC 5424 PARAM-VALUE and MSG: CR and LF read back as the two characters `\\r` and `\\n`
  (RFC 5424 has no escape for them); other control characters, DEL, C1 and U+2028/U+2029 as a
  space; `"`, `\\` and `]` unchanged (escaped on the wire, unescaped by the receiver).
- CEF extension values: the same spaces; CR and LF unchanged (escaped as `\\r` / `\\n` on the
  wire); leading and trailing spaces removed. The CEF name: every line break a space.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import cefp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.cef import extension
from forwarder.outputs.base import Delivered
from forwarder.outputs.syslog import SyslogConfig, SyslogOutput
from forwarder.registry import mapper_class
from tests.mappers.helpers import OTHER_BREAKS, events
from tests.mappers.syslog_grammar import parse_rfc5424
from tests.support.rsyslog import Rsyslog, requires_rsyslogd, running_rsyslog

pytestmark = [pytest.mark.integration, requires_rsyslogd]

BOM = "\ufeff"
EXAMPLES = 150
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SD_ID = "canary@32473"
DETAILS_SD_ID = "canaryDetails@32473"
# Fields an attacker can write into, by their SD param name in the rfc5424 format, and the
# attribute of the event (or of its audit record) they come from.
HOSTILE_EVENT_PARAMS = {
    "description": "description",
    "canary_name": "canary_name",
    "canary_id": "canary_id",
    "canary_location": "canary_location",
    "flock": "flock",
    "source_ip": "source_ip",
    "reverse_dns": "reverse_dns",
    "incident_hash": "incident_hash",
    "token": "token",
    "reminder": "reminder",
}
HOSTILE_AUDIT_PARAMS = {
    "action_type": "action_type",
    "user": "user",
    "user_agent": "user_agent",
    "user_language": "user_language",
    "access_route": "access_route",
    "flock_name": "flock_name",
}


def hostile_values(event: CanaryEvent) -> Iterator[tuple[str, str]]:
    """(SD param name, raw value) of every attacker-written field the event has."""
    sources: list[tuple[object, dict[str, str]]] = [(event, HOSTILE_EVENT_PARAMS)]
    if event.audit is not None:
        sources.append((event.audit, HOSTILE_AUDIT_PARAMS))
    for source, params in sources:
        for name, attribute in params.items():
            value = getattr(source, attribute)
            if value is not None:
                yield name, value


def sd_as_read(value: str) -> str:
    """What a receiver reads back from an RFC 5424 PARAM-VALUE (or MSG) for a raw value."""
    return OTHER_BREAKS.sub(" ", value).replace("\r", "\\r").replace("\n", "\\n")


def cef_value_as_read(value: str) -> str:
    """What a CEF parser reads back from an extension value for a raw value."""
    return OTHER_BREAKS.sub(" ", value).strip(" ")


def cef_name_as_read(description: str) -> str:
    return OTHER_BREAKS.sub(" ", description[:512].replace("\r", " ").replace("\n", " "))


class Relay:
    """One syslog output in front of one rsyslogd; `deliver` sends a record and returns what
    rsyslogd parsed of it, after checking that nothing else arrived."""

    def __init__(self, server: Rsyslog, output: SyslogOutput) -> None:
        self.server = server
        self.output = output
        self.loop = asyncio.new_event_loop()
        self._numbers = itertools.count()

    def deliver(self, record: Record) -> dict[str, Any]:
        number = str(next(self._numbers))
        sentinel = Record(
            record.event, f'<13>1 - - - - - [sentinel@32473 n="{number}"]', syslog_header=True
        )
        already = len(self.server.records())
        result = self.loop.run_until_complete(self.output.send([record, sentinel]))
        assert result == Delivered()
        found = self.server.wait_until_records(
            lambda records: any(
                r["sd"].get("sentinel@32473", {}).get("n") == number for r in records[already:]
            )
        )
        arrived = found[already:]
        assert len(arrived) == 2, f"{len(arrived) - 1} records for one event: {arrived}"
        assert arrived[1]["sd"] == {"sentinel@32473": {"n": number}}
        return arrived[0]

    def close(self) -> None:
        self.loop.run_until_complete(self.output.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    with running_rsyslog(tmp_path_factory.mktemp("rsyslog")) as running:
        yield running


def relay(server: Rsyslog, **options: Any) -> Iterator[Relay]:
    config = {"name": "proof", "type": "syslog", "hosts": [server.address], **options}
    relaying = Relay(server, SyslogOutput(SyslogConfig.model_validate(config)))
    yield relaying
    relaying.close()


@pytest.fixture(scope="module")
def octet_counted(server: Rsyslog) -> Iterator[Relay]:
    yield from relay(server)


@pytest.fixture(scope="module")
def lf_framed(server: Rsyslog) -> Iterator[Relay]:
    yield from relay(server, framing="lf")


@pytest.fixture(scope="module")
def wrapping_rfc3164(server: Rsyslog) -> Iterator[Relay]:
    yield from relay(server, header="rfc3164", app_name="relay", hostname="relay.test")


def render(format_name: str, event: CanaryEvent, **options: Any) -> Record:
    mapper_type = mapper_class(format_name)
    return mapper_type(mapper_type.config_class(type=format_name, **options)).map(event)


def as_rsyslog_stores(elements: list[tuple[str, list[tuple[str, str]]]]) -> dict[str, Any]:
    """Structured data as rsyslogd's property tree holds it: names are case-insensitive there,
    so params whose names differ only in case collapse (first spelling, last value)."""
    stored: dict[str, dict[str, str]] = {}
    for sd_id, params in elements:
        element = stored.setdefault(sd_id, {})
        spelling: dict[str, str] = {name.lower(): name for name in reversed(dict(params))}
        for name, value in params:
            element[spelling[name.lower()]] = value
    return stored


def check_rfc5424(event: CanaryEvent, record: Record, parsed: dict[str, Any]) -> None:
    assert isinstance(record.body, str)
    sent = parse_rfc5424(record.body)  # the strict RFC 5424 grammar of the format tests
    assert (parsed["pri"], parsed["hostname"], parsed["app_name"]) == (
        sent.pri,
        sent.hostname,
        sent.app_name,
    )
    assert (parsed["procid"], parsed["msgid"]) == (sent.procid, sent.msgid)
    assert parsed["sd"] == as_rsyslog_stores(sent.structured_data)
    assert parsed["msg"] == (sent.msg or "")
    # And tied to the event itself, not only to the wire:
    own = parsed["sd"][SD_ID]
    for name, value in hostile_values(event):
        assert own[name] == sd_as_read(value), name
    if event.details:
        details = [value for _, value in sent.element(DETAILS_SD_ID)]
        assert details == [sd_as_read(detail.value) for detail in event.details]
    assert parsed["msg"] == (BOM + sd_as_read(event.intro) if event.intro else "")


def check_cef(event: CanaryEvent, line: str) -> None:
    parsed = cefp.parse(line)
    assert parsed["name"] == cef_name_as_read(event.description)
    expected = {key: cef_value_as_read(value) for key, value in extension(event)}
    assert parsed["extension"] == {key: value for key, value in expected.items() if value}


@PROPERTY
@given(event=events)
def test_rfc5424_structured_data_reads_back_as_sent(
    octet_counted: Relay, event: CanaryEvent
) -> None:
    record = render("rfc5424", event)
    check_rfc5424(event, record, octet_counted.deliver(record))


@PROPERTY
@given(event=events)
def test_rfc5424_with_lf_framing_is_still_one_record(lf_framed: Relay, event: CanaryEvent) -> None:
    record = render("rfc5424", event)
    check_rfc5424(event, record, lf_framed.deliver(record))


@PROPERTY
@given(event=events)
def test_cef_in_the_formats_rfc5424_header_reads_back_as_sent(
    octet_counted: Relay, event: CanaryEvent
) -> None:
    record = render("cef", event, syslog_header="rfc5424")
    assert isinstance(record.body, str)
    parsed = octet_counted.deliver(record)
    assert parsed["msgid"] == event.kind.value
    assert parsed["sd"] == {}
    line = parse_rfc5424(record.body).msg
    assert parsed["msg"] == line
    assert line is not None
    check_cef(event, line)


@PROPERTY
@given(event=events)
def test_bare_cef_in_the_outputs_rfc3164_header_reads_back_as_sent(
    wrapping_rfc3164: Relay, event: CanaryEvent
) -> None:
    record = render("cef", event)
    assert isinstance(record.body, str)
    parsed = wrapping_rfc3164.deliver(record)
    assert (parsed["hostname"], parsed["app_name"]) == ("relay", "relay")
    # rsyslogd keeps the space after "TAG:" as the first character of MSG.
    assert parsed["msg"] == " " + record.body
    check_cef(event, record.body)


@PROPERTY
@given(event=events)
def test_json_documents_travel_as_one_compact_line(
    octet_counted: Relay, event: CanaryEvent
) -> None:
    record = render("json", event)
    parsed = octet_counted.deliver(record)
    assert parsed["msgid"] == event.kind.value
    assert orjson.loads(parsed["msg"]) == orjson.loads(orjson.dumps(record.body))
