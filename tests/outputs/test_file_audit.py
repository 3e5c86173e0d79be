"""The `file` output in a hostile or careless environment: a full disk, a file renamed, deleted
or replaced under it, odd paths and modes, and reopens, closes and other writers racing a write.

Nothing reported delivered may be lost, a failure keeps the batch (Retry, never Reject), and the
file stays one whole record per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.outputs import file as file_module
from forwarder.outputs.base import Delivered, HealthcheckError, Retry
from forwarder.outputs.file import FileConfig, FileOutput
from tests.daemon.harness import wait_until
from tests.helpers import sample

EVENT = parse_event(sample("incident_ftp_login"), received_at=datetime.now(UTC))


def output(path: Path, **options: Any) -> FileOutput:
    return FileOutput(FileConfig(name="local", type="file", path=path, **options))


def line(text: str) -> Record:
    return Record(EVENT, text)


def is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


class StuckFsync:
    """os.fsync whose first fsync of a regular file waits for `release`, as on a slow disk;
    then it succeeds, or raises `then`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fd: int | None = None
        self.then: OSError | None = None
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        if self.fd is None and is_regular(fd):
            self.fd = fd
            self.entered.set()
            self.release.wait(10)
            if self.then is not None:
                raise self.then
        self._real(fd)

    async def wait_entered(self) -> int:
        assert await asyncio.to_thread(self.entered.wait, 10), "no write reached its fsync"
        assert self.fd is not None
        return self.fd


@pytest.fixture
def stuck_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckFsync]:
    stuck = StuckFsync()
    monkeypatch.setattr(os, "fsync", stuck)
    yield stuck
    stuck.release.set()  # a failing test must not leave a worker thread waiting


# The file moved, deleted or its directory gone, with no SIGHUP


