"""The typed Canary event: every payload the console posts, with every quirk normalised here, once.

Mappers read a `CanaryEvent`, never raw JSON keys. The raw body is kept byte-exact in
`CanaryEvent.raw` so no record ever loses what the console sent.

The classification order and the quirks list follow the public Canary webhook documents and
payloads captured by other integrations (see docs/canary-payloads.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import orjson

__all__ = [
    "AuditRecord",
    "CanaryEvent",
    "Detail",
    "EventKind",
    "PayloadError",
    "canonical_ip",
    "decode_json_object",
    "is_ip",
    "is_ipv6",
    "iso_ms",
    "log_type_name",
    "merge_details",
    "parse_event",
    "parse_timestamp",
]

TEST_LOG_TYPE = 111111
TEST_CANARY_ID = "0000000testnode"
TEST_DESCRIPTIONS = frozenset({"Fake Location", "Dummy Incident"})
CONNECTION_LOG_TYPE = 1004
# Deepest nesting of arrays and objects accepted in a body (a Canary payload is 3 deep). orjson
# reads up to 1024 levels but writes only 254, and the event is wrapped again by to_dict(),
# the json format and the outputs, so anything deeper is refused up front.
MAX_NESTING = 64

# LogTypes the console uses for alerts about the Canary fleet itself rather than an attacker.
_OPERATIONAL_LOG_TYPES: Mapping[int, str] = {
    22001: "network_settings_rollback",
    22011: "network_settings_rollback",
    23001: "console_settings_changed",
    23002: "canary_settings_changed",
    23003: "flock_settings_changed",
}
# Disconnect and reconnect share LogType 1004 (and real payloads often omit it), so the
# direction can only come from the words. Description is a fixed string chosen by the console;
# Intro also carries the Canary's name, which an admin chooses, so it is read only as a last
# resort (see `_classify`).
_OPERATION_WORDS: tuple[tuple[str, str], ...] = (
    ("reconnected", "reconnected"),
    ("disconnected", "disconnected"),
    ("console settings changed", "console_settings_changed"),
    ("canary settings changed", "canary_settings_changed"),
    ("device settings changed", "canary_settings_changed"),
    ("flock settings changed", "flock_settings_changed"),
    ("roll-back", "network_settings_rollback"),
    ("rollback", "network_settings_rollback"),
)

_CONNECTION_OPERATIONS = frozenset({"reconnected", "disconnected"})

# Top-level keys this module reads; anything else is kept in `CanaryEvent.extra`.
_KNOWN_KEYS = frozenset(
    {
        "Description", "Timestamp", "CanaryName", "CanaryID", "CanaryIP", "CanaryPublicIP",
        "CanaryLocation", "CanaryPort", "SourceIP", "ReverseDNS", "IncidentHash", "IncidentKey",
        "Intro", "AdditionalDetails", "AlertType", "LogType", "MatchedAnnotations", "Flock",
        "Token", "Reminder", "Triggered",
    }
)  # fmt: skip

_AUDIT_KEYS = frozenset({"type", "payload"})

_SAFE_ID = re.compile(r"[A-Za-z0-9:._@-]{1,200}")
# At most 18 digits, so int() never meets a long string (slow, then refused past
# sys.int_max_str_digits) and every value it gives fits a signed 64-bit field.
_INTEGER = re.compile(r"\s*-?[0-9]{1,18}\s*", re.ASCII)
# Integer fields end up in typed SIEM fields (ECS `long`, CEF and LEEF numbers), all signed
# 64-bit at most; orjson alone would hand over anything up to 2**64 - 1.
_INT64 = (-(2**63), 2**63 - 1)
# A count is never negative, and CEF's `cnt` is an ArcSight Integer (signed 32-bit).
_COUNT = (0, 2**31 - 1)
# Every LogType the console or OpenCanary defines is positive; a negative one would become a
# CEF signature id, a LEEF event id and an ECS event.code that no SIEM rule expects.
_LOG_TYPE = (0, _INT64[1])
# -1 is the console's "no port" (tampering, scans); it is turned into None, not a quirk.
_PORT = (-1, 65535)
_EPOCH_SECONDS = re.compile(r"[0-9]{9,11}(\.[0-9]+)?")
# 13 digits only: as milliseconds 12 digits would be before 2001-09-09, older than any Canary,
# and they are just as likely a compact YYYYMMDDhhmm (see `parse_timestamp`).
_EPOCH_MILLISECONDS = re.compile(r"[0-9]{13}(\.[0-9]+)?")
# The event time every SIEM can use (see `_timestamp`).
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME_AHEAD = timedelta(days=30)


class EventKind(StrEnum):
    """What the console was telling us about."""

    INCIDENT = "incident"
    CANARYTOKEN = "canarytoken"
    AUDIT = "audit"
    TEST = "test"
    OPERATIONAL = "operational"
    UNKNOWN = "unknown"


class PayloadError(ValueError):
    """The body is not something any Canary console could have sent (not a JSON object)."""


@dataclass(frozen=True, slots=True)
class Detail:
    """One AdditionalDetails entry. Numbers are kept as their decimal text."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """The `payload` of a `console-audit` post."""

    action_type: str
    message: str
    user: str | None
    user_ip: str | None
    user_agent: str | None
    user_language: str | None
    access_route: str | None
    flock_id: str | None
    flock_name: str | None


@dataclass(slots=True)
class CanaryEvent:
    """One Canary post, classified and normalised. Read-only by contract.

    Not a frozen dataclass on purpose: a frozen one takes twice as long to build, and one is
    built per post at ingest. The same instance is handed to every output's mapper, so a mapper
    must never modify it (tests/mappers/test_purity.py checks every built-in one).

    `id` is the Canary identity of the event (IncidentHash, else IncidentKey, else a content
    hash); `fingerprint` is the hash of the canonical payload, so two posts of the same incident
    with different contents (a token triggered again) stay distinct records downstream.
    """

    id: str
    fingerprint: str
    kind: EventKind
    received_at: datetime
    timestamp: datetime
    description: str
    intro: str
    raw: bytes
    payload: Mapping[str, Any]
    operation: str | None = None
    timestamp_raw: str | None = None
    log_type: int | None = None
    log_type_raw: str | None = None
    log_type_name: str | None = None
    alert_type: str | None = None
    canary_name: str | None = None
    canary_id: str | None = None
    canary_ip: str | None = None
    canary_public_ip: str | None = None
    canary_location: str | None = None
    canary_port: int | None = None
    flock: str | None = None
    source_ip: str | None = None
    reverse_dns: str | None = None
    incident_hash: str | None = None
    incident_key: str | None = None
    token: str | None = None
    reminder: str | None = None
    triggered: int | None = None
    details: tuple[Detail, ...] = ()
    annotations: Mapping[str, Any] = field(default_factory=dict)
    audit: AuditRecord | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    quirks: tuple[str, ...] = ()

    def detail(self, *keys: str) -> str | None:
        """The first value among `keys` (exact, then case-insensitive), or None."""
        for key in keys:
            for item in self.details:
                if item.key == key:
                    return item.value
        lowered = {key.lower() for key in keys}
        for item in self.details:
            if item.key.lower() in lowered:
                return item.value
        return None

    def details_dict(self) -> dict[str, str | list[str]]:
        """AdditionalDetails as a mapping; a key seen more than once maps to a list of values."""
        return merge_details(self.details)

    def canary_fields(self) -> dict[str, Any]:
        """The bird's fields, as `to_dict` and the ECS format's `thinkst_canary` name them."""
        return {
            "name": self.canary_name,
            "id": self.canary_id,
            "ip": self.canary_ip,
            "public_ip": self.canary_public_ip,
            "location": self.canary_location,
            "port": self.canary_port,
            "flock": self.flock,
        }

    def token_fields(self) -> dict[str, Any]:
        return {"id": self.token, "reminder": self.reminder, "triggered": self.triggered}

    def audit_fields(self) -> dict[str, Any] | None:
        audit = self.audit
        if audit is None:
            return None
        return {
            "action_type": audit.action_type,
            "message": audit.message,
            "user": audit.user,
            "user_ip": audit.user_ip,
            "user_agent": audit.user_agent,
            "user_language": audit.user_language,
            "access_route": audit.access_route,
            "flock_id": audit.flock_id,
            "flock_name": audit.flock_name,
        }

    def to_dict(self) -> dict[str, Any]:
        """The normalised event as plain JSON-ready data (the `json` format's body)."""
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "kind": self.kind.value,
            "operation": self.operation,
            "timestamp": iso_ms(self.timestamp),
            "received_at": iso_ms(self.received_at),
            "log_type": self.log_type,
            "log_type_name": self.log_type_name,
            "alert_type": self.alert_type,
            "description": self.description,
            "intro": self.intro,
            "canary": self.canary_fields(),
            "source": {"ip": self.source_ip, "reverse_dns": self.reverse_dns},
            "incident_hash": self.incident_hash,
            "incident_key": self.incident_key,
            "token": self.token_fields(),
            "details": self.details_dict(),
            "annotations": dict(self.annotations),
            "audit": self.audit_fields(),
            "extra": dict(self.extra),
            "quirks": list(self.quirks),
        }


