"""SIGKILL mid-stream, several times: every event answered 200 is delivered; duplicates counted.

Issue 2, "8. Tests": concurrent clients post unique events; the daemon is killed with SIGKILL while
requests are in flight and the file output is being written, restarted on the same store and
output file, and finally left to drain. Each event that got {"status": "stored"} must be in the
output; events whose request died with the process may or may not be. A crash between a send and
its ack resends (at least once), so duplicates are allowed, but only of events the daemon had
accepted before a kill.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.daemon.harness import (
    Daemon,
    DaemonFactory,
    PostResults,
    drained,
    file_output,
    post_event,
    wait_until,
    wait_until_async,
)

pytestmark = pytest.mark.slow

CLIENTS = 12
# One send carries at most this many events, and a kill can interrupt at most one send between
# its write and its ack, so a kill duplicates at most this many events.
BATCH = 100
# Stored answers to wait for before each SIGKILL (varied, so kills land at different points).
KILL_AFTER = (150, 400, 250)


async def _post_until_killed(daemon: Daemon, results: PostResults, kill_after: int) -> int:
    """Post from CLIENTS concurrent clients; SIGKILL once `kill_after` more were stored."""
    stop = asyncio.Event()
    before = len(results.stored)

    async def client() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while not stop.is_set():
                await post_event(session, daemon.webhook_url, results)

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        await wait_until(
            lambda: len(results.stored) - before >= kill_after or not daemon.alive() or None,
            timeout=15,
            what=f"{kill_after} stored answers",
        )
        assert daemon.alive(), daemon.stderr_text()
        # No await between these two lines: every client still has a request in flight.
        stop.set()
        code = daemon.kill()
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert code == -signal.SIGKILL
    return len(results.sent)


def _records(output: Path) -> list[dict[str, object]]:
    """The output's records. A kill in the middle of a write (the kernel stops a write to a
    file between pages for SIGKILL) leaves the records written so far and a fragment of the
    next. The output ends such a fragment before it writes again, so it is a line of its own
    (see forwarder.outputs.file), and sends the unacked batch again, so the record it was cut
    from follows whole."""
    assert output.read_bytes().endswith(b"\n"), "the last line has no newline: a torn record"
    records: list[dict[str, object]] = []
    lines = output.read_bytes().splitlines()
    for number, text in enumerate(lines):
        try:
            records.append(json.loads(text))
        except ValueError:
            assert any(later.startswith(text) for later in lines[number + 1 :]), (
                f"line {number + 1} is neither JSON nor a fragment of a later record: {text[:80]!r}"
            )
    return records


async def test_sigkill_mid_stream_loses_no_stored_event(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    output = tmp_path / "events.jsonl"
    daemon = daemons({"outputs": [file_output("out", output, batch={"max_events": BATCH})]})
    results = PostResults()
    sent_at_kill: list[int] = []

    for kill_after in KILL_AFTER:
        await daemon.start()
        sent_at_kill.append(await _post_until_killed(daemon, results, kill_after))

    # Restart on the same store and output, and let it deliver what it holds.
    await daemon.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        await wait_until_async(
            lambda: drained(daemon, session), timeout=20, what="the store to drain"
        )
    assert await daemon.stop() == 0

    records = _records(output)
    seen = Counter(record["id"] for record in records)
    lost = results.stored - set(seen)
    duplicates = sum(count - 1 for count in seen.values())
    unanswered_delivered = len(results.unanswered & set(seen))
    print(
        f"\ncrash test: {len(results.sent)} posted, {len(results.stored)} stored (200), "
        f"{len(results.unanswered)} unanswered ({unanswered_delivered} of them delivered), "
        f"{len(records)} lines, {duplicates} duplicates, kills after {sent_at_kill} posted"
    )

    assert not results.other, f"unexpected answers: {list(results.other.values())[:5]}"
    assert not lost, f"{len(lost)} events answered 200 are missing, e.g. {sorted(lost)[:5]}"
    assert set(seen) <= results.sent, "the output holds events nobody posted"
    assert all(record["kind"] == "incident" for record in records)
    # At least once: only a kill between a send and its ack resends, that is one batch at most,
    # and only of events posted before that kill.
    assert duplicates <= sum(min(BATCH, sent) for sent in sent_at_kill)
    assert len(results.stored) >= sum(KILL_AFTER)
