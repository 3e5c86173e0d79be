"""What the store tests share."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forwarder.events import CanaryEvent, parse_event
from forwarder.settings import StoreConfig
from forwarder.store.outbox import Outbox


def event(n: int, *, pad: int = 0, received_at: datetime | None = None) -> CanaryEvent:
    body = b'{"Description": "FTP Login Attempt", "AlertType": "CanaryIncident", "N": %d%s}' % (
        n,
        b', "Pad": "%s"' % (b"x" * pad) if pad else b"",
    )
    return parse_event(body, received_at=received_at or datetime.now(UTC))


async def open_outbox(tmp_path: Path, **options: Any) -> Outbox:
    outbox = await Outbox.open(StoreConfig(path=tmp_path / "state", **options))
    outbox.set_outputs(["a"])
    return outbox


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


def empty_the_index(database: Path, index: str) -> None:
    """Overwrite the root page of `index` with an empty leaf page: the index holds none of its
    table's rows, yet every page is still well-formed and in use, so quick_check passes."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)
        ).fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    with database.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        # A root of another kind has child pages, which quick_check would find unused after.
        assert handle.read(1) == b"\x0a", "the index must fit in its root page, a leaf"
        empty_leaf = bytearray(page_size)
        empty_leaf[0] = 0x0A  # a leaf page of an index b-tree, with no cells
        empty_leaf[5:7] = page_size.to_bytes(2, "big")  # where cell content starts: none
        handle.seek((root - 1) * page_size)
        handle.write(empty_leaf)
