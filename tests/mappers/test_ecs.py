"""ECS: every field of every document checked against the ECS 9.4.0 field table in the project."""

from __future__ import annotations

import fnmatch
import importlib.util
import ipaddress
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from forwarder.events import CanaryEvent
from forwarder.mappers.ecs import ECS_VERSION, EcsConfig, EcsMapper, categorisation

from .helpers import event_from, events, sample_event, sample_names

TABLE: dict[str, Any] = json.loads(
    resources.files("forwarder").joinpath("data/ecs_fields.json").read_text("utf-8")
)
FIELDS: Mapping[str, str] = TABLE["fields"]
OWN_NAMESPACE = "thinkst_canary"

_TEXT = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}
_INTEGER = {"long", "integer", "short", "byte", "unsigned_long"}
_FLOAT = {"float", "double", "scaled_float", "half_float"}


def _type_problem(base: str, value: Any) -> str | None:
    if base in _TEXT:
        return None if isinstance(value, str) else "not a string"
    if base == "ip":
        try:
            ipaddress.ip_address(value)
        except (TypeError, ValueError):
            return "not an IP address"
        return None
    if base == "date":
        try:
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return "not an ISO 8601 date"
        return None if isinstance(value, str) else "not a string"
    if base in _INTEGER:
        return None if isinstance(value, int) and not isinstance(value, bool) else "not an integer"
    if base in _FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "not a number"
    if base == "boolean":
        return None if isinstance(value, bool) else "not a boolean"
    if base in ("object", "flattened"):
        return None if isinstance(value, dict) else "not an object"
    return f"type {base} is not produced by this project"


def ecs_violations(doc: Mapping[str, Any]) -> list[str]:
    """Every way `doc` breaks ECS 9.4.0: unknown names, wrong types, arrays, allowed values."""
    problems: list[str] = []
    _walk(doc, "", problems)
    if doc.get("@timestamp") is None:
        problems.append("@timestamp: required")
    if doc.get("ecs", {}).get("version") != TABLE["ecs_version"]:
        problems.append("ecs.version: required, the table's version")
    event = doc.get("event", {})
    for event_type in event.get("type", []):
        for category in event.get("category", []):
            if event_type not in TABLE["expected_event_types"].get(category, []):
                problems.append(f"event.type {event_type!r} is not expected for {category!r}")
    return problems


def _walk(node: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path == OWN_NAMESPACE:
            continue
        declared = FIELDS.get(path)
        if declared is None:
            if isinstance(value, dict):
                _walk(value, f"{path}.", problems)
            else:
                problems.append(f"{path}: not an ECS field")
            continue
        _check(path, declared, value, problems)


def _check(path: str, declared: str, value: Any, problems: list[str]) -> None:
    base = declared.removesuffix("[]")
    if declared.endswith("[]"):
        if not isinstance(value, list) or not value:
            problems.append(f"{path}: ECS declares an array, got {value!r}")
            return
        items = value
    elif isinstance(value, list):
        problems.append(f"{path}: ECS declares a single {base}, got a list")
        return
    else:
        items = [value]
    for item in items:
        problem = _type_problem(base, item)
        if problem:
            problems.append(f"{path}: {problem}: {item!r}")
        allowed = TABLE["allowed_values"].get(path)
        if allowed is not None and item not in allowed:
            problems.append(f"{path}: {item!r} is not an allowed value")
        if path.endswith(".port") and isinstance(item, int) and not 0 <= item <= 65535:
            problems.append(f"{path}: {item} is not a port")


# --- what Elasticsearch's built-in `logs-*-*` template makes of every field -----------------------
#
# Outside the fields it maps itself (@timestamp, data_stream.*), the `logs-*-*` data stream the
# elasticsearch output writes to by default types every field by the dynamic templates of its
# `ecs@mappings` component, by *name*: `thinkst_canary.*` included. Copied from Elasticsearch's
# x-pack/plugin/core/template-resources/src/main/resources/ecs@mappings.json (first match wins).
# Up to 8.14 `ecs_geo_point` matched `location` and `*.location` (elastic/elasticsearch#108338).
# Not modelled: templates on names this project never writes (gen_ai, x509, *.usage, ...).

LUCENE_TERM_BYTES = 32766
"""Longest term Lucene indexes: a keyword without `ignore_above` over it fails the document."""


class Template:
    def __init__(
        self,
        paths: tuple[str, ...],
        mapping: str,
        *,
        only: str | None = None,
        ignore_above: int | None = None,
        by_leaf_name: bool = False,
    ) -> None:
        self.paths, self.mapping, self.only = paths, mapping, only
        self.ignore_above, self.by_leaf_name = ignore_above, by_leaf_name

    def matches(self, path: str, json_type: str) -> bool:
        if self.only is not None and json_type != self.only:
            return False
        name = path.rsplit(".", 1)[-1] if self.by_leaf_name else path
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.paths)


