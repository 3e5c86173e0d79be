"""`ecs`: an Elastic Common Schema 9.4.0 document, nested, ready for Elasticsearch.

Incidents and Canarytokens are `event.kind: alert`; audit records, the test event and the fleet's
own operational events are `event`. Categories and types are chosen so every `event.type` is one
ECS expects for every listed `event.category`. Addresses are validated before they go into an
`ip` field; a hostname where an address was expected goes into the matching `domain` field.
Everything Canary-specific is kept under `thinkst_canary.*`, with AdditionalDetails as a list of
`{key, value}` objects so attacker-chosen keys cannot create Elasticsearch fields.

Elasticsearch's built-in `logs-*-*` template (the elasticsearch output's default target) types
fields it has no mapping for by their names (its `ecs@mappings` dynamic templates), and
`thinkst_canary.*` is no exception: a field named `*.ip` or `*_ip` becomes an `ip`, one named
`*.location` a `geo_point` (before 8.15), and `*.name`, `*file.path` and `*user_agent.original`
keywords with no `ignore_above`. So the Canary's unvalidated addresses are `*address` there,
CanaryLocation is `observer.geo.name`, and attacker text in those keywords is cut to
`KEYWORD_LIMIT` characters (the whole text stays in `thinkst_canary.details`).
"""

from __future__ import annotations

import ntpath
import re
from collections.abc import Iterable
from typing import Any

from forwarder.events import CanaryEvent, EventKind
from forwarder.mappers._escape import json_text
from forwarder.mappers._fields import extract, host_or_ip, is_dns_token, iso_ms, slug
from forwarder.mappers._severity import SeverityConfig
from forwarder.mappers.base import Mapper, Record

__all__ = ["ECS_VERSION", "EcsConfig", "EcsMapper", "categorisation"]

ECS_VERSION = "9.4.0"
MODULE = "thinkst_canary"

# LogTypes by what the attacker touched (canary-webhooks.md §1a); logins are also recognised by
# their Description so new login types need no code.
_LOGIN_LOG_TYPES = frozenset(
    {2000, 3001, 4002, 5010, 6001, 8001, 9001, 9002, 12001, 14001, 14002, 14003, 14004, 28002,
     29001, 31001, 32001}
)  # fmt: skip
_WEB_LOG_TYPES = frozenset({3000, 3001, 3002, 3003, 3004, 3005, 3006, 7001})
_FILE_LOG_TYPES = frozenset({5000, 10001})
_LOCAL_TAMPERING = 30001

Categorisation = tuple[str, list[str], list[str], str | None]

KEYWORD_LIMIT = 8191
"""Most characters written to a keyword field that may have no `ignore_above`: at most 32,764
UTF-8 bytes. Lucene refuses a term over 32,766 bytes, and with it the whole document."""


class EcsConfig(SeverityConfig):
    """Options of the `ecs` format."""

    include_original: bool = True
    """Put the webhook body, as received, in `event.original`."""


class EcsMapper(Mapper[EcsConfig]):
    config_class = EcsConfig

    def map(self, event: CanaryEvent) -> Record:
        severity = self.config.severity.of(event)
        fields = extract(event)
        audit = event.audit
        source_ip, source_host = host_or_ip(event.source_ip)
        canary_ip, canary_host = host_or_ip(event.canary_ip)
        public_ip, _ = host_or_ip(event.canary_public_ip)
        # Audit records and Canarytokens are seen by the console, not by a bird.
        bird = audit is None and event.kind is not EventKind.CANARYTOKEN
        source_domain = source_host or event.reverse_dns
        url_domain, url_port = _host_and_port(event.detail("Host"))
        file_name = ntpath.basename(fields.file_name) if fields.file_name else None  # / and \
        file_path = fields.file_name if file_name != fields.file_name else None
        hosts = (source_domain, canary_host, event.canary_name if bird else None, url_domain)
        location = _keyword(event.canary_location)
        doc: dict[str, Any] = {
            "@timestamp": iso_ms(event.timestamp),
            "ecs": {"version": ECS_VERSION},
            "message": event.intro or event.description,
            "event": self._event_section(event, severity),
            "observer": _present(
                vendor="Thinkst",
                product="Canary",
                type="honeypot",
                name=_keyword(event.canary_name) if bird else None,
                hostname=canary_host if bird else None,
                ip=_unique((canary_ip, public_ip)) if bird else None,
                serial_number=event.canary_id if bird else None,
                geo={"name": location} if location else None,
            ),
            "source": _present(
                address=event.source_ip, ip=source_ip, domain=source_domain, port=fields.source_port
            ),
            "destination": _present(
                address=event.canary_ip,
                ip=canary_ip,
                domain=canary_host,
                port=fields.destination_port,
            ),
            "user": _present(
                name=_keyword(fields.user_name),
                domain=fields.user_domain,
                email=fields.user_name if audit and "@" in (fields.user_name or "") else None,
            ),
            "user_agent": {"original": _keyword(fields.user_agent)} if fields.user_agent else None,
            "url": _present(
                original=fields.url or fields.path,
                path=fields.path,
                domain=url_domain,
                port=url_port,
            ),
            "file": _present(
                name=_keyword(file_name or fields.file_name), path=_keyword(file_path)
            ),
            "dns": {"question": {"name": _keyword(fields.dns_name)}} if fields.dns_name else None,
            "related": _present(
                ip=_unique((source_ip, canary_ip, public_ip)),
                user=[fields.user_name] if fields.user_name else None,
                hosts=_unique((*hosts, fields.dns_name)),
            ),
            MODULE: _canary(event),
        }
        return Record(event=event, body={k: v for k, v in doc.items() if v}, severity=severity)

    def _event_section(self, event: CanaryEvent, severity: int) -> dict[str, Any]:
        kind, categories, types, outcome = categorisation(event)
        audit = event.audit
        return _present(
            kind=kind,
            category=categories,
            type=types,
            outcome=outcome,
            action=audit.action_type if audit else slug(event.description),
            code=None if event.log_type is None else str(event.log_type),
            id=event.id,
            severity=severity,
            module=MODULE,
            dataset=f"{MODULE}.{'audit' if audit else 'alert'}",
            created=iso_ms(event.received_at),
            original=event.raw.decode("utf-8", "replace") if self.config.include_original else None,
        )


