"""forwarder.events: each payload quirk the console is known for, normalised one case at a time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from forwarder.events import Detail, EventKind, is_ip, is_ipv6, parse_event, parse_timestamp
from tests.events_support import RECEIVED, at, incident, load, parse

# --------------------------------------------------------------------------------------------
# LogType, CanaryPort, Triggered
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "log_type", "log_type_raw", "quirk"),
    [
        pytest.param(2000, 2000, "2000", None, id="int"),
        pytest.param("2000", 2000, "2000", None, id="string"),
        pytest.param(" 2000 ", 2000, " 2000 ", None, id="string-with-spaces"),
        pytest.param(None, None, None, None, id="missing"),
        pytest.param("", None, "", None, id="empty-string"),
        pytest.param("abc", None, "abc", "LogType is not an integer", id="garbage-string"),
        pytest.param(2000.5, None, "2000.5", "LogType is not an integer", id="float"),
        pytest.param(True, None, "true", "LogType is not an integer", id="bool"),
        pytest.param({"a": 1}, None, '{"a":1}', "LogType is not an integer", id="object"),
        pytest.param("\uff12\uff10\uff10\uff10", None, "\uff12\uff10\uff10\uff10",
                     "LogType is not an integer", id="non-ascii-digits"),
        pytest.param("1" * 19, None, "1" * 19, "LogType is not an integer", id="too-long"),
        pytest.param("9" * 5000, None, "9" * 5000, "LogType is not an integer", id="5000-digits"),
        pytest.param(2**63 - 1, 2**63 - 1, str(2**63 - 1), None, id="int64-max"),
        pytest.param(0, 0, "0", None, id="zero"),
        pytest.param(-1, None, "-1", "LogType out of range: -1", id="negative-int"),
        pytest.param("-2000", None, "-2000", "LogType out of range: -2000", id="negative-string"),
        pytest.param(-(2**63), None, str(-(2**63)), "LogType out of range", id="int64-min"),
        pytest.param(2**63, None, str(2**63), "LogType out of range", id="past-int64"),
        pytest.param(2**64 - 1, None, str(2**64 - 1), "LogType out of range", id="uint64-max"),
    ],
)  # fmt: skip
def test_log_type(
    value: Any, log_type: int | None, log_type_raw: str | None, quirk: str | None
) -> None:
    event = parse(incident(LogType=value))
    assert event.log_type == log_type
    assert event.log_type_raw == log_type_raw
    assert event.log_type_name == ("FTP Login Attempt" if log_type == 2000 else None)
    if quirk is None:
        assert event.quirks == ()
    else:
        assert len(event.quirks) == 1
        assert quirk in event.quirks[0]
    assert event.kind is EventKind.INCIDENT


@pytest.mark.parametrize(
    ("value", "port", "quirk"),
    [
        pytest.param(21, 21, None, id="int"),
        pytest.param("443", 443, None, id="string"),
        pytest.param("-1", None, None, id="minus-one-string"),
        pytest.param(-1, None, None, id="minus-one-int"),
        pytest.param(None, None, None, id="missing"),
        pytest.param("", None, None, id="empty"),
        pytest.param(0, 0, None, id="zero"),
        pytest.param(65535, 65535, None, id="highest"),
        pytest.param(65536, None, "CanaryPort out of range", id="too-high"),
        pytest.param("-2", None, "CanaryPort out of range", id="negative"),
        pytest.param("http", None, "CanaryPort is not an integer", id="garbage"),
        pytest.param([21], None, "CanaryPort is not an integer", id="list"),
    ],
)
def test_canary_port(value: Any, port: int | None, quirk: str | None) -> None:
    event = parse(incident(CanaryPort=value))
    assert event.canary_port == port
    if quirk is None:
        assert event.quirks == ()
    else:
        assert len(event.quirks) == 1
        assert quirk in event.quirks[0]
    assert event.to_dict()["canary"]["port"] == port


@pytest.mark.parametrize(
    ("value", "triggered", "quirk"),
    [
        pytest.param("1", 1, False, id="string"),
        pytest.param("2", 2, False, id="string-2"),
        pytest.param(5, 5, False, id="int"),
        pytest.param(None, None, False, id="missing"),
        pytest.param("many", None, True, id="garbage"),
    ],
)
def test_triggered(value: Any, triggered: int | None, quirk: bool) -> None:
    payload = incident(AlertType="CanarytokenIncident", Token="t" * 25, Triggered=value)
    event = parse(payload)
    assert event.kind is EventKind.CANARYTOKEN
    assert event.triggered == triggered
    assert any("Triggered is not an integer" in q for q in event.quirks) is quirk


@pytest.mark.parametrize(
    ("value", "triggered", "quirk"),
    [
        pytest.param("0", 0, None, id="zero"),
        pytest.param(2**31 - 1, 2**31 - 1, None, id="cef-integer-max"),
        pytest.param("-3", None, "Triggered out of range: -3", id="negative-string"),
        pytest.param(-3, None, "Triggered out of range: -3", id="negative-int"),
        pytest.param("-0", 0, None, id="minus-zero"),
        pytest.param(2**31, None, "Triggered out of range", id="past-cef-integer"),
        pytest.param(str(2**63), None, "Triggered is not an integer", id="19-digits"),
        pytest.param(2**64 - 1, None, "Triggered out of range", id="uint64-max"),
    ],
)
def test_triggered_range(value: Any, triggered: int | None, quirk: str | None) -> None:
    """A count is never negative, and CEF's `cnt` is an ArcSight Integer (signed 32-bit)."""
    payload = incident(AlertType="CanarytokenIncident", Token="t" * 25, Triggered=value)
    event = parse(payload)
    assert event.triggered == triggered
    assert event.to_dict()["token"]["triggered"] == triggered
    assert event.payload["Triggered"] == value  # what was sent is kept
    if quirk is None:
        assert event.quirks == ()
    else:
        assert len(event.quirks) == 1
        assert quirk in event.quirks[0]


