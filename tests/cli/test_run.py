from __future__ import annotations

import asyncio
import gc
import weakref

import structlog

from forwarder.cli import run
from forwarder.systemd import Notifier


def test_settle_collector_freezes_start_up_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        run.settle_collector()
        assert gc.get_freeze_count() > 0, "start-up's objects must leave the collector's sight"
        assert gc.get_threshold() == run.GC_THRESHOLDS
        assert run.GC_THRESHOLDS[0] > 700, "CPython's default young threshold is 700"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settle_collector_frees_garbage_cycles_before_freezing() -> None:
    class Node:
        other: Node

    before = gc.get_threshold()
    gc.unfreeze()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second  # a cycle: only the collector frees it
    try:
        run.settle_collector()
        assert gone() is None, "garbage frozen with start-up's objects would never be freed"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_reload_that_fails_unexpectedly_leaves_later_sighups_working() -> None:
    wanted, stop = asyncio.Event(), asyncio.Event()
    calls: list[int] = []
    first_done, second_done = asyncio.Event(), asyncio.Event()

    async def reload() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            first_done.set()
            raise RuntimeError("a bug in an output's validation")
        second_done.set()

    with structlog.testing.capture_logs() as logs:
        reloader = asyncio.create_task(run.reload_when_asked(wanted, stop, Notifier(None), reload))
        wanted.set()
        async with asyncio.timeout(5):
            await first_done.wait()
            wanted.set()
            await second_done.wait()
        stop.set()
        wanted.set()
        async with asyncio.timeout(5):
            await reloader
    assert calls == [0, 1]
    failures = [line for line in logs if line["log_level"] == "error"]
    assert [line["event"] for line in failures] == [
        "Reload failed unexpectedly; the old configuration keeps running."
    ]
