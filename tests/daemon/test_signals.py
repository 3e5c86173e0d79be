"""Stop and reload signals at awkward moments: during start-up, during a reload, twice.

What an operator and systemd rely on: a stop ends within one graceful timeout of the signal
(plus a small fixed margin) whatever is under way.

A send that never finishes comes from a TCP syslog receiver that never reads
(tests/reliability/_peers.py), with records larger than its receive window.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.harness import (
    Daemon,
    DaemonFactory,
    PostResults,
    file_output,
    wait_until_async,
)
from tests.reliability._peers import StalledPeer
from tests.reliability._support import post_one

pytestmark = pytest.mark.slow

GRACEFUL_SECS = 2.0
# What a stop may take beyond the graceful timeout: closing an output that no longer answers
# (half a second at most), closing the store, and the interpreter's exit.
STOP_MARGIN_SECS = 1.5
# A record larger than the deaf receiver's window (a few KiB): its send can never finish.
PAD = 32 * 1024


def deaf_output(peer: StalledPeer) -> dict[str, Any]:
    """A syslog output to `peer` whose sends wait far longer than any test."""
    return {
        "name": "deaf",
        "type": "syslog",
        "hosts": [peer.address],
        "transport": "tcp",
        "format": "json",
        "max_message_bytes": 2 * PAD,
        "write_timeout_secs": 600,
        "batch": {"timeout_secs": 0},
    }


def _queued(store: Path) -> dict[str, int]:
    """Deliveries waiting in a stopped daemon's store, by output (read-only)."""
    database = sqlite3.connect(f"file:{store / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT output, COUNT(*) FROM deliveries GROUP BY output")
        return dict(rows.fetchall())
    finally:
        database.close()


def _closed_cleanly(store: Path) -> bool:
    """The store was closed, not abandoned: its WAL was folded back, then removed or emptied."""
    wal = store / "outbox.sqlite3-wal"
    return not wal.exists() or wal.stat().st_size == 0


async def _send_stuck(daemon: Daemon) -> None:
    """Post one event that the deaf output starts sending and can never finish."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        results = PostResults()
        await post_one(session, daemon.webhook_url, results, pad=PAD)
        assert results.stored, results.other

        async def sending() -> bool:
            async with session.get(f"{daemon.base_url}/metrics") as response:
                text = await response.text()
            return 'canary_forwarder_output_in_flight_events{output="deaf"} 1.0' in text

        await wait_until_async(sending, timeout=10, what="the send to the deaf receiver")


# A stop during a reload


async def test_a_stop_while_a_reload_reopens_outputs_keeps_to_one_graceful_timeout(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """A refused reload reopens the running outputs, and the syslog output's reopen waits for
    its send in progress. Before, the stop waited for that reopen: up to the send's write
    timeout (here 600 s), not the graceful timeout."""
    state = tmp_path / "state"
    async with StalledPeer("no_read") as peer:
        daemon = daemons(
            {"store": {"path": str(state)}, "outputs": [deaf_output(peer)]},
            graceful_secs=GRACEFUL_SECS,
        )
        await daemon.start()
        await _send_stuck(daemon)
        daemon.write_config("outputs: [\n")
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("New configuration is invalid; the old one keeps running.")
        assert not daemon.find_logs("Outputs reopened.")  # waiting for the send

        stopped_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = await daemon.wait_exit(timeout=GRACEFUL_SECS + 10)
        took = time.monotonic() - stopped_at
    assert code == 0
    assert took < GRACEFUL_SECS + STOP_MARGIN_SECS, took
    assert daemon.find_logs("Outputs not reopened; the daemon is stopping.")
    assert daemon.logs()[-1]["event"] == "Stopped."
    assert _closed_cleanly(state)
    assert _queued(state) == {"deaf": 1}


async def test_a_stop_while_a_reload_drains_outputs_starts_none_and_keeps_to_one_timeout(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """A reload that replaces the outputs waits for the old ones' sends. Before, once that wait
    was over the new outputs started (and sent again) although the daemon was stopping, and
    the stop then gave them one more second."""
    state = tmp_path / "state"
    async with StalledPeer("no_read") as peer:
        config = {"store": {"path": str(state)}, "outputs": [deaf_output(peer)]}
        daemon = daemons(config, graceful_secs=GRACEFUL_SECS)
        await daemon.start()
        await _send_stuck(daemon)
        daemon.write_config(
            {**config, "outputs": [deaf_output(peer), file_output("file", tmp_path / "f.jsonl")]}
        )
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("Reloading configuration.")
        connections = peer.accepted  # the stuck send's, and the start-up healthcheck's

        stopped_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = await daemon.wait_exit(timeout=GRACEFUL_SECS + 10)
        took = time.monotonic() - stopped_at
        assert peer.accepted == connections, "a new output sent while the daemon was stopping"
    assert code == 0
    assert took < GRACEFUL_SECS + STOP_MARGIN_SECS, took
    assert daemon.find_logs("Configuration reloaded; the daemon is stopping.")
    assert not daemon.find_logs("Configuration reloaded.")
    assert _closed_cleanly(state)
    assert _queued(state) == {"deaf": 1}
