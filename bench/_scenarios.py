"""What the scenario benchmarks (reliability.py, soak.py) share: picking scenarios by name,
running each in a scratch folder of its own, and printing their rows as one Markdown table."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

Row = TypeVar("Row", bound=Sequence[str])


def chosen_scenarios(only: str | None, known: Iterable[str]) -> list[str] | None:
    """The scenarios `--only` names (all when None), or None after saying which are unknown."""
    names = list(known)
    chosen = only.split(",") if only else names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        print(f"unknown scenarios: {', '.join(unknown)}; known: {', '.join(names)}")
        return None
    return chosen


async def run_scenarios(
    chosen: Iterable[str], prefix: str, run: Callable[[str, Path], Awaitable[list[Row]]]
) -> list[Row]:
    """`run(name, folder)` for each chosen scenario, each in an empty scratch folder of its own,
    with its progress and time on stderr; the rows of all of them."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        for name in chosen:
            work = Path(scratch) / name
            work.mkdir()
            began = time.monotonic()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows += await run(name, work)
            print(f"  {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return rows


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if row is header:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
