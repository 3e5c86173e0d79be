"""Sample events and Hypothesis strategies for hostile Canary payloads, shared by format tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from forwarder.events import CanaryEvent, parse_event

__all__ = [
    "OTHER_BREAKS",
    "RECEIVED_AT",
    "SAMPLES",
    "event_from",
    "events",
    "hostile_text",
    "sample_event",
    "sample_names",
]

SAMPLES = Path(__file__).parent.parent / "samples"
RECEIVED_AT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

# What every format turns into a space: controls other than CR/LF, DEL, C1, U+2028, U+2029.
OTHER_BREAKS = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")

# Everything that has broken a log format somewhere: separators and escapes of every format,
# line breaks of every kind, controls, and text outside ASCII.
_NASTY = [
    "\n", "\r", "\r\n", "|", "=", "\\", "]", "[", '"', " ", "  ", "\t", "\x00", "\x1b", "\x7f",
    "\x85", "\u2028", "\u2029", "\ufeff", "^", "é", "€", "😀", "\\n", "\\=", "a=b", "CEF:0|",
    "LEEF:2.0|", "<13>1 ", "x]", '\\"',
]  # fmt: skip

hostile_text = st.lists(st.one_of(st.sampled_from(_NASTY), st.text(max_size=6)), max_size=8).map(
    "".join
)

# AdditionalDetails keys the formats pick fields from, plus arbitrary ones.
_DETAIL_KEYS = [
    "Username", "User", "User-Agent", "user-agent", "Path", "URL", "Filename", "Hostname",
    "Src Port", "Dst Port", "Domain", "Host", "Background Context", "Password", "Settings",
]  # fmt: skip

_addresses = st.one_of(
    st.sampled_from(
        ["10.0.0.1", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.1", "", "abc.canary.tools"]
    ),
    st.ip_addresses().map(str),
    hostile_text,
)
_ports = st.one_of(st.integers(-1, 70000), st.sampled_from(["22", "-1", "x"]), st.none())
_log_types = st.one_of(
    st.none(), st.sampled_from(["2000", "4002", "5007", "16000", "17000", "23001", 111111, "x"])
)
_detail_values = st.one_of(hostile_text, st.integers(-1, 70000), st.sampled_from(["80", "443"]))
_details = st.lists(
    st.tuples(st.one_of(st.sampled_from(_DETAIL_KEYS), hostile_text), _detail_values).map(list),
    max_size=6,
)
_timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S (UTC)")
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def _incident(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "Description": draw(hostile_text),
        "Timestamp": draw(_timestamps),
        "CanaryName": draw(_optional(hostile_text)),
        "CanaryID": draw(_optional(hostile_text)),
        "CanaryIP": draw(_optional(_addresses)),
        "CanaryPublicIP": draw(_optional(_addresses)),
        "CanaryLocation": draw(_optional(hostile_text)),
        "CanaryPort": draw(_ports),
        "SourceIP": draw(_optional(_addresses)),
        "ReverseDNS": draw(_optional(hostile_text)),
        "IncidentHash": draw(_optional(hostile_text)),
        "IncidentKey": draw(_optional(hostile_text)),
        "Flock": draw(_optional(hostile_text)),
        "Intro": draw(hostile_text),
        "AdditionalDetails": draw(_details),
        "AlertType": draw(st.sampled_from(["CanaryIncident", None])),
        "LogType": draw(_log_types),
    }


@st.composite
def _token(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "Description": draw(hostile_text),
        "Timestamp": draw(_timestamps),
        "Reminder": draw(hostile_text),
        "Token": draw(hostile_text),
        "SourceIP": draw(_optional(_addresses)),
        "IncidentHash": draw(_optional(hostile_text)),
        "Intro": draw(hostile_text),
        "AdditionalDetails": draw(_details),
        "AlertType": "CanarytokenIncident",
        "Triggered": draw(st.one_of(st.integers(0, 99), st.just("3"))),
        "LogType": draw(st.sampled_from(["16000", "17000", "17012", None])),
    }


@st.composite
def _audit(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "type": "console-audit",
        "payload": {
            "timestamp": "2026-02-02T14:12:34+00:00",
            "message": draw(hostile_text),
            "action_type": draw(
                st.one_of(st.sampled_from(["user_login", "canarytoken_create"]), hostile_text)
            ),
            "flock_id": draw(_optional(hostile_text)),
            "flock_name": draw(_optional(hostile_text)),
            "user": draw(_optional(hostile_text)),
            "user_ip": draw(_optional(_addresses)),
            "user_browser_agent": draw(_optional(hostile_text)),
            "user_browser_language": draw(_optional(hostile_text)),
            "user_access_route": draw(_optional(hostile_text)),
        },
    }


def _without_none(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if value is not None}


payloads = st.one_of(_incident().map(_without_none), _token().map(_without_none), _audit())


def event_from(payload: dict[str, Any]) -> CanaryEvent:
    """The event for a payload, as the daemon would parse it."""
    return parse_event(orjson.dumps(payload), received_at=RECEIVED_AT)


events = payloads.map(event_from)


def sample_names() -> list[str]:
    """Every payload in tests/samples, by file stem."""
    return sorted(path.stem for path in SAMPLES.glob("*.json"))


def sample_event(name: str) -> CanaryEvent:
    """The parsed event of tests/samples/<name>.json."""
    return parse_event((SAMPLES / f"{name}.json").read_bytes(), received_at=RECEIVED_AT)
