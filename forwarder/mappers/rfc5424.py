"""`rfc5424`: a complete RFC 5424 syslog message with the Canary fields as structured data.

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [canary@32473 ...][canaryDetails@32473 ...] BOM Intro

The first element carries the event's own fields, the second its AdditionalDetails with keys made
into valid SD-NAMEs. `thinkst_compat: true` reproduces instead the layout of Thinkst's own syslog
feed (APP-NAME `ThinkstCanary`, MSGID `newincident` / `audittrail`, the `@51136` SD-IDs and
their key names) so SIEM content written for that feed works unchanged.

The message is always one line: CR and LF in a value or in MSG become the two characters `\\r` /
`\\n` (RFC 5424 has no escape for them), other control characters a space. See docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated

from pydantic import StringConstraints

from forwarder.events import AuditRecord, CanaryEvent
from forwarder.mappers._escape import cached_key_layouts, one_line, sd_name, sd_values, unique
from forwarder.mappers._fields import iso_ms
from forwarder.mappers._framing import SyslogOptions, syslog_hostname
from forwarder.mappers._syslog import BOM, rfc5424_header, syslog_severity
from forwarder.mappers.base import Mapper, Record

__all__ = ["Rfc5424Config", "Rfc5424Mapper", "SdId", "structured_data_element"]

# RFC 5424 §6.3.2: a private SD-ID is name@<private enterprise number>, 32 characters at most.
SdId = Annotated[
    str,
    StringConstraints(
        max_length=32, pattern=r"^[\x21\x23-\x3c\x3e\x3f\x41-\x5c\x5e-\x7e]+@\d+(\.\d+)*$"
    ),
]

THINKST_APP_NAME = "ThinkstCanary"
THINKST_BASIC = "BasicIncidentDetails@51136"
THINKST_ADDITIONAL = "AdditionalIncidentDetails@51136"
THINKST_AUDIT = "AuditTrailDetails@51136"
# Disconnect and reconnect alerts often arrive without a LogType; Thinkst's feed says 1004.
_DEVICE_STATE_LOG_TYPE = 1004

Param = tuple[str, str | int | None]


class Rfc5424Config(SyslogOptions):
    """Options of the `rfc5424` format."""

    sd_id: SdId = "canary@32473"
    """SD-ID of the element with the event's fields. 32473 is the documentation enterprise
    number (RFC 5612): use your organisation's own in production."""
    details_sd_id: SdId = "canaryDetails@32473"
    """SD-ID of the element with the AdditionalDetails."""
    thinkst_compat: bool = False
    """Reproduce Thinkst's own syslog layout; `app_name`, `sd_id` and `details_sd_id` are then
    ignored."""


class Rfc5424Mapper(Mapper[Rfc5424Config]):
    config_class = Rfc5424Config

    def map(self, event: CanaryEvent) -> Record:
        severity = self.config.severity.of(event)
        if self.config.thinkst_compat:
            app_name, msgid, elements, message = _thinkst_layout(event)
        else:
            app_name = self.config.app_name
            msgid = event.kind.value
            elements = self._own_layout(event, severity)
            message = event.intro
        header = rfc5424_header(
            facility=self.config.facility,
            severity=syslog_severity(severity),
            timestamp=event.timestamp,
            hostname=syslog_hostname(self.config, event),
            app_name=app_name,
            procid=None,
            msgid=msgid,
        )
        body = f"{header} {''.join(elements)}"
        if message:
            body += f" {BOM}{one_line(message)}"
        return Record(event=event, body=body, severity=severity, syslog_header=True)

    def _own_layout(self, event: CanaryEvent, severity: int) -> list[str]:
        elements = [structured_data_element(self.config.sd_id, _own_params(event, severity))]
        if event.details:
            details = ((item.key, item.value) for item in event.details)
            elements.append(structured_data_element(self.config.details_sd_id, details))
        return elements


def structured_data_element(sd_id: str, params: Iterable[Param]) -> str:
    """`[SD-ID name="value" ...]`: names made valid and distinct, values escaped, None left out.

    `sd_id` must already be a valid SD-ID (the config checks it).
    """
    present = [(name, value) for name, value in params if value is not None]
    names = _param_names(tuple(name for name, _ in present))
    values = sd_values([value if isinstance(value, str) else str(value) for _, value in present])
    body = "".join(f' {name}="{value}"' for name, value in zip(names, values, strict=True))
    return f"[{sd_id}{body}]"


