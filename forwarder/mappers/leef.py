"""`leef`: IBM QRadar Log Event Extended Format 2.0, one line per event.

`LEEF:2.0|Thinkst|Canary|<version>|<LogType>|<delimiter>|devTime=...<D>sev=...<D>src=...`

LEEF has no escape mechanism, so the delimiter, CR, LF and other control characters in a value
become spaces and `|` in a header field a space: no value can add an attribute or a line. A
backslash in a header field is doubled, so a reader that takes `\\|` as an escaped pipe (as CEF
does) still finds every field end. The delimiter cannot be a character of the addresses, host
names and names QRadar parses, which it would turn into spaces.
QRadar's normalised attributes are used where they fit (devTime, sev, cat, src, dst, srcPort,
dstPort, usrName, url, domain); the rest are custom attributes, and AdditionalDetails nothing
else carries are kept as `detail<Key>` attributes. The mapping table is in docs/formats.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime

from pydantic import field_validator

from forwarder.events import CanaryEvent
from forwarder.mappers._escape import (
    cached_key_layouts,
    leef_header,
    leef_key,
    leef_values,
    unique,
)
from forwarder.mappers._fields import Fields, epoch_ms, extract, host_or_ip, leftovers, signature_id
from forwarder.mappers._framing import DeviceLineConfig, carried
from forwarder.mappers.base import Mapper, Record

__all__ = ["LeefConfig", "LeefMapper", "attributes"]

EVENT_ID_LIMIT = 255
HEADER_FIELD_LIMIT = 255
_HEX_DELIMITER = re.compile(r"^0?[xX]([0-9A-Fa-f]{1,4})$")
# A delimiter in a value becomes a space. These are in the values QRadar parses: addresses
# (src, dst), host names, e-mail addresses (usrName), URLs, action names, event ids and the
# devTimeFormat pattern, which a space would break.
_IN_PARSED_VALUES = ".:-_@/"
_UNUSABLE_DELIMITERS = frozenset("=|\\ \r\n" + _IN_PARSED_VALUES)
# Controls (NUL, NEL, ...) and line separators end a line or a string for some receiver;
# surrogates cannot be written in UTF-8 at all.
_BREAKING_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# The header's hex form has 1 to 4 digits.
_LARGEST_DELIMITER = "\uffff"
# Epoch milliseconds have 13 digits from 2001-09-09T01:46:40Z on; QRadar reads 10 or 13 digits
# as an epoch and anything else only through devTimeFormat.
_THIRTEEN_DIGITS = 10**12
DEV_TIME_FORMAT = "MMM dd yyyy HH:mm:ss.SSS z"
"""IBM's own suggested pattern (Java SimpleDateFormat), for event times before 2001-09-09."""
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Pair = tuple[str, str | int | None]


class LeefConfig(DeviceLineConfig):
    """Options of the `leef` format."""

    delimiter: str = "^"
    """Attribute delimiter: one character, or its code in LEEF's hex form (`x09`, `0x5E`)."""
    hex_delimiter: bool = False
    """Write the delimiter in the header in hex (`0x5E`); always done for a non-printable one."""

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        hex_form = _HEX_DELIMITER.match(value)
        if hex_form:
            value = chr(int(hex_form.group(1), 16))
        if len(value) != 1:
            raise ValueError("must be one character or its hex code such as x09 or 0x5E")
        if value.isalnum() or value in _UNUSABLE_DELIMITERS or value > _LARGEST_DELIMITER:
            raise ValueError(f"{value!r} cannot separate LEEF attributes")
        if value != "\t" and unicodedata.category(value) in _BREAKING_CATEGORIES:
            raise ValueError(f"{value!r} cannot separate LEEF attributes: it breaks lines")
        return value


class LeefMapper(Mapper[LeefConfig]):
    config_class = LeefConfig

    def __init__(self, config: LeefConfig) -> None:
        super().__init__(config)
        delimiter = config.delimiter
        printable = "\x21" <= delimiter <= "\x7e"
        shown = delimiter if printable and not config.hex_delimiter else f"0x{ord(delimiter):02X}"
        vendor = leef_header(config.vendor, HEADER_FIELD_LIMIT)
        product = leef_header(config.product, HEADER_FIELD_LIMIT)
        version = leef_header(config.version, HEADER_FIELD_LIMIT)
        self._prefix = f"LEEF:2.0|{vendor}|{product}|{version}|"
        self._suffix = f"|{shown}|"

    def map(self, event: CanaryEvent) -> Record:
        severity = self.config.severity.of(event)
        delimiter = self.config.delimiter
        event_id = leef_header(signature_id(event), EVENT_ID_LIMIT)
        pairs = attributes(event, severity)
        values = leef_values([value for _, value in pairs], delimiter)
        body = delimiter.join(
            f"{key}={value}" for (key, _), value in zip(pairs, values, strict=True)
        )
        line = f"{self._prefix}{event_id}{self._suffix}{body}"
        return carried(self.config, event, severity, event.kind.value, line)


def attributes(event: CanaryEvent, severity: int) -> list[tuple[str, str]]:
    """The attributes before cleaning; keys are unique and alphanumeric, empty values left out."""
    fields = extract(event)
    present = [
        (key, value if isinstance(value, str) else str(value))
        for key, value in _pairs(event, fields, severity)
        if value is not None and value != ""
    ]
    keys = _unique_keys(tuple(key for key, _ in present))
    return [(key, value) for key, (_, value) in zip(keys, present, strict=True)]


@cached_key_layouts
def _unique_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(unique(keys, separator=""))


def _pairs(event: CanaryEvent, fields: Fields, severity: int) -> Iterator[Pair]:
    source_ip, source_host = host_or_ip(event.source_ip)
    canary_ip, canary_host = host_or_ip(event.canary_ip)
    millis = epoch_ms(event.timestamp)
    if millis >= _THIRTEEN_DIGITS:
        yield "devTime", millis
    else:
        yield "devTime", _dev_time_text(event.timestamp)
        yield "devTimeFormat", DEV_TIME_FORMAT
    yield "sev", max(severity, 1)
    yield "cat", event.kind.value
    yield "src", source_ip
    yield "srcPort", fields.source_port
    yield "dst", canary_ip
    yield "dstPort", fields.destination_port
    yield "usrName", fields.user_name
    yield "domain", fields.user_domain
    yield "url", fields.url or fields.path
    yield "action", event.audit.action_type if event.audit is not None else event.operation
    yield "description", event.description
    yield "msg", event.intro
    yield "externalId", event.id
    yield "srcHost", source_host or event.reverse_dns
    yield "canaryName", event.canary_name
    yield "canaryId", event.canary_id
    yield "canaryHost", canary_host
    yield "canaryPublicIp", event.canary_public_ip
    yield "canaryLocation", event.canary_location
    yield "flock", event.flock
    yield "token", event.token
    yield "reminder", event.reminder
    yield "triggered", event.triggered
    yield "incidentKey", event.incident_key
    yield "userAgent", fields.user_agent
    yield "fileName", fields.file_name
    yield "dnsName", fields.dns_name
    for item in leftovers(event, fields):
        yield "detail" + leef_key(item.key), item.value


def _dev_time_text(moment: datetime) -> str:
    """`moment` as `DEV_TIME_FORMAT` writes it, in English whatever the locale."""
    utc = moment.astimezone(UTC)
    month = _MONTHS[utc.month - 1]
    return f"{month} {utc:%d %Y %H:%M:%S}.{utc.microsecond // 1000:03d} GMT"
