"""Mapper benchmark (issue 3, "Benchmark"): events per second per format, on one core.

    python bench/mappers.py [--seconds 1] [--repeat 5] [--cpu 0]

Every sample payload in tests/samples is parsed once; each format then maps the whole set over
and over, in this process, pinned to one CPU; rates are per CPU second of this process (so other
load on the machine does not count) and the best of `--repeat` runs counts. `map/s` is
mapping alone (what a delivery dispatcher does per record); `parse+map/s` adds `parse_event`,
which ingest does once per event whatever the number of outputs. Target: 20,000 events/s per
format.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forwarder.events import CanaryEvent, parse_event  # noqa: E402
from forwarder.mappers.base import Mapper  # noqa: E402
from forwarder.registry import mapper_class  # noqa: E402

SAMPLES = ROOT / "tests" / "samples"
TARGET = 20_000
RECEIVED_AT = datetime(2026, 3, 1, tzinfo=UTC)

VARIANTS: dict[str, dict[str, Any]] = {
    "json": {"type": "json"},
    "splunk_console": {"type": "splunk_console"},
    "ecs": {"type": "ecs"},
    "cef": {"type": "cef"},
    "cef + rfc5424 header": {"type": "cef", "syslog_header": "rfc5424"},
    "leef": {"type": "leef"},
    "rfc5424": {"type": "rfc5424"},
    "rfc5424 thinkst_compat": {"type": "rfc5424", "thinkst_compat": True},
    "rfc3164": {"type": "rfc3164"},
}


def _rate(work: Callable[[], int], seconds: float, repeat: int) -> float:
    """Events per CPU second of `work` (which returns how many events it handled): the best of
    `repeat` runs of `seconds` of CPU time each, after a warm-up.

    CPU time of this process (not wall time) is what one core spends, whatever else the machine
    runs; the best run is the closest to the code's own cost, as with timeit.
    """
    work()
    best = 0.0
    for _ in range(repeat):
        count = 0
        started = time.process_time()
        elapsed = 0.0
        while elapsed < seconds:
            count += work()
            elapsed = time.process_time() - started
        best = max(best, count / elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per format; the best counts")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin this process to")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    raws = [path.read_bytes() for path in sorted(SAMPLES.glob("*.json"))]
    events: list[CanaryEvent] = [parse_event(raw, received_at=RECEIVED_AT) for raw in raws]

    def parse_all() -> int:
        for raw in raws:
            parse_event(raw, received_at=RECEIVED_AT)
        return len(raws)

    parse_rate = _rate(parse_all, args.seconds, args.repeat)
    print(
        f"{len(events)} sample payloads; Python {platform.python_version()}, {platform.machine()}"
    )
    print(f"pinned to CPU {args.cpu}; best of {args.repeat} runs of {args.seconds:g} CPU s each")
    print(f"parse_event alone: {parse_rate:,.0f} events/s\n")
    print("| format | map/s | µs/event | parse+map/s | >= 20,000/s |")
    print("|---|---:|---:|---:|:---:|")
    failed = False
    for name, options in VARIANTS.items():
        cls = mapper_class(options["type"])
        mapper: Mapper[Any] = cls(cls.config_class.model_validate(options))

        def map_all(mapper: Mapper[Any] = mapper) -> int:
            for event in events:
                mapper.map(event)
            return len(events)

        rate = _rate(map_all, args.seconds, args.repeat)
        combined = 1 / (1 / rate + 1 / parse_rate)
        met = rate >= TARGET
        failed |= not met
        verdict = "yes" if met else "NO"
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:.1f} | {combined:,.0f} | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