@cached_key_layouts
def _param_names(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(unique(sd_name(key) for key in keys))


def _own_params(event: CanaryEvent, severity: int) -> Iterator[Param]:
    yield "event_id", event.id
    yield "kind", event.kind.value
    yield "operation", event.operation
    yield "log_type", event.log_type
    yield "description", event.description
    yield "timestamp", iso_ms(event.timestamp)
    yield "severity", severity
    yield "canary_name", event.canary_name
    yield "canary_id", event.canary_id
    yield "canary_ip", event.canary_ip
    yield "canary_public_ip", event.canary_public_ip
    yield "canary_location", event.canary_location
    yield "canary_port", event.canary_port
    yield "flock", event.flock
    yield "source_ip", event.source_ip
    yield "reverse_dns", event.reverse_dns
    yield "incident_hash", event.incident_hash
    yield "incident_key", event.incident_key
    yield "token", event.token
    yield "reminder", event.reminder
    yield "triggered", event.triggered
    if event.audit is not None:
        audit = event.audit
        yield "action_type", audit.action_type
        yield "user", audit.user
        yield "user_ip", audit.user_ip
        yield "user_agent", audit.user_agent
        yield "user_language", audit.user_language
        yield "access_route", audit.access_route
        yield "flock_name", audit.flock_name


def _thinkst_layout(event: CanaryEvent) -> tuple[str, str, list[str], str]:
    """APP-NAME, MSGID, SD elements and MSG as Thinkst's own syslog feed writes them."""
    if event.audit is not None:
        epoch = int(event.timestamp.timestamp())
        message = (
            f"Action {event.audit.action_type} performed by user {event.audit.user} on {epoch}"
        )
        element = structured_data_element(THINKST_AUDIT, _thinkst_audit_params(event, event.audit))
        return THINKST_APP_NAME, "audittrail", [element], message
    # Thinkst's key names are the AdditionalDetails keys with spaces removed (sd_name does that).
    details = ((item.key, item.value) for item in event.details)
    elements = [
        structured_data_element(THINKST_BASIC, _thinkst_basic_params(event)),
        structured_data_element(THINKST_ADDITIONAL, details),
    ]
    return THINKST_APP_NAME, "newincident", elements, event.intro


def _thinkst_basic_params(event: CanaryEvent) -> Iterator[Param]:
    log_type = event.log_type
    if log_type is None and event.operation in ("disconnected", "reconnected"):
        log_type = _DEVICE_STATE_LOG_TYPE
    yield "eventid", log_type
    yield "Description", event.description
    yield "Timestamp", event.timestamp.strftime("%Y-%m-%d %H:%M:%S (UTC)")
    yield "CanaryName", event.canary_name
    yield "CanaryID", event.canary_id
    yield "CanaryIP", event.canary_ip
    yield "CanaryPublicIP", event.canary_public_ip
    yield "CanaryLocation", event.canary_location
    yield "CanaryPort", event.canary_port
    yield "SourceIP", event.source_ip or ""
    yield "ReverseDNS", event.reverse_dns
    yield "IncidentHash", event.incident_hash
    yield "Reminder", event.reminder
    yield "Token", event.token
    yield "Flock", event.flock


def _thinkst_audit_params(event: CanaryEvent, audit: AuditRecord) -> Iterator[Param]:
    # The audit payload's own key names; Thinkst's feed writes JSON null as "None".
    yield "timestamp", event.timestamp_raw or event.timestamp.isoformat()
    yield "action_type", audit.action_type
    yield "message", audit.message
    yield "user", audit.user or "None"
    yield "user_ip", audit.user_ip or "None"
    yield "user_browser_agent", audit.user_agent or "None"
    yield "user_browser_language", audit.user_language or "None"
    yield "user_access_route", audit.access_route or ""
    yield "flock_id", audit.flock_id or "None"
    yield "flock_name", audit.flock_name or "None"
