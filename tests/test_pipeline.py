from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from forwarder import pipeline as pipeline_module
from forwarder.events import parse_event
from forwarder.outputs.base import HealthcheckError
from forwarder.outputs.memory import MemoryOutput
from forwarder.pipeline import Pipeline, ReloadError
from forwarder.settings import Settings
from forwarder.store import outbox as outbox_module
from forwarder.telemetry.metrics import REGISTRY
from tests.daemon.harness import read_jsonl, wait_until
from tests.helpers import memory_output, sample
from tests.store.fake_time import FakeTime

MEM = {"type": "memory", "batch": {"timeout_secs": 0}}


def event(n: int) -> bytes:
    return b'{"AlertType": "CanaryIncident", "N": %d}' % n


async def append(pipeline: Pipeline, n: int) -> None:
    stored = await pipeline.outbox.append(parse_event(event(n), received_at=datetime.now(UTC)))
    assert stored


async def stall(pipeline: Pipeline) -> None:
    """Stop every dispatcher: the outputs never deliver again and events stay queued."""
    for dispatcher in pipeline.dispatchers:
        await dispatcher.stop(1)


def numbers_in(path: Path) -> list[int]:
    """The `N` of each event a file output wrote to `path`, in order."""
    return [record["payload"]["N"] for record in read_jsonl(path)]


async def test_reload_adds_an_output_and_keeps_the_queue(
    make_settings: Callable[..., Settings],
) -> None:
    pipeline = await Pipeline.start(make_settings())
    await stall(pipeline)  # events queue up for the old output
    await append(pipeline, 1)
    await pipeline.reload(
        make_settings(outputs=[{**MEM, "name": "mem"}, {**MEM, "name": "second"}]), 1
    )
    await append(pipeline, 2)
    first = await asyncio.wait_for(memory_output(pipeline, "mem").wait_for(2), 10)
    second = await asyncio.wait_for(memory_output(pipeline, "second").wait_for(1), 10)
    assert [r.event.payload["N"] for r in first] == [1, 2]
    assert [r.event.payload["N"] for r in second] == [2]  # only events after the reload
    await pipeline.stop(1)


