"""A strict reader of RFC 5424 (§6, the ABNF) and RFC 3164 (§4.1) messages, for tests.

It rejects anything the grammar does not allow (an unescaped `]` or `"` in a PARAM-VALUE, a
header field that is too long or not PRINTUSASCII, a PRI over 191, a lower-case `t` or `z` in
the timestamp) and returns the fields with PARAM-VALUEs unescaped as §6.3.3 says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Rfc3164", "Rfc5424", "SyntaxViolation", "parse_rfc3164", "parse_rfc5424"]

BOM = "\ufeff"
_PRINTUSASCII = r"[\x21-\x7e]"
_TIMESTAMP = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
)
_HEADER = re.compile(
    rf"<(?P<pri>\d{{1,3}})>(?P<version>[1-9]\d{{0,2}}) (?P<timestamp>-|\S+) "
    rf"(?P<hostname>{_PRINTUSASCII}{{1,255}}) (?P<app>{_PRINTUSASCII}{{1,48}}) "
    rf"(?P<procid>{_PRINTUSASCII}{{1,128}}) (?P<msgid>{_PRINTUSASCII}{{1,32}}) "
)
_SD_NAME = re.compile(r"[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}")
_RFC3164 = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"(?P<day>[ 1-3]\d) (?P<time>\d\d:\d\d:\d\d) (?P<hostname>[\x21-\x7e]+) "
    r"(?P<tag>[A-Za-z0-9_.-]{1,32}):(?P<message> .*)?",
    re.DOTALL,
)


class SyntaxViolation(ValueError):
    """The text is not a message the RFC's grammar allows; the message says where."""


@dataclass
class Rfc5424:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    msg: str | None = None

    def element(self, sd_id: str) -> list[tuple[str, str]]:
        """The params of the one element with this SD-ID."""
        found = [params for name, params in self.structured_data if name == sd_id]
        if len(found) != 1:
            raise KeyError(f"{len(found)} elements {sd_id!r}")
        return found[0]


@dataclass
class Rfc3164:
    pri: int
    timestamp: str
    hostname: str
    tag: str
    message: str


def parse_rfc5424(text: str) -> Rfc5424:
    """Parse one message strictly; raise SyntaxViolation with the reason if it is not valid."""
    if "\n" in text or "\r" in text:
        raise SyntaxViolation("a line break inside the message")
    header = _HEADER.match(text)
    if header is None:
        raise SyntaxViolation(f"header does not match the ABNF: {text[:120]!r}")
    pri = int(header["pri"])
    if pri > 191 or (header["pri"].startswith("0") and header["pri"] != "0"):
        raise SyntaxViolation(f"PRIVAL {header['pri']}")
    if header["timestamp"] != "-" and not _TIMESTAMP.fullmatch(header["timestamp"]):
        raise SyntaxViolation(f"TIMESTAMP {header['timestamp']!r}")
    message = Rfc5424(
        pri=pri,
        version=int(header["version"]),
        timestamp=header["timestamp"],
        hostname=header["hostname"],
        app_name=header["app"],
        procid=header["procid"],
        msgid=header["msgid"],
    )
    rest = text[header.end() :]
    nil = rest.startswith("-")
    rest = rest[1:] if nil else _read_elements(rest, message.structured_data)
    if rest:
        if not rest.startswith(" "):
            raise SyntaxViolation(f"no SP between STRUCTURED-DATA and MSG: {rest[:40]!r}")
        message.msg = rest[1:]
    return message


def _read_elements(text: str, into: list[tuple[str, list[tuple[str, str]]]]) -> str:
    if not text.startswith("["):
        raise SyntaxViolation(f"STRUCTURED-DATA is neither - nor an element: {text[:40]!r}")
    position = 0
    while position < len(text) and text[position] == "[":
        sd_id = _SD_NAME.match(text, position + 1)
        if sd_id is None:
            raise SyntaxViolation(f"bad SD-ID at {position}: {text[position : position + 40]!r}")
        position = sd_id.end()
        params: list[tuple[str, str]] = []
        while text.startswith(" ", position):
            name = _SD_NAME.match(text, position + 1)
            if name is None or not text.startswith('="', name.end()):
                raise SyntaxViolation(f"bad SD-PARAM at {position}: {text[position:][:40]!r}")
            value, position = _read_value(text, name.end() + 2)
            params.append((name.group(), value))
        if not text.startswith("]", position):
            raise SyntaxViolation(f"element not closed at {position}: {text[position:][:40]!r}")
        position += 1
        into.append((sd_id.group(), params))
    return text[position:]


def _read_value(text: str, position: int) -> tuple[str, int]:
    out: list[str] = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in '"\\]':
            out.append(text[position + 1])
            position += 2
        elif char == '"':
            return "".join(out), position + 1
        elif char == "]":
            raise SyntaxViolation(f"unescaped ] in PARAM-VALUE at {position}")
        else:
            out.append(char)  # a backslash before anything else is kept (§6.3.3)
            position += 1
    raise SyntaxViolation("PARAM-VALUE not closed")


def parse_rfc3164(text: str) -> Rfc3164:
    """Parse one RFC 3164 message strictly (one line, at most 1024 bytes)."""
    if "\n" in text or "\r" in text:
        raise SyntaxViolation("a line break inside the message")
    if len(text.encode("utf-8")) > 1024:
        raise SyntaxViolation("longer than 1024 bytes")
    match = _RFC3164.fullmatch(text)
    if match is None or int(match["pri"]) > 191:
        raise SyntaxViolation(f"not RFC 3164: {text[:80]!r}")
    return Rfc3164(
        pri=int(match["pri"]),
        timestamp=f"{match['month']} {match['day']} {match['time']}",
        hostname=match["hostname"],
        tag=match["tag"],
        message=(match["message"] or " ")[1:],
    )
