"""`dead-letters replay` and `purge` against what a live store may do: hold its write lock, or
have no room for what a replay would queue."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.store import database as database_module
from forwarder.store.database import DB_NAME, Database, NewEvent
from tests.cli.test_commands import (
    dead_letter_stats,
    file_config,
    run_cli,
    seed_dead_letters,
    write_config,
)

MIB = 1024 * 1024  # the smallest store.max_bytes a configuration may set
LETTER_BYTES = len(b'{"n": 1}')  # each of the three seeded dead letters


def bounded_config(tmp_path: Path) -> str:
    """A file output `local` and a store bounded at one MiB, in tmp_path/state."""
    return str(
        write_config(
            tmp_path,
            f"store:\n  path: {tmp_path / 'state'}\n  max_bytes: {MIB}\n"
            f"outputs:\n  - name: local\n    type: file\n    path: {tmp_path / 'local.jsonl'}\n",
        )
    )


def queue_bytes(tmp_path: Path, size: int) -> None:
    database = Database(tmp_path / "state")
    try:
        database.append([NewEvent("big", "fp-big", "incident", 1.0, b"x" * size)], ["local"], 0)
    finally:
        database.close()


def test_replay_refuses_to_take_the_store_past_its_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = bounded_config(tmp_path)
    seed_dead_letters(tmp_path)  # ids 1 to 3
    queued = MIB - 2 * LETTER_BYTES  # room for two dead letters, not for three
    queue_bytes(tmp_path, queued)
    code, out, err = run_cli(capsys, "dead-letters", "replay", "-c", config, "--all")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"nothing replayed: the store holds {queued} bytes of queued events and the selected"
        f" dead letters {3 * LETTER_BYTES}, together more than store.max_bytes ({MIB})"
    )
    assert "--id" in err
    assert "drain" in err
    assert dead_letter_stats(tmp_path) == ({"local": 1}, {"local": 3})
    # What the message advises: fewer at a time.
    replay_two = ["dead-letters", "replay", "-c", config, "--id", "1", "--id", "2"]
    assert run_cli(capsys, *replay_two) == (0, "replayed 2\n", "")
    assert dead_letter_stats(tmp_path) == ({"local": 3}, {"local": 1})


@pytest.fixture
def store_write_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Three dead letters in tmp_path/state, and another connection holding the store's write
    lock (a sqlite3 shell inside a write transaction) until the test ends. The commands wait
    50 ms for it instead of 5 s."""
    seed_dead_letters(tmp_path)
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.close()  # rolls the empty transaction back, releasing the lock


@pytest.mark.usefixtures("store_write_locked")
@pytest.mark.parametrize(("action", "done"), [("replay", "replayed"), ("purge", "purged")])
def test_a_store_locked_by_another_process_ends_the_command_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, done: str
) -> None:
    config = str(file_config(tmp_path))
    code, out, err = run_cli(capsys, "dead-letters", action, "-c", config, "--all")
    assert (code, out) == (1, "")
    assert err == (
        f"nothing {done}: the store failed (database is locked) before the transaction"
        " committed; it is safe to run the command again\n"
    )
    assert dead_letter_stats(tmp_path) == ({}, {"local": 3})
