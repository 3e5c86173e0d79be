"""The store on a host whose wall clock jumps: NTP stepping it after boot, a VM restored from a
snapshot, an operator fixing a wrong date. The outbox's clocks are faked; nothing sleeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from forwarder.store import outbox as outbox_module
from forwarder.store.outbox import Outbox
from forwarder.telemetry import metrics
from tests.store.fake_time import FakeTime
from tests.store.helpers import event, open_outbox

DAY = 86_400.0
YEAR = 365 * DAY
WEEK = 7 * DAY  # store.max_age_secs by default
JUMPS = {"+1 year": YEAR, "+8 days": 8 * DAY, "-1 day": -DAY, "-1 year": -YEAR}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(outbox_module, "time", fake)
    return fake


async def queue(outbox: Outbox, clock: FakeTime, count: int = 3) -> list[int]:
    for n in range(count):
        assert await outbox.append(event(n, received_at=clock.now()))
    return [stored.seq for stored in await outbox.fetch("a", 100, 1 << 20)]


# store.max_age_secs


@pytest.mark.parametrize("jump", [YEAR, 8 * DAY], ids=["+1 year", "+8 days"])
async def test_a_forward_jump_does_not_age_the_queue_into_dead_letters(
    tmp_path: Path, clock: FakeTime, jump: float
) -> None:
    outbox = await open_outbox(tmp_path)
    seqs = await queue(outbox, clock)
    assert await outbox.expired(WEEK) == {}  # the sweep, every minute
    clock.wait(3600)
    clock.jump(jump)
    assert await outbox.expired(WEEK) == {}
    # They still expire once they have really waited the week.
    clock.wait(WEEK - 3600 - 1)
    assert await outbox.expired(WEEK) == {}
    clock.wait(120)
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


@pytest.mark.parametrize("jump", [-DAY, -YEAR], ids=["-1 day", "-1 year"])
async def test_a_backward_jump_does_not_keep_the_queue_past_max_age(
    tmp_path: Path, clock: FakeTime, jump: float
) -> None:
    outbox = await open_outbox(tmp_path)
    seqs = await queue(outbox, clock)
    assert await outbox.expired(WEEK) == {}
    clock.jump(jump)
    clock.wait(WEEK - 60)
    assert await outbox.expired(WEEK) == {}
    clock.wait(180)
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


async def test_events_posted_after_a_jump_age_from_their_commit(
    tmp_path: Path, clock: FakeTime
) -> None:
    outbox = await open_outbox(tmp_path)
    clock.jump(-YEAR)
    seqs = await queue(outbox, clock)
    clock.jump(YEAR)  # the operator puts the date right again
    assert await outbox.expired(WEEK) == {}
    clock.wait(WEEK + 120)
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


@pytest.mark.parametrize("jump", JUMPS.values(), ids=JUMPS.keys())
async def test_events_from_before_a_restart_age_from_their_stamps_then_monotonically(
    tmp_path: Path, clock: FakeTime, jump: float
) -> None:
    before = await open_outbox(tmp_path)
    seqs = await queue(before, clock)
    await before.aclose()
    clock.wait(3 * DAY)  # the daemon was down three days
    outbox = await open_outbox(tmp_path)
    assert await outbox.expired(WEEK) == {}
    clock.jump(jump)
    assert await outbox.expired(WEEK) == {}
    clock.wait(4 * DAY - 60)
    assert await outbox.expired(WEEK) == {}
    clock.wait(120)
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


async def test_events_older_than_max_age_at_start_expire_at_the_first_sweep(
    tmp_path: Path, clock: FakeTime
) -> None:
    before = await open_outbox(tmp_path)
    seqs = await queue(before, clock)
    await before.aclose()
    clock.wait(WEEK + 60)  # down for more than the max age: only the wall clock can say so
    outbox = await open_outbox(tmp_path)
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


async def test_no_event_expires_early_and_the_marks_stay_few(
    tmp_path: Path, clock: FakeTime
) -> None:
    max_age, commit_every, sweep_every = 2.0, 0.0005, 0.0025
    outbox = await open_outbox(tmp_path, max_age_secs=max_age, sync="normal")
    committed: list[float] = [0.0]  # by seq: seqs start at 1 in a new store
    waited: list[float] = []
    for step in range(5000):
        clock.wait(commit_every)  # four commits to each mark worth keeping
        assert await outbox.append(event(step, received_at=clock.now()))
        committed.append(clock.steady)
        if step % round(sweep_every / commit_every) == 0:
            found = (await outbox.expired(max_age)).get("a", [])
            waited += [clock.steady - committed[seq] for seq in found]
            await outbox.dead_letter("a", dict.fromkeys(found, "expired"))
    assert len(waited) > 900
    # Late by at most a mark's spacing and a sweep's interval, never early.
    assert min(waited) >= max_age - 1e-9
    assert max(waited) <= max_age + max_age / 1024 + sweep_every + 1e-9
    assert len(outbox._seq_marks) <= 2 * 1024 + 2  # of the 4000 commits within the max age
    await outbox.aclose()


# canary_forwarder_store_oldest_event_age_seconds, which alerts watch


@pytest.fixture
def scrape(clock: FakeTime, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What a scrape reports as the oldest event's age, read as /metrics reads it."""
    monkeypatch.setattr(metrics, "time", clock)
    # The per-output series are not looked at here, and would stay in the shared registry.
    monkeypatch.setattr(metrics, "track_outputs", lambda configured, queued: None)

    async def age(outbox: Outbox) -> float | None:
        pipeline: Any = SimpleNamespace(outbox=outbox, dispatchers=[])
        await metrics.StoreReader().refresh(pipeline, 5.0)
        return metrics.REGISTRY.get_sample_value("canary_forwarder_store_oldest_event_age_seconds")

    return age


