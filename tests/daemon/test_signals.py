"""Stop and reload signals at awkward moments: during start-up, during a reload, twice.

What an operator and systemd rely on: a stop ends within one graceful timeout of the signal
(plus a small fixed margin) whatever is under way; a stop during start-up ends it there, cleanly
and with status 0; a second stop signal ends the process at once, after closing the store; and
READY=1 is sent only by a daemon that runs on.

A send that never finishes comes from a TCP syslog receiver that never reads
(tests/reliability/_peers.py), with records larger than its receive window. Start-up is held at
a step by running the daemon through tests/daemon/stalls.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.harness import (
    HOST,
    Daemon,
    DaemonFactory,
    NotifyListener,
    PostResults,
    file_output,
    queued_deliveries,
    wait_until,
    wait_until_async,
)
from tests.reliability._peers import StalledPeer
from tests.reliability._support import post_one

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GRACEFUL_SECS = 2.0
# What a stop may take beyond the graceful timeout: closing an output that no longer answers
# (half a second at most), closing the store, and the interpreter's exit.
STOP_MARGIN_SECS = 1.5
# A record larger than the deaf receiver's window (a few KiB): its send can never finish.
PAD = 32 * 1024


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    with NotifyListener(tmp_path / "notify") as listener:
        yield listener


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


def _no_traceback(daemon: Daemon) -> None:
    assert "Traceback" not in daemon.stderr_text(), daemon.stderr_text()


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
    assert queued_deliveries(state) == {"deaf": 1}


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
    assert queued_deliveries(state) == {"deaf": 1}


# A second stop signal


async def test_a_second_stop_signal_exits_at_once_and_still_closes_the_store(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """Before, the second signal ended the process without closing the store: its WAL was not
    folded back, so a backup of the database file taken after the stop missed events."""
    state = tmp_path / "state"
    async with StalledPeer("no_read") as peer:
        daemon = daemons(
            {"store": {"path": str(state)}, "outputs": [deaf_output(peer)]}, graceful_secs=60
        )
        await daemon.start()
        await _send_stuck(daemon)
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait_for_log("Stopping.")
        daemon.send_signal(signal.SIGINT)
        assert await daemon.wait_exit(timeout=10) == 1
    [line] = daemon.find_logs("Second stop signal; exiting at once.", level="warning")
    assert line["signal"] == "SIGINT"
    assert daemon.find_logs(
        "Stopped at once; sends that were under way are repeated at the next start."
    )
    _no_traceback(daemon)
    assert _closed_cleanly(state)
    assert queued_deliveries(state) == {"deaf": 1}


# Signals during start-up


def _stalled(
    daemons: DaemonFactory,
    tmp_path: Path,
    step: str,
    outputs: list[dict[str, Any]],
    notify: NotifyListener,
) -> Daemon:
    """A daemon whose start-up holds at `step` (see tests/daemon/stalls.py)."""
    return daemons(
        {"store": {"path": str(tmp_path / "state")}, "outputs": outputs},
        module="tests.daemon.stalls",
        environ={
            "PYTHONPATH": str(ROOT),
            "FORWARDER_TEST_STALL": step,
            "FORWARDER_TEST_STALL_DIR": str(tmp_path),
            "NOTIFY_SOCKET": str(notify.path),
        },
    )


async def _reach(tmp_path: Path, daemon: Daemon, step: str) -> None:
    def reached() -> bool:
        assert daemon.alive(), daemon.stderr_text()
        return (tmp_path / f"{step}.reached").exists()

    await wait_until(reached, timeout=20, what=f"start-up to reach {step}")


def _release(tmp_path: Path, step: str) -> None:
    (tmp_path / f"{step}.go").touch()


async def _refused(daemon: Daemon) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, daemon.port)
    except OSError:
        return True
    writer.close()
    return False


async def test_a_stop_while_the_store_opens_ends_the_start_up_there(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """The store's open cannot be interrupted, so the stop waits for it; then it closes the
    store and exits 0. Before, start-up went on: the outputs started, the daemon listened and
    told systemd READY=1, and only then stopped."""
    output = tmp_path / "out.jsonl"
    daemon = _stalled(daemons, tmp_path, "store", [file_output("out", output)], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "store")
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait_for_log("Stopping.")
    assert daemon.alive()
    _release(tmp_path, "store")
    assert await daemon.wait_exit(timeout=10) == 0
    assert daemon.logs()[-1]["event"] == "Stopped."
    assert not daemon.find_logs("Listening.")
    assert not output.exists(), "an output started after the stop signal"
    assert _closed_cleanly(tmp_path / "state")
    _no_traceback(daemon)
    assert notify.states() == ["STOPPING=1"]
    assert "STATUS=stopping: start-up interrupted" in notify.messages()[-1]


async def test_a_stop_while_the_outputs_start_exits_without_waiting_for_them(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """Before, a stop signal waited for start-up to finish, however long an output took."""
    daemon = _stalled(daemons, tmp_path, "outputs", [{"name": "mem", "type": "memory"}], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "outputs")
    assert await _refused(daemon)  # bound, not listening: nobody waits in a backlog
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=10) == 0
    assert daemon.logs()[-1]["event"] == "Stopped."
    assert not daemon.find_logs("Listening.")
    assert _closed_cleanly(tmp_path / "state")
    _no_traceback(daemon)
    assert notify.states() == ["STOPPING=1"]


async def test_a_second_stop_signal_during_start_up_exits_at_once(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    daemon = _stalled(daemons, tmp_path, "store", [{"name": "mem", "type": "memory"}], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "store")
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait_for_log("Stopping.")
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=10) == 1
    assert daemon.find_logs("Second stop signal; exiting at once.")
    assert not daemon.find_logs("Listening.")
    _no_traceback(daemon)


async def test_a_sighup_during_start_up_reloads_once_the_daemon_runs(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """The configuration may have changed after start-up read it: the reload is not lost."""
    first = {"name": "first", "type": "memory"}
    daemon = _stalled(daemons, tmp_path, "store", [first], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "store")
    daemon.write_config(
        {"store": {"path": str(tmp_path / "state")}, "outputs": [first, {**first, "name": "new"}]}
    )
    daemon.send_signal(signal.SIGHUP)
    daemon.send_signal(signal.SIGHUP)
    _release(tmp_path, "store")
    await daemon.wait_ready()
    line = await daemon.wait_for_log("Configuration reloaded.")
    assert line["outputs"] == ["first", "new"]
    assert await daemon.stop() == 0
    assert len(daemon.find_logs("Reloading configuration.")) == 1
    assert notify.states()[:3] == ["READY=1", "RELOADING=1", "READY=1"]
    assert notify.states()[-1] == "STOPPING=1"


async def test_a_sighup_before_the_event_loop_handles_signals_is_held_for_a_reload(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """Before, SIGHUP's default action ended the process, which systemd takes as a clean exit
    and does not restart."""
    daemon = _stalled(daemons, tmp_path, "config", [{"name": "mem", "type": "memory"}], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "config")
    daemon.send_signal(signal.SIGHUP)
    _release(tmp_path, "config")
    await daemon.wait_ready()
    await daemon.wait_for_log("Configuration reloaded.")
    assert await daemon.stop() == 0
    assert len(daemon.find_logs("Reloading configuration.")) == 1


async def test_a_long_store_open_asks_systemd_for_more_start_time(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """A large store's check or repair must not be killed at TimeoutStartSec, then begun again
    at every restart."""
    daemon = _stalled(daemons, tmp_path, "store", [{"name": "mem", "type": "memory"}], notify)
    daemon.spawn()
    await _reach(tmp_path, daemon, "store")
    await wait_until(
        lambda: "EXTEND_TIMEOUT_USEC=30000000" in notify.messages(),
        timeout=10,
        what="a start-time extension",
    )
    _release(tmp_path, "store")
    await daemon.wait_ready()
    assert await daemon.stop() == 0
    assert notify.states() == ["READY=1", "STOPPING=1"]


# What systemd is told around a reload


async def test_a_refused_reload_is_announced_with_its_clock_and_ends_with_ready(
    daemons: DaemonFactory, tmp_path: Path, notify: NotifyListener
) -> None:
    """systemd (253 and later, Type=notify-reload) takes RELOADING=1 only with a MONOTONIC_USEC
    at or after its SIGHUP, and waits for READY=1 even when the daemon refuses the file."""
    daemon = daemons(
        {"outputs": [{"name": "mem", "type": "memory"}]},
        environ={"NOTIFY_SOCKET": str(notify.path)},
    )
    await daemon.start()
    daemon.write_config("outputs: [\n")
    signalled_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_for_log("Outputs reopened.")
    await wait_until(
        lambda: notify.states()[-1:] == ["READY=1"] and len(notify.states()) == 3,
        timeout=10,
        what="READY=1 after the reload",
    )
    assert await daemon.stop() == 0
    assert notify.states() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    [reloading] = [m for m in notify.messages() if m.startswith("RELOADING=1")]
    fields = dict(line.split("=", 1) for line in reloading.split("\n"))
    assert int(fields["MONOTONIC_USEC"]) >= signalled_usec
