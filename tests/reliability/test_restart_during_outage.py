"""A restart in the middle of a Splunk HEC outage loses nothing (issue 4).

The receiver is down (its port refuses connections), events are accepted and queue up, the
daemon is killed with SIGKILL and started again on the same store, and only then does the
receiver come up: every event answered 200 arrives, none twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.harness import PostResults
from tests.reliability._support import (
    FaultyDaemon,
    HecProcess,
    count_lost,
    hec_output,
    post_one,
    session,
)
from tests.reliability.scenarios import wait_drained

pytestmark = pytest.mark.reliability

EVENTS = 40


async def test_restart_during_hec_outage_loses_nothing(tmp_path: Path) -> None:
    hec = HecProcess()  # port chosen, nothing listening yet: the outage
    daemon = FaultyDaemon(
        tmp_path / "daemon",
        {
            "outputs": [
                hec_output(
                    "hec",
                    hec.url,
                    batch={"timeout_secs": 0},
                    retry={"initial_backoff_secs": 0.05, "max_backoff_secs": 0.5},
                )
            ]
        },
    )
    results = PostResults()
    try:
        await daemon.start()
        async with session() as client:
            for _ in range(EVENTS):
                await post_one(client, daemon.webhook_url, results)
        assert len(results.stored) == EVENTS, results.other
        await daemon.wait_for_log("Send failed; will retry.")  # it really tried, and failed
        daemon.kill()

        await daemon.start()  # same store: the backlog is still there
        hec.start()
        await wait_drained(daemon, timeout=30)
        delivered = await hec.ids()
        assert await daemon.stop() == 0
    finally:
        daemon.close()
        hec.kill()
    lost, duplicates = count_lost(results.stored, delivered)
    assert lost == set()
    assert duplicates == 0
    assert sum(delivered.values()) == EVENTS