# --------------------------------------------------------------------------------------------
# AdditionalDetails
# --------------------------------------------------------------------------------------------


def test_details_pairs_with_mixed_values() -> None:
    event = parse(
        incident(
            AdditionalDetails=[
                ["Dst Port", 80],
                ["Ratio", 0.5],
                ["Flag", True],
                ["Nothing", None],
                ["Nested", {"b": [1, 2], "a": "x"}],
                ["Settings", 'line1\nline2 | a=b \\ "q"'],
            ]
        )
    )
    assert event.details == (
        Detail("Dst Port", "80"),
        Detail("Ratio", "0.5"),
        Detail("Flag", "true"),
        Detail("Nothing", ""),
        Detail("Nested", '{"a":"x","b":[1,2]}'),
        Detail("Settings", 'line1\nline2 | a=b \\ "q"'),
    )
    assert event.quirks == ()


def test_details_dict_form() -> None:
    event = parse(incident(AdditionalDetails={"Field1": "VALUE1", "Count": 3}))
    assert event.details == (Detail("Field1", "VALUE1"), Detail("Count", "3"))
    assert event.quirks == ()


@pytest.mark.parametrize(
    ("entry", "detail", "quirk"),
    [
        pytest.param(["Thing1"], Detail("Thing1", ""), "has a key and no value", id="one"),
        pytest.param(["K", "V", 3], Detail("K", '["V",3]'), "has 3 elements", id="three"),
        pytest.param("loose", Detail("entry0", "loose"), "not a [key, value] pair", id="string"),
        pytest.param(7, Detail("entry0", "7"), "not a [key, value] pair", id="number"),
        pytest.param({"k": "v"}, Detail("entry0", '{"k":"v"}'), "not a [key, value]", id="obj"),
        pytest.param([], Detail("entry0", "[]"), "not a [key, value] pair", id="empty-list"),
    ],
)
def test_details_malformed_entry(entry: Any, detail: Detail, quirk: str) -> None:
    event = parse(incident(AdditionalDetails=[entry]))
    assert event.details == (detail,)
    assert len(event.quirks) == 1
    assert quirk in event.quirks[0]
    assert "AdditionalDetails[0]" in event.quirks[0]


@pytest.mark.parametrize(
    ("value", "details", "quirk"),
    [
        pytest.param("CONFIG GET *", (Detail("AdditionalDetails", "CONFIG GET *"),), True,
                     id="string"),
        pytest.param(42, (Detail("AdditionalDetails", "42"),), True, id="number"),
        pytest.param("", (), False, id="empty-string"),
        pytest.param([], (), False, id="empty-list"),
        pytest.param({}, (), False, id="empty-object"),
        pytest.param(None, (), False, id="missing"),
    ],
)  # fmt: skip
def test_details_not_a_list(value: Any, details: tuple[Detail, ...], quirk: bool) -> None:
    event = parse(incident(AdditionalDetails=value))
    assert event.details == details
    assert any("neither a list nor an object" in q for q in event.quirks) is quirk