def _ecs_templates(geo_paths: tuple[str, ...]) -> list[Template]:
    return [
        Template(("@timestamp",), "date", by_leaf_name=True),
        Template(("message", "*.message"), "match_only_text"),
        Template(("*event.original",), "keyword (not indexed)"),
        Template(("ip", "*.ip", "*_ip"), "ip", only="string"),
        Template(("*.io.text", "*.message_id", "*registry.data.strings", "*url.path"), "wildcard"),
        Template(("*.body.content", "*url.full", "*url.original"), "wildcard"),
        Template(("*command_line", "*stack_trace"), "wildcard", by_leaf_name=True),
        Template(
            (
                "*.title", "*.executable", "*.name", "*.working_directory", "*.full_name",
                "*file.path", "*file.target_path", "*os.full", "*email.subject",
                "*vulnerability.description", "*user_agent.original",
            ),
            "keyword",
        ),
        Template(
            (
                "*.timestamp", "*_timestamp", "*.not_after", "*.not_before", "*.accessed",
                "created", "*.created", "*.installed", "*.creation_date", "*.ctime", "*.mtime",
                "ingested", "*.ingested", "*.start", "*.end",
            ),
            "date",
        ),
        Template(("*.score.*", "*_score*"), "float"),
        Template(geo_paths, "geo_point"),
        Template(("*structured_data", "*exports", "*imports"), "flattened", only="object"),
        Template(("*",), "keyword", only="string", ignore_above=1024),
    ]  # fmt: skip


ECS_MAPPINGS = {
    "current": _ecs_templates(("*.geo.location",)),
    "before 8.15": _ecs_templates(("location", "*.location")),
}


def _leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, path)
    else:
        yield path, node


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    return "string"


def _refusal(template: Template, value: Any) -> str | None:
    """Why the field this template creates would not take `value` (None: it does)."""
    if template.mapping == "ip":
        text = str(value)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return "not an IP address"
        return "an IPv6 zone" if "%" in text else None
    if template.mapping == "date":
        return _type_problem("date", value)
    if template.mapping == "geo_point":
        return "not a geo point"  # this project never means to write one
    if template.mapping == "float":
        return _type_problem("float", value)
    if template.mapping == "keyword" and template.ignore_above is None and isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
        return f"{size} UTF-8 bytes, over Lucene's term limit" if size > LUCENE_TERM_BYTES else None
    return None


