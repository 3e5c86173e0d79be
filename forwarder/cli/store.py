"""`store stats`: how much is queued, for whom, and how old; dead letters and quarantine."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from forwarder.cli._common import add_config_argument, open_store_or_exit, settings_from_args

__all__ = ["configure", "main"]

DESCRIPTION = (
    "Print the store's figures as JSON: the events queued, their bytes, the oldest one's receipt"
    " time and age, the events queued per output, the dead letters per output and the"
    " quarantined posts. It reads the store file, so it works with the daemon stopped or beside"
    " it. The age is on the wall clock (oldest_age_clock: wall): now minus the receipt stamp,"
    " and 0 when the stamp is ahead of the clock (set back since). The running daemon's"
    " canary_forwarder_store_oldest_event_age_seconds counts on the monotonic clock instead,"
    " as store.max_age_secs does, so after a step of the wall clock the two can differ by as much"
    " as the step."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    add_config_argument(parser, required=False)
    parser.add_argument("action", choices=["stats"], help="stats: print the store's figures")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    database = open_store_or_exit(settings, args)
    try:
        stats = database.stats()
    finally:
        database.close()
    oldest = stats.oldest_received_at
    print(
        json.dumps(
            {
                "path": str(database.path),
                "events": stats.events,
                "bytes": stats.bytes,
                "oldest_received_at": None if oldest is None else _when(oldest),
                "oldest_age_secs": None if oldest is None else _wall_clock_age(oldest),
                "oldest_age_clock": "wall",
                "queued": stats.queued,
                "dead_letters": stats.dead_letters,
                "quarantined": stats.quarantined,
            },
            indent=2,
        )
    )
    return 0


def _wall_clock_age(received_at: float) -> float:
    """Seconds from `received_at` to now on the wall clock; 0 for a stamp ahead of it."""
    return max(0.0, round(time.time() - received_at, 3))


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
