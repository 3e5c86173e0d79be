"""A damaged store and its salvage: an I/O error the integrity check reports as a result row, and
a salvage that a kill (SIGKILL, the watchdog, a power cut) stopped halfway."""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.store import database as database_module
from forwarder.store.database import (
    DB_NAME,
    Database,
    NewEvent,
    finish_cut_short_salvages,
    move_aside,
    replace_with_salvage,
)
from forwarder.store.outbox import StoreUnavailable
from tests.store.helpers import empty_the_index, event, open_outbox
from tests.store.test_runtime_failures import (
    STORE_ERROR,
    damage_the_tail,
    errors,
    read_fails_once,
)

CORRUPT = "Store was corrupt; moved it aside, started a fresh one and copied what was readable."
COMPLETED = "Store was corrupt and its salvage was cut short by a kill; completed it now"
REMOVED = "Removed an incomplete salvage of the store, cut short by a kill"

# What SQLite 3.40's PRAGMA quick_check returns (integrity_check walks the b-trees the same way),
# as a result row and not an error, when reading a b-tree's interior page fails with EIO (a
# failing disk): SQLITE_IOERR_CORRUPTFS, 8458. (EIO on a leaf page is raised instead, as
# "database disk image is malformed".) Seen with a pread() that an LD_PRELOAD shim failed for
# one page.
IO_ERROR_ROW = "*** in database main ***\nPage 2: unable to get the page. error code=8458"


class FailingReads:
    """Connections whose PRAGMA integrity_check of the file at `path` gives IO_ERROR_ROW, the next
    `times` checks of it, as on a disk that fails reads of that file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.times = 0
        failing = self

        class Connection(sqlite3.Connection):
            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                if sql.startswith("PRAGMA integrity_check") and failing.times > 0:
                    [(_, _, file)] = super().execute("PRAGMA database_list").fetchall()
                    if file == str(path):
                        failing.times -= 1
                        return super().execute("SELECT ?", (IO_ERROR_ROW,))
                return super().execute(sql, parameters)

        monkeypatch.setattr(
            sqlite3, "connect", functools.partial(sqlite3.connect, factory=Connection)
        )


def failed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next delivery read fails with an I/O error, once."""
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 266  # SQLITE_IOERR_READ, as SQLite sets it
    read_fails_once(monkeypatch, error)


def moved_aside(state: Path) -> list[str]:
    """The damaged databases moved aside (their journals beside them not counted)."""
    return sorted(
        p.name
        for p in state.iterdir()
        if ".corrupt-" in p.name and not p.name.endswith("-shm") and not p.name.endswith("-wal")
    )


# PRAGMA integrity_check reporting an I/O error as a row


async def test_an_io_error_the_check_reports_as_a_row_takes_the_damage_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "ok": the store is unhealthy, the next probe's check fails on the row, and the file
    is salvaged as damage, whatever SQLite reported it with."""
    state = tmp_path / "state"
    reads = FailingReads(monkeypatch, state / DB_NAME)
    outbox = await open_outbox(tmp_path)
    for n in range(5):
        assert await outbox.append(event(n)) is True
    failed_read(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await outbox.fetch("a", 10, 1 << 20)
        assert not outbox.healthy
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(5))
        reads.times = 1
        assert await outbox.probe() is True
    assert reads.times == 0
    assert len(errors(logs, STORE_ERROR)) == 1
    [salvaged] = [entry for entry in logs if entry["event"].startswith(CORRUPT)]
    assert "unable to get the page" in salvaged["error"]
    assert salvaged["salvaged_events"] == 5
    assert len(moved_aside(state)) == 1
    assert len(await outbox.fetch("a", 10, 1 << 20)) == 5
    await outbox.aclose()


async def test_a_salvage_that_fails_its_check_too_is_not_salvaged_again_at_every_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails every read of the file at the path: the salvage just made failed its
    check too, and each probe (every 5 s) moved it aside and salvaged it again, a full copy of
    the store each time on the failing disk, until it was full of moved files."""
    state = tmp_path / "state"
    reads = FailingReads(monkeypatch, state / DB_NAME)
    before = await open_outbox(tmp_path)
    for n in range(5):
        assert await before.append(event(n)) is True
    await before.aclose()
    reads.times = 1000
    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
        assert not outbox.healthy
        for _ in range(3):
            assert await outbox.probe() is False
    assert len([entry for entry in logs if entry["event"].startswith(CORRUPT)]) == 1
    assert len(moved_aside(state)) == 1
    assert "not salvaged again" in (outbox.last_error or "")
    with pytest.raises(StoreUnavailable):
        await outbox.append(event(5))

    reads.times = 0  # the disk reads again
    assert await outbox.probe() is True
    assert len(await outbox.fetch("a", 10, 1 << 20)) == 5
    await outbox.aclose()


# A salvage cut short by a kill


class Killed(BaseException):
    """The process dies here: nothing after it runs, no `except` or `finally` that would
    tidy up (a BaseException that the code under test lets through)."""


