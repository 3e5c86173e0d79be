"""Store commands (`store stats`, `store check`, `dead-letters ...`) beside a daemon that is putting
a copy of its deleted store back in place, or salvaging its damaged store: neither may pull the
store's files from under the other."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import shutil
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.cli import main
from forwarder.store import database as database_module
from forwarder.store.database import DB_NAME, Database
from tests.store.helpers import event, open_outbox
from tests.store.test_runtime_failures import (
    PATIENCE_SECS,
    Gate,
    damage_the_tail,
    forty_pages_reopened,
    held_copies,
    until,
    what_a_restart_finds,
)

DELETIONS = {
    "the WAL": lambda state: Path(f"{state / DB_NAME}-wal").unlink(),
    "the shared memory": lambda state: Path(f"{state / DB_NAME}-shm").unlink(),
    "the database": lambda state: (state / DB_NAME).unlink(),
    "the directory": shutil.rmtree,
}


def config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"store:\n  path: {tmp_path / 'state'}\noutputs:\n  - name: a\n    type: memory\n"
    )
    return str(path)


async def two_queued_one_dead(tmp_path: Path) -> Any:
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        assert await outbox.append(event(n)) is True
    first, *_ = await outbox.fetch("a", 10, 1 << 20)
    await outbox.dead_letter("a", {first.seq: "refused"})
    return outbox


def refusals(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a store command finds the lock taken and waits."""
    refused = threading.Event()
    flock = database_module.fcntl.flock

    def watched(handle: int, operation: int) -> None:
        try:
            flock(handle, operation)
        except BlockingIOError:
            if operation & database_module.fcntl.LOCK_SH:
                refused.set()
            raise

    monkeypatch.setattr(database_module.fcntl, "flock", watched)
    return refused


def open_and_replay(state: Path) -> tuple[Database, int]:
    """What `dead-letters replay` does, but leaving the store open a while longer."""
    command = Database(state, create=False)
    return command, command.replay(None, None)


@pytest.mark.parametrize("delete", DELETIONS.values(), ids=DELETIONS.keys())
async def test_a_command_that_opens_the_store_while_the_daemon_copies_it_back_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delete: Any
) -> None:
    """A replay that opened the copy just put in place, before the daemon had closed the
    deleted files: closing, SQLite deleted the WAL and shared memory at the path by name, which
    were the replay's by then (or the daemon set them aside as its own), and the daemon's new
    connection did not see what the replay wrote next. It said "replayed 1", and the event was
    lost with its dead letter; or the two failed each other with "disk I/O error"."""
    state = tmp_path / "state"
    outbox = await two_queued_one_dead(tmp_path)
    gate = Gate()
    take_place_of_path = Database.take_place_of_path

    def then_hold(self: Database, copy: Path) -> None:
        take_place_of_path(self, copy)
        gate.hold()  # the copy is in place; the deleted files are still open

    monkeypatch.setattr(Database, "take_place_of_path", then_hold)
    refused = refusals(monkeypatch)
    delete(state)
    probing = asyncio.ensure_future(outbox.probe())
    try:
        await gate.reached()
        replaying = asyncio.ensure_future(asyncio.to_thread(open_and_replay, state))
        await until(lambda: refused.is_set() or replaying.done(), "the replay to wait or run")
    finally:
        gate.opened.set()
    assert await probing is True
    command, replayed = await replaying
    try:
        assert replayed == 1
        assert len(await outbox.fetch("a", 10, 1 << 20)) == 3
        assert await outbox.append(event(3)) is True
        assert command.stats().events == 4
    finally:
        command.close()
    await outbox.aclose()
    stats = what_a_restart_finds(state, tmp_path / "restart")
    assert (stats.events, stats.dead_letters) == (4, {})


async def test_a_store_command_waits_for_the_copy_and_then_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    outbox = await two_queued_one_dead(tmp_path)
    gate = held_copies(monkeypatch)
    refused = refusals(monkeypatch)
    shutil.rmtree(state)
    probing = asyncio.ensure_future(outbox.probe())
    try:
        await gate.reached()
        replay = asyncio.ensure_future(
            asyncio.to_thread(main, ["dead-letters", "replay", "--all", "-c", config(tmp_path)])
        )
        await until(refused.is_set, "the replay to wait for the copy")
        assert not replay.done()
    finally:
        gate.opened.set()
    assert await probing is True
    assert await replay == 0
    assert "replayed 1" in capsys.readouterr().out.splitlines()  # after the daemon's log lines
    assert len(await outbox.fetch("a", 10, 1 << 20)) == 3
    await outbox.aclose()


@pytest.mark.parametrize("delete", DELETIONS.values(), ids=DELETIONS.keys())
async def test_the_daemon_copies_its_deleted_store_back_once_a_command_is_done(
    tmp_path: Path, delete: Any
) -> None:
    """A purge that had the store open before its files were deleted writes into those files;
    a copy taken meanwhile lacked what it wrote afterwards, and the purge was undone."""
    state = tmp_path / "state"
    outbox = await two_queued_one_dead(tmp_path)
    command = Database(state, create=False)
    delete(state)
    assert await outbox.probe() is False
    assert "a store command (store stats, store check, dead-letters) has the store open" in (
        outbox.last_error or ""
    )
    assert command.purge(None, None) == 1
    command.close()
    assert await outbox.probe() is True
    assert (await outbox.stats()).dead_letters == {}
    await outbox.aclose()
    stats = what_a_restart_finds(state, tmp_path / "restart")
    assert (stats.events, stats.dead_letters) == (2, {})


