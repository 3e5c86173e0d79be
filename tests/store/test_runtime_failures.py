"""The store failing while the daemon runs: a full disk, damage, deleted files, another process's
lock, a WAL a reader keeps from being reset.

Whatever happens, a post is answered 200 only once its event is durable in the file at the
store's path; otherwise StoreUnavailable (503). The store reports itself unhealthy (an ERROR, and
/readyz fails) and recovers by itself once the cause is gone, with nothing queued lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.settings import Settings
from forwarder.store import database as database_module
from forwarder.store import outbox as outbox_module
from forwarder.store.database import DB_NAME, Checkpointer, Database, NewEvent, StoreStats
from forwarder.store.outbox import StoreUnavailable
from tests.helpers import ClientFactory, sample, served_pipelines
from tests.store.helpers import event, open_outbox, table_rows

# Bounds a wait for something the test has set in motion; only a broken build waits this long.
PATIENCE_SECS = 10.0
STORE_ERROR = "Store cannot commit; new posts get 503 until it can."
JSON = {"Content-Type": "application/json"}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, checking it at every turn of the event loop (and a little more)."""
    try:
        async with asyncio.timeout(PATIENCE_SECS):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what}") from None


def errors(logs: Sequence[Mapping[str, Any]], message: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == message and entry["log_level"] == "error"]


def what_a_restart_finds(state: Path, scratch: Path) -> StoreStats:
    """The store a restart would open right now (say after a SIGKILL): the files at the path."""
    scratch.mkdir()
    for name in (DB_NAME, f"{DB_NAME}-wal"):
        if (state / name).exists():
            shutil.copy(state / name, scratch / name)
    database = Database(scratch, create=False)
    try:
        return database.stats()
    finally:
        database.close()


class FakeDisk:
    """A disk that can fill up: while `full`, the store's `max_page_count` is held at the file's
    size before every write transaction, so SQLite fails a write that needs a new page with
    SQLITE_FULL ("database or disk is full"), as on a real full disk."""

    UNLIMITED = 1_073_741_823

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        original = Database._transaction

        @contextlib.contextmanager
        def limited(database: Database) -> Iterator[sqlite3.Connection]:
            connection = database._db
            if self.full:
                (pages,) = connection.execute("PRAGMA page_count").fetchone()
                connection.execute(f"PRAGMA max_page_count={pages}")
            else:
                connection.execute(f"PRAGMA max_page_count={self.UNLIMITED}")
            with original(database) as db:
                yield db

        monkeypatch.setattr(Database, "_transaction", limited)


# A full disk


async def test_a_full_disk_refuses_posts_with_503_and_recovers_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FakeDisk(monkeypatch)
    outbox = await open_outbox(tmp_path)
    answered = [await outbox.append(event(n)) for n in range(3)]
    disk.full = True
    with structlog.testing.capture_logs() as filling:
        # Large posts, then typical ones, until not even a typical post fits in the file.
        for pad in (20_000, 0):
            for _ in range(100):  # bounded: the pages free inside the file go within a few
                try:
                    answered.append(await outbox.append(event(len(answered), pad=pad)))
                except StoreUnavailable as refused:
                    assert "full" in str(refused)
                    break
            else:
                pytest.fail("a full disk took every post")
    assert errors(filling, STORE_ERROR)
    with structlog.testing.capture_logs() as logs:
        assert not outbox.healthy
        assert await outbox.probe() is False  # still full: no flapping back to healthy
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(1000))
    # No flapping, and no ERROR per post: the one ERROR was logged when the disk filled.
    assert [e for e in logs if e["event"] in (STORE_ERROR, "Store can commit again.")] == []

    disk.full = False
    assert await outbox.probe() is True
    assert await outbox.append(event(1001)) is True
    await outbox.aclose()
    database = Database(tmp_path / "state")
    assert database.stats().events == answered.count(True) + 1
    database.close()