def dynamic_mapping_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every field of `doc` the `logs-*-*` template would refuse or not index as written."""
    problems: list[str] = []
    for version, templates in ECS_MAPPINGS.items():
        for path, value in _leaves(doc, ""):
            if path.startswith("data_stream."):
                continue
            json_type = _json_type(value)
            if json_type == "long" and not -(2**63) <= value < 2**63:
                problems.append(f"{path}: {value} is outside long")
            template = next((t for t in templates if t.matches(path, json_type)), None)
            problem = None if template is None else _refusal(template, value)
            if problem is not None and template is not None:
                shown = repr(value) if len(repr(value)) < 80 else f"{repr(value)[:60]}..."
                problems.append(f"{path} ({template.mapping}, {version}): {problem}: {shown}")
    return problems


def ecs(event: CanaryEvent, **options: Any) -> dict[str, Any]:
    body = EcsMapper(EcsConfig(type="ecs", **options)).map(event).body
    assert isinstance(body, dict)
    return body


# --- the validator itself catches what it must ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"event": {"kind": "incident"}}, "not an allowed value"),
        ({"source": {"ip": "abc.example"}}, "not an IP address"),
        ({"source": {"port": "22"}}, "not an integer"),
        ({"source": {"port": 70000}}, "not a port"),
        ({"related": {"ip": "10.0.0.1"}}, "declares an array"),
        ({"user": {"name": ["a"]}}, "declares a single"),
        ({"user": {"nickname": "a"}}, "not an ECS field"),
        ({"event": {"category": ["authentication"], "type": ["info", "denied"]}}, "not expected"),
        ({"@timestamp": "yesterday"}, "not an ISO 8601 date"),
    ],
)
def test_the_validator_rejects_what_ecs_forbids(change: dict[str, Any], problem: str) -> None:
    doc = ecs(sample_event("incident_ssh_login"))
    for group, values in change.items():
        if isinstance(values, dict):
            doc.setdefault(group, {}).update(values)
        else:
            doc[group] = values
    assert any(problem in found for found in ecs_violations(doc)), ecs_violations(doc)


def test_the_field_table_holds_the_fields_this_project_uses() -> None:
    assert TABLE["ecs_version"] == ECS_VERSION
    assert FIELDS["related.ip"] == "ip[]"
    assert FIELDS["event.category"] == "keyword[]"
    assert FIELDS["source.port"] == "long"
    assert "alert" in TABLE["allowed_values"]["event.kind"]
    assert TABLE["expected_event_types"]["intrusion_detection"] == ["allowed", "denied", "info"]


# --- every document ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_is_a_valid_ecs_document(name: str) -> None:
    assert ecs_violations(ecs(sample_event(name))) == []


@settings(max_examples=200, deadline=None)
@given(events)
def test_every_hostile_event_is_a_valid_ecs_document(event: CanaryEvent) -> None:
    doc = ecs(event)
    assert ecs_violations(doc) == []
    assert json.loads(json.dumps(doc)) == doc


def test_the_dynamic_mapping_model_refuses_what_elasticsearch_refuses() -> None:
    assert dynamic_mapping_problems({"thinkst_canary": {"canary": {"ip": "10.0.0.1"}}}) == []
    assert dynamic_mapping_problems({"x": {"name": "a" * LUCENE_TERM_BYTES}}) == []
    assert dynamic_mapping_problems({"x": {"detail": "a" * 40000}}) == []  # ignore_above 1024
    for doc, problem in [
        ({"thinkst_canary": {"canary": {"ip": "abc.canary.tools"}}}, "not an IP address"),
        ({"thinkst_canary": {"audit": {"user_ip": "fe80::1%eth0"}}}, "an IPv6 zone"),
        ({"thinkst_canary": {"canary": {"location": "DMZ rack 3"}}}, "not a geo point"),
        ({"user": {"name": "\U0001f600" * 8192}}, "over Lucene's term limit"),
        ({"file": {"path": "a" * (LUCENE_TERM_BYTES + 1)}}, "over Lucene's term limit"),
        ({"x": {"end": "tomorrow"}}, "not an ISO 8601 date"),
    ]:
        assert any(problem in found for found in dynamic_mapping_problems(doc)), doc


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_fits_the_logs_template(name: str) -> None:
    assert dynamic_mapping_problems(ecs(sample_event(name))) == []


@settings(max_examples=200, deadline=None)
@given(events)
def test_every_hostile_event_fits_the_logs_template(event: CanaryEvent) -> None:
    assert dynamic_mapping_problems(ecs(event)) == []


def test_addresses_that_are_not_addresses_stay_text() -> None:
    """A Canary's IP fields can hold host names; `*.ip` and `*_ip` names are typed `ip`."""
    event = event_from(
        {
            "Description": "SSH Login Attempt",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "LogType": "4002",
            "CanaryIP": "abc123.canary.tools",
            "CanaryPublicIP": "not an address",
            "SourceIP": "fe80::1%eth0",
        }
    )
    doc = ecs(event)
    assert dynamic_mapping_problems(doc) == []
    assert doc["thinkst_canary"]["canary"]["address"] == "abc123.canary.tools"
    assert doc["thinkst_canary"]["canary"]["public_address"] == "not an address"
    assert doc["thinkst_canary"]["source"]["address"] == "fe80::1%eth0"
    audit = ecs(event_from({"type": "console-audit", "payload": {"user_ip": "proxy.example"}}))
    assert audit["thinkst_canary"]["audit"]["user_address"] == "proxy.example"
    assert dynamic_mapping_problems(audit) == []


