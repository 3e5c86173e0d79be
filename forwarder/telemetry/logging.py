"""structlog set-up: JSON lines when stderr is not a terminal (journald, containers), readable
lines when it is. The standard library's loggers (aiohttp's) go through the same renderer.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from forwarder.mappers._escape import TERMINAL_CONTROLS_ABOVE_C0, json_log_line

__all__ = ["configure_logging"]


def _orjson_text(value: Any, **_: Any) -> str:
    # orjson renders a line several times faster than json.dumps: one line per accepted event.
    # It escapes C0 controls but writes DEL, C1 controls, Unicode line separators and
    # bidirectional overrides as they are, and `journalctl` and terminals act on some of them.
    return json_log_line(value)


class _StderrLogger(structlog.WriteLogger):
    """structlog's WriteLogger on stderr, with the `name` that `add_logger_name` reports."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger(str(args[0]) if args else "")


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
        structlog.contextvars.merge_contextvars,
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
    handler = logging.StreamHandler(sys.stderr)
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
