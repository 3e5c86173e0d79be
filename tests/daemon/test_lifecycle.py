"""The daemon's life as an operator sees it: start-up failures, SIGTERM and SIGINT, and SIGHUP
reloads.

Issue 2 (configuration, shutdown) and issue 5 ("Reload"): each test runs the real daemon as a
subprocess on 127.0.0.1 and checks exit codes, log lines, the output files and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.harness import (
    HOST,
    Daemon,
    DaemonFactory,
    PostResults,
    drained,
    file_output,
    ids_in,
    incident,
    post_event,
    queued_deliveries,
    read_jsonl,
    wait_until,
    wait_until_async,
)

pytestmark = pytest.mark.slow

EX_CONFIG = 78


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


async def _post_stored(session: aiohttp.ClientSession, daemon: Daemon, count: int) -> list[str]:
    """Post `count` new events; each must be answered 200 "stored". Returns their ids."""
    results = PostResults()
    ids = [await post_event(session, daemon.webhook_url, results) for _ in range(count)]
    assert results.stored == set(ids), (results.other, results.unanswered)
    return ids


async def _wait_delivered(path: Path, ids: set[str], timeout: float = 10) -> Counter[str]:
    def arrived() -> Counter[str] | None:
        seen = ids_in(path)
        return seen if ids <= set(seen) else None

    return await wait_until(arrived, timeout=timeout, what=f"{len(ids)} events in {path.name}")


async def _true_or_none(check: Awaitable[bool]) -> bool | None:
    return True if await check else None


async def _wait_acked(daemon: Daemon, session: aiohttp.ClientSession) -> None:
    """Wait until every output has acked what it wrote. Before a test renames an output file:
    a rename between a write and the output's check after it counts as "rotated during the
    write", and the batch is written into the new file too."""
    await wait_until_async(
        lambda: _true_or_none(drained(daemon, session)), timeout=15, what="every batch acked"
    )


# Start-up failures


def test_invalid_config_exits_78_naming_the_bad_key(daemons: DaemonFactory, tmp_path: Path) -> None:
    daemon = daemons(
        {"outputs": [file_output("out", tmp_path / "out.jsonl", colour="blue")]},
    )
    code, stderr = daemon.run_to_exit()
    assert code == EX_CONFIG, stderr
    assert "outputs[0].colour" in stderr


def test_invalid_yaml_exits_78(daemons: DaemonFactory, tmp_path: Path) -> None:
    daemon = daemons({"outputs": [file_output("out", tmp_path / "out.jsonl")]})
    daemon.write_config("listen: {port: [\noutputs: -\n")
    code, stderr = daemon.run_to_exit()
    assert code == EX_CONFIG, stderr
    assert str(daemon.config_path) in stderr
    assert "not valid YAML" in stderr


def test_port_in_use_exits_1_with_a_clear_log_line(daemons: DaemonFactory, tmp_path: Path) -> None:
    """The port is bound before anything else starts: a start that cannot listen neither
    creates the store nor starts an output (which it would only stop again at once)."""
    output, state = tmp_path / "out.jsonl", tmp_path / "state"
    daemon = daemons({"store": {"path": str(state)}, "outputs": [file_output("out", output)]})
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, daemon.port))
        squatter.listen()
        code, stderr = daemon.run_to_exit()
    assert code == 1
    [line] = daemon.find_logs("Cannot listen.", level="error")
    assert line["port"] == daemon.port
    assert "in use" in line["error"]
    assert [entry["level"] for entry in daemon.logs()] == ["warning", "error"], stderr
    assert not state.exists()
    assert not output.exists()