def test_ip_fields_hold_the_rfc_5952_form_and_address_fields_the_text_as_sent() -> None:
    event = event_from(
        {
            "Description": "SSH Login Attempt",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "LogType": "4002",
            "CanaryIP": "::A:B:C:D:E:F:1",
            "SourceIP": "::1:2:3:4:5:6:7",
        }
    )
    doc = ecs(event)
    assert doc["source"]["ip"] == "0:1:2:3:4:5:6:7"
    assert doc["source"]["address"] == "::1:2:3:4:5:6:7"
    assert doc["destination"]["ip"] == "0:a:b:c:d:e:f:1"
    assert doc["related"]["ip"] == ["0:1:2:3:4:5:6:7", "0:a:b:c:d:e:f:1"]


HUGE = "\U0001f600" * 9000  # 36,000 UTF-8 bytes


def test_attacker_text_over_the_term_limit_is_cut_in_keyword_fields() -> None:
    event = event_from(
        {
            "Description": "HTTP Login Attempt",
            "AlertType": "CanaryIncident",
            "CanaryID": "c",
            "CanaryName": HUGE,
            "CanaryLocation": HUGE,
            "LogType": "3001",
            "AdditionalDetails": [
                ["Username", HUGE],
                ["User-Agent", HUGE],
                ["Filename", "\\\\srv\\share\\" + HUGE],
            ],
        }
    )
    doc = ecs(event)
    assert dynamic_mapping_problems(doc) == []
    assert ecs_violations(doc) == []
    assert doc["user"]["name"] == HUGE[:8191]
    assert doc["user_agent"]["original"] == HUGE[:8191]
    assert doc["file"]["name"] == HUGE[:8191]
    assert doc["observer"]["name"] == doc["observer"]["geo"]["name"] == HUGE[:8191]
    # The whole text stays in fields that take any length.
    assert [item["value"] for item in doc["thinkst_canary"]["details"]][:2] == [HUGE, HUGE]
    assert doc["related"]["user"] == [HUGE]


def test_two_thousand_detail_keys_add_no_field() -> None:
    def paths(doc: Mapping[str, Any]) -> set[str]:
        return {path for path, _ in _leaves(doc, "")}

    base = {"Description": "HTTP Page Load", "AlertType": "CanaryIncident", "CanaryID": "c"}
    one = ecs(event_from({**base, "AdditionalDetails": [["k", "v"]]}))
    many = [[f"k{i}.{'x' * i}", str(i)] for i in range(2000)] + [["", "empty"], ["@timestamp", "x"]]
    doc = ecs(event_from({**base, "AdditionalDetails": many}))
    assert paths(doc) == paths(one)
    assert doc["@timestamp"] == one["@timestamp"]


# --- the mapping ---------------------------------------------------------------------------------


