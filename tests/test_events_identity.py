"""forwarder.events: the stable id, the per-post fingerprint, the raw bytes and to_dict()."""

from __future__ import annotations

import json
from datetime import timedelta

import orjson
import pytest

from forwarder.events import parse_event
from tests.events_support import AUDIT_BODY, HEX32, RECEIVED, incident, load, parse, sha32

# --------------------------------------------------------------------------------------------
# Identity: id and fingerprint
# --------------------------------------------------------------------------------------------


def test_id_prefers_incident_hash() -> None:
    event = parse(incident(IncidentKey="incident:ftplogin:abc:198.51.100.5:1780000000"))
    assert event.id == "00112233445566778899aabbccddeeff"
    assert event.incident_key == "incident:ftplogin:abc:198.51.100.5:1780000000"


def test_id_falls_back_to_incident_key() -> None:
    key = "incident:canarytoken:0123456789abcdef01234567:2001:db8::1:1780000000"
    event = parse(incident(IncidentHash=None, IncidentKey=key))
    assert event.id == key


def test_empty_incident_hash_counts_as_missing() -> None:
    event = parse(incident(IncidentHash="", IncidentKey="incident:devicedied:aa::1"))
    assert event.id == "incident:devicedied:aa::1"


def test_id_falls_back_to_content_hash() -> None:
    event = parse(incident(IncidentHash=None))
    assert event.id == event.fingerprint
    assert HEX32.fullmatch(event.id)


def test_a_fingerprint_given_is_used_instead_of_hashing_again() -> None:
    # Delivery passes the one the store recorded at ingest.
    body = orjson.dumps(incident(IncidentHash=None))
    first = parse_event(body, received_at=RECEIVED)
    again = parse_event(body, received_at=RECEIVED, fingerprint=first.fingerprint)
    assert again == first
    recorded = parse_event(body, received_at=RECEIVED, fingerprint="f" * 32)
    assert recorded.fingerprint == recorded.id == "f" * 32


@pytest.mark.parametrize(
    "unsafe",
    [
        "has space",
        "abc\n",  # a trailing newline must not slip through a `$` anchor
        "a/b",
        "x" * 201,
        "caf\u00e9",
        '"quoted"',
    ],
)
def test_unsafe_ids_are_hashed(unsafe: str) -> None:
    event = parse(incident(IncidentHash=unsafe))
    assert event.id == sha32(unsafe)
    assert event.incident_hash == unsafe  # the original is still there
    again = parse(incident(IncidentHash=unsafe, Triggered="2"))
    assert again.id == event.id


def test_unsafe_incident_hash_still_beats_incident_key() -> None:
    event = parse(incident(IncidentHash="a b", IncidentKey="incident:x:y::1"))
    assert event.id == sha32("a b")


def test_longest_safe_id_is_kept() -> None:
    event = parse(incident(IncidentHash="x" * 200))
    assert event.id == "x" * 200


def test_key_order_and_whitespace_do_not_change_the_fingerprint() -> None:
    payload = incident(IncidentHash=None)
    reordered = dict(reversed(list(payload.items())))
    compact = parse(orjson.dumps(payload))
    pretty = parse(json.dumps(reordered, indent=4).encode())
    escaped = parse(json.dumps(payload, ensure_ascii=True).encode())
    assert compact.fingerprint == pretty.fingerprint == escaped.fingerprint
    assert compact.id == pretty.id == compact.fingerprint
    assert compact.raw != pretty.raw


def test_nested_key_order_does_not_change_the_fingerprint() -> None:
    one = parse(incident(MatchedAnnotations={"a": {"x": 1, "y": 2}, "b": 1}))
    two = parse(incident(MatchedAnnotations={"b": 1, "a": {"y": 2, "x": 1}}))
    assert one.fingerprint == two.fingerprint


def test_retrigger_is_a_new_record_of_the_same_incident() -> None:
    first = parse_event(load("canarytoken_web_bug.json"), received_at=RECEIVED)
    payload = json.loads(load("canarytoken_web_bug.json"))
    payload["Triggered"] = "2"
    second = parse(payload)
    assert second.id == first.id == "6e03471c0ab5905579e8dbd170a7ebb0"
    assert second.fingerprint != first.fingerprint