async def test_a_dead_letter_the_full_disk_refuses_makes_the_store_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without posts nothing else would notice: /readyz kept passing while delivery could not
    record a single result."""
    disk = FakeDisk(monkeypatch)
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1, pad=200_000)) is True
    [stored] = await outbox.fetch("a", 10, 1 << 30)
    disk.full = True
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await outbox.dead_letter("a", {stored.seq: "refused"})  # keeps a copy: new pages
    assert not outbox.healthy
    assert "full" in (outbox.last_error or "")

    disk.full = False
    assert await outbox.probe() is True
    await outbox.dead_letter("a", {stored.seq: "refused"})
    assert (await outbox.stats()).dead_letters == {"a": 1}
    await outbox.aclose()


# The WAL checkpoint


async def test_checkpoint_trouble_is_logged_once_per_streak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the checkpoint every second; a reader keeps the WAL from being reset
    for as long as it holds its snapshot. Each is one line when it starts and one when it ends,
    not one a second."""
    outcomes: list[Exception | int | None] = [
        *[sqlite3.OperationalError("database or disk is full")] * 3,
        *[None] * 2,
        *[200 << 20] * 3,
        None,
    ]
    calls = 0
    all_seen = threading.Event()

    def scripted(self: Checkpointer) -> int | None:
        nonlocal calls
        calls += 1
        if calls > len(outcomes):
            all_seen.set()  # the loop has logged what the last scripted one called for
            return None
        outcome = outcomes[calls - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(Checkpointer, "checkpoint", scripted)
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_SECS", 0.001)
    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
        assert await asyncio.to_thread(all_seen.wait, PATIENCE_SECS)
        await outbox.aclose()
    said = [(entry["log_level"], entry["event"]) for entry in logs if "WAL" in entry["event"]]
    assert said == [
        ("warning", "WAL checkpoint failed; the WAL grows until one succeeds."),
        ("info", "WAL checkpoints succeed again."),
        (
            "warning",
            "The WAL has outgrown its bound and cannot be reset: another connection holds a "
            "read transaction (a sqlite3 shell, a backup). It grows until that transaction ends.",
        ),
        ("info", "The WAL could be reset again."),
    ]


def test_a_checkpoint_never_holds_commits_back_for_a_reader_holding_a_snapshot(
    tmp_path: Path,
) -> None:
    """The WAL is past its bound and a sqlite3 shell sits in a read transaction. TRUNCATE takes
    the write lock, then waits for the reader: each commit used to wait the whole busy timeout
    (5 s), every second, and could fail with "database is locked" (a 503)."""
    database = Database(tmp_path, background_checkpoints=True)
    body = b"x" * 5000
    database.append(
        [NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, body) for n in range(50)], ["a"], 0
    )
    reader = sqlite3.connect(database.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()  # holds this snapshot
    database.append([NewEvent("id", "fp", "incident", 1.0, body)], ["a"], 0)
    checkpointer = Checkpointer(database.path, max_wal_bytes=1024)
    result: list[int | None] = []
    done = threading.Event()

    def checkpoint() -> None:
        try:
            result.append(checkpointer.checkpoint())
        finally:
            done.set()

    slowest = 0.0
    worker = threading.Thread(target=checkpoint)
    worker.start()
    n = 0
    while not done.is_set():  # commits for as long as the checkpoint runs
        n += 1
        started = time.monotonic()
        database.append([NewEvent(f"c{n}", f"c{n}", "incident", 1.0, b"{}")], ["a"], 0)
        slowest = max(slowest, time.monotonic() - started)
    worker.join()
    assert slowest < 1.0, f"a commit waited {slowest:.2f} s for the checkpoint"
    assert result[0] is not None  # reported as a WAL it could not reset

    reader.execute("COMMIT")
    reader.close()
    assert checkpointer.checkpoint() is None
    database.append([NewEvent("after", "after", "incident", 1.0, b"{}")], ["a"], 0)
    (_, frames, _) = database._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames < 10  # the reader gone, the log started again from the WAL's start
    checkpointer.close()
    database.close()


# Files deleted or replaced under the daemon


async def test_a_post_after_the_state_directory_was_deleted_is_refused(tmp_path: Path) -> None:
    """SQLite goes on committing into the deleted file: every such 200 was lost at the restart."""
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    shutil.rmtree(tmp_path / "state")
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(StoreUnavailable, match="deleted"),
    ):
        await outbox.append(event(2))
    assert not outbox.healthy
    [error] = errors(logs, STORE_ERROR)
    assert "was deleted while the daemon had it open" in error["error"]
    await outbox.aclose()