def test_details_duplicate_keys() -> None:
    event = parse_event(load("incident_details_duplicate_keys.json"), received_at=RECEIVED)
    assert event.details_dict() == {
        "method": "OPTIONS",
        "via": [
            "SIP/2.0/UDP 10.70.8.8:5060;branch=z9hG4bK-1",
            "SIP/2.0/UDP 10.70.8.1:5060;branch=z9hG4bK-2",
        ],
        "user-agent": "friendly-scanner",
    }
    assert event.detail("via") == "SIP/2.0/UDP 10.70.8.8:5060;branch=z9hG4bK-1"
    assert event.to_dict()["details"]["via"] == event.details_dict()["via"]


def test_details_three_times_the_same_key() -> None:
    event = parse(incident(AdditionalDetails=[["k", "1"], ["k", "2"], ["k", "3"]]))
    assert event.details_dict() == {"k": ["1", "2", "3"]}


def test_detail_lookup() -> None:
    event = parse(incident(AdditionalDetails=[["User-Agent", "ua"], ["user-agent", "lower"]]))
    assert event.detail("user-agent") == "lower"  # exact match first
    assert event.detail("USER-AGENT") == "ua"  # then case-insensitive, first in order
    assert event.detail("Missing", "User-Agent") == "ua"
    assert event.detail("Missing") is None


