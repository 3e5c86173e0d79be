from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from forwarder.files import open_regular_file, read_regular_file
from tests.helpers import finishes_within


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_regular_file_is_read_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"x" * 10)
    assert read_regular_file(path, 10) == b"x" * 10
    with pytest.raises(OSError) as refused:
        read_regular_file(path, 9)
    assert refused.value.errno == errno.EFBIG
    assert str(refused.value) == f"[Errno {errno.EFBIG}] larger than 9 bytes: '{path}'"


def test_a_fifo_without_a_writer_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """A plain open of a FIFO waits for a writer: at a reload, the event loop would wait."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = open_descriptors()

    def read() -> None:
        with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
            read_regular_file(fifo, 1024)

    finishes_within(10, read, fifo)
    # Opening the writer end without a reader fails, ENXIO.
    with pytest.raises(OSError) as no_reader:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO  # the refused open left no reader behind
    assert open_descriptors() == before


def test_other_kinds_of_file_are_named_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Opening a device may act on it: a terminal becomes the daemon's, a tape rewinds."""
    listening = socket.socket(socket.AF_UNIX)
    request.addfinalizer(listening.close)
    listening.bind(str(tmp_path / "socket"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        Path("/dev/zero"): "a character device",
        Path("/dev/null"): "a character device",
        tmp_path: "a directory",
        tmp_path / "socket": "a socket",
        fifo: "a FIFO",
    }
    opened: list[object] = []
    real_open = os.open

    def watched_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", watched_open)
    for path, kind in cases.items():
        with pytest.raises(OSError) as refused:
            open_regular_file(path)
        assert str(refused.value) == f"[Errno {errno.EINVAL}] not a regular file ({kind}): '{path}'"
    assert opened == []


def test_a_file_replaced_between_the_look_and_the_open_is_refused_after_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is looked at again through the descriptor: what it named may have changed."""
    path = tmp_path / "cert.pem"
    path.write_bytes(b"regular")
    real_open = os.open

    def swapping_open(opened: Any, flags: int, *args: Any) -> int:
        if Path(opened) == path:
            path.unlink()
            os.mkfifo(path)
            assert flags & os.O_NONBLOCK and flags & os.O_NOCTTY
        return real_open(opened, flags, *args)

    monkeypatch.setattr(os, "open", swapping_open)
    before = open_descriptors()
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
        open_regular_file(path)
    assert open_descriptors() == before


def test_a_symbolic_link_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """Kubernetes mounts each secret as a link to a file in a timestamped directory."""
    (tmp_path / "real").write_bytes(b"token\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_regular_file(tmp_path / "link", 64) == b"token\n"


def test_a_missing_file_is_the_systems_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        read_regular_file(tmp_path / "nope", 64)
