"""forwarder.events: bodies no console could have sent, and fuzzing with hypothesis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.events import (
    MAX_NESTING,
    CanaryEvent,
    EventKind,
    PayloadError,
    decode_json_object,
    parse_event,
    parse_timestamp,
)
from tests.events_support import HEX32, RECEIVED, SAFE_ID, SAMPLES, parse

# --------------------------------------------------------------------------------------------
# Bodies no console could have sent
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"a": 1', id="truncated"),
        pytest.param(b"\xff\xfe{\x00}\x00", id="utf16-ish"),
        pytest.param(b'{"Description": "\xff"}', id="invalid-utf8-in-string"),
        pytest.param(b'{"Description": "\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'[{"Description": "x"}]', id="array-of-object"),
        pytest.param(b'"string"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
        pytest.param(b'{"a": 1}\x00', id="nul-after"),
        pytest.param(b'{"a": "x\x00y"}', id="raw-nul-in-string"),
        pytest.param(b'{"a": "x\ny"}', id="raw-newline-in-string"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', id="bom"),
        pytest.param(b'{"a": NaN}', id="nan"),
        pytest.param(b'{"a": 1e400}', id="infinite-number"),
        pytest.param(b'{"a": "\\ud800"}', id="lone-high-surrogate"),
        pytest.param(b'{"a": "\\udc00"}', id="lone-low-surrogate"),
        pytest.param(b'{"a": 1} {"b": 2}', id="two-documents"),
        pytest.param(b'{"a": [' * 600 + b"1" + b"]}" * 600, id="deeper-than-orjson-reads"),
        pytest.param(
            b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}", id="readable-but-deeper-than-orjson-writes"
        ),
        pytest.param(b'{"a":' * (MAX_NESTING + 1) + b"1" + b"}" * (MAX_NESTING + 1),
                     id="deeper-than-max-nesting"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="very-deep-array"),
    ],
)  # fmt: skip
def test_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_event(raw, received_at=RECEIVED)
    with pytest.raises(PayloadError):
        decode_json_object(raw)


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    raw = b'{"a":' * (MAX_NESTING - 1) + b"{}" + b"}" * (MAX_NESTING - 1)
    event = parse(raw)
    assert event.kind is EventKind.UNKNOWN
    orjson.dumps({"wrapped": {"again": event.to_dict(), "payload": event.payload}})


def test_escaped_nul_is_accepted() -> None:
    event = parse(b'{"Description": "FTP\\u0000Login", "AlertType": "CanaryIncident", "x": 1}')
    assert event.description == "FTP\x00Login"
    assert event.kind is EventKind.INCIDENT
    orjson.dumps(event.to_dict())


def test_valid_surrogate_pair_is_accepted() -> None:
    event = parse(b'{"Intro": "\\ud83d\\ude00", "AlertType": "CanaryIncident"}')
    assert event.intro == "\U0001f600"


def test_huge_integers_do_not_break_serialisation() -> None:
    raw = b'{"LogType": 18446744073709551615, "Triggered": -9223372036854775809, "X": 1e308}'
    event = parse(raw)
    # An unsigned 64-bit LogType does not fit ECS `long` (signed 64-bit): kept as text only.
    assert event.log_type is None
    assert event.log_type_raw == "18446744073709551615"
    assert event.triggered is None  # orjson reads -2**63 - 1 as a float
    assert any("LogType out of range: 18446744073709551615" in q for q in event.quirks)
    assert any("Triggered is not an integer" in q for q in event.quirks)
    orjson.dumps(event.to_dict())


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"LogType": 1' + b"0" * 30 + b"}", id="10**30-number"),
        pytest.param(b'{"LogType": "1' + b"0" * 30 + b'"}', id="10**30-string"),
        pytest.param(b'{"LogType": "' + b"7" * 5000 + b'"}', id="5000-digit-string"),
        pytest.param(b'{"Triggered": "-' + b"7" * 5000 + b'"}', id="5000-digit-negative"),
        pytest.param(b'{"CanaryPort": "' + b"7" * 5000 + b'"}', id="5000-digit-port"),
    ],
)
def test_long_numbers_are_unreadable_not_typed(raw: bytes) -> None:
    """Past int_max_str_digits int() refuses; before it, it is slow: neither is ever tried."""
    event = parse(raw)
    assert (event.log_type, event.triggered, event.canary_port) == (None, None, None)
    (quirk,) = (q for q in event.quirks if "is not an integer" in q)
    assert len(quirk) < 150


# --------------------------------------------------------------------------------------------
# Fuzzing: whatever arrives, the parser answers with an event or a PayloadError, nothing else
# --------------------------------------------------------------------------------------------

TOP_LEVEL_KEYS = (
    "Description", "Timestamp", "CanaryName", "CanaryID", "CanaryIP", "CanaryPublicIP",
    "CanaryLocation", "CanaryPort", "SourceIP", "ReverseDNS", "IncidentHash", "IncidentKey",
    "Intro", "AdditionalDetails", "AlertType", "LogType", "MatchedAnnotations", "Flock",
    "Token", "Reminder", "Triggered", "type", "payload",
)  # fmt: skip
AUDIT_KEYS = (
    "timestamp", "message", "action_type", "flock_id", "flock_name", "user", "user_ip",
    "user_browser_agent", "user_browser_language", "user_access_route",
)  # fmt: skip
# Values the parser gives meaning to, so the fuzzer reaches every branch quickly.
MEANINGFUL = (
    "", " ", "-1", "0", "21", "65536", "2000", "1004", "22001", "22011", "23001", "23003",
    "30001", "111111", "0000000testnode", "Fake Location", "Dummy Incident", "CanaryIncident",
    "CanarytokenIncident", "console-audit", "Canary Disconnected", "Canary Reconnected",
    "Network Settings Roll-back", "Flock Settings Changed", "has disconnected", "{}", "{",
    "[1]", '{"a": "\\ud800"}', "2026-02-02 14:10:14 (UTC)", "2026-02-02T14:12:34+00:00",
    "2020-04-03 12:56:42 UTC+0000", "1691096157", "1691096157000", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00", "abc\n", "a b", "x" * 201, "\x00", "-3", "2147483648",
    "9223372036854775807", "-9223372036854775808", "202611271230", "1969-12-31 23:59:59",
    "1970-01-01 00:00:00", "99999999999", "9999999999999",
)  # fmt: skip
OPERATIONS = {
    None,
    "reconnected",
    "disconnected",
    "console_settings_changed",
    "canary_settings_changed",
    "flock_settings_changed",
    "network_settings_rollback",
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(MEANINGFUL)
)
keys = st.sampled_from(TOP_LEVEL_KEYS + AUDIT_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=8,
)
objects = st.dictionaries(keys, json_values, max_size=10)
audits = st.builds(
    lambda body, extra: {**extra, "type": "console-audit", "payload": body},
    st.dictionaries(st.sampled_from(AUDIT_KEYS) | st.text(max_size=8), json_values) | json_values,
    objects,
)
SAMPLE_PAYLOADS = {path.name: json.loads(path.read_bytes()) for path in SAMPLES.glob("*.json")}
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(raw: bytes) -> CanaryEvent | None:
    """Parse `raw`; a PayloadError is a fine answer, any other exception fails the test."""
    try:
        event = parse_event(raw, received_at=RECEIVED)
    except PayloadError:
        return None
    assert event.raw is raw
    assert isinstance(event.kind, EventKind)
    assert event.operation in OPERATIONS
    if event.kind is not EventKind.OPERATIONAL:
        assert event.operation is None
    assert SAFE_ID.fullmatch(event.id)
    assert HEX32.fullmatch(event.fingerprint)
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.canary_port is None or 0 <= event.canary_port <= 65535
    assert event.triggered is None or 0 <= event.triggered < 2**31
    assert event.log_type is None or -(2**63) <= event.log_type < 2**63
    assert event.timestamp == event.received_at or (
        EARLIEST <= event.timestamp <= event.received_at + timedelta(days=30)
    )
    assert all(isinstance(d.key, str) and isinstance(d.value, str) for d in event.details)
    data = event.to_dict()
    # The json format adds the payload beside the event; an output may wrap it once more.
    encoded = orjson.dumps({"wrapper": {**data, "payload": event.payload}})
    assert orjson.loads(encoded)["wrapper"]["id"] == event.id
    return event


@FUZZ
@given(payload=objects, ascii_only=st.booleans())
def test_fuzz_any_json_object_is_an_event(payload: dict[str, Any], ascii_only: bool) -> None:
    raw = json.dumps(payload, ensure_ascii=ascii_only).encode()
    assert check(raw) is not None


@FUZZ
@given(payload=audits)
def test_fuzz_audit_posts(payload: dict[str, Any]) -> None:
    event = check(json.dumps(payload).encode())
    assert event is not None
    assert event.kind is EventKind.AUDIT
    assert event.audit is not None


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLE_PAYLOADS)), key=keys, value=json_values)
def test_fuzz_one_field_of_a_sample_replaced(name: str, key: str, value: Any) -> None:
    payload = {**SAMPLE_PAYLOADS[name], key: value}
    assert check(json.dumps(payload).encode()) is not None


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLE_PAYLOADS)), data=st.data())
def test_fuzz_damaged_samples(name: str, data: st.DataObject) -> None:
    raw = bytearray((SAMPLES / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(("flip", "insert", "delete")))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[at]
    check(bytes(raw))


@settings(FUZZ, max_examples=40)
@given(payload=objects)
def test_fuzz_key_order_never_changes_identity(payload: dict[str, Any]) -> None:
    forward = check(json.dumps(payload).encode())
    backward = check(json.dumps(dict(reversed(list(payload.items()))), indent=1).encode())
    assert forward is not None and backward is not None
    assert (forward.id, forward.fingerprint) == (backward.id, backward.fingerprint)


@FUZZ
@given(text=st.text(max_size=40) | st.sampled_from(MEANINGFUL))
def test_fuzz_parse_timestamp_never_raises(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed is None or parsed.utcoffset() == timedelta(0)


@FUZZ
@given(
    moment=st.datetimes(
        min_value=datetime(1990, 1, 1),  # hypothesis wants naive bounds
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda moment: moment.replace(microsecond=0)),
    style=st.sampled_from(("webhook", "api", "iso", "epoch", "epoch-ms", "opencanary")),
)
def test_fuzz_every_console_format_round_trips(moment: datetime, style: str) -> None:
    text = {
        "webhook": f"{moment:%Y-%m-%d %H:%M:%S} (UTC)",
        "api": f"{moment:%Y-%m-%d %H:%M:%S} UTC+0000",
        "iso": moment.isoformat(),
        "epoch": str(int(moment.timestamp())),
        "epoch-ms": str(int(moment.timestamp()) * 1000),
        "opencanary": f"{moment:%Y-%m-%d %H:%M:%S}.000000",
    }[style]
    if len(text) < {"epoch": 9, "epoch-ms": 13}.get(style, 0):
        # Before 1973 (seconds) or 2001 (milliseconds) an epoch is too short to tell from
        # other numbers: 12 digits are also YYYYMMDDhhmm.
        assert parse_timestamp(text) is None or style == "epoch"
        return
    assert parse_timestamp(text) == moment
