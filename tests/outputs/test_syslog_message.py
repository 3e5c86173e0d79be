"""Building, framing and truncating syslog messages, without a network."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.events import CanaryEvent
from forwarder.mappers.base import Record
from forwarder.outputs._syslog_message import (
    TRUNCATION_MARKER,
    MessageTooLarge,
    Wrapper,
    escape_frame_delimiters,
    octet_counted,
    protected_prefix_length,
    truncate,
)
from tests.mappers.helpers import sample_event

BOM = "\ufeff".encode()


@pytest.fixture(scope="module")
def event() -> CanaryEvent:
    return sample_event("incident_ssh_login")


def wrapper(style: str = "rfc5424") -> Wrapper:
    return Wrapper(style=style, facility="local0", hostname="relay.example", app_name="fwd")  # type: ignore[arg-type]


class TestOctetCounting:
    # The vectors of RFC 6587 §3.4.1 as worked out in the project's wire-format notes.
    def test_ascii_message(self) -> None:
        assert octet_counted(b"<13>1 - - - - - - x") == b"19 <13>1 - - - - - - x"

    def test_length_counts_octets_not_characters(self) -> None:
        message = b"<13>1 - - - - - - " + BOM + "é".encode()
        assert len(message) == 23
        assert octet_counted(message) == b"23 " + message


class TestWrapper:
    def test_text_record_gets_an_rfc5424_header_without_structured_data(
        self, event: CanaryEvent
    ) -> None:
        message = wrapper().message(Record(event, "CEF:0|a|b|1|x|n|7|", severity=7))
        header, _, body = message.decode().partition(" - CEF:")
        # local0 (16) * 8 + error (3): severity 7 of 10 maps to syslog "error"
        assert header.startswith("<131>1 ")
        fields = header.split(" ")
        assert fields[2:] == ["relay.example", "fwd", "-", "incident"]
        assert body == "0|a|b|1|x|n|7|"

    def test_document_is_compact_json_on_one_line(self, event: CanaryEvent) -> None:
        message = wrapper().message(Record(event, {"a": "x\ny", "b": [1, 2]}))
        assert message.endswith(b' - {"a":"x\\ny","b":[1,2]}')
        assert b"\n" not in message

    def test_document_never_carries_a_unicode_line_separator(self, event: CanaryEvent) -> None:
        message = wrapper().message(Record(event, {"a": "x\u2028y\x85z"}))
        assert message.endswith(b' - {"a":"x\\u2028y\\u0085z"}')
        assert len(message.decode().splitlines()) == 1

    def test_rfc3164_header(self, event: CanaryEvent) -> None:
        message = wrapper("rfc3164").message(Record(event, "LEEF:2.0|x", severity=0))
        assert message.startswith(b"<135>")  # local0, debug
        assert message.endswith(b" relay fwd: LEEF:2.0|x")  # no domain part in RFC 3164

    def test_record_with_its_own_header_is_sent_as_it_is(self, event: CanaryEvent) -> None:
        body = "<134>1 2026-01-01T00:00:00Z h a - - - \ufeffmsg"
        assert wrapper().message(Record(event, body, syslog_header=True)) == body.encode()

    def test_lone_surrogate_does_not_raise(self, event: CanaryEvent) -> None:
        message = wrapper().message(Record(event, "a\ud800b"))
        assert message.endswith(b" a?b")


class TestLfEscaping:
    def test_lf_cr_and_nul_become_visible_escapes(self) -> None:
        assert escape_frame_delimiters(b"a\nb\x00c\r\n") == b"a#012b#000c#015#012"

    @given(st.binary())
    def test_escaped_message_has_no_frame_delimiter(self, data: bytes) -> None:
        escaped = escape_frame_delimiters(data)
        assert b"\n" not in escaped
        assert b"\r" not in escaped
        assert b"\x00" not in escaped


HEADER = b"<134>1 2026-01-01T00:00:00.000000Z host app - ID "


class TestProtectedPrefix:
    def test_nil_structured_data(self) -> None:
        message = HEADER + b"- hello"
        assert message[: protected_prefix_length(message)] == HEADER + b"- "

    def test_structured_data_with_escapes_inside_values(self) -> None:
        sd = rb'[a@32473 k="x\]y\"z" j="\\"][b@32473 q="]"]'
        message = HEADER + sd + b" msg ] ["
        assert message[: protected_prefix_length(message)] == HEADER + sd + b" "

    def test_rfc3164_protects_nothing(self) -> None:
        assert protected_prefix_length(b"<13>Oct  1 10:00:00 host tag: msg") == 0

    def test_malformed_structured_data_protects_everything(self) -> None:
        message = HEADER + b'[a@32473 k="never closed'
        assert protected_prefix_length(message) == len(message)


class TestTruncate:
    def test_short_message_is_untouched(self) -> None:
        message = HEADER + b"- short"
        assert truncate(message, 480) is message

    def test_cut_ends_with_marker_and_fits(self) -> None:
        message = HEADER + b"- " + b"x" * 1000
        cut = truncate(message, 480)
        assert len(cut) == 480
        assert cut.endswith(TRUNCATION_MARKER)
        assert cut.startswith(HEADER + b"- xxx")

    @given(st.text(min_size=1, max_size=600), st.integers(min_value=120, max_value=700))
    def test_cut_is_valid_utf8_and_keeps_the_header(self, text: str, limit: int) -> None:
        message = HEADER + b"- " + BOM + text.encode()
        cut = truncate(message, limit)
        cut.decode("utf-8")  # never splits a character
        assert len(cut) <= limit
        assert cut.startswith(HEADER + b"- ")
        if cut is not message:
            assert cut.endswith(TRUNCATION_MARKER)

    @pytest.mark.parametrize("limit", range(200, 206))
    def test_cut_never_leaves_half_an_escape(self, limit: int) -> None:
        # A CEF value of escaped backslashes: whichever byte the limit falls on, the kept part
        # must end in whole `\\` pairs, or the marker's first dot would read as escaped.
        message = HEADER + b"- CEF:0|Thinkst|Canary|1|1001|x|5|duser=" + b"\\" * 300
        cut = truncate(message, limit)
        kept = cut.removesuffix(TRUNCATION_MARKER)
        assert kept != cut
        assert (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0
        assert len(cut) <= limit

    @given(st.text(alphabet="\\x=é", min_size=1, max_size=400), st.integers(120, 500))
    def test_cut_keeps_every_escape_whole(self, text: str, limit: int) -> None:
        escaped = text.replace("\\", "\\\\").replace("=", "\\=").encode()
        message = HEADER + b"- " + escaped
        kept = truncate(message, limit).removesuffix(TRUNCATION_MARKER)
        assert escaped.startswith(kept.removeprefix(HEADER + b"- "))
        assert (len(kept) - len(kept.rstrip(b"\\"))) % 2 == 0

    def test_a_long_structured_data_value_is_cut_with_its_marker_escaped(self) -> None:
        # An attacker's 2,000-character password must not keep the alert out of the SIEM.
        message = HEADER + b'[a@32473 src="10.0.0.1" k="' + b"v" * 600 + b'"] msg'
        cut = truncate(message, 480)
        assert len(cut) == 480
        assert cut.startswith(HEADER + b'[a@32473 src="10.0.0.1" k="vvv')
        assert cut.endswith(b'v...[truncated\\]"] ' + TRUNCATION_MARKER)

    def test_the_longest_values_are_cut_and_the_short_ones_kept(self) -> None:
        message = (
            HEADER
            + b'[a@32473 id="abc" u="'
            + b"u" * 400
            + b'"][d@32473 p="'
            + b"p" * 900
            + b'" q="short"]'
        )
        cut = truncate(message, 480)
        assert len(cut) <= 480
        assert b'id="abc"' in cut and b'q="short"' in cut
        assert cut.count(b"...[truncated\\]") == 2
        assert cut.endswith(b'"] ' + TRUNCATION_MARKER)  # marked as MSG, though it had none

    def test_params_past_what_fits_are_left_out_from_the_end(self) -> None:
        many = b" ".join(b'k%d="v"' % n for n in range(200))
        message = HEADER + b'[a@32473 id="abc"][d@32473 ' + many + b"] msg"
        cut = truncate(message, 480)
        assert len(cut) <= 480
        assert cut.startswith(HEADER + b'[a@32473 id="abc"][d@32473 k0="v" k1="v"')
        assert cut.endswith(b'"] ' + TRUNCATION_MARKER)
        assert b"k199" not in cut

    def test_params_left_out_of_a_message_without_msg_leave_a_marker(self) -> None:
        params = b" ".join(b'k%d=""' % n for n in range(30))
        message = HEADER + b'[a@32473 id="abc"][d@32473 ' + params + b"]"
        cut = truncate(message, len(message) - 1)
        assert len(cut) <= len(message) - 1
        assert b"k29" not in cut  # left out, and said so
        assert cut.endswith(b'"] ' + TRUNCATION_MARKER), cut

    def test_a_header_too_long_for_the_limit_is_refused(self) -> None:
        message = b"<13>1 - " + b"h" * 500 + b' - - - [a@32473 k="v"] msg'
        with pytest.raises(MessageTooLarge):
            truncate(message, 480)

    @given(
        st.lists(st.text(alphabet='v\\"]é😀', max_size=300), min_size=1, max_size=6),
        st.integers(min_value=200, max_value=900),
    )
    def test_cut_structured_data_stays_valid(self, values: list[str], limit: int) -> None:
        params = b" ".join(
            b'k%d="%b"' % (n, _sd_escaped(value).encode()) for n, value in enumerate(values)
        )
        message = HEADER + b"[a@32473 " + params + b"] msg"
        cut = truncate(message, limit)
        assert len(cut) <= limit
        cut.decode("utf-8")  # never splits a character
        assert cut.startswith(HEADER + b"[a@32473")
        # Every value still ends at an unescaped quote: no escape was cut in half.
        assert re.fullmatch(
            rb'\[a@32473( k\d+="(?:[^"\\\]]|\\.)*")*\]( .*)?', cut[len(HEADER) :], re.S
        ), cut


def _sd_escaped(value: str) -> str:
    """RFC 5424 PARAM-VALUE escaping: `"`, `\\` and `]`."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