def damaged_store(state: Path) -> int:
    """A store of 40 events whose tail is damaged; how many of them a salvage gets back."""
    database = Database(state)
    database.append(
        [NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, b"x" * 3000) for n in range(40)], ["a"], 0
    )
    database.close()  # folds the WAL into the file
    damage_the_tail(state / DB_NAME, pages=10)
    scratch = state.parent / "scratch"
    try:
        return Database(scratch).salvage(state / DB_NAME, ["a"])[0]
    finally:
        shutil.rmtree(scratch)


def kill_at(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, when: Callable[..., bool]
) -> None:
    """Kill the process when `module.name` is called with arguments `when` accepts."""
    original = getattr(module, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, call)


def is_store(path: Path) -> Callable[..., bool]:
    return lambda source, target, *_: str(target) == str(path)


# Where the kill lands in `replace_with_salvage`, after the salvage is complete.
KILLS: dict[str, Callable[[pytest.MonkeyPatch, Path], None]] = {
    "before moving the damaged files aside": lambda patch, path: kill_at(
        patch, database_module, "_move_store_files", lambda *_: True
    ),
    "between moving them aside and the swap": lambda patch, path: kill_at(
        patch, database_module.os, "replace", is_store(path)
    ),
    "after the swap": lambda patch, path: kill_at(
        patch, database_module.shutil, "rmtree", lambda tree, **_: ".salvaged-" in str(tree)
    ),
}


@pytest.mark.parametrize("kill", KILLS.values(), ids=KILLS.keys())
async def test_the_next_open_completes_a_salvage_a_kill_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill: Callable[..., None]
) -> None:
    state = tmp_path / "state"
    path = state / DB_NAME
    readable = damaged_store(state)
    with monkeypatch.context() as patch:
        kill(patch, path)
        with pytest.raises(Killed):
            replace_with_salvage(path, ["a"], sync="full", now=time.time())

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    assert outbox.healthy
    [completed] = [entry for entry in logs if entry["event"].startswith(COMPLETED)]
    assert completed["log_level"] == "error"
    assert [entry for entry in logs if entry["event"].startswith(CORRUPT)] == []  # not redone
    assert len(await outbox.fetch("a", 100, 1 << 30)) == readable > 0
    [moved] = moved_aside(state)
    assert completed["moved_to"] == str(state / moved)
    assert [p.name for p in state.iterdir() if ".salvage" in p.name] == []
    await outbox.aclose()


async def test_journals_left_at_the_path_go_with_the_damaged_file_not_to_the_salvage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between renaming the damaged file and its WAL: left at the path, SQLite would
    read that WAL as the salvaged file's own."""
    state = tmp_path / "state"
    path = state / DB_NAME
    readable = damaged_store(state)
    Path(f"{path}-wal").write_bytes(b"the damaged file's WAL")
    with monkeypatch.context() as patch:
        kill_at(patch, Path, "rename", lambda source, target: str(target).endswith("-wal"))
        with pytest.raises(Killed):
            replace_with_salvage(path, ["a"], sync="full", now=time.time())
    assert not path.exists()

    outbox = await open_outbox(tmp_path)
    assert len(await outbox.fetch("a", 100, 1 << 30)) == readable
    [moved] = moved_aside(state)
    assert Path(f"{state / moved}-wal").read_bytes() == b"the damaged file's WAL"
    await outbox.aclose()


def left_by_an_earlier_version(state: Path) -> tuple[Path, int]:
    """A salvage as an earlier version left it when killed between moving the damaged file
    aside and putting the salvage in place; returns it and how many events it holds."""
    path = state / DB_NAME
    damaged_store(state)
    staging = path.with_name(f"{DB_NAME}.salvage-1")
    fresh = Database(staging)
    events, _ = fresh.salvage(path, ["a"])
    fresh.close()
    move_aside(path, time.time())  # ... and killed here
    return staging, events


async def test_a_salvage_an_earlier_version_left_after_moving_the_damaged_file_is_completed(
    tmp_path: Path,
) -> None:
    """Before this fix the salvage was built in `salvage-*`, the damaged file moved aside, then
    the salvage moved to the path. Killed in between, the next open made an empty store at the
    path and left the salvage there, the only copy of the events it held that anything would
    deliver; the next salvage deleted it."""
    state = tmp_path / "state"
    staging, events = left_by_an_earlier_version(state)

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    [completed] = [entry for entry in logs if entry["event"].startswith(COMPLETED)]
    assert completed["salvage"] == str(staging)
    assert len(await outbox.fetch("a", 100, 1 << 30)) == events > 0
    assert not staging.exists()
    await outbox.aclose()


def left_by_an_earlier_version_beside_a_newer_store(state: Path) -> tuple[Path, int]:
    """... then started again: it made an empty store at the path and took a post, and left
    the salvage where it was."""
    staging, events = left_by_an_earlier_version(state)
    newer = Database(state)
    newer.append([NewEvent("new", "fp-new", "incident", 2.0, b"{}")], ["a"], 0)
    newer.close()
    return staging, events


TAKEN_IN = "Found a salvage of the store that an earlier version, killed, left beside"


