"""The daemon's view of the store: async, group-committed, bounded.

Every database call runs on one dedicated thread, so SQLite sees a single writer and the event
loop never blocks on disk. Ingest requests that arrive while a commit is running wait together
and share the next commit (and its fsync): that is what keeps a durable 200 cheap under load.

When the store fails while running (a full disk, damage, another process's lock, its files
deleted under it), any call that fails marks it unhealthy and posts get 503; `probe` brings it
back, reopening, salvaging or copying it where that is what it takes. Those run on a thread of
their own, as long as they take, while the store thread has no connection to use and so refuses
every call at once: it still answers the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from forwarder.events import CanaryEvent
from forwarder.settings import StoreConfig
from forwarder.store.database import (
    DB_NAME,
    Checkpointer,
    CommandLock,
    Database,
    DeadLetter,
    NewEvent,
    StoreCorrupt,
    StoredEvent,
    StoreDisplaced,
    StoreStats,
    file_identity,
    finish_cut_short_salvages,
    is_damage,
    replace_with_salvage,
)

__all__ = ["Outbox", "StoreFull", "StoreUnavailable"]

log = structlog.get_logger("forwarder.store")
T = TypeVar("T")

_MAX_GROUP = 1000
# Groups one turn of the store thread commits back to back (see `_commit_groups`); bounded so
# that reads and acks queued behind them wait for at most this many commits.
_CHAINED_GROUPS = 4
CHECKPOINT_INTERVAL_SECS = 1.0
# Recently committed events kept parsed for the dispatchers: a few batches' worth.
_PARSED_CACHE_SIZE = 2048
# ... and at most this many raw bytes of them (a parsed event takes about three times its raw
# size): 2048 events of up to 1 MiB each would otherwise hold gigabytes during an outage.
_PARSED_CACHE_BYTES = 2 * 1024 * 1024
# What `probe` writes to prove the store can take posts: a few typical events' worth.
PROBE_BYTES = 16 * 1024
# How finely `expired` tells commit times apart (see `_mark_seqs`): an event expires at most
# 1/1024 of store.max_age_secs late, and however long that is, at most twice that many marks
# are kept.
_SEQ_MARKS_PER_MAX_AGE = 1024


def _no_op() -> None:
    """What `Outbox.responsive` runs on the store thread: getting to run it is the answer."""


class StoreFull(Exception):
    """The store holds `max_bytes` of undelivered payload; the client should retry later."""


class StoreUnavailable(Exception):
    """The store cannot commit (disk full, read-only, I/O error)."""


@dataclass(slots=True)
class _Pending:
    event: NewEvent
    parsed: CanaryEvent
    done: asyncio.Future[int | None]


class Outbox:
    """Open with `Outbox.open`; close with `aclose`. Outputs are named at open and on reload."""

    def __init__(self, config: StoreConfig, executor: ThreadPoolExecutor):
        self.config = config
        self._db: Database | None = None
        self._executor = executor
        self._outputs: tuple[str, ...] = ()
        self._pending: deque[_Pending] = deque()
        # Bytes of posts waiting for their commit: they count against `max_bytes` too, or
        # concurrent posts would all pass the check before any of them is committed.
        self._pending_bytes = 0
        self._closing = False
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._parsed: OrderedDict[int, CanaryEvent] = OrderedDict()
        self._parsed_bytes = 0
        self.bytes = 0
        self.events = 0
        self.healthy = False
        self.last_error: str | None = "not opened yet"
        # The no-op `responsive` queued on the store thread, kept until it has run so that a
        # stuck thread holds one of them, not one per watchdog tick.
        self._responsive_probe: asyncio.Future[None] | None = None
        # The probe running, which every caller meanwhile waits for instead of queueing its own
        # on the store thread (/readyz polled while a lock makes each probe wait).
        self._probing: asyncio.Future[bool] | None = None
        # Why the connection must be replaced before the store takes posts again: damage found
        # while running (the probe reopens and checks it, salvaging it if need be), or its files
        # deleted or replaced under it.
        self._damaged = False
        self._displaced: StoreDisplaced | None = None
        # The highest seq this process has seen, which a salvaged store must not hand out again.
        self._highest_seq = 0
        # How `expired` measures an event's wait (see there): the wall and monotonic clocks
        # when this process first opened the store, the highest seq then, and marks of
        # (monotonic time, highest seq by then) taken at open, at each commit and each sweep.
        self._opened_at: tuple[float, float] | None = None
        self._seq_at_open = 0
        self._seq_marks: deque[tuple[float, int]] = deque()
        # The file (device, inode) the last salvage put at the path, until it has opened once.
        self._salvaged: tuple[int, int] | None = None

    @classmethod
    async def open(cls, config: StoreConfig, outputs: Iterable[str] = ()) -> Outbox:
        """Open (or create) the store and start committing.

        A corrupt database is moved aside, what can still be read from it is copied into a fresh
        one, and the daemon goes on. A store that cannot be opened at all (read-only directory,
        disk full) does not stop the daemon either: posts get 503 and /readyz fails until a
        later `probe` opens it. Either way the operator gets an ERROR, never a crash loop.
        """
        outbox = cls(config, ThreadPoolExecutor(max_workers=1, thread_name_prefix="store"))
        outbox.set_outputs(outputs)
        await outbox.probe()
        outbox._committer = asyncio.create_task(outbox._commit_forever(), name="store-commit")
        return outbox

    def _connect(self) -> Database:
        path = self.config.path
        self._finish_cut_short_salvages()
        try:
            database = Database(path, sync=self.config.sync, background_checkpoints=True)
        except StoreCorrupt as exc:
            if self._salvaged is not None and file_identity(path / DB_NAME) == self._salvaged:
                # A file just written that fails its check at once points at the disk, or at
                # reading it: salvaged again, it would be moved aside and copied at every probe.
                raise StoreUnavailable(
                    f"{exc}; this is the file the last salvage made, which has not passed its "
                    "check once: not salvaged again (the disk may be failing), checked again at "
                    "each probe"
                ) from exc
            try:
                moved, events, deliveries = replace_with_salvage(
                    path / DB_NAME, self._outputs, sync=self.config.sync, now=time.time()
                )
            except (sqlite3.Error, OSError) as failed:
                # The error alone ("database or disk is full") would not say that a salvage
                # is pending, nor that the file at the path holds the queued events.
                raise StoreUnavailable(
                    f"{exc}; salvaging it failed, tried again at the next probe: {failed}"
                ) from failed
            self._salvaged = file_identity(path / DB_NAME)
            log.error(
                "Store was corrupt; moved it aside, started a fresh one and copied what was "
                "readable. Keep the moved file until the events are accounted for.",
                error=str(exc),
                moved_to=str(moved),
                salvaged_events=events,
                salvaged_deliveries=deliveries,
            )
            database = Database(path, sync=self.config.sync, background_checkpoints=True)
        self._salvaged = None
        return database

    def _finish_cut_short_salvages(self) -> None:
        """Complete or remove, and log, the salvages a kill cut short (see
        `finish_cut_short_salvages`); before every open, so none is ever left behind."""
        path = self.config.path / DB_NAME
        try:
            found = finish_cut_short_salvages(path, time.time())
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(
                f"cannot complete a salvage of {path} that was cut short, tried again at the "
                f"next probe: {exc}"
            ) from exc
        for salvage in found:
            if salvage.taken_in:
                log.error(
                    "Found a salvage of the store that an earlier version, killed, left beside "
                    "the store it then made at the path; queued the events it held there.",
                    salvage=str(salvage.directory),
                    events=salvage.taken_in,
                )
            elif salvage.moved_to is None:
                log.warning(
                    "Removed an incomplete salvage of the store, cut short by a kill; the file "
                    "it was made from is still at the path, and salvaged again if damaged.",
                    removed=str(salvage.directory),
                )
            else:
                log.error(
                    "Store was corrupt and its salvage was cut short by a kill; completed it "
                    "now: the salvaged store is at the path and the damaged one moved aside. "
                    "Keep the moved file until the events are accounted for.",
                    salvage=str(salvage.directory),
                    moved_to=str(salvage.moved_to),
                )

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def _with_db(self, call: Callable[[Database], T]) -> T:
        def run() -> T:
            if self._db is None:
                raise StoreUnavailable(self.last_error or "store is not open")
            try:
                return call(self._db)
            except Exception as exc:
                # Noted here, on the store thread, before its next call: a commit queued behind
                # a read or an ack that found damage must not go into the damaged file.
                self._note_unusable(exc)
                raise

        try:
            return await self._run(run)
        except (sqlite3.Error, OSError, StoreDisplaced) as exc:
            self._store_failed(exc)
            raise

    def _store_failed(self, exc: Exception) -> None:
        """Any call that fails in the store makes it unhealthy, a read or an ack as much as a
        commit: damage under the queued events would otherwise stop delivery with /readyz
        still passing, and only a warning from each output."""
        self._note_unusable(exc)
        self._mark_unhealthy(exc)

    def _note_unusable(self, exc: Exception) -> None:
        """Note a connection that must take no more commits (damaged, or its files displaced);
        the next probe replaces it. On the store thread or the event loop alike."""
        if isinstance(exc, StoreDisplaced):
            self._displaced = self._displaced or exc
        elif is_damage(exc):
            self._damaged = True

    async def responsive(self, wait_secs: float) -> bool:
        """Whether the store thread runs a no-op within `wait_secs`; for the watchdog.

        A thread stuck in a call (an fsync on a dead disk, a lock never released) leaves every
        post waiting for its commit while the event loop looks healthy. This asks the thread,
        not the disk: the database is not touched (a failing disk shows in `healthy`). A thread
        busy with one long call answers once that call is done.

        While the last no-op has not run, it is waited on again instead of queueing another.
        Works before `open` and returns False after `aclose`.
        """
        probe = self._responsive_probe
        if probe is None or probe.done():
            try:
                probe = asyncio.get_running_loop().run_in_executor(self._executor, _no_op)
            except RuntimeError:  # the executor is shut down: no thread left to answer
                return False
            self._responsive_probe = probe
        try:
            # Shielded: a timeout must leave the no-op queued for the next call to wait on.
            async with asyncio.timeout(wait_secs):
                await asyncio.shield(probe)
        except TimeoutError:
            return False
        return True

    @property
    def available(self) -> bool:
        """The database is open (it may still fail to commit; see `healthy`)."""
        return self._db is not None

    def set_outputs(self, names: Iterable[str]) -> None:
        """Which outputs new events are queued for (at start and after a reload)."""
        self._outputs = tuple(names)

    def on_append(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each commit that stored new events (wakes the dispatchers)."""
        self._listeners.append(listener)

    def _remember(self, seq: int, event: CanaryEvent) -> None:
        self._parsed[seq] = event
        self._parsed_bytes += len(event.raw)
        while len(self._parsed) > _PARSED_CACHE_SIZE or self._parsed_bytes > _PARSED_CACHE_BYTES:
            _, dropped = self._parsed.popitem(last=False)
            self._parsed_bytes -= len(dropped.raw)

    def parsed(self, seq: int) -> CanaryEvent | None:
        """The event as ingest parsed it, while it is recent; saves delivery a second parse.

        Bounded, so a backlog (an outage) costs disk, not memory: older events are parsed again
        from their stored bytes, which gives the same event.
        """
        return self._parsed.get(seq)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # Ingest

    async def append(self, event: CanaryEvent) -> bool:
        """Commit one event durably. False if it duplicates one seen within the dedupe window.

        Raises:
            StoreFull: the byte bound is reached.
            StoreUnavailable: the commit failed, or the store is closing; nothing was stored.
        """
        if self._closing:
            raise StoreUnavailable("the store is closing")
        if (refusal := self._refusal()) is not None:
            raise refusal
        held = self.bytes + self._pending_bytes
        if held + len(event.raw) > self.config.max_bytes:
            raise StoreFull(f"store holds {held} bytes of {self.config.max_bytes}")
        pending = _Pending(
            NewEvent(
                event_id=event.id,
                fingerprint=event.fingerprint,
                kind=event.kind.value,
                received_at=event.received_at.timestamp(),
                body=event.raw,
            ),
            event,
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(pending)
        self._pending_bytes += len(event.raw)
        self._wakeup.set()
        seq = await pending.done
        return seq is not None

    def _refusal(self) -> StoreUnavailable | None:
        """Why no post may be committed now, or None.

        Nothing more goes into a file that is damaged or no longer at the path; the next probe
        replaces the connection.
        """
        if self._damaged or self._displaced is not None:
            return StoreUnavailable(self.last_error or "the store is being reopened")
        return None

    async def _commit_forever(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._commit_groups()

    async def _commit_groups(self) -> None:
        """Commit the posts waiting, and those that arrive meanwhile, up to `_CHAINED_GROUPS`
        groups in one turn of the store thread, or until other work is queued for it.

        Each group's answers go back to the event loop as soon as it is durable. Chained, the
        next group starts as the last one ends: not after a round trip through the busy event
        loop, which took about a third of each commit cycle, and every post waits for a cycle.
        """
        if (refusal := self._refusal()) is not None:
            # Posts that were waiting when a commit found the damage: refused as a post that
            # comes now is, not committed into the file the probe is about to replace.
            while group := self._take_group():
                self._refuse(group, str(refusal))
            return
        loop = asyncio.get_running_loop()
        taken = False

        def commit_groups(db: Database) -> None:
            nonlocal taken
            for chained in range(_CHAINED_GROUPS):
                if self._refusal() is not None:
                    # A call before this one found the connection unusable: the groups left
                    # waiting get the store's refusal at the next turn.
                    return
                if chained and (self._db is not db or self._store_work_waiting()):
                    # A connection a probe has let go of (damaged, to be closed and salvaged)
                    # takes no more: the next group gets the store's refusal. And a read, an
                    # ack or a probe goes first: a dispatcher's next batch must not wait for
                    # commits that came after it was asked for.
                    return
                group = self._take_group()
                if not group:
                    return
                taken = True
                try:
                    seqs = self._commit_in_place(db, [pending.event for pending in group])
                    added = db.added_elsewhere(look=False)
                except Exception as exc:
                    loop.call_soon_threadsafe(self._commit_failed, group, exc)
                    raise
                loop.call_soon_threadsafe(self._committed, group, seqs, added)

        try:
            await self._with_db(commit_groups)
        except Exception as exc:
            if not taken:
                # Failed before a group was taken (no store open): the next group gets the
                # answer a failed commit gives, or the committer would try again at once.
                self._commit_failed(self._take_group(), exc)
            # Otherwise the group that failed was answered by `_commit_failed` already.

    def _store_work_waiting(self) -> bool:
        """Whether other work is queued for the store thread; on the store thread.

        ThreadPoolExecutor has no public way to ask; its queue has been `_work_queue` since
        Python 3.2. An executor without one is taken to have nothing waiting.
        """
        queue = getattr(self._executor, "_work_queue", None)
        return queue is not None and not queue.empty()

    def _take_group(self) -> list[_Pending]:
        """Up to `_MAX_GROUP` posts waiting; on the store thread, while the event loop may be
        appending (a deque's appends and pops from opposite ends are atomic)."""
        pending = self._pending
        group: list[_Pending] = []
        while pending and len(group) < _MAX_GROUP:
            group.append(pending.popleft())
        return group

    def _commit_in_place(self, db: Database, events: list[NewEvent]) -> list[int | None]:
        # After the commit: a 200 then means the file was still at the path once the events
        # were durable in it, not that they went into a deleted file, lost at the restart.
        # And before: events refused for it must not be in the old file either, where the
        # copy that replaces it would pick them up and deliver them after all.
        db.check_in_place()
        # The outputs and the window as they are now: a reload may change them between groups.
        seqs = db.append(events, self._outputs, self.config.dedupe_window_secs)
        db.check_in_place()
        return seqs

    def _commit_failed(self, group: list[_Pending], exc: Exception) -> None:
        # Damage is noted before the group hears of it: a post its answer lets in must already
        # be refused, not committed into the damaged file. The store thread notes it too, but
        # only after it has sent this answer on its way.
        self._store_failed(exc)
        self._refuse(group, str(exc))

    def _refuse(self, group: list[_Pending], reason: str) -> None:
        self._pending_bytes -= sum(len(pending.event.body) for pending in group)
        for pending in group:
            if not pending.done.done():
                pending.done.set_exception(StoreUnavailable(reason))

    def _committed(
        self, group: list[_Pending], seqs: list[int | None], added: tuple[int, int]
    ) -> None:
        self._count(*added)
        # Stored or duplicate alike; the stored ones join `bytes` below, in the same step of the
        # event loop, so no post sees them counted twice or not at all.
        self._pending_bytes -= sum(len(pending.event.body) for pending in group)
        self._mark_healthy()
        stored = stored_bytes = highest = 0
        for pending, seq in zip(group, seqs, strict=True):
            if seq is not None:
                stored += 1
                stored_bytes += len(pending.event.body)
                highest = max(highest, seq)
                self._remember(seq, pending.parsed)
            if not pending.done.done():
                pending.done.set_result(seq)
        if stored:
            self._count(stored, stored_bytes)
            self._highest_seq = max(self._highest_seq, highest)
            self._mark_seqs(time.monotonic(), self._highest_seq, self.config.max_age_secs)
            for listener in list(self._listeners):
                listener()

    def _mark_healthy(self) -> None:
        if self._damaged or self._displaced is not None:
            return  # a commit that was under way when it was found; the probe decides
        # A post's commit can be the first to succeed (while a probe is still running), so
        # both paths say so: the operator who saw the ERROR also sees the recovery.
        if not self.healthy and self.last_error != "not opened yet":
            log.warning("Store can commit again.")
        self.healthy, self.last_error = True, None

    def _mark_unhealthy(self, exc: BaseException) -> None:
        if self.healthy or self.last_error == "not opened yet":
            log.error(
                "Store cannot commit; new posts get 503 until it can.",
                path=str(self.config.path),
                error=str(exc),
            )
        self.healthy, self.last_error = False, str(exc)

    async def probe(self) -> bool:
        """Open the store if it is not open, check it can commit; used by /readyz and the sweep.

        A connection to a damaged store is closed and the store opened again, which checks it
        and salvages it if need be; one whose files were deleted is copied to a new file at the
        path first. Callers that come while a probe runs share its answer.
        """
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe())
        # Shielded: a /readyz client that gives up must not cancel the probe others wait for.
        return await asyncio.shield(self._probing)

    async def _probe(self) -> bool:
        try:
            if self._closing:
                raise StoreUnavailable("the store is closing")
            if self._db is not None:
                with contextlib.suppress(StoreDisplaced):  # noted in `_displaced`
                    await self._with_db(lambda db: db.check_in_place())
            if self._displaced is not None:
                await self._leave_displaced_files()
            elif self._damaged and self._db is not None:
                await self._close_connection()
            if self._db is None:
                await self._open()
            await self._with_db(lambda db: db.check_writable(PROBE_BYTES))
            await self._with_db(lambda db: db.check_in_place())
            await self.forget_old()
        except Exception as exc:
            self._mark_unhealthy(exc)
            return False
        self._mark_healthy()
        # Not healthy after all if a call meanwhile found the new connection damaged or
        # displaced: /readyz must not pass while posts are refused.
        return self.healthy

    async def _open(self) -> None:
        floor = self._highest_seq

        def connect() -> tuple[Database, tuple[int, int], int]:
            database = self._connect()
            try:
                if floor:
                    database.keep_seqs_above(floor)
                return database, database.totals(), database.highest_seq()
            except BaseException:
                database.close()
                raise

        # Not on the store thread: opening checks the whole file, and salvaging or totalling it
        # reads every row, for as long as the store is large. On the store thread that kept the
        # watchdog from its answer, and it killed the daemon halfway through. Meanwhile the
        # store thread refuses every call at once: there is no connection.
        database, (self.events, self.bytes), high = await asyncio.to_thread(connect)
        if self._opened_at is None:  # a reopen (damage, deleted files) keeps seqs and clocks
            self._opened_at = (time.time(), time.monotonic())
            self._seq_at_open = high
            self._seq_marks.append((self._opened_at[1], high))
        self._db = database
        # A new connection, checked as it opened: what was found on the old one is dealt with.
        self._damaged, self._displaced = False, None
        self._checkpoints = asyncio.create_task(
            self._checkpoint_forever(database), name="store-checkpoint"
        )

    async def _close_connection(self) -> None:
        # Let go of it first: a post that came while the checkpointer stops would otherwise be
        # committed into the damaged file being closed, and answered 200.
        database, self._db = self._db, None
        await self._stop_checkpoints()
        if database is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._run(database.close)

    async def _stop_checkpoints(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None

    async def _leave_displaced_files(self) -> None:
        """Move off files that are no longer at the store's path, or say why not.

        When nothing is at the path any more (or the database without its WAL), what this
        connection still sees is copied to a new file there and the connection closed, so
        nothing queued is lost. Another database put there is left alone: posts are refused
        until a restart, and the old file's events are delivered meanwhile.
        """
        database = self._db
        if database is None:
            self._displaced = None
            return
        try:
            await self._run(database.check_in_place)
        except StoreDisplaced as exc:
            displaced = exc
        else:
            self._displaced = None  # the files are back in place
            return
        if displaced.replaced:
            raise StoreUnavailable(
                f"{displaced}. New posts are refused; the events queued in the old file are "
                "still delivered. Restart the daemon to use the new file once "
                "canary_forwarder_store_events is 0, or those left are lost."
            )
        copy = database.path.with_name(f"{DB_NAME}.copy-{time.time_ns()}")
        # No other call reaches the old connection from here, so nothing is written to it once
        # the copy is taken: an ack there would be lost, and its events sent again.
        self._db = None
        await self._stop_checkpoints()
        try:
            # Not on the store thread, for the watchdog (see `_open`); but only once the calls
            # already queued there, which still use this connection, are done.
            await self._run(_no_op)
            commands_out = await asyncio.to_thread(_replace_path_with_copy, database, copy)
        except BaseException:
            self._db = database
            self._checkpoints = asyncio.create_task(
                self._checkpoint_forever(database), name="store-checkpoint"
            )
            raise
        self._displaced = None
        try:
            with contextlib.suppress(sqlite3.Error):
                await self._run(database.close)
            await self._run(lambda: database.set_aside_own_journals(time.time()))
        finally:
            # Only now may a store command open the copy (see `CommandLock`).
            commands_out.release()
        log.error(
            "Store files were deleted while the daemon ran; copied what it still held (queued "
            "events, dead letters, quarantine) into a new file at the path.",
            error=str(displaced),
            path=str(database.path),
            events=self.events,
        )

    async def _checkpoint_forever(self, database: Database) -> None:
        """Every CHECKPOINT_INTERVAL_SECS, check the store is still at its path and checkpoint.

        The check is here so an idle daemon notices a deleted store too, not only its next
        commit. A failing checkpoint (a full disk) is logged once, and its recovery, not every
        second; so is a WAL that a reader holding a snapshot keeps from being reset.
        """
        loop = asyncio.get_running_loop()
        checkpointer: Checkpointer | None = None

        def tick() -> int | None:
            nonlocal checkpointer
            # All three files, whatever the directory shows: what it cannot show (a mount over
            # one of them) is noticed within a tick.
            database.check_in_place(full=True)
            if checkpointer is None:
                checkpointer = Checkpointer(database.path, sync=self.config.sync)
            return checkpointer.checkpoint()

        def close() -> None:
            if checkpointer is not None:
                checkpointer.close()

        failing = False
        stuck = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") as thread:
            try:
                while True:
                    await asyncio.sleep(CHECKPOINT_INTERVAL_SECS)
                    try:
                        wal_bytes = await loop.run_in_executor(thread, tick)
                    except StoreDisplaced as exc:
                        if self._displaced is None:  # the probe says more from here on
                            self._store_failed(exc)
                        continue
                    except Exception as exc:
                        if not failing:
                            log.warning(
                                "WAL checkpoint failed; the WAL grows until one succeeds.",
                                error=str(exc),
                            )
                            failing = True
                        continue
                    if failing:
                        log.info("WAL checkpoints succeed again.")
                        failing = False
                    if wal_bytes is not None and not stuck:
                        log.warning(
                            "The WAL has outgrown its bound and cannot be reset: another "
                            "connection holds a read transaction (a sqlite3 shell, a backup). "
                            "It grows until that transaction ends.",
                            wal_bytes=wal_bytes,
                        )
                    elif wal_bytes is None and stuck:
                        log.info("The WAL could be reset again.")
                    stuck = wal_bytes is not None
            finally:
                # On the thread, after a checkpoint under way: it may have just made one.
                await asyncio.shield(loop.run_in_executor(thread, close))

    # Delivery

    async def fetch(
        self, output: str, limit: int, max_bytes: int, exclude: Collection[int] = ()
    ) -> list[StoredEvent]:
        batch = await self._with_db(lambda db: db.fetch(output, limit, max_bytes, exclude))
        if batch:
            # Another process's events (a replay) may be in a send too.
            self._highest_seq = max(self._highest_seq, batch[-1].seq)
        return batch

    async def ack(self, output: str, seqs: Sequence[int]) -> None:
        self._release(await self._with_db_counted(lambda db: db.ack(output, seqs)))

    async def retry_later(self, output: str, seqs: Sequence[int]) -> None:
        await self._with_db(lambda db: db.retry_later(output, seqs))

    async def dead_letter(self, output: str, reasons: dict[int, str]) -> None:
        now = time.time()
        self._release(await self._with_db_counted(lambda db: db.dead_letter(output, reasons, now)))

    async def expired(self, max_age: float) -> dict[str, list[int]]:
        """Deliveries of events that have waited `max_age` undelivered, by output; the sweep's.

        The wait is measured on the monotonic clock, by seq, for every event committed since
        this process opened the store: a wall clock stepped forward (NTP after boot, a VM
        restored from a snapshot, a wrong date put right) made a whole queue look older than
        the max age at once, and one stepped back kept it a year too long for a year's step.
        An event from before the start has only its wall-clock stamp: its age at the start is
        read from that, against the wall clock at the start, and counted on monotonically.
        """
        if self._opened_at is None:
            raise StoreUnavailable(self.last_error or "store is not open")
        opened_wall, opened_steady = self._opened_at
        now = time.monotonic()
        cutoff = opened_wall + (now - opened_steady) - max_age
        # Every seq up to a mark taken `max_age` ago or earlier was committed by then.
        waited_through = max((seq for at, seq in self._seq_marks if at <= now - max_age), default=0)
        stamped_through = self._seq_at_open

        def find(db: Database) -> tuple[dict[str, list[int]], int]:
            found = db.expired(
                cutoff, stamped_through=stamped_through, waited_through=waited_through
            )
            # Also marks the seqs other processes added (a replay), which no commit here did.
            return found, db.highest_seq()

        found, high = await self._with_db(find)
        self._mark_seqs(time.monotonic(), high, max_age)
        return found

    def _mark_seqs(self, now: float, high: int, max_age: float) -> None:
        """Note that every seq up to `high` was committed by `now` (monotonic), for `expired`."""
        marks = self._seq_marks
        if marks and high <= marks[-1][1]:
            pass
        elif len(marks) > 1 and now - marks[-2][0] < max_age / _SEQ_MARKS_PER_MAX_AGE:
            # Marks closer together than this are not worth their memory over a long max
            # age: moving the newest on instead counts its events from a little later, so
            # they expire that little late, never early.
            marks[-1] = (now, high)
        else:
            marks.append((now, high))
        # Of the marks `max_age` old, only the newest still matters.
        while len(marks) > 1 and marks[1][0] <= now - max_age:
            marks.popleft()

    def _release(self, removed: tuple[int, int]) -> None:
        self._count(-removed[0], -removed[1])

    async def _with_db_counted(self, call: Callable[[Database], T], *, look: bool = False) -> T:
        """`_with_db`, then count in the events other processes added that the call noticed.

        `dead-letters replay` inserts events from its own process; without this, their ack
        would take the totals below what the store holds, down to negative numbers.
        """

        def run(db: Database) -> tuple[T, tuple[int, int]]:
            return call(db), db.added_elsewhere(look=look)

        result, added = await self._with_db(run)
        self._count(*added)
        return result

    def _count(self, events: int, size: int) -> None:
        # Exact as long as only this process and `dead-letters replay` write the store; the
        # floor keeps `max_bytes` and the status line sane should any other writer slip by.
        self.events = max(0, self.events + events)
        self.bytes = max(0, self.bytes + size)

    # Inspection

    async def stats(self) -> StoreStats:
        """The store's figures, with `oldest_since`: when the oldest event started waiting on
        the monotonic clock, as `expired` counts it (so a wall clock step does not move it).

        An event from before this process opened the store waits from its receipt stamp read
        against the wall clock at that open (from the open itself if the stamp is later); a
        later one from the first mark that covers its seq. The marks older than the max age
        are dropped but the newest, so an event that has waited longer than that may show
        less (but more than the max age) until the sweep dead-letters it.
        """
        stamped_through = self._seq_at_open

        def read(db: Database) -> tuple[StoreStats, tuple[float | None, int | None], int]:
            return db.stats(), db.oldest_waiting(stamped_through), db.highest_seq()

        stats, (stamped, first), high = await self._with_db(read)
        if self._opened_at is None:  # never, once a read has succeeded
            return stats
        now = time.monotonic()
        # Also marks the seqs other processes added (a replay), which no commit here did.
        self._mark_seqs(now, high, self.config.max_age_secs)
        opened_wall, opened_steady = self._opened_at
        since: list[float] = []
        if stamped is not None:
            since.append(opened_steady - max(0.0, opened_wall - stamped))
        if first is not None:
            since.append(next((at for at, seq in self._seq_marks if seq >= first), now))
        return dataclasses.replace(stats, oldest_since=min(since, default=None))

    async def dead_letters(self, output: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._with_db(lambda db: db.dead_letters(output, limit))

    async def quarantine(self, body: bytes, reason: str, client: str) -> None:
        quarantine = self.config.quarantine
        try:
            now = time.time()
            await self._with_db(
                lambda db: db.quarantine(
                    body, reason, client, now, quarantine.max_count, quarantine.max_bytes
                )
            )
        except Exception as exc:
            log.warning("Could not quarantine a rejected post.", error=str(exc), reason=reason)

    async def forget_old(self) -> None:
        """Drop dedupe memory past the window; also catches up on events another process added
        while this one neither committed nor acked (an idle daemon, an output down)."""
        now, window = time.time(), self.config.dedupe_window_secs
        await self._with_db_counted(lambda db: db.forget_outside(now, window), look=True)

    async def aclose(self) -> None:
        """Commit what is pending, then close the database.

        The committer finishes the commit it is in and every group still waiting (refused,
        while the connection is damaged or displaced), then ends:
        cancelling it mid-commit would leave those posts waiting for an answer that never comes,
        while their events were committed all the same.
        """
        self._closing = True
        if self._committer is not None:
            self._wakeup.set()
            await self._committer
            self._committer = None
        if self._probing is not None:
            # A probe may be reopening the store; it must not start a checkpointer after this.
            await asyncio.shield(self._probing)
        await self._stop_checkpoints()
        # Let go of it first: a read or an ack queued behind the close gets StoreUnavailable,
        # not a closed connection's error that would report the store failing.
        database, self._db = self._db, None
        if database is not None:
            await self._run(database.close)
        self._executor.shutdown(wait=True)


def _replace_path_with_copy(database: Database, copy: Path) -> CommandLock:
    """Copy what `database` sees to `copy`, then put the copy at its path.

    Returns the `CommandLock` it takes first, to release once `database` is closed and its
    journals set aside; raises BlockingIOError, having done nothing, while a store command has
    the store open.
    """
    commands_out = database.lock_out_commands()
    try:
        database.copy_to(copy)
        database.take_place_of_path(copy)
    except BaseException:
        copy.unlink(missing_ok=True)
        commands_out.release()
        raise
    return commands_out
