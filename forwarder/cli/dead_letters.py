"""`dead-letters list | replay | purge`: what outputs refused, and sending it again.

Replay queues each dead letter again for the output that refused it, once the cause is fixed;
a running daemon picks the events up within a second. It works beside a running daemon.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from forwarder.cli._common import add_config_argument, settings_from_args
from forwarder.store.database import Database

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=False)
    parser.add_argument("action", choices=["list", "show", "replay", "purge"])
    parser.add_argument("--output", help="only dead letters of this output")
    parser.add_argument(
        "--id", type=int, action="append", dest="ids", metavar="N", help="only this one"
    )
    parser.add_argument("--all", action="store_true", help="replay or purge every selected one")
    parser.add_argument("--limit", type=int, default=100)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    database = Database(settings.store.path, sync=settings.store.sync)
    try:
        if args.action == "list":
            for letter in database.dead_letters(args.output, args.limit):
                print(
                    json.dumps(
                        {
                            "id": letter.id,
                            "output": letter.output,
                            "event_id": letter.event_id,
                            "kind": letter.kind,
                            "received_at": _when(letter.received_at),
                            "dead_at": _when(letter.dead_at),
                            "attempts": letter.attempts,
                            "reason": letter.reason,
                            "bytes": letter.size,
                        }
                    )
                )
            return 0
        if args.action == "show":
            if not args.ids:
                print("show needs --id N")
                return 2
            for letter_id in args.ids:
                body = database.dead_letter_body(letter_id)
                print(body.decode("utf-8", "replace") if body is not None else f"no {letter_id}")
            return 0
        if not args.ids and not args.all:
            print(f"{args.action} needs --id N (repeatable) or --all")
            return 2
        ids = None if args.all else args.ids
        if args.action == "replay":
            print(f"replayed {database.replay(ids, args.output)}")
        else:
            print(f"purged {database.purge(ids, args.output)}")
        return 0
    finally:
        database.close()
