"""The sd_notify client against a datagram socket the test owns, standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder import systemd

RECEIVE_TIMEOUT_SECS = 5.0


class RecordingLog:
    """Stands in for the module's structlog logger, so a test can count what was logged."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def warning(self, message: str, **fields: Any) -> None:
        self.records.append(("warning", message))

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
