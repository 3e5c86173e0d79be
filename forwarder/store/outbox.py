"""The daemon's view of the store: async, group-committed, bounded.

Every database call runs on one dedicated thread, so SQLite sees a single writer and the event
loop never blocks on disk. Ingest requests that arrive while a commit is running wait together
and share the next commit (and its fsync): that is what keeps a durable 200 cheap under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import structlog

from forwarder.events import CanaryEvent
from forwarder.settings import StoreConfig
from forwarder.store.database import (
    Database,
    DeadLetter,
    NewEvent,
    StoreCorrupt,
    StoredEvent,
    StoreStats,
    move_aside,
)

__all__ = ["Outbox", "StoreFull", "StoreUnavailable"]

log = structlog.get_logger("forwarder.store")
T = TypeVar("T")

_MAX_GROUP = 1000


class StoreFull(Exception):
    """The store holds `max_bytes` of undelivered payload; the client should retry later."""


class StoreUnavailable(Exception):
    """The store cannot commit (disk full, read-only, I/O error)."""


@dataclass(slots=True)
class _Pending:
    event: NewEvent
    done: asyncio.Future[int | None]


class Outbox:
    """Open with `Outbox.open`; close with `aclose`. Outputs are named at open and on reload."""

    def __init__(self, config: StoreConfig, database: Database, executor: ThreadPoolExecutor):
        self.config = config
        self._db = database
        self._executor = executor
        self._outputs: tuple[str, ...] = ()
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self.bytes = 0
        self.events = 0
        self.healthy = True
        self.last_error: str | None = None

    @classmethod
    async def open(cls, config: StoreConfig) -> Outbox:
        """Open (or create) the store; a corrupt database is moved aside and a fresh one begun."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()

        def connect() -> Database:
            try:
                return Database(config.path, sync=config.sync)
            except StoreCorrupt as exc:
                moved = move_aside(config.path / "outbox.sqlite3", time.time())
                log.error(
                    "Store was corrupt; moved it aside and started a fresh one.",
                    error=str(exc),
                    moved_to=str(moved),
                )
                return Database(config.path, sync=config.sync)

        try:
            database = await loop.run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        outbox = cls(config, database, executor)
        stats = await outbox.stats()
        outbox.bytes, outbox.events = stats.bytes, stats.events
        outbox._committer = asyncio.create_task(outbox._commit_forever(), name="store-commit")
        return outbox

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def set_outputs(self, names: Iterable[str]) -> None:
        """Which outputs new events are queued for (at start and after a reload)."""
        self._outputs = tuple(names)

    def on_append(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each commit that stored new events (wakes the dispatchers)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # Ingest

    async def append(self, event: CanaryEvent) -> bool:
        """Commit one event durably. False if it duplicates one seen within the dedupe window.

        Raises:
            StoreFull: the byte bound is reached.
            StoreUnavailable: the commit failed; nothing was stored.
        """
        if self.bytes + len(event.raw) > self.config.max_bytes:
            raise StoreFull(f"store holds {self.bytes} bytes of {self.config.max_bytes}")
        pending = _Pending(
            NewEvent(
                event_id=event.id,
                fingerprint=event.fingerprint,
                kind=event.kind.value,
                received_at=event.received_at.timestamp(),
                body=event.raw,
            ),
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(pending)
        self._wakeup.set()
        seq = await pending.done
        return seq is not None

    async def _commit_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group, self._pending = self._pending[:_MAX_GROUP], self._pending[_MAX_GROUP:]
                await self._commit(group)

    async def _commit(self, group: list[_Pending]) -> None:
        try:
            seqs = await self._run(
                self._db.append,
                [p.event for p in group],
                self._outputs,
                self.config.dedupe_window_secs,
            )
        except Exception as exc:
            self._mark_unhealthy(exc)
            for pending in group:
                if not pending.done.done():
                    pending.done.set_exception(StoreUnavailable(str(exc)))
            return
        self.healthy, self.last_error = True, None
        stored = False
        for pending, seq in zip(group, seqs, strict=True):
            if seq is not None:
                stored = True
                self.bytes += len(pending.event.body)
                self.events += 1
            if not pending.done.done():
                pending.done.set_result(seq)
        if stored:
            for listener in list(self._listeners):
                listener()

    def _mark_unhealthy(self, exc: BaseException) -> None:
        if self.healthy:
            log.error("Store cannot commit; new posts get 503.", error=str(exc))
        self.healthy, self.last_error = False, str(exc)

    async def probe(self) -> bool:
        """Check the store can commit again after a failure (used by /readyz)."""
        try:
            await self._run(self._db.forget_before, time.time() - self.config.dedupe_window_secs)
        except Exception as exc:
            self._mark_unhealthy(exc)
            return False
        if not self.healthy:
            log.warning("Store can commit again.")
        self.healthy, self.last_error = True, None
        return True

    # Delivery

    async def fetch(self, output: str, limit: int, max_bytes: int) -> list[StoredEvent]:
        return await self._run(self._db.fetch, output, limit, max_bytes)

    async def ack(self, output: str, seqs: Sequence[int]) -> None:
        self._release(await self._run(self._db.ack, output, seqs))

    async def retry_later(self, output: str, seqs: Sequence[int]) -> None:
        await self._run(self._db.retry_later, output, seqs)

    async def dead_letter(self, output: str, reasons: dict[int, str]) -> None:
        self._release(await self._run(self._db.dead_letter, output, reasons, time.time()))

    async def expired(self, max_age: float) -> dict[str, list[int]]:
        return await self._run(self._db.expired, time.time() - max_age)

    def _release(self, removed: tuple[int, int]) -> None:
        self.events -= removed[0]
        self.bytes -= removed[1]

    # Inspection

    async def stats(self) -> StoreStats:
        return await self._run(self._db.stats)

    async def dead_letters(self, output: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._run(self._db.dead_letters, output, limit)

    async def quarantine(self, body: bytes, reason: str, client: str) -> None:
        quarantine = self.config.quarantine
        try:
            await self._run(
                self._db.quarantine,
                body,
                reason,
                client,
                time.time(),
                quarantine.max_count,
                quarantine.max_bytes,
            )
        except Exception as exc:
            log.warning("Could not quarantine a rejected post.", error=str(exc), reason=reason)

    async def forget_old(self) -> None:
        await self._run(self._db.forget_before, time.time() - self.config.dedupe_window_secs)

    async def aclose(self) -> None:
        """Commit what is pending, then close the database."""
        if self._committer is not None:
            while self._pending:
                group, self._pending = self._pending[:_MAX_GROUP], self._pending[_MAX_GROUP:]
                await self._commit(group)
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
