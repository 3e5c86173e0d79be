from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from forwarder.delivery.dispatcher import Dispatcher, _Outcome, backoff_secs
from forwarder.events import CanaryEvent, parse_event
from forwarder.mappers.base import Mapper, MapperConfig, MappingError, Record
from forwarder.mappers.json import JsonConfig, JsonMapper
from forwarder.outputs.base import (
    Delivered,
    Output,
    OutputConfig,
    Partial,
    Reject,
    Retry,
    RetryConfig,
    SendResult,
    TooLarge,
)
from forwarder.settings import StoreConfig
from forwarder.store.outbox import Outbox, StoreUnavailable
from forwarder.telemetry import metrics


class ScriptedOutput(Output[OutputConfig]):
    """Answers each send with the next scripted result (a function of the batch), then Delivered."""

    def __init__(
        self,
        script: Sequence[Callable[[Sequence[Record]], SendResult]],
        max_backoff_secs: float = 0.02,
    ) -> None:
        super().__init__(
            OutputConfig(
                name="scripted",
                type="scripted",
                batch={"max_events": 10, "timeout_secs": 0},  # type: ignore[arg-type]
                retry={"initial_backoff_secs": 0.01, "max_backoff_secs": max_backoff_secs},  # type: ignore[arg-type]
            )
        )
        self.script = list(script)
        self.batches: list[list[str]] = []
        self.delivered: list[str] = []
        self.changed = asyncio.Condition()

    async def send(self, batch: Sequence[Record]) -> SendResult:
        ids = [str(r.event.payload["N"]) for r in batch]
        result = self.script.pop(0)(batch) if self.script else Delivered()
        async with self.changed:
            self.batches.append(ids)
            if isinstance(result, Delivered):
                self.delivered.extend(ids)
            elif isinstance(result, Partial):
                self.delivered.extend(i for n, i in enumerate(ids) if n not in result.results)
            self.changed.notify_all()
        return result

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10), self.changed:
            await self.changed.wait_for(predicate)


class FussyMapper(Mapper[MapperConfig]):
    def map(self, event: CanaryEvent) -> Record:
        if event.payload["N"] == 2:
            raise MappingError("two is not allowed")
        return Record(event=event, body="ok")


def event(n: int) -> CanaryEvent:
    return parse_event(
        b'{"AlertType": "CanaryIncident", "N": %d}' % n, received_at=datetime.now(UTC)
    )


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(StoreConfig(path=tmp_path))
    box.set_outputs(["scripted"])
    yield box
    await box.aclose()


async def run(
    outbox: Outbox,
    output: ScriptedOutput,
    count: int,
    mapper: Mapper[Any] | None = None,
) -> Dispatcher:
    for n in range(count):
        await outbox.append(event(n))
    dispatcher = Dispatcher(output, mapper or JsonMapper(JsonConfig(type="json")), outbox)
    dispatcher.start()
    return dispatcher


async def test_delivered_batches_are_acked(outbox: Outbox) -> None:
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 25)
    await output.wait_until(lambda: len(output.delivered) == 25)
    await dispatcher.stop(5)
    assert output.delivered == [str(n) for n in range(25)]
    assert max(len(b) for b in output.batches) == 10
    assert (await outbox.stats()).events == 0


async def test_retry_keeps_events_and_sends_them_again(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: Retry("503 busy"), lambda b: Retry("503 busy")])
    dispatcher = await run(outbox, output, 3)
    await output.wait_until(lambda: len(output.delivered) == 3)
    await dispatcher.stop(5)
    assert output.batches == [["0", "1", "2"]] * 3
    assert dispatcher.failures == 0 and dispatcher.failing_since is None


async def test_a_retry_inside_a_backlog_resends_in_order_without_duplicates(
    outbox: Outbox,
) -> None:
    # Full batches: the dispatcher maps one and reads the next while one is on the wire.
    output = ScriptedOutput([lambda b: Delivered(), lambda b: Retry("503 busy")])
    dispatcher = await run(outbox, output, 50)
    await output.wait_until(lambda: len(output.delivered) == 50)
    await dispatcher.stop(5)
    tens = [[str(n) for n in range(start, start + 10)] for start in range(0, 50, 10)]
    assert output.delivered == [str(n) for n in range(50)]
    assert output.batches == [tens[0], tens[1], *tens[1:]]
    assert (await outbox.stats()).events == 0


