"""The one severity table: defaults per kind and LogType, overrides, and every format using it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forwarder.mappers._severity import SeverityTable
from forwarder.registry import BUILTIN_MAPPERS, mapper_class

from .helpers import event_from, sample_event


@pytest.mark.parametrize(
    ("sample", "level"),
    [
        ("canarytoken_web_bug", 9),
        ("canarytoken_dns", 9),
        ("incident_ssh_login", 8),
        ("incident_ftp_login", 8),
        ("incident_port_scan", 5),
        ("operational_disconnected", 5),
        ("operational_reconnected", 3),
        ("incident_settings_changed", 3),
        ("operational_flock_settings_changed", 3),
        ("audit_user_login", 2),
        ("audit_canarytoken_create", 2),
        ("test_event", 0),
        ("unknown_opencanary_message", 5),
    ],
)
def test_default_levels(sample: str, level: int) -> None:
    assert SeverityTable().of(sample_event(sample)) == level


def test_every_default_is_ordered_as_documented() -> None:
    table = SeverityTable()
    token = table.of(sample_event("canarytoken_web_bug"))
    attack = table.of(sample_event("incident_ssh_login"))
    scan = table.of(sample_event("incident_port_scan"))
    reconnect = table.of(sample_event("operational_reconnected"))
    audit = table.of(sample_event("audit_user_login"))
    test = table.of(sample_event("test_event"))
    assert token > attack > scan > reconnect > audit > test


def test_kind_and_log_type_overrides_and_their_precedence() -> None:
    table = SeverityTable.model_validate(
        {"by_kind": {"incident": 6, "reconnected": 1}, "by_log_type": {"4002": 10}}
    )
    assert table.of(sample_event("incident_ssh_login")) == 10  # LogType beats kind
    assert table.of(sample_event("incident_ftp_login")) == 6
    assert table.of(sample_event("incident_port_scan")) == 5  # a default LogType entry stays
    assert table.of(sample_event("operational_reconnected")) == 1
    assert table.of(sample_event("canarytoken_web_bug")) == 9  # untouched default


def test_an_operation_without_its_own_entry_uses_the_operational_default() -> None:
    table = SeverityTable.model_validate({"by_kind": {"operational": 4}})
    assert table.of(sample_event("operational_reconnected")) == 3
    event = event_from({"Description": "Canary Settings Changed", "CanaryID": "c"})
    assert event.operation == "canary_settings_changed"
    assert SeverityTable.model_validate({"by_kind": {"canary_settings_changed": 7}}).of(event) == 7


@pytest.mark.parametrize(
    "bad",
    [
        {"by_kind": {"incident": 11}},
        {"by_kind": {"attack": 5}},
        {"by_log_type": {"x": 1}},
        {"x": 1},
    ],
)
def test_invalid_tables_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SeverityTable.model_validate(bad)


@pytest.mark.parametrize("name", sorted(BUILTIN_MAPPERS))
def test_every_builtin_format_takes_its_severity_from_the_table(name: str) -> None:
    cls = mapper_class(name)
    event = sample_event("incident_ssh_login")
    assert cls(cls.config_class.model_validate({"type": name})).map(event).severity == 8
    config = cls.config_class.model_validate(
        {"type": name, "severity": {"by_kind": {"incident": 4}}}
    )
    assert cls(config).map(event).severity == 4
