"""RFC 3164: a valid legacy header, a readable one-line message, never over 1024 bytes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.rfc3164 import MAX_BYTES, Rfc3164Config, Rfc3164Mapper

from .helpers import event_from, events, sample_event
from .syslog_grammar import parse_rfc3164


def rfc3164(event: CanaryEvent, **options: Any) -> Record:
    return Rfc3164Mapper(Rfc3164Config(type="rfc3164", **options)).map(event)


def test_ssh_login_line() -> None:
    record = rfc3164(sample_event("incident_ssh_login"))
    assert record.syslog_header
    assert isinstance(record.body, str)
    message = parse_rfc3164(record.body)
    assert message.pri == 16 * 8 + 3
    assert message.timestamp == "Mar  5 08:00:01"  # day space-padded
    assert message.hostname == "web-dmz-02"
    assert message.tag == "canary-forwarder"
    assert message.message.split(" | ") == [
        "SSH Login Attempt has been detected against one of your Canaries (web-dmz-02) at "
        "10.20.30.42.",
        "Desc: SSH Login Attempt",
        "Source: 10.99.0.7",
        "PTR: jump01.corp.example",
        "Canary: web-dmz-02",
        "CanaryIP: 10.20.30.42",
        "Port: 22",
        "Location: DMZ rack 3",
        "Username: root",
        "Password: *******",
        "Background Context: You have had 0 incidents from 10.99.0.7 previously.",
        "ID: 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    ]


def test_hostname_loses_its_domain_and_options_apply() -> None:
    event = event_from({"Description": "d", "CanaryName": "nas.corp.example", "CanaryID": "c"})
    message = parse_rfc3164(str(rfc3164(event).body))
    assert message.hostname == "nas"
    configured = parse_rfc3164(
        str(rfc3164(event, hostname="relay", app_name="canary", facility="user").body)
    )
    assert (configured.hostname, configured.tag, configured.pri) == ("relay", "canary", 8 + 3)


def test_a_long_message_is_cut_at_1024_bytes_inside_no_character() -> None:
    event = event_from(
        {"Description": "d", "CanaryID": "c", "Intro": "é" * 2000, "AlertType": "CanaryIncident"}
    )
    body = str(rfc3164(event).body)
    assert len(body.encode("utf-8")) in (MAX_BYTES - 1, MAX_BYTES)
    assert body.endswith("é")


@settings(max_examples=200, deadline=None)
@given(events)
def test_hostile_text_gives_one_valid_line(event: CanaryEvent) -> None:
    body = rfc3164(event).body
    assert isinstance(body, str)
    assert len(body.splitlines()) == 1
    parse_rfc3164(body)
