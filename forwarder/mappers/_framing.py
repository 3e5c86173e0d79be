"""Options and framing shared by the syslog formats and the one-line device formats (CEF, LEEF).

CEF and LEEF lines can go out bare (a file, HEC, or a syslog output that adds its own header) or
already inside an RFC 5424 or RFC 3164 header, which is what ArcSight and QRadar receivers
expect. In RFC 5424 the line is the MSG, after a NILVALUE structured data, and carries no BOM:
CEF and LEEF parsers look for `CEF:` / `LEEF:` at the start of MSG.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from forwarder import __version__
from forwarder.events import CanaryEvent
from forwarder.mappers._severity import SeverityConfig
from forwarder.mappers._syslog import Facility, rfc3164_header, rfc5424_header, syslog_severity
from forwarder.mappers.base import Record

__all__ = ["DeviceLineConfig", "SyslogOptions", "carried", "syslog_hostname"]

SyslogHeader = Literal["none", "rfc5424", "rfc3164"]


class SyslogOptions(SeverityConfig):
    """Syslog header options of a format."""

    facility: Facility = "local0"
    """Syslog facility of the PRI; the severity part comes from the event's severity."""
    hostname: str | None = Field(default=None, max_length=255)
    """HOSTNAME. Unset: the Canary's name when the event has one, else `-` (RFC 5424 NILVALUE).
    Set a constant when your SIEM routes by host (QRadar maps log sources by it)."""
    app_name: str = Field(default="canary-forwarder", min_length=1, max_length=48)
    """APP-NAME (RFC 5424) or TAG (RFC 3164)."""


class DeviceLineConfig(SyslogOptions):
    """Options of CEF and LEEF: the device identity and the optional syslog header."""

    vendor: str = "Thinkst"
    """Device Vendor."""
    product: str = "Canary"
    """Device Product."""
    version: str = __version__
    """Device Version; by default the forwarder's version, since it wrote the record."""
    syslog_header: SyslogHeader = "none"
    """`none`: the bare line. `rfc5424` or `rfc3164`: the line inside that syslog header."""


def syslog_hostname(options: SyslogOptions, event: CanaryEvent) -> str | None:
    """The HOSTNAME to send for `event` (None means NILVALUE)."""
    return options.hostname or event.canary_name


def carried(
    config: DeviceLineConfig, event: CanaryEvent, severity: int, msgid: str, line: str
) -> Record:
    """The record for a CEF or LEEF `line`, inside the configured syslog header if any."""
    if config.syslog_header == "none":
        return Record(event=event, body=line, severity=severity)
    if config.syslog_header == "rfc5424":
        header = rfc5424_header(
            facility=config.facility,
            severity=syslog_severity(severity),
            timestamp=event.timestamp,
            hostname=syslog_hostname(config, event),
            app_name=config.app_name,
            procid=None,
            msgid=msgid,
        )
        return Record(event=event, body=f"{header} - {line}", severity=severity, syslog_header=True)
    header = rfc3164_header(
        facility=config.facility,
        severity=syslog_severity(severity),
        timestamp=event.timestamp,
        hostname=syslog_hostname(config, event),
        tag=config.app_name,
    )
    return Record(event=event, body=f"{header} {line}", severity=severity, syslog_header=True)
