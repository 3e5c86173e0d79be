"""Escaping for every text format, in one place, so no attacker-typed value can add a field,
a record or a line in any of them.

"One line" here means more than "no LF": carriage returns, the other C0 and C1 controls, DEL and
the Unicode line and paragraph separators are all things some receiver (or `str.splitlines`)
treats as a break or a field separator. Each format turns CR and LF into what its spec allows
(an escape, or the two characters `\\r` / `\\n` where the spec has none) and every other such
character into a space.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

import orjson

__all__ = [
    "TERMINAL_CONTROLS_ABOVE_C0",
    "TRUNCATION_MARKER",
    "cached_key_layouts",
    "cef_header",
    "cef_value",
    "cef_values",
    "cut_point",
    "json_log_line",
    "json_text",
    "leef_header",
    "leef_key",
    "leef_value",
    "leef_values",
    "one_line",
    "sd_name",
    "sd_value",
    "sd_values",
    "unique",
]

# Characters that break a line or a field somewhere, other than CR and LF themselves.
_BREAKERS = [
    *range(0x00, 0x09 + 1),
    0x0B,
    0x0C,
    *range(0x0E, 0x1F + 1),
    0x7F,
    *range(0x80, 0x9F + 1),
    0x2028,
    0x2029,
]
_SPACES = dict.fromkeys(_BREAKERS, " ")
_FLAT = {**_SPACES, ord("\r"): " ", ord("\n"): " "}
_LITERAL_BREAKS = {**_SPACES, ord("\r"): "\\r", ord("\n"): "\\n"}


class _Translation:
    """`str.translate` with a table, skipped for text that holds none of its characters.

    Almost every value is clean, and a regex search is far cheaper than a translation.
    """

    __slots__ = ("_table", "needed")

    def __init__(self, table: dict[int, str]) -> None:
        self._table = str.maketrans(table)
        pattern = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(table)) + "]")
        self.needed = pattern.search
        """A match (truthy) when the text holds a character of the table."""

    def __call__(self, text: str) -> str:
        return text.translate(self._table) if self.needed(text) else text


_CEF_HEADER = _Translation({**_FLAT, ord("\\"): "\\\\", ord("|"): "\\|"})
_CEF_VALUE = _Translation({**_LITERAL_BREAKS, ord("\\"): "\\\\", ord("="): "\\="})
# RFC 5424 §6.3.3: `"`, `\` and `]` are escaped; CR and LF become the two characters `\r` and
# `\n`, whose backslash is itself escaped, so a receiver reads back `\r` / `\n` as text.
_SD_VALUE = _Translation(
    {
        **_SPACES,
        ord("\\"): "\\\\",
        ord('"'): '\\"',
        ord("]"): "\\]",
        ord("\r"): "\\\\r",
        ord("\n"): "\\\\n",
    }
)
_ONE_LINE = _Translation(_LITERAL_BREAKS)
# LEEF defines no escape and QRadar splits the header on `|`, so a `|` cannot be written at all;
# the backslash is doubled for readers that take `\|` as an escaped pipe (as CEF does).
_LEEF_HEADER = _Translation({**_FLAT, ord("|"): " ", ord("\\"): "\\\\"})
_LEEF_VALUE = _Translation(_FLAT)
# JSON leaves these raw inside strings; as \u escapes they stay lossless and on one line.
_JSON_RAW_CODES = (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
_JSON_RAW = _Translation({c: f"\\u{c:04x}" for c in _JSON_RAW_CODES})
TERMINAL_CONTROLS_ABOVE_C0 = (*_JSON_RAW_CODES, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""What a terminal acts on rather than shows, besides the C0 controls: DEL, the C1 controls, the
Unicode line separators, and the bidirectional overrides and isolates, which reorder what it
shows. The daemon's log lines are read on a terminal too (`journalctl`), so they escape these."""
_JSON_RAW_FOR_TERMINALS = _Translation({c: f"\\u{c:04x}" for c in TERMINAL_CONTROLS_ABOVE_C0})

TRUNCATION_MARKER = b"...[truncated]"
"""What ends a record that was cut to fit a size limit, so a reader sees it was."""

_NOT_SD_NAME = re.compile(r'[^\x21-\x7e]|[=\]"]')
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def one_line(text: str) -> str:
    """`text` on one line: CR and LF as the two characters `\\r` / `\\n`, other breaks as spaces.

    For a syslog MSG, which has no escape mechanism: a backslash already in the text stays as it
    is, so `\\n` in the output means either a line break or those two characters.
    """
    return _ONE_LINE(text)


def cef_header(text: str, limit: int) -> str:
    """A CEF header field: at most `limit` characters of `text`, `\\` and `|` escaped, no breaks.

    The limit applies before escaping so an escape is never cut in half.
    """
    return _CEF_HEADER(text[:limit])


def cef_value(text: str) -> str:
    """A CEF extension value: `\\`, `=`, CR and LF escaped, leading and trailing spaces removed.

    Parsers drop trailing spaces of the last value and differ on leading ones, so none are sent.
    """
    return _CEF_VALUE(text).strip(" ")


def cef_values(texts: list[str]) -> list[str]:
    """`cef_value` of each text. One scan of them all usually shows none needs escaping."""
    if _CEF_VALUE.needed("".join(texts)):
        return [_CEF_VALUE(text).strip(" ") for text in texts]
    return [text.strip(" ") for text in texts]


