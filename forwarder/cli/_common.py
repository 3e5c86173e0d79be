"""Pieces every subcommand shares: the config option, how a bad config ends the process, and
opening the store the config names."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from forwarder.settings import EX_CONFIG, ConfigError, Settings, default_settings, load_settings
from forwarder.store.database import DB_NAME, Database, StoreCorrupt

__all__ = [
    "add_config_argument",
    "exit_invalid",
    "load_or_exit",
    "open_store_or_exit",
    "settings_from_args",
]


def add_config_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        required=required,
        metavar="FILE",
        help="YAML configuration" + ("" if required else " (default: the built-in default)"),
    )


def load_or_exit(path: Path) -> Settings:
    """The validated config, or every problem on stderr and exit status 78 (EX_CONFIG)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        exit_invalid(path, exc.problems)


def exit_invalid(path: Path, problems: Sequence[str]) -> NoReturn:
    """Every problem of the configuration at `path` on stderr, then exit status 78."""
    print(f"{path}: invalid configuration:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    raise SystemExit(EX_CONFIG) from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_or_exit(args.config) if args.config else default_settings()


def open_store_or_exit(
    settings: Settings, args: argparse.Namespace, *, reraise: tuple[type[Exception], ...] = ()
) -> Database:
    """The store `settings` names, or the reason on stderr and exit status 1.

    Never creates one: on a mistyped path, an empty new store would read as "nothing queued,
    no dead letters". The exceptions in `reraise` are the caller's to handle (`store check`
    reports damage found at the open as its finding).
    """
    store = settings.store
    try:
        # The quick check: a command that reads figures need not wait for the full one, which
        # `store check` runs itself.
        return Database(store.path, sync=store.sync, create=False, check="quick")
    except reraise:
        raise
    except FileNotFoundError:
        hint = (
            f"check store.path in {args.config}"
            if args.config
            else "that is the built-in default; give -c with the daemon's configuration"
        )
        print(f"no store at {store.path.absolute() / DB_NAME}: {hint}", file=sys.stderr)
    except (StoreCorrupt, sqlite3.Error, OSError) as exc:
        print(f"cannot open the store in {store.path.absolute()}: {exc}", file=sys.stderr)
    raise SystemExit(1)
