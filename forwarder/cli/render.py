"""`render`: print what a payload becomes in a format, one record per line, without any SIEM.

    canary-forwarder render --format cef payload.json
    canary-forwarder render -c config.yaml --output arcsight - < payload.json

With `--output`, the format and its options are those of that output in the configuration.
The input is one JSON payload, or several as JSON lines; `-` or nothing reads stdin. Documents
(ECS, JSON) are printed as compact JSON.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forwarder.cli._common import add_config_argument, load_or_exit
from forwarder.events import CanaryEvent, PayloadError, parse_event
from forwarder.mappers.base import Mapper, MappingError
from forwarder.registry import BUILTIN_MAPPERS, PluginError, mapper_class

__all__ = ["configure", "main", "render"]

EX_USAGE = 2


class _UsageError(Exception):
    """The arguments do not say which format to use."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        metavar="FORMAT",
        help=f"the format: {', '.join(sorted(BUILTIN_MAPPERS))} or a plug-in's"
        " (with --output: must match that output's)",
    )
    add_config_argument(parser, required=False)
    parser.add_argument(
        "--output",
        metavar="NAME",
        help="use the format and format options of this output of the -c configuration",
    )
    parser.add_argument(
        "payload",
        nargs="?",
        default="-",
        metavar="PAYLOAD_FILE",
        help="a JSON payload, or JSON lines of payloads; - or nothing reads stdin",
    )


def main(args: argparse.Namespace) -> int:
    try:
        mapper = _mapper(args)
    except (_UsageError, PluginError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        raw = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    except OSError as exc:
        print(f"render: cannot read {args.payload}: {exc}", file=sys.stderr)
        return 1
    try:
        lines = render(mapper, raw, received_at=datetime.now(UTC))
    except (PayloadError, MappingError) as exc:
        name = "stdin" if args.payload == "-" else args.payload
        print(f"render: {name}: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    for line in lines:
        out.write(line.encode("utf-8") + b"\n")
    out.flush()
    return 0


def render(mapper: Mapper[Any], raw: bytes, *, received_at: datetime) -> list[str]:
    """The text of each record the payloads in `raw` become, one line each.

    Raises:
        PayloadError: `raw` is neither one JSON object nor JSON lines of objects.
        MappingError: the format cannot carry one of the events.
    """
    return [mapper.map(event).text() for event in _events(raw, received_at)]


def _events(raw: bytes, received_at: datetime) -> list[CanaryEvent]:
    try:
        return [parse_event(raw, received_at=received_at)]
    except PayloadError as whole:
        lines = [line for line in raw.splitlines() if line.strip()]
        if len(lines) < 2:
            raise
        events: list[CanaryEvent] = []
        for number, line in enumerate(lines, start=1):
            try:
                events.append(parse_event(line, received_at=received_at))
            except PayloadError as exc:
                raise PayloadError(f"{whole}; read as JSON lines, line {number}: {exc}") from None
        return events


def _mapper(args: argparse.Namespace) -> Mapper[Any]:
    if args.output is None:
        if args.config is not None:
            raise _UsageError("-c needs --output NAME to say which output's format to use")
        if args.format is None:
            raise _UsageError("give --format FORMAT, or -c FILE --output NAME")
        cls = mapper_class(args.format)
        return cls(cls.config_class.model_validate({"type": args.format}))
    if args.config is None:
        raise _UsageError("--output needs -c FILE")
    settings = load_or_exit(args.config)
    for spec in settings.outputs:
        if spec.name == args.output:
            if args.format is not None and args.format != spec.format.type:
                raise _UsageError(
                    f"output {spec.name} uses format {spec.format.type}, not {args.format}"
                )
            return mapper_class(spec.format.type)(spec.format)
    names = ", ".join(spec.name for spec in settings.outputs)
    raise _UsageError(f"{args.config} has no output {args.output!r}; its outputs: {names}")
