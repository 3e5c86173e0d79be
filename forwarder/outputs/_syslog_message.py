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
    """Bytes at the start of `message` that cutting MSG must keep: RFC 5424 header, SD and SP.

    For an RFC 3164 message nothing is protected: its header is at most some 310 bytes (host
    255, tag 32), well inside the smallest limit allowed (480), so a cut never reaches it.
    """
    return _protected_length(message, _rfc5424_structure(message))


def _protected_length(message: bytes, structure: tuple[int, list[_Element] | None] | None) -> int:
    """`protected_prefix_length` from what `_rfc5424_structure` found in `message`."""
    if structure is None:
        return 0
    start, elements = structure
    if elements is None:
        return len(message)
    end = elements[-1].end if elements else start + 1
    return end + 1 if message[end : end + 1] == b" " else end


def _rfc5424_structure(message: bytes) -> tuple[int, list[_Element] | None] | None:
    """Where STRUCTURED-DATA starts and its SD-ELEMENTs (None if malformed); None for a
    message that is not RFC 5424."""
    start = _structured_data_start(message)
    return None if start is None else (start, _structured_data(message, start))


def _structured_data_start(message: bytes) -> int | None:
    """Where STRUCTURED-DATA starts in an RFC 5424 message; None for any other message."""
    if not _RFC5424_START.match(message):
        return None
    position = message.index(b" ") + 1
    for _ in range(_HEADER_FIELDS_AFTER_VERSION):
        space = message.find(b" ", position)
        if space < 0:
            return len(message)
        position = space + 1
    return position


@dataclass(frozen=True, slots=True)
class _Param:
    start: int
    """The SP before PARAM-NAME."""
    value_start: int
    """Just past the opening quote."""
    value_end: int
    """The closing quote."""


@dataclass(frozen=True, slots=True)
class _Element:
    start: int
    """The `[`."""
    end: int
    """Just past the `]`."""
    params: tuple[_Param, ...]


def _structured_data(message: bytes, start: int) -> list[_Element] | None:
    """The SD-ELEMENTs from `start` ([] for `-`), or None if what is there is malformed."""
    if message[start : start + 1] == b"-":
        return []
    elements: list[_Element] = []
    position = start
    while message[position : position + 1] == b"[":
        element_start, params = position, []
        position += 1
        while position < len(message) and message[position] != 0x5D:  # ] ends the element
            if message[position] == 0x22:  # the quote that opens a PARAM-VALUE
                value_start = position = position + 1
                while position < len(message) and message[position] != 0x22:
                    position += 2 if message[position] == 0x5C else 1  # \ escapes the next
                if position >= len(message):
                    return None
                # PARAM-NAME has no space: the last one before the value is the one before it.
                name_space = message.rfind(b" ", element_start, value_start)
                params.append(_Param(name_space, value_start, position))
            position += 1
        if position >= len(message):
            return None
        position += 1
        elements.append(_Element(element_start, position, tuple(params)))
    return elements or None


# What ends a PARAM-VALUE that was cut: the marker, with the `]` RFC 5424 says to escape there.
_VALUE_MARKER = TRUNCATION_MARKER.replace(b"]", b"\\]")


def truncate(message: bytes, limit: int) -> bytes:
    """Shorten the message to at most `limit` bytes, with the marker where it was cut.

    MSG is cut first. When the header and structured data alone leave no room (an attacker's
    2,000-character password in an SD-PARAM), the longest PARAM-VALUEs are cut instead, each
    ending with the marker (its `]` escaped), MSG becomes the marker alone, and if even that is
    not enough the last SD-PARAMs are left out. A cut never splits a UTF-8 character or a
    backslash escape; the header is never cut. `MessageTooLarge` if it cannot fit at all.
    """
    if len(message) <= limit:
        return message
    structure = _rfc5424_structure(message)
    protected = _protected_length(message, structure)
    cut = cut_point(message, limit - len(TRUNCATION_MARKER))
    if cut >= protected:
        return message[:cut] + TRUNCATION_MARKER
    start, elements = structure if structure is not None else (0, None)
    if not elements:
        raise MessageTooLarge(
            f"header and structured data alone take {protected} bytes, no room to truncate "
            f"within {limit}"
        )
    # As MSG, even where there was none: the cut values carry a marker, but left-out params
    # would leave no trace.
    tail = b" " + TRUNCATION_MARKER
    structured = _fit_structured_data(message, elements, limit - start - len(tail))
    if structured is None:
        raise MessageTooLarge(
            f"the header and the names of the structured data alone take more than {limit} bytes"
        )
    return message[:start] + structured + tail


def _fit_structured_data(message: bytes, elements: list[_Element], budget: int) -> bytes | None:
    """The SD-ELEMENTs rewritten in at most `budget` bytes, or None if they cannot be."""
    params = [param for element in elements for param in element.params]
    lengths = [param.value_end - param.value_start for param in params]
    floor = len(_VALUE_MARKER)
    # Everything but the values, then the values as short as a cut leaves them.
    fixed = elements[-1].end - elements[0].start - sum(lengths)
    least = sum(min(length, floor) for length in lengths)
    kept = len(params)
    while kept and fixed + least > budget:
        # Left out from the end: the forwarder's own fields come first, an attacker's after.
        kept -= 1
        fixed -= params[kept].value_end + 1 - params[kept].start - lengths[kept]
        least -= min(lengths[kept], floor)
    if fixed + least > budget:
        return None
    cap = _value_cap(lengths[:kept], budget - fixed, floor)
    pieces: list[bytes] = []
    number = 0  # of the param in `params`
    for element in elements:
        first = element.params[0].start if element.params else element.end - 1
        pieces.append(message[element.start : first])
        for param in element.params:
            number += 1
            if number > kept:
                continue
            value = message[param.value_start : param.value_end]
            if len(value) > cap:
                value = value[: cut_point(value, cap - floor)] + _VALUE_MARKER
            pieces.append(message[param.start : param.value_start] + value + b'"')
        pieces.append(b"]")
    return b"".join(pieces)


def _value_cap(lengths: list[int], room: int, floor: int) -> int:
    """The largest length values may keep so that together they take at most `room` bytes (a
    value over it is cut to it, marker included); at least `floor`."""
    low, high = floor, max(lengths, default=floor)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(length, middle) for length in lengths) <= room:
            low = middle
        else:
            high = middle - 1
    return low