def leef_header(text: str, limit: int) -> str:
    """A LEEF header field: no `|` and no line breaks (LEEF has no escape), `\\` doubled, at
    most `limit` characters, never ending in half a doubled backslash."""
    field = _LEEF_HEADER(text)
    if len(field) <= limit:
        return field
    field = field[:limit]
    run = len(field) - len(field.rstrip("\\"))
    return field[:-1] if run % 2 else field


def leef_value(text: str, delimiter: str) -> str:
    """A LEEF attribute value: the delimiter, CR, LF and other breaks become spaces."""
    return _LEEF_VALUE(text).replace(delimiter, " ")


def leef_values(texts: list[str], delimiter: str) -> list[str]:
    """`leef_value` of each text. One scan of them all usually shows none needs cleaning."""
    joined = "".join(texts)
    if _LEEF_VALUE.needed(joined) or delimiter in joined:
        return [leef_value(text, delimiter) for text in texts]
    return texts


def leef_key(text: str) -> str:
    """A LEEF attribute name: the words of `text` in CamelCase, letters and digits only."""
    words = _NOT_ALNUM.split(text)
    return "".join(word[:1].upper() + word[1:] for word in words) or "Key"


def sd_value(text: str) -> str:
    """An RFC 5424 PARAM-VALUE (without its quotes)."""
    return _SD_VALUE(text)


def sd_values(texts: list[str]) -> list[str]:
    """`sd_value` of each text. One scan of them all usually shows none needs escaping."""
    if _SD_VALUE.needed("".join(texts)):
        return [_SD_VALUE(text) for text in texts]
    return texts


def sd_name(text: str) -> str:
    """An RFC 5424 SD-NAME from any text: spaces removed (as Thinkst's syslog does), other
    characters outside PRINTUSASCII or `=`, `]`, `"` replaced by `_`, at most 32 characters."""
    return _NOT_SD_NAME.sub("_", text.replace(" ", ""))[:32] or "_"


def unique(names: Iterable[str], limit: int = 32, separator: str = "_") -> Iterator[str]:
    """`names` with repeats made distinct (`key`, `key_2`, `key_3`, ...): a name is kept as it
    is the first time, and a repeat renamed within `limit` characters."""
    seen: set[str] = set()
    # The number to try next for each stem (a name cut to leave room for its suffix). By stem,
    # not by name: an attacker's ten thousand keys that share their first `limit` characters
    # share every candidate, and each would count up past all the others' (quadratic: seconds
    # of the event loop per event).
    next_number: dict[str, int] = {}
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            number += 1
            suffix = f"{separator}{number}"
            stem = name[: limit - len(suffix)]
            known = next_number.get(stem, number)
            if known > number:
                number = known - 1  # this stem's candidates below `known` were all tried
                continue
            candidate = stem + suffix
            # Taken or about to be: every stem a search passes through, not only the last,
            # or each repeat would walk again through the stems of the shorter numbers.
            next_number[stem] = number + 1
        seen.add(candidate)
        yield candidate


def json_text(value: object) -> str:
    """Compact JSON of `value` that is guaranteed to be one line and to survive any escaping."""
    return _escaped_json(orjson.dumps(value), _JSON_RAW)


def json_log_line(value: object) -> str:
    """`json_text` for a log line: values orjson cannot encode become their `str`, and the
    bidirectional overrides are escaped too, for the terminals log lines are read on."""
    return _escaped_json(orjson.dumps(value, default=str), _JSON_RAW_FOR_TERMINALS)


def _escaped_json(data: bytes, escapes: _Translation) -> str:
    # The usual record is ASCII without DEL, which two C scans tell in about 1 µs; the
    # character-class search takes 13 µs on a 1.5 kB record, once per event per JSON line.
    if data.isascii() and b"\x7f" not in data:
        return data.decode()
    return escapes(data.decode())


def cut_point(data: bytes, limit: int) -> int:
    """The largest index <= `limit` at which `data` can be cut: not inside a UTF-8 character,
    and not inside a backslash escape.

    CEF, RFC 5424, JSON and the `rfc3164` message all escape with a backslash. An odd run of
    them at the cut would escape whatever follows (the truncation marker), so no parser reads
    the value back as it was.
    """
    index = min(limit, len(data))
    while 0 < index < len(data) and data[index] & 0xC0 == 0x80:
        index -= 1
    run = 0
    while run < index and data[index - 1 - run] == 0x5C:
        run += 1
    return index - (run % 2)


# Key layouts of up to this many keys are cached: every real Canary layout fits many times over.
_CACHED_LAYOUT_KEYS = 64
KeyLayout = tuple[str, ...]


def cached_key_layouts(
    compute: Callable[[KeyLayout], KeyLayout],
) -> Callable[[KeyLayout], KeyLayout]:
    """`compute` (field names for a layout of AdditionalDetails keys), cached per layout.

    Events of one type carry the same keys, so the names are worked out once per type. A web
    bug's keys are the header names the attacker sent, though: a layout of thousands of keys
    would be kept a thousand times over, so long layouts are computed each time instead.
    """
    cached = lru_cache(maxsize=1024)(compute)

    def names(keys: KeyLayout) -> KeyLayout:
        return cached(keys) if len(keys) <= _CACHED_LAYOUT_KEYS else compute(keys)

    return names
