"""`Database.check_in_place` trusts an unchanged state directory, and nothing more.

Before and after each commit the store makes sure its path still names the files it has open
(see tests/store/test_runtime_failures.py for what follows when it does not). Once the state
directory has settled, one stat of the directory stands for the three stats of the files; these
tests show that every way of moving the files away still changes what that stat reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.store import database as database_module
from forwarder.store import outbox as outbox_module
from forwarder.store.database import DB_NAME, Database, StoreDisplaced
from tests.store.helpers import event, open_outbox

FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    opened = Database(tmp_path / "state")
    yield opened
    opened.close()


def _stats_of_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every later stat of one of the store's files, by name."""
    seen: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, (str, Path)) and Path(path).name in FILES:
            seen.append(Path(path).name)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    return seen


def _pretend_settled(database: Database, monkeypatch: pytest.MonkeyPatch) -> int:
    """Let the directory's last change be long past, as it is a few seconds after the daemon
    starts; returns that change's stamp."""
    changed_at = os.stat(database.path.parent).st_ctime_ns
    monkeypatch.setattr(
        database_module,
        "_wall_clock_ns",
        lambda: changed_at + database_module._DIRECTORY_SETTLED_NS + 1,
    )
    return changed_at


def _settle(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the directory settled and check once: its stamp is then trusted. Then wait until
    the kernel's clock has moved on from that stamp, so that the test's own change gets a later
    one (the kernel stamps changes from a clock that ticks every few milliseconds)."""
    changed_at = _pretend_settled(database, monkeypatch)
    database.check_in_place()
    assert database._settled_directory is not None
    while time.time_ns() < changed_at + 50_000_000:  # at most 50 ms: a condition, not a pause
        os.sched_yield()


def test_an_unchanged_settled_directory_spares_the_stats_of_the_files(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(database, monkeypatch)
    stats = _stats_of_files(monkeypatch)
    for _ in range(3):
        database.check_in_place()
    assert stats == []


def test_a_directory_that_changed_lately_is_not_trusted(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = _stats_of_files(monkeypatch)
    database.check_in_place()
    database.check_in_place()
    assert stats == [*FILES, *FILES]


def test_a_change_beside_the_store_has_the_files_looked_at_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(database, monkeypatch)
    (database.path.parent / "notes.txt").write_text("an operator's file")
    stats = _stats_of_files(monkeypatch)
    database.check_in_place()  # in place all the same
    assert stats == list(FILES)


def _delete(state: Path, name: str) -> None:
    (state / name).unlink()


def _replace(state: Path, name: str) -> None:
    other = state.parent / "other"
    other.write_bytes((state / name).read_bytes())
    os.replace(other, state / name)


def _move_directory(state: Path, name: str) -> None:
    state.rename(state.parent / "state.old")
    state.mkdir()
    (state.parent / "state.old" / name).rename(state / name)


def _remove_directory(state: Path, name: str) -> None:
    shutil.rmtree(state)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("displace", [_delete, _replace, _move_directory, _remove_directory])
def test_a_file_moved_away_is_noticed_in_a_settled_directory(
    database: Database, monkeypatch: pytest.MonkeyPatch, name: str, displace: object
) -> None:
    _settle(database, monkeypatch)
    assert callable(displace)
    displace(database.path.parent, name)
    with pytest.raises(StoreDisplaced):
        database.check_in_place()


def test_a_store_reached_through_a_symbolic_link_has_its_files_looked_at_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its file lives in another directory, whose changes the state directory does not show."""
    elsewhere = Database(tmp_path / "elsewhere")
    elsewhere.close()
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).symlink_to(tmp_path / "elsewhere" / DB_NAME)
    database = Database(state)
    try:
        _pretend_settled(database, monkeypatch)
        database.check_in_place()
        assert database._settled_directory is None
        stats = _stats_of_files(monkeypatch)
        database.check_in_place()
        assert DB_NAME in stats
    finally:
        database.close()


def test_a_name_made_a_symbolic_link_after_the_open_has_the_files_looked_at_every_time(
    tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database moved to another disk and linked back: the same file, so in place, but its
    deletion there would change only the other directory."""
    elsewhere = tmp_path / "disk2"
    elsewhere.mkdir()
    moved = elsewhere / DB_NAME
    database.path.rename(moved)
    database.path.symlink_to(moved)
    _pretend_settled(database, monkeypatch)
    database.check_in_place()
    assert database._settled_directory is None
    moved.unlink()
    with pytest.raises(StoreDisplaced, match="deleted"):
        database.check_in_place()


def test_a_stamp_is_trusted_only_if_it_was_settled_before_the_files_were_looked_at(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change while the files are looked at can get the same stamp as the one before it (the
    same tick); if the check then stalled past the settling time (a paused container), that
    stamp must not be trusted: it was not settled when the files were found in place."""
    state = database.path.parent
    unchanged = database_module._directory_stamp(state)
    assert unchanged is not None
    clock = [unchanged[2] + 1]  # the directory changed a moment ago
    monkeypatch.setattr(database_module, "_wall_clock_ns", lambda: clock[0])
    monkeypatch.setattr(database_module, "_directory_stamp", lambda directory: unchanged)
    look_at_files = database._check_files_in_place

    def wal_deleted_in_the_same_tick_then_a_stall() -> None:
        look_at_files()
        Path(f"{database.path}-wal").unlink()
        clock[0] += database_module._DIRECTORY_SETTLED_NS + 1

    monkeypatch.setattr(
        database, "_check_files_in_place", wal_deleted_in_the_same_tick_then_a_stall
    )
    database.check_in_place()
    monkeypatch.setattr(database, "_check_files_in_place", look_at_files)
    with pytest.raises(StoreDisplaced, match="-wal was deleted"):
        database.check_in_place()


def test_a_wall_clock_step_has_the_files_looked_at_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settle(database, monkeypatch)
    armed_at = database_module._wall_clock_ns()
    monkeypatch.setattr(database_module, "_wall_clock_ns", lambda: armed_at - 2_000_000_000)
    stats = _stats_of_files(monkeypatch)
    database.check_in_place()
    assert stats == list(FILES)


def test_a_full_check_looks_at_the_files_whatever_the_directory_shows(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount over one of the files leaves the directory as it was."""
    _settle(database, monkeypatch)
    armed = database._settled_directory
    assert armed is not None
    monkeypatch.setattr(database_module, "_directory_stamp", lambda directory: armed[0])
    database.path.unlink()  # stands for a mount: the directory's stamp is kept as it was
    database.check_in_place()  # the shortcut trusts the directory
    with pytest.raises(StoreDisplaced, match="deleted"):
        database.check_in_place(full=True)


async def test_an_idle_store_looks_at_its_files_whatever_the_directory_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer's tick checks all three files, so what the directory cannot show is
    noticed within a tick even with the shortcut trusted."""
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_SECS", 0.001)
    monkeypatch.setattr(database_module, "_wall_clock_ns", lambda: 1 << 62)
    monkeypatch.setattr(database_module, "_directory_stamp", lambda directory: (1, 1, 0))
    outbox = await open_outbox(tmp_path)
    try:
        assert await outbox.append(event(1)) is True  # its checks trust the directory
        (tmp_path / "state" / DB_NAME).unlink()
        async with asyncio.timeout(10):
            while outbox.healthy:
                await asyncio.sleep(0.005)
        assert "deleted" in (outbox.last_error or "")
    finally:
        await outbox.aclose()
