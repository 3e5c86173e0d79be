"""Resources that must not pile up over a long run: each test repeats, a few dozen times, what
the daemon repeats for months, and counts open file descriptors, threads or asyncio tasks before
and after. bench/soak.py is the long version, against the real daemon."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from tests.daemon.harness import wait_until
from tests.peers._server import Delay
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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