def test_a_command_gives_up_on_a_copy_or_salvage_that_does_not_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    daemon = Database(state)
    monkeypatch.setattr(database_module, "COMMAND_LOCK_WAIT_SECS", 0.0)
    held = daemon.lock_out_commands()
    try:
        with pytest.raises(TimeoutError) as waited:
            Database(state, create=False)
        # Either may be what it waits for: the copy of a deleted store, or a salvage.
        assert "'Store files were deleted while the daemon ran'" in str(waited.value)
        assert "'Store was corrupt'" in str(waited.value)
    finally:
        held.release()
        daemon.close()
    Database(state, create=False).close()
    assert sorted(os.listdir(state)) == [DB_NAME]


def restore_during_the_copy(state: Path) -> None:
    """An operator restores a backup at the path while the daemon copies its deleted store."""
    restored = Database(state.parent / "backup")
    restored.close()
    os.replace(state.parent / "backup" / DB_NAME, state / DB_NAME)


def disk_full(state: Path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


COPIES_THAT_FAIL = {
    "on a full disk": disk_full,
    "with a store restored at the path meanwhile": restore_during_the_copy,
}


@pytest.mark.parametrize("fail", COPIES_THAT_FAIL.values(), ids=COPIES_THAT_FAIL.keys())
async def test_a_copy_back_that_fails_lets_store_commands_in_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Any
) -> None:
    """The daemon locked the directory through a duplicate of the handle its old connection
    keeps, and let go by closing the duplicate: a lock goes only with the last handle on it, so
    while a copy that failed left that connection open (a full disk, retried at each probe; a
    store restored meanwhile, kept until a restart) every store command waited 60 s and failed
    with 'the daemon has been putting a new store file ... in place'."""
    state = tmp_path / "state"
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    copy_to = Database.copy_to

    def failing_copy(self: Database, target: Path) -> None:
        fail(state)
        copy_to(self, target)

    monkeypatch.setattr(Database, "copy_to", failing_copy)
    (state / DB_NAME).unlink()
    assert await outbox.probe() is False
    if not (state / DB_NAME).exists():
        restore_during_the_copy(state)  # a store for the command to open
    monkeypatch.setattr(database_module, "COMMAND_LOCK_WAIT_SECS", 0.0)
    Database(state, create=False).close()
    await outbox.aclose()


class PagerLeftOpen(io.StringIO):
    """A standard output nobody reads for now (`dead-letters show ... | less`, a page still on
    screen): a write from another thread than the test's (the command's) waits until `read`
    is set."""

    def __init__(self) -> None:
        super().__init__()
        self._test = threading.get_ident()
        self.writing = threading.Event()
        self.read = threading.Event()

    def write(self, text: str) -> int:
        if threading.get_ident() != self._test:
            self.writing.set()
            self.read.wait(PATIENCE_SECS)
        return super().write(text)


async def test_a_command_whose_output_waits_does_not_hold_the_copy_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead-letters command printed with the store open: piped to a pager that was left on
    its first page, it held the store, and with it the daemon's copy of its deleted store and
    every post (503), for as long as the pager stayed open."""
    state = tmp_path / "state"
    outbox = await two_queued_one_dead(tmp_path)
    [letter] = await outbox.dead_letters()
    pager = PagerLeftOpen()
    monkeypatch.setattr(sys, "stdout", pager)
    show = ["dead-letters", "show", "--id", str(letter.id), "-c", config(tmp_path)]
    showing = asyncio.ensure_future(asyncio.to_thread(main, show))
    try:
        await until(pager.writing.is_set, "the command to print")
        shutil.rmtree(state)
        assert await outbox.probe() is True, outbox.last_error
    finally:
        pager.read.set()
    assert await showing == 0
    assert "FTP Login Attempt" in pager.getvalue()
    await outbox.aclose()


async def test_the_daemon_salvages_its_damaged_store_once_a_command_is_done(
    tmp_path: Path,
) -> None:
    """A command that had the store open when the daemon found it damaged went on writing to
    the file the salvage moved aside, after the salvage had copied it: a purge or a replay was
    undone without a word. The salvage now waits for the command, as the copy back does."""
    state = tmp_path / "state"
    outbox = await forty_pages_reopened(tmp_path)
    command = Database(state, create=False)
    damage_the_tail(state / DB_NAME, pages=10)
    await outbox._with_db(lambda db: db._db.execute("PRAGMA shrink_memory"))
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        await outbox.fetch("a", 100, 1 << 30)

    assert await outbox.probe() is False
    assert (
        "a store command (store stats, store check, dead-letters) has the store open; the store "
        "is salvaged once it is done" in (outbox.last_error or "")
    )
    assert sorted(p.name for p in state.iterdir() if DB_NAME + "." in p.name) == []
    command.close()
    with structlog.testing.capture_logs() as logs:
        assert await outbox.probe() is True
    [salvaged] = [entry for entry in logs if entry["event"].startswith("Store was corrupt")]
    assert len(await outbox.fetch("a", 100, 1 << 30)) == salvaged["salvaged_events"] > 0
    await outbox.aclose()
