"""RFC 3164: a valid legacy header, a readable one-line message, never over 1024 bytes."""

from __future__ import annotations

import re
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
        "ID: 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "Username: root",
        "Password: *******",
        "Background Context: You have had 0 incidents from 10.99.0.7 previously.",
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
    assert body.endswith("é...[truncated]")


def _labelled(body: str) -> list[tuple[str, str]]:
    """The message's `Label: value` parts as a reader splits them (labels trimmed), values
    unescaped."""
    _, *parts = parse_rfc3164(body).message.split(" | ")
    pairs = [part.partition(": ") for part in parts]
    return [(label.strip(), re.sub(r"\\(.)", r"\1", value)) for label, _, value in pairs]


HOSTILE_DETAILS = [
    ["Username", "root | Source: 203.0.113.66 | ID: forged-id"],
    ["ID", "forged-id"],
    ["Source: 198.51.100.9 | Canary", "dc01"],
    ["Canary", "dc01"],
    ["Password", "back\\slash \\| and \\"],
    # Controls around a key go out as spaces, which a reader trims.
    ["\x01Source", "6.6.6.6"],
    ["\x7fCanary", "fake-bird"],
    ["ID\x85", "forged-id"],
]


def test_attacker_text_cannot_add_a_part_or_pass_for_a_label_of_ours() -> None:
    event = event_from(
        {
            "Description": "HTTP Login Attempt",
            "CanaryID": "c",
            "CanaryName": "web-dmz-02",
            "SourceIP": "10.99.0.7",
            "AlertType": "CanaryIncident",
            "AdditionalDetails": HOSTILE_DETAILS,
        }
    )
    parts = _labelled(str(rfc3164(event).body))
    labels = [label for label, _ in parts]
    for ours in ("Desc", "Source", "Canary", "ID"):
        assert labels.count(ours) == 1, ours
    values = dict(parts)
    assert (values["Source"], values["Canary"], values["ID"]) == (
        "10.99.0.7",
        "web-dmz-02",
        event.id,
    )
    # Every detail is still there, under a name of its own, with its value exactly as sent.
    assert parts[-len(HOSTILE_DETAILS) :] == [
        ("Username", HOSTILE_DETAILS[0][1]),
        ("ID_2", "forged-id"),
        ("Source_ 198.51.100.9 _ Canary", "dc01"),
        ("Canary_2", "dc01"),
        ("Password", HOSTILE_DETAILS[4][1]),
        ("Source_2", "6.6.6.6"),
        ("Canary_3", "fake-bird"),
        ("ID_3", "forged-id"),
    ]


def test_the_cut_takes_details_before_the_id_and_never_half_an_escape() -> None:
    for filler in range(900, 960):
        event = event_from(
            {
                "Description": "d",
                "CanaryID": "c",
                "AlertType": "CanaryIncident",
                "AdditionalDetails": [["Password", "\\" * filler], ["ID", "forged-id"]],
            }
        )
        body = str(rfc3164(event).body)
        assert body.endswith("...[truncated]")
        assert len(body.encode()) <= MAX_BYTES
        kept = body.removesuffix("...[truncated]")
        assert (len(kept) - len(kept.rstrip("\\"))) % 2 == 0
        assert [label for label, _ in _labelled(kept)] == ["Desc", "ID", "Password"]
        assert dict(_labelled(kept))["ID"] == event.id


@settings(max_examples=200, deadline=None)
@given(events)
def test_hostile_text_gives_one_valid_line(event: CanaryEvent) -> None:
    body = rfc3164(event).body
    assert isinstance(body, str)
    assert len(body.splitlines()) == 1
    parse_rfc3164(body)


@settings(max_examples=200, deadline=None)
@given(events)
def test_hostile_text_never_repeats_a_label_of_ours(event: CanaryEvent) -> None:
    labels = [label for label, _ in _labelled(str(rfc3164(event).body))]
    ours = {"Desc", "Source", "PTR", "Canary", "CanaryIP", "Port", "Location", "Flock", "Token"}
    assert all(labels.count(label) <= 1 for label in ours | {"Reminder", "ID"})
