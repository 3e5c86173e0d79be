from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forwarder.store import database as database_module
from forwarder.store.database import (
    DB_NAME,
    Checkpointer,
    Database,
    NewEvent,
    ReplayOverBound,
    StoreCorrupt,
    move_aside,
)
from tests.store.helpers import table_rows, write_foreign_store


def new_event(n: int, received_at: float = 1000.0, body: bytes | None = None) -> NewEvent:
    return NewEvent(
        event_id=f"id{n}",
        fingerprint=f"fp{n}",
        kind="incident",
        received_at=received_at,
        body=body if body is not None else b'{"n": %d}' % n,
    )


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path)
    yield database  # type: ignore[misc]
    database.close()


def test_append_queues_for_every_output(db: Database) -> None:
    seqs = db.append([new_event(1), new_event(2)], ["a", "b"], dedupe_window=0)
    assert all(seq is not None for seq in seqs)
    assert db.stats().queued == {"a": 2, "b": 2}
    assert [e.body for e in db.fetch("a", 10, 10_000)] == [b'{"n": 1}', b'{"n": 2}']


def test_event_leaves_only_when_every_output_is_done(db: Database) -> None:
    [seq] = db.append([new_event(1)], ["a", "b"], dedupe_window=0)
    assert seq is not None
    assert db.ack("a", [seq]) == (0, 0)
    assert db.stats().events == 1
    assert db.ack("b", [seq]) == (1, len(b'{"n": 1}'))
    assert db.stats().events == 0


def test_duplicate_within_window_is_stored_once(db: Database) -> None:
    first = db.append([new_event(1, received_at=1000.0)], ["a"], dedupe_window=60)
    again = db.append([new_event(1, received_at=1030.0)], ["a"], dedupe_window=60)
    later = db.append([new_event(1, received_at=1100.0)], ["a"], dedupe_window=60)
    assert first[0] is not None and again == [None] and later[0] is not None
    assert db.stats().queued == {"a": 2}


def test_seq_is_never_reused_after_the_table_empties(db: Database) -> None:
    [first] = db.append([new_event(1)], ["a"], dedupe_window=0)
    assert first is not None
    db.ack("a", [first])
    assert db.stats().events == 0
    [second] = db.append([new_event(2)], ["a"], dedupe_window=0)
    assert second is not None and second > first


def test_a_group_larger_than_one_insert_keeps_order_and_every_delivery(db: Database) -> None:
    events = [new_event(n) for n in range(1234)]
    seqs = db.append(events, ["a", "b"], dedupe_window=600)
    assert seqs == list(range(seqs[0] or 0, (seqs[0] or 0) + 1234))
    assert db.stats().queued == {"a": 1234, "b": 1234}
    fetched = db.fetch("b", 2000, 10**9)
    assert [e.event_id for e in fetched] == [e.event_id for e in events]
    assert db.append([new_event(1233, received_at=1001.0)], ["a"], dedupe_window=600) == [None]


def test_duplicates_inside_one_group_commit(db: Database) -> None:
    seqs = db.append([new_event(1), new_event(1)], ["a"], dedupe_window=60)
    assert seqs[0] is not None and seqs[1] is None


def test_fetch_respects_limit_and_bytes(db: Database) -> None:
    db.append([new_event(n, body=b"x" * 100) for n in range(10)], ["a"], dedupe_window=0)
    assert len(db.fetch("a", 3, 10_000)) == 3
    assert len(db.fetch("a", 10, 250)) == 2
    # One event bigger than the byte bound still goes alone, or it would never go.
    assert len(db.fetch("a", 10, 10)) == 1


def test_fetch_leaves_out_the_send_in_flight(db: Database) -> None:
    seqs = db.append([new_event(n, body=b"x" * 100) for n in range(6)], ["a"], dedupe_window=0)
    in_flight = {seq for seq in seqs[:3] if seq is not None}
    assert [e.seq for e in db.fetch("a", 2, 10_000, exclude=in_flight)] == seqs[3:5]
    # Only the rows it returns count against the byte bound.
    assert len(db.fetch("a", 10, 250, exclude=in_flight)) == 2


