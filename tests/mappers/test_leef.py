"""LEEF 2.0: header, delimiter forms, the attribute mapping, and values that add no attribute."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.leef import LeefConfig, LeefMapper, attributes

from .helpers import OTHER_BREAKS, event_from, events, sample_event, sample_names
from .syslog_grammar import parse_rfc3164, parse_rfc5424


def leef(event: CanaryEvent, **options: Any) -> Record:
    return LeefMapper(LeefConfig(type="leef", **options)).map(event)


def read_leef(line: str, delimiter: str) -> tuple[list[str], list[tuple[str, str]]]:
    """What QRadar reads: six header fields after `LEEF:2.0`, then key=value pairs."""
    parts = line.split("|", 6)
    assert len(parts) == 7, line
    header, rest = parts[:6], parts[6]
    pairs = [item.partition("=") for item in rest.split(delimiter)] if rest else []
    assert all(sep == "=" for _, sep, _ in pairs), rest
    return header, [(key, value) for key, _, value in pairs]


def test_ssh_login_header_and_normalised_attributes() -> None:
    record = leef(sample_event("incident_ssh_login"), version="4.0")
    assert isinstance(record.body, str)
    header, pairs = read_leef(record.body, "^")
    assert header == ["LEEF:2.0", "Thinkst", "Canary", "4.0", "4002", "^"]
    values = dict(pairs)
    assert values["devTime"] == "1772697601000"
    assert values["sev"] == "8"
    assert values["cat"] == "incident"
    assert values["src"] == "10.99.0.7"
    assert values["dst"] == "10.20.30.42"
    assert values["dstPort"] == "22"
    assert values["usrName"] == "root"
    assert values["srcHost"] == "jump01.corp.example"
    assert values["canaryLocation"] == "DMZ rack 3"
    assert values["detailPassword"] == "*******"
    assert values["detailBackgroundContext"].startswith("You have had 0 incidents")
    assert "devTimeFormat" not in values  # epoch milliseconds need none


def test_token_has_source_port_and_custom_attributes() -> None:
    record = leef(sample_event("canarytoken_web_bug"))
    assert isinstance(record.body, str)
    values = dict(read_leef(record.body, "^")[1])
    assert values["srcPort"] == "64487"
    assert values["dstPort"] == "80"
    assert values["token"] == "xxxxxxxxxxxxxxxxxxxxxxxxx"
    assert values["userAgent"] == "Mozilla/5.0 ..."
    assert values["detailHost"] == "example.com"


def test_lowest_severity_is_sev_1() -> None:
    record = leef(sample_event("test_event"))
    assert record.severity == 0
    assert isinstance(record.body, str)
    assert dict(read_leef(record.body, "^")[1])["sev"] == "1"


@pytest.mark.parametrize(
    ("option", "delimiter", "shown"),
    [("^", "^", "^"), ("x09", "\t", "0x09"), ("0x5E", "^", "^"), ("\t", "\t", "0x09")],
)
def test_delimiter_forms(option: str, delimiter: str, shown: str) -> None:
    record = leef(sample_event("incident_ftp_login"), delimiter=option)
    assert isinstance(record.body, str)
    header, pairs = read_leef(record.body, delimiter)
    assert header[5] == shown
    assert dict(pairs)["usrName"] == "username"


def test_hex_delimiter_option_writes_the_header_in_hex() -> None:
    record = leef(sample_event("incident_ftp_login"), delimiter="^", hex_delimiter=True)
    assert isinstance(record.body, str)
    assert read_leef(record.body, "^")[0][5] == "0x5E"


@pytest.mark.parametrize("bad", ["", "ab", "|", "=", "a", "5", " ", "\n", "x1G", "0x"])
def test_unusable_delimiters_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        LeefConfig(type="leef", delimiter=bad)


def test_pipe_and_breaks_in_a_header_field_are_replaced() -> None:
    event = event_from({"Description": "x", "AlertType": "CanaryIncident", "CanaryID": "c"})
    record = leef(event, vendor="Thin|kst", product="Can\nary")
    assert isinstance(record.body, str)
    assert read_leef(record.body, "^")[0][1:3] == ["Thin kst", "Can ary"]


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_is_one_line_with_unique_alphanumeric_keys(name: str) -> None:
    event = sample_event(name)
    record = leef(event)
    assert isinstance(record.body, str)
    assert len(record.body.splitlines()) == 1
    keys = [key for key, _ in read_leef(record.body, "^")[1]]
    assert keys == [key for key, _ in attributes(event, record.severity)]
    assert len(set(keys)) == len(keys)
    assert all(key.isascii() and key.isalnum() for key in keys)


def test_leef_inside_syslog_headers() -> None:
    event = sample_event("incident_ssh_login")
    modern = leef(event, syslog_header="rfc5424", hostname="qradar-src")
    assert modern.syslog_header and isinstance(modern.body, str)
    message = parse_rfc5424(modern.body)
    assert message.hostname == "qradar-src"
    assert message.msg is not None and message.msg.startswith("LEEF:2.0|Thinkst|")
    legacy = leef(event, syslog_header="rfc3164", hostname="qradar-src")
    assert legacy.syslog_header and isinstance(legacy.body, str)
    assert parse_rfc3164(legacy.body).message.startswith("LEEF:2.0|Thinkst|")


@settings(max_examples=200, deadline=None)
@given(events, st.sampled_from(["^", "\t", "~", ";"]))
def test_values_with_the_delimiter_or_breaks_cannot_add_an_attribute(
    event: CanaryEvent, delimiter: str
) -> None:
    record = leef(event, delimiter=delimiter)
    assert isinstance(record.body, str)
    assert len(record.body.splitlines()) == 1
    expected = attributes(event, record.severity)
    pairs = read_leef(record.body, delimiter)[1]
    assert [key for key, _ in pairs] == [key for key, _ in expected]
    cleaned = [
        OTHER_BREAKS.sub(" ", value).replace("\r", " ").replace("\n", " ").replace(delimiter, " ")
        for _, value in expected
    ]
    assert [value for _, value in pairs] == cleaned
