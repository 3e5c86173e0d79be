"""`cef`: ArcSight Common Event Format (spec revision 27), one line per event.

`CEF:0|Thinkst|Canary|<version>|<LogType>|<Description>|<severity>|<extension>`

Header fields are escaped and cut to the spec's lengths; extension values are escaped so that no
attacker-typed text can add a key, a field or a line. Only keys from the CEF dictionary are
written; AdditionalDetails that fit none of them go, as one JSON object, into `cs6`
(label `additionalDetails`). The mapping table is in docs/formats.md.
"""

from __future__ import annotations

from forwarder.events import CanaryEvent, merge_details
from forwarder.mappers._escape import cef_header, cef_values, json_text
from forwarder.mappers._fields import (
    Fields,
    epoch_ms,
    extract,
    host_or_ip,
    is_ipv6_address,
    leftovers,
    signature_id,
)
from forwarder.mappers._framing import DeviceLineConfig, carried
from forwarder.mappers.base import Mapper, Record

__all__ = ["CefConfig", "CefMapper", "extension"]

# Header field limits (rev 27 header table).
VENDOR_LIMIT = 63
PRODUCT_LIMIT = 63
VERSION_LIMIT = 31
SIGNATURE_LIMIT = 1023
NAME_LIMIT = 512
EXTERNAL_ID_LIMIT = 40

Pair = tuple[str, str | int | None]


class CefConfig(DeviceLineConfig):
    """Options of the `cef` format: device identity, severity table, optional syslog header."""


class CefMapper(Mapper[CefConfig]):
    config_class = CefConfig

    def __init__(self, config: CefConfig) -> None:
        super().__init__(config)
        vendor = cef_header(config.vendor, VENDOR_LIMIT)
        product = cef_header(config.product, PRODUCT_LIMIT)
        version = cef_header(config.version, VERSION_LIMIT)
        self._prefix = f"CEF:0|{vendor}|{product}|{version}|"

    def map(self, event: CanaryEvent) -> Record:
        severity = self.config.severity.of(event)
        signature = cef_header(signature_id(event), SIGNATURE_LIMIT)
        name = cef_header(event.description, NAME_LIMIT)
        pairs = extension(event)
        values = cef_values([value for _, value in pairs])
        body = " ".join(
            f"{key}={text}" for (key, _), text in zip(pairs, values, strict=True) if text
        )
        line = f"{self._prefix}{signature}|{name}|{severity}|{body}"
        return carried(self.config, event, severity, event.kind.value, line)


def extension(event: CanaryEvent) -> list[tuple[str, str]]:
    """The extension's key/value pairs before escaping; keys without a value are left out."""
    return [
        (key, value if isinstance(value, str) else str(value))
        for key, value in _pairs(event, extract(event))
        if value is not None and value != ""
    ]


def _pairs(event: CanaryEvent, fields: Fields) -> list[Pair]:
    audit = event.audit
    rest = leftovers(event, fields)
    source_ip, source_host = host_or_ip(event.source_ip)
    canary_ip, canary_host = host_or_ip(event.canary_ip)
    public_ip, _ = host_or_ip(event.canary_public_ip)
    return [
        ("rt", epoch_ms(event.timestamp)),
        ("cat", event.kind.value),
        ("act", audit.action_type if audit is not None else event.operation),
        ("msg", event.intro),
        ("externalId", event.id if len(event.id) <= EXTERNAL_ID_LIMIT else event.fingerprint),
        ("deviceExternalId", event.canary_id),
        # IPv4 goes in src/dst/dvc, which the spec types as IPv4; IPv6 in labelled c6a* keys.
        *_address("src", "c6a1", "sourceIPv6", source_ip),
        ("shost", source_host or event.reverse_dns),
        *_address("dst", "c6a3", "destinationIPv6", canary_ip),
        ("dvchost", canary_host),
        *_address("dvc", "c6a4", "deviceIPv6", public_ip),
        ("spt", fields.source_port),
        ("dpt", fields.destination_port),
        ("dhost", event.canary_name or fields.dns_name),
        # The user an attacker tried is the target system's account; a console user acted himself.
        ("suser" if audit is not None else "duser", fields.user_name),
        ("dntdom", fields.user_domain),
        ("requestClientApplication", fields.user_agent),
        ("request", fields.url or fields.path),
        ("fname", fields.file_name),
        ("cnt", event.triggered),
        *_labelled("cs1", "canaryLocation", event.canary_location),
        *_labelled("cs2", "tokenReminder", event.reminder),
        *_labelled("cs3", "canarytoken", event.token),
        *_labelled("cs4", "flock", event.flock),
        *_labelled("cs5", "incidentKey", event.incident_key),
        *_labelled("cs6", "additionalDetails", json_text(merge_details(rest)) if rest else None),
    ]


def _address(key: str, ipv6_key: str, ipv6_label: str, ip: str | None) -> tuple[Pair, ...]:
    if is_ipv6_address(ip):
        return _labelled(ipv6_key, ipv6_label, ip)
    return ((key, ip),)


def _labelled(key: str, label: str, value: str | None) -> tuple[Pair, ...]:
    if not value:
        return ()
    return (f"{key}Label", label), (key, value)
