"""Helpers shared by the tests of forwarder.events (tests/test_events*.py)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from forwarder.events import CanaryEvent, parse_event

SAMPLES = Path(__file__).parent / "samples"
RECEIVED = datetime(2026, 4, 1, 12, 0, 0, tzinfo=UTC)
HEX32 = re.compile(r"[0-9a-f]{32}")
SAFE_ID = re.compile(r"[A-Za-z0-9:._@-]{1,200}")
AUDIT_BODY = {"timestamp": "2026-02-02T14:12:34+00:00", "action_type": "user_login"}


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def sha32(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def parse(data: dict[str, Any] | bytes) -> CanaryEvent:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return parse_event(raw, received_at=RECEIVED)


def load(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def incident(**fields: Any) -> dict[str, Any]:
    """A well-formed FTP incident, with `fields` replaced (None removes the key)."""
    base: dict[str, Any] = {
        "Description": "FTP Login Attempt",
        "Timestamp": "2026-02-02 14:19:02 (UTC)",
        "CanaryName": "ftp-01",
        "CanaryID": "000123456789abcd",
        "CanaryIP": "192.0.2.10",
        "SourceIP": "198.51.100.5",
        "CanaryLocation": "Rack 1",
        "ReverseDNS": "",
        "CanaryPort": 21,
        "IncidentHash": "00112233445566778899aabbccddeeff",
        "Intro": "FTP Login Attempt has been detected against one of your Canaries (ftp-01).",
        "AdditionalDetails": [["Username", "admin"], ["Password", "*******"]],
        "AlertType": "CanaryIncident",
        "LogType": "2000",
        "MatchedAnnotations": "{}",
    }
    for key, value in fields.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base