def merge_details(details: Iterable[Detail]) -> dict[str, str | list[str]]:
    """Detail pairs as a mapping; a key seen more than once maps to a list of values."""
    merged: dict[str, str | list[str]] = {}
    for item in details:
        seen = merged.get(item.key)
        if seen is None:
            merged[item.key] = item.value
        elif isinstance(seen, list):
            seen.append(item.value)
        else:
            merged[item.key] = [seen, item.value]
    return merged


@cache
def _log_type_table() -> Mapping[int, str]:
    text = resources.files("forwarder").joinpath("data/logtypes.json").read_text("utf-8")
    return {int(code): name for code, name in json.loads(text).items() if code.isdigit()}


def log_type_name(code: int | None) -> str | None:
    """The commercial console's name for a LogType, or None when unknown."""
    return None if code is None else _log_type_table().get(code)


def parse_event(
    raw: bytes, *, received_at: datetime, fingerprint: str | None = None
) -> CanaryEvent:
    """Decode, classify and normalise one webhook body.

    `fingerprint` is the one the store recorded when ingest parsed this body: delivery passes
    it to save hashing the canonical payload again (about a tenth of a parse).

    Raises:
        PayloadError: the body is not UTF-8 JSON holding an object. Everything else, however
            odd, becomes an event (kind `unknown` at worst) so nothing the console sent is lost.
    """
    payload = decode_json_object(raw)
    received_at = _utc(received_at)
    quirks: list[str] = []
    if fingerprint is None:
        fingerprint = _fingerprint(payload, raw)
    if payload.get("type") == "console-audit":
        return _parse_audit(payload, raw, fingerprint, received_at, quirks)
    return _parse_alert(payload, raw, fingerprint, received_at, quirks)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or PayloadError saying why not.

    Refused: bytes that are not UTF-8, text that is not strict JSON (NaN, a BOM, a raw control
    character in a string, an escaped lone surrogate), a JSON value that is not an object, and
    nesting deeper than `MAX_NESTING`. An escaped NUL (`\\u0000`) is valid JSON and accepted.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"body is JSON {type(payload).__name__}, not an object")
    # A body cannot nest deeper than it has brackets; counting them is cheap, walking is not.
    openers = raw.count(b"[") + raw.count(b"{")
    if openers > MAX_NESTING and _too_deep(payload, MAX_NESTING):
        raise PayloadError(f"body nests arrays and objects more than {MAX_NESTING} deep")
    return payload


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests lists and dicts deeper than `limit` (iterative, no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


# A number with more digits than a double keeps (a 64-bit integer has at most 20): orjson reads it
# rounded to a double, so two bodies that differ only there had one canonical form, and the
# second was answered "duplicate" and dropped. Digits after ':', '[' or ',' begin a number
# (inside a string they only make the match a harmless false one).
_LONG_NUMBER = re.compile(rb"[:\[,]\s*(-?\d[\d.]{15,})")
# The cheap test first (2 µs against 11 for the search, on a typical incident): a run of 16
# digits or points anywhere, after every byte is mapped to '0' (one of those) or ' '.
_DIGIT_OR_POINT = bytes(0x30 if byte in b"0123456789." else 0x20 for byte in range(256))
_SIXTEEN = b"0" * 16


def _fingerprint(payload: Mapping[str, Any], raw: bytes) -> str:
    """What the store's dedupe compares: the canonical form, so that the same event posted
    again with other spacing or key order matches; with the long numbers as written, sorted,
    where the decode may have rounded them."""
    source = _canonical(payload)
    if _SIXTEEN in raw.translate(_DIGIT_OR_POINT):
        long_numbers = sorted(match[1] for match in _LONG_NUMBER.finditer(raw))
        if long_numbers:
            source += b"\n" + b" ".join(long_numbers)
    return hashlib.sha256(source).hexdigest()[:32]


def _canonical(payload: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # not reachable for decoded JSON; kept as a backstop
        raise PayloadError(f"body cannot be re-encoded: {exc}") from None


def _parse_audit(
    payload: Mapping[str, Any],
    raw: bytes,
    fingerprint: str,
    received_at: datetime,
    quirks: list[str],
) -> CanaryEvent:
    body = payload.get("payload")
    if not isinstance(body, Mapping):
        quirks.append("audit payload is not an object")
        body = {}
    audit = AuditRecord(
        action_type=_text(body.get("action_type")) or "unknown",
        message=_text(body.get("message")) or "",
        user=_text(body.get("user")),
        user_ip=_text(body.get("user_ip")),
        user_agent=_text(body.get("user_browser_agent")),
        user_language=_text(body.get("user_browser_language")),
        access_route=_text(body.get("user_access_route")),
        flock_id=_text(body.get("flock_id")),
        flock_name=_text(body.get("flock_name")),
    )
    timestamp_raw = _text(body.get("timestamp"))
    timestamp = _timestamp(timestamp_raw, received_at, quirks)
    return CanaryEvent(
        id=fingerprint,
        fingerprint=fingerprint,
        kind=EventKind.AUDIT,
        received_at=received_at,
        timestamp=timestamp,
        timestamp_raw=timestamp_raw,
        description=f"Audit: {audit.action_type}",
        intro=audit.message,
        raw=raw,
        payload=payload,
        flock=audit.flock_id,
        source_ip=audit.user_ip,
        audit=audit,
        extra=_extra(payload, _AUDIT_KEYS),
        quirks=tuple(quirks),
    )


def _parse_alert(
    payload: Mapping[str, Any],
    raw: bytes,
    fingerprint: str,
    received_at: datetime,
    quirks: list[str],
) -> CanaryEvent:
    log_type_raw = payload.get("LogType")
    log_type = _integer(log_type_raw, "LogType", quirks, bounds=_LOG_TYPE)
    description = _text(payload.get("Description")) or ""
    intro = _text(payload.get("Intro")) or ""
    alert_type = _text(payload.get("AlertType"))
    kind, operation = _classify(payload, alert_type, log_type, description, intro)
    if kind is EventKind.UNKNOWN:
        quirks.append("payload matches no known Canary event shape")
    timestamp_raw = _text(payload.get("Timestamp"))
    incident_hash = _text(payload.get("IncidentHash"))
    incident_key = _text(payload.get("IncidentKey"))
    return CanaryEvent(
        id=_stable_id(incident_hash, incident_key, fingerprint),
        fingerprint=fingerprint,
        kind=kind,
        operation=operation,
        received_at=received_at,
        timestamp=_timestamp(timestamp_raw, received_at, quirks),
        timestamp_raw=timestamp_raw,
        description=description or (log_type_name(log_type) or "Unknown Canary event"),
        intro=intro,
        raw=raw,
        payload=payload,
        log_type=log_type,
        log_type_raw=_raw_text(log_type_raw),
        log_type_name=log_type_name(log_type),
        alert_type=alert_type,
        canary_name=_text(payload.get("CanaryName")),
        canary_id=_text(payload.get("CanaryID")),
        canary_ip=_text(payload.get("CanaryIP")),
        canary_public_ip=_text(payload.get("CanaryPublicIP")),
        canary_location=_text(payload.get("CanaryLocation")),
        canary_port=_port(payload.get("CanaryPort"), quirks),
        flock=_text(payload.get("Flock")),
        source_ip=_text(payload.get("SourceIP")),
        reverse_dns=_text(payload.get("ReverseDNS")),
        incident_hash=incident_hash,
        incident_key=incident_key,
        token=_text(payload.get("Token")),
        reminder=_text(payload.get("Reminder")),
        triggered=_integer(payload.get("Triggered"), "Triggered", quirks, bounds=_COUNT),
        details=_details(payload.get("AdditionalDetails"), quirks),
        annotations=_annotations(payload.get("MatchedAnnotations"), quirks),
        extra=_extra(payload, _KNOWN_KEYS),
        quirks=tuple(quirks),
    )


def _extra(payload: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The top-level keys this module does not read, in the payload's order."""
    if payload.keys() <= known:  # the usual case, checked in C
        return {}
    return {k: v for k, v in payload.items() if k not in known}


def _classify(
    payload: Mapping[str, Any],
    alert_type: str | None,
    log_type: int | None,
    description: str,
    intro: str,
) -> tuple[EventKind, str | None]:
    if alert_type == "CanarytokenIncident" or "Token" in payload:
        return EventKind.CANARYTOKEN, None
    if (
        log_type == TEST_LOG_TYPE
        or payload.get("CanaryID") == TEST_CANARY_ID
        or description in TEST_DESCRIPTIONS
    ):
        return EventKind.TEST, None
    if log_type is not None and log_type in _OPERATIONAL_LOG_TYPES:
        # The code is definitive, whatever AlertType says: settings changes and roll-backs
        # arrive as AlertType "CanaryIncident" but are about the fleet, not an attacker.
        return EventKind.OPERATIONAL, _OPERATIONAL_LOG_TYPES[log_type]
    if log_type is None or log_type == CONNECTION_LOG_TYPE or log_type_name(log_type) is None:
        # No code, the shared disconnect/reconnect code, or a code newer than our table: the
        # console's fixed Description decides; the Intro (which embeds the Canary's name) only
        # when no AlertType says it is an incident, or the code says it is a connection change.
        connection = log_type == CONNECTION_LOG_TYPE
        operation = _operation_words(description, connection_only=connection)
        if operation is None and (connection or alert_type is None):
            # Without the Canary's name: an admin may call one "db-rollback-01".
            name = payload.get("CanaryName")
            console_words = intro.replace(name, " ") if isinstance(name, str) and name else intro
            operation = _operation_words(console_words, connection_only=connection)
        if operation is not None or connection:
            return EventKind.OPERATIONAL, operation
    if alert_type == "CanaryIncident":
        return EventKind.INCIDENT, None
    if description or intro:
        # No AlertType but the incident fields are there: an older or undocumented incident.
        return EventKind.INCIDENT if "CanaryID" in payload else EventKind.UNKNOWN, None
    return EventKind.UNKNOWN, None


def _operation_words(text: str, *, connection_only: bool) -> str | None:
    words = text.lower()
    for needle, operation in _OPERATION_WORDS:
        if connection_only and operation not in _CONNECTION_OPERATIONS:
            continue
        if needle in words:
            return operation
    return None


def _stable_id(incident_hash: str | None, incident_key: str | None, fingerprint: str) -> str:
    """IncidentHash, else IncidentKey, else the content fingerprint.

    The first one present is used even when it has odd characters: it would end up in an
    Elasticsearch _id and in HEC fields, so it is replaced by a hash of itself, which stays
    stable across posts of the same incident.
    """
    candidate = incident_hash or incident_key
    if candidate is None:
        return fingerprint
    if _SAFE_ID.fullmatch(candidate):
        return candidate
    return hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _text(value: Any) -> str | None:
    """Text for a scalar field; "" and JSON null become None, numbers their decimal."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _raw_text(value: Any) -> str | None:
    """A field as the console wrote it: strings as they are, anything else as JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _integer(
    value: Any, name: str, quirks: list[str], *, bounds: tuple[int, int] = _INT64
) -> int | None:
    """A JSON integer or a string of ASCII digits, within `bounds` (both ends included).

    Anything else is unreadable: None and a quirk, the value staying as sent in the payload.
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        quirks.append(f"{name} is not an integer: {value!r:.80}")
        return None
    if bounds[0] <= number <= bounds[1]:
        return number
    # orjson gives at most 20 digits, so the number itself is short enough to quote.
    quirks.append(f"{name} out of range: {number}")
    return None


def _port(value: Any, quirks: list[str]) -> int | None:
    port = _integer(value, "CanaryPort", quirks, bounds=_PORT)
    return None if port == -1 else port


def _details(value: Any, quirks: list[str]) -> tuple[Detail, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, Mapping):
        return tuple(Detail(str(k), _detail_value(v)) for k, v in value.items())
    if not isinstance(value, list):
        quirks.append("AdditionalDetails is neither a list nor an object")
        return (Detail("AdditionalDetails", _detail_value(value)),)
    details: list[Detail] = []
    for index, entry in enumerate(value):
        if type(entry) is list and len(entry) == 2 and type(entry[0]) is type(entry[1]) is str:
            details.append(Detail(entry[0], entry[1]))  # the usual shape, fast
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            details.append(Detail(_detail_value(entry[0]), _detail_value(entry[1])))
        elif isinstance(entry, list | tuple) and len(entry) == 1:
            quirks.append(f"AdditionalDetails[{index}] has a key and no value")
            details.append(Detail(_detail_value(entry[0]), ""))
        elif isinstance(entry, list | tuple) and len(entry) > 2:
            quirks.append(f"AdditionalDetails[{index}] has {len(entry)} elements")
            rest = orjson.dumps(list(entry[1:])).decode()
            details.append(Detail(_detail_value(entry[0]), rest))
        else:
            quirks.append(f"AdditionalDetails[{index}] is not a [key, value] pair")
            details.append(Detail(f"entry{index}", _detail_value(entry)))
    return tuple(details)


def _detail_value(value: Any) -> str:
    text = _text(value)
    return "" if text is None else text


def _annotations(value: Any, quirks: list[str]) -> Mapping[str, Any]:
    # "{}" is what the webhook sends for no annotations: no need to decode it.
    if value is None or value == "" or value == "{}":
        return {}
    if isinstance(value, str):
        text = value
        try:
            # orjson, not json: it refuses lone surrogates (which no encoder can write back
            # out) and deep nesting without a RecursionError.
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            quirks.append("MatchedAnnotations is a string that is not JSON")
            return {"text": text}
        if _too_deep(value, MAX_NESTING):
            quirks.append("MatchedAnnotations nests too deeply")
            return {"text": text}
    if isinstance(value, Mapping):
        return dict(value)
    quirks.append("MatchedAnnotations is not an object")
    return {"value": value}


# Formats without a zone are UTC: that is what the console and OpenCanary write. (No `%Z`:
# strptime would also accept the local zone's name and then drop it.)
_CONSOLE_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} \(UTC\)")
_TIMESTAMP_FORMATS = (
    "%Y-%m-%d %H:%M:%S (UTC)",
    "%Y-%m-%d %H:%M:%S UTC%z",
    "%Y-%m-%d %H:%M:%S UTC",
    "%Y-%m-%d %H:%M:%S GMT",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
)


def parse_timestamp(text: str) -> datetime | None:
    """Every timestamp shape the console uses, as an aware UTC datetime; None if unreadable.

    Digits alone (with an optional fraction) are an epoch, told apart by their count: 9 to 11
    digits are seconds (1973-03-03 to 5138), 13 digits milliseconds (2001-09-09 to 2286). Any
    other count is unreadable: 12 digits in particular, which would be milliseconds before
    2001 (older than any Canary) but are as likely a compact YYYYMMDDhhmm, a shape the console
    does not use (nor YYYYMMDDhhmmss). Eight digits are an ISO 8601 basic date (`20261127`).

    This reads shapes only. Whether the time is plausible for an event is `parse_event`'s
    call: see `EARLIEST_EVENT_TIME` and `MAX_EVENT_TIME_AHEAD`.
    """
    text = text.strip()
    try:
        if _CONSOLE_STAMP.fullmatch(text):  # the incident format, by far the most common
            # The offset in the text, not `.replace(tzinfo=UTC)`, which costs four times more.
            return datetime.fromisoformat(text[:19] + "+00:00")
        if _EPOCH_SECONDS.fullmatch(text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        if _EPOCH_MILLISECONDS.fullmatch(text):
            return datetime.fromtimestamp(float(text) / 1000, tz=UTC)
        # ISO 8601 (audit records) first: C-fast, and the strptime shapes below never parse
        # as ISO, so the order changes nothing but the cost.
        with contextlib.suppress(ValueError):
            return _utc(datetime.fromisoformat(text))
        for fmt in _TIMESTAMP_FORMATS:
            try:
                parsed = datetime.strptime(text, fmt)
            except ValueError:
                continue
            return _utc(parsed)
        return None
    except (ValueError, OverflowError, OSError):
        # OverflowError: a valid stamp next to year 1 or 9999 whose offset moves it out of range.
        return None


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _timestamp(text: str | None, received_at: datetime, quirks: list[str]) -> datetime:
    """The event time, or `received_at` (with a quirk) when there is none a SIEM can use.

    Usable means from `EARLIEST_EVENT_TIME` (1970-01-01) to `MAX_EVENT_TIME_AHEAD` (30 days)
    after `received_at`. Before 1970, CEF `rt`, LEEF `devTime`, HEC `time` and the Thinkst
    syslog layout would carry a negative epoch, which SIEMs refuse or misread. A time in the
    future files the alert where no search for recent events finds it; the allowance is wide
    because the forwarder's own clock is likelier to be wrong than the console's, and an
    event time that is days ahead of it is then right. Garbage (year 2999, an 11-digit epoch)
    is years out. `timestamp_raw` and the payload keep the text as it was sent.
    """
    if text is None:
        quirks.append("no timestamp; using the time it was received")
        return received_at
    parsed = parse_timestamp(text)
    if parsed is None:
        quirks.append(f"unreadable timestamp {text!r:.80}; using the time it was received")
        return received_at
    if parsed < EARLIEST_EVENT_TIME:
        quirks.append(f"timestamp {text!r:.80} is before 1970; using the time it was received")
        return received_at
    # A difference, not received_at + 30 days: that could pass year 9999 and raise.
    if parsed - received_at > MAX_EVENT_TIME_AHEAD:
        quirks.append(
            f"timestamp {text!r:.80} is more than {MAX_EVENT_TIME_AHEAD.days} days after it"
            " was received; using the time it was received"
        )
        return received_at
    return parsed


def iso_ms(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds (truncated, as `isoformat` does): `2026-03-05T08:00:01.000Z`.

    Formatted from the fields: twice as fast as `isoformat`, and every json, ECS and
    Elasticsearch record carries one or two of these.
    """
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 (faster than an f-string)
        moment.year, moment.month, moment.day,
        moment.hour, moment.minute, moment.second, moment.microsecond // 1000,
    )  # fmt: skip


def is_ip(value: str | None) -> bool:
    """True for a literal IPv4 or IPv6 address (Canary IP fields sometimes hold hostnames).

    An IPv6 zone (`fe80::1%eth0`) does not count: Python takes any text after the `%`, and
    SIEM address types (Elasticsearch's `ip`) reject the document that has one. Such a value
    is carried as text, like a hostname.
    """
    return canonical_ip(value) is not None


def canonical_ip(value: str | None) -> str | None:
    """The address `value` holds in RFC 5952's text form, or None if it holds none (see `is_ip`).

    A SIEM's address field gets the form its own parser is surest of: `::1:2:3:4:5:6:7`, which
    Python takes, is refused by some Elasticsearch 9.2 releases, and `0:1:2:3:4:5:6:7` is not.
    """
    if not value or "%" in value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # RFC 5952 §5: the IPv4 part stays dotted (Python 3.11 writes ::ffff:a00:1).
        return f"::ffff:{address.ipv4_mapped}"
    return address.compressed


def is_ipv6(value: str | None) -> bool:
    """True for a literal IPv6 address without a zone (see `is_ip`)."""
    address = canonical_ip(value)
    return address is not None and ":" in address  # only IPv6 has one
