"""RFC 5424: the RFC's own examples, the strict grammar on every record, Thinkst's layout, and
hostile text that must never add a field or a record."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.rfc5424 import Rfc5424Config, Rfc5424Mapper, structured_data_element

from .helpers import OTHER_BREAKS, event_from, events, sample_event, sample_names
from .syslog_grammar import Rfc5424, SyntaxViolation, parse_rfc5424

BOM = "\ufeff"


def rfc5424(event: CanaryEvent, **options: Any) -> Record:
    return Rfc5424Mapper(Rfc5424Config(type="rfc5424", **options)).map(event)


def parsed(event: CanaryEvent, **options: Any) -> Rfc5424:
    record = rfc5424(event, **options)
    assert isinstance(record.body, str)
    assert record.syslog_header
    return parse_rfc5424(record.body)


def as_read(value: str) -> str:
    """What a receiver reads back from a PARAM-VALUE or MSG for a raw value."""
    return OTHER_BREAKS.sub(" ", value).replace("\r", "\\r").replace("\n", "\\n")


# --- RFC 5424 §6.5 examples and the octet counts of wire-formats §3.3 ----------------------------

RFC_EXAMPLE_1 = (
    "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
    f"{BOM}'su root' failed for lonvick on /dev/pts/8"
)
RFC_EXAMPLE_2 = (
    "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
    '[examplePriority@32473 class="high"]'
)


def test_the_rfc_examples_pass_the_strict_grammar() -> None:
    first = parse_rfc5424(RFC_EXAMPLE_1)
    assert (first.pri, first.app_name, first.procid, first.msgid) == (34, "su", "-", "ID47")
    assert first.msg == f"{BOM}'su root' failed for lonvick on /dev/pts/8"
    second = parse_rfc5424(RFC_EXAMPLE_2)
    assert second.structured_data == [
        ("exampleSDID@32473", [("iut", "3"), ("eventSource", "Application"), ("eventID", "1011")]),
        ("examplePriority@32473", [("class", "high")]),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        '<34>1 2003-10-11T22:14:15.003Z host app - ID47 [id@1 a="x]y"]',  # unescaped ]
        "<192>1 - - - - - -",  # PRIVAL over 191
        "<34>1 2003-10-11t22:14:15.003z host app - ID47 -",  # lower-case t and z
        "<34>1 - - - - " + "m" * 33 + " -",  # MSGID over 32
        "<34>1 - - - - - -\nforged",  # a second line
    ],
)
def test_the_strict_grammar_rejects_what_the_rfc_forbids(bad: str) -> None:
    with pytest.raises(SyntaxViolation):
        parse_rfc5424(bad)


def test_structured_data_element_reproduces_the_rfc_example() -> None:
    elements = structured_data_element(
        "exampleSDID@32473", [("iut", "3"), ("eventSource", "Application"), ("eventID", 1011)]
    ) + structured_data_element("examplePriority@32473", [("class", "high")])
    assert RFC_EXAMPLE_2.endswith(" " + elements)


def test_octet_count_vectors() -> None:
    assert len(b"<13>1 - - - - - - x") == 19
    message = f"<13>1 - - - - - - {BOM}é"
    assert parse_rfc5424(message).msg == f"{BOM}é"
    assert len(message.encode("utf-8")) == 23  # header 18, BOM 3, é 2


# --- our layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sample_names())
@pytest.mark.parametrize("compat", [False, True])
def test_every_sample_is_one_valid_rfc5424_message(name: str, compat: bool) -> None:
    event = sample_event(name)
    message = parsed(event, thinkst_compat=compat)
    assert message.version == 1
    assert message.structured_data
    if event.intro and event.audit is None:
        assert message.msg == BOM + as_read(event.intro)


def test_ssh_login_fields_in_structured_data() -> None:
    event = sample_event("incident_ssh_login")
    message = parsed(event)
    assert message.pri == 16 * 8 + 3  # local0, severity 8 -> error
    assert message.timestamp == "2026-03-05T08:00:01.000000Z"
    assert message.hostname == "web-dmz-02"
    assert message.app_name == "canary-forwarder"
    assert message.procid == "-"
    assert message.msgid == "incident"
    fields = dict(message.element("canary@32473"))
    assert fields["event_id"] == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert fields["log_type"] == "4002"
    assert fields["description"] == "SSH Login Attempt"
    assert fields["canary_port"] == "22"
    assert fields["source_ip"] == "10.99.0.7"
    assert fields["reverse_dns"] == "jump01.corp.example"
    assert fields["severity"] == "8"
    assert message.element("canaryDetails@32473") == [
        ("Username", "root"),
        ("Password", "*******"),
        ("BackgroundContext", "You have had 0 incidents from 10.99.0.7 previously."),
    ]


def test_options_facility_hostname_and_sd_ids() -> None:
    event = sample_event("incident_port_scan")
    message = parsed(
        event,
        facility="auth",
        hostname="canary-console",
        app_name="cf",
        sd_id="alert@99999",
        details_sd_id="more@99999.1",
    )
    assert message.pri == 4 * 8 + 4  # auth, severity 5 -> warning
    assert (message.hostname, message.app_name) == ("canary-console", "cf")
    assert [sd_id for sd_id, _ in message.structured_data] == ["alert@99999", "more@99999.1"]


@pytest.mark.parametrize("sd_id", ["canary", "a b@1", 'a"b@1', "x" * 30 + "@123", "a=b@1"])
def test_invalid_sd_ids_are_rejected(sd_id: str) -> None:
    with pytest.raises(ValidationError):
        Rfc5424Config(type="rfc5424", sd_id=sd_id)


def test_events_without_a_canary_name_have_a_nil_hostname() -> None:
    assert parsed(sample_event("canarytoken_web_bug")).hostname == "-"


def test_a_newline_in_a_value_is_read_back_as_backslash_n() -> None:
    fields = dict(parsed(sample_event("incident_settings_changed")).element("canaryDetails@32473"))
    assert fields["Settings"] == "Webhook enabled: True\\nModified by admin@example.com"


def test_repeated_and_clashing_detail_keys_become_distinct_sd_names() -> None:
    event = event_from(
        {
            "Description": "d",
            "AlertType": "CanaryIncident",
            "CanaryID": "x",
            "AdditionalDetails": [["via", "a"], ["via", "b"], ["Dst Port", "1"], ["DstPort", "2"]],
        }
    )
    assert parsed(event).element("canaryDetails@32473") == [
        ("via", "a"),
        ("via_2", "b"),
        ("DstPort", "1"),
        ("DstPort_2", "2"),
    ]


# --- Thinkst's own layout ------------------------------------------------------------------------

# Thinkst's documented FTP Login Attempt line (docs/syslog/rfc5424.md) and the webhook with the
# same facts: compatibility means the same SD-IDs, names and values.
THINKST_FTP_LINE = (
    "<130>1 2018-08-13T13:18:28.803233+00:00 mycompany-com ThinkstCanary 6051 newincident "
    '[BasicIncidentDetails@51136 eventid="2000" ReverseDNS="attacker.in.mycompany.com" '
    'CanaryName="intranet03.mycompany.com" Description="FTP Login Attempt" CanaryPort="21" '
    'Timestamp="2018-08-13 13:18:28 (UTC)" CanaryIP="192.168.1.69" '
    'IncidentHash="1358e614a0eb2500208dd34ce61300ca" CanaryLocation="Rack22 above switch" '
    'SourceIP="192.168.1.82" CanaryID="0000000018a22bf1"]'
    '[AdditionalIncidentDetails@51136 Username="admin" Password="password"] '
    "FTP Login Attempt has been detected against one of your Canaries "
    "(intranet03.mycompany.com) at 192.168.1.69."
)
THINKST_FTP_WEBHOOK = {
    "Description": "FTP Login Attempt",
    "Timestamp": "2018-08-13 13:18:28 (UTC)",
    "CanaryName": "intranet03.mycompany.com",
    "CanaryID": "0000000018a22bf1",
    "CanaryIP": "192.168.1.69",
    "SourceIP": "192.168.1.82",
    "CanaryLocation": "Rack22 above switch",
    "ReverseDNS": "attacker.in.mycompany.com",
    "CanaryPort": 21,
    "IncidentHash": "1358e614a0eb2500208dd34ce61300ca",
    "Intro": "FTP Login Attempt has been detected against one of your Canaries "
    "(intranet03.mycompany.com) at 192.168.1.69.",
    "AdditionalDetails": [["Username", "admin"], ["Password", "password"]],
    "AlertType": "CanaryIncident",
    "LogType": "2000",
}


def test_thinkst_compat_reproduces_thinksts_structured_data() -> None:
    theirs = parse_rfc5424(THINKST_FTP_LINE)
    ours = parsed(event_from(THINKST_FTP_WEBHOOK), thinkst_compat=True, hostname="mycompany-com")
    assert (ours.app_name, ours.msgid, ours.hostname) == (
        "ThinkstCanary",
        "newincident",
        "mycompany-com",
    )
    assert [sd_id for sd_id, _ in ours.structured_data] == [
        sd_id for sd_id, _ in theirs.structured_data
    ]
    for (_, our_params), (_, their_params) in zip(
        ours.structured_data, theirs.structured_data, strict=True
    ):
        assert dict(our_params) == dict(their_params)
    assert theirs.msg is not None and ours.msg == BOM + theirs.msg


def test_thinkst_compat_key_names_drop_spaces() -> None:
    message = parsed(sample_event("canarytoken_web_bug"), thinkst_compat=True)
    names = [name for name, _ in message.element("AdditionalIncidentDetails@51136")]
    assert "BackgroundContext" in names and "DstPort" in names and "SrcPort" in names
    basic = dict(message.element("BasicIncidentDetails@51136"))
    assert basic["eventid"] == "17000"
    assert basic["Token"] == "xxxxxxxxxxxxxxxxxxxxxxxxx"
    assert basic["Reminder"] == "Link in my inbox"


def test_thinkst_compat_disconnect_without_log_type_says_1004() -> None:
    message = parsed(sample_event("operational_disconnected"), thinkst_compat=True)
    basic = dict(message.element("BasicIncidentDetails@51136"))
    assert basic["eventid"] == "1004"
    assert basic["SourceIP"] == ""
    assert message.element("AdditionalIncidentDetails@51136") == []


def test_thinkst_compat_audit_record() -> None:
    message = parsed(sample_event("audit_user_login"), thinkst_compat=True)
    assert message.msgid == "audittrail"
    assert (
        message.msg == f"{BOM}Action user_login performed by user example@thinkst.com on 1770041874"
    )
    audit = dict(message.element("AuditTrailDetails@51136"))
    assert audit["action_type"] == "user_login"
    assert audit["user_ip"] == "1.1.1.1"
    assert audit["flock_id"] == "None"  # JSON null, as Thinkst's feed writes it


# --- hostile input -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(events)
def test_hostile_text_stays_in_its_param_and_message(event: CanaryEvent) -> None:
    record = rfc5424(event)
    assert isinstance(record.body, str)
    assert len(record.body.splitlines()) == 1
    message = parse_rfc5424(record.body)
    fields = dict(message.element("canary@32473"))
    assert fields["description"] == as_read(event.description)
    assert fields.get("canary_name") == (as_read(event.canary_name) if event.canary_name else None)
    assert fields.get("reverse_dns") == (as_read(event.reverse_dns) if event.reverse_dns else None)
    expected_msg = event.intro
    assert message.msg == (BOM + as_read(expected_msg) if expected_msg else None)
    if event.details:
        details = message.element("canaryDetails@32473")
        assert [value for _, value in details] == [as_read(item.value) for item in event.details]
        assert len({name for name, _ in details}) == len(details)
    else:
        assert [sd_id for sd_id, _ in message.structured_data] == ["canary@32473"]


@settings(max_examples=100, deadline=None)
@given(events)
def test_hostile_text_in_thinkst_layout_stays_in_its_param(event: CanaryEvent) -> None:
    record = rfc5424(event, thinkst_compat=True)
    assert isinstance(record.body, str)
    message = parse_rfc5424(record.body)
    if event.audit is not None:
        audit = dict(message.element("AuditTrailDetails@51136"))
        assert audit["message"] == as_read(event.audit.message)
        return
    basic = dict(message.element("BasicIncidentDetails@51136"))
    assert basic["Description"] == as_read(event.description)
    details = message.element("AdditionalIncidentDetails@51136")
    assert [value for _, value in details] == [as_read(item.value) for item in event.details]
