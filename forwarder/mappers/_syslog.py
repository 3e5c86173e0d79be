"""Syslog headers (RFC 5424 §6 and RFC 3164 §4), shared by the syslog formats and the syslog output.

Every header field is reduced to what its grammar allows, so no value an attacker controls can
add a field, a record or a line. Structured data and MSG are the formats' business.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from forwarder.events import is_ip

__all__ = [
    "BOM",
    "FACILITIES",
    "Facility",
    "header_field",
    "pri",
    "rfc3164_header",
    "rfc5424_header",
    "syslog_severity",
]

BOM = "\ufeff"
RFC3164_FALLBACK_HOST = "canary-forwarder"

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

Facility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron", "local0", "local1",
    "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip

_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_NOT_TAG = re.compile(r"[^A-Za-z0-9_.-]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def syslog_severity(severity: int) -> int:
    """A 0 (lowest) to 10 (highest) severity as a syslog severity (0 emergency .. 7 debug)."""
    if severity >= 9:
        return 2  # critical, as Thinkst's own syslog feed sends incidents
    if severity >= 7:
        return 3  # error
    if severity >= 5:
        return 4  # warning
    if severity >= 3:
        return 5  # notice
    if severity >= 1:
        return 6  # informational
    return 7  # debug


def pri(facility: str, severity: int) -> str:
    """`<PRIVAL>` for a facility name and a syslog severity (0..7)."""
    return f"<{FACILITIES[facility] * 8 + min(max(severity, 0), 7)}>"


def header_field(value: str | None, limit: int) -> str:
    """A HOSTNAME/APP-NAME/PROCID/MSGID: printable US-ASCII only, at most `limit`, or "-"."""
    if not value:
        return "-"
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or "-"


def rfc5424_header(
    *,
    facility: str,
    severity: int,
    timestamp: datetime,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
) -> str:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID` (no trailing space)."""
    stamp = timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return " ".join(
        (
            f"{pri(facility, severity)}1",
            stamp,
            header_field(hostname, 255),
            header_field(app_name, 48),
            header_field(procid, 128),
            header_field(msgid, 32),
        )
    )


def rfc3164_header(
    *,
    facility: str,
    severity: int,
    timestamp: datetime,
    hostname: str | None,
    tag: str | None,
) -> str:
    """`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG:` with the day space-padded, in UTC."""
    stamp = timestamp.astimezone(UTC)
    when = f"{_MONTHS[stamp.month - 1]} {stamp.day:2d} {stamp:%H:%M:%S}"
    # RFC 3164 hostnames carry no domain part; an address is kept whole.
    name = hostname or ""
    short = name if is_ip(name) else name.split(".")[0]
    # rsyslog takes HOSTNAME only as letters, digits and "._-" ending in a letter or digit;
    # anything else (an attacker's CanaryName, an IPv6 address) it reads as the TAG: forged.
    # RFC 3164 has no NILVALUE: a "-" would be read as the TAG, so an event without a Canary
    # (Canarytokens, audit records) names the relay instead.
    host = _NOT_TAG.sub("_", short)[:255].rstrip("_.-") or RFC3164_FALLBACK_HOST
    clean_tag = _NOT_TAG.sub("_", tag or "")[:32] or "canary-forwarder"
    return f"{pri(facility, severity)}{when} {host} {clean_tag}:"
