"""`render`: placeholder until the formats land."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True)


def main(args: argparse.Namespace) -> int:
    raise SystemExit("render is not available yet")
