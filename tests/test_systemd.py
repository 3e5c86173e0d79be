"""The sd_notify client against a datagram socket the test owns, standing in for systemd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from forwarder import systemd
from forwarder.settings import StoreConfig
from forwarder.store.outbox import Outbox

RECEIVE_TIMEOUT_SECS = 5.0
STALL_STATUS = "store thread not responding for "
STALLED = "The store thread is not responding; posts wait for their commit."
RECOVERED = "The store thread responds again."


class RecordingLog:
    """Stands in for the module's structlog logger, so a test can count what was logged."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def info(self, message: str, **fields: Any) -> None:
        self.records.append(("info", message))

    def warning(self, message: str, **fields: Any) -> None:
        self.records.append(("warning", message))

    def error(self, message: str, **fields: Any) -> None:
        self.records.append(("error", message))

    def exception(self, message: str, **fields: Any) -> None:
        self.records.append(("exception", message))


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket, exported as NOTIFY_SOCKET."""
    # A short directory: AF_UNIX paths are limited to 108 bytes and tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(RECEIVE_TIMEOUT_SECS)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            monkeypatch.delenv("WATCHDOG_USEC", raising=False)
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
            yield sock


@pytest.fixture
def recording_log(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    recorder = RecordingLog()
    monkeypatch.setattr(systemd, "log", recorder)
    monkeypatch.setattr(systemd, "_warned", False)
    return recorder


def parse(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode("utf-8").split("\n")
    return dict(line.split("=", 1) for line in lines)


def receive(sock: socket.socket) -> dict[str, str]:
    return parse(sock.recv(4096))


async def receive_async(sock: socket.socket) -> dict[str, str]:
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    return parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), RECEIVE_TIMEOUT_SECS))


async def receive_until(
    sock: socket.socket, wanted: Callable[[dict[str, str]], bool]
) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The datagrams before the first one `wanted` accepts, and that one."""

    async def scan() -> tuple[list[dict[str, str]], dict[str, str]]:
        before: list[dict[str, str]] = []
        while not wanted(fields := await receive_async(sock)):
            before.append(fields)
        return before, fields

    # One bound for the whole scan: datagrams that keep coming must not keep the test waiting.
    return await asyncio.wait_for(scan(), RECEIVE_TIMEOUT_SECS)


def is_ping(fields: dict[str, str]) -> bool:
    return fields.get("WATCHDOG") == "1"


def is_stall(fields: dict[str, str]) -> bool:
    return "WATCHDOG" not in fields and fields.get("STATUS", "").startswith(STALL_STATUS)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Liveness:
    """A liveness check the test turns on and off; while off it answers False."""

    def __init__(self, *, answer: bool) -> None:
        self.answer = answer
        self.calls: list[float] = []

    async def __call__(self, wait_secs: float) -> bool:
        self.calls.append(wait_secs)
        return self.answer


def store_records(recording_log: RecordingLog) -> list[tuple[str, str]]:
    """What was logged about the store thread (a full notify socket may add a warning)."""
    return [record for record in recording_log.records if "store thread" in record[1]]


def test_ready(receiver: socket.socket) -> None:
    assert systemd.ready() is True
    assert receive(receiver) == {"READY": "1"}


def test_ready_with_status_is_one_datagram(receiver: socket.socket) -> None:
    systemd.ready("listening on 127.0.0.1:8080")
    assert receive(receiver) == {"READY": "1", "STATUS": "listening on 127.0.0.1:8080"}


def test_stopping(receiver: socket.socket) -> None:
    systemd.stopping("draining 3 sends")
    assert receive(receiver) == {"STOPPING": "1", "STATUS": "draining 3 sends"}


def test_watchdog(receiver: socket.socket) -> None:
    systemd.watchdog()
    assert receive(receiver) == {"WATCHDOG": "1"}


def test_status(receiver: socket.socket) -> None:
    systemd.status("queued 12, oldest 3s")
    assert receive(receiver) == {"STATUS": "queued 12, oldest 3s"}


