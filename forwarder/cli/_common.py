"""Pieces every subcommand shares: the config option and how a bad config ends the process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forwarder.settings import EX_CONFIG, ConfigError, Settings, default_settings, load_settings

__all__ = ["add_config_argument", "load_or_exit", "settings_from_args"]


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
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_or_exit(args.config) if args.config else default_settings()
