"""LEEF 2.0: header, delimiter forms, the attribute mapping, and values that add no attribute."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
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


def read_leef_header_escaped(line: str) -> list[str]:
    """The six header fields as a reader that honours `\\|` and `\\\\` (CEF's rule) splits them."""
    fields = re.findall(r"((?:[^|\\]|\\.)*)\|", line)[:6]
    return [re.sub(r"\\(.)", r"\1", field) for field in fields]


# Java SimpleDateFormat letters (what QRadar reads `devTimeFormat` with) in strptime's terms.
_JAVA_DATE_LETTERS = {
    "MMM": "%b", "yyyy": "%Y", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S", "SSS": "%f",
    "z": "%Z",
}  # fmt: skip


def read_dev_time(values: dict[str, str]) -> datetime:
    """The event time as QRadar documents it: a 10 or 13 digit epoch on its own, anything else
    only with a `devTimeFormat`."""
    text = values["devTime"]
    if text.isascii() and text.isdigit() and len(text) in (10, 13):
        return datetime.fromtimestamp(int(text) / (1000 if len(text) == 13 else 1), tz=UTC)
    assert "devTimeFormat" in values, f"devTime={text!r} is not an epoch and has no format"
    letters = "|".join(sorted(_JAVA_DATE_LETTERS, key=len, reverse=True))
    pattern = re.sub(letters, lambda m: _JAVA_DATE_LETTERS[m.group()], values["devTimeFormat"])
    return datetime.strptime(text, pattern).replace(tzinfo=UTC)


def _to_millisecond(moment: datetime) -> datetime:
    return moment - timedelta(microseconds=moment.microsecond % 1000)


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


@pytest.mark.parametrize(
    "bad",
    [
        "", "ab", "|", "=", "a", "5", " ", "\n", "x1G", "0x",
        # Not writable in the header's hex form (1 to 4 digits), or not at all in UTF-8.
        "\U0001f600", "xD800", "0xDFFF",
        # Line and string ends for some receiver.
        "x00", "\x00", "x0B", "x1F", "x7F", "x85", "x2028", "x2029",
        # Characters of the addresses, host names, URLs, e-mail addresses and names QRadar reads.
        ".", ":", "-", "_", "@", "/", "x2E",
    ],
)  # fmt: skip
def test_unusable_delimiters_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        LeefConfig(type="leef", delimiter=bad)


@pytest.mark.parametrize("good", ["^", "x09", "\t", "~", ";", ",", "#", "xA6", "\u00a6", "0x7E"])
def test_usable_delimiters_are_accepted(good: str) -> None:
    LeefConfig(type="leef", delimiter=good)


def test_a_delimiter_in_values_never_changes_an_address_or_name() -> None:
    event = event_from(
        {
            "Description": "SSH Login Attempt",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "LogType": "4002",
            "SourceIP": "2001:db8::7",
            "CanaryIP": "10.0.0.1",
            "AdditionalDetails": [["Username", "a;b,c#d"]],
        }
    )
    for delimiter in (";", ",", "#"):
        record = leef(event, delimiter=delimiter)
        assert isinstance(record.body, str)
        values = dict(read_leef(record.body, delimiter)[1])
        assert (values["src"], values["dst"]) == ("2001:db8::7", "10.0.0.1")
        assert values["usrName"] == "a;b,c#d".replace(delimiter, " ")


def test_pipe_and_breaks_in_a_header_field_are_replaced() -> None:
    event = event_from({"Description": "x", "AlertType": "CanaryIncident", "CanaryID": "c"})
    record = leef(event, vendor="Thin|kst", product="Can\nary")
    assert isinstance(record.body, str)
    assert read_leef(record.body, "^")[0][1:3] == ["Thin kst", "Can ary"]


@pytest.mark.parametrize("version", ["2.0\\", "2.0\\\\\\", "a\\b", "\\" * 300])
def test_a_backslash_in_a_header_field_ends_no_field(version: str) -> None:
    """LEEF defines no header escape and QRadar splits on `|`, so no `|` is ever written; a
    reader that takes `\\|` as an escaped pipe (as in CEF) must still find the same fields."""
    record = leef(sample_event("incident_ssh_login"), version=version)
    assert isinstance(record.body, str)
    plain = read_leef(record.body, "^")[0]
    escaped = read_leef_header_escaped(record.body)
    assert plain[4:] == escaped[4:] == ["4002", "^"]
    assert escaped[3] == version[: len(escaped[3])]
    assert len(plain[3]) <= 255


@pytest.mark.parametrize(("delimiter", "shown"), [("^", "^"), ("x09", "\t")])
def test_a_value_with_the_delimiter_and_a_key_adds_no_attribute(delimiter: str, shown: str) -> None:
    payload = {
        "Description": "FTP Login Attempt",
        "AlertType": "CanaryIncident",
        "CanaryID": "c",
        "LogType": "2000",
        "SourceIP": "10.1.2.3",
        "AdditionalDetails": [
            ["Username", f"x{shown}usrName=admin"],
            ["Password", f"p\tsrc=6.6.6.6\nsev=1|dst=7.7.7.7{shown}=x"],
            [f"Note{shown}usrName=root", "v"],
        ],
    }
    record = leef(event_from(payload), delimiter=delimiter)
    assert isinstance(record.body, str)
    pairs = read_leef(record.body, shown)[1]
    keys = [key for key, _ in pairs]
    assert keys.count("usrName") == keys.count("src") == keys.count("sev") == 1
    assert "dst" not in keys
    values = dict(pairs)
    assert values["usrName"] == "x usrName=admin"
    assert (values["sev"], values["src"]) == ("8", "10.1.2.3")


def test_dev_time_before_september_2001_comes_with_its_format() -> None:
    """Epoch milliseconds have 13 digits only from 2001-09-09; QRadar reads 10 or 13 digits as
    an epoch and anything else only through devTimeFormat."""
    event = event_from(
        {
            "Description": "SSH Login Attempt",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "LogType": "4002",
            "Timestamp": "2000-06-01 12:34:56 (UTC)",
        }
    )
    record = leef(event)
    assert isinstance(record.body, str)
    values = dict(read_leef(record.body, "^")[1])
    assert values["devTime"] == "Jun 01 2000 12:34:56.000 GMT"
    assert values["devTimeFormat"] == "MMM dd yyyy HH:mm:ss.SSS z"
    assert read_dev_time(values) == event.timestamp


@settings(max_examples=200, deadline=None)
@given(events)
def test_dev_time_reads_back_as_the_event_time(event: CanaryEvent) -> None:
    record = leef(event)
    assert isinstance(record.body, str)
    values = dict(read_leef(record.body, "^")[1])
    assert read_dev_time(values) == _to_millisecond(event.timestamp)
    if len(values["devTime"]) == 13:
        assert "devTimeFormat" not in values


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
