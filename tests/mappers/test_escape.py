"""The escaping of every format, against the spec tables and the encoder vectors."""

from __future__ import annotations

import json
import time

import cefp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.mappers._escape import (
    cached_key_layouts,
    cef_header,
    cef_value,
    json_text,
    leef_header,
    leef_key,
    leef_value,
    one_line,
    sd_name,
    sd_value,
    unique,
)

BREAKS = "\x00\t\x0b\x0c\x1b\x7f\x85\u2028\u2029"


def test_cef_header_escapes_backslash_and_pipe_and_flattens_breaks() -> None:
    # Encoder vector of the CEF reference: vendor, product, version, signature and name.
    assert cef_header("Thin|kst", 63) == "Thin\\|kst"
    assert cef_header("Can\\ary", 63) == "Can\\\\ary"
    assert cef_header("1|0", 31) == "1\\|0"
    assert cef_header("sig=1", 1023) == "sig=1"  # '=' is not escaped in the header
    assert cef_header("na\nme", 512) == "na me"
    assert cef_header("a\r\nb", 512) == "a  b"
    assert cef_header(f"x{BREAKS}y", 512) == "x" + " " * len(BREAKS) + "y"


def test_cef_header_limit_applies_before_escaping_so_no_escape_is_cut() -> None:
    field = cef_header("ab\\|", 3)
    assert field == "ab\\\\"
    assert cefp.parse(f"CEF:0|{field}|p|1|s|n|1|")["device"]["vendor"] == "ab\\"


def test_cef_value_vectors() -> None:
    assert cef_value("blocked a | pipe") == "blocked a | pipe"
    assert cef_value("C:\\Windows\\ x=y") == "C:\\\\Windows\\\\ x\\=y"
    assert cef_value("line1\r\nline2\rline3\nline4") == "line1\\r\\nline2\\rline3\\nline4"
    assert cef_value("a=b c\\d") == "a\\=b c\\\\d"
    assert cef_value("  padded\t ") == "padded"
    assert cef_value("tab\there") == "tab here"


@given(st.text())
def test_cef_value_never_contains_a_line_break_or_a_bare_equals(text: str) -> None:
    value = cef_value(text)
    assert len(value.splitlines()) <= 1
    assert "\n" not in value and "\r" not in value
    unescaped = value.replace("\\\\", "").replace("\\=", "")
    assert "=" not in unescaped


def test_sd_value_escapes_exactly_quote_backslash_and_bracket() -> None:
    assert sd_value('a"b') == 'a\\"b'
    assert sd_value("x]y") == "x\\]y"
    assert sd_value("c:\\tmp") == "c:\\\\tmp"
    assert sd_value("[é=€ ]") == "[é=€ \\]"


def test_sd_value_writes_line_breaks_as_backslash_letters_a_receiver_reads_back() -> None:
    # On the wire `\\n`; RFC 5424 unescaping gives the two characters `\n`.
    assert sd_value("a\nb\rc") == "a\\\\nb\\\\rc"
    assert sd_value("t\tu\u2028v") == "t u v"


def test_one_line_keeps_backslashes_and_spells_breaks() -> None:
    assert one_line("a\r\nb\\c\x00d") == "a\\r\\nb\\c d"


def test_sd_name_removes_spaces_like_thinkst_and_replaces_what_the_abnf_forbids() -> None:
    assert sd_name("Background Context") == "BackgroundContext"
    assert sd_name("User-Agent") == "User-Agent"
    assert sd_name('a=b]c"d\té') == "a_b_c_d__"
    assert sd_name("k" * 40) == "k" * 32
    assert sd_name("   ") == "_"


def test_unique_suffixes_repeats_within_the_limit() -> None:
    assert list(unique(["a", "a", "b", "a"])) == ["a", "a_2", "b", "a_3"]
    assert list(unique(["x" * 32, "x" * 32])) == ["x" * 32, "x" * 30 + "_2"]
    assert list(unique(["k", "k"], separator="")) == ["k", "k2"]
    # A name that looks like a suffixed one is never handed out twice.
    assert list(unique(["a", "a_2", "a", "a"])) == ["a", "a_2", "a_3", "a_4"]