async def test_a_salvage_an_earlier_version_left_beside_a_newer_store_is_taken_in(
    tmp_path: Path,
) -> None:
    """Taken for a salvage cut short with the damaged file still at the path, it was removed,
    and with it the only copy of the events it held (answered 200 and never delivered)."""
    state = tmp_path / "state"
    staging, events = left_by_an_earlier_version_beside_a_newer_store(state)

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    [taken] = [entry for entry in logs if entry["event"].startswith(TAKEN_IN)]
    assert taken["log_level"] == "error" and taken["events"] == events > 0
    assert [entry for entry in logs if entry["event"].startswith(REMOVED)] == []
    queued = await outbox.fetch("a", 100, 1 << 30)
    assert len(queued) == events + 1
    assert len({stored.seq for stored in queued}) == len(queued)
    assert not staging.exists()
    await outbox.aclose()


async def test_a_salvage_taken_in_and_left_by_a_kill_is_not_taken_in_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    staging, events = left_by_an_earlier_version_beside_a_newer_store(state)
    with monkeypatch.context() as patch:
        kill_at(patch, database_module.shutil, "rmtree", lambda tree, **_: tree == staging)
        with pytest.raises(Killed):
            finish_cut_short_salvages(state / DB_NAME, time.time())
    assert staging.exists()

    outbox = await open_outbox(tmp_path)
    assert len(await outbox.fetch("a", 100, 1 << 30)) == events + 1
    assert not staging.exists()
    await outbox.aclose()


async def test_a_salvage_beside_the_file_it_was_made_from_adds_nothing(tmp_path: Path) -> None:
    """Killed once the salvage was complete but before it was renamed, with the file it was
    made from still at the path and passing its check now (a read error that has passed)."""
    state = tmp_path / "state"
    path = state / DB_NAME
    store = Database(state)
    store.append([NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, b"{}") for n in range(5)], ["a"], 0)
    store.close()
    staging = path.with_name(f"{DB_NAME}.salvage-1")
    fresh = Database(staging)
    assert fresh.salvage(path, ["a"])[0] == 5
    fresh.close()

    outbox = await open_outbox(tmp_path)
    assert len(await outbox.fetch("a", 100, 1 << 30)) == 5
    assert not staging.exists()
    await outbox.aclose()


async def test_an_incomplete_salvage_is_removed_with_a_warning_and_made_again(
    tmp_path: Path,
) -> None:
    """Killed while the salvage was being built: the damaged file is still at the path."""
    state = tmp_path / "state"
    path = state / DB_NAME
    readable = damaged_store(state)
    staging = path.with_name(f"{DB_NAME}.salvage-1")
    Database(staging).close()  # as far as it got

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    [removed] = [entry for entry in logs if entry["event"].startswith(REMOVED)]
    assert removed["log_level"] == "warning" and removed["removed"] == str(staging)
    [salvaged] = [entry for entry in logs if entry["event"].startswith(CORRUPT)]
    assert salvaged["salvaged_events"] == readable
    assert len(await outbox.fetch("a", 100, 1 << 30)) == readable
    assert [p.name for p in state.iterdir() if ".salvage" in p.name] == []
    await outbox.aclose()


async def test_an_index_that_lacks_rows_is_found_at_open_and_salvaged_with_every_event(
    tmp_path: Path,
) -> None:
    """Damage the quick check does not see: every page well-formed, but an index lacking rows
    of its table. The daemon used to start on it, and deliveries fetched through that index
    missed the events it lacked, for as long as the store lived."""
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        assert await outbox.append(event(n)) is True
    await outbox.aclose()
    state = tmp_path / "state"
    empty_the_index(state / DB_NAME, "deliveries_seq")

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    [salvaged] = [entry for entry in logs if entry["event"].startswith("Store was corrupt")]
    assert "row 1 missing from index deliveries_seq (and 3 more)" in salvaged["error"]
    assert salvaged["salvaged_events"] == 3
    assert len(moved_aside(state)) == 1
    assert [e.seq for e in await outbox.fetch("a", 10, 1 << 20)] == [1, 2, 3]
    await outbox.aclose()


async def test_a_salvage_a_kill_cut_short_is_completed_once_a_command_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completing it swaps the files at the path, as the salvage itself does: a command with
    the store open meanwhile would go on writing into the file moved aside."""
    state = tmp_path / "state"
    path = state / DB_NAME
    readable = damaged_store(state)
    with monkeypatch.context() as patch:
        KILLS["before moving the damaged files aside"](patch, path)
        with pytest.raises(Killed):
            replace_with_salvage(path, ["a"], sync="full", now=time.time())
    command = database_module._lock_shared(state)  # what a store command holds while it runs
    try:
        outbox = await open_outbox(tmp_path)
        assert not outbox.healthy
        assert "a store command" in (outbox.last_error or "")
        assert "a salvage is completed once it is done" in (outbox.last_error or "")
        assert [p.name for p in state.iterdir() if ".salvaged-" in p.name] != []
    finally:
        os.close(command)
    with structlog.testing.capture_logs() as logs:
        assert await outbox.probe() is True
    assert [entry for entry in logs if entry["event"].startswith(COMPLETED)] != []
    assert len(await outbox.fetch("a", 100, 1 << 30)) == readable > 0
    await outbox.aclose()
