"""The dedupe window's memory: looked up in memory, logged on disk in order of arrival, read back
when the store opens."""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.store import database as database_module
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


def test_a_failed_commit_reads_back_only_what_landed_not_the_whole_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed commit threw the memory away, and the next read 100,000 rows back inside
    its transaction: on a full disk under load, 60-120 ms per group."""
    loads: list[int] = []
    load = database_module._load_dedupe_memory

    def counted(db: sqlite3.Connection) -> DedupeMemory:
        loads.append(1)
        return load(db)

    monkeypatch.setattr(database_module, "_load_dedupe_memory", counted)
    with opened(tmp_path) as database:
        assert stored(database, 1, 1000.0)
        (pages,) = database._db.execute("PRAGMA page_count").fetchone()
        database._db.execute(f"PRAGMA max_page_count={pages}")  # a full disk
        big = NewEvent("big", fingerprint(2), "incident", 1001.0, b"x" * 100_000)
        for _ in range(3):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                database.append([big], ["a"], dedupe_window=WINDOW)
        database._db.execute("PRAGMA max_page_count=1073741823")
        assert stored(database, 2, 1002.0)  # the failed posts were never stored
        assert not stored(database, 1, 1003.0)
    assert len(loads) == 1


def test_a_commit_that_landed_before_it_failed_is_remembered(tmp_path: Path) -> None:
    """A commit may fail after SQLite made it durable (a check after it, an I/O error on the
    way back): the client retries, and its retry is the duplicate it is."""
    with opened(tmp_path) as database:
        assert stored(database, 1, 1000.0)
        check = database.check_in_place
        database.check_in_place = lambda: None  # type: ignore[method-assign]
        original = database._transaction

        @contextlib.contextmanager
        def fails_after_commit() -> Iterator[sqlite3.Connection]:
            with original() as db:
                yield db
            raise sqlite3.OperationalError("disk I/O error")

        database._transaction = fails_after_commit  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            stored(database, 2, 1001.0)
        database._transaction = original  # type: ignore[method-assign]
        database.check_in_place = check  # type: ignore[method-assign]
        assert not stored(database, 2, 1002.0)
        assert database.stats().events == 2


def test_no_flood_warning_after_a_clock_step_when_the_memory_is_not_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedupe_module, "DEDUPE_MEMORY_MAX", 3)
    with opened(tmp_path) as database, capture_logs() as logs:
        for n, at in enumerate((5000.0, 5001.0, 5002.0, 6000.0)):
            assert stored(database, n, at)  # drops the first for room, outside the window
        database.forget_outside(now=6000.0, dedupe_window=WINDOW)
        assert stored(database, 9, 1000.0)  # the wall clock was set back
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []


def test_after_a_clock_step_the_sweep_forgets_everything_outside_the_window(
    tmp_path: Path,
) -> None:
    with opened(tmp_path) as database:
        assert stored(database, 1, 2000.0)  # the clock was ahead
        assert stored(database, 2, 1000.0)  # ... and was set back
        database.forget_outside(now=1700.0, dedupe_window=WINDOW)  # 2 is 700 s old
        assert stored(database, 2, 1050.0)  # set back once more
        assert not stored(database, 1, 1700.0)
    with opened(tmp_path) as database:  # the log on disk holds the same
        assert not stored(database, 2, 1060.0)
        assert not stored(database, 1, 1700.0)


def _recent_append(recent: dict[str, float], events: list[NewEvent], window: float) -> list[bool]:
    """The dedupe of the table keyed by fingerprint this replaced, as a dict."""
    seen = dict(recent) if window > 0 else {}
    stored_now = []
    for event in events:
        last = seen.get(event.fingerprint)
        fresh = window <= 0 or last is None or abs(event.received_at - last) > window
        if fresh and window > 0:
            seen[event.fingerprint] = event.received_at
        stored_now.append(fresh)
    if window > 0:
        recent.clear()
        recent.update(seen)
    return stored_now


@pytest.mark.parametrize("seed", range(24, 48))
def test_answers_as_the_table_keyed_by_fingerprint_did(tmp_path: Path, seed: int) -> None:
    """Appends, sweeps, clock steps both ways, window changes and reopens at random: every
    post is stored or refused as before, and the memory always equals what an open reads."""
    rng = random.Random(seed)
    recent: dict[str, float] = {}
    now, window, number = 1_000_000.0, WINDOW, 0
    database = Database(tmp_path)
    try:
        for _ in range(300):
            step = rng.random()
            if step < 0.5:
                events = []
                for _ in range(rng.randint(1, 4)):
                    number += 1
                    name = f"fp{rng.randint(0, 6)}"
                    at = now + rng.random()
                    events.append(NewEvent(str(number), name, "incident", at, b"{}"))
                got = [seq is not None for seq in database.append(events, ["a"], window)]
                assert got == _recent_append(recent, events, window)
            elif step < 0.7:
                now += rng.choice([1, 30, 61, 300, 599, 601, 1200])
            elif step < 0.78:
                now += rng.choice([-86_400, -3600, -700, -100, 700, 3600, 86_400])
            elif step < 0.9:
                database.forget_outside(now, window)
                for name in [n for n, at in recent.items() if abs(at - now) > window]:
                    del recent[name]
            elif step < 0.95:
                window = rng.choice([0.0, 60.0, 600.0, 3600.0])
            else:
                database.close()
                database = Database(tmp_path)
            if database._dedupe is not None:
                with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as reader:
                    reader.execute("BEGIN IMMEDIATE")
                    read_back = database_module._load_dedupe_memory(reader)
                    reader.rollback()
                memory = database._dedupe
                names = [f"fp{n}" for n in range(7)]
                assert [memory.last_seen(n) for n in names] == [
                    read_back.last_seen(n) for n in names
                ]
    finally:
        database.close()
