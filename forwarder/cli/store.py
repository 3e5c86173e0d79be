"""`store stats`: how much is queued, for whom, and how old; dead letters and quarantine."""

from __future__ import annotations

import argparse
import json
import time

from forwarder.cli._common import add_config_argument, open_store_or_exit, settings_from_args

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=False)
    parser.add_argument("action", choices=["stats"])


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
                "oldest_age_secs": None if oldest is None else round(time.time() - oldest, 3),
                "queued": stats.queued,
                "dead_letters": stats.dead_letters,
                "quarantined": stats.quarantined,
            },
            indent=2,
        )
    )
    return 0
