"""Log lines logged on the event loop go out once per turn of the loop, in the order logged.

One "Event accepted." line per post was a write and a flush per post; these tests pin down that
they are now held to the end of the turn, and that holding them loses and reorders nothing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import pytest
import structlog

from forwarder.telemetry import logging as log_setup
from forwarder.telemetry.logging import LineWriter, configure_logging, flush_logs


class _Stream(io.StringIO):
    """Counts the writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("stderr is gone")


async def _next_turn() -> None:
    """Let the loop run the callbacks scheduled so far (not a wait for time to pass)."""
    await asyncio.sleep(0)


async def test_lines_of_one_turn_go_out_in_one_write_after_it() -> None:
    stream = _Stream()
    writer = LineWriter(stream)
    for number in range(3):
        writer.write(f"line {number}\n")
    assert stream.getvalue() == ""  # still in the turn that logged them
    await _next_turn()
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"
    assert stream.writes == 1


async def test_a_line_from_another_thread_goes_out_at_once_after_those_held() -> None:
    stream = _Stream()
    writer = LineWriter(stream)
    writer.write("from the loop\n")
    thread = threading.Thread(target=writer.write, args=("from a thread\n",))
    thread.start()
    thread.join()
    assert stream.getvalue() == "from the loop\nfrom a thread\n"
    await _next_turn()  # the flush scheduled for the first line finds nothing left
    assert stream.getvalue() == "from the loop\nfrom a thread\n"


def test_a_line_with_no_loop_running_goes_out_at_once() -> None:
    stream = _Stream()
    LineWriter(stream).write("no loop\n")
    assert stream.getvalue() == "no loop\n"


def test_lines_held_by_a_loop_that_stopped_go_out_with_the_next_loops_turn() -> None:
    stream = _Stream()
    writer = LineWriter(stream)

    def log_and_stop() -> None:
        writer.write("logged as the loop stopped\n")
        loop.stop()  # the loop ends with this turn: the flush it scheduled never runs

    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(log_and_stop)
        loop.run_forever()
    finally:
        loop.close()
    assert stream.getvalue() == ""

    async def log_and_yield() -> None:
        writer.write("next loop\n")
        await _next_turn()

    asyncio.run(log_and_yield())
    assert stream.getvalue() == "logged as the loop stopped\nnext loop\n"


async def test_a_long_turn_writes_once_past_the_bound_without_waiting_for_its_end() -> None:
    stream = _Stream()
    writer = LineWriter(stream)
    line = "x" * 1023 + "\n"
    for _ in range(log_setup._HELD_CHARS_MAX // len(line) + 1):
        writer.write(line)
    assert stream.writes == 1
    assert len(stream.getvalue()) > log_setup._HELD_CHARS_MAX


async def test_a_stream_that_fails_does_not_fail_the_caller() -> None:
    writer = LineWriter(_BrokenStream())
    writer.write("lost\n")
    await _next_turn()
    writer.write("also lost, with no loop to hold it\n")
    writer.flush()


async def test_flush_logs_writes_what_is_held(capsys: pytest.CaptureFixture[str]) -> None:
    """What the forced exit (`os._exit`, which skips `atexit`) calls before it goes."""
    configure_logging(json=True)
    structlog.get_logger("test").info("Event accepted.")
    assert "Event accepted." not in capsys.readouterr().err
    flush_logs()
    assert "Event accepted." in capsys.readouterr().err


async def test_foreign_and_own_lines_keep_the_order_they_were_logged_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True)
    structlog.get_logger("test").info("first, ours")
    logging.getLogger("aiohttp.server").error("second, aiohttp's")
    structlog.get_logger("test").info("third, ours")
    await _next_turn()
    lines = capsys.readouterr().err.splitlines()
    assert [next(m for m in ("first", "second", "third") if m in line) for line in lines] == [
        "first",
        "second",
        "third",
    ]


async def test_a_warning_goes_out_at_once_after_the_lines_held_before_it() -> None:
    """A loop that then hangs in a call is killed by the watchdog (SIGABRT: no exit handler
    runs); the lines that explain the hang must be out already."""
    stream = _Stream()
    writer = LineWriter(stream)
    writer.write("info, held\n")
    writer.write("warning, at once\n", at_once=True)
    assert stream.getvalue() == "info, held\nwarning, at once\n"


async def test_warnings_and_errors_are_written_within_the_turn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True)
    structlog.get_logger("test").info("an info line")
    assert "an info line" not in capsys.readouterr().err
    structlog.get_logger("test").error("an error line")
    logging.getLogger("aiohttp.server").warning("aiohttp's warning")
    lines = capsys.readouterr().err.splitlines()
    assert ["an info line" in lines[0], "an error line" in lines[1]] == [True, True]
    assert "aiohttp's warning" in lines[2]


def test_a_stream_that_logs_while_written_to_does_not_wait_for_itself() -> None:
    """A finaliser the collector runs in the middle of a write may log (asyncio's "Task
    exception was never retrieved"); with no loop running, that write is on the same thread."""
    writer: LineWriter

    class LoggingStream(_Stream):
        def write(self, text: str) -> int:
            if text.startswith("first"):
                writer.write("logged from inside the write\n")
            return super().write(text)

    stream = LoggingStream()
    writer = LineWriter(stream)
    thread = threading.Thread(target=writer.write, args=("first\n",), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the writer waited for its own lock"
    assert sorted(stream.getvalue().splitlines()) == ["first", "logged from inside the write"]


def test_the_writers_of_closed_streams_are_let_go() -> None:
    streams = [io.StringIO() for _ in range(50)]
    for stream in streams:
        log_setup._writer_for(stream)
        stream.close()
    log_setup._writer_for(io.StringIO())
    assert not [w for w in log_setup._WRITERS.values() if w.stream in streams]
