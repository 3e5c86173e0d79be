"""Turning a record into the bytes of one syslog message and one frame. Pure functions, no I/O.

A record that has no syslog header of its own (CEF, LEEF, a JSON document) gets one, RFC 5424 or
RFC 3164, with the event's time, a severity derived from the record's, and the event kind as
RFC 5424 MSGID. MSG carries no BOM: CEF, LEEF and JSON parsers read the first byte of MSG as
their own, and RFC 5424 allows a BOM-less MSG (MSG-ANY).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from forwarder.mappers._escape import TRUNCATION_MARKER, cut_point
from forwarder.mappers._syslog import rfc3164_header, rfc5424_header, syslog_severity
from forwarder.mappers.base import Record

__all__ = [
    "FRAME_DELIMITER",
    "LF_ESCAPES",
    "TRUNCATION_MARKER",
    "HeaderStyle",
    "MessageTooLarge",
    "Wrapper",
    "escape_frame_delimiters",
    "octet_counted",
    "protected_prefix_length",
    "truncate",
]

HeaderStyle = Literal["rfc5424", "rfc3164"]


# LF ends a frame with LF framing, and RFC 6587 §3.4.2 names NUL (and CR LF) as trailers some
# receivers use; readers that end lines at CR as well (Java's BufferedReader.readLine, Python's
# splitlines) would split at a lone CR. All three are written the way rsyslog itself shows the
# control characters it escapes (#ooo, octal), which is also what it stores for them by default.
LF_ESCAPES: Mapping[bytes, bytes] = {b"\n": b"#012", b"\r": b"#015", b"\x00": b"#000"}
FRAME_DELIMITER = re.compile(b"[\n\r\x00]")

_RFC5424_START = re.compile(rb"<\d{1,3}>[1-9]\d{0,2} ")
_HEADER_FIELDS_AFTER_VERSION = 5  # TIMESTAMP HOSTNAME APP-NAME PROCID MSGID


class MessageTooLarge(ValueError):
    """The message cannot be made to fit the size limit without breaking its structure."""


@dataclass(frozen=True, slots=True)
class Wrapper:
    """Puts a syslog header in front of records that come without one."""

    style: HeaderStyle
    facility: str
    hostname: str
    app_name: str

    def message(self, record: Record) -> bytes:
        """The complete syslog message for one record, UTF-8 encoded."""
        text = record.text()
        if not record.syslog_header:
            text = f"{self._header(record)} {text}"
        # A lone surrogate (JSON allows "\ud800") cannot be UTF-8; replace it rather than fail.
        return text.encode("utf-8", "replace")

    def _header(self, record: Record) -> str:
        severity = syslog_severity(record.severity)
        event = record.event
        if self.style == "rfc3164":
            return rfc3164_header(
                facility=self.facility,
                severity=severity,
                timestamp=event.timestamp,
                hostname=self.hostname,
                tag=self.app_name,
            )
        header = rfc5424_header(
            facility=self.facility,
            severity=severity,
            timestamp=event.timestamp,
            hostname=self.hostname,
            app_name=self.app_name,
            procid=None,
            msgid=event.kind.value,
        )
        return f"{header} -"  # no structured data


def escape_frame_delimiters(message: bytes) -> bytes:
    """Escape LF, CR and NUL so an LF-framed receiver sees one message, never a forged second."""
    return FRAME_DELIMITER.sub(lambda match: LF_ESCAPES[match.group()], message)


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 / RFC 5425 §4.3 frame: MSG-LEN (octets) SP SYSLOG-MSG."""
    return b"%d %b" % (len(message), message)


def protected_prefix_length(message: bytes) -> int:
    """Bytes at the start of `message` that truncation must keep: RFC 5424 header, SD and SP.

    For an RFC 3164 message nothing is protected: its header is at most some 310 bytes (host
    255, tag 32), well inside the smallest limit allowed (480), so a cut never reaches it.
    """
    if not _RFC5424_START.match(message):
        return 0
    position = message.index(b" ") + 1
    for _ in range(_HEADER_FIELDS_AFTER_VERSION):
        space = message.find(b" ", position)
        if space < 0:
            return len(message)
        position = space + 1
    end = _structured_data_end(message, position)
    if end is None:
        return len(message)
    return end + 1 if message[end : end + 1] == b" " else end


def _structured_data_end(message: bytes, start: int) -> int | None:
    """Index just past STRUCTURED-DATA starting at `start`, or None if it is malformed."""
    if message[start : start + 1] == b"-":
        return start + 1
    position = start
    while message[position : position + 1] == b"[":
        position += 1
        quoted = False
        while position < len(message):
            byte = message[position]
            if quoted and byte == 0x5C:  # backslash: the next byte is escaped
                position += 2
                continue
            if byte == 0x22:  # quote
                quoted = not quoted
            elif byte == 0x5D and not quoted:  # ] closes the element
                break
            position += 1
        else:
            return None
        position += 1
    return position if position > start else None


def truncate(message: bytes, limit: int) -> bytes:
    """Shorten MSG so the message is at most `limit` bytes and ends with the marker.

    The cut never splits a UTF-8 character or a backslash escape. The header and structured
    data are kept whole; if they leave no room, `MessageTooLarge`.
    """
    if len(message) <= limit:
        return message
    protected = protected_prefix_length(message)
    cut = cut_point(message, limit - len(TRUNCATION_MARKER))
    if cut < protected:
        raise MessageTooLarge(
            f"header and structured data alone take {protected} bytes, no room to truncate "
            f"within {limit}"
        )
    return message[:cut] + TRUNCATION_MARKER