async def test_reload_that_cannot_start_keeps_the_old_outputs(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    pipeline = await Pipeline.start(make_settings())
    broken = make_settings(
        outputs=[{"name": "f", "type": "file", "path": str(tmp_path / "missing-dir" / "x")}]
    )
    with pytest.raises(ReloadError):
        await pipeline.reload(broken, 1)
    assert [d.name for d in pipeline.dispatchers] == ["mem"]
    await append(pipeline, 7)
    records = await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    assert records[0].event.payload["N"] == 7
    await pipeline.stop(1)


async def test_sweep_dead_letters_expired_events(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    monkeypatch.setattr(outbox_module, "time", clock)
    settings = make_settings(store={"path": str(make_settings().store.path), "max_age_secs": 60})
    pipeline = await Pipeline.start(settings)
    await stall(pipeline)
    old = parse_event(sample("incident_ftp_login"), received_at=clock.now())
    assert await pipeline.outbox.append(old)
    clock.wait(61)
    await append(pipeline, 1)
    with structlog.testing.capture_logs() as logs:
        await pipeline.sweep()
    [letter] = await pipeline.outbox.dead_letters()
    assert letter.event_id == "bc84b27ca5327d9d7f915fadae7ef9a4"
    assert letter.reason == "expired: not delivered within 60 s"
    assert [e["log_level"] for e in logs] == ["error"]
    assert (await pipeline.outbox.stats()).queued == {"mem": 1}
    await pipeline.stop(1)


async def test_the_running_pipeline_sweeps_expired_events_to_dead_letters(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "SWEEP_INTERVAL_SECS", 0.05)
    clock = FakeTime()
    monkeypatch.setattr(outbox_module, "time", clock)
    settings = make_settings(store={"path": str(make_settings().store.path), "max_age_secs": 60})
    pipeline = await Pipeline.start(settings)
    await stall(pipeline)
    old = parse_event(sample("incident_ftp_login"), received_at=clock.now())
    # Queued while the pipeline runs: only its own sweeper can dead-letter it.
    with structlog.testing.capture_logs() as logs:
        assert await pipeline.outbox.append(old)
        clock.wait(61)
        await wait_until(lambda: logs, timeout=10, what="the sweeper to log the expired event")
    [line] = logs
    assert {"output": "mem", "count": 1, "log_level": "error"}.items() <= line.items()
    [letter] = await pipeline.outbox.dead_letters()
    assert letter.event_id == "bc84b27ca5327d9d7f915fadae7ef9a4"
    assert letter.reason == "expired: not delivered within 60 s"
    assert (await pipeline.outbox.stats()).queued == {}
    await pipeline.stop(1)


async def test_an_ntp_step_forward_sweeps_nothing_into_dead_letters(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    monkeypatch.setattr(outbox_module, "time", clock)
    pipeline = await Pipeline.start(make_settings())  # store.max_age_secs: 7 days
    await stall(pipeline)
    for n in range(3):
        assert await pipeline.outbox.append(parse_event(event(n), received_at=clock.now()))
    clock.wait(3600)
    clock.jump(365 * 86_400)  # booted with the RTC a year behind; NTP puts it right
    with structlog.testing.capture_logs() as logs:
        await pipeline.sweep()
    assert logs == []
    assert await pipeline.outbox.dead_letters() == []
    assert (await pipeline.outbox.stats()).queued == {"mem": 3}
    await pipeline.stop(1)


async def test_reopen_outputs_follows_logrotate_even_if_one_output_cannot_reopen(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rotated, gone = tmp_path / "rotated.jsonl", tmp_path / "gone"
    gone.mkdir()
    outputs = [
        {"name": "kept", "type": "file", "path": str(tmp_path / "kept.jsonl")},
        {"name": "gone", "type": "file", "path": str(gone / "gone.jsonl")},
    ]
    pipeline = await Pipeline.start(
        make_settings(outputs=[{**spec, "batch": {"timeout_secs": 0}} for spec in outputs])
    )
    kept = tmp_path / "kept.jsonl"
    await append(pipeline, 1)
    await wait_until(lambda: numbers_in(kept) == [1], timeout=10, what="event 1 in kept.jsonl")
    kept.rename(rotated)  # what logrotate does before it sends SIGHUP
    shutil.rmtree(gone)
    with structlog.testing.capture_logs() as logs:
        await pipeline.reopen_outputs()
    await append(pipeline, 2)
    await wait_until(lambda: numbers_in(kept) == [2], timeout=10, what="event 2 in kept.jsonl")
    assert numbers_in(rotated) == [1]
    assert [(e["event"], e.get("output"), e.get("outputs")) for e in logs] == [
        ("Output could not reopen.", "gone", None),
        ("Outputs reopened.", None, ["kept"]),
    ]
    await pipeline.stop(1)


async def test_events_for_an_unconfigured_output_are_reported(
    make_settings: Callable[..., Settings],
) -> None:
    pipeline = await Pipeline.start(make_settings(outputs=[{**MEM, "name": "old"}]))
    await stall(pipeline)
    await append(pipeline, 1)
    await pipeline.stop(1)
    with structlog.testing.capture_logs() as logs:
        pipeline = await Pipeline.start(make_settings())
    assert any(e.get("output") == "old" and e["log_level"] == "warning" for e in logs)
    await pipeline.stop(1)


async def test_stop_bounds_an_output_that_never_finishes_closing(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = await Pipeline.start(make_settings())
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()  # a peer that never answers the close

    monkeypatch.setattr(memory_output(pipeline), "aclose", hang)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(pipeline.stop(0.2), 10)
    assert loop.time() - started < 3.0  # graceful 0.2 s + the 0.5 s floor, with slack
    assert "Output did not close within the graceful timeout; left open." in [
        e["event"] for e in logs
    ]


async def test_a_reload_forgets_the_health_of_a_changed_output_only(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def healthy(name: str) -> float | None:
        return REGISTRY.get_sample_value("canary_forwarder_output_healthy", {"output": name})

    async def failing() -> None:
        raise HealthcheckError("down")

    outputs = [{**MEM, "name": "changed"}, {**MEM, "name": "kept"}]
    pipeline = await Pipeline.start(make_settings(outputs=outputs))
    for name in ("changed", "kept"):
        monkeypatch.setattr(memory_output(pipeline, name), "healthcheck", failing)
    await pipeline.check_outputs()
    assert (healthy("changed"), healthy("kept")) == (0, 0)
    changed = {**MEM, "name": "changed", "batch": {"timeout_secs": 0, "max_events": 7}}
    await pipeline.reload(make_settings(outputs=[changed, {**MEM, "name": "kept"}]), 1)
    assert (healthy("changed"), healthy("kept")) == (None, 0)
    # Each output is a new instance after a reload; "kept" still cannot reach its SIEM.
    monkeypatch.setattr(memory_output(pipeline, "kept"), "healthcheck", failing)
    await pipeline.check_outputs()
    assert (healthy("changed"), healthy("kept")) == (1, 0)
    await pipeline.stop(1)


async def test_a_failing_healthcheck_is_logged_once_and_counts_as_failing(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = await Pipeline.start(make_settings())
    output = memory_output(pipeline)

    def healthy() -> float | None:
        return REGISTRY.get_sample_value("canary_forwarder_output_healthy", {"output": "mem"})

    problem: list[str] = ["HEC answered 503: server is busy"]

    async def healthcheck() -> None:
        if problem:
            raise HealthcheckError(problem[0])

    monkeypatch.setattr(output, "healthcheck", healthcheck)
    with structlog.testing.capture_logs() as logs:
        await pipeline.check_outputs()
        await pipeline.check_outputs()  # still failing: no second warning
        assert healthy() == 0
        # Not failing yet by /readyz's threshold, failing past a shorter one.
        assert pipeline.failing_outputs(300) == {}
        assert pipeline.failing_outputs(0) == {
            "mem": "healthcheck: HEC answered 503: server is busy"
        }
        problem.clear()
        await pipeline.check_outputs()
    assert healthy() == 1
    assert pipeline.failing_outputs(0) == {}
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("Output healthcheck failed; /readyz fails if it goes on failing.", "warning"),
        ("Output healthcheck passes again.", "info"),
    ]
    await pipeline.stop(1)


async def test_a_healthcheck_that_hangs_or_raises_is_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "HEALTHCHECK_TIMEOUT_SECS", 0.05)

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def raises() -> None:
        raise ConnectionResetError("reset by peer")

    check = pipeline_module.healthcheck_problem
    assert await check(hangs) == "no answer within 0.05 s"
    assert await check(raises) == "ConnectionResetError: reset by peer"


async def test_the_running_pipeline_checks_idle_outputs(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "HEALTHCHECK_INTERVAL_SECS", 0.05)
    checked = asyncio.Event()

    async def healthcheck(self: object) -> None:
        checked.set()
        raise HealthcheckError("connection refused")

    monkeypatch.setattr(MemoryOutput, "healthcheck", healthcheck)
    pipeline = await Pipeline.start(make_settings())
    async with asyncio.timeout(10):
        await checked.wait()
        while not pipeline.failing_outputs(-1):
            checked.clear()
            await checked.wait()
    assert pipeline.failing_outputs(-1) == {"mem": "healthcheck: connection refused"}
    await pipeline.stop(1)