def test_reloading_carries_the_monotonic_clock(receiver: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = receive(receiver)
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_a_newline_in_a_value_cannot_add_an_assignment(receiver: socket.socket) -> None:
    systemd.status("output down\nREADY=1")
    assert receive(receiver) == {"STATUS": "output down READY=1"}


def test_generic_notify_sends_every_field(receiver: socket.socket) -> None:
    systemd.notify(EXTEND_TIMEOUT_USEC=5_000_000, STATUS="opening the store")
    assert receive(receiver) == {"EXTEND_TIMEOUT_USEC": "5000000", "STATUS": "opening the store"}


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"canary-forwarder-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_SECS)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready() is True
        assert receive(sock) == {"READY": "1"}


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def no_socket_please(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a socket was opened although NOTIFY_SOCKET is unset")

    monkeypatch.setattr(socket, "socket", no_socket_please)
    assert systemd.ready() is False
    assert systemd.stopping() is False
    assert systemd.watchdog() is False
    assert systemd.Notifier.from_environ().enabled is False


def test_a_failed_send_returns_false_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, recording_log: RecordingLog
) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        monkeypatch.setenv("NOTIFY_SOCKET", str(Path(directory) / "nobody-listens"))
        assert systemd.ready() is False
        assert systemd.watchdog() is False
    assert [level for level, _ in recording_log.records] == ["warning"]


def test_a_relative_socket_path_is_refused_without_raising(
    monkeypatch: pytest.MonkeyPatch, recording_log: RecordingLog
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert systemd.ready() is False
    assert len(recording_log.records) == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert systemd.watchdog_interval(environ) == expected


async def test_watchdog_loop_pings_with_a_live_status(receiver: socket.socket) -> None:
    calls = 0

    def live_status() -> str:
        nonlocal calls
        calls += 1
        return f"queued {calls}"

    task = asyncio.create_task(systemd.watchdog_loop(live_status, interval=0.001))
    try:
        first = await receive_async(receiver)
        second = await receive_async(receiver)
    finally:
        task.cancel()
    assert first == {"WATCHDOG": "1", "STATUS": "queued 1"}
    assert second == {"WATCHDOG": "1", "STATUS": "queued 2"}
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watchdog_loop_takes_its_interval_from_watchdog_usec(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000")
    task = asyncio.create_task(systemd.watchdog_loop(lambda: "ok"))
    try:
        pings = [await receive_async(receiver) for _ in range(3)]
    finally:
        task.cancel()
    assert all(ping["WATCHDOG"] == "1" for ping in pings)


async def test_without_a_watchdog_the_loop_sends_status_only(receiver: socket.socket) -> None:
    task = asyncio.create_task(systemd.watchdog_loop(lambda: "queued 0"))
    try:
        assert await receive_async(receiver) == {"STATUS": "queued 0"}
    finally:
        task.cancel()


async def test_a_failing_status_does_not_stop_the_pings(
    receiver: socket.socket, recording_log: RecordingLog
) -> None:
    def broken_status() -> str:
        raise RuntimeError("counts unavailable")

    task = asyncio.create_task(systemd.watchdog_loop(broken_status, interval=0.001))
    try:
        pings = [await receive_async(receiver) for _ in range(2)]
    finally:
        task.cancel()
    assert pings == [{"WATCHDOG": "1"}, {"WATCHDOG": "1"}]
    assert recording_log.records == [("exception", "Cannot build the systemd status line.")]


async def test_watchdog_loop_returns_at_once_outside_systemd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def status_never_needed() -> str:
        raise AssertionError("status built although nothing listens")

    await asyncio.wait_for(systemd.watchdog_loop(status_never_needed), RECEIVE_TIMEOUT_SECS)


async def test_watchdog_loop_withholds_pings_while_the_store_thread_is_stuck(
    receiver: socket.socket,
) -> None:
    alive = Liveness(answer=False)
    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 4", interval=0.005, alive=alive)
    )
    try:
        stalled = [await receive_async(receiver) for _ in range(3)]
        alive.answer = True
        before, resumed = await receive_until(receiver, is_ping)
        pings = [await receive_async(receiver) for _ in range(2)]
    finally:
        await stop(task)
    assert all(is_stall(fields) for fields in stalled + before), stalled + before
    assert all(fields["STATUS"].endswith("s; queued 4") for fields in stalled)
    assert resumed == {"WATCHDOG": "1", "STATUS": "queued 4"}
    assert pings == [{"WATCHDOG": "1", "STATUS": "queued 4"}] * 2
    assert set(alive.calls) == {0.005}  # the check may take at most the ping interval


async def test_watchdog_loop_stops_when_cancelled_just_as_its_check_answers(
    receiver: socket.socket,
) -> None:
    """Python 3.11's `asyncio.wait_for` returns the answer instead of raising CancelledError
    when the awaited check finishes in the same turn of the loop as the cancel: the loop went
    on pinging, and the shutdown waiting for it never ended (seen as a daemon that logged
    "Stopping." and hung)."""
    asked = asyncio.Event()
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def check(wait_secs: float) -> bool:
        asked.set()
        return await answer

    task = asyncio.create_task(systemd.watchdog_loop(lambda: "queued 0", interval=60, alive=check))
    await asked.wait()
    answer.set_result(True)
    task.cancel()
    try:
        # asyncio.wait: waiting must not cancel the task again, which would hide the bug.
        await asyncio.wait({task}, timeout=RECEIVE_TIMEOUT_SECS)
        assert task.cancelled(), "the watchdog loop went on after it was cancelled"
    finally:
        await stop(task)


async def test_a_check_that_never_answers_is_cut_at_the_ping_interval(
    receiver: socket.socket,
) -> None:
    thread_back = asyncio.Event()

    async def hangs_until_released(wait_secs: float) -> bool:
        await thread_back.wait()
        return True

    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 0", interval=0.01, alive=hangs_until_released)
    )
    try:
        stalled = [await receive_async(receiver) for _ in range(2)]
        thread_back.set()
        before, resumed = await receive_until(receiver, is_ping)
    finally:
        await stop(task)
    assert all(is_stall(fields) for fields in stalled + before), stalled + before
    assert resumed == {"WATCHDOG": "1", "STATUS": "queued 0"}


async def test_each_stall_is_logged_once_and_so_is_its_end(
    receiver: socket.socket, recording_log: RecordingLog
) -> None:
    alive = Liveness(answer=False)
    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 0", interval=0.005, alive=alive)
    )
    try:
        for _ in range(2):
            # Several ticks fail within each stall, yet it gives one ERROR.
            for _ in range(3):
                await receive_until(receiver, is_stall)
            alive.answer = True
            await receive_until(receiver, is_ping)
            await receive_until(receiver, is_ping)
            alive.answer = False
    finally:
        await stop(task)
    assert store_records(recording_log) == [
        ("error", STALLED),
        ("warning", RECOVERED),
        ("error", STALLED),
        ("warning", RECOVERED),
    ]


