"""`dead-letters list | show | replay | purge`: what outputs refused, and sending it again.

Replay queues each dead letter again for the output that refused it, once the cause is fixed;
a running daemon picks the events up within a second. It works beside a running daemon.
Every action works on the store the configuration names, and fails if there is none there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from forwarder.cli._common import add_config_argument, open_store_or_exit, settings_from_args
from forwarder.settings import Settings
from forwarder.store.database import Database, DeadLetter, ReplayOverBound

__all__ = ["configure", "main"]

# For `Database.dead_letters`: replay and purge must see every one they act on.
_NO_LIMIT = sys.maxsize

REPLAY_DESCRIPTION = (
    "Queue dead letters again for the output that refused them, once the cause is fixed; a"
    " running daemon sends them within a second. Refuses (exit status 1, nothing queued) when"
    " one of them belongs to an output the configuration no longer has: nothing would send it,"
    " and it would wait until store.max_age_secs dead-letters it again under a new reason."
    " Add the output back, narrow the selection with --output, purge those, or pass"
    " --allow-unconfigured to queue them for an output you are about to configure again."
    " Also refuses when the bytes of the events already queued and of the selection together"
    " exceed store.max_bytes, where the daemon would answer new posts 503: replay fewer with"
    " --id, or wait for the queue to drain."
)


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = _action(actions, "list", "one JSON line per dead letter, oldest first")
    _add_output_filter(listing)
    listing.add_argument("--limit", type=int, default=100, help="most lines (default 100)")
    show = _action(actions, "show", "print the body of dead letters as received")
    _add_ids(show, "show this one (repeatable)", required=True)
    replay = _action(actions, "replay", "queue dead letters again", REPLAY_DESCRIPTION)
    _add_selection(replay, "replay")
    replay.add_argument(
        "--allow-unconfigured",
        action="store_true",
        help="also queue dead letters of outputs the configuration does not have",
    )
    purge = _action(actions, "purge", "delete dead letters for good")
    _add_selection(purge, "purge")


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=description or help_text)
    add_config_argument(parser, required=False)
    return parser


def _add_output_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="NAME", help="only dead letters of this output")


def _add_ids(
    container: argparse._ActionsContainer, help_text: str, *, required: bool = False
) -> None:
    container.add_argument(
        "--id",
        type=int,
        action="append",
        dest="ids",
        required=required,
        metavar="N",
        help=help_text,
    )


def _add_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    """--output, and exactly one of --id and --all: a purge must never widen silently."""
    _add_output_filter(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    _add_ids(which, f"{verb} this one (repeatable)")
    which.add_argument("--all", action="store_true", help=f"{verb} all (of --output, if given)")


class _Refused(Exception):
    """The command names what neither the store nor the configuration has, or would queue
    events nothing sends; the message says which and how to proceed. Exit status 1."""


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    database = open_store_or_exit(settings, args)
    # Printed once the store is closed: output nobody reads yet (a pager left open) must not
    # hold the store, and with it the daemon's copy of a deleted store, and posts, back.
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            return _ACTIONS[args.action](database, args, settings)
    except _Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(_store_failed(args.action, exc), file=sys.stderr)
        return 1
    finally:
        database.close()
        sys.stdout.write(output.getvalue())


# What each action that writes leaves undone when the store fails under it.
_WRITES = {"replay": "replayed", "purge": "purged"}


def _store_failed(action: str, exc: sqlite3.Error) -> str:
    """One line for a store that failed under the command: another process held the write lock
    past the busy timeout ("database is locked"), the disk is full. A replay or a purge is one
    transaction, and a failed one never committed: nothing changed, so it can simply run again."""
    done = _WRITES.get(action)
    if done is None:
        return f"cannot read the store: {exc}; nothing changed, run the command again"
    return (
        f"nothing {done}: the store failed ({exc}) before the transaction committed;"
        " it is safe to run the command again"
    )


def _list(database: Database, args: argparse.Namespace, settings: Settings) -> int:
    _check_output(database, args, _output_names(settings))
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


def _show(database: Database, args: argparse.Namespace, settings: Settings) -> int:
    missing: list[int] = []
    for letter_id in args.ids:
        body = database.dead_letter_body(letter_id)
        if body is None:
            missing.append(letter_id)
        else:
            print(body.decode("utf-8", "replace"))
    if missing:
        raise _Refused(f"no dead letter with id {_listed(missing)}")
    return 0


def _replay(database: Database, args: argparse.Namespace, settings: Settings) -> int:
    configured = _output_names(settings)
    letters = _selected(database, args, configured, "replayed")
    _check_configured(letters, args, configured)
    ids = [letter.id for letter in letters]
    try:
        replayed = database.replay(ids, None, max_bytes=settings.store.max_bytes)
    except ReplayOverBound as over:
        raise _Refused(
            f"nothing replayed: the store holds {over.queued} bytes of queued events and the"
            f" selected dead letters {over.selected}, together more than store.max_bytes"
            f" ({over.bound}), so the daemon would answer every new post 503 until the queue"
            " drained. Replay fewer at a time with --id N, or wait for the queue to drain"
            " (store stats) and run the command again."
        ) from None
    print(f"replayed {replayed}")
    return 0


def _check_configured(
    letters: Sequence[DeadLetter], args: argparse.Namespace, configured: Sequence[str]
) -> None:
    """Refuse dead letters of outputs the configuration lacks, unless --allow-unconfigured:
    nothing would send them, and they would only age into dead letters again."""
    unconfigured = sorted({letter.output for letter in letters} - set(configured))
    if not unconfigured or args.allow_unconfigured:
        return
    count = sum(letter.output in unconfigured for letter in letters)
    raise _Refused(
        f"nothing replayed: {count} of the selected dead letters belong to output"
        f" {_listed(unconfigured)}, which {_config_name(args)} does not have (its outputs:"
        f" {_listed(configured)}), so nothing would ever send them. Add the output back"
        " to the configuration, select the others with --output NAME, purge these"
        " (dead-letters purge --output NAME --all), or pass --allow-unconfigured to queue"
        " them anyway."
    )


def _purge(database: Database, args: argparse.Namespace, settings: Settings) -> int:
    letters = _selected(database, args, _output_names(settings), "purged")
    print(f"purged {database.purge([letter.id for letter in letters], None)}")
    return 0


_ACTIONS: dict[str, Callable[[Database, argparse.Namespace, Settings], int]] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "purge": _purge,
}


def _output_names(settings: Settings) -> list[str]:
    return [spec.name for spec in settings.outputs]


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _config_name(args: argparse.Namespace) -> str:
    return str(args.config) if args.config else "the built-in default configuration"


def _listed(names: Sequence[object]) -> str:
    return ", ".join(map(str, names))


def _selected(
    database: Database, args: argparse.Namespace, configured: Sequence[str], done: str
) -> list[DeadLetter]:
    """The dead letters `--id` or `--all` select within `--output`. An id that is not there
    means a mistyped command, so then nothing is `done` at all."""
    _check_output(database, args, configured)
    letters = database.dead_letters(args.output, _NO_LIMIT)
    if args.all:
        return letters
    by_id = {letter.id: letter for letter in letters}
    missing = [letter_id for letter_id in args.ids if letter_id not in by_id]
    if missing:
        of_output = f" of output {args.output}" if args.output else ""
        raise _Refused(f"no dead letter{of_output} with id {_listed(missing)}; nothing {done}")
    return [by_id[letter_id] for letter_id in dict.fromkeys(args.ids)]


def _check_output(database: Database, args: argparse.Namespace, configured: Sequence[str]) -> None:
    """Refuse an `--output` that is most likely a typo: no such output, and no dead letters of
    it. (The dead letters of an output removed from the configuration stay reachable.)"""
    output: str | None = args.output
    if output is None or output in configured or database.dead_letters(output, 1):
        return
    raise _Refused(
        f"no output {output!r} in {_config_name(args)} (its outputs: {_listed(configured)})"
        " and no dead letters of it"
    )
