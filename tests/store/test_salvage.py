"""A damaged store and its salvage: a salvage that a kill (SIGKILL, the watchdog, a power cut)
stopped halfway."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.store import database as database_module
from forwarder.store.database import DB_NAME, Database, NewEvent, move_aside, replace_with_salvage
from tests.store.helpers import open_outbox
from tests.store.test_runtime_failures import damage_the_tail

CORRUPT = "Store was corrupt; moved it aside, started a fresh one and copied what was readable."
COMPLETED = "Store was corrupt and its salvage was cut short by a kill; completed it now"
REMOVED = "Removed an incomplete salvage of the store, cut short by a kill"


def moved_aside(state: Path) -> list[str]:
    """The damaged databases moved aside (their journals beside them not counted)."""
    return sorted(
        p.name
        for p in state.iterdir()
        if ".corrupt-" in p.name and not p.name.endswith("-shm") and not p.name.endswith("-wal")
    )


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


async def test_a_salvage_an_earlier_version_left_after_moving_the_damaged_file_is_completed(
    tmp_path: Path,
) -> None:
    """Before this fix the salvage was built in `salvage-*`, the damaged file moved aside, then
    the salvage moved to the path. Killed in between, the next open made an empty store at the
    path and left the salvage there, the only copy of the events it held that anything would
    deliver; the next salvage deleted it."""
    state = tmp_path / "state"
    path = state / DB_NAME
    damaged_store(state)
    staging = path.with_name(f"{DB_NAME}.salvage-1")
    fresh = Database(staging)
    events, _ = fresh.salvage(path, ["a"])
    fresh.close()
    move_aside(path, time.time())  # ... and killed here

    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    [completed] = [entry for entry in logs if entry["event"].startswith(COMPLETED)]
    assert completed["salvage"] == str(staging)
    assert len(await outbox.fetch("a", 100, 1 << 30)) == events > 0
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
