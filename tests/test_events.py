"""forwarder.events: every sample payload, field by field, and the classification order.

The expectations are written out by hand from the payload documents (see docs/canary-payloads.md);
none is computed with the code under test. Quirks, identity and hostile bodies have their own
modules (test_events_quirks.py, test_events_identity.py, test_events_hostile.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import pytest

from forwarder.events import EventKind, is_ip, log_type_name, parse_event
from tests.events_support import (
    AUDIT_BODY,
    HEX32,
    RECEIVED,
    SAFE_ID,
    SAMPLES,
    at,
    incident,
    load,
    parse,
    sha32,
)

CONTENT = "<content hash>"  # the id is the fingerprint: no IncidentHash or IncidentKey


# --------------------------------------------------------------------------------------------
# Every sample, table-driven
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: EventKind
    id: str
    timestamp: datetime
    operation: str | None = None
    log_type: int | None = None
    canary_port: int | None = None
    details: tuple[tuple[str, str], ...] = ()
    quirks: tuple[str, ...] = ()  # one substring per expected quirk, in order


SAMPLE_EXPECTATIONS: dict[str, Expect] = {
    "audit_canarytoken_create.json": Expect(EventKind.AUDIT, CONTENT, at(2026, 2, 2, 14, 12, 34)),
    "audit_user_login.json": Expect(EventKind.AUDIT, CONTENT, at(2026, 2, 2, 14, 17, 54)),
    "canarytoken_aws_key.json": Expect(
        EventKind.CANARYTOKEN,
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        at(2026, 3, 6, 10, 11, 12),
        log_type=17012,
        details=(
            ("Event Name", "GetCallerIdentity"),
            ("User-Agent", "aws-cli/2.15.0 Python/3.11"),
            ("Src Port", "51515"),
        ),
    ),
    "canarytoken_aws_key_annotated.json": Expect(
        EventKind.CANARYTOKEN,
        "a0a0a0a0b1b1b1b1c2c2c2c2d3d3d3d3",
        at(2026, 3, 13, 2, 3, 4),
        log_type=17012,
        details=(
            ("Event Name", "GetCallerIdentity"),
            ("User-Agent", "TruffleHog"),
            ("Src Port", "40112"),
        ),
    ),
    "canarytoken_dns.json": Expect(
        EventKind.CANARYTOKEN,
        "d05d05d05d05d05d05d05d05d05d05d0",
        at(2026, 3, 12, 18, 0, 1),
        log_type=16000,
        details=(
            ("Background Context", "You have had 0 incidents from 203.0.113.53 previously."),
            ("Hostname", "zyxwvutsrqponmlkjihgfedcb.canarytokens.example"),
        ),
    ),
    "canarytoken_msword_legacy.json": Expect(
        EventKind.CANARYTOKEN,
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        at(2020, 7, 21, 10, 11, 12),
        details=(
            ("Accept", "*/*"),
            ("Background Context", "You have had 4 incidents from 198.51.100.23 previously."),
            ("Dst Port", "80"),
            ("User-Agent", "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"),
        ),
    ),
    "canarytoken_web_bug.json": Expect(
        EventKind.CANARYTOKEN,
        "6e03471c0ab5905579e8dbd170a7ebb0",
        at(2026, 2, 2, 14, 12, 38),
        log_type=17000,
        details=(
            ("Accept", "text/html,..."),
            ("Accept-Encoding", "gzip, deflate"),
            ("Accept-Language", "en-GB..."),
            ("Background Context", "You have had 2 incidents from 1.1.1.1 previously."),
            ("Connection", "keep-alive"),
            ("Dst Port", "80"),
            ("Host", "example.com"),
            ("Src Port", "64487"),
            ("Upgrade-Insecure-Requests", "1"),
            ("User-Agent", "Mozilla/5.0 ..."),
        ),
    ),
    "incident_details_dict.json": Expect(
        EventKind.INCIDENT,
        "5010501050105010aaaabbbbccccdddd",
        at(2026, 3, 14, 12),
        log_type=5010,
        canary_port=445,
        details=(
            ("LoginType", "NTLM"),
            ("Success", "0"),
            ("User", "svc-backup"),
            ("Domain", "CORP"),
            ("RemoteSMBName", "LAPTOP-12"),
        ),
    ),
    "incident_details_duplicate_keys.json": Expect(
        EventKind.INCIDENT,
        "51b51b51b51b51b51b51b51b51b51b51",
        at(2026, 3, 16, 11, 22, 33),
        log_type=15001,
        canary_port=5060,
        details=(
            ("method", "OPTIONS"),
            ("via", "SIP/2.0/UDP 10.70.8.8:5060;branch=z9hG4bK-1"),
            ("via", "SIP/2.0/UDP 10.70.8.1:5060;branch=z9hG4bK-2"),
            ("user-agent", "friendly-scanner"),
        ),
    ),
    "incident_details_malformed.json": Expect(
        EventKind.INCIDENT,
        "baadf00dbaadf00dbaadf00dbaadf00d",
        at(2026, 3, 15, 8, 8, 8),
        log_type=3001,
        canary_port=443,
        details=(
            ("Username", "admin"),
            ("Thing1", ""),
            ("Path", '["/login","extra"]'),
            ("entry3", "User-Agent: curl/8.5.0"),
        ),
        quirks=("[1] has a key and no value", "[2] has 3 elements", "[3] is not a [key, value]"),
    ),
    "incident_details_not_list.json": Expect(
        EventKind.INCIDENT,
        "0ddba11c0ddba11c0ddba11c0ddba11c",
        at(2026, 3, 15, 9, 9, 9),
        log_type=21001,
        canary_port=6379,
        details=(("AdditionalDetails", "CONFIG GET *"),),
        quirks=("neither a list nor an object",),
    ),
    "incident_ftp_login.json": Expect(
        EventKind.INCIDENT,
        "bc84b27ca5327d9d7f915fadae7ef9a4",
        at(2026, 2, 2, 14, 19, 2),
        log_type=2000,
        canary_port=21,
        details=(
            ("Username", "username"),
            ("Password", "*******"),
            ("Background Context", "You have had 2 incidents from 192.168.1.1 previously."),
        ),
    ),
    "incident_ftp_login_no_logtype.json": Expect(
        EventKind.INCIDENT,
        "5c0ffee5c0ffee5c0ffee5c0ffee5c0f",
        at(2026, 3, 10, 7, 45, 9),
        canary_port=21,
        details=(
            ("Username", "backup"),
            ("Password", "*******"),
            ("Background Context", "You have had 1 incidents from 10.40.9.77 previously."),
        ),
    ),
    "incident_ip_hostnames.json": Expect(
        EventKind.INCIDENT,
        "3000300030003000aaaabbbbccccdddd",
        at(2026, 3, 18, 16, 17, 18),
        log_type=3000,
        canary_port=80,
        details=(
            ("Path", "/admin"),
            ("EC2InstanceID", "i-0123456789abcdef0"),
            ("EC2Region", "eu-west-1"),
        ),
    ),
    "incident_port_scan.json": Expect(
        EventKind.INCIDENT,
        "1a2b3c4d5e6f708192a3b4c5d6e7f801",
        at(2026, 3, 5, 9, 10, 11),
        log_type=5007,
        canary_port=None,  # "-1"
        details=(
            ("Source", "10.99.0.8"),
            ("Targets", "10.20.30.41, 10.20.30.42, 10.20.30.43"),
            ("Incident", "Network port scan"),
        ),
    ),
    "incident_settings_changed.json": Expect(
        EventKind.OPERATIONAL,
        "aa11bb22cc33dd44ee55ff6677889900",
        at(2026, 3, 7, 11, 12, 13),
        operation="console_settings_changed",
        log_type=23001,
        details=(("Settings", "Webhook enabled: True\nModified by admin@example.com"),),
    ),
    "incident_ssh_login.json": Expect(
        EventKind.INCIDENT,
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        at(2026, 3, 5, 8, 0, 1),
        log_type=4002,
        canary_port=22,
        details=(
            ("Username", "root"),
            ("Password", "*******"),
            ("Background Context", "You have had 0 incidents from 10.99.0.7 previously."),
        ),
    ),
    "incident_structure_placeholders.json": Expect(
        EventKind.INCIDENT,
        sha32("<hash identifying the incident>"),
        RECEIVED,
        details=(
            ("<detail key 1>", "<detail value 1>"),
            ("<detail key 2>", "<detail value 2>"),
        ),
        quirks=(
            "LogType is not an integer",
            "unreadable timestamp",
            "CanaryPort is not an integer",
        ),
    ),
    "incident_tampering.json": Expect(
        EventKind.INCIDENT,
        "e1e2e3e4e5e6e7e8e9eaebecedeeeff0",
        at(2026, 3, 8, 22, 1, 59),
        log_type=30001,
        canary_port=None,  # "-1"
        details=(("Message", "Console cable attached and a login was attempted"),),
    ),
    "incident_timestamp_epoch.json": Expect(
        EventKind.INCIDENT,
        "7e17e17e17e17e17e17e17e17e17e17e",
        at(2026, 3, 9, 10),  # 1773050400
        log_type=6001,
        canary_port=23,
        details=(("Username", "cisco"), ("Password", "*******")),
    ),
    "incident_timestamp_utc_offset.json": Expect(
        EventKind.INCIDENT,
        "3306330633063306aaaabbbbccccdddd",
        at(2026, 3, 17, 13, 14, 15),
        log_type=8001,
        canary_port=3306,
        details=(("Username", "root"), ("Database", "payroll")),
    ),
    "operational_disconnected.json": Expect(
        EventKind.OPERATIONAL,
        "incident:devicedied:5f1e2d3c4b5a69788796a5b4::1780000000",
        at(2026, 3, 4, 5, 6, 7),
        operation="disconnected",
    ),
    "operational_flock_settings_changed.json": Expect(
        EventKind.OPERATIONAL,
        "f10cf10cf10cf10cf10cf10cf10cf10c",
        at(2026, 3, 11, 15, 20),
        operation="flock_settings_changed",
        log_type=23003,
        details=(("Settings", "Notify on reconnect: False -> True\nModified by ops@example.com"),),
    ),
    "operational_network_rollback.json": Expect(
        EventKind.OPERATIONAL,
        "22001aaa22001bbb22001ccc22001ddd",
        at(2026, 3, 9, 3, 4, 5),
        operation="network_settings_rollback",
        log_type=22001,
        details=(("Settings", "IP: 10.20.30.142 -> 10.20.30.42\nGateway: 10.20.30.254"),),
    ),
    "operational_network_rollback_22011.json": Expect(
        EventKind.OPERATIONAL,
        "22011aaa22011bbb22011ccc22011ddd",
        at(2026, 3, 9, 4, 5, 6),
        operation="network_settings_rollback",
        log_type=22011,
        details=(("Settings", "VLAN: 40 -> 30"),),
    ),
    "operational_reconnected.json": Expect(
        EventKind.OPERATIONAL,
        "7a7a7a7a1b1b1b1b2c2c2c2c3d3d3d3d",
        at(2026, 3, 4, 6, 16, 40),
        operation="reconnected",
        log_type=1004,
        details=(("PreviousIP", "10.20.30.41"),),
    ),
    "test_event.json": Expect(
        EventKind.TEST,
        CONTENT,
        at(2026, 2, 2, 14, 10, 14),
        log_type=111111,
        details=(("Field1", "VALUE1"), ("Field2", "VALUE2"), ("Field3", "VALUE3")),
    ),
    "test_event_dummy_incident.json": Expect(
        EventKind.TEST,
        "d0d0cafed0d0cafed0d0cafed0d0cafe",
        at(2025, 11, 3, 9, 30),
        canary_port=8080,
        details=(("Field1", "VALUE1"), ("Field2", "VALUE2"), ("Field3", "VALUE3")),
    ),
    "unknown_canarytokens_org.json": Expect(
        EventKind.UNKNOWN, CONTENT, RECEIVED, quirks=("no known Canary event", "no timestamp")
    ),
    "unknown_opencanary_message.json": Expect(
        EventKind.UNKNOWN, CONTENT, RECEIVED, quirks=("no known Canary event", "no timestamp")
    ),
}


def test_every_sample_file_has_an_expectation() -> None:
    on_disk = {path.name for path in SAMPLES.glob("*.json")}
    assert on_disk == set(SAMPLE_EXPECTATIONS)


def test_samples_are_valid_json_objects() -> None:
    for path in SAMPLES.glob("*.json"):
        assert isinstance(json.loads(path.read_text("utf-8")), dict), path.name


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTATIONS))
def test_sample_is_accepted_and_classified(name: str) -> None:
    expected = SAMPLE_EXPECTATIONS[name]
    raw = load(name)
    event = parse_event(raw, received_at=RECEIVED)

    assert event.kind is expected.kind
    assert event.operation == expected.operation
    assert event.fingerprint == sha32_canonical(raw)
    assert event.id == (event.fingerprint if expected.id == CONTENT else expected.id)
    assert event.log_type == expected.log_type
    assert event.canary_port == expected.canary_port
    assert event.timestamp == expected.timestamp
    assert event.timestamp.utcoffset() == timedelta(0)
    assert tuple((d.key, d.value) for d in event.details) == expected.details
    assert len(event.quirks) == len(expected.quirks), event.quirks
    for quirk, fragment in zip(event.quirks, expected.quirks, strict=True):
        assert fragment in quirk
    assert event.raw is raw
    assert event.received_at == RECEIVED


def sha32_canonical(raw: bytes) -> str:
    """The content hash, computed independently: sorted keys, no whitespace, UTF-8."""
    canonical = json.dumps(
        json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTATIONS))
def test_sample_to_dict_serialises(name: str) -> None:
    event = parse_event(load(name), received_at=RECEIVED)
    data = event.to_dict()
    back = orjson.loads(orjson.dumps(data))
    assert back["id"] == event.id
    assert back["kind"] == SAMPLE_EXPECTATIONS[name].kind.value
    assert back["timestamp"].endswith("Z")
    assert back["received_at"] == "2026-04-01T12:00:00.000Z"


def test_sample_ids_are_unique_and_safe() -> None:
    events = [parse_event(load(name), received_at=RECEIVED) for name in SAMPLE_EXPECTATIONS]
    assert len({event.id for event in events}) == len(events)
    for event in events:
        assert SAFE_ID.fullmatch(event.id), event.id
        assert HEX32.fullmatch(event.fingerprint)


# --------------------------------------------------------------------------------------------
# Field-level checks on particular samples
# --------------------------------------------------------------------------------------------


def test_test_event_fields() -> None:
    event = parse_event(load("test_event.json"), received_at=RECEIVED)
    assert event.description == "Fake Location"
    assert event.intro == "This is a dummy incident."
    assert event.canary_name == "DummyDevice"
    assert event.canary_id == "0000000testnode"
    assert event.canary_ip == "1.1.1.1"
    assert event.flock == "flock:dummyincidentflock"
    assert event.source_ip == "2.2.2.2"
    assert event.reverse_dns == "theattackers.ip.local"
    assert event.alert_type == "CanaryIncident"
    assert event.log_type_raw == "111111"
    assert event.log_type_name == "Dummy Incident"
    assert event.incident_hash is None
    assert event.timestamp_raw == "2026-02-02 14:10:14 (UTC)"


def test_incident_fields() -> None:
    event = parse_event(load("incident_ftp_login.json"), received_at=RECEIVED)
    assert event.log_type_raw == "2000"
    assert event.log_type_name == "FTP Login Attempt"
    assert event.canary_name == "canary"
    assert event.canary_id == "000123456789abcd"
    assert event.canary_ip == "192.168.1.2"
    assert event.canary_location == "Server room A"
    assert event.source_ip == "192.168.1.1"
    assert event.reverse_dns is None  # ""
    assert event.incident_hash == "bc84b27ca5327d9d7f915fadae7ef9a4"
    assert event.annotations == {}
    assert event.extra == {}
    assert event.detail("username") == "username"
    assert event.detail("Password") == "*******"


def test_canarytoken_fields() -> None:
    event = parse_event(load("canarytoken_web_bug.json"), received_at=RECEIVED)
    assert event.token == "xxxxxxxxxxxxxxxxxxxxxxxxx"
    assert event.reminder == "Link in my inbox"
    assert event.triggered == 1
    assert event.canary_name is None
    assert event.canary_port is None
    assert event.detail("Dst Port") == "80"
    assert event.to_dict()["token"] == {
        "id": "xxxxxxxxxxxxxxxxxxxxxxxxx",
        "reminder": "Link in my inbox",
        "triggered": 1,
    }


def test_audit_fields() -> None:
    event = parse_event(load("audit_canarytoken_create.json"), received_at=RECEIVED)
    assert event.audit is not None
    assert event.audit.action_type == "canarytoken_create"
    assert event.audit.message == "Created a Web Bug Canarytoken xxxxxxxxxxxxxxxxxxxxxxxxx"
    assert event.audit.user == "example@thinkst.com"
    assert event.audit.user_ip == "1.1.1.1"
    assert event.audit.user_agent == "Mozilla/5.0 ..."
    assert event.audit.user_language == "en-GB ..."
    assert event.audit.access_route is None  # ""
    assert event.audit.flock_id == "flock:default"
    assert event.audit.flock_name == "Default Flock"
    assert event.flock == "flock:default"
    assert event.source_ip == "1.1.1.1"
    assert event.description == "Audit: canarytoken_create"
    assert event.intro == event.audit.message
    assert event.to_dict()["audit"]["action_type"] == "canarytoken_create"


def test_audit_null_flock() -> None:
    event = parse_event(load("audit_user_login.json"), received_at=RECEIVED)
    assert event.audit is not None
    assert event.audit.flock_id is None
    assert event.audit.flock_name is None
    assert event.flock is None


def test_audit_payload_not_an_object() -> None:
    event = parse({"type": "console-audit", "payload": "oops"})
    assert event.kind is EventKind.AUDIT
    assert event.audit is not None
    assert event.audit.action_type == "unknown"
    assert event.timestamp == RECEIVED
    assert any("audit payload is not an object" in quirk for quirk in event.quirks)


def test_disconnect_without_alert_type_or_log_type() -> None:
    event = parse_event(load("operational_disconnected.json"), received_at=RECEIVED)
    assert event.alert_type is None
    assert event.log_type is None
    assert event.log_type_raw is None
    assert event.source_ip is None
    assert event.details == ()
    assert event.incident_key == "incident:devicedied:5f1e2d3c4b5a69788796a5b4::1780000000"
    assert event.annotations == {}


def test_settings_changed_identity_fields() -> None:
    console = parse_event(load("incident_settings_changed.json"), received_at=RECEIVED)
    assert console.canary_id == "Console"
    assert console.canary_ip == "abc123.canary.tools"
    assert not is_ip(console.canary_ip)
    flock = parse_event(load("operational_flock_settings_changed.json"), received_at=RECEIVED)
    assert flock.canary_name == "Flock"
    assert flock.canary_id == "flock_change"
    assert flock.flock == "flock:0f0e0d0c0b0a09080706050403020100"


def test_tampering_has_no_port_and_no_source() -> None:
    event = parse_event(load("incident_tampering.json"), received_at=RECEIVED)
    assert event.canary_port is None
    assert event.source_ip is None
    assert event.log_type_name == "Local Tampering Detected"
    assert event.quirks == ()  # "-1" is the documented "no port", not an anomaly


def test_dns_token_keeps_resolver_as_source() -> None:
    event = parse_event(load("canarytoken_dns.json"), received_at=RECEIVED)
    assert event.source_ip == "203.0.113.53"
    assert event.detail("Hostname") == "zyxwvutsrqponmlkjihgfedcb.canarytokens.example"
    assert event.log_type_name == "DNS Canarytoken triggered"


def test_legacy_token_triggered_as_int() -> None:
    event = parse_event(load("canarytoken_msword_legacy.json"), received_at=RECEIVED)
    assert event.triggered == 5
    assert event.description == "MS Word .docx Document"


def test_annotations_as_object() -> None:
    event = parse_event(load("canarytoken_aws_key_annotated.json"), received_at=RECEIVED)
    assert event.annotations == {
        "trufflehog_scan": [
            "The key was checked by a secrets scanner.",
            "https://help.canary.tools/",
        ]
    }


def test_ip_fields_with_hostnames_and_empty_strings() -> None:
    event = parse_event(load("incident_ip_hostnames.json"), received_at=RECEIVED)
    assert event.canary_ip is None
    assert event.canary_public_ip == "ec2-203-0-113-80.compute.example"
    assert event.source_ip == "crawler-7.scan.example"
    assert event.reverse_dns is None
    assert not is_ip(event.canary_public_ip)
    assert not is_ip(event.source_ip)
    assert not is_ip(event.canary_ip)


def test_unknown_payloads_are_kept_whole() -> None:
    raw = load("unknown_canarytokens_org.json")
    event = parse_event(raw, received_at=RECEIVED)
    assert event.raw == raw
    assert event.extra["memo"] == "link pasted in the team wiki"
    assert event.extra["additional_data"]["useragent"] == "Mozilla/5.0 (X11; Linux x86_64)"
    assert event.description == "Unknown Canary event"
    assert event.token is None  # lower-case "token" is not the console's Token

    raw = load("unknown_opencanary_message.json")
    event = parse_event(raw, received_at=RECEIVED)
    assert set(event.extra) == {"message"}
    assert json.loads(event.extra["message"])["logtype"] == 2000
    assert event.log_type is None  # an OpenCanary code is not a console LogType


# --------------------------------------------------------------------------------------------
# Classification order
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kind", "operation"),
    [
        pytest.param(
            {"type": "console-audit", "payload": AUDIT_BODY, "AlertType": "CanarytokenIncident",
             "Token": "t", "LogType": 111111},
            EventKind.AUDIT, None, id="audit-beats-token-and-test",
        ),
        pytest.param(
            incident(AlertType="CanarytokenIncident", LogType=111111, Token="t"),
            EventKind.CANARYTOKEN, None, id="token-beats-test",
        ),
        pytest.param(
            incident(Token="abcdefghijklmnopqrstuvwxy"),
            EventKind.CANARYTOKEN, None, id="token-key-beats-incident-alert-type",
        ),
        pytest.param(
            incident(AlertType="CanarytokenIncident", LogType="23001"),
            EventKind.CANARYTOKEN, None, id="token-beats-operational-log-type",
        ),
        pytest.param(
            incident(LogType=111111, Description="Canary Disconnected"),
            EventKind.TEST, None, id="test-by-log-type-beats-operational",
        ),
        pytest.param(
            incident(CanaryID="0000000testnode", LogType=None), EventKind.TEST, None,
            id="test-by-canary-id",
        ),
        pytest.param(
            incident(Description="Dummy Incident", LogType=None), EventKind.TEST, None,
            id="test-by-old-description",
        ),
        pytest.param(
            incident(Description="Fake Location", LogType=None), EventKind.TEST, None,
            id="test-by-description",
        ),
        pytest.param(
            incident(LogType="23002", Description="Canary Settings Changed"),
            EventKind.OPERATIONAL, "canary_settings_changed",
            id="operational-log-type-beats-canary-incident",
        ),
        pytest.param(
            incident(LogType="22011", Description="Something new"),
            EventKind.OPERATIONAL, "network_settings_rollback", id="log-type-decides-22011",
        ),
        pytest.param(
            incident(LogType=None, Description="Canary Disconnected"),
            EventKind.OPERATIONAL, "disconnected", id="description-words-with-canary-incident",
        ),
        pytest.param(
            incident(LogType=None, Description="Device Settings Changed"),
            EventKind.OPERATIONAL, "canary_settings_changed", id="old-device-settings-name",
        ),
        pytest.param(
            incident(LogType="99001", Description="Canary Reconnected"),
            EventKind.OPERATIONAL, "reconnected", id="code-newer-than-table-uses-description",
        ),
        pytest.param(
            incident(LogType="1004", Description="", Intro="FS01 has reconnected."),
            EventKind.OPERATIONAL, "reconnected", id="1004-direction-from-intro",
        ),
        pytest.param(
            incident(LogType=1004, Description="Canary Disconnected",
                     Intro="One of your Canaries (rollback-lab) has disconnected."),
            EventKind.OPERATIONAL, "disconnected", id="1004-only-connection-words",
        ),
        pytest.param(
            incident(LogType="1004", Description="", Intro=""),
            EventKind.OPERATIONAL, None, id="1004-without-direction",
        ),
        pytest.param(
            incident(LogType="1004", Description="", Intro="One of your Canaries (rollback-1)."),
            EventKind.OPERATIONAL, None, id="1004-ignores-settings-words",
        ),
        pytest.param(
            incident(
                AlertType=None, LogType=None, Description="",
                Intro="One of your Canaries (FS02) previously at 10.0.0.2 has disconnected.",
            ),
            EventKind.OPERATIONAL, "disconnected", id="intro-words-when-nothing-else",
        ),
        pytest.param(
            incident(
                AlertType=None, LogType=None, Description="Canary Disconnected",
                Intro="One of your Canaries (reconnected-lab) previously at 10.0.0.2 has "
                "disconnected.",
            ),
            EventKind.OPERATIONAL, "disconnected", id="description-beats-intro",
        ),
        pytest.param(
            incident(LogType=None, Intro="FTP Login Attempt has been detected against one of "
                     "your Canaries (db-rollback) at 10.0.0.9."),
            EventKind.INCIDENT, None, id="canary-name-in-intro-is-not-an-operation",
        ),
        pytest.param(
            incident(AlertType=None, LogType=None, CanaryName="db-rollback-01",
                     Intro="FTP Login Attempt has been detected against one of your Canaries "
                     "(db-rollback-01) at 10.0.0.9."),
            EventKind.INCIDENT, None, id="no-code-no-alert-type-canary-name-is-not-an-operation",
        ),
        pytest.param(
            incident(LogType="1004", Description="", CanaryName="reconnected-lab",
                     Intro="One of your Canaries (reconnected-lab) previously at 10.0.0.2 has "
                     "disconnected."),
            EventKind.OPERATIONAL, "disconnected", id="1004-canary-name-is-not-the-direction",
        ),
        pytest.param(
            incident(Intro="FTP Login Attempt against one of your Canaries (disconnected-lab)."),
            EventKind.INCIDENT, None, id="known-incident-code-ignores-words",
        ),
        pytest.param(
            incident(LogType="30001", Description="Local Tampering Detected"),
            EventKind.INCIDENT, None, id="tampering-is-an-incident",
        ),
        pytest.param(incident(), EventKind.INCIDENT, None, id="incident"),
        pytest.param(
            incident(AlertType=None, LogType=None, Description="Offline Events Dropped"),
            EventKind.INCIDENT, None, id="no-alert-type-but-canary-fields",
        ),
        pytest.param(
            incident(AlertType="SomethingNew"), EventKind.INCIDENT, None,
            id="unknown-alert-type-with-canary-fields",
        ),
        pytest.param(
            {"Description": "Something", "Intro": "Hello"}, EventKind.UNKNOWN, None,
            id="words-without-canary-fields",
        ),
        pytest.param({}, EventKind.UNKNOWN, None, id="empty-object"),
        pytest.param(
            {"type": "console-audit-v2", "payload": AUDIT_BODY}, EventKind.UNKNOWN, None,
            id="other-type-is-not-audit",
        ),
    ],
)  # fmt: skip
def test_classification_order(
    payload: dict[str, Any], kind: EventKind, operation: str | None
) -> None:
    event = parse(payload)
    assert (event.kind, event.operation) == (kind, operation)


def test_unknown_is_flagged() -> None:
    event = parse({"hello": "world"})
    assert event.kind is EventKind.UNKNOWN
    assert event.description == "Unknown Canary event"
    assert event.extra == {"hello": "world"}
    assert any("no known Canary event shape" in quirk for quirk in event.quirks)


def test_description_falls_back_to_log_type_name() -> None:
    event = parse(incident(Description=None))
    assert event.description == "FTP Login Attempt"


# --------------------------------------------------------------------------------------------
# The LogType table (forwarder/data/logtypes.json)
# --------------------------------------------------------------------------------------------

# Description strings the public docs give for these codes (facts copied, not the table file).
KNOWN_LOG_TYPES = {
    1004: "Canary Disconnected/Reconnected",
    2000: "FTP Login Attempt",
    3001: "HTTP Login Attempt",
    3004: "Website Scan",
    4002: "SSH Login Attempt",
    5007: "Consolidated Network Port Scan",
    16000: "DNS Canarytoken triggered",
    16009: "MS Word Macro Document Canarytoken triggered",
    17000: "Web Bug Canarytoken triggered",
    17012: "AWS API Key Canarytoken triggered",
    17022: "WireGuard VPN Canarytoken triggered",
    21001: "Redis Command",
    22001: "Network Settings Roll-back",
    22011: "Network Settings Roll-back",
    23001: "Console Settings Changed",
    23002: "Canary Settings Changed",
    23003: "Flock Settings Changed",
    30001: "Local Tampering Detected",
    31001: "LDAP Bind Attempt Detected",
    111111: "Dummy Incident",
}


@pytest.mark.parametrize(("code", "name"), sorted(KNOWN_LOG_TYPES.items()))
def test_log_type_names(code: int, name: str) -> None:
    assert log_type_name(code) == name


def test_log_type_name_unknown() -> None:
    assert log_type_name(None) is None
    assert log_type_name(99999) is None
    assert log_type_name(1001) is None  # OpenCanary's MSG: not a console code


# Every code the public docs list for the commercial console (facts copied).
DOCUMENTED_CODES = frozenset(
    (
        *(1004, 2000, *range(3000, 3007), 4000, 4001, 4002, *range(5000, 5016)),
        *(6001, 7001, 8001, 9001, 9002, 10001, 11001, 12001, 13001, *range(14001, 14005)),
        *(15001, 16000, 16006, *range(16008, 16013), *range(17000, 17013), 17016, 17017),
        *(*range(17019, 17030), 18001, 18002, 18003, 19001, *range(20001, 20007), 21001),
        *(22001, 22011, 23001, 23002, 23003, 28001, 28002, 29001, 30001, 31001, 32001),
        111111,
    )
)


def test_log_type_table_has_every_documented_code() -> None:
    text = resources.files("forwarder").joinpath("data/logtypes.json").read_text("utf-8")
    table = json.loads(text)
    codes = {key for key in table if not key.startswith("_")}
    assert all(key.isdigit() for key in codes)
    assert {int(key) for key in codes} == DOCUMENTED_CODES
    assert all(isinstance(table[key], str) and table[key].strip() for key in codes)
    for code in DOCUMENTED_CODES:
        assert log_type_name(code) == table[str(code)]


@pytest.mark.parametrize("code", sorted(DOCUMENTED_CODES))
def test_token_codes_are_named_as_tokens(code: int) -> None:
    name = log_type_name(code)
    assert name is not None
    assert name.endswith("Canarytoken triggered") is (16000 <= code < 18000)
