"""Log injection, end to end: attacker-controlled strings in every field that reaches a record,
posted to the running daemon, delivered by its syslog outputs to a real rsyslogd.

For every format (rfc5424 octet-counted and LF-framed, CEF, LEEF, rfc3164, json) each event
must arrive as exactly one record, and the fields that can be parsed back must hold exactly
what the event held (after each format's documented escaping; see
tests/integration/test_rsyslog_formats.py, whose checks are reused). The daemon's own log must
stay one JSON object per line whatever the events contained. Lone surrogates cannot get in at
all: JSON allows the escape, the daemon's strict decoder refuses it with 400.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cefp
import orjson
import pytest

from forwarder.events import CanaryEvent, parse_event
from forwarder.mappers._syslog import RFC3164_FALLBACK_HOST
from forwarder.registry import mapper_class
from tests.integration.test_rsyslog_formats import (
    BOM,
    SD_ID,
    check_cef,
    hostile_values,
    sd_as_read,
)
from tests.mappers.syslog_grammar import parse_rfc5424
from tests.reliability._support import fast_retry, session, wait_until
from tests.reliability.conftest import DaemonFactory
from tests.support.rsyslog import Rsyslog, requires_rsyslogd

pytestmark = [pytest.mark.reliability, requires_rsyslogd]

# Strings an attacker can type into a honeypot: every separator, escape and line break of every
# format, header look-alikes of CEF, LEEF and syslog, JSON breakers, terminal escapes, bidi
# overrides, invisible characters and a very long value.
CORPUS = [
    "line one\nline two",
    "carriage\rreturn",
    "crlf\r\nforged: yes",
    "nul\x00byte",
    "\x1b[31mred\x1b[0m and \x1b]0;title\x07",
    "pipe|in|value",
    "equals=sign key=value",
    "back\\slash\\",
    "close]bracket]",
    'double "quoted"',
    "\nCEF:0|Evil|Forged|1.0|100|Forged event|10|src=6.6.6.6 act=blocked",
    "x CEF:0|Evil|Forged|1|2|3|4| suser=root",
    "\nLEEF:2.0|Evil|Forged|1.0|100|^|src=6.6.6.6",
    "\n<13>1 2026-01-01T00:00:00Z evil.host forged - - - forged message",
    "<13>Jan  1 00:00:00 evil forged: message",
    '"}],"injected":{"a":"b',
    "\\u0000\\n\\r escaped-looking text",
    "tab\there\x0bvt\x0cff",
    "\u202eRTL override\u202c and \u2066isolate\u2069",
    "zero\u200bwidth\ufeffbom",
    "line\u2028separator\u2029paragraph\x85nel",
    "\x7fdel and \x9fC1",
    "emoji 😀 and accents é€ and CJK 漢字",
    'sd [x@1 a="b"] end',
    "=leading equals",
    "trailing backslash \\",
    "L" * 10_000,
]


def incident(text: str, event_id: str) -> dict[str, Any]:
    return {
        "Description": f"SSH login attempt {text}",
        "Timestamp": "2026-02-02 14:10:14 (UTC)",
        "CanaryName": text,
        "CanaryID": "0000000abcdef12",
        "CanaryIP": "10.0.0.5",
        "CanaryLocation": text,
        "CanaryPort": 22,
        "SourceIP": text,
        "ReverseDNS": text,
        "IncidentHash": event_id,
        "Intro": text,
        "Flock": text,
        "AdditionalDetails": [
            [text, text],
            ["Username", text],
            ["User-Agent", text],
            ["Password", text],
            ["Path", text],
        ],
        "AlertType": "CanaryIncident",
        "LogType": 4002,
    }


def canarytoken(text: str, event_id: str) -> dict[str, Any]:
    return {
        "Description": text,
        "Timestamp": "2026-02-02 14:10:14 (UTC)",
        "Token": text,
        "Reminder": text,
        "SourceIP": text,
        "IncidentHash": event_id,
        "Intro": text,
        "AdditionalDetails": [["User-Agent", text], [text, text]],
        "AlertType": "CanarytokenIncident",
        "Triggered": 1,
        "LogType": 17000,
    }


def audit(text: str, event_id: str) -> dict[str, Any]:
    return {
        "type": "console-audit",
        "payload": {
            "timestamp": "2026-02-02T14:12:34+00:00",
            "message": f"{event_id} {text}",
            "action_type": text,
            "flock_id": text,
            "flock_name": text,
            "user": text,
            "user_ip": text,
            "user_browser_agent": text,
            "user_browser_language": text,
            "user_access_route": text,
        },
    }


def syslog_output(
    name: str, rsyslog: Rsyslog, fmt: dict[str, Any], **options: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "syslog",
        "hosts": [rsyslog.address],
        "transport": "tcp",
        "format": fmt,
        "app_name": name,
        # As large as the receiver's maxMessageSize: these tests send whole 10,000-character
        # values, which the 8192-byte default would truncate.
        "max_message_bytes": 1 << 20,
        **options,
        **fast_retry(),
    }


async def test_attacker_strings_never_forge_a_record_or_a_field(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    rsyslog = Rsyslog(tmp_path / "rsyslog", "tcp", max_message_size=1 << 20)
    try:
        await _run(daemons, tmp_path, rsyslog)
    finally:
        rsyslog.stop()


async def _run(daemons: DaemonFactory, tmp_path: Path, rsyslog: Rsyslog) -> None:
    jsonl = tmp_path / "events.jsonl"
    daemon = daemons(
        {
            "outputs": [
                syslog_output("oc5424", rsyslog, {"type": "rfc5424", "app_name": "oc5424"}),
                syslog_output(
                    "lf5424", rsyslog, {"type": "rfc5424", "app_name": "lf5424"}, framing="lf"
                ),
                syslog_output("cef", rsyslog, {"type": "cef"}),
                syslog_output("leef", rsyslog, {"type": "leef"}, framing="lf"),
                syslog_output("r3164", rsyslog, {"type": "rfc3164", "app_name": "r3164"}),
                syslog_output("json", rsyslog, {"type": "json"}, framing="lf"),
                {"name": "file", "type": "file", "path": str(jsonl), **fast_retry()},
            ]
        }
    )
    await daemon.start()
    events: dict[str, CanaryEvent] = {}
    async with session() as client:
        for text in CORPUS:
            for build in (incident, canarytoken, audit):
                event_id = uuid.uuid4().hex
                body = orjson.dumps(build(text, event_id))
                headers = {"Content-Type": "application/json"}
                async with client.post(daemon.webhook_url, data=body, headers=headers) as answer:
                    assert answer.status == 200, await answer.text()
                    stored_id = (await answer.json())["id"]
                events[stored_id] = parse_event(body, received_at=datetime.now(UTC))
        # Lone surrogates: valid JSON escapes, but no text can hold them; refused at the door.
        for escape in (b"\\ud800", b"\\udfff", b"x\\udc00y", b"\\ud800\\ud800"):
            body = b'{"Description": "' + escape + b'", "Intro": "x"}'
            headers = {"Content-Type": "application/json"}
            async with client.post(daemon.webhook_url, data=body, headers=headers) as answer:
                assert answer.status == 400

    outputs = ("oc5424", "lf5424", "cef", "leef", "r3164", "json")
    expected = len(events) * len(outputs)
    await rsyslog.wait_for(expected, timeout=30)
    await wait_until(
        lambda: (jsonl.exists() and len(jsonl.read_bytes().splitlines()) >= len(events)) or None,
        timeout=20,
        what="the file output",
    )
    records = rsyslog.records()
    assert len(records) == expected, f"{len(records)} records for {expected}: split or forged"

    def arrived(app: str) -> list[dict[str, Any]]:
        return [r for r in records if r["app_name"] == app or f" {app}: " in r["raw"][:600]]

    # RFC 5424, octet-counted and LF-framed: one record per event; every hostile field reads
    # back as the event held it, by the strict RFC 5424 grammar of the format tests and by
    # rsyslogd's mmpstrucdata (which gives up on structured data over about 64 KB).
    for app in ("oc5424", "lf5424"):
        found = [(record, parse_rfc5424(record["raw"])) for record in arrived(app)]
        ids = Counter(dict(sent.element(SD_ID))["event_id"] for _, sent in found)
        assert ids == Counter(list(events)), app
        for record, sent in found:
            params = dict(sent.element(SD_ID))
            event = events[params["event_id"]]
            for name, value in hostile_values(event):
                assert params[name] == sd_as_read(value), (app, name)
                if record["sd"]:
                    assert record["sd"][SD_ID][name] == sd_as_read(value), (app, name)
    # CEF: cefp reads every line back with the event's fields; LEEF and RFC 3164: each
    # record's text is exactly the line the format wrote for one event, once.
    cef_lines = [_message(r) for r in arrived("cef")]
    assert Counter(cef_lines) == Counter(_render("cef", e) for e in events.values())
    for line in cef_lines:
        check_cef(events[cefp.parse(line)["extension"]["externalId"]], line)
    leef_lines = [_message(r) for r in arrived("leef")]
    assert Counter(leef_lines) == Counter(_render("leef", e) for e in events.values())
    for line in leef_lines:
        header, _, attributes = line.partition("|^|")
        assert header.count("|") == 4, header  # LEEF:2.0|vendor|product|version|id
        assert all("=" in pair for pair in attributes.split("^")), attributes[:200]
    r3164 = arrived("r3164")
    sent_3164 = [_render("rfc3164", e, app_name="r3164") for e in events.values()]
    assert Counter(_message(r).removeprefix("r3164: ") for r in r3164) == Counter(
        body.split(": ", 1)[1] for body in sent_3164
    )
    # RFC 3164 has no "-" for a missing HOSTNAME: events without a Canary name the relay.
    unnamed = sum(1 for e in events.values() if not e.canary_name)
    assert sum(1 for r in r3164 if r["hostname"] == RFC3164_FALLBACK_HOST) >= unnamed
    assert all(r["app_name"] == "r3164" for r in r3164), "a CanaryName forged the TAG"
    # JSON documents: one compact line each, equal to the event's document.
    for record in arrived("json"):
        document = json.loads(_message(record))
        assert document == json.loads(orjson.dumps(_normalised(events[document["id"]], document)))

    # The file output: one JSON document per line, one line per event, text intact.
    written = jsonl.read_bytes().splitlines()
    assert len(written) == len(events)
    for raw_line in written:
        document = json.loads(raw_line)
        event = events[document["id"]]
        assert document["description"] == event.description
        assert document["intro"] == event.intro
        assert document["details"] == json.loads(orjson.dumps(event.details_dict()))

    # The daemon's own log: one JSON object per line, whatever the events held.
    text = daemon.stderr_text()
    for line in text.splitlines():
        assert isinstance(json.loads(line), dict), line[:200]
    accepted = [line for line in daemon.logs() if line.get("event") == "Event accepted."]
    assert len(accepted) == len(events)
    assert await daemon.stop() == 0


def _message(record: dict[str, Any]) -> str:
    """MSG as rsyslogd parsed it, without the space after a TAG and the BOM of RFC 5424."""
    return str(record["msg"]).removeprefix(" ").removeprefix(BOM)


def _render(format_name: str, event: CanaryEvent, **options: Any) -> str:
    mapper = mapper_class(format_name)
    body = mapper(mapper.config_class(type=format_name, **options)).map(event).body
    assert isinstance(body, str)
    return body


def _normalised(event: CanaryEvent, document: dict[str, Any]) -> dict[str, Any]:
    """The json format's document for the event, with the daemon's receive time (the one field
    that differs from a local rendering)."""
    mapper = mapper_class("json")
    rendered = mapper(mapper.config_class(type="json")).map(event).body
    assert not isinstance(rendered, str)
    body = dict(rendered)
    body["received_at"] = document["received_at"]
    return body


def test_rfc3164_without_a_canary_name_keeps_its_tag(tmp_path: Path) -> None:
    import socket

    rsyslog = Rsyslog(tmp_path / "rsyslog", "tcp")
    try:
        event = parse_event(
            orjson.dumps(canarytoken("plain text", uuid.uuid4().hex)), received_at=datetime.now(UTC)
        )
        line = _render("rfc3164", event, app_name="tagged")
        with socket.create_connection((rsyslog.host, rsyslog.port)) as connection:
            connection.sendall(line.encode() + b"\n")
        [record] = rsyslog.wait_for_records(1)
    finally:
        rsyslog.stop()
    assert record["app_name"] == "tagged", record["raw"][:80]
    assert record["hostname"] == "canary-forwarder"