async def test_reject_dead_letters_with_reason(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: Reject("400 malformed")])
    dispatcher = await run(outbox, output, 2)
    await output.wait_until(lambda: len(output.batches) == 1)
    await dispatcher.stop(5)
    letters = await outbox.dead_letters()
    assert [(d.output, d.reason) for d in letters] == [("scripted", "400 malformed")] * 2
    assert (await outbox.stats()).events == 0


async def test_partial_acks_some_retries_some_dead_letters_one(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: Partial({1: Retry("429"), 2: Reject("400 poison")})])
    dispatcher = await run(outbox, output, 4)
    await output.wait_until(lambda: len(output.delivered) == 3)
    await dispatcher.stop(5)
    assert output.batches == [["0", "1", "2", "3"], ["1"]]
    assert [d.reason for d in await outbox.dead_letters()] == ["400 poison"]


async def test_too_large_halves_the_batch(outbox: Outbox) -> None:
    def too_large_when_big(batch: Sequence[Record]) -> SendResult:
        return TooLarge("413") if len(batch) > 2 else Delivered()

    output = ScriptedOutput([too_large_when_big] * 10)
    dispatcher = await run(outbox, output, 8)
    await output.wait_until(lambda: len(output.delivered) == 8)
    await dispatcher.stop(5)
    halves = [["0", "1"], ["2", "3"]], [["4", "5"], ["6", "7"]]
    assert output.batches == [
        [str(n) for n in range(8)],
        ["0", "1", "2", "3"],
        *halves[0],
        ["4", "5", "6", "7"],
        *halves[1],
    ]
    assert output.delivered == [str(n) for n in range(8)]


async def test_single_event_too_large_is_dead_lettered(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: TooLarge("413")])
    dispatcher = await run(outbox, output, 1)
    await output.wait_until(lambda: len(output.batches) == 1)
    await dispatcher.stop(5)
    assert [d.reason for d in await outbox.dead_letters()] == ["too large even alone: 413"]


async def test_mapping_error_dead_letters_that_event_only(outbox: Outbox) -> None:
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 4, mapper=FussyMapper(MapperConfig(type="fussy")))
    await output.wait_until(lambda: len(output.delivered) == 3)
    await dispatcher.stop(5)
    [letter] = await outbox.dead_letters()
    assert letter.reason == "cannot map to fussy: two is not allowed"


async def test_output_that_raises_is_retried(outbox: Outbox) -> None:
    def boom(batch: Sequence[Record]) -> SendResult:
        raise RuntimeError("bug in output")

    output = ScriptedOutput([boom])
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 1)
        await output.wait_until(lambda: len(output.delivered) == 1)
        await dispatcher.stop(5)
    assert any(entry["event"].startswith("Output raised") for entry in logs)


async def test_operator_action_logs_error_and_keeps_events(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: Retry("401 bad token", operator_action=True)])
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 2)
        await output.wait_until(lambda: len(output.delivered) == 2)
        await dispatcher.stop(5)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors and errors[0]["reason"] == "401 bad token"
    assert await outbox.dead_letters() == []


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
@pytest.mark.parametrize(
    ("retries", "merged"),
    [
        (
            (Retry("503 busy", retry_after=30), Retry("404 no index", operator_action=True)),
            Retry("404 no index", retry_after=30, operator_action=True),
        ),
        (
            (Retry("503 busy"), Retry("429 slow down", retry_after=45)),
            Retry("429 slow down", retry_after=45),
        ),
    ],
    ids=["operator-among-plain", "plain"],
)
def test_the_retries_of_one_batch_merge_alike_in_any_order(
    retries: tuple[Retry, Retry], merged: Retry, reverse: bool
) -> None:
    outcome = _Outcome()
    for seq, retry in enumerate(reversed(retries) if reverse else retries):
        outcome.add_retry([seq], retry)
    assert outcome.retry == merged
    assert outcome.retried == [0, 1]


