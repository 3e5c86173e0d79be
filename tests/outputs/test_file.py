from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import Delivered, HealthcheckError, Partial, Reject, Retry
from forwarder.outputs.file import FileConfig, FileOutput
from tests.helpers import sample

EVENT = parse_event(sample("incident_ftp_login"), received_at=datetime.now(UTC))


def output(path: Path, **options: Any) -> FileOutput:
    return FileOutput(FileConfig(name="local", type="file", path=path, **options))


async def test_documents_and_text_become_one_line_each(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    # U+2028, U+2029, NEL and DEL are raw inside JSON strings; str.splitlines breaks on them.
    hostile = "line\nbreak\u2028{x}\u2029\x85\x7f"
    result = await out.send(
        [Record(EVENT, {"a": hostile}), Record(EVENT, "CEF:0|Thinkst|Canary|x")]
    )
    await out.aclose()
    assert result == Delivered()
    written = target.read_bytes()
    lines = written.splitlines()
    assert orjson.loads(lines[0]) == {"a": hostile}
    assert lines[1] == b"CEF:0|Thinkst|Canary|x"
    assert len(lines) == 2
    assert len(written.decode().splitlines()) == 2
    assert os.stat(target).st_mode & 0o777 == 0o600


async def test_text_spanning_lines_is_rejected_alone(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target, fsync="never")
    await out.start()
    result = await out.send(
        [Record(EVENT, "one"), Record(EVENT, "two\nforged"), Record(EVENT, "3")]
    )
    await out.aclose()
    assert result == Partial({1: Reject("text record contains a line break")})
    assert target.read_bytes() == b"one\n3\n"


async def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([Record(EVENT, "before")])
    target.rename(tmp_path / "events.jsonl.1")
    await out.reopen()
    await out.send([Record(EVENT, "after")])
    await out.aclose()
    assert (tmp_path / "events.jsonl.1").read_bytes() == b"before\n"
    assert target.read_bytes() == b"after\n"


async def test_write_failure_is_retry_and_leaves_no_torn_line(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([Record(EVENT, "kept")])
    real_write = os.write
    calls = 0

    def half_then_fail(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(28, "No space left on device")

    os.write = half_then_fail  # type: ignore[assignment]
    try:
        result = await out.send([Record(EVENT, "lost-half")])
    finally:
        os.write = real_write
    assert isinstance(result, Retry)
    assert "No space left on device" in result.reason
    assert target.read_bytes() == b"kept\n"
    assert await out.send([Record(EVENT, "again")]) == Delivered()
    await out.aclose()
    assert target.read_bytes() == b"kept\nagain\n"


@pytest.mark.parametrize(("policy", "fsyncs"), [("batch", 2), ("never", 0)])
async def test_fsync_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, fsyncs: int
) -> None:
    files: list[int] = []
    directories: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        (directories if stat.S_ISDIR(os.fstat(fd).st_mode) else files).append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    out = output(tmp_path / "events.jsonl", fsync=policy)
    await out.start()
    await out.send([Record(EVENT, "one"), Record(EVENT, "two")])
    await out.send([Record(EVENT, "three")])
    await out.aclose()
    assert len(files) == fsyncs  # "batch": once per send, after its last line
    # ... and the directory once, the first time, since the output created the file.
    assert len(directories) == (1 if policy == "batch" else 0)


async def test_failed_fsync_is_retry_and_the_batch_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failed fsync the kernel may already have dropped the dirty pages (fsyncgate):
    # the batch counts as not written, so it is cut off and sent again, not half-trusted.
    target = tmp_path / "events.jsonl"
    out = output(target)
    await out.start()
    await out.send([Record(EVENT, "kept")])

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    result = await out.send([Record(EVENT, "unsure")])
    monkeypatch.undo()
    assert isinstance(result, Retry)
    assert "Input/output error" in result.reason
    assert target.read_bytes() == b"kept\n"
    await out.aclose()


async def test_missing_directory_fails_start_and_healthcheck(tmp_path: Path) -> None:
    out = output(tmp_path / "nope" / "events.jsonl")
    with pytest.raises(HealthcheckError, match="nope does not exist"):
        await out.healthcheck()
    with pytest.raises(FileNotFoundError):
        await out.start()
