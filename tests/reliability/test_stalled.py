"""Slow and stalled receivers: their timeouts fire and they hold no other output back.

One daemon, four outputs: a HEC that accepts and never answers, a HEC that half-closes the
connection (FIN, no answer), a TCP syslog receiver that never reads (its buffers fill), and a
file. While the three stall, every event reaches the file within a fraction of a second (real
time), and each stalled output logs its timeout (or closed connection) and keeps its events.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import PostResults, ids_in
from tests.reliability._peers import StalledPeer
from tests.reliability._support import fast_retry, hec_output, post_one, session, wait_until
from tests.reliability.conftest import DaemonFactory

pytestmark = pytest.mark.reliability

TIMEOUT_SECS = 1.5
EVENTS = 30
PAD = 48 * 1024  # large records fill the no-read syslog peer's buffers quickly
# Far below TIMEOUT_SECS: a file output waiting for a stalled one would take longer than that.
REAL_TIME_SECS = 0.75


def retry_reasons(lines: list[dict[str, Any]], output: str) -> list[str]:
    return [
        str(line.get("reason"))
        for line in lines
        if line.get("event") == "Send failed; will retry." and line.get("output") == output
    ]


async def test_stalled_receivers_time_out_and_do_not_hold_the_file_output_back(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    async with (
        StalledPeer("silent") as silent,
        StalledPeer("half_close") as half,
        StalledPeer("no_read") as deaf,
    ):
        daemon = daemons(
            {
                "outputs": [
                    hec_output("hec_silent", silent.url, request_timeout_secs=TIMEOUT_SECS),
                    hec_output("hec_half", half.url, request_timeout_secs=TIMEOUT_SECS),
                    {
                        "name": "syslog_deaf",
                        "type": "syslog",
                        "hosts": [deaf.address],
                        "transport": "tcp",
                        "format": "json",
                        "write_timeout_secs": TIMEOUT_SECS,
                        "connect_timeout_secs": TIMEOUT_SECS,
                        **fast_retry(),
                    },
                    {"name": "file", "type": "file", "path": str(output), **fast_retry()},
                ]
            },
            graceful_secs=2,
        )
        await daemon.start()
        results = PostResults()
        latencies: list[float] = []
        async with session() as client:
            for _ in range(EVENTS):
                posted = time.monotonic()
                event_id = await post_one(client, daemon.webhook_url, results, pad=PAD)
                assert event_id in results.stored, results.other
                await wait_until(
                    lambda event_id=event_id: event_id in ids_in(output) or None,  # type: ignore[misc]
                    timeout=10,
                    what="the event in the file output",
                )
                latencies.append(time.monotonic() - posted)

        def all_timed_out() -> bool:
            lines = daemon.logs()
            return all(retry_reasons(lines, name) for name in ("hec_silent", "hec_half"))

        await wait_until(all_timed_out, timeout=10, what="both HEC outputs to give up a send")
        lines = daemon.logs()
        print(f"\nfile output latency: max {max(latencies) * 1000:.0f} ms over {EVENTS} events")
        assert max(latencies) < REAL_TIME_SECS, latencies
        assert Counter(ids_in(output)) == Counter(results.stored)
        assert any("no answer within" in r for r in retry_reasons(lines, "hec_silent")), lines
        assert any(
            "closed before an answer" in r or "no answer within" in r
            for r in retry_reasons(lines, "hec_half")
        )
        assert half.half_closed >= 1
        # The deaf syslog peer's buffers fill: a write times out and the batch is kept.
        await wait_until(
            lambda: retry_reasons(daemon.logs(), "syslog_deaf") or None,
            timeout=20,
            what="the syslog write to time out",
        )
        assert any(
            "did not finish within" in r for r in retry_reasons(daemon.logs(), "syslog_deaf")
        )
        async with session() as client:
            queued = await daemon.metric(client, "canary_forwarder_store_events")
        assert queued == EVENTS, "the stalled outputs' events stay in the store"
        assert daemon.alive()
        # A stop gives up the stalled sends after the graceful timeout; events stay queued.
        assert await daemon.stop() == 0