# --------------------------------------------------------------------------------------------
# MatchedAnnotations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "annotations", "quirk"),
    [
        pytest.param("{}", {}, None, id="json-string-empty"),
        pytest.param('{"scan": ["looks like a scan", "https://x.example/"]}',
                     {"scan": ["looks like a scan", "https://x.example/"]}, None,
                     id="json-string"),
        pytest.param({"scan": ["a", "b"]}, {"scan": ["a", "b"]}, None, id="object"),
        pytest.param({}, {}, None, id="empty-object"),
        pytest.param(None, {}, None, id="missing"),
        pytest.param("", {}, None, id="empty-string"),
        pytest.param("{not json", {"text": "{not json"}, "string that is not JSON",
                     id="invalid-string"),
        pytest.param("[1, 2]", {"value": [1, 2]}, "not an object", id="json-string-list"),
        pytest.param(["a"], {"value": ["a"]}, "not an object", id="list"),
        pytest.param('{"a": "\\ud800"}', {"text": '{"a": "\\ud800"}'},
                     "string that is not JSON", id="lone-surrogate-in-string"),
        pytest.param("NaN", {"text": "NaN"}, "string that is not JSON", id="nan"),
        pytest.param("[" * 100 + "]" * 100, {"text": "[" * 100 + "]" * 100},
                     "nests too deeply", id="deep-string"),
        pytest.param("[" * 5000 + "]" * 5000, {"text": "[" * 5000 + "]" * 5000},
                     "string that is not JSON", id="very-deep-string"),
    ],
)  # fmt: skip
def test_matched_annotations(value: Any, annotations: dict[str, Any], quirk: str | None) -> None:
    event = parse(incident(MatchedAnnotations=value))
    assert event.annotations == annotations
    if quirk is None:
        assert event.quirks == ()
    else:
        assert len(event.quirks) == 1
        assert quirk in event.quirks[0]
    orjson.dumps(event.to_dict())


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-02-02 14:10:14 (UTC)", at(2026, 2, 2, 14, 10, 14), id="webhook"),
        pytest.param("2026-02-02T14:12:34+00:00", at(2026, 2, 2, 14, 12, 34), id="audit-iso"),
        pytest.param("2026-02-02T16:12:34+02:00", at(2026, 2, 2, 14, 12, 34), id="iso-offset"),
        pytest.param("2026-02-02T14:12:34Z", at(2026, 2, 2, 14, 12, 34), id="iso-z"),
        pytest.param("2026-02-02T14:12:34.123456+00:00",
                     at(2026, 2, 2, 14, 12, 34) + timedelta(microseconds=123456),
                     id="rfc3339-micro"),
        pytest.param("2020-04-03 12:56:42 UTC+0000", at(2020, 4, 3, 12, 56, 42), id="api-std"),
        pytest.param("2020-04-03 14:56:42 UTC+0200", at(2020, 4, 3, 12, 56, 42),
                     id="api-std-other-zone"),
        pytest.param("2026-02-02 14:10:14 UTC", at(2026, 2, 2, 14, 10, 14), id="utc-word"),
        pytest.param("2026-02-02 14:10:14 GMT", at(2026, 2, 2, 14, 10, 14), id="gmt-word"),
        pytest.param("2026-02-02 14:10:14", at(2026, 2, 2, 14, 10, 14), id="no-zone"),
        pytest.param("2026-03-19 10:00:00.123456",
                     at(2026, 3, 19, 10) + timedelta(microseconds=123456), id="opencanary"),
        pytest.param("1691096157", at(2023, 8, 3, 20, 55, 57), id="epoch"),
        pytest.param("1691096157.5", at(2023, 8, 3, 20, 55, 57) + timedelta(milliseconds=500),
                     id="epoch-fraction"),
        pytest.param("1691096157000", at(2023, 8, 3, 20, 55, 57), id="epoch-ms"),
        pytest.param("1691096157250", at(2023, 8, 3, 20, 55, 57) + timedelta(milliseconds=250),
                     id="epoch-ms-fraction"),
        pytest.param("  2026-02-02 14:10:14 (UTC)\n", at(2026, 2, 2, 14, 10, 14), id="spaces"),
        pytest.param("100000000", at(1973, 3, 3, 9, 46, 40), id="epoch-9-digits"),
        pytest.param("1000000000000", at(2001, 9, 9, 1, 46, 40), id="epoch-ms-13-digits"),
        pytest.param("20261127", at(2026, 11, 27), id="iso-basic-date"),
        pytest.param("20261127T1230", at(2026, 11, 27, 12, 30), id="iso-basic-date-time"),
        pytest.param("1969-12-31 23:59:59", at(1969, 12, 31, 23, 59, 59), id="before-1970"),
    ],
)  # fmt: skip
def test_parse_timestamp(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert abs(parsed - expected) < timedelta(milliseconds=1)
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-45 99:99:99 (UTC)",
        "2026-02-02 14:10:14 EST",  # a zone name we cannot resolve is not silently UTC
        "0001-01-01T00:00:00+01:00",  # valid, but moving it to UTC leaves year 1
        "9999-12-31 23:59:59 UTC-0100",  # likewise past year 9999
        "12345",
        "\u0661\u0666\u0669\u0661\u0660\u0669\u0666\u0661\u0665\u0667",  # Arabic-Indic digits
        "-1",  # a negative epoch
        "-86400.5",
        "202611271230",  # 12 digits: YYYYMMDDhhmm, or epoch milliseconds before 2001
        "999999999999",  # the last 12-digit millisecond, 2001-09-09T01:46:39.999Z
        "202611271230.5",
        "20261127123000",  # compact YYYYMMDDhhmmss is not a console format either
    ],
)
def test_parse_timestamp_unreadable(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(1691096157, at(2023, 8, 3, 20, 55, 57), id="epoch-number"),
        pytest.param("1691096157", at(2023, 8, 3, 20, 55, 57), id="epoch-string"),
        pytest.param("2020-04-03 12:56:42 UTC+0000", at(2020, 4, 3, 12, 56, 42), id="utc+0000"),
    ],
)
def test_timestamp_through_parse_event(value: Any, expected: datetime) -> None:
    event = parse(incident(Timestamp=value))
    assert event.timestamp == expected
    assert event.timestamp_raw == str(value)
    assert event.quirks == ()
    assert event.to_dict()["timestamp"] == expected.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_unreadable_timestamp_falls_back_to_received_at() -> None:
    event = parse(incident(Timestamp="the day before yesterday"))
    assert event.timestamp == RECEIVED
    assert event.timestamp_raw == "the day before yesterday"
    assert len(event.quirks) == 1
    assert "unreadable timestamp" in event.quirks[0]