def test_unique_stays_linear_in_repeats_of_one_name() -> None:
    # A web bug's detail keys are the header names an attacker sent, 80,000 in a 1 MiB post.
    # Counting each repeat up from 2 again took 45 s for 16,000 of them; linear takes ms.
    started = time.perf_counter()
    names = list(unique(["Header"] * 20_000))
    assert time.perf_counter() - started < 2.0
    assert names[-1] == "Header_20000" and len(set(names)) == 20_000


def test_unique_stays_linear_in_long_names_that_share_their_start() -> None:
    # Distinct keys that differ only past the limit, each sent twice: they share every suffixed
    # candidate, and counting each one up past all the others' took 13 s for 12,780 of them.
    keys = [f"{'A' * 26}{n:06d}" for n in range(12_000)] * 2
    started = time.perf_counter()
    names = list(unique(keys))
    assert time.perf_counter() - started < 2.0
    assert len(set(names)) == len(keys)
    assert all(len(name) <= 32 for name in names)


def test_unique_stays_linear_when_names_already_hold_the_short_suffixes() -> None:
    # Every suffixed form of one name taken as it stands, then that name repeated: each repeat
    # passed again through the stems of all the shorter numbers (20 s for these).
    names = [
        "k" * (32 - len(f"_{number}")) + f"_{number}"
        for digits in range(1, 5)
        for number in range(2 if digits == 1 else 10 ** (digits - 1), 10**digits)
    ]
    names += ["k" * 32] * 10_001
    started = time.perf_counter()
    out = list(unique(names))
    assert time.perf_counter() - started < 2.0
    assert len(set(out)) == len(out)
    assert all(len(name) <= 32 for name in out)


def test_unique_hands_out_each_stem_s_numbers_in_order() -> None:
    full, stem = "B" * 32, "B" * 30
    # Two names of the limit's length that share the stem their suffixes leave room for.
    assert list(unique([full, full, stem + "CC", stem + "CC", stem + "_2"])) == [
        full,
        stem + "_2",
        stem + "CC",
        stem + "_3",
        stem + "_4",
    ]
    assert list(unique(["k"] * 12, separator="")) == ["k", *(f"k{n}" for n in range(2, 13))]


def test_only_short_key_layouts_are_cached() -> None:
    computed: list[tuple[str, ...]] = []

    @cached_key_layouts
    def names(keys: tuple[str, ...]) -> tuple[str, ...]:
        computed.append(keys)
        return keys

    usual = ("Username", "Password")
    attacker_sized = tuple(f"X-Header-{n}" for n in range(1000))
    for layout in (usual, usual, attacker_sized, attacker_sized):
        assert names(layout) == layout
    assert computed == [usual, attacker_sized, attacker_sized]  # the long one is never kept


def test_leef_escaping_removes_the_delimiter_and_breaks_and_pipes_in_the_header() -> None:
    assert leef_value("a^b\nc\rd", "^") == "a b c d"
    assert leef_value("tab\there", "\t") == "tab here"
    assert leef_value("x=y|z", "^") == "x=y|z"
    assert leef_header("Thin|kst\n", 255) == "Thin kst "
    assert leef_key("Background Context-2") == "BackgroundContext2"
    assert leef_key("flock_name") == "FlockName"
    assert leef_key("EC2InstanceID") == "EC2InstanceID"
    assert leef_key("é!") == "Key"


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.lists(st.text()))))
def test_json_text_is_one_line_and_lossless(value: dict[str, object]) -> None:
    text = json_text(value)
    assert len(text.splitlines()) == 1
    assert all(ch not in text for ch in "\x7f\x85\u2028\u2029\n\r")
    assert json.loads(text) == value


@pytest.mark.parametrize("text", ["\u2028", "\x85", "\x7f"])
def test_json_text_escapes_characters_json_leaves_raw(text: str) -> None:
    assert json_text(text) == f'"\\u{ord(text):04x}"'
