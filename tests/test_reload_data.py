"""What a reload does to the data: which output gets which event, in which format, once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
import yaml

from forwarder.cli import run as run_module
from forwarder.events import CanaryEvent, parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import HealthcheckError, Retry, SendResult
from forwarder.outputs.memory import MemoryOutput
from forwarder.pipeline import Pipeline, ReloadError
from forwarder.settings import Settings
from forwarder.store import outbox as outbox_module
from forwarder.store.database import StoreStats
from tests.daemon.harness import wait_until, wait_until_async
from tests.helpers import memory_output
from tests.store.fake_time import FakeTime
from tests.test_pipeline import MEM, append, event


def numbers(records: Sequence[Record]) -> list[int]:
    return [record.event.payload["N"] for record in records]


async def test_a_batch_prepared_behind_the_send_in_flight_goes_in_the_new_format(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old output finishes the send it is in; the batch it prepared behind that send is
    left to the new output. Before, the old one sent it too, in JSON after the reload to CEF."""
    one_by_one = {**MEM, "name": "mem", "batch": {"timeout_secs": 0, "max_events": 1}}
    pipeline = await Pipeline.start(make_settings(outputs=[{**one_by_one, "format": "json"}]))
    old = memory_output(pipeline)
    dispatcher = pipeline.dispatchers[0]
    sending, release = asyncio.Event(), asyncio.Event()
    mapped: list[int] = []

    async def held_send(batch: Sequence[Record]) -> SendResult:
        sending.set()
        await release.wait()
        return await MemoryOutput.send(old, batch)

    real_map = dispatcher.mapper.map

    def map_and_note(event: CanaryEvent) -> Record:
        mapped.append(event.payload["N"])
        return real_map(event)

    monkeypatch.setattr(old, "send", held_send)
    monkeypatch.setattr(dispatcher.mapper, "map", map_and_note)
    # One commit: the dispatcher reads event 1, and event 2 behind it while 1 is sent.
    await asyncio.gather(append(pipeline, 1), append(pipeline, 2))
    await asyncio.wait_for(sending.wait(), 10)
    await wait_until(lambda: 2 in mapped, timeout=10, what="event 2 mapped behind the send")
    reload = asyncio.create_task(
        pipeline.reload(make_settings(outputs=[{**one_by_one, "format": "cef"}]), 10)
    )
    await wait_until(lambda: dispatcher._stopping.is_set(), timeout=10, what="the old one stopping")
    release.set()
    await asyncio.wait_for(reload, 10)
    assert numbers(old.records) == [1]
    new = memory_output(pipeline)
    records = await asyncio.wait_for(new.wait_for(1), 10)
    assert numbers(records) == [2]
    assert isinstance(records[0].body, str) and records[0].body.startswith("CEF:")
    await pipeline.stop(1)


# Backoff and /readyz across a reload


def failing_first(retry: Retry) -> Callable[[MemoryOutput, Sequence[Record]], Any]:
    """A MemoryOutput.send that answers `retry` to the first send of all, then delivers."""
    sends: list[float] = []
    deliver = MemoryOutput.send  # taken before the test patches it in

    async def send(self: MemoryOutput, batch: Sequence[Record]) -> SendResult:
        sends.append(time.monotonic())
        if len(sends) == 1:
            return retry
        return await deliver(self, batch)

    send.sends = sends  # type: ignore[attr-defined]
    return send


