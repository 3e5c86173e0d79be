"""`store stats`: how much is queued, for whom, and how old; dead letters and quarantine.
`store check`: whether the store file is sound, by SQLite's full integrity check."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from datetime import UTC, datetime

from forwarder.cli._common import add_config_argument, open_store_or_exit, settings_from_args
from forwarder.settings import Settings
from forwarder.store.database import (
    DB_NAME,
    Database,
    StoreDamaged,
    is_damage,
)

__all__ = ["configure", "main"]

# A badly damaged file gives a finding per page: the first ones tell what is wrong, millions
# of lines would bury them.
MAX_PROBLEMS = 100

DESCRIPTION = (
    "stats prints the store's figures as JSON: the events queued, their bytes, the oldest one's"
    " receipt time and age, the events queued per output, the dead letters per output and the"
    " quarantined posts. The age is on the wall clock (oldest_age_clock: wall): now minus the"
    " receipt stamp, and 0 when the stamp is ahead of the clock (set back since). The running"
    " daemon's canary_forwarder_store_oldest_event_age_seconds counts on the monotonic clock"
    " instead, as store.max_age_secs does, so after a step of the wall clock the two can differ"
    " by as much as the step."
    " check runs SQLite's full integrity check on the store file, which also matches each index"
    " against its table, and prints the path, ok, the problems SQLite found (the first"
    f" {MAX_PROBLEMS}) and the events queued as JSON; exit status 0 when the file is sound, 1"
    " when it is damaged or cannot be checked. It never salvages or moves the file: the daemon"
    " runs the same check at every start, and salvages a damaged store then."
    " Both read the store file, so they work with the daemon stopped or beside it."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    add_config_argument(parser, required=False)
    parser.add_argument(
        "action",
        choices=["stats", "check"],
        help="stats: print the store's figures; check: check the store file for damage",
    )


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.action == "check":
        return _check(settings, args)
    return _stats(settings, args)


def _stats(settings: Settings, args: argparse.Namespace) -> int:
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


def _check(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.store.path / DB_NAME
    opened = _open_to_check(settings, args)
    if isinstance(opened, StoreDamaged):
        problems: list[str] = opened.findings[:MAX_PROBLEMS]
        events: int | None = None
    else:
        try:
            problems, events = _findings(opened)
        except sqlite3.Error as exc:
            print(f"cannot check the store in {path.parent.absolute()}: {exc}", file=sys.stderr)
            return 1
        finally:
            opened.close()
    print(
        json.dumps(
            {"path": str(path), "ok": not problems, "problems": problems, "events": events},
            indent=2,
        )
    )
    return 1 if problems else 0


def _open_to_check(settings: Settings, args: argparse.Namespace) -> Database | StoreDamaged:
    """The store, or the damage its open found (the quick check every command's open runs):
    findings of the check, not a store it cannot open."""
    try:
        return open_store_or_exit(settings, args, reraise=(StoreDamaged,))
    except StoreDamaged as damage:
        return damage


def _findings(database: Database) -> tuple[list[str], int | None]:
    """The problems the full check finds, and the events queued if they can be counted.

    Damage that stops the check or the count part way is a problem found; any other error
    (not about the file) is raised.
    """
    problems: list[str] = []
    try:
        problems = database.integrity_problems(MAX_PROBLEMS)
        return problems, database.stats().events
    except sqlite3.Error as exc:
        if not is_damage(exc):
            raise
        return [*problems, str(exc)], None
