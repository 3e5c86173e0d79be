"""splunk_console: the bodies and sourcetypes of the console's own Splunk HEC integration."""

from __future__ import annotations

import pytest

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.mappers.splunk_console import (
    TEST_CONNECTION_MESSAGE,
    SplunkConsoleConfig,
    SplunkConsoleMapper,
    splunk_sourcetype,
)

from .helpers import sample_event, sample_names


def splunk(event: CanaryEvent, **options: bool) -> Record:
    config = SplunkConsoleConfig.model_validate({"type": "splunk_console", **options})
    return SplunkConsoleMapper(config).map(event)


def test_incident_is_the_webhook_object_without_webhook_only_keys() -> None:
    event = sample_event("incident_ftp_login")
    body = splunk(event).body
    # The console's Splunk example for this incident has these keys and values.
    assert body == {
        "Description": "FTP Login Attempt",
        "Timestamp": "2026-02-02 14:19:02 (UTC)",
        "CanaryName": "canary",
        "CanaryID": "000123456789abcd",
        "CanaryIP": "192.168.1.2",
        "SourceIP": "192.168.1.1",
        "CanaryLocation": "Server room A",
        "ReverseDNS": "",
        "CanaryPort": 21,
        "IncidentHash": "bc84b27ca5327d9d7f915fadae7ef9a4",
        "Intro": "FTP Login Attempt has been detected against one of your Canaries "
        "(newdevicename) at 192.168.1.2.",
        "AdditionalDetails": [
            ["Username", "username"],
            ["Password", "*******"],
            ["Background Context", "You have had 2 incidents from 192.168.1.1 previously."],
        ],
        "AlertType": "CanaryIncident",
    }
    assert splunk_sourcetype(event) == "canary_alerts"


def test_webhook_only_keys_can_be_kept() -> None:
    body = splunk(sample_event("incident_ftp_login"), include_webhook_only_keys=True).body
    assert isinstance(body, dict)
    assert body["LogType"] == "2000"
    assert body["MatchedAnnotations"] == "{}"


def test_audit_is_the_bare_payload() -> None:
    event = sample_event("audit_user_login")
    body = splunk(event).body
    assert body == dict(event.payload["payload"])
    assert isinstance(body, dict) and "type" not in body
    assert splunk_sourcetype(event) == "canary_console_audit"


@pytest.mark.parametrize("sample", ["test_event", "test_event_dummy_incident"])
def test_test_event_is_the_consoles_plain_string(sample: str) -> None:
    event = sample_event(sample)
    record = splunk(event)
    assert record.body == TEST_CONNECTION_MESSAGE
    assert record.severity == 0
    assert splunk_sourcetype(event) == "canary_test_connection"


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_has_one_of_the_three_sourcetypes(name: str) -> None:
    event = sample_event(name)
    assert splunk_sourcetype(event) in {
        "canary_alerts",
        "canary_console_audit",
        "canary_test_connection",
    }
    assert not splunk(event).syslog_header