@pytest.mark.parametrize("operator_first", [False, True], ids=["plain-first", "operator-first"])
async def test_one_item_needing_an_operator_makes_its_batch_log_an_error(
    outbox: Outbox, operator_first: bool
) -> None:
    busy, no_index = Retry("503 busy", retry_after=1), Retry("404 no index", operator_action=True)
    items = {0: no_index, 1: busy} if operator_first else {0: busy, 1: no_index}
    output = ScriptedOutput([lambda b: Partial(items)])
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 2)
        await output.wait_until(lambda: len(output.delivered) == 2)
        await dispatcher.stop(5)
    assert [e["reason"] for e in logs if e["log_level"] == "error"] == ["404 no index"]


async def test_failing_since_is_set_while_failing(outbox: Outbox) -> None:
    def fail(batch: Sequence[Record]) -> SendResult:
        return Retry("down")

    output = ScriptedOutput([fail] * 1000)
    dispatcher = await run(outbox, output, 1)
    await output.wait_until(lambda: len(output.batches) >= 2)
    assert dispatcher.failing_since is not None and dispatcher.last_error == "down"
    await dispatcher.stop(5)
    assert (await outbox.stats()).events == 1


async def test_retry_after_sets_the_wait_before_the_next_send(outbox: Outbox) -> None:
    output = ScriptedOutput([lambda b: Retry("429 slow down", retry_after=45)], 60)
    await outbox.append(event(0))
    dispatcher = Dispatcher(output, JsonMapper(JsonConfig(type="json")), outbox)
    backoffs: asyncio.Queue[float] = asyncio.Queue()
    pause = dispatcher._pause

    async def watched_pause(seconds: float, *, wake_early: bool) -> None:
        if not wake_early:
            backoffs.put_nowait(seconds)
        await pause(seconds, wake_early=wake_early)

    dispatcher._pause = watched_pause  # type: ignore[method-assign]
    dispatcher.start()
    async with asyncio.timeout(10):
        delay = await backoffs.get()
    assert 45 <= delay <= 60  # the server's word, within the configured cap
    assert output.batches == [["0"]]  # nothing is sent again while it waits
    async with asyncio.timeout(5):
        await dispatcher.stop(5)  # and stop does not wait for the back-off to end
    assert (await outbox.stats()).queued == {"scripted": 1}


async def test_stop_leaves_unsent_events_queued(outbox: Outbox) -> None:
    release = asyncio.Event()

    class Stuck(ScriptedOutput):
        async def send(self, batch: Sequence[Record]) -> SendResult:
            await release.wait()
            return Delivered()

    output = Stuck([])
    dispatcher = await run(outbox, output, 3)
    await dispatcher.stop(graceful_secs=0.05)
    assert (await outbox.stats()).queued == {"scripted": 3}


async def test_a_cancelled_stop_takes_the_dispatcher_down_with_it(outbox: Outbox) -> None:
    sending = asyncio.Event()

    class Stuck(ScriptedOutput):
        async def send(self, batch: Sequence[Record]) -> SendResult:
            sending.set()
            await asyncio.Event().wait()
            return Delivered()

    dispatcher = await run(outbox, Stuck([]), 1)
    await asyncio.wait_for(sending.wait(), 5)
    task = dispatcher._task
    assert task is not None
    stopping = asyncio.create_task(dispatcher.stop(graceful_secs=60))
    await asyncio.sleep(0)  # let the stop begin waiting
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # Nobody holds the task any more: left running, it would send after the daemon stopped.
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}
    assert task.cancelled()


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    config = RetryConfig(initial_backoff_secs=1, max_backoff_secs=30)
    samples = [backoff_secs(attempt, config) for attempt in range(1, 12) for _ in range(20)]
    assert all(0 <= s <= 30 for s in samples)
    assert len({round(s, 6) for s in samples}) > 100  # jittered, not a fixed schedule
    assert all(backoff_secs(1, config) <= 1 for _ in range(50))
    assert backoff_secs(1, config, retry_after=12) >= 12
    assert backoff_secs(1, config, retry_after=3600) == 30