@pytest.mark.parametrize(
    ("value", "quirk"),
    [
        pytest.param(-1, "unreadable timestamp", id="negative-epoch-number"),
        pytest.param("-86400", "unreadable timestamp", id="negative-epoch-string"),
        pytest.param("202611271230", "unreadable timestamp", id="12-digits"),
        pytest.param(202611271230, "unreadable timestamp", id="12-digit-number"),
        pytest.param("1969-12-31 23:59:59", "is before 1970", id="last-second-of-1969"),
        pytest.param("1969-12-31T23:59:59.999Z", "is before 1970", id="last-ms-of-1969"),
        pytest.param("0001-01-01 00:00:00 (UTC)", "is before 1970", id="year-1"),
        pytest.param("1970-01-01T00:00:00+00:01", "is before 1970", id="offset-before-1970"),
        pytest.param("2026-05-01 12:00:01 (UTC)", "after it was received", id="30-days-and-1s"),
        pytest.param("2999-01-01 00:00:00 (UTC)", "after it was received", id="year-2999"),
        pytest.param("9999-12-31T23:59:59Z", "after it was received", id="year-9999"),
        pytest.param("99999999999", "after it was received", id="epoch-11-digits"),
        pytest.param("9999999999999", "after it was received", id="epoch-ms-2286"),
    ],
)
def test_event_time_outside_the_window_falls_back_to_received_at(value: Any, quirk: str) -> None:
    event = parse(incident(Timestamp=value))
    assert event.timestamp == RECEIVED
    assert event.timestamp_raw == str(value)
    assert event.payload["Timestamp"] == value
    assert len(event.quirks) == 1
    assert quirk in event.quirks[0]
    assert event.quirks[0].endswith("using the time it was received")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1970-01-01 00:00:00 (UTC)", at(1970, 1, 1), id="epoch-zero"),
        pytest.param("000000000", at(1970, 1, 1), id="epoch-zero-digits"),
        pytest.param("1990-01-01T00:00:00Z", at(1990, 1, 1), id="1990"),
        pytest.param("2026-04-01 12:00:00 (UTC)", RECEIVED, id="received"),
        pytest.param("2026-05-01 12:00:00 (UTC)", RECEIVED + timedelta(days=30), id="30-days"),
        pytest.param("1777636800", RECEIVED + timedelta(days=30), id="30-days-epoch"),
    ],
)
def test_event_time_inside_the_window_is_kept(value: Any, expected: datetime) -> None:
    event = parse(incident(Timestamp=value))
    assert event.timestamp == expected
    assert event.quirks == ()


def test_audit_time_outside_the_window_falls_back_to_received_at() -> None:
    body = {"timestamp": "1969-07-20T20:17:40+00:00", "action_type": "user_login"}
    event = parse({"type": "console-audit", "payload": body})
    assert event.kind is EventKind.AUDIT
    assert event.timestamp == RECEIVED
    assert event.timestamp_raw == "1969-07-20T20:17:40+00:00"
    assert len(event.quirks) == 1
    assert "is before 1970" in event.quirks[0]


def test_missing_timestamp_falls_back_to_received_at() -> None:
    event = parse(incident(Timestamp=None))
    assert event.timestamp == RECEIVED
    assert event.timestamp_raw is None
    assert any("no timestamp" in quirk for quirk in event.quirks)


def test_naive_received_at_is_taken_as_utc() -> None:
    event = parse_event(orjson.dumps({}), received_at=datetime(2026, 4, 1, 12))
    assert event.received_at == RECEIVED
    assert event.timestamp.utcoffset() == timedelta(0)


def test_received_at_in_another_zone_is_converted() -> None:
    local = RECEIVED.astimezone(timezone(timedelta(hours=5)))
    event = parse_event(orjson.dumps({}), received_at=local)
    assert event.received_at == RECEIVED
    assert event.to_dict()["received_at"] == "2026-04-01T12:00:00.000Z"


# --------------------------------------------------------------------------------------------
# IP helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ip", "ipv6"),
    [
        ("192.0.2.1", True, False),
        ("2001:db8::42", True, True),
        ("abc123.canary.tools", False, False),
        ("", False, False),
        (None, False, False),
        ("192.0.2.1 ", False, False),
        ("01.2.3.4", False, False),
        ("fe80::1%eth0", False, False),
        ("fe80::1%evil host x=y", False, False),
    ],
)
def test_is_ip(value: str | None, ip: bool, ipv6: bool) -> None:
    assert is_ip(value) is ip
    assert is_ipv6(value) is ipv6


def test_empty_strings_become_none() -> None:
    event = parse(incident(CanaryIP="", SourceIP="", ReverseDNS="", CanaryLocation="", Flock=""))
    assert event.canary_ip is None
    assert event.source_ip is None
    assert event.reverse_dns is None
    assert event.canary_location is None
    assert event.flock is None


def test_ipv6_token_source() -> None:
    event = parse_event(load("canarytoken_aws_key.json"), received_at=RECEIVED)
    assert event.source_ip == "2001:db8::42"
    assert is_ipv6(event.source_ip)
