"""What the store tests share."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def write_foreign_store(path: Path, *statements: str) -> None:
    """A database file SQLite opens fine but that some other program (or version) made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as foreign:
        for statement in statements:
            foreign.execute(statement)
        foreign.commit()


def table_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as database:
        return database.execute(query).fetchall()
