"""CEF: the spec's vectors through cefp, the mapping table, and hostile input round trips."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import cefp
import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.cef import CefConfig, CefMapper, extension

from .helpers import OTHER_BREAKS, event_from, events, sample_event, sample_names
from .syslog_grammar import parse_rfc3164, parse_rfc5424


def cef(event: CanaryEvent, **options: Any) -> Record:
    return CefMapper(CefConfig(type="cef", **options)).map(event)


def parsed(event: CanaryEvent, **options: Any) -> dict[str, Any]:
    body = cef(event, **options).body
    assert isinstance(body, str)
    result: dict[str, Any] = cefp.parse(body)
    return result


# --- wire-formats §1.9 decoder vectors: what the spec says a line means, read by cefp ------------

DECODER_VECTORS = [
    (
        r"CEF:0|security|threatmanager|1.0|100|detected a \| in message|10|"
        r"src=10.0.0.1 act=blocked a | dst=1.1.1.1",
        {"name": "detected a | in message"},
        {"src": "10.0.0.1", "act": "blocked a |", "dst": "1.1.1.1"},
    ),
    (
        r"CEF:0|security|threatmanager|1.0|100|detected a \\ in packet|10|"
        r"src=10.0.0.1 act=blocked a \\ dst=1.1.1.1",
        {"name": "detected a \\ in packet"},
        {"src": "10.0.0.1", "act": "blocked a \\", "dst": "1.1.1.1"},
    ),
    (
        r"CEF:0|security|threatmanager|1.0|100|detected a = in message|10|"
        r"src=10.0.0.1 act=blocked a \= dst=1.1.1.1",
        {"name": "detected a = in message"},
        {"src": "10.0.0.1", "act": "blocked a =", "dst": "1.1.1.1"},
    ),
    (
        r"CEF:0|security|threatmanager|1.0|100|Detected a threat. No action needed.|10|"
        r"src=10.0.0.1 msg=Detected a threat.\n No action needed",
        {},
        {"src": "10.0.0.1", "msg": "Detected a threat.\n No action needed"},
    ),
    (
        r"CEF:0|security\\compliance|threat\|->manager|1.0|100|message contains escapes|10|"
        r"spt=1232 msg=Newlines in messages\nare allowed.\r\n"
        r"And so are carriage feeds\\newlines\\\=.",
        {"vendor": "security\\compliance", "product": "threat|->manager"},
        {
            "spt": "1232",
            "msg": "Newlines in messages\nare allowed.\r\nAnd so are carriage feeds\\newlines\\=.",
        },
    ),
    (
        r"CEF:0|security\\\||threatmanager\\|1.0|100|trojan successfully stopped|10|",
        {"vendor": "security\\|", "product": "threatmanager\\"},
        {},
    ),
    (
        r"CEF:0|security|threatmanager|1.0|100|trojan successfully stopped|10|msg=a+b\=c x=c\\d\=z",
        {},
        {"msg": "a+b=c", "x": "c\\d=z"},
    ),
    (
        "CEF:26|security|threatmanager|1.0|100|trojan successfully stopped|10|       ",
        {"cef_version": "26"},
        {},
    ),
    (
        "CEF:0|||1.0|100|trojan successfully stopped|10|src=10.0.0.192",
        {"vendor": "", "product": ""},
        {"src": "10.0.0.192"},
    ),
]


def _flat_header(result: dict[str, Any]) -> dict[str, str]:
    return {**result["device"], "name": result["name"], "cef_version": result["version"]}


@pytest.mark.parametrize(("line", "header", "ext"), DECODER_VECTORS)
def test_decoder_vectors_read_as_the_spec_says(
    line: str, header: dict[str, str], ext: dict[str, str]
) -> None:
    result = cefp.parse(line)
    assert header.items() <= _flat_header(result).items()
    assert {k: v for k, v in result["extension"].items() if k} == ext


def test_padded_vector_keeps_inner_spaces_of_a_non_final_value() -> None:
    line = (
        "CEF:0|security|threatmanager|1.0|100|message is padded|10|spt=1232 "
        "msg=Trailing space in non-final extensions is  preserved    src=10.0.0.192 "
    )
    extension_ = cefp.parse(line)["extension"]
    assert extension_["msg"] == "Trailing space in non-final extensions is  preserved   "
    # cefp keeps the final value's trailing space, which the spec says is not preserved: that
    # is why the encoder never sends leading or trailing spaces at all.
    assert extension_["src"].rstrip() == "10.0.0.192"


# --- encoder vectors -----------------------------------------------------------------------------


def test_encoder_vector_header_escaping_through_the_mapper() -> None:
    event = event_from({"Description": "na\nme", "Intro": "x", "AlertType": "CanaryIncident"})
    record = cef(event, vendor="Thin|kst", product="Can\\ary", version="1|0")
    assert isinstance(record.body, str)
    assert record.body.startswith("CEF:0|Thin\\|kst|Can\\\\ary|1\\|0|na-me|na me|8|")
    header = _flat_header(cefp.parse(record.body))
    assert header["vendor"] == "Thin|kst"
    assert header["product"] == "Can\\ary"
    assert header["version"] == "1|0"
    assert header["name"] == "na me"


def test_encoder_vector_multi_line_message() -> None:
    event = event_from(
        {
            "Description": "d",
            "Intro": "line1\r\nline2\rline3\nline4",
            "AlertType": "CanaryIncident",
            "LogType": "2000",
            "AdditionalDetails": [["Username", "bob"]],
        }
    )
    body = cef(event).body
    assert isinstance(body, str)
    assert " msg=line1\\r\\nline2\\rline3\\nline4 " in body
    assert " duser=bob" in body
    assert cefp.parse(body)["extension"]["msg"] == "line1\r\nline2\rline3\nline4"


def test_header_fields_are_cut_to_the_spec_lengths() -> None:
    event = event_from({"Description": "n" * 600, "CanaryID": "c"})
    header = _flat_header(parsed(event, vendor="v" * 100, product="p" * 100, version="9" * 50))
    assert header["vendor"] == "v" * 63
    assert header["product"] == "p" * 63
    assert header["version"] == "9" * 31
    assert len(header["name"]) == 512


# --- the mapping table ---------------------------------------------------------------------------


def test_ssh_login_maps_to_standard_keys() -> None:
    result = parsed(sample_event("incident_ssh_login"))
    assert result["device"] == {
        "vendor": "Thinkst",
        "product": "Canary",
        "version": result["device"]["version"],
        "event_class_id": "4002",
    }
    assert result["name"] == "SSH Login Attempt"
    assert result["severity"] == "8"
    ext = result["extension"]
    assert ext["rt"] == str(int(datetime(2026, 3, 5, 8, 0, 1, tzinfo=UTC).timestamp()) * 1000)
    assert ext["src"] == "10.99.0.7"
    assert ext["shost"] == "jump01.corp.example"
    assert ext["dst"] == "10.20.30.42"
    assert ext["dpt"] == "22"
    assert ext["dhost"] == "web-dmz-02"
    assert ext["duser"] == "root"
    assert ext["deviceExternalId"] == "00034d476a2c9f22"
    assert ext["externalId"] == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert ext["cat"] == "incident"
    assert ext["cs1Label"] == "canaryLocation"
    assert ext["cs1"] == "DMZ rack 3"
    assert ext["msg"].startswith("SSH Login Attempt has been detected")
    assert json.loads(ext["cs6"]) == {
        "Password": "*******",
        "Background Context": "You have had 0 incidents from 10.99.0.7 previously.",
    }


def test_ipv6_attacker_goes_to_c6a1_not_src() -> None:
    ext = parsed(sample_event("canarytoken_aws_key"))["extension"]
    assert "src" not in ext
    assert ext["c6a1Label"] == "sourceIPv6"
    assert ext["c6a1"] == "2001:db8::42"
    assert ext["spt"] == "51515"
    assert ext["requestClientApplication"] == "aws-cli/2.15.0 Python/3.11"
    assert ext["cs2Label"] == "tokenReminder"
    assert ext["cs2"] == "aws key in build server ~/.aws"
    assert ext["cs3Label"] == "canarytoken"
    assert ext["cs3"] == "abcdefghijklmnopqrstuvwxy"
    assert ext["cnt"] == "3"
    assert json.loads(ext["cs6"]) == {"Event Name": "GetCallerIdentity"}


def test_ipv6_canary_and_public_address_use_c6a3_and_c6a4() -> None:
    event = event_from(
        {
            "Description": "SSH Login Attempt",
            "CanaryIP": "2001:db8::7",
            "CanaryPublicIP": "2001:db8::8",
            "SourceIP": "192.0.2.1",
            "AlertType": "CanaryIncident",
            "CanaryID": "x",
        }
    )
    ext = parsed(event)["extension"]
    assert (ext["c6a3Label"], ext["c6a3"]) == ("destinationIPv6", "2001:db8::7")
    assert (ext["c6a4Label"], ext["c6a4"]) == ("deviceIPv6", "2001:db8::8")
    assert "dst" not in ext and "dvc" not in ext
    assert ext["src"] == "192.0.2.1"


def test_hostname_in_canary_ip_goes_to_dvchost_not_dst() -> None:
    ext = parsed(sample_event("incident_settings_changed"))["extension"]
    assert "dst" not in ext
    assert ext["dvchost"] == "abc123.canary.tools"
    assert ext["act"] == "console_settings_changed"
    assert json.loads(ext["cs6"]) == {
        "Settings": "Webhook enabled: True\nModified by admin@example.com"
    }


def test_a_hostname_in_source_ip_is_the_source_host_before_reverse_dns() -> None:
    # As LEEF's srcHost and ECS's source.domain choose: the name the console saw beats a lookup.
    payload = {
        "Description": "SSH Login Attempt",
        "AlertType": "CanaryIncident",
        "SourceIP": "jump01.corp.example",
        "ReverseDNS": "10-99-0-7.isp.example",
    }
    assert parsed(event_from(payload))["extension"]["shost"] == "jump01.corp.example"


def test_missing_log_type_gives_a_stable_slug_signature() -> None:
    result = parsed(sample_event("operational_disconnected"))
    assert result["device"]["event_class_id"] == "canary-disconnected"
    ext = result["extension"]
    assert ext["act"] == "disconnected"
    assert ext["cs5Label"] == "incidentKey"
    # An IncidentKey is longer than externalId's 40 characters: the fingerprint stands in.
    assert ext["externalId"] == sample_event("operational_disconnected").fingerprint
    assert result["severity"] == "5"


def test_audit_record_puts_the_console_user_in_suser() -> None:
    result = parsed(sample_event("audit_canarytoken_create"))
    assert result["device"]["event_class_id"] == "audit-canarytoken-create"
    ext = result["extension"]
    assert ext["suser"] == "example@thinkst.com"
    assert "duser" not in ext
    assert ext["src"] == "1.1.1.1"
    assert ext["act"] == "canarytoken_create"
    assert ext["cs4"] == "flock:default"
    assert json.loads(ext["cs6"]) == {
        "flock_name": "Default Flock",
        "user_browser_language": "en-GB ...",
    }
    assert result["severity"] == "2"


def test_details_without_a_standard_key_are_kept_in_cs6() -> None:
    ext = parsed(sample_event("canarytoken_web_bug"))["extension"]
    assert json.loads(ext["cs6"]) == {
        "Accept": "text/html,...",
        "Accept-Encoding": "gzip, deflate",
        "Accept-Language": "en-GB...",
        "Background Context": "You have had 2 incidents from 1.1.1.1 previously.",
        "Connection": "keep-alive",
        "Host": "example.com",
        "Upgrade-Insecure-Requests": "1",
    }
    assert (ext["spt"], ext["dpt"], ext["requestClientApplication"]) == (
        "64487",
        "80",
        "Mozilla/5.0 ...",
    )


def test_repeated_detail_keys_are_all_kept() -> None:
    event = event_from(
        {
            "Description": "SIP Request",
            "AlertType": "CanaryIncident",
            "CanaryID": "x",
            "AdditionalDetails": [["via", "a"], ["via", "b"], ["Username", "u"], ["Username", "v"]],
        }
    )
    ext = parsed(event)["extension"]
    assert ext["duser"] == "u"
    assert json.loads(ext["cs6"]) == {"via": ["a", "b"], "Username": "v"}


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_is_one_line_with_dictionary_keys_only(name: str) -> None:
    record = cef(sample_event(name))
    assert isinstance(record.body, str)
    assert len(record.body.splitlines()) == 1
    assert not record.syslog_header
    keys = [key for key, _ in extension(sample_event(name))]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", key) for key in keys)
    assert len(keys) == len(set(keys))
    assert set(cefp.parse(record.body)["extension"]) == set(keys)


def test_severity_comes_from_the_configured_table() -> None:
    event = sample_event("incident_ssh_login")
    assert cef(event).severity == 8
    assert cef(event, severity={"by_kind": {"incident": 6}}).severity == 6
    overridden = cef(event, severity={"by_log_type": {4002: 10}, "by_kind": {"incident": 6}})
    assert overridden.severity == 10
    assert isinstance(overridden.body, str) and "|SSH Login Attempt|10|" in overridden.body


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        CefConfig.model_validate({"type": "cef", "vendr": "x"})
    with pytest.raises(ValidationError):
        CefConfig.model_validate({"type": "cef", "syslog_header": "rfc9999"})


# --- CEF inside a syslog header ------------------------------------------------------------------


def test_cef_inside_an_rfc5424_header_is_the_msg_after_nil_structured_data() -> None:
    event = sample_event("incident_ssh_login")
    record = cef(event, syslog_header="rfc5424", facility="local3", hostname="siem-feed")
    assert record.syslog_header
    assert isinstance(record.body, str)
    message = parse_rfc5424(record.body)
    assert message.pri == 19 * 8 + 3  # local3, severity 8 -> syslog "error"
    assert message.hostname == "siem-feed"
    assert message.app_name == "canary-forwarder"
    assert message.msgid == "incident"
    assert message.structured_data == []
    assert message.msg is not None and message.msg.startswith("CEF:0|Thinkst|Canary|")
    assert cefp.parse(message.msg)["extension"]["duser"] == "root"


def test_cef_inside_an_rfc3164_header() -> None:
    record = cef(sample_event("incident_ssh_login"), syslog_header="rfc3164")
    assert record.syslog_header
    assert isinstance(record.body, str)
    message = parse_rfc3164(record.body)
    assert message.timestamp == "Mar  5 08:00:01"
    assert message.hostname == "web-dmz-02"
    assert message.tag == "canary-forwarder"
    assert cefp.parse(message.message)["name"] == "SSH Login Attempt"


# --- hostile input -------------------------------------------------------------------------------


def _escapes(extension_text: str) -> set[str]:
    """Every character that follows a backslash escape in an extension."""
    found: set[str] = set()
    position = 0
    while (position := extension_text.find("\\", position)) != -1:
        found.add(extension_text[position + 1 : position + 2])
        position += 2
    return found


def _as_read(value: str) -> str:
    """What a CEF parser must read back for a raw extension value."""
    return OTHER_BREAKS.sub(" ", value).strip(" ")


@settings(max_examples=50, deadline=None)
@given(events)
def test_hostile_text_inside_a_syslog_header_stays_one_valid_message(event: CanaryEvent) -> None:
    body = cef(event, syslog_header="rfc5424").body
    assert isinstance(body, str)
    message = parse_rfc5424(body)
    assert message.msg is not None
    assert cefp.parse(message.msg)["extension"].get("msg", "") == _as_read(event.intro)
    legacy = cef(event, syslog_header="rfc3164").body
    assert isinstance(legacy, str) and len(legacy.splitlines()) == 1
    assert cefp.parse(legacy.split(": ", 1)[1])["name"] == cefp.parse(message.msg)["name"]


@settings(max_examples=300, deadline=None)
@given(events)
def test_hostile_text_in_every_field_round_trips_through_cefp(event: CanaryEvent) -> None:
    record = cef(event, syslog_header="none")
    body = record.body
    assert isinstance(body, str)
    assert len(body.splitlines()) == 1
    assert "\n" not in body and "\r" not in body
    assert "\t" not in body
    # Never a form parsers disagree on, such as an escaped pipe in the extension (a bare `=`
    # in a value would show below as a key too many).
    assert _escapes(cefp.CEFParser.split(body)[7]) <= {"\\", "=", "n", "r"}
    result = cefp.parse(body)
    expected = {key: _as_read(value) for key, value in extension(event)}
    assert result["extension"] == {key: value for key, value in expected.items() if value}
    header_text = event.description[:512].replace("\r", " ").replace("\n", " ")
    assert result["name"] == OTHER_BREAKS.sub(" ", header_text)
    assert result["severity"] == str(record.severity)
    assert result["extension"].get("msg", "") == _as_read(event.intro)
    if event.canary_name:
        assert result["extension"].get("dhost", "") == _as_read(event.canary_name)