async def test_store_read_errors_are_logged_once_per_streak(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder.delivery import dispatcher as module

    monkeypatch.setattr(module, "IDLE_POLL_SECS", 0.01)
    calls = failing_first(outbox, monkeypatch, "fetch", 5, OSError(5, "Input/output error"))
    output = ScriptedOutput([])
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 2)
        await output.wait_until(lambda: len(output.delivered) == 2)
        await dispatcher.stop(5)
    assert len(calls) > 5  # the five failures, then the reads that delivered
    assert [e["event"] for e in logs if e["event"] == "Cannot read the store."] == [
        "Cannot read the store."
    ]


def failing_first(
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    times: int,
    error: Exception | None = None,
) -> list[tuple[Any, ...]]:
    """Make `outbox.<method>` raise `error` (a full disk by default) `times` times, then work;
    returns the arguments of every call."""
    real = getattr(outbox, method)
    calls: list[tuple[Any, ...]] = []

    async def flaky(*args: Any) -> Any:
        calls.append(args)
        if len(calls) <= times:
            raise error or StoreUnavailable("database or disk is full")
        return await real(*args)

    monkeypatch.setattr(outbox, method, flaky)
    return calls


@pytest.fixture
def fast_store_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.delivery import dispatcher as module

    monkeypatch.setattr(module, "STORE_RETRY_SECS", 0.01)


RECORD_FAILED = (
    "Cannot record a send's result in the store; trying again, and sending nothing more meanwhile."
)


@pytest.mark.usefixtures("fast_store_retry")
async def test_an_ack_the_store_cannot_write_is_retried_not_the_send(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = failing_first(outbox, monkeypatch, "ack", times=3)
    output = ScriptedOutput([])
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 3)
        await output.wait_until(lambda: len(output.delivered) == 3)
        for n in range(3, 6):
            await outbox.append(event(n))
        await output.wait_until(lambda: len(output.delivered) == 6)
        await dispatcher.stop(5)
    # Each event reached the destination once: the batch was not sent again while the ack
    # could not be written, and delivery went on once it could.
    assert output.delivered == [str(n) for n in range(6)]
    assert calls[:4] == [calls[0]] * 4
    assert (await outbox.stats()).events == 0
    assert [e["event"] for e in logs].count(RECORD_FAILED) == 1


