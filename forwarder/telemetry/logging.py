"""structlog set-up: JSON lines when stderr is not a terminal (journald, containers), readable
lines when it is. The standard library's loggers (aiohttp's) go through the same renderer.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import threading
from typing import Any, TextIO

import structlog

from forwarder.mappers._escape import TERMINAL_CONTROLS_ABOVE_C0, json_log_line

__all__ = ["LineWriter", "configure_logging", "flush_logs"]

# A turn of the event loop that logs more than this writes at once rather than at its end.
_HELD_CHARS_MAX = 64 * 1024


def _orjson_text(value: Any, **_: Any) -> str:
    # orjson renders a line several times faster than json.dumps: one line per accepted event.
    # It escapes C0 controls but writes DEL, C1 controls, Unicode line separators and
    # bidirectional overrides as they are, and `journalctl` and terminals act on some of them.
    return json_log_line(value)


class LineWriter:
    """Writes log lines to one stream: those logged on an event loop's thread in one turn of the
    loop go out together, in one write at the start of its next turn.

    A write and a flush per line cost a system call each, and each lets the store thread take
    the GIL from the busy event loop: one "Event accepted." line per post. Warnings and errors,
    lines from other threads, and lines with no loop running are written at once, after any
    that are held, so the order stays the order they were logged in; so a loop stuck in a call
    (which the watchdog then kills, and no exit handler runs) holds back only info lines. A
    SIGKILL loses at most the info lines of the turn it cuts short; an exit writes what is held.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._held: list[str] = []
        self._held_chars = 0
        # The loop a flush is scheduled on: one that stops before running it leaves the lines
        # to the next loop's flush (a test's loop, a reload's), not to the exit.
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        # Reentrant: a write to the stream can run code that logs (a finaliser the collector
        # runs then, a stream that logs), which must not wait for itself.
        self._lock = threading.RLock()

    def write(self, line: str, *, at_once: bool = False) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._held.append(line)
            self._held_chars += len(line)
            if at_once or loop is None or self._held_chars > _HELD_CHARS_MAX:
                self._write_held()
                return
            if self._flush_loop is loop:
                return
            self._flush_loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._write_held()

    def _write_held(self) -> None:
        self._flush_loop = None
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        self._held_chars = 0
        # A log line that cannot be written (stderr closed) must not fail the work it logs.
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


_WRITERS: dict[int, LineWriter] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_for(stream: TextIO) -> LineWriter:
    with _WRITERS_LOCK:
        # Streams closed since (a test's captured stderr) are let go of: nothing more goes
        # into them, and the dict would otherwise keep every one alive.
        for key, closed in [(k, w) for k, w in _WRITERS.items() if w.stream.closed]:
            closed.flush()
            del _WRITERS[key]
        writer = _WRITERS.get(id(stream))
        if writer is None:
            writer = _WRITERS[id(stream)] = LineWriter(stream)
        return writer


def flush_logs() -> None:
    """Write every log line still held; before an exit that skips `atexit` (`os._exit`)."""
    with _WRITERS_LOCK:
        writers = list(_WRITERS.values())
    for writer in writers:
        writer.flush()


atexit.register(flush_logs)


class _StderrLogger:
    """A structlog logger writing to stderr, with the `name` that `add_logger_name` reports."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._writer = _writer_for(sys.stderr)

    def msg(self, message: str) -> None:
        self._writer.write(message + "\n")

    def at_once(self, message: str) -> None:
        self._writer.write(message + "\n", at_once=True)

    log = debug = info = msg
    warn = warning = error = err = critical = exception = fatal = failure = at_once


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger(str(args[0]) if args else "")


class _LineHandler(logging.StreamHandler[TextIO]):
    """The standard library's records (aiohttp's) through the same writer, in the same order."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._writer = _writer_for(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._writer.write(line + self.terminator, at_once=record.levelno >= logging.WARNING)


# What a terminal acts on rather than shows: the C0 controls (line breaks, escape sequences)
# and the rest JSON log lines escape too.
_ABOVE_C0 = "".join(re.escape(chr(code)) for code in TERMINAL_CONTROLS_ABOVE_C0)
_TERMINAL_CONTROLS = re.compile(f"[\\x00-\\x1f{_ABOVE_C0}]")
# A traceback keeps its own line breaks; every other control in it is escaped.
_TRACEBACK_CONTROLS = re.compile(f"[\\x00-\\x09\\x0b-\\x1f{_ABOVE_C0}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_controls(
    _logger: Any, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """For readable lines: text that reached a log line from outside (a message of aiohttp's
    about a malformed request, an exception about a payload) must not start a line of its own
    or drive the terminal, so nobody forges a line or rewrites the screen through it. The
    readable renderer writes the message and the traceback as they are; other values go
    through repr, which escapes these already, and so do JSON lines for C0 controls."""
    message = event_dict.get("event")
    if isinstance(message, str):
        event_dict["event"] = _TERMINAL_CONTROLS.sub(_escaped, message)
    traceback = event_dict.get("exception")
    if isinstance(traceback, str):
        # Indented, so that no line of it (an exception's message may hold line breaks) starts
        # where a log line starts.
        escaped = _TRACEBACK_CONTROLS.sub(_escaped, traceback)
        event_dict["exception"] = "\n".join(f"  {line}" for line in escaped.split("\n"))
    return event_dict


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    rendering: list[structlog.typing.Processor] = (
        [renderer] if as_json else [_escape_controls, renderer]
    )
    shared: list[structlog.typing.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        # Our own lines are rendered and written directly: going through the standard library's
        # logging (a LogRecord, caller lookup, handler lock, formatter) cost about as much per
        # accepted event as parsing it. Foreign loggers still go through the handler below.
        processors=[*shared, *rendering],
        logger_factory=_StderrLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    flush_logs()  # lines rendered the earlier way go out before those rendered this way
    handler = _LineHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One access line per request would double the per-event "Event accepted." line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