async def test_an_unchanged_output_keeps_its_failure_streak_and_its_wait(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that leaves an output as it was leaves /readyz's clock and the wait the
    destination asked for alone. Before, the reload reset both: the new output sent at once, and
    a SIGHUP every few minutes kept a dead output from ever failing /readyz."""
    send = failing_first(Retry("busy", retry_after=0.3))
    monkeypatch.setattr(MemoryOutput, "send", send)
    spec = {**MEM, "name": "mem", "retry": {"initial_backoff_secs": 0.01}}
    pipeline = await Pipeline.start(make_settings(outputs=[spec]))
    await append(pipeline, 1)
    since = await wait_until(
        lambda: pipeline.dispatchers[0].failing_since, timeout=10, what="the send to fail"
    )
    await pipeline.reload(make_settings(outputs=[spec]), 5)
    assert pipeline.dispatchers[0].failing_since == since
    assert pipeline.failing_outputs(-1) == {"mem": "busy"}
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    first, second = send.sends  # type: ignore[attr-defined]
    assert second - first >= 0.3
    await wait_until(
        lambda: not pipeline.failing_outputs(-1), timeout=10, what="the delivery to clear it"
    )
    await pipeline.stop(1)


async def test_a_changed_output_starts_afresh(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryOutput, "send", failing_first(Retry("busy", retry_after=3600)))
    spec = {**MEM, "name": "mem", "retry": {"max_backoff_secs": 3600}}
    pipeline = await Pipeline.start(make_settings(outputs=[spec]))
    await append(pipeline, 1)
    await wait_until(lambda: pipeline.failing_outputs(-1), timeout=10, what="the send to fail")
    changed = {**spec, "retry": {"max_backoff_secs": 3000}}
    await pipeline.reload(make_settings(outputs=[changed]), 5)
    assert pipeline.failing_outputs(-1) == {}
    # Within the test's timeout, not the hour the old configuration was waiting.
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    await pipeline.stop(1)


async def test_a_reload_does_not_keep_an_output_that_needs_an_operator_waiting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload may be the operator's fix (a renewed certificate file, the configuration
    unchanged): the new output tries at once, and /readyz still counts from the first failure."""
    refused = Retry("HEC token disabled", operator_action=True)
    monkeypatch.setattr(MemoryOutput, "send", failing_first(refused))
    spec = {**MEM, "name": "mem", "retry": {"max_backoff_secs": 3600}}
    pipeline = await Pipeline.start(make_settings(outputs=[spec]))
    await append(pipeline, 1)
    since = await wait_until(
        lambda: pipeline.dispatchers[0].failing_since, timeout=10, what="the send to fail"
    )
    await pipeline.reload(make_settings(outputs=[spec]), 5)
    assert pipeline.dispatchers[0].failing_since == since
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    await pipeline.stop(1)


async def test_a_failing_healthcheck_stands_for_an_unchanged_output_only(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(self: MemoryOutput) -> None:
        raise HealthcheckError("connection refused")

    monkeypatch.setattr(MemoryOutput, "liveness", unreachable)
    kept, changed = {**MEM, "name": "kept"}, {**MEM, "name": "changed"}
    pipeline = await Pipeline.start(make_settings(outputs=[kept, changed]))
    await pipeline.check_outputs()
    assert set(pipeline.failing_outputs(-1)) == {"kept", "changed"}
    await pipeline.reload(make_settings(outputs=[kept, {**changed, "format": "cef"}]), 5)
    assert pipeline.failing_outputs(-1) == {"kept": "healthcheck: connection refused"}
    await pipeline.stop(1)


async def test_a_healthcheck_of_a_replaced_output_does_not_count_for_its_successor(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 30-second check of an output that a reload closes under it fails, as likely as not;
    before, that failure was logged and counted against the new output of the same name."""
    checking, closed = asyncio.Event(), asyncio.Event()

    async def liveness(self: MemoryOutput) -> None:
        checking.set()
        await closed.wait()
        raise HealthcheckError("session closed")

    async def aclose(self: MemoryOutput) -> None:
        closed.set()

    monkeypatch.setattr(MemoryOutput, "liveness", liveness)
    monkeypatch.setattr(MemoryOutput, "aclose", aclose)
    pipeline = await Pipeline.start(make_settings())
    check = asyncio.create_task(pipeline.check_outputs())
    await asyncio.wait_for(checking.wait(), 10)
    with structlog.testing.capture_logs() as logs:
        await pipeline.reload(make_settings(), 5)
        await asyncio.wait_for(check, 10)
    assert pipeline.failing_outputs(-1) == {}
    assert not [e for e in logs if e["log_level"] == "warning"]
    await pipeline.stop(1)


async def test_a_store_that_cannot_list_orphans_does_not_make_a_reload_look_refused(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orphan check runs once the new outputs are in place; before, its failure raised out
    of the reload, and `run` logged that the old configuration kept running when it did not."""
    pipeline = await Pipeline.start(make_settings())

    async def unreadable() -> StoreStats:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(pipeline.outbox, "stats", unreadable)
    with structlog.testing.capture_logs() as logs:
        await pipeline.reload(make_settings(outputs=[{**MEM, "name": "second"}]), 5)
    assert [d.name for d in pipeline.dispatchers] == ["second"]
    assert "Configuration reloaded." in [e["event"] for e in logs]
    await append(pipeline, 1)
    await asyncio.wait_for(memory_output(pipeline, "second").wait_for(1), 10)
    await pipeline.stop(1)


# What is sound, kept so


async def test_posts_during_a_reload_go_to_the_old_set_or_the_new_one_whole(
    make_settings: Callable[..., Settings],
) -> None:
    """Each post is queued for the outputs of one configuration: an output kept gets it once,
    and it goes to either the removed output or the added one, never both or neither.

    Which one is the commit's: a group commit already under way at the swap (at most one) was
    given the old outputs, and the reload's warning about orphaned queues comes after it."""
    pipeline = await Pipeline.start(
        make_settings(outputs=[{**MEM, "name": "keep"}, {**MEM, "name": "gone"}])
    )
    keep_old, gone = memory_output(pipeline, "keep"), memory_output(pipeline, "gone")
    posted: list[int] = []
    reloaded = asyncio.Event()

    async def post_until_reloaded() -> None:
        while not reloaded.is_set() or len(posted) < 20:
            await asyncio.gather(*(append(pipeline, len(posted) + k) for k in range(5)))
            posted.extend(range(len(posted), len(posted) + 5))

    posting = asyncio.create_task(post_until_reloaded())
    await wait_until(lambda: len(posted) >= 10, timeout=10, what="posts before the reload")
    await pipeline.reload(
        make_settings(outputs=[{**MEM, "name": "keep"}, {**MEM, "name": "new"}]), 5
    )
    reloaded.set()
    await asyncio.wait_for(posting, 10)
    keep_new, new = memory_output(pipeline, "keep"), memory_output(pipeline, "new")

    async def delivered() -> bool:
        queued = (await pipeline.outbox.stats()).queued
        return not queued.get("keep") and not queued.get("new")

    await wait_until_async(delivered, timeout=10, what="keep and new to deliver their queues")
    assert sorted(numbers(keep_old.records + keep_new.records)) == posted
    left_for_gone = await pipeline.outbox.fetch("gone", 10**6, 10**9)
    to_gone = numbers(gone.records) + [orjson.loads(e.body)["N"] for e in left_for_gone]
    to_new = numbers(new.records)
    assert not set(to_gone) & set(to_new)
    assert sorted(to_gone + to_new) == posted
    await pipeline.stop(1)


async def test_a_removed_output_keeps_its_queue_which_ages_or_waits_for_its_return(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    monkeypatch.setattr(outbox_module, "time", clock)
    store = {"path": str(make_settings().store.path), "max_age_secs": 60}
    both = [{**MEM, "name": "mem"}, {**MEM, "name": "gone"}]
    pipeline = await Pipeline.start(make_settings(store=store, outputs=both))
    await pipeline.dispatchers[1].stop(1)  # "gone" delivers nothing from here on
    old = parse_event(event(1), received_at=clock.now())
    assert await pipeline.outbox.append(old)
    clock.wait(61)
    await append(pipeline, 2)
    await asyncio.wait_for(memory_output(pipeline).wait_for(2), 10)
    with structlog.testing.capture_logs() as logs:
        await pipeline.reload(make_settings(store=store, outputs=both[:1]), 5)
    assert {"output": "gone", "queued": 2}.items() <= logs[0].items()
    assert (await pipeline.outbox.stats()).queued == {"gone": 2}
    await pipeline.sweep()
    [letter] = await pipeline.outbox.dead_letters()
    assert (letter.output, letter.reason) == ("gone", "expired: not delivered within 60 s")
    await pipeline.reload(make_settings(store=store, outputs=both), 5)
    records = await asyncio.wait_for(memory_output(pipeline, "gone").wait_for(1), 10)
    assert numbers(records) == [2]
    await pipeline.stop(1)


async def test_a_reload_whose_second_output_cannot_start_changes_nothing(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    closed: list[str] = []

    async def aclose(self: MemoryOutput) -> None:
        closed.append(self.name)

    monkeypatch.setattr(MemoryOutput, "aclose", aclose)
    pipeline = await Pipeline.start(make_settings())
    running = list(pipeline.dispatchers)
    await running[0].stop(1)  # events stay queued for "mem"
    await append(pipeline, 1)
    broken = {"name": "file", "type": "file", "path": str(tmp_path / "no-such-dir" / "x")}
    with pytest.raises(ReloadError):
        await pipeline.reload(make_settings(outputs=[{**MEM, "name": "first"}, broken]), 5)
    assert closed == ["first"]  # the one that had started is closed again
    assert pipeline.dispatchers == running
    await append(pipeline, 2)  # still queued for "mem" alone
    assert (await pipeline.outbox.stats()).queued == {"mem": 2}
    await pipeline.stop(1)


async def test_changes_under_store_and_listen_wait_for_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    pipeline = await Pipeline.start(settings)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 9999},
                "store": {"path": str(tmp_path / "elsewhere"), "max_age_secs": 60},
                "outputs": [{**MEM, "name": "second"}],
            }
        )
    )
    with structlog.testing.capture_logs() as logs:
        assert await run_module._reload(pipeline, config, 5)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "Changes under `listen` take effect at the next restart.",
        "Changes under `store` take effect at the next restart.",
    ]
    assert pipeline.settings.store == settings.store == pipeline.outbox.config
    assert pipeline.settings.listen == settings.listen
    assert [d.name for d in pipeline.dispatchers] == ["second"]
    await pipeline.stop(1)
