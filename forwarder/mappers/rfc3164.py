r"""`rfc3164`: a BSD syslog line for legacy receivers: header, then a message a person can read.

    <PRI>Mar  5 08:00:01 web-dmz-02 canary-forwarder: <Intro> | Desc: SSH Login Attempt | ...

RFC 3164 has no structure beyond the header, so the Canary fields follow the Intro as
`Label: value` parts separated by ` | `, then the event id, then AdditionalDetails under their own
names. Attackers type most of those values and keys, so a value escapes `\` and `|` with a
backslash (CR and LF become `\r` and `\n`), and a key loses `:`, `|` and `\` and never takes the
name of a label the forwarder writes: no value or key can start a part or pass for a trusted one.
The whole message is at most 1024 bytes (RFC 3164 §4.1): a longer one is cut, details first, and
ends with `...[truncated]`.
"""

from __future__ import annotations

from collections.abc import Iterator

from forwarder.events import CanaryEvent
from forwarder.mappers._escape import TRUNCATION_MARKER, cut_point, one_line, unique
from forwarder.mappers._framing import SyslogOptions, syslog_hostname
from forwarder.mappers._syslog import rfc3164_header, syslog_severity
from forwarder.mappers.base import Mapper, Record

__all__ = ["MAX_BYTES", "Rfc3164Config", "Rfc3164Mapper", "readable_parts"]

MAX_BYTES = 1024
SEPARATOR = " | "


class Rfc3164Config(SyslogOptions):
    """Options of the `rfc3164` format: facility, hostname, tag (`app_name`) and severity."""


class Rfc3164Mapper(Mapper[Rfc3164Config]):
    config_class = Rfc3164Config

    def map(self, event: CanaryEvent) -> Record:
        severity = self.config.severity.of(event)
        header = rfc3164_header(
            facility=self.config.facility,
            severity=syslog_severity(severity),
            timestamp=event.timestamp,
            hostname=syslog_hostname(self.config, event),
            tag=self.config.app_name,
        )
        message = one_line(SEPARATOR.join(readable_parts(event)))
        return Record(
            event=event,
            body=_cut(f"{header} {message}", MAX_BYTES),
            severity=severity,
            syslog_header=True,
        )


def readable_parts(event: CanaryEvent) -> Iterator[str]:
    """The message's parts before they are put on one line: the Intro, then `Label: value`."""
    yield _value(event.intro or event.description)
    labelled: list[tuple[str, str | int | None]] = [
        ("Desc", event.description),
        ("Source", event.source_ip),
        ("PTR", event.reverse_dns),
        ("Canary", event.canary_name),
        ("CanaryIP", event.canary_ip),
        ("Port", event.canary_port),
        ("Location", event.canary_location),
        ("Flock", event.flock),
        ("Token", event.token),
        ("Reminder", event.reminder),
    ]
    if event.audit is not None:
        labelled += [
            ("Action", event.audit.action_type),
            ("User", event.audit.user),
            ("UserAgent", event.audit.user_agent),
        ]
    labelled.append(("ID", event.id))
    # The forwarder's own labels come first, so a detail key that repeats one is the one renamed.
    labels = unique([*(label for label, _ in labelled), *(_label(d.key) for d in event.details)])
    values = [*(value for _, value in labelled), *(item.value for item in event.details)]
    for label, value in zip(labels, values, strict=True):
        if value is not None and value != "":
            yield f"{label}: {_value(str(value))}"


_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|"})
_LABEL_CLEAN = str.maketrans(dict.fromkeys(":|\\", "_"))


def _value(text: str) -> str:
    return text.translate(_VALUE_ESCAPES)


def _label(key: str) -> str:
    # On one line before it is stripped and made unique: a control character around a key
    # becomes a space on the wire, so "\x01Source" would pass for the forwarder's "Source".
    return one_line(key.translate(_LABEL_CLEAN)).strip() or "_"


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character or an escape."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    kept = encoded[: cut_point(encoded, limit - len(TRUNCATION_MARKER))]
    return (kept + TRUNCATION_MARKER).decode("utf-8")