def test_dead_letter_replay_and_purge(db: Database) -> None:
    seqs = db.append([new_event(1), new_event(2)], ["a", "b"], dedupe_window=0)
    db.retry_later("a", [s for s in seqs if s is not None])
    db.dead_letter("a", {seqs[0]: "refused: bad field"}, now=2000.0)  # type: ignore[dict-item]
    [letter] = db.dead_letters()
    assert (letter.output, letter.event_id, letter.reason, letter.attempts) == (
        "a",
        "id1",
        "refused: bad field",
        1,
    )
    assert db.dead_letter_body(letter.id) == b'{"n": 1}'
    assert db.stats().queued == {"a": 1, "b": 2}
    assert db.replay(None, "a") == 1
    assert db.stats().queued == {"a": 2, "b": 2}
    assert db.dead_letters() == []
    db.dead_letter("b", {seqs[1]: "nope"}, now=2000.0)  # type: ignore[dict-item]
    assert db.purge([999], None) == 0
    assert db.purge(None, "b") == 1
    assert db.stats().dead_letters == {}


def test_dead_letter_survives_the_event_row(db: Database) -> None:
    [seq] = db.append([new_event(1)], ["a"], dedupe_window=0)
    assert seq is not None
    db.dead_letter("a", {seq: "gone"}, now=1.0)
    assert db.stats().events == 0
    assert db.replay(None, None) == 1
    assert [e.body for e in db.fetch("a", 10, 10_000)] == [b'{"n": 1}']


def before_each_transaction(
    monkeypatch: pytest.MonkeyPatch, db: Database, meanwhile: Callable[[], object]
) -> None:
    """Run `meanwhile` (another connection's command) right before every write transaction
    of `db` begins: what a command that read before its transaction would miss."""
    begin = db._transaction

    @contextlib.contextmanager
    def after_meanwhile() -> Iterator[sqlite3.Connection]:
        meanwhile()
        with begin() as connection:
            yield connection

    monkeypatch.setattr(db, "_transaction", after_meanwhile)