def test_ssh_login_alert() -> None:
    event = sample_event("incident_ssh_login")
    doc = ecs(event)
    assert doc["@timestamp"] == "2026-03-05T08:00:01.000Z"
    assert doc["message"] == event.intro
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["intrusion_detection", "network", "authentication"]
    assert doc["event"]["type"] == ["info"]
    assert doc["event"]["action"] == "ssh-login-attempt"
    assert doc["event"]["code"] == "4002"
    assert doc["event"]["id"] == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    assert doc["event"]["severity"] == 8
    assert doc["event"]["original"] == event.raw.decode()
    assert doc["observer"] == {
        "vendor": "Thinkst",
        "product": "Canary",
        "type": "honeypot",
        "name": "web-dmz-02",
        "ip": ["10.20.30.42"],
        "serial_number": "00034d476a2c9f22",
        "geo": {"name": "DMZ rack 3"},
    }
    assert doc["source"] == {
        "address": "10.99.0.7",
        "ip": "10.99.0.7",
        "domain": "jump01.corp.example",
    }
    assert doc["destination"] == {"address": "10.20.30.42", "ip": "10.20.30.42", "port": 22}
    assert doc["user"] == {"name": "root"}
    assert doc["related"] == {
        "ip": ["10.99.0.7", "10.20.30.42"],
        "user": ["root"],
        "hosts": ["jump01.corp.example", "web-dmz-02"],
    }
    canary = doc["thinkst_canary"]
    assert canary["details"][0] == {"key": "Username", "value": "root"}
    assert canary["canary"] == {
        "name": "web-dmz-02",
        "id": "00034d476a2c9f22",
        "address": "10.20.30.42",
        "port": 22,
    }
    assert canary["source"] == {"address": "10.99.0.7", "reverse_dns": "jump01.corp.example"}
    assert json.loads(canary["annotations"])["trufflehog_scan"][0].startswith("This looks")


def test_hostname_in_an_address_field_goes_to_domain() -> None:
    doc = ecs(sample_event("incident_settings_changed"))
    assert doc["destination"] == {"address": "abc123.canary.tools", "domain": "abc123.canary.tools"}
    assert doc["observer"]["hostname"] == "abc123.canary.tools"
    assert "ip" not in doc["observer"]
    assert (doc["event"]["kind"], doc["event"]["category"], doc["event"]["type"]) == (
        "event",
        ["configuration"],
        ["change"],
    )


def test_dns_token_names_the_question() -> None:
    doc = ecs(sample_event("canarytoken_dns"))
    assert doc["dns"]["question"]["name"] == "zyxwvutsrqponmlkjihgfedcb.canarytokens.example"
    assert doc["event"]["category"] == ["intrusion_detection", "network"]
    assert "name" not in doc["observer"]  # the console, not a bird, saw it


def test_web_bug_token_has_the_user_agent_and_url_domain() -> None:
    doc = ecs(sample_event("canarytoken_web_bug"))
    assert doc["user_agent"]["original"] == "Mozilla/5.0 ..."
    assert doc["url"]["domain"] == "example.com"
    assert doc["source"]["port"] == 64487
    assert doc["destination"]["port"] == 80
    assert doc["event"]["severity"] == 9


@pytest.mark.parametrize(
    ("host", "domain", "port"),
    [
        ("example.com:8080", "example.com", 8080),
        ("10.0.0.1:80", "10.0.0.1", 80),
        ("[2001:db8::1]:443", "[2001:db8::1]", 443),
        ("example.com", "example.com", None),
        ("2001:db8::1", "2001:db8::1", None),
        ("example.com:99999", "example.com:99999", None),
        ("example.com:http", "example.com:http", None),
    ],
)
def test_the_host_header_is_split_into_url_domain_and_url_port(
    host: str, domain: str, port: int | None
) -> None:
    # ECS url.domain is the name alone; with the port in it no search on the domain matches.
    payload = {
        "Description": "HTTP Page Load",
        "AlertType": "CanaryIncident",
        "CanaryID": "c",
        "AdditionalDetails": [["Host", host]],
    }
    doc = ecs(event_from(payload))
    assert doc["url"]["domain"] == domain
    assert doc["url"].get("port") == port
    assert domain in doc["related"]["hosts"]
    assert ecs_violations(doc) == []


SHARE_PATH = "\\\\srv\\share\\Sales 2017.pdf"


def test_file_name_and_path_are_split() -> None:
    event = event_from(
        {
            "Description": "Shared File Opened",
            "AlertType": "CanaryIncident",
            "CanaryID": "x",
            "LogType": "5000",
            "AdditionalDetails": [
                ["User", "guest"],
                ["Filename", SHARE_PATH],
            ],
        }
    )
    doc = ecs(event)
    assert doc["file"] == {"name": "Sales 2017.pdf", "path": SHARE_PATH}
    assert "file" in doc["event"]["category"]