@pytest.mark.parametrize("jump", JUMPS.values(), ids=JUMPS.keys())
async def test_the_oldest_age_does_not_jump_with_the_clock(
    tmp_path: Path, clock: FakeTime, scrape: Any, jump: float
) -> None:
    """Computed from the wall clock, a step forward fired the age alerts at once, and one back
    read 0 (or below) for as long as the step, with a queue an hour old."""
    outbox = await open_outbox(tmp_path)
    seqs = await queue(outbox, clock)
    clock.wait(3600)
    assert await scrape(outbox) == 3600
    clock.jump(jump)
    assert await scrape(outbox) == 3600
    # It passes the max age as the sweep dead-letters the events, not before.
    clock.wait(WEEK - 3600 - 60)
    assert await scrape(outbox) == WEEK - 60
    assert await outbox.expired(WEEK) == {}
    clock.wait(120)
    assert await scrape(outbox) == WEEK + 60
    assert await outbox.expired(WEEK) == {"a": seqs}
    await outbox.aclose()


async def test_the_oldest_age_of_events_posted_after_a_jump_counts_from_their_commit(
    tmp_path: Path, clock: FakeTime, scrape: Any
) -> None:
    outbox = await open_outbox(tmp_path)
    clock.jump(-YEAR)
    await queue(outbox, clock)
    clock.jump(YEAR)  # the operator puts the date right again
    clock.wait(60)
    assert await scrape(outbox) == 60
    await outbox.aclose()


async def restarted(tmp_path: Path, clock: FakeTime, meanwhile: Callable[[], None]) -> Outbox:
    """An outbox started again after three events were queued and `meanwhile` happened."""
    before = await open_outbox(tmp_path)
    await queue(before, clock)
    await before.aclose()
    meanwhile()
    return await open_outbox(tmp_path)


@pytest.mark.parametrize("jump", JUMPS.values(), ids=JUMPS.keys())
async def test_the_oldest_age_from_before_a_restart_counts_on_from_its_stamp(
    tmp_path: Path, clock: FakeTime, scrape: Any, jump: float
) -> None:
    outbox = await restarted(tmp_path, clock, lambda: clock.wait(3 * DAY))  # down three days
    assert await queue(outbox, clock, 1)  # and a new post since
    clock.jump(jump)
    clock.wait(60)
    # Stamps are floats of the epoch: a microsecond or so off.
    assert await scrape(outbox) == pytest.approx(3 * DAY + 60, abs=1e-3)
    await outbox.aclose()


async def test_the_oldest_age_of_events_stamped_ahead_of_the_clock_counts_from_the_start(
    tmp_path: Path, clock: FakeTime, scrape: Any
) -> None:
    """The clock was set back while the daemon was down: the stamps are in the future. The age
    counts from the start, as store.max_age_secs does, and is never below 0."""
    outbox = await restarted(tmp_path, clock, lambda: clock.jump(-DAY))
    assert await scrape(outbox) == 0
    clock.wait(60)
    assert await scrape(outbox) == 60
    await outbox.aclose()


# store.dedupe_window_secs (600 s by default)


@pytest.mark.parametrize("jump", [-DAY, -YEAR], ids=["-1 day", "-1 year"])
async def test_a_backward_jump_does_not_stretch_the_dedupe_window(
    tmp_path: Path, clock: FakeTime, jump: float
) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1, received_at=clock.now()))
    clock.jump(jump)
    clock.wait(3600)  # an hour later the same post is new again
    assert await outbox.append(event(1, received_at=clock.now()))
    assert (await outbox.stats()).events == 2
    await outbox.aclose()


async def test_the_dedupe_window_does_not_come_back_when_the_clock_catches_up(
    tmp_path: Path, clock: FakeTime
) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1, received_at=clock.now()))
    clock.jump(-DAY)
    await outbox.forget_old()  # the sweep, every minute
    clock.wait(DAY)  # the wall clock reads what it read at the first post, a day later
    assert await outbox.append(event(1, received_at=clock.now()))
    await outbox.aclose()


@pytest.mark.parametrize("jump", [-1.0, 1.0], ids=["-1 s", "+1 s"])
async def test_a_small_step_keeps_the_dedupe_window(
    tmp_path: Path, clock: FakeTime, jump: float
) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1, received_at=clock.now()))
    clock.jump(jump)
    await outbox.forget_old()
    clock.wait(0.2)
    assert not await outbox.append(event(1, received_at=clock.now()))
    await outbox.aclose()