async def test_a_failing_check_counts_as_a_stall(
    receiver: socket.socket, recording_log: RecordingLog
) -> None:
    async def broken(wait_secs: float) -> bool:
        raise RuntimeError("no executor")

    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 0", interval=0.005, alive=broken)
    )
    try:
        stalled = [await receive_async(receiver) for _ in range(3)]
    finally:
        await stop(task)
    assert all(is_stall(fields) for fields in stalled), stalled
    assert store_records(recording_log) == [
        ("exception", "The store thread's liveness check failed."),
        ("error", STALLED),
    ]


async def test_without_a_watchdog_the_status_mentions_the_stall(receiver: socket.socket) -> None:
    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 0", alive=Liveness(answer=False))
    )
    try:
        fields = await receive_async(receiver)
    finally:
        await stop(task)
    assert list(fields) == ["STATUS"]
    assert fields["STATUS"].startswith(STALL_STATUS)
    assert fields["STATUS"].endswith("; queued 0")


async def test_a_stuck_store_thread_stops_the_pings_end_to_end(
    receiver: socket.socket, tmp_path: Path
) -> None:
    gate = threading.Event()
    store_thread = ThreadPoolExecutor(max_workers=1)
    outbox = Outbox(StoreConfig(path=tmp_path / "state"), store_thread)
    task = asyncio.create_task(
        systemd.watchdog_loop(lambda: "queued 0", interval=0.01, alive=outbox.responsive)
    )
    try:
        assert is_ping(await receive_async(receiver))
        # As an fsync on a dead disk would: every later store call waits behind this one.
        store_thread.submit(gate.wait, RECEIVE_TIMEOUT_SECS * 4)
        await receive_until(receiver, is_stall)
        stalled = [await receive_async(receiver) for _ in range(2)]
        gate.set()
        before, _ = await receive_until(receiver, is_ping)
    finally:
        gate.set()
        await stop(task)
        await outbox.aclose()
    assert all(is_stall(fields) for fields in stalled + before), stalled + before
