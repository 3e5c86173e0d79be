"""The dedupe window's memory: looked up in memory, logged on disk in order of arrival, read back
when the store opens."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.store import dedupe as dedupe_module
from forwarder.store.database import DB_NAME, Database, NewEvent
from forwarder.store.dedupe import DedupeMemory
from tests.store.helpers import table_rows

WINDOW = 600.0


def fingerprint(n: int) -> str:
    """As real ones are: hashes, spread over the whole key space."""
    return hashlib.sha256(b"%d" % n).hexdigest()


def new_event(n: int, received_at: float) -> NewEvent:
    return NewEvent(
        event_id=f"id{n}",
        fingerprint=fingerprint(n),
        kind="incident",
        received_at=received_at,
        body=b'{"n": %d}' % n,
    )


@contextlib.contextmanager
def opened(state: Path) -> Iterator[Database]:
    database = Database(state)
    try:
        yield database
    finally:
        database.close()


def stored(database: Database, n: int, at: float) -> bool:
    [seq] = database.append([new_event(n, at)], ["a"], dedupe_window=WINDOW)
    return seq is not None


# The memory itself


def test_the_memory_answers_with_the_latest_time_of_a_fingerprint() -> None:
    memory = DedupeMemory()
    memory.add("a", 10.0)
    memory.add("a", 700.0)
    assert memory.last_seen("a") == 700.0
    assert memory.last_seen("b") is None
    assert memory.newest_seen_at == 700.0


def test_a_full_memory_drops_its_oldest_fingerprint_and_says_when_that_was_stored() -> None:
    memory = DedupeMemory(limit=2)
    for at, name in enumerate("abc", start=1):
        memory.add(name, float(at))
    assert len(memory) == 2
    assert memory.last_seen("a") is None
    assert memory.last_seen("c") == 3.0
    assert memory.dropped_at == 1.0


def test_dropping_an_old_entry_keeps_the_same_fingerprint_stored_again_since() -> None:
    memory = DedupeMemory(limit=2)
    memory.add("a", 1.0)
    memory.add("a", 900.0)
    memory.add("b", 901.0)  # drops the first "a"
    assert memory.last_seen("a") == 900.0


def test_forgetting_drops_fingerprints_too_old_or_ahead_of_the_clock_from_the_front() -> None:
    memory = DedupeMemory()
    memory.add("old", 100.0)
    memory.add("ahead", 5000.0)  # stored before the wall clock was set back
    memory.add("recent", 950.0)
    memory.forget_outside(now=1000.0, window=WINDOW)
    assert [memory.last_seen(name) for name in ("old", "ahead", "recent")] == [None, None, 950.0]
    assert len(memory) == 1
    assert memory.dropped_at is None  # dropped for age, not for room


def test_an_empty_memory_has_no_newest_time() -> None:
    assert DedupeMemory().newest_seen_at is None


# The memory in the store


def test_the_window_holds_across_a_reopen(tmp_path: Path) -> None:
    with opened(tmp_path) as database:
        assert stored(database, 1, 1000.0)
    with opened(tmp_path) as database:
        assert not stored(database, 1, 1030.0)
        assert stored(database, 1, 1700.0)
        assert stored(database, 2, 1701.0)
    with opened(tmp_path) as database:
        assert not stored(database, 1, 1702.0)
        assert not stored(database, 2, 1702.0)


def test_a_store_of_an_earlier_version_opens_and_keeps_its_fingerprints(tmp_path: Path) -> None:
    """Earlier versions kept fingerprints in `recent`, keyed by fingerprint, and had no `seen`."""
    with opened(tmp_path) as database:
        assert stored(database, 1, 1000.0)
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as earlier:
        earlier.execute("DROP TABLE seen")
        earlier.executemany(
            "INSERT INTO recent (fingerprint, seen_at) VALUES (?, ?)",
            [(fingerprint(2), 1020.0), (fingerprint(3), 1010.0)],
        )
        earlier.commit()
    with opened(tmp_path) as database:
        assert not stored(database, 2, 1030.0)
        assert not stored(database, 3, 1030.0)
        assert stored(database, 4, 1030.0)
    assert table_rows(tmp_path / DB_NAME, "SELECT count(*) FROM recent") == [(0,)]
    assert table_rows(tmp_path / DB_NAME, "SELECT fingerprint FROM seen ORDER BY id") == [
        (fingerprint(3),),  # in the order they were stored
        (fingerprint(2),),
        (fingerprint(4),),
    ]


def test_a_failed_commit_leaves_no_fingerprint_behind(tmp_path: Path) -> None:
    """Remembered from a commit that failed, the client's retry of the post (it got a 503)
    would be answered as a duplicate of an event that was never stored: lost."""
    with opened(tmp_path) as database:
        database._db.execute(
            "CREATE TRIGGER fail_the_commit BEFORE INSERT ON seen"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="disk I/O error"):
            stored(database, 1, 1000.0)
        database._db.execute("DROP TRIGGER fail_the_commit")
        assert stored(database, 1, 1001.0)
        assert database.stats().events == 1


def test_forgetting_empties_the_log_on_disk(tmp_path: Path) -> None:
    with opened(tmp_path) as database:
        for n in range(3):
            assert stored(database, n, 1000.0 + n)
        database.forget_outside(now=2000.0, dedupe_window=WINDOW)
        assert table_rows(tmp_path / DB_NAME, "SELECT count(*) FROM seen") == [(0,)]
        assert stored(database, 1, 2001.0)
    with opened(tmp_path) as database:
        assert not stored(database, 1, 2002.0)
        assert stored(database, 2, 2002.0)


def test_a_commit_adds_its_fingerprints_at_the_end_of_the_log(tmp_path: Path) -> None:
    """A table keyed by fingerprint rewrote about one page per event once it was large."""
    with opened(tmp_path) as database:
        database.append([new_event(n, 1000.0) for n in range(20_000)], ["a"], dedupe_window=WINDOW)
        database._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        group = [new_event(n, 1001.0) for n in range(20_000, 20_050)]
        assert all(seq is not None for seq in database.append(group, ["a"], WINDOW))
        (page_size,) = database._db.execute("PRAGMA page_size").fetchone()
        pages = (tmp_path / f"{DB_NAME}-wal").stat().st_size // page_size
    assert pages < 25, f"{pages} pages written for a group of 50"


def test_a_flood_past_the_memory_shortens_the_window_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedupe_module, "DEDUPE_MEMORY_MAX", 3)
    with opened(tmp_path) as database, capture_logs() as logs:
        for n in range(5):
            assert stored(database, n, 1000.0 + n)
        assert stored(database, 0, 1010.0)  # forgotten for room, within the window
        assert not stored(database, 4, 1010.0)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == [
        "Dedupe memory is full; the window is shorter until the flood of posts ends."
    ]
    assert warnings[0]["remembered"] == 3
    assert warnings[0]["window_secs"] == WINDOW


def test_the_log_on_disk_keeps_no_more_than_the_memory_can_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedupe_module, "DEDUPE_MEMORY_MAX", 3)
    with opened(tmp_path) as database:
        for n in range(5):
            assert stored(database, n, 1000.0 + n)
        database.forget_outside(now=1010.0, dedupe_window=WINDOW)
        rows = table_rows(tmp_path / DB_NAME, "SELECT fingerprint FROM seen ORDER BY id")
    assert rows == [(fingerprint(n),) for n in (2, 3, 4)]