def categorisation(event: CanaryEvent) -> Categorisation:
    """`event.kind`, `event.category`, `event.type` and `event.outcome` for an event."""
    if event.audit is not None:
        return _audit_categorisation(event.audit.action_type.lower())
    if event.kind is EventKind.OPERATIONAL:
        if event.operation == "disconnected":
            return "event", ["host"], ["end"], None
        if event.operation == "reconnected":
            return "event", ["host"], ["start"], None
        if event.operation is None:
            # LogType 1004 (disconnect and reconnect share it) without the words that say which.
            return "event", ["host"], ["info"], None
        return "event", ["configuration"], ["change"], None
    if event.kind is EventKind.CANARYTOKEN:
        network = ["network"] if is_dns_token(event) else []
        return "alert", ["intrusion_detection", *network], ["info"], None
    if event.kind is EventKind.INCIDENT:
        return "alert", _incident_categories(event), ["info"], None
    return "event", ["intrusion_detection"], ["info"], None


def _incident_categories(event: CanaryEvent) -> list[str]:
    log_type = event.log_type
    if log_type == _LOCAL_TAMPERING:
        return ["intrusion_detection", "host"]
    categories = ["intrusion_detection", "network"]
    if log_type in _LOGIN_LOG_TYPES or "login" in event.description.lower():
        categories.append("authentication")
    if log_type in _WEB_LOG_TYPES:
        categories.append("web")
    if log_type in _FILE_LOG_TYPES:
        categories.append("file")
    return categories


def _audit_categorisation(action: str) -> Categorisation:
    outcome = "failure" if "fail" in action else "success"
    if "login" in action or "logout" in action:
        return "event", ["authentication"], ["end" if "logout" in action else "start"], outcome
    if any(word in action for word in ("create", "add", "invite")):
        change = "creation"
    elif any(word in action for word in ("delete", "remove")):
        change = "deletion"
    else:
        change = "change"
    iam = action.startswith("user_") or "role" in action or "permission" in action
    return "event", ["iam" if iam else "configuration"], [change], outcome


def _canary(event: CanaryEvent) -> dict[str, Any]:
    """The Canary event under the `json` format's names, less what the ECS fields already say
    (id, times, intro, location) and in forms that cannot create mapping fields: AdditionalDetails
    as `{key, value}` objects, annotations and unknown keys as JSON text. The IP fields, which
    may hold anything, are `address` / `public_address` / `user_address`, names no dynamic
    template types as `ip` (see the module docstring)."""
    audit = event.audit_fields()
    if audit is not None:
        audit = {
            ("user_address" if key == "user_ip" else key): value for key, value in audit.items()
        }
    canary = _present(
        name=_keyword(event.canary_name),
        id=event.canary_id,
        address=event.canary_ip,
        public_address=event.canary_public_ip,
        port=event.canary_port,
        flock=event.flock,
    )
    return _present(
        fingerprint=event.fingerprint,
        kind=event.kind.value,
        operation=event.operation,
        log_type=event.log_type,
        log_type_name=event.log_type_name,
        alert_type=event.alert_type,
        description=event.description,
        canary=canary or None,
        source=_present(address=event.source_ip, reverse_dns=event.reverse_dns) or None,
        incident_hash=event.incident_hash,
        incident_key=event.incident_key,
        token=_present(**event.token_fields()) or None,
        details=[{"key": item.key, "value": item.value} for item in event.details] or None,
        annotations=json_text(event.annotations) if event.annotations else None,
        audit=None if audit is None else _present(**audit),
        extra=json_text(event.extra) if event.extra else None,
        quirks=list(event.quirks) or None,
    )


def _present(**values: Any) -> dict[str, Any]:
    """The values that are not None (callers pass None, never an empty text or list)."""
    return {key: value for key, value in values.items() if value is not None}


_HOST_WITH_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*):([0-9]{1,5})")


def _host_and_port(host: str | None) -> tuple[str | None, int | None]:
    """A Host header (RFC 9110 §7.2) as ECS `url.domain` and `url.port`.

    `name:port` and `[v6]:port` are split (ECS keeps the brackets of an IPv6 literal in the
    domain); anything else, a bare IPv6 address included, is the domain as sent.
    """
    if not host:
        return None, None
    match = _HOST_WITH_PORT.fullmatch(host)
    if match is None or not match.group(1) or int(match.group(2)) > 65535:
        return host, None
    return match.group(1), int(match.group(2))


def _keyword(text: str | None) -> str | None:
    """`text` cut to `KEYWORD_LIMIT` characters, for a keyword with no `ignore_above`."""
    if text is None or len(text) <= KEYWORD_LIMIT:
        return text
    return text[:KEYWORD_LIMIT]


def _unique(values: Iterable[str | None]) -> list[str] | None:
    """The values that are there, each once, in order; None when there is none."""
    unique: list[str] = []
    for value in values:
        if value and value not in unique:
            unique.append(value)
    return unique or None
