"""structlog set-up: JSON lines when stderr is not a terminal (journald, containers), readable
lines when it is. The standard library's loggers (aiohttp's) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging"]


def _orjson_text(value: Any, **_: Any) -> str:
    # orjson renders a line several times faster than json.dumps: one line per accepted event.
    return orjson.dumps(value, default=str).decode()


class _StderrLogger(structlog.WriteLogger):
    """structlog's WriteLogger on stderr, with the `name` that `add_logger_name` reports."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger(str(args[0]) if args else "")


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
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
        processors=[*shared, renderer],
        logger_factory=_StderrLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One access line per request would double the per-event "Event accepted." line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
