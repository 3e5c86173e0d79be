"""Resources that must not pile up over a long run: each test repeats, a few dozen times, what
the daemon repeats for months, and counts open file descriptors, threads or asyncio tasks before
and after. bench/soak.py is the long version, against the real daemon."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import Retry
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.daemon.harness import wait_until
from tests.helpers import closed_port_url, sample
from tests.peers._server import Delay
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def record() -> Record:
    event = parse_event(sample("incident_ftp_login"), received_at=datetime.now(UTC))
    return Record(event, {"id": event.id})


def hec(*urls: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "hec",
        "type": "splunk_hec",
        "url": list(urls),
        "token": DEFAULT_TOKEN,
        "batch": {"timeout_secs": 0},
        **options,
    }


async def test_a_healthcheck_that_a_reload_cuts_short_opens_no_session(
    make_settings: Callable[..., Settings],
) -> None:
    """A reload closes the outputs it replaces, healthchecks under way included. The check of a
    closed HTTP output then went on to the next node and opened a new session for it, which
    nothing closed: its connection stayed open for as long as anything held the old output,
    and went with an "Unclosed client session" error when the collector found it."""
    async with FakeHec() as slow, FakeHec() as spare:
        pipeline = await Pipeline.start(make_settings(outputs=[hec(slow.url, spare.url)]))
        replaced = []
        try:
            await pipeline.check_outputs()
            before = open_fds()
            for cycle in range(10):
                slow.health_faults.push(Delay(10))
                check = asyncio.create_task(pipeline.check_outputs())
                await wait_until(
                    lambda: not slow.health_faults or None, timeout=10, what="the check"
                )
                # Held, as the check holds the outputs it checks until it ends.
                replaced.append(pipeline.dispatchers[0].output)
                source = f"reload-{cycle}"
                await pipeline.reload(
                    make_settings(outputs=[hec(slow.url, spare.url, source=source)]), 5
                )
                await check
            await wait_until(
                lambda: open_fds() <= before or None,
                timeout=5,
                what=f"the connections to close ({open_fds()} fds open, {before} before)",
            )
        finally:
            await pipeline.stop(5)


async def test_a_node_that_has_failed_for_days_still_fails_over() -> None:
    """A node's count of failures in a row grows for as long as it is down: each send and each
    healthcheck adds one. Its cooldown, doubled at each, overflowed a float at the 1,025th, so
    every send raised (an ERROR with a traceback) instead of being retried, once a node had been
    down for a few hours."""
    output = SplunkHecOutput(
        SplunkHecConfig.model_validate(
            {"name": "hec", "type": "splunk_hec", "url": closed_port_url(), "token": DEFAULT_TOKEN}
        )
    )
    await output.start()
    try:
        results = [await output.send([record()]) for _ in range(1100)]
    finally:
        await output.aclose()
    assert {type(result) for result in results} == {Retry}