def test_same_post_twice_has_the_same_identity() -> None:
    raw = load("test_event.json")
    first = parse_event(raw, received_at=RECEIVED)
    second = parse_event(raw, received_at=RECEIVED + timedelta(seconds=3))
    assert (first.id, first.fingerprint) == (second.id, second.fingerprint)


def test_audit_id_is_the_content_hash() -> None:
    first = parse_event(load("audit_user_login.json"), received_at=RECEIVED)
    assert first.id == first.fingerprint
    other = parse({"type": "console-audit", "payload": {**AUDIT_BODY, "user": "b@example.com"}})
    assert other.id != first.id


def test_any_value_change_changes_the_fingerprint() -> None:
    base = parse(incident())
    assert parse(incident(CanaryPort="21")).fingerprint != base.fingerprint  # "21" is not 21
    assert parse(incident(Intro="other")).fingerprint != base.fingerprint


# --------------------------------------------------------------------------------------------
# Raw bytes, to_dict
# --------------------------------------------------------------------------------------------


def test_raw_is_byte_exact() -> None:
    raw = (
        b'{ "Description" : "FTP Login Attempt",\r\n\t"Intro": "caf\\u00e9 \xe2\x98\x83",'
        b' "AlertType": "CanaryIncident", "CanaryID": "x", "LogType": 2000.0 }  \n'
    )
    event = parse(raw)
    assert event.raw == raw
    assert event.intro == "caf\u00e9 \u2603"
    assert event.payload["LogType"] == 2000.0


def test_top_level_duplicate_json_keys_last_wins_raw_keeps_both() -> None:
    raw = b'{"Description": "A", "Description": "FTP Login Attempt", "AlertType": "CanaryIncident"}'
    event = parse(raw)
    assert event.description == "FTP Login Attempt"
    assert event.raw.count(b'"Description"') == 2


def test_to_dict_shape() -> None:
    event = parse_event(load("incident_ssh_login.json"), received_at=RECEIVED)
    data = event.to_dict()
    assert set(data) == {
        "id", "fingerprint", "kind", "operation", "timestamp", "received_at", "log_type",
        "log_type_name", "alert_type", "description", "intro", "canary", "source",
        "incident_hash", "incident_key", "token", "details", "annotations", "audit", "extra",
        "quirks",
    }  # fmt: skip
    assert data["canary"] == {
        "name": "web-dmz-02",
        "id": "00034d476a2c9f22",
        "ip": "10.20.30.42",
        "public_ip": None,
        "location": "DMZ rack 3",
        "port": 22,
        "flock": None,
    }
    assert data["source"] == {"ip": "10.99.0.7", "reverse_dns": "jump01.corp.example"}
    assert data["timestamp"] == "2026-03-05T08:00:01.000Z"
    assert data["annotations"]["trufflehog_scan"][0] == "This looks like a TruffleHog scan."
    assert data["audit"] is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("123456789012345678901234567890", "123456789012345678901234567891"),
        ("0.10000000000000000001", "0.1"),
        ("-98765432109876543210", "-98765432109876543211"),
    ],
)
def test_numbers_the_decode_rounds_alike_still_tell_events_apart(one: str, other: str) -> None:
    """orjson reads such numbers as the same double: the two bodies had one fingerprint, and
    the second post was answered "duplicate" and dropped."""

    def body(number: str) -> bytes:
        return b'{"Description": "x", "CanaryID": "c", "AdditionalDetails": [["n", %s]]}' % (
            number.encode()
        )

    first, second = parse(body(one)), parse(body(other))
    assert first.fingerprint != second.fingerprint
    # Spacing and key order still do not count, long numbers or not.
    reordered = b'{ "AdditionalDetails": [["n",%s]],"CanaryID":"c","Description":"x"}'
    assert parse(reordered % one.encode()).fingerprint == first.fingerprint
