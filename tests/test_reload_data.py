"""What a reload does to the data: which output gets which event, in which format, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from forwarder.events import CanaryEvent, parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import SendResult
from forwarder.outputs.memory import MemoryOutput
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.daemon.harness import wait_until
from tests.helpers import memory_output

MEM = {"type": "memory", "batch": {"timeout_secs": 0}}


def event(n: int) -> bytes:
    return b'{"AlertType": "CanaryIncident", "N": %d}' % n


async def append(pipeline: Pipeline, n: int) -> None:
    stored = await pipeline.outbox.append(parse_event(event(n), received_at=datetime.now(UTC)))
    assert stored


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
