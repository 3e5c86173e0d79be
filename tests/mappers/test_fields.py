"""The fields several formats read from an event, and that none of the details is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings

from forwarder.events import CanaryEvent
from forwarder.mappers._fields import (
    epoch_ms,
    extract,
    host_or_ip,
    iso_ms,
    leftovers,
    port,
    signature_id,
    slug,
)

from .helpers import event_from, events, sample_event


def incident(*details: list[object], **extra: object) -> CanaryEvent:
    return event_from(
        {
            "Description": "d",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "AdditionalDetails": list(details),
            **extra,
        }
    )


def test_keys_match_whatever_their_spelling() -> None:
    fields = extract(
        incident(
            ["user-agent", "ua"],
            ["SrcPort", "1234"],
            ["Dst Port", 80],
            ["USERNAME", "root"],
            ["url", "http://x/"],
            ["Path", "/a"],
            ["FileName", "f.txt"],
            ["Domain", "CORP"],
        )
    )
    assert fields.user_agent == "ua"
    assert fields.source_port == 1234
    assert fields.destination_port == 80
    assert fields.user_name == "root"
    assert fields.url == "http://x/"
    assert fields.path == "/a"
    assert fields.file_name == "f.txt"
    assert fields.user_domain == "CORP"
    assert fields.remaining == ()


def test_username_is_preferred_to_user_and_the_other_stays() -> None:
    fields = extract(incident(["User", "guest"], ["Username", "admin"]))
    assert fields.user_name == "admin"
    assert [(d.key, d.value) for d in fields.remaining] == [("User", "guest")]


def test_the_canary_port_wins_and_an_invalid_port_stays_a_detail() -> None:
    fields = extract(incident(["Dst Port", "8080"], ["Src Port", "99999"], CanaryPort=22))
    assert fields.destination_port == 22
    assert fields.source_port is None
    assert [d.key for d in fields.remaining] == ["Dst Port", "Src Port"]


def test_hostname_is_a_dns_name_only_for_dns_tokens() -> None:
    assert extract(sample_event("canarytoken_dns")).dns_name == (
        "zyxwvutsrqponmlkjihgfedcb.canarytokens.example"
    )
    assert extract(incident(["Hostname", "h"])).dns_name is None


def test_audit_records_carry_the_console_user_and_their_own_leftovers() -> None:
    event = sample_event("audit_canarytoken_create")
    fields = extract(event)
    assert (fields.user_name, fields.user_agent) == ("example@thinkst.com", "Mozilla/5.0 ...")
    assert [(d.key, d.value) for d in leftovers(event, fields)] == [
        ("flock_name", "Default Flock"),
        ("user_browser_language", "en-GB ..."),
    ]


@settings(max_examples=200, deadline=None)
@given(events)
def test_every_detail_is_either_a_field_or_left_over(event: CanaryEvent) -> None:
    fields = extract(event)
    if event.audit is not None:
        return
    used = list(event.details)
    for item in fields.remaining:
        used.remove(item)
    values = {
        fields.user_name,
        fields.user_domain,
        fields.user_agent,
        fields.url,
        fields.path,
        fields.file_name,
        fields.dns_name,
    }
    ports = {fields.source_port, fields.destination_port}
    for item in used:
        assert item.value in values or port(item.value) in ports


@pytest.mark.parametrize(
    ("text", "expected"),
    [("22", 22), (" 443 ", 443), ("0", 0), ("65535", 65535), ("65536", None), ("-1", None),
     ("x", None), ("٣", None), (None, None), ("", None)],
)  # fmt: skip
def test_port(text: str | None, expected: int | None) -> None:
    assert port(text) == expected


def test_host_or_ip() -> None:
    assert host_or_ip("10.0.0.1") == ("10.0.0.1", None)
    assert host_or_ip("2001:db8::1") == ("2001:db8::1", None)
    assert host_or_ip("abc.canary.tools") == (None, "abc.canary.tools")
    assert host_or_ip("") == (None, None)
    # Elasticsearch's `ip` type rejects a zone, and Python accepts any text after the `%`.
    assert host_or_ip("fe80::1%evil host x=y") == (None, "fe80::1%evil host x=y")


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        # Some Elasticsearch 9.2 releases refuse '::' followed by seven groups.
        ("::1:2:3:4:5:6:7", "0:1:2:3:4:5:6:7"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8:0000:0::01", "2001:db8::1"),
        # RFC 5952 §5: an IPv4-mapped address keeps its IPv4 part dotted.
        ("::FFFF:10.0.0.1", "::ffff:10.0.0.1"),
        ("::ffff:a00:1", "::ffff:10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_addresses_go_into_address_fields_in_rfc_5952_form(written: str, canonical: str) -> None:
    assert host_or_ip(written) == (canonical, None)


def test_signature_id_is_the_log_type_or_a_stable_slug() -> None:
    assert signature_id(sample_event("incident_ssh_login")) == "4002"
    assert signature_id(sample_event("operational_disconnected")) == "canary-disconnected"
    assert slug("  Ünïcode | = Name!! ") == "n-code-name"
    assert slug("|||") == "unknown"


def test_times() -> None:
    moment = datetime(2026, 3, 5, 8, 0, 1, 999_999, tzinfo=UTC)
    assert epoch_ms(moment) == 1_772_697_601_999
    assert iso_ms(moment) == "2026-03-05T08:00:01.999Z"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 5, 8, 0, 1, 999_999, tzinfo=UTC),
        datetime(2026, 3, 5, 10, 0, 1, 999_999, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 3, 5, 8, 0, 1, 999_999, tzinfo=ZoneInfo("UTC")),
        datetime(999, 1, 2, 3, 4, 5, 6_000, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_iso_ms_is_what_isoformat_writes_in_utc(moment: datetime) -> None:
    expected = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso_ms(moment) == expected