def test_disconnect_and_reconnect_are_host_end_and_start() -> None:
    assert ecs(sample_event("operational_disconnected"))["event"]["type"] == ["end"]
    reconnected = ecs(sample_event("operational_reconnected"))["event"]
    assert (reconnected["category"], reconnected["type"]) == (["host"], ["start"])


def test_connection_change_of_unknown_direction_is_host_info() -> None:
    """LogType 1004 is both disconnect and reconnect; without the words it is neither, and
    certainly not a configuration change."""
    event = event_from(
        {"Description": "Canary status", "CanaryID": "c", "LogType": 1004, "Intro": "status"}
    )
    assert (event.kind.value, event.operation) == ("operational", None)
    assert categorisation(event) == ("event", ["host"], ["info"], None)


def test_audit_login_is_authentication_by_the_console_user() -> None:
    doc = ecs(sample_event("audit_user_login"))
    assert doc["event"]["kind"] == "event"
    assert doc["event"]["category"] == ["authentication"]
    assert doc["event"]["type"] == ["start"]
    assert doc["event"]["outcome"] == "success"
    assert doc["event"]["action"] == "user_login"
    assert doc["event"]["dataset"] == "thinkst_canary.audit"
    assert doc["user"] == {"name": "example@thinkst.com", "email": "example@thinkst.com"}
    assert doc["source"]["ip"] == "1.1.1.1"
    assert "code" not in doc["event"]


@pytest.mark.parametrize(
    ("action", "category", "event_type"),
    [
        ("canarytoken_create", "configuration", "creation"),
        ("user_logout", "authentication", "end"),
        ("user_delete", "iam", "deletion"),
        ("user_assign_to_flock", "iam", "change"),
        ("flock_move", "configuration", "change"),
        ("device_schedule_reboot", "configuration", "change"),
    ],
)
def test_audit_actions_get_an_iam_configuration_or_authentication_category(
    action: str, category: str, event_type: str
) -> None:
    event = event_from({"type": "console-audit", "payload": {"action_type": action}})
    kind, categories, types, _ = categorisation(event)
    assert (kind, categories, types) == ("event", [category], [event_type])


def test_test_event_is_an_event_of_lowest_severity() -> None:
    doc = ecs(sample_event("test_event"))
    assert doc["event"]["kind"] == "event"
    assert doc["event"]["severity"] == 0


def test_original_can_be_left_out() -> None:
    assert (
        "original" not in ecs(sample_event("incident_ssh_login"), include_original=False)["event"]
    )


# --- the table's derivation ----------------------------------------------------------------------


def _derive_script() -> Any:
    path = Path(__file__).parents[2] / "scripts" / "derive_ecs_fields.py"
    spec = importlib.util.spec_from_file_location("derive_ecs_fields", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_derivation_keeps_types_arrays_and_allowed_values() -> None:
    flat = {
        "event.kind": {
            "type": "keyword",
            "normalize": [],
            "allowed_values": [{"name": "alert"}, {"name": "event"}],
        },
        "event.category": {
            "type": "keyword",
            "normalize": ["array"],
            "allowed_values": [{"name": "web", "expected_event_types": ["access", "info"]}],
        },
        "labels": {"type": "object", "normalize": [], "object_type": "keyword"},
        "related.ip": {"type": "ip", "normalize": ["array"]},
    }
    table = _derive_script().derive(flat, "9.4.0", "0" * 64)
    assert table["ecs_version"] == "9.4.0"
    assert table["fields"] == {
        "event.category": "keyword[]",
        "event.kind": "keyword",
        "labels": "object",
        "related.ip": "ip[]",
    }
    assert table["object_types"] == {"labels": "keyword"}
    assert table["allowed_values"] == {"event.category": ["web"], "event.kind": ["alert", "event"]}
    assert table["expected_event_types"] == {"web": ["access", "info"]}