def test_an_address_not_on_this_host_exits_1_with_a_clear_log_line(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    auth = {"header": "X-Canary-Token", "secret": "a-webhook-secret-of-32-characters"}
    daemon = daemons(
        {
            "listen": {"host": "192.0.2.1", "auth": auth},  # TEST-NET-1: never local
            "store": {"path": str(tmp_path / "state")},
            "outputs": [file_output("out", tmp_path / "out.jsonl")],
        }
    )
    code, stderr = daemon.run_to_exit()
    assert code == 1
    [line] = daemon.find_logs("Cannot listen.", level="error")
    assert line["host"] == "192.0.2.1"
    assert "cannot assign requested address" in line["error"]
    assert [entry["level"] for entry in daemon.logs()] == ["error"], stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104 - refused, never bound
def test_public_address_without_auth_exits_78(
    daemons: DaemonFactory, tmp_path: Path, host: str
) -> None:
    daemon = daemons(
        {"listen": {"host": host}, "outputs": [file_output("out", tmp_path / "out.jsonl")]}
    )
    code, stderr = daemon.run_to_exit()
    assert code == EX_CONFIG, stderr
    assert "listen: refusing to listen on" in stderr
    assert "auth: none" in stderr


async def test_public_address_with_explicit_auth_none_starts(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    daemon = daemons(
        {
            "listen": {"host": "0.0.0.0", "auth": "none"},  # noqa: S104 - the case under test
            "outputs": [file_output("out", tmp_path / "out.jsonl")],
        }
    )
    await daemon.start()  # reached on 127.0.0.1
    [line] = daemon.find_logs("Webhook accepts posts without authentication.", level="warning")
    assert line["host"] == "0.0.0.0"  # noqa: S104
    assert await daemon.stop() == 0


# SIGTERM and SIGINT


async def _request_in_flight(
    session: aiohttp.ClientSession, daemon: Daemon, received: int
) -> tuple[str, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """A post whose handler is running: headers and half its body sent, on a connection the
    server has already served once (so it is accepted, not waiting in the listen backlog).
    `received` is the count of posts the daemon will then have seen."""
    event_id, body = incident()
    reader, writer = await asyncio.open_connection(HOST, daemon.port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    status, answer = await _read_answer(reader)
    assert status.startswith(b"HTTP/1.1 200") and answer == {"status": "alive"}
    writer.write(
        f"POST /canary HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    await writer.drain()

    async def handler_started() -> bool:
        return await daemon.metric(session, "canary_forwarder_received_total") == received

    await wait_until_async(handler_started, timeout=5, what="the handler to start")
    return event_id, body, reader, writer


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, Any]:
    status_line = await reader.readline()
    headers = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in headers.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status_line, json.loads(await reader.readexactly(length))


async def _finish_request(
    body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, Any]:
    """Send the rest of a `_request_in_flight` body; its status line and JSON answer."""
    writer.write(body[len(body) // 2 :])
    await writer.drain()
    answer = await _read_answer(reader)
    writer.close()
    return answer


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_stop_signal_finishes_in_flight_request_closes_store_and_keeps_queue(
    daemons: DaemonFactory, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    output = tmp_path / "out.jsonl"
    state = tmp_path / "state"
    # A long batch timeout keeps accepted events queued in the store when SIGTERM comes.
    slow = file_output("out", output, batch={"timeout_secs": 60, "max_events": 1000})
    daemon = daemons({"store": {"path": str(state)}, "outputs": [slow]})
    await daemon.start()
    async with _session() as session:
        queued_ids = await _post_stored(session, daemon, 5)

        event_id, body, reader, writer = await _request_in_flight(session, daemon, 6)

        daemon.send_signal(stop_signal)
        stopping = await daemon.wait_for_log("Stopping.")
        assert stopping["signal"] == stop_signal.name

        async def refused() -> bool:
            try:
                _, probe = await asyncio.open_connection(HOST, daemon.port)
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the connection landed in the backlog of a listener that then closed.
                return True
            probe.close()
            return False

        await wait_until_async(refused, timeout=5, what="new connections to be refused")
        assert daemon.alive(), "exited before its in-flight request finished"

        status_line, answer = await _finish_request(body, reader, writer)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    assert answer == {"status": "stored", "id": event_id, "kind": "incident"}

    assert await daemon.wait_exit(timeout=15) == 0
    assert daemon.logs()[-1]["event"] == "Stopped."
    assert not read_jsonl(output), "nothing should have been sent within the batch timeout"
    # Closed cleanly: the WAL was folded back into the database and removed or emptied.
    wal = state / "outbox.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert queued_deliveries(state) == {"out": 6}

    # The next start finds the queue intact and delivers it.
    daemon.write_config({"store": {"path": str(state)}, "outputs": [file_output("out", output)]})
    await daemon.start()
    seen = await _wait_delivered(output, {*queued_ids, event_id})
    assert await daemon.stop() == 0
    assert set(seen) == {*queued_ids, event_id}
    assert not [line for line in daemon.logs() if line.get("level") == "error"]


async def test_signals_during_shutdown(daemons: DaemonFactory, tmp_path: Path) -> None:
    """SIGHUP while stopping is ignored (logrotate may send one); a second SIGTERM exits at
    once, saying so, instead of dying by the signal's default action."""
    daemon = daemons({"outputs": [file_output("out", tmp_path / "out.jsonl")]})
    await daemon.start()
    async with _session() as session:
        event_id, body, reader, writer = await _request_in_flight(session, daemon, 1)
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait_for_log("Stopping.")
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("Reload requested while stopping; ignored.")
        assert daemon.alive()
        status_line, answer = await _finish_request(body, reader, writer)
    assert status_line.startswith(b"HTTP/1.1 200") and answer["id"] == event_id
    assert await daemon.wait_exit(timeout=15) == 0
    assert not daemon.find_logs("Reloading configuration.")

    await daemon.start()
    async with _session() as session:
        *_, writer = await _request_in_flight(session, daemon, 1)
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait_for_log("Stopping.")
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=15) == 1
        writer.close()
    [line] = daemon.find_logs("Second stop signal; exiting at once.")
    assert line["signal"] == "SIGTERM"


async def test_sighups_coalesce_and_ready_never_follows_stopping(
    daemons: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
        daemon = daemons({"outputs": [file_output("out", tmp_path / "out.jsonl")]})
        await daemon.start()
        for _ in range(20):
            daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("Configuration reloaded.")
        assert await daemon.stop() == 0
        notify.setblocking(False)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(notify.recv(4096).decode())
    reloads = len(daemon.find_logs("Reloading configuration."))
    # The first SIGHUP starts a reload; the rest arrive during it and ask for one more.
    assert 1 <= reloads <= 2, reloads
    assert messages[0] == "STATUS=starting: opening the store and the outputs"
    ignored = ("WATCHDOG", "STATUS", "EXTEND_TIMEOUT_USEC")
    states = [m.split("=")[0] for m in messages if not m.startswith(ignored)]
    assert "STATUS=stopping: " in messages[-1]  # `systemctl status` shows the stop, not the queue
    # Each reload is announced and ends with READY=1; one that the stop cuts short ends with
    # STOPPING=1 instead, since READY=1 after it would tell systemd the daemon runs on.
    reloaded = ["RELOADING", "READY"] * reloads
    cut_short = ["RELOADING", "READY"] * (reloads - 1) + ["RELOADING"]
    assert states in (["READY", *reloaded, "STOPPING"], ["READY", *cut_short, "STOPPING"])


# SIGHUP


async def _reload(daemon: Daemon, config: dict[str, Any] | str, *, count: int = 1) -> None:
    """Write a new config and send SIGHUP; waits for the `count`-th reload to be logged."""
    daemon.write_config(config)
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_for_log("Reloading configuration.", count=count)


async def test_reload_adds_an_output(daemons: DaemonFactory, tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    daemon = daemons({"outputs": [file_output("first", first)]})
    await daemon.start()
    async with _session() as session:
        before = await _post_stored(session, daemon, 5)
        await _reload(
            daemon, {"outputs": [file_output("first", first), file_output("second", second)]}
        )
        line = await daemon.wait_for_log("Configuration reloaded.")
        assert line["outputs"] == ["first", "second"]
        after = await _post_stored(session, daemon, 5)
        seen_first = await _wait_delivered(first, {*before, *after})
        seen_second = await _wait_delivered(second, set(after))
    assert await daemon.stop() == 0
    assert set(seen_first) == {*before, *after}
    assert max(seen_first.values()) == 1
    # Events accepted before the reload were queued for the outputs configured then.
    assert set(seen_second) == set(after)


async def test_invalid_reload_is_refused_and_old_outputs_keep_delivering(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    good = {"outputs": [file_output("out", output)]}
    daemon = daemons(good)
    await daemon.start()
    bad_configs: list[tuple[dict[str, Any] | str, str]] = [
        ("outputs: [\n", "not valid YAML"),
        ({"outputs": [file_output("out", output, colour="blue")]}, "outputs[0].colour"),
        ({"outputs": [{**good["outputs"][0], "retry": {"initial_backoff_secs": -1}}]},
         "outputs[0].retry.initial_backoff_secs"),
    ]  # fmt: skip
    async with _session() as session:
        for count, (config, problem) in enumerate(bad_configs, start=1):
            await _reload(daemon, config, count=count)
            line = await daemon.wait_for_log(
                "New configuration is invalid; the old one keeps running.",
                level="error",
                count=count,
            )
            assert any(problem in text for text in line["problems"]), line
            ids = await _post_stored(session, daemon, 2)
            await _wait_delivered(output, set(ids))

        # Valid, but the new output cannot start: refused too, the old output stays.
        missing_dir = tmp_path / "missing" / "out.jsonl"
        await _reload(daemon, {"outputs": [file_output("out", missing_dir)]}, count=4)
        await daemon.wait_for_log("New outputs could not start; the old ones keep running.")
        ids = await _post_stored(session, daemon, 2)
        await _wait_delivered(output, set(ids))
    assert not daemon.find_logs("Configuration reloaded.")
    assert await daemon.stop() == 0


async def test_reload_reopens_the_output_file(daemons: DaemonFactory, tmp_path: Path) -> None:
    output, rotated = tmp_path / "out.jsonl", tmp_path / "out.jsonl.1"
    config = {"outputs": [file_output("out", output)]}
    daemon = daemons(config)
    await daemon.start()
    async with _session() as session:
        old = await _post_stored(session, daemon, 3)
        await _wait_delivered(output, set(old))
        await _wait_acked(daemon, session)
        output.rename(rotated)  # what logrotate does before it sends SIGHUP
        await _reload(daemon, config)
        await daemon.wait_for_log("Configuration reloaded.")
        new = await _post_stored(session, daemon, 3)
        seen = await _wait_delivered(output, set(new))
    assert await daemon.stop() == 0
    assert set(seen) == set(new)
    assert set(ids_in(rotated)) == set(old)


async def test_sighup_reopens_the_output_file_when_the_reload_is_refused(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    output, other_dir = tmp_path / "a.jsonl", tmp_path / "g"
    other_dir.mkdir()
    config = {"outputs": [file_output("a", output), file_output("g", other_dir / "g.jsonl")]}
    daemon = daemons(config)
    await daemon.start()
    delivered: dict[Path, set[str]] = {}
    async with _session() as session:

        async def deliver_then_rotate(rotated: Path) -> None:
            ids = await _post_stored(session, daemon, 2)
            await _wait_delivered(output, set(ids))
            await _wait_acked(daemon, session)
            output.rename(rotated)  # what logrotate does before it sends SIGHUP
            delivered[rotated] = set(ids)

        # The configuration on disk is invalid: refused, yet every output reopens its file.
        await deliver_then_rotate(tmp_path / "a.jsonl.1")
        await _reload(daemon, "outputs: [\n")
        await daemon.wait_for_log("New configuration is invalid; the old one keeps running.")
        line = await daemon.wait_for_log("Outputs reopened.")
        assert line["outputs"] == ["a", "g"]

        # Valid, but g's directory is gone: g can neither start anew nor reopen; a still reopens.
        await deliver_then_rotate(tmp_path / "a.jsonl.2")
        shutil.rmtree(other_dir)
        await _reload(daemon, config, count=2)
        await daemon.wait_for_log("New outputs could not start; the old ones keep running.")
        line = await daemon.wait_for_log("Outputs reopened.", count=2)
        assert line["outputs"] == ["a"]
        [line] = daemon.find_logs("Output could not reopen.", level="error")
        assert line["output"] == "g"

        ids = await _post_stored(session, daemon, 2)
        await _wait_delivered(output, set(ids))
        delivered[output] = set(ids)
    assert await daemon.stop() == 0
    assert {path: set(ids_in(path)) for path in delivered} == delivered
    assert not daemon.find_logs("Configuration reloaded.")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_queued_and_in_flight_events_survive_a_reload(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    # Every write to /dev/full fails with ENOSPC: the output retries and nothing leaves the store.
    daemon = daemons({"outputs": [file_output("out", "/dev/full")]})
    await daemon.start()
    results = PostResults()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            await post_event(session, daemon.webhook_url, results)

    async with _session() as session:
        queued = await _post_stored(session, daemon, 10)
        await daemon.wait_for_log("Send failed; will retry.", level="warning", count=2)
        # Posts keep coming while the reload swaps the output for one that can write.
        clients = [asyncio.create_task(client(session)) for _ in range(4)]
        try:
            await wait_until(lambda: len(results.stored) >= 50, timeout=10, what="50 posts")
            await _reload(daemon, {"outputs": [file_output("out", output)]})
            await daemon.wait_for_log("Configuration reloaded.")
            reloaded_at = len(results.stored)
            await wait_until(
                lambda: len(results.stored) >= reloaded_at + 50, timeout=10, what="50 more posts"
            )
        finally:
            stop.set()
            await asyncio.gather(*clients)
        accepted = {*queued, *results.stored}
        seen = await _wait_delivered(output, accepted)
    assert await daemon.stop() == 0
    assert not results.other and not results.unanswered
    assert set(seen) == accepted
    assert max(seen.values()) == 1, "nothing reached /dev/full, so nothing is sent twice"