@pytest.mark.usefixtures("fast_store_retry")
async def test_dead_letters_and_retries_the_store_cannot_write_are_retried(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = failing_first(outbox, monkeypatch, "dead_letter", times=2)
    later = failing_first(outbox, monkeypatch, "retry_later", times=2)
    output = ScriptedOutput([lambda b: Reject("400 malformed"), lambda b: Retry("503 busy")])
    dispatcher = await run(outbox, output, 2)
    # Posted once the first batch is sent, so that it is not in that batch, refused.
    await output.wait_until(lambda: output.batches == [["0", "1"]])
    await outbox.append(event(2))
    await output.wait_until(lambda: output.delivered == ["2"])
    await dispatcher.stop(5)
    assert len(dead) == 3 and len(later) == 3
    assert [d.event_id for d in await outbox.dead_letters()] == [event(0).id, event(1).id]
    assert (await outbox.stats()).events == 0


@pytest.mark.usefixtures("fast_store_retry")
async def test_stop_while_the_store_cannot_record_keeps_the_events_queued(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = failing_first(outbox, monkeypatch, "ack", times=10**6)
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 2)
    await output.wait_until(lambda: len(output.delivered) == 2)
    await asyncio.wait_for(dispatcher.stop(5), 2)
    assert calls, "the ack was tried"
    assert (await outbox.stats()).queued == {"scripted": 2}  # sent again after a restart


class BuggyMapper(Mapper[MapperConfig]):
    def map(self, event: CanaryEvent) -> Record:
        if event.payload["N"] == 1:
            raise KeyError("SourceIP")  # a bug, not a MappingError
        return Record(event=event, body="ok")


async def test_a_mapper_bug_dead_letters_that_event_and_the_rest_flow(outbox: Outbox) -> None:
    output = ScriptedOutput([])
    mapper = BuggyMapper(MapperConfig(type="buggy"))
    with structlog.testing.capture_logs() as logs:
        dispatcher = await run(outbox, output, 3, mapper)
        await output.wait_until(lambda: output.delivered == ["0", "2"])
        await dispatcher.stop(5)
    [letter] = await outbox.dead_letters()
    assert letter.event_id == event(1).id
    assert letter.reason == "buggy mapper failed: KeyError: 'SourceIP'"
    assert [e["log_level"] for e in logs if e["event"] == "Mapper failed on an event."] == ["error"]


async def test_a_dispatcher_that_fails_unexpectedly_starts_again(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder.delivery import dispatcher as module

    monkeypatch.setattr(module, "RESTART_SECS", 0.01)
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 0)
    real_prepare = dispatcher._prepare
    failures = 0

    async def buggy_prepare(batch: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug")
        return await real_prepare(batch)

    monkeypatch.setattr(dispatcher, "_prepare", buggy_prepare)
    with structlog.testing.capture_logs() as logs:
        for n in range(3):
            await outbox.append(event(n))
        await output.wait_until(lambda: len(output.delivered) == 3)
        await dispatcher.stop(5)
    assert failures == 1 and output.delivered == ["0", "1", "2"]
    restarted = "Dispatcher failed unexpectedly; restarting it. Its events stay queued."
    assert [e["event"] for e in logs].count(restarted) == 1


async def test_an_event_parsed_again_keeps_the_fingerprint_ingest_stored(tmp_path: Path) -> None:
    # After a restart (or past the bound of the parsed-event cache) delivery parses the stored
    # body again; the fingerprint comes from the store, not from hashing the payload again.
    # No IncidentHash: its id is its fingerprint.
    stored = dataclasses.replace(event(0), id="f" * 32, fingerprint="f" * 32)
    box = await Outbox.open(StoreConfig(path=tmp_path))
    box.set_outputs(["scripted"])
    await box.append(stored)
    await box.aclose()
    box = await Outbox.open(StoreConfig(path=tmp_path))
    try:
        box.set_outputs(["scripted"])
        assert box.parsed(1) is None
        seen: list[CanaryEvent] = []

        def record(batch: Sequence[Record]) -> SendResult:
            seen.extend(r.event for r in batch)
            return Delivered()

        output = ScriptedOutput([record])
        dispatcher = Dispatcher(output, JsonMapper(JsonConfig(type="json")), box)
        dispatcher.start()
        await output.wait_until(lambda: output.delivered == ["0"])
        await dispatcher.stop(5)
    finally:
        await box.aclose()
    [delivered] = seen
    assert delivered.fingerprint == delivered.id == "f" * 32
    assert delivered.payload == stored.payload


def scripted_metric(name: str, **labels: str) -> float:
    """A sample of the scripted output's metric `name`; 0 before its first increment.

    The registry is process-wide: tests compare a value with the one read before."""
    value = metrics.REGISTRY.get_sample_value(
        f"canary_forwarder_{name}", {"output": "scripted", **labels}
    )
    return 0.0 if value is None else value


async def test_metrics_count_sent_events(outbox: Outbox) -> None:
    sent = scripted_metric("output_sent_events_total")
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 3)
    await output.wait_until(lambda: len(output.delivered) == 3)
    await dispatcher.stop(5)
    assert scripted_metric("output_sent_events_total") - sent == 3


async def test_metrics_count_retried_events_and_failed_sends(outbox: Outbox) -> None:
    retried = scripted_metric("output_retried_events_total")
    failed = scripted_metric("output_failed_sends_total", result="retry")
    output = ScriptedOutput([lambda b: Retry("503 busy")])
    dispatcher = await run(outbox, output, 3)
    await output.wait_until(lambda: len(output.delivered) == 3)
    await dispatcher.stop(5)
    assert scripted_metric("output_retried_events_total") - retried == 3
    assert scripted_metric("output_failed_sends_total", result="retry") - failed == 1


async def test_metrics_count_rejected_events_as_dead_lettered(outbox: Outbox) -> None:
    dead = scripted_metric("output_dead_lettered_events_total", reason="rejected")
    failed = scripted_metric("output_failed_sends_total", result="reject")
    output = ScriptedOutput([lambda b: Reject("400 malformed")])
    dispatcher = await run(outbox, output, 2)
    await output.wait_until(lambda: len(output.batches) == 1)
    await dispatcher.stop(5)
    assert len(await outbox.dead_letters()) == 2
    assert scripted_metric("output_dead_lettered_events_total", reason="rejected") - dead == 2
    assert scripted_metric("output_failed_sends_total", result="reject") - failed == 1


async def test_in_flight_gauge_counts_the_events_of_the_send_under_way(outbox: Outbox) -> None:
    idle = scripted_metric("output_in_flight_events")
    seen: list[tuple[float, int]] = []  # (the gauge, the events in the send) during each send

    def observe(batch: Sequence[Record]) -> SendResult:
        seen.append((scripted_metric("output_in_flight_events"), len(batch)))
        return Delivered()

    output = ScriptedOutput([observe] * 5)
    dispatcher = await run(outbox, output, 3)
    await output.wait_until(lambda: len(output.delivered) == 3)
    for n in range(3, 5):
        await outbox.append(event(n))
    await output.wait_until(lambda: len(output.delivered) == 5)
    await dispatcher.stop(5)
    # The later sends show that each send's events left the gauge when it ended.
    assert seen[0] == (idle + 3, 3)
    assert [gauge - idle for gauge, _ in seen] == [size for _, size in seen]


async def test_every_send_is_timed_whatever_its_result(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each send takes 0.3 s on a clock the test moves, so the histogram's buckets show it.
    now = 1000.0
    monkeypatch.setattr(time, "perf_counter", lambda: now)

    def taking_300ms(result: SendResult) -> Callable[[Sequence[Record]], SendResult]:
        def send(batch: Sequence[Record]) -> SendResult:
            nonlocal now
            now += 0.3
            return result

        return send

    def latency() -> dict[str, float]:
        name = "output_send_duration_seconds"
        return {
            "count": scripted_metric(f"{name}_count"),
            "sum": scripted_metric(f"{name}_sum"),
            "le 0.25": scripted_metric(f"{name}_bucket", le="0.25"),
            "le 0.5": scripted_metric(f"{name}_bucket", le="0.5"),
        }

    before = latency()
    output = ScriptedOutput([taking_300ms(Retry("503 busy")), taking_300ms(Delivered())])
    dispatcher = await run(outbox, output, 1)
    await output.wait_until(lambda: len(output.delivered) == 1)
    await dispatcher.stop(5)
    after = latency()
    changes = {key: round(after[key] - before[key], 6) for key in before}
    assert changes == {"count": 2, "sum": 0.6, "le 0.25": 0, "le 0.5": 2}


class TickRecordingMapper(Mapper[MapperConfig]):
    """Notes, at each event it maps, how often the event loop has run other tasks so far."""

    def __init__(self, ticks: Callable[[], int]) -> None:
        super().__init__(MapperConfig(type="json"))
        self.ticks = ticks
        self.seen: list[int] = []

    def map(self, event: CanaryEvent) -> Record:
        self.seen.append(self.ticks())
        return Record(event=event, body="ok")


async def test_mapping_a_batch_lets_the_event_loop_run_between_slices(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A big batch mapped in one go would hold every webhook post waiting for its 200.
    from forwarder.delivery import dispatcher as module

    monkeypatch.setattr(module, "MAP_SLICE_SECS", 0.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    mapper = TickRecordingMapper(lambda: ticks)
    output = ScriptedOutput([])
    dispatcher = await run(outbox, output, 10, mapper)
    await output.wait_until(lambda: len(output.delivered) == 10)
    await dispatcher.stop(5)
    ticking.cancel()
    assert output.batches == [[str(n) for n in range(10)]]
    # Each event of the one batch was mapped after the loop had run the ticker again.
    assert all(later > earlier for earlier, later in itertools.pairwise(mapper.seen))