@pytest.mark.parametrize("action", ["replay", "purge"])
def test_replay_and_purge_count_only_what_another_command_left_them(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    seqs = db.append([new_event(1), new_event(2)], ["a"], dedupe_window=0)
    db.dead_letter("a", {seq: "refused" for seq in seqs if seq is not None}, now=1.0)
    first, second = (letter.id for letter in db.dead_letters())
    other = Database(tmp_path)
    try:
        before_each_transaction(monkeypatch, db, lambda: other.purge([second], None))
        assert getattr(db, action)([first, second], None) == 1
    finally:
        other.close()
    assert db.dead_letters() == []
    assert db.stats().queued == ({"a": 1} if action == "replay" else {})


def dead_letters_of(db: Database, *numbers: int) -> None:
    """Dead letters of output "a" with event ids id`n` and bodies of 8 bytes each."""
    seqs = db.append([new_event(n) for n in numbers], ["a"], dedupe_window=0)
    db.dead_letter("a", {seq: "refused" for seq in seqs if seq is not None}, now=1.0)


def test_replay_refuses_a_selection_the_store_bound_cannot_take(db: Database) -> None:
    dead_letters_of(db, 1, 2)  # 8 bytes each
    db.append([new_event(3, body=b"x" * 100)], ["a"], dedupe_window=0)
    with pytest.raises(ReplayOverBound) as refused:
        db.replay(None, None, max_bytes=115)
    assert (refused.value.queued, refused.value.selected, refused.value.bound) == (100, 16, 115)
    assert len(db.dead_letters()) == 2
    assert db.stats().events == 1
    # Exactly at the bound is within it, as for a post.
    assert db.replay(None, None, max_bytes=116) == 2


def test_replay_bound_counts_a_post_committed_just_before_its_transaction(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_letters_of(db, 1)
    other = Database(tmp_path)
    try:
        post = new_event(2, body=b"x" * 100)
        before_each_transaction(monkeypatch, db, lambda: other.append([post], ["a"], 0))
        with pytest.raises(ReplayOverBound):
            db.replay(None, None, max_bytes=107)
    finally:
        other.close()
    assert (db.stats().events, len(db.dead_letters())) == (1, 1)


def test_a_replayed_event_is_received_at_the_replay_time(db: Database) -> None:
    """The known limit docs/reliability.md describes: the first receipt time is not kept, so
    that a restart, which ages the queue from `received_at`, cannot expire the event at once."""
    dead_letters_of(db, 1)  # received at 1000.0
    before = time.time()
    assert db.replay(None, None) == 1
    [event] = db.fetch("a", 10, 10_000)
    assert before <= event.received_at <= time.time()


def test_expired_finds_old_deliveries(db: Database) -> None:
    db.append([new_event(1, received_at=10.0), new_event(2, received_at=500.0)], ["a"], 0)
    assert list(db.expired(cutoff=100.0)) == ["a"]
    assert len(db.expired(cutoff=100.0)["a"]) == 1


def test_quarantine_is_bounded_by_count_and_bytes(db: Database) -> None:
    for n in range(5):
        db.quarantine(b"x" * 10 + bytes([48 + n]), "bad", "127.0.0.1", 1.0, 3, 1000)
    kept = db.quarantined()
    assert [body[-1:] for _, _, _, _, body in kept] == [b"2", b"3", b"4"]
    db.quarantine(b"y" * 500, "bad", "127.0.0.1", 1.0, 3, 600)
    assert sum(len(body) for *_, body in db.quarantined()) <= 600
    # Larger than the whole quarantine: its head is kept, and the reason says how much.
    db.quarantine(b"z" * 700, "bad", "127.0.0.1", 1.0, 3, 600)
    [(_, _, reason, _, body)] = db.quarantined()
    assert (reason, body) == ("bad; kept the first 600 of 700 bytes", b"z" * 600)


def test_data_survives_reopen(tmp_path: Path) -> None:
    first = Database(tmp_path)
    first.append([new_event(1)], ["a"], dedupe_window=0)
    first.close()
    second = Database(tmp_path)
    assert second.stats().queued == {"a": 1}
    second.close()


def test_corrupt_file_is_detected_and_moved_aside(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        Database(tmp_path)
    moved = move_aside(tmp_path / DB_NAME, now=0.0)
    assert moved.exists() and moved.name == f"{DB_NAME}.corrupt-19700101T000000Z"
    fresh = Database(tmp_path)
    assert fresh.stats().events == 0
    fresh.close()


def test_a_second_move_aside_in_the_same_second_keeps_the_first(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    path.write_bytes(b"first")
    Path(f"{path}-wal").write_bytes(b"first wal")
    first = move_aside(path, now=0.0)
    path.write_bytes(b"second")
    second = move_aside(path, now=0.0)
    assert first != second
    assert first.read_bytes() == b"first"
    assert Path(f"{first}-wal").read_bytes() == b"first wal"
    assert second.read_bytes() == b"second"
    assert second.name == f"{DB_NAME}.corrupt-19700101T000000Z-2"


@pytest.mark.parametrize(
    ("statements", "why"),
    [
        (["CREATE TABLE events (x)"], "table events lacks columns seq, event_id"),
        (["CREATE TABLE notes (text)"], "missing tables events, deliveries"),
        (
            [
                "CREATE TABLE events (seq TEXT, event_id, fingerprint, kind, received_at, size,"
                " body)"
            ],
            "column events.seq is TEXT, expected INTEGER PRIMARY KEY",
        ),
    ],
    ids=["other-columns", "other-tables", "other-types"],
)
def test_foreign_schema_is_refused_and_left_as_it_was(
    tmp_path: Path, statements: list[str], why: str
) -> None:
    write_foreign_store(tmp_path / DB_NAME, *statements)
    with pytest.raises(StoreCorrupt, match="not an outbox this version can use") as refused:
        Database(tmp_path)
    assert why in str(refused.value)
    tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    assert len(table_rows(tmp_path / DB_NAME, tables)) == 1


def test_an_empty_file_becomes_a_new_store(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).touch()
    database = Database(tmp_path)
    assert database.append([new_event(1)], ["a"], dedupe_window=0)[0] is not None
    database.close()


def test_salvage_copies_nothing_from_a_foreign_schema(db: Database, tmp_path: Path) -> None:
    foreign = tmp_path / "elsewhere" / DB_NAME
    write_foreign_store(
        foreign,
        "CREATE TABLE events (seq TEXT, event_id, fingerprint, kind, received_at, size, body)",
        "INSERT INTO events VALUES ('first', 'id', 'fp', 'incident', 1.0, 2, x'7b7d')",
        "CREATE TABLE deliveries (output, seq, attempts)",
        "INSERT INTO deliveries VALUES ('a', 'first', 0)",
    )
    assert db.salvage(foreign, ["a"]) == (0, 0)
    assert db.stats().events == 0


def test_salvage_keeps_the_dead_letters_and_the_quarantine(db: Database, tmp_path: Path) -> None:
    """Both are kept for an operator (to replay, to read); a salvage copied only the queue, and
    they went with the damaged file."""
    broken = Database(tmp_path / "broken")
    seqs = broken.append([new_event(n) for n in range(3)], ["a"], dedupe_window=0)
    assert seqs[0] is not None
    broken.dead_letter("a", {seqs[0]: "HEC code 6: invalid data format"}, now=2000.0)
    broken.quarantine(b"{not json", "invalid_json", "192.0.2.7", 1500.0, 10, 1 << 20)
    broken.close()
    assert db.salvage(tmp_path / "broken" / DB_NAME, ["a"]) == (2, 2)
    [letter] = db.dead_letters()
    assert (letter.output, letter.reason) == ("a", "HEC code 6: invalid data format")
    assert db.dead_letter_body(letter.id) == new_event(0).body
    [(_, received_at, reason, client, body)] = db.quarantined()
    assert (received_at, reason, client) == (1500.0, "invalid_json", "192.0.2.7")
    assert body == b"{not json"


def test_salvage_keeps_the_dedupe_log(db: Database, tmp_path: Path) -> None:
    """A post the console sends again just after a salvage (a retry, a flock's second webhook)
    is still a duplicate: the salvaged store started with no dedupe memory, and stored it twice."""
    broken = Database(tmp_path / "broken")
    window = 600.0
    broken.append([new_event(n, received_at=1000.0 + n) for n in range(3)], ["a"], window)
    broken.close()
    db.salvage(tmp_path / "broken" / DB_NAME, ["a"])
    again = [new_event(n, received_at=1100.0) for n in range(4)]
    assert [seq is None for seq in db.append(again, ["a"], window)] == [True, True, True, False]


@pytest.mark.parametrize("name", ["store#1", "store?1", "store%41"])
def test_salvage_reads_a_store_whose_path_has_uri_characters(
    db: Database, tmp_path: Path, name: str
) -> None:
    """The path went into a URI as it was: '#' and '?' cut it short, '%41' read as 'A', so the
    salvage read nothing, and the store moved aside had every event it held left behind."""
    broken = Database(tmp_path / name)
    broken.append([new_event(n) for n in range(3)], ["a"], dedupe_window=0)
    broken.close()
    assert db.salvage(tmp_path / name / DB_NAME, ["a"]) == (3, 3)


def test_unwritable_directory_is_not_called_corrupt(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises((OSError, sqlite3.OperationalError)):
        Database(blocked / "state")


def test_background_checkpoints_leave_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    database = Database(tmp_path, background_checkpoints=True)
    wal = tmp_path / f"{DB_NAME}-wal"
    for batch in range(10):
        database.append(
            [new_event(batch * 100 + n, body=b"x" * 5000) for n in range(100)], ["a"], 0
        )
    grown = wal.stat().st_size
    assert grown > 4 * 1024 * 1024  # past SQLite's own autocheckpoint size: nobody copied it
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024)
    assert checkpointer.checkpoint() is None  # over the bound: reset
    assert database.stats().events == 1000
    checkpointer.close()
    database.close()


def _log_frames(database: Database) -> int:
    """The frames in the WAL's log since its last restart, as another connection sees them."""
    probe = sqlite3.connect(database.path, isolation_level=None)
    try:
        (_, frames, _) = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)
    finally:
        probe.close()


def _fill_past_a_mebibyte(database: Database, first: int) -> None:
    for batch in range(4):
        database.append(
            [new_event(first + batch * 100 + n, body=b"x" * 5000) for n in range(100)], ["a"], 0
        )


def test_a_wal_past_its_bound_is_written_over_from_its_start_not_cut(tmp_path: Path) -> None:
    """Cutting a 64 MiB WAL to nothing held the commit behind it 30-35 ms under load; a restart
    holds it a few. The file keeps its size and the next commits write it from the start."""
    database = Database(tmp_path, background_checkpoints=True)
    wal = tmp_path / f"{DB_NAME}-wal"
    _fill_past_a_mebibyte(database, 0)
    grown = wal.stat().st_size
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    assert checkpointer.checkpoint() is None
    assert wal.stat().st_size == grown
    database.append([new_event(1000, body=b"x" * 5000)], ["a"], 0)
    assert wal.stat().st_size == grown  # written over, not appended to
    assert _log_frames(database) < 10
    assert database.stats().events == 401
    checkpointer.close()
    database.close()
    assert not wal.exists() or wal.stat().st_size == 0  # a clean stop still cuts it


def test_the_bound_is_on_the_log_in_the_wal_not_on_the_file(tmp_path: Path) -> None:
    """After a restart the file stays large while its log is small: checkpoints then only copy,
    and hold no commit back until the log itself is past the bound again."""
    database = Database(tmp_path, background_checkpoints=True)
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    statements: list[str] = []
    checkpointer._db.set_trace_callback(statements.append)
    passive, restart = "PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(RESTART)"

    _fill_past_a_mebibyte(database, 0)
    checkpointer.checkpoint()
    assert statements == [passive, restart]
    # Nothing written since: the log is all copied, and the next commit restarts it anyway.
    checkpointer.checkpoint()
    assert statements[2:] == [passive]
    database.append([new_event(1000, body=b"x" * 5000)], ["a"], 0)
    checkpointer.checkpoint()
    assert statements[3:] == [passive]
    _fill_past_a_mebibyte(database, 2000)
    checkpointer.checkpoint()
    assert statements[4:] == [passive, restart]
    checkpointer.close()
    database.close()


def test_a_new_log_of_the_same_length_as_the_one_reset_is_reset_too(tmp_path: Path) -> None:
    """The same commits after a reset give a log of the same length: a new one all the same."""
    database = Database(tmp_path, background_checkpoints=True)
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    statements: list[str] = []
    checkpointer._db.set_trace_callback(statements.append)
    restart = "PRAGMA wal_checkpoint(RESTART)"

    def queue_and_deliver(first: int) -> int:
        """Events in and out again: each round rewrites the same pages, so logs match."""
        for batch in range(4):
            events = [new_event(first + batch * 100 + n, body=b"x" * 5000) for n in range(100)]
            seqs = database.append(events, ["a"], 0)
            database.ack("a", [seq for seq in seqs if seq is not None])
        return _log_frames(database)

    queue_and_deliver(0)
    checkpointer.checkpoint()
    second = queue_and_deliver(1000)
    checkpointer.checkpoint()
    assert queue_and_deliver(2000) == second  # what makes the two logs look alike
    checkpointer.checkpoint()
    assert statements.count(restart) == 3
    checkpointer.close()
    database.close()


def test_commits_that_never_leave_the_log_a_gap_still_have_it_reset(tmp_path: Path) -> None:
    """What the reset is for: commits landing while each PASSIVE copies, so that it never
    catches up and no commit starts the log again by itself. Left to PASSIVE alone, the WAL took
    every commit (26.5 MiB here); with the resets it stayed near the bound (2 MiB)."""
    database = Database(tmp_path, background_checkpoints=True)
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    stopped = threading.Event()

    def checkpoints() -> None:
        while not stopped.is_set():
            checkpointer.checkpoint()
            stopped.wait(0.02)  # paces the checks, as the daemon's one a second

    thread = threading.Thread(target=checkpoints)
    thread.start()
    try:
        for group in range(400):
            database.append(
                [new_event(group * 20 + n, body=b"x" * 2000) for n in range(20)], ["a"], 0
            )
            # The gap the daemon's group commits leave between them, in which a reset gets the
            # write lock; back to back, as no daemon commits, every reset would time out.
            time.sleep(0.001)
    finally:
        stopped.set()
        thread.join()
    # The file grows only when the log outgrows it, so its size is the longest log there was.
    assert (tmp_path / f"{DB_NAME}-wal").stat().st_size < 8 * 1024 * 1024
    checkpointer.close()
    database.close()


def test_a_wal_a_reader_let_grow_is_cut_back_after_the_next_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written over rather than cut, the file would keep whatever size a long reader (a backup,
    a shell) let it grow to until a clean stop."""
    monkeypatch.setattr(database_module, "WAL_FILE_LIMIT_BYTES", 2 * 1024 * 1024)
    database = Database(tmp_path, background_checkpoints=True)
    wal = tmp_path / f"{DB_NAME}-wal"
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    _fill_past_a_mebibyte(database, 0)
    reader = sqlite3.connect(database.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    for start in range(1000, 5000, 1000):
        _fill_past_a_mebibyte(database, start)
        assert checkpointer.checkpoint() is not None  # held back by the reader
    assert wal.stat().st_size > 8 * 1024 * 1024
    reader.execute("COMMIT")
    reader.close()
    assert checkpointer.checkpoint() is None
    database.append([new_event(9000)], ["a"], 0)
    assert wal.stat().st_size <= 2 * 1024 * 1024
    checkpointer.close()
    database.close()


class _CheckpointingElsewhere:
    """A connection whose PASSIVE finds another connection checkpointing."""

    def execute(self, sql: str) -> sqlite3.Cursor:
        assert sql == "PRAGMA wal_checkpoint(PASSIVE)"
        answer = sqlite3.connect(":memory:")
        return answer.execute("SELECT 1, -1, -1")


def test_a_checkpoint_that_finds_another_under_way_keeps_the_last_answer(tmp_path: Path) -> None:
    """PASSIVE then learns nothing of the log (-1 frames); read as a short log, it had the
    daemon say the WAL could be reset again, then warn once more at the next check."""
    database = Database(tmp_path, background_checkpoints=True)
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024 * 1024)
    _fill_past_a_mebibyte(database, 0)
    reader = sqlite3.connect(database.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    database.append([new_event(999)], ["a"], 0)
    stuck = checkpointer.checkpoint()
    assert stuck is not None
    own, checkpointer._db = checkpointer._db, _CheckpointingElsewhere()  # type: ignore[assignment]
    assert checkpointer.checkpoint() == stuck
    checkpointer._db = own
    reader.execute("COMMIT")
    reader.close()
    checkpointer.close()
    database.close()


def test_database_and_its_journal_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    # The WAL holds payloads, intruders' passwords among them; Docker's umask is 022.
    previous = os.umask(0o022)
    try:
        database = Database(tmp_path / "state")
        database.append([new_event(1)], ["a"], dedupe_window=0)
        files = [database.path, Path(f"{database.path}-wal"), Path(f"{database.path}-shm")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files
        }
        database.close()
    finally:
        os.umask(previous)
