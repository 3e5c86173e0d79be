"""`Outbox.responsive`: whether the store thread still runs work, for the systemd watchdog."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import pytest

from forwarder.settings import StoreConfig
from forwarder.store.database import Database, StoreStats
from forwarder.store.outbox import Outbox

P = ParamSpec("P")
T = TypeVar("T")

# Bounds a wait the test expects to end at once; only a broken build waits this long.
PATIENCE_SECS = 5.0
# What a stuck thread is given to answer: short, as the answer is known to be no.
SHORT_SECS = 0.05


class RecordingExecutor(ThreadPoolExecutor):
    """The store's one thread, counting what is handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="store-test")
        self.submitted: list[Callable[..., object]] = []

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self.submitted.append(fn)
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds the store thread while unset; set at the end so no test leaves a thread hanging."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
async def bare_outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, RecordingExecutor]]:
    """An outbox never opened: `responsive` needs the thread only, not the database."""
    executor = RecordingExecutor()
    outbox = Outbox(StoreConfig(path=tmp_path / "state"), executor)
    yield outbox, executor
    await outbox.aclose()


async def test_an_idle_store_thread_is_responsive(
    bare_outbox: tuple[Outbox, RecordingExecutor],
) -> None:
    outbox, executor = bare_outbox
    assert await asyncio.wait_for(outbox.responsive(PATIENCE_SECS), PATIENCE_SECS) is True
    assert await outbox.responsive(PATIENCE_SECS) is True
    # One no-op per call once the last one has run: nothing is held back needlessly.
    assert len(executor.submitted) == 2
    assert not outbox.available  # the database was never opened for it


async def test_a_stuck_store_thread_is_not_responsive_and_holds_one_no_op(
    bare_outbox: tuple[Outbox, RecordingExecutor], gate: threading.Event
) -> None:
    outbox, executor = bare_outbox
    executor.submit(gate.wait, PATIENCE_SECS * 4)
    ours = len(executor.submitted)

    # The outer bound fails the test, instead of hanging it, should `responsive` ignore its own.
    assert await asyncio.wait_for(outbox.responsive(SHORT_SECS), PATIENCE_SECS) is False
    assert await asyncio.wait_for(outbox.responsive(SHORT_SECS), PATIENCE_SECS) is False
    assert len(executor.submitted) == ours + 1

    gate.set()
    # The no-op still queued answers: the thread is back, and no other one was needed.
    assert await asyncio.wait_for(outbox.responsive(PATIENCE_SECS), PATIENCE_SECS) is True
    assert len(executor.submitted) == ours + 1


async def test_a_store_thread_stuck_in_a_database_call_is_not_responsive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    outbox = await Outbox.open(StoreConfig(path=tmp_path / "state"), ["a"])
    entered = threading.Event()
    original = Database.stats

    def stuck(self: Database) -> StoreStats:
        entered.set()
        gate.wait(PATIENCE_SECS * 4)
        return original(self)

    monkeypatch.setattr(Database, "stats", stuck)
    try:
        stats = asyncio.create_task(outbox.stats())
        assert await asyncio.to_thread(entered.wait, PATIENCE_SECS)
        assert await asyncio.wait_for(outbox.responsive(SHORT_SECS), PATIENCE_SECS) is False
        # `healthy` says nothing about the thread: no commit has failed.
        assert outbox.healthy

        gate.set()
        assert await outbox.responsive(PATIENCE_SECS) is True
        await asyncio.wait_for(stats, PATIENCE_SECS)
    finally:
        gate.set()
        await outbox.aclose()


async def test_a_closed_store_is_not_responsive(tmp_path: Path) -> None:
    outbox = await Outbox.open(StoreConfig(path=tmp_path / "state"), ["a"])
    await outbox.aclose()
    assert await asyncio.wait_for(outbox.responsive(PATIENCE_SECS), PATIENCE_SECS) is False