async def test_an_idle_daemon_notices_its_store_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_SECS", 0.001)
    outbox = await open_outbox(tmp_path)
    assert outbox.healthy
    (tmp_path / "state" / DB_NAME).unlink()
    await until(lambda: not outbox.healthy, "the store to notice its file is gone")
    assert "deleted" in (outbox.last_error or "")
    await outbox.aclose()


async def test_a_deleted_store_is_rebuilt_at_its_path_with_everything_it_held(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        assert await outbox.append(event(n)) is True
    first, *_ = await outbox.fetch("a", 10, 1 << 20)
    await outbox.dead_letter("a", {first.seq: "refused"})
    await outbox.quarantine(b"not json", "invalid_payload", "192.0.2.1")
    shutil.rmtree(state)  # an operator's `rm -rf state/`
    with structlog.testing.capture_logs() as logs:
        assert await outbox.probe() is True
    [rebuilt] = [entry for entry in logs if entry["event"].startswith("Store files were deleted")]
    assert rebuilt["log_level"] == "error" and rebuilt["events"] == 2
    assert await outbox.append(event(3)) is True
    [_, _, newest] = await outbox.fetch("a", 10, 1 << 20)
    assert newest.seq > first.seq + 2  # seqs go on from where they were

    stats = what_a_restart_finds(state, tmp_path / "restart")
    assert (stats.events, stats.dead_letters, stats.quarantined) == (3, {"a": 1}, 1)
    assert (outbox.events, outbox.bytes) == (stats.events, stats.bytes)
    assert [p.name for p in state.iterdir() if ".copy-" in p.name] == []
    await outbox.aclose()


async def test_a_deleted_wal_is_noticed_and_its_events_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL holds every commit since the last checkpoint, and without it at the path the
    checkpointer stopped for good: a crash lost all of them."""
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_SECS", 3600.0)  # none of its own
    state = tmp_path / "state"
    outbox = await open_outbox(tmp_path)
    for n in range(5):
        assert await outbox.append(event(n)) is True
    Path(f"{state / DB_NAME}-wal").unlink()
    with pytest.raises(StoreUnavailable, match="-wal was deleted"):
        await outbox.append(event(5))
    assert await outbox.probe() is True
    assert what_a_restart_finds(state, tmp_path / "restart").events == 5
    await outbox.aclose()


async def test_a_store_replaced_under_the_daemon_is_left_alone_and_posts_are_refused(
    tmp_path: Path,
) -> None:
    """Another database put at the path (a backup restored while it ran) is not this process's to
    overwrite: posts get 503 until a restart, while the old file's queue still drains."""
    state = tmp_path / "state"
    outbox = await open_outbox(tmp_path)
    for n in range(2):
        assert await outbox.append(event(n)) is True
    theirs = Database(tmp_path / "backup")
    theirs.append([NewEvent("theirs", "fp", "incident", 1.0, b"{}")], ["a"], 0)
    theirs.close()
    for journal in ("-wal", "-shm"):  # as the restore procedure says
        Path(f"{state / DB_NAME}{journal}").unlink()
    os.replace(tmp_path / "backup" / DB_NAME, state / DB_NAME)

    assert await outbox.probe() is False
    assert "replaced by another file" in (outbox.last_error or "")
    assert "Restart the daemon" in (outbox.last_error or "")
    with pytest.raises(StoreUnavailable):
        await outbox.append(event(2))
    queued = await outbox.fetch("a", 10, 1 << 20)
    assert len(queued) == 2
    await outbox.ack("a", [stored.seq for stored in queued])
    assert table_rows(state / DB_NAME, "SELECT event_id FROM events") == [("theirs",)]
    await outbox.aclose()


# Damage found at runtime


def damage_the_tail(path: Path, pages: int) -> None:
    """Overwrite the last `pages` pages of the file with garbage."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(size - pages * 4096)
        handle.write(b"\xde\xad\xbe\xef" * 1024 * pages)


async def forty_pages_reopened(tmp_path: Path) -> outbox_module.Outbox:
    """An outbox of 40 events of a page or so each, folded into its file and opened again."""
    outbox = await open_outbox(tmp_path)
    for n in range(40):
        assert await outbox.append(event(n, pad=3000)) is True  # a page or so each
    await outbox.aclose()  # folds the WAL into the file
    outbox = await open_outbox(tmp_path)
    return outbox


async def test_damage_found_while_running_refuses_posts_then_salvages(tmp_path: Path) -> None:
    """A fetch finds the file damaged: the store used to stay healthy, keep answering 200 into
    the damaged file and leave delivery stuck with one warning."""
    state = tmp_path / "state"
    outbox = await forty_pages_reopened(tmp_path)
    in_flight = await outbox.fetch("a", 100, 1 << 30)  # a dispatcher sending them all
    damage_the_tail(state / DB_NAME, pages=10)
    # Drop the pages SQLite keeps in memory, so the next read goes to the file.
    await outbox._with_db(lambda db: db._db.execute("PRAGMA shrink_memory"))

    with structlog.testing.capture_logs() as logs:
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            await outbox.fetch("a", 100, 1 << 30)
        assert not outbox.healthy
        with pytest.raises(StoreUnavailable, match="malformed"):
            await outbox.append(event(100))
        assert await outbox.responsive(PATIENCE_SECS)  # no wedged thread for the watchdog

        assert await outbox.probe() is True
    assert len(errors(logs, STORE_ERROR)) == 1
    [salvaged] = [entry for entry in logs if entry["event"].startswith("Store was corrupt")]
    assert 0 < salvaged["salvaged_events"] < 40
    assert any(".corrupt-" in p.name for p in state.iterdir())
    left = await outbox.fetch("a", 100, 1 << 30)
    assert len(left) == salvaged["salvaged_events"]
    assert (outbox.events, outbox.bytes) == (len(left), sum(len(e.body) for e in left))
    assert await outbox.append(event(101)) is True
    newest = (await outbox.fetch("a", 100, 1 << 30))[-1]
    # A seq lost with the damage is not handed out again: a send in flight would ack it.
    assert newest.seq > in_flight[-1].seq
    await outbox.aclose()


def test_seqs_handed_out_before_are_kept_from_coming_back(tmp_path: Path) -> None:
    database = Database(tmp_path)
    database.keep_seqs_above(41)
    [seq] = database.append([NewEvent("id", "fp", "incident", 1.0, b"{}")], ["a"], 0)
    assert seq == 42
    database.keep_seqs_above(10)  # never lowers it
    [seq] = database.append([NewEvent("id2", "fp2", "incident", 1.0, b"{}")], ["a"], 0)
    assert seq == 43
    database.ack("a", [42, 43])  # the events table is empty again
    database.keep_seqs_above(99)
    [seq] = database.append([NewEvent("id3", "fp3", "incident", 1.0, b"{}")], ["a"], 0)
    assert seq == 100
    database.close()


# Probes and locks


async def test_probes_at_the_same_time_share_one_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz probes a store that is not healthy: polled faster than a probe takes (a lock makes
    it wait 5 s), each one used to queue another on the store's one thread."""
    outbox = await open_outbox(tmp_path)
    checks = 0
    entered, release = threading.Event(), threading.Event()
    original = Database.check_writable

    def slow_check(self: Database, size: int) -> None:
        nonlocal checks
        checks += 1
        entered.set()
        release.wait(PATIENCE_SECS)
        original(self, size)

    monkeypatch.setattr(Database, "check_writable", slow_check)
    try:
        probes = [asyncio.ensure_future(outbox.probe()) for _ in range(20)]
        assert await asyncio.to_thread(entered.wait, PATIENCE_SECS)
        await asyncio.sleep(0)  # let every probe start waiting
    finally:
        release.set()
    assert await asyncio.gather(*probes) == [True] * 20
    assert checks == 1
    await outbox.aclose()


async def test_a_lock_held_by_another_process_is_waited_out_once_then_only_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sqlite3 shell sits in a write transaction. The first write waits the busy timeout and
    fails; the ones behind it on the store thread wait only briefly, so the thread keeps
    answering (the watchdog) however many writes are queued; nothing fails silently, and all
    goes on once the lock is released."""
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_MS", 500)
    monkeypatch.setattr(database_module, "CONTENDED_BUSY_TIMEOUT_MS", 20)
    outbox = await open_outbox(tmp_path)
    outbox.set_outputs(["a", "b", "c"])
    shell = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    shell.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await outbox.append(event(1))
        assert not outbox.healthy
        writes = [
            outbox.append(event(2)),
            *(outbox.retry_later(output, [1]) for output in ("a", "b", "c")),
            outbox.probe(),
            outbox.forget_old(),
        ]
        # Six writes behind the lock: 3 s at the full timeout each, a fraction of it now.
        async with asyncio.timeout(1.5):
            results = await asyncio.gather(*writes, return_exceptions=True)
        assert results[4] is False  # the probe
        assert all(isinstance(r, StoreUnavailable | sqlite3.OperationalError) for r in results[:4])
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    assert await outbox.probe() is True
    assert await outbox.append(event(3)) is True
    (wait,) = await outbox._with_db(lambda db: db._db.execute("PRAGMA busy_timeout").fetchone())
    assert wait == 500  # the full wait is back once a write got through
    await outbox.aclose()


def test_closing_waits_only_briefly_to_fold_the_wal_for_a_reader(tmp_path: Path) -> None:
    """`store stats` or `dead-letters replay` beside the daemon fold the WAL as they close; with
    a reader holding a snapshot that held the daemon's commits back for the busy timeout."""
    database = Database(tmp_path)
    database.append([NewEvent("id", "fp", "incident", 1.0, b"{}")], ["a"], 0)
    reader = sqlite3.connect(database.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    tool = Database(tmp_path, create=False)
    database.append([NewEvent("id2", "fp2", "incident", 1.0, b"{}")], ["a"], 0)
    started = time.monotonic()
    tool.close()
    assert time.monotonic() - started < 1.0
    reader.close()
    database.close()


# What a client is told


async def test_a_post_the_store_cannot_commit_gets_503_retry_after_and_a_warning(
    aiohttp_client: ClientFactory,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(self: Database, *args: object) -> list[int | None]:
        raise sqlite3.OperationalError("database or disk is full")

    async with served_pipelines(aiohttp_client) as serve:
        client, _ = await serve(make_settings())
        monkeypatch.setattr(Database, "append", full)
        with structlog.testing.capture_logs() as logs:
            answer = await client.post(
                "/canary",
                data=sample("incident_ssh_login"),
                headers={"Content-Type": "application/json"},
            )
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "5"
        assert await answer.json() == {"error": "store_unavailable"}
        [warning] = [e for e in logs if e["event"] == "Store cannot commit; post refused with 503."]
        assert warning["log_level"] == "warning" and "full" in warning["error"]


# Races with the probe that replaces the connection


def found_damaged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next delivery read fails as SQLite fails on a damaged page, once."""
    damage = sqlite3.DatabaseError("database disk image is malformed")
    damage.sqlite_errorcode = 11  # SQLITE_CORRUPT, as SQLite sets it
    read_fails_once(monkeypatch, damage)


def read_fails_once(monkeypatch: pytest.MonkeyPatch, error: sqlite3.Error) -> None:
    """The next delivery read raises `error`, once."""
    original = Database.fetch
    failed = False

    def fetch(self: Database, *args: Any) -> list[Any]:
        nonlocal failed
        if not failed:
            failed = True
            raise error
        return original(self, *args)

    monkeypatch.setattr(Database, "fetch", fetch)


class Gate:
    """Holds a call on its thread until the test opens it; says when one is held."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.opened.wait(PATIENCE_SECS)

    async def reached(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, PATIENCE_SECS)


async def test_a_post_while_the_probe_reopens_a_damaged_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe stops the checkpointer before it closes the damaged connection; a post in
    between was committed into that connection and answered 200, and flipped the store back to
    healthy in the middle of the probe."""
    monkeypatch.setattr(outbox_module, "CHECKPOINT_INTERVAL_SECS", 0.001)
    gate = Gate()
    checkpointer_closed = Checkpointer.close

    def slow_close(self: Checkpointer) -> None:
        gate.hold()
        checkpointer_closed(self)

    monkeypatch.setattr(Checkpointer, "close", slow_close)
    checkpointed = threading.Event()
    checkpoint = Checkpointer.checkpoint

    def noted_checkpoint(self: Checkpointer) -> int | None:
        checkpointed.set()  # so there is a checkpointer for the probe to stop
        return checkpoint(self)

    monkeypatch.setattr(Checkpointer, "checkpoint", noted_checkpoint)
    found_damaged(monkeypatch)
    outbox = await open_outbox(tmp_path)
    await until(checkpointed.is_set, "the first checkpoint")
    assert await outbox.append(event(1)) is True
    with pytest.raises(sqlite3.DatabaseError):
        await outbox.fetch("a", 10, 1 << 20)
    probing = asyncio.ensure_future(outbox.probe())
    try:
        await gate.reached()
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(2))
        assert not outbox.healthy
    finally:
        gate.opened.set()
    assert await probing is True
    assert await outbox.append(event(3)) is True
    await outbox.aclose()


async def test_a_store_both_damaged_and_deleted_takes_posts_once_the_probe_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe copied the deleted store and opened the copy, which passed its check, but the
    damage noted on the old connection was never cleared: /readyz passed while every post got
    503, until the next probe reopened the store once more."""
    found_damaged(monkeypatch)
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    with pytest.raises(sqlite3.DatabaseError):
        await outbox.fetch("a", 10, 1 << 20)
    shutil.rmtree(tmp_path / "state")
    assert await outbox.probe() is True
    assert outbox.healthy
    assert await outbox.append(event(2)) is True
    assert len(await outbox.fetch("a", 10, 1 << 20)) == 2
    await outbox.aclose()


async def test_a_read_while_the_store_closes_is_refused_without_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape or a send's ack queued behind the close ran on the closed connection, and the
    store logged an ERROR that it could not commit, at a clean stop."""
    gate = Gate()
    closed = Database.close

    def slow_close(self: Database) -> None:
        gate.hold()
        closed(self)

    monkeypatch.setattr(Database, "close", slow_close)
    outbox = await open_outbox(tmp_path)
    with structlog.testing.capture_logs() as logs:
        closing = asyncio.ensure_future(outbox.aclose())
        try:
            await gate.reached()
            reading = asyncio.ensure_future(outbox.stats())
            await asyncio.sleep(0)  # queued on the store thread behind the close
        finally:
            gate.opened.set()
        await closing
        with pytest.raises(StoreUnavailable):
            await reading
    assert errors(logs, STORE_ERROR) == []


async def damaged_while_running(tmp_path: Path) -> outbox_module.Outbox:
    """An outbox of 40 events whose file was then damaged, as a delivery read has just found."""
    outbox = await forty_pages_reopened(tmp_path)
    damage_the_tail(tmp_path / "state" / DB_NAME, pages=10)
    await outbox._with_db(lambda db: db._db.execute("PRAGMA shrink_memory"))
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        await outbox.fetch("a", 100, 1 << 30)
    return outbox


async def test_a_salvage_that_fails_is_tried_again_not_left_as_an_empty_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The damaged file was moved aside and a fresh one made before the salvage ran; when the
    salvage failed (a full disk: the moved file still takes its space), the next probe opened
    the fresh, empty store, and every event left in the moved file was forgotten without a
    word."""
    outbox = await damaged_while_running(tmp_path)
    cut_short = tmp_path / "state" / f"{DB_NAME}.salvage-1"  # a salvage killed halfway
    cut_short.mkdir()
    (cut_short / DB_NAME).write_bytes(b"part of a salvage")
    salvage = Database.salvage

    def full(self: Database, *args: Any) -> tuple[int, int]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Database, "salvage", full)
    assert await outbox.probe() is False
    said = outbox.last_error or ""
    assert str(tmp_path / "state" / DB_NAME) in said and "salvaging it failed" in said
    assert "full" in said
    with pytest.raises(StoreUnavailable):
        await outbox.append(event(100))

    monkeypatch.setattr(Database, "salvage", salvage)
    with structlog.testing.capture_logs() as logs:
        assert await outbox.probe() is True
    [salvaged] = [entry for entry in logs if entry["event"].startswith("Store was corrupt")]
    assert salvaged["salvaged_events"] > 0
    assert len(await outbox.fetch("a", 100, 1 << 30)) == salvaged["salvaged_events"]
    assert [p.name for p in (tmp_path / "state").iterdir() if ".salvage-" in p.name] == []
    await outbox.aclose()


async def test_the_store_thread_answers_the_watchdog_while_a_damaged_store_is_salvaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A salvage reads the whole file; on the store thread, one that outlasted WatchdogSec got
    the daemon killed halfway, and the restart opened the fresh store it had started."""
    outbox = await damaged_while_running(tmp_path)
    gate = Gate()
    salvage = Database.salvage

    def slow_salvage(self: Database, *args: Any) -> tuple[int, int]:
        gate.hold()
        return salvage(self, *args)

    monkeypatch.setattr(Database, "salvage", slow_salvage)
    probing = asyncio.ensure_future(outbox.probe())
    try:
        await gate.reached()
        assert await outbox.responsive(PATIENCE_SECS / 2)
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(100))
    finally:
        gate.opened.set()
    assert await probing is True
    await outbox.aclose()


def held_copies(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Copies of a deleted store start only once the returned gate opens."""
    gate = Gate()
    copy_to = Database.copy_to

    def held_copy(self: Database, target: Path) -> None:
        gate.hold()
        copy_to(self, target)

    monkeypatch.setattr(Database, "copy_to", held_copy)
    return gate


async def test_the_store_thread_answers_the_watchdog_while_a_deleted_store_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of a large store outlasting WatchdogSec got the daemon killed halfway through it,
    and with it everything the deleted files held."""
    gate = held_copies(monkeypatch)
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    shutil.rmtree(tmp_path / "state")
    probing = asyncio.ensure_future(outbox.probe())
    try:
        await gate.reached()
        assert await outbox.responsive(PATIENCE_SECS / 2)
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(2))
    finally:
        gate.opened.set()
    assert await probing is True
    assert what_a_restart_finds(tmp_path / "state", tmp_path / "restart").events == 1
    await outbox.aclose()