async def test_a_deleted_file_is_created_again_not_written_into_the_void(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([line("before")])
    target.unlink()  # an operator's `rm`, or logrotate with `rotate 0`
    assert await out.send([line("after")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"after\n"


async def test_a_file_rotated_without_sighup_is_followed(tmp_path: Path) -> None:
    target, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    out = output(target)
    await out.start()
    await out.send([line("before")])
    target.rename(rotated)
    target.touch(mode=0o600)  # logrotate's `create`
    with structlog.testing.capture_logs() as logs:
        assert await out.send([line("after")]) == Delivered()
    await out.aclose()
    assert rotated.read_bytes() == b"before\n"
    assert target.read_bytes() == b"after\n"
    assert [entry["event"] for entry in logs] == [
        "Output file was moved or deleted; opening the path again."
    ]


async def test_a_removed_directory_keeps_the_batch_for_an_operator(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    target = directory / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([line("before")])
    shutil.rmtree(directory)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            result = await out.send([line("kept")])
            assert isinstance(result, Retry), result
            assert result.operator_action
            assert "No such file or directory" in result.reason
    assert len(logs) == 1, "the move is logged once, not at every retry"
    directory.mkdir()
    assert await out.send([line("kept")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"kept\n"


@pytest.mark.parametrize(
    ("code", "operator"),
    [
        (errno.EACCES, True),
        (errno.EROFS, True),
        (errno.ENOSPC, False),
        (errno.EDQUOT, False),
        (errno.EIO, False),
    ],
)
async def test_reopen_failures_are_retried_and_path_problems_need_an_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, operator: bool
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    target.unlink()

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)
    result = await out.send([line("kept")])
    monkeypatch.undo()
    assert result == Retry(f"cannot write {target}: {os.strerror(code)}", operator_action=operator)
    await out.aclose()


# A full disk and torn lines


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("where", ["write", "fsync"])
async def test_a_full_disk_or_quota_keeps_the_batch_and_the_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, where: str
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([line("kept")])
    real_write, real_fsync = os.write, os.fsync

    def half_then_full(fd: int, data: Any) -> int:
        if len(data) > 4:
            real_write(fd, bytes(data[:4]))
        raise OSError(code, os.strerror(code))

    def full(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    if where == "write":
        monkeypatch.setattr(os, "write", half_then_full)
    else:
        monkeypatch.setattr(os, "fsync", full)
    result = await out.send([line("first"), line("second")])
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "fsync", real_fsync)
    # Retried, so neither acked nor dead-lettered; space comes back without an operator.
    assert result == Retry(f"cannot write {target}: {os.strerror(code)}")
    assert target.read_bytes() == b"kept\n"
    assert await out.send([line("first"), line("second")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"kept\nfirst\nsecond\n"


async def test_a_torn_line_left_by_a_crash_is_ended_not_glued_to(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_bytes(b'{"a": 1}\n{"tor')  # the machine died in the middle of a write
    target.chmod(0o600)
    out = output(target)
    await out.start()
    assert await out.send([line('{"b": 2}')]) == Delivered()
    await out.aclose()
    assert target.read_bytes().splitlines() == [b'{"a": 1}', b'{"tor', b'{"b": 2}']


async def test_a_failed_cut_back_leaves_its_fragment_on_a_line_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([line("kept")])
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def cannot(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", half_then_full)
    monkeypatch.setattr(os, "ftruncate", cannot)
    assert isinstance(await out.send([line("lost-half")]), Retry)
    monkeypatch.undo()
    assert await out.send([line("lost-half")]) == Delivered()
    await out.aclose()
    assert target.read_bytes().splitlines() == [b"kept", b"los", b"lost-half"]


async def test_the_cut_back_never_extends_a_file_truncated_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([line("kept")])

    def truncated_then_full(fd: int, data: Any) -> int:
        os.truncate(target, 0)  # logrotate's copytruncate, at the worst moment
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", truncated_then_full)
    assert isinstance(await out.send([line("retried")]), Retry)
    monkeypatch.undo()
    assert await out.send([line("retried")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"retried\n", "no NUL bytes where the old lines were"


async def test_a_file_that_takes_no_bytes_is_a_retry_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    calls = 0

    def nothing(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 100:  # bounds the test on an output that would spin for ever
            raise OSError(errno.ENOSPC, "No space left on device")
        return 0

    monkeypatch.setattr(os, "write", nothing)
    result = await out.send([line("kept")])
    monkeypatch.undo()
    await out.aclose()
    assert result == Retry(f"cannot write {target}: the file took no bytes")
    assert calls == 1


# What the path names


async def test_a_fifo_is_refused_at_once_with_or_without_a_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
            await asyncio.wait_for(output(fifo).start(), 5)  # it used to block for ever
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
                await asyncio.wait_for(output(fifo).start(), 5)
        finally:
            os.close(reader)
    finally:
        # An output that did block on open is let go, so the test fails instead of hanging.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    with pytest.raises(HealthcheckError, match=r"not a regular file \(a FIFO\)"):
        await output(fifo).healthcheck()


async def test_a_socket_or_a_directory_is_refused_and_unhealthy(tmp_path: Path) -> None:
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    try:
        with pytest.raises(OSError, match=r"No such device or address|not a regular file"):
            await output(tmp_path / "sock").start()
        with pytest.raises(HealthcheckError, match=r"not a regular file \(a socket\)"):
            await output(tmp_path / "sock").healthcheck()
    finally:
        listening.close()
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        await output(tmp_path / "dir").start()
    with pytest.raises(HealthcheckError, match=r"not a regular file \(a directory\)"):
        await output(tmp_path / "dir").healthcheck()


async def test_a_full_file_system_fails_the_healthcheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = output(tmp_path / "events.jsonl")
    await out.healthcheck()
    monkeypatch.setattr(
        os, "statvfs", lambda path: SimpleNamespace(f_blocks=1000, f_bfree=0, f_bavail=0)
    )
    with pytest.raises(HealthcheckError, match="no space left on the file system of"):
        await out.healthcheck()


# Modes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000, 0o277, 0o377])
async def test_a_new_file_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "events.jsonl"
    previous = os.umask(umask)
    try:
        out = output(target)
        await out.start()
        await out.send([line("secret")])
        await out.aclose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


async def test_an_existing_file_others_can_read_is_warned_about_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    target = tmp_path / "events.jsonl"
    target.write_bytes(b"")
    target.chmod(0o644)
    out = output(target)
    with structlog.testing.capture_logs() as logs:
        await out.start()
    await out.aclose()
    [warning] = logs
    assert warning["log_level"] == "warning"
    assert (
        warning["event"] == "Output file can be read or written by any user; events are sensitive."
    )
    assert warning["mode"] == "0o644"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "the operator's choice stands"


# fsync: batch


def recording_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each fsync from now on syncs: "file" or "directory"."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced


async def test_a_file_created_after_a_rotation_has_its_directory_synced_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "events.jsonl"
    synced = recording_fsyncs(monkeypatch)
    out = output(target)
    await out.start()
    await out.send([line("one")])
    await out.send([line("two")])
    target.rename(tmp_path / "events.jsonl.1")
    await out.send([line("three")])
    await out.aclose()
    # Without the directory's fsync, a power cut could lose the new file and all it was sent.
    assert synced == ["file", "directory", "file", "file", "directory"]


async def test_a_file_reopened_before_its_first_batch_still_has_its_directory_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "events.jsonl"
    synced = recording_fsyncs(monkeypatch)
    out = output(target)
    await out.start()  # creates the file
    await out.reopen()  # a SIGHUP before the first event finds it there
    await out.send([line("one")])
    await out.aclose()
    assert synced == ["file", "directory"]


async def test_a_second_output_on_a_file_just_made_syncs_its_directory_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a reload does: the new output opens the file the old one created.
    target = tmp_path / "events.jsonl"
    synced = recording_fsyncs(monkeypatch)
    first, second = output(target), output(target)
    await first.start()
    await second.start()
    await second.send([line("one")])
    await first.aclose()
    await second.aclose()
    assert synced == ["file", "directory"]


async def test_a_directory_the_service_cannot_list_is_warned_about_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def unlistable(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", unlistable)
    out = output(tmp_path / "events.jsonl")
    await out.start()
    with structlog.testing.capture_logs() as logs:
        assert await out.send([line("one")]) == Delivered()
        assert await out.send([line("two")]) == Delivered()
    await out.aclose()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and "directory" in warnings[0]["event"]
    assert (tmp_path / "events.jsonl").read_text().splitlines() == ["one", "two"]


async def test_a_check_stuck_on_a_hung_file_system_is_waited_on_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = output(tmp_path / "events.jsonl")
    await out.start()
    entered, released, calls = threading.Event(), threading.Event(), []
    real_problem = out._problem

    def hung() -> str | None:
        calls.append(threading.current_thread().name)
        entered.set()
        released.wait(10)
        return real_problem()

    monkeypatch.setattr(out, "_problem", hung)
    for _ in range(3):  # three rounds of the pipeline's checks, each given up after a while
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await out.healthcheck()
    await asyncio.to_thread(entered.wait, 10)
    # One thread stuck, of the output's own, not one more of the shared pool every round.
    assert len(calls) == 1 and calls[0].startswith("file-check")
    released.set()
    async with asyncio.timeout(10):
        await out.healthcheck()
    await out.aclose()
    with pytest.raises(HealthcheckError, match="closed"):
        await out.healthcheck()


# Reopens, closes and other writers during a write


async def test_a_close_during_a_write_keeps_the_file_open_until_the_write_ends(
    tmp_path: Path, stuck_fsync: StuckFsync
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    send = asyncio.create_task(out.send([line("in flight")]))
    fd = await stuck_fsync.wait_entered()
    # A dispatcher stopped after its graceful time: the send is cancelled, its thread goes on.
    send.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await send
    await out.aclose()
    inode = target.stat().st_ino
    # Closed now, the number would go to the next file opened anywhere in the daemon (the
    # store's, a socket), and the write, or its cut-back, would land there.
    assert os.fstat(fd).st_ino == inode
    stuck_fsync.release.set()

    def closed() -> bool:
        try:
            return os.fstat(fd).st_ino != inode
        except OSError:
            return True

    await wait_until(closed, timeout=10, what="the write to end and close the file")
    assert target.read_bytes() == b"in flight\n"


async def test_sighup_during_a_slow_write_does_not_wait_for_it(
    tmp_path: Path, stuck_fsync: StuckFsync
) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    send = asyncio.create_task(out.send([line("during")]))
    await stuck_fsync.wait_entered()
    async with asyncio.timeout(5):
        await out.reopen()  # logrotate's SIGHUP holds the reload lock: it must not hang
    stuck_fsync.release.set()
    assert await send == Delivered()
    assert await out.send([line("after")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"during\nafter\n"


async def test_a_batch_whose_file_is_rotated_during_the_write_is_written_again(
    tmp_path: Path, stuck_fsync: StuckFsync
) -> None:
    target, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    out = output(target)
    await out.start()
    send = asyncio.create_task(out.send([line("during")]))
    await stuck_fsync.wait_entered()
    target.rename(rotated)  # logrotate may compress or delete it right after
    await out.reopen()
    stuck_fsync.release.set()
    assert await send == Delivered()
    await out.aclose()
    assert rotated.read_bytes() == b"during\n"
    assert target.read_bytes() == b"during\n", "at least once: in the file at the path too"


class _WatchedLock:
    """A lock that says when a second writer has to wait for it."""

    def __init__(self, contended: threading.Event) -> None:
        self._lock = threading.Lock()
        self._contended = contended

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self._contended.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


async def test_a_failed_write_never_cuts_another_outputs_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stuck_fsync: StuckFsync
) -> None:
    """Two outputs on one file (or a reload's new output while the old one's write ends)."""
    arrived = threading.Event()  # the second writer wrote, or waits for the first

    class WatchedInodeLock:
        def __init__(self) -> None:
            self.lock = _WatchedLock(arrived)

    # raising=False: an output without per-file locking must fail below, not here.
    monkeypatch.setattr(file_module, "_InodeLock", WatchedInodeLock, raising=False)
    real_write = os.write

    def noticed_write(fd: int, data: Any) -> int:
        if bytes(data) == b"second\n":
            arrived.set()
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", noticed_write)
    target = tmp_path / "events.jsonl"
    first, second = output(target), output(target)
    await first.start()
    await second.start()
    stuck_fsync.then = OSError(errno.EIO, "Input/output error")
    failing = asyncio.create_task(first.send([line("first")]))
    await stuck_fsync.wait_entered()
    succeeding = asyncio.create_task(second.send([line("second")]))
    assert await asyncio.to_thread(arrived.wait, 10)
    stuck_fsync.release.set()
    assert isinstance(await failing, Retry)
    assert await succeeding == Delivered()
    await first.aclose()
    await second.aclose()
    assert target.read_bytes() == b"second\n"
