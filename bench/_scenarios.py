"""What the scenario benchmarks (reliability.py, soak.py) share: picking scenarios by name and
printing their rows as one Markdown table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def chosen_scenarios(only: str | None, known: Iterable[str]) -> list[str] | None:
    """The scenarios `--only` names (all when None), or None after saying which are unknown."""
    names = list(known)
    chosen = only.split(",") if only else names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        print(f"unknown scenarios: {', '.join(unknown)}; known: {', '.join(names)}")
        return None
    return chosen


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if row is header:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
