from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.settings import StoreConfig
from forwarder.store import outbox as outbox_module
from forwarder.store.database import DB_NAME, Database, NewEvent
from forwarder.store.outbox import Outbox, StoreFull, StoreUnavailable
from tests.store.helpers import event, open_outbox, table_rows, write_foreign_store


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    commits = 0
    original = Database.append

    def counting(self: Database, *args: Any) -> Any:
        nonlocal commits
        commits += 1
        return original(self, *args)

    Database.append = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(outbox.append(event(n)) for n in range(200)))
    finally:
        Database.append = original  # type: ignore[method-assign]
    assert all(results)
    assert commits < 20, commits
    assert (await outbox.stats()).queued == {"a": 200}
    await outbox.aclose()


async def test_append_reports_duplicates(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    assert await outbox.append(event(1)) is False
    assert outbox.events == 1
    await outbox.aclose()


async def test_full_store_refuses_new_events(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path, max_bytes=1024 * 1024)
    outbox.bytes = 1024 * 1024 - 10
    with pytest.raises(StoreFull):
        await outbox.append(event(1))
    assert (await outbox.stats()).events == 0
    await outbox.aclose()


async def test_failed_commit_is_unavailable_and_recovers(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    original = Database.append

    def failing(self: Database, *args: Any) -> Any:
        raise OSError(28, "No space left on device")

    Database.append = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreUnavailable, match="No space left"):
            await outbox.append(event(1))
        assert outbox.healthy is False
    finally:
        Database.append = original  # type: ignore[method-assign]
    assert await outbox.probe() is True
    assert await outbox.append(event(2)) is True
    assert outbox.healthy is True
    await outbox.aclose()


async def test_listeners_hear_about_new_events_only(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    woken: list[int] = []
    outbox.on_append(lambda: woken.append(1))
    await outbox.append(event(1))
    await outbox.append(event(1))
    assert woken == [1]
    await outbox.aclose()


async def test_totals_follow_acks_and_dead_letters(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        await outbox.append(event(n))
    batch = await outbox.fetch("a", 10, 1 << 20)
    await outbox.ack("a", [batch[0].seq])
    await outbox.dead_letter("a", {batch[1].seq: "refused"})
    assert outbox.events == 1
    assert outbox.bytes == len(batch[2].body)
    await outbox.aclose()
    reopened = await open_outbox(tmp_path)
    assert (reopened.events, reopened.bytes) == (1, len(batch[2].body))
    await reopened.aclose()


async def test_corrupt_store_is_moved_aside_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"garbage" * 1000)
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    assert [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    await outbox.aclose()


async def test_close_commits_pending_appends(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    pending = [asyncio.ensure_future(outbox.append(event(n))) for n in range(5)]
    await asyncio.sleep(0)  # let the appends enqueue; the committer has not run yet
    await outbox.aclose()
    assert all(task.result() for task in pending)
    database = Database(tmp_path / "state")
    assert database.stats().events == 5
    database.close()


class _ChainedCommits:
    """Database.append replaced for the chaining tests: the first commit waits for `release`,
    and `on_commit(n)` runs on the store thread before commit n (from 1)."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.in_first, self.release = threading.Event(), threading.Event()
        self.calls = 0
        self.on_commit: dict[int, Any] = {}
        self.after_commit: dict[int, Any] = {}
        append = Database.append
        patch.setattr(outbox_module, "_MAX_GROUP", 1)  # one post per group

        def observed(database: Database, *args: Any) -> Any:
            self.calls += 1
            number = self.calls
            if number == 1:
                self.in_first.set()
                self.release.wait(10)
            if number in self.on_commit:
                self.on_commit[number]()
            result = append(database, *args)
            if number in self.after_commit:
                self.after_commit[number]()
            return result

        patch.setattr(Database, "append", observed)

    async def first_commit_held(self, outbox: Outbox) -> asyncio.Future[bool]:
        first = asyncio.ensure_future(outbox.append(event(1)))
        await asyncio.to_thread(self.in_first.wait, 10)  # the committer is inside a commit
        return first

    async def posted_during_the_first_commit(
        self, outbox: Outbox, *numbers: int
    ) -> tuple[asyncio.Future[bool], list[asyncio.Future[bool]]]:
        """Post event 1, then events `numbers` while its commit is held; then let it go on."""
        first = await self.first_commit_held(outbox)
        later = [asyncio.ensure_future(outbox.append(event(n))) for n in numbers]
        await asyncio.sleep(0)  # they wait for the commit under way
        self.release.set()
        return first, later


async def test_posts_waiting_during_a_commit_are_committed_next_without_the_event_loop(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    loop = asyncio.get_running_loop()
    second_started = threading.Event()
    started_while_the_loop_was_held: list[bool] = []

    def hold_the_loop() -> None:
        # Blocks the event loop, as a burst of posts keeps it busy, until the next commit
        # starts: it can only start without the loop's help.
        started_while_the_loop_was_held.append(second_started.wait(5))

    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        commits.after_commit[1] = lambda: loop.call_soon_threadsafe(hold_the_loop)
        commits.on_commit[2] = second_started.set
        first, [second] = await commits.posted_during_the_first_commit(outbox, 2)
        async with asyncio.timeout(10):
            assert await first is True
            assert await second is True
    assert started_while_the_loop_was_held == [True]
    assert (await outbox.stats()).queued == {"a": 2}
    await outbox.aclose()


async def test_each_chained_group_is_answered_once_durable_not_when_the_chain_ends(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    first_answered = threading.Event()
    answered_before_the_second_commit: list[bool] = []
    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        commits.on_commit[2] = lambda: answered_before_the_second_commit.append(
            first_answered.wait(5)
        )
        first, [second] = await commits.posted_during_the_first_commit(outbox, 2)
        first.add_done_callback(lambda _: first_answered.set())
        async with asyncio.timeout(10):
            assert await first is True
            assert await second is True
    assert answered_before_the_second_commit == [True]
    await outbox.aclose()


async def test_a_chain_commits_nothing_more_into_a_connection_let_go_of(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    connection: list[Database | None] = []

    def let_go() -> None:
        # What a probe's `_close_connection` does first with a damaged store's connection.
        connection.append(outbox._db)
        outbox._db = None

    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        commits.after_commit[1] = let_go
        first, [second] = await commits.posted_during_the_first_commit(outbox, 2)
        async with asyncio.timeout(10):
            assert await first is True
            with pytest.raises(StoreUnavailable):
                await second
    assert commits.calls == 1
    outbox._db = connection[0]
    await outbox.aclose()


def _damaged() -> None:
    damage = sqlite3.DatabaseError("database disk image is malformed")
    damage.sqlite_errorcode = 11  # SQLITE_CORRUPT, as SQLite sets it
    raise damage


async def test_damage_met_later_in_a_chain_marks_the_store_and_refuses_new_posts(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    next_post_made = asyncio.Event()
    run = Outbox._run

    async def failure_seen_late(self: Outbox, call: Any, *args: object) -> Any:
        # Under load the committer may hear of the store thread's failure only after the
        # posts it failed have been answered and their clients have posted again.
        try:
            return await run(self, call, *args)
        except sqlite3.Error:
            await next_post_made.wait()
            raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Outbox, "_run", failure_seen_late)
        commits = _ChainedCommits(patch)
        commits.on_commit[2] = _damaged
        first, [second] = await commits.posted_during_the_first_commit(outbox, 2)
        async with asyncio.timeout(10):
            assert await first is True
            with pytest.raises(StoreUnavailable, match="malformed"):
                await second
            assert outbox.healthy is False
            third = asyncio.ensure_future(outbox.append(event(3)))
            await asyncio.sleep(0)  # the post is checked, and refused or queued
            next_post_made.set()
            with pytest.raises(StoreUnavailable, match="malformed"):
                await third
    assert (await outbox.stats()).queued == {"a": 1}
    await outbox.aclose()


async def test_posts_waiting_behind_a_commit_that_met_damage_are_refused(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        commits.on_commit[2] = _damaged
        first, [second, third] = await commits.posted_during_the_first_commit(outbox, 2, 3)
        async with asyncio.timeout(10):
            assert await first is True
            with pytest.raises(StoreUnavailable, match="malformed"):
                await second
            # Waiting when the damage was met, it is not committed into the damaged file.
            with pytest.raises(StoreUnavailable, match="malformed"):
                await third
        assert commits.calls == 2
    assert outbox.healthy is False
    assert (await outbox.stats()).queued == {"a": 1}
    await outbox.aclose()


async def test_a_post_queued_behind_a_read_that_meets_damage_is_refused(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    in_read, release = threading.Event(), threading.Event()

    def damaged_read(database: Database) -> Any:
        in_read.set()
        release.wait(10)
        _damaged()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Database, "stats", damaged_read)
        # A dispatcher's read holds the store thread, then finds the file damaged.
        read = asyncio.ensure_future(outbox.stats())
        await asyncio.to_thread(in_read.wait, 10)
        post = asyncio.ensure_future(outbox.append(event(1)))
        queue = outbox._executor._work_queue
        async with asyncio.timeout(10):
            while queue.empty():  # until the committer's turn waits behind the read
                await asyncio.sleep(0)
            release.set()
            with pytest.raises(sqlite3.DatabaseError, match="malformed"):
                await read
            with pytest.raises(StoreUnavailable, match="malformed"):
                await post
    assert outbox.healthy is False
    assert outbox.events == 0 and (await outbox.stats()).queued == {}
    await outbox.aclose()


async def test_a_read_queued_during_a_commit_goes_before_the_chained_commits(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)
    order: list[str] = []
    stats = Database.stats

    def recorded_stats(database: Database) -> Any:
        order.append("read")
        return stats(database)

    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        for number in (1, 2, 3):
            commits.on_commit[number] = lambda n=number: order.append(f"commit {n}")
        patch.setattr(Database, "stats", recorded_stats)
        first = await commits.first_commit_held(outbox)
        later = [asyncio.ensure_future(outbox.append(event(n))) for n in (2, 3)]
        await asyncio.sleep(0)  # both posts wait for the commit under way
        # A dispatcher's read, asked for while the first commit runs.
        read = asyncio.ensure_future(outbox.stats())
        await asyncio.sleep(0)
        commits.release.set()
        async with asyncio.timeout(10):
            assert await first is True
            assert await asyncio.gather(*later) == [True, True]
            await read
    assert order == ["commit 1", "read", "commit 2", "commit 3"], order
    await outbox.aclose()


async def test_a_chained_commit_that_fails_answers_its_posts_and_the_next_ones_commit(
    tmp_path: Path,
) -> None:
    outbox = await open_outbox(tmp_path)

    def disk_full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.MonkeyPatch.context() as patch:
        commits = _ChainedCommits(patch)
        commits.on_commit[2] = disk_full
        first, [second, third] = await commits.posted_during_the_first_commit(outbox, 2, 3)
        async with asyncio.timeout(10):
            assert await first is True
            with pytest.raises(StoreUnavailable, match="disk is full"):
                await second
            assert await third is True
    assert outbox.healthy is True
    assert outbox.events == 2 and (await outbox.stats()).queued == {"a": 2}
    await outbox.aclose()


async def test_close_during_a_commit_answers_every_post(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    in_commit, release = threading.Event(), threading.Event()
    append = Database.append

    def slow_append(self: Database, *args: Any) -> Any:
        in_commit.set()
        release.wait(10)
        return append(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Database, "append", slow_append)
        first = asyncio.ensure_future(outbox.append(event(1)))
        await asyncio.to_thread(in_commit.wait, 10)  # the committer is inside a commit
        second = asyncio.ensure_future(outbox.append(event(2)))  # waits for the next one
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(outbox.aclose())
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable, match="closing"):
            await outbox.append(event(3))
        release.set()
        async with asyncio.timeout(10):
            await closing
            assert await first is True
            assert await second is True
    database = Database(tmp_path / "state")
    assert database.stats().events == 2
    database.close()


async def test_unopenable_store_degrades_instead_of_crashing(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    outbox = await Outbox.open(StoreConfig(path=blocker / "inner"), ["a"])
    assert outbox.available is False and outbox.healthy is False
    assert "Not a directory" in (outbox.last_error or "")
    with pytest.raises(StoreUnavailable):
        await outbox.append(event(1))
    assert await outbox.probe() is False
    blocker.unlink()
    assert await outbox.probe() is True
    assert await outbox.append(event(1)) is True
    await outbox.aclose()


async def test_corrupt_store_salvages_readable_events(tmp_path: Path) -> None:
    state = tmp_path / "state"
    database = Database(state)
    bodies = [b'{"n": %d, "pad": "%s"}' % (n, b"x" * 3000) for n in range(40)]
    database.append(
        [NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, body) for n, body in enumerate(bodies)],
        ["a"],
        0,
    )
    database.close()  # checkpoints the WAL into the main file
    raw = bytearray((state / DB_NAME).read_bytes())
    middle = len(raw) // 4096 // 2 * 4096
    raw[middle : middle + 4096] = b"\xde\xad\xbe\xef" * 1024
    (state / DB_NAME).write_bytes(bytes(raw))

    outbox = await Outbox.open(StoreConfig(path=state), ["a"])
    assert outbox.healthy
    salvaged = await outbox.fetch("a", 100, 1 << 30)
    assert 0 < len(salvaged) < 40
    assert all(item.body == bodies[int(item.event_id[2:])] for item in salvaged)
    assert any(".corrupt-" in p.name for p in state.iterdir())
    await outbox.aclose()


async def test_concurrent_posts_cannot_pass_the_byte_bound(tmp_path: Path) -> None:
    max_bytes = 1024 * 1024
    outbox = await open_outbox(tmp_path, max_bytes=max_bytes)
    posts = [event(n, pad=100_000) for n in range(60)]
    results = await asyncio.gather(*(outbox.append(post) for post in posts), return_exceptions=True)
    assert results.count(True) == max_bytes // len(posts[0].raw)
    assert all(isinstance(result, StoreFull) for result in results if result is not True)
    stats = await outbox.stats()
    assert stats.bytes <= max_bytes
    assert (outbox.events, outbox.bytes) == (stats.events, stats.bytes)
    await outbox.aclose()


async def test_duplicate_and_failed_posts_stop_counting_against_the_bound(tmp_path: Path) -> None:
    # Each post is 40% of the bound: a third one fits only if neither the duplicate nor the
    # failed post is still counted as pending.
    outbox = await open_outbox(tmp_path, max_bytes=1024 * 1024)
    pad = 400_000
    assert await outbox.append(event(1, pad=pad)) is True
    assert await outbox.append(event(1, pad=pad)) is False

    def failing(self: Database, *args: Any) -> Any:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Database, "append", failing)
        with pytest.raises(StoreUnavailable):
            await outbox.append(event(2, pad=pad))
    assert await outbox.append(event(3, pad=pad)) is True
    assert (await outbox.stats()).events == 2
    await outbox.aclose()


def replay_in_another_process(tmp_path: Path) -> None:
    """What `canary-forwarder dead-letters replay` does beside the daemon: its own connection."""
    other = Database(tmp_path / "state")
    try:
        assert other.replay(None, None) == 1
    finally:
        other.close()


async def test_totals_stay_exact_when_another_process_replays(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        await outbox.append(event(n))
    first, *rest = await outbox.fetch("a", 10, 1 << 20)
    await outbox.dead_letter("a", {first.seq: "refused"})
    replay_in_another_process(tmp_path)
    replayed = (await outbox.fetch("a", 10, 1 << 20))[-1]
    assert replayed.body == first.body
    # Deliver the replayed event and one other; one stays queued.
    await outbox.ack("a", [replayed.seq, rest[0].seq])
    stats = await outbox.stats()
    assert (stats.events, stats.bytes) == (1, len(rest[1].body))
    assert (outbox.events, outbox.bytes) == (stats.events, stats.bytes)
    await outbox.aclose()


@pytest.mark.parametrize("notice", ["sweep", "post"])
async def test_replayed_events_are_counted_before_they_are_delivered(
    tmp_path: Path, notice: str
) -> None:
    outbox = await open_outbox(tmp_path)
    await outbox.append(event(1))
    [stored] = await outbox.fetch("a", 10, 1 << 20)
    await outbox.dead_letter("a", {stored.seq: "refused"})
    replay_in_another_process(tmp_path)
    if notice == "sweep":
        await outbox.forget_old()
    else:
        assert await outbox.append(event(2)) is True
    stats = await outbox.stats()
    assert (outbox.events, outbox.bytes) == (stats.events, stats.bytes)
    await outbox.aclose()


async def test_store_with_a_foreign_schema_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    write_foreign_store(
        tmp_path / "state" / DB_NAME,
        "CREATE TABLE events (x)",
        "INSERT INTO events VALUES ('theirs')",
    )
    with structlog.testing.capture_logs() as logs:
        outbox = await open_outbox(tmp_path)
    assert outbox.healthy
    assert await outbox.append(event(1)) is True
    [error] = [entry for entry in logs if entry["log_level"] == "error"]
    assert "table events lacks columns seq, event_id" in error["error"]
    assert error["salvaged_events"] == 0
    assert table_rows(Path(error["moved_to"]), "SELECT x FROM events") == [("theirs",)]
    await outbox.aclose()


@pytest.mark.parametrize(
    ("options", "gap_secs", "stored"),
    [
        ({"dedupe_window_secs": 0}, 0.0, 2),
        ({"dedupe_window_secs": 1}, 2.0, 2),
        ({}, 2.0, 1),
    ],
    ids=["no-window", "past-a-short-window", "default-window"],
)
async def test_dedupe_window_comes_from_the_config(
    tmp_path: Path, options: dict[str, float], gap_secs: float, stored: int
) -> None:
    outbox = await open_outbox(tmp_path, **options)
    first = datetime.now(UTC)
    for received_at in (first, first + timedelta(seconds=gap_secs)):
        await outbox.append(event(1, received_at=received_at))
    assert (await outbox.stats()).events == stored
    await outbox.aclose()
