"""Opening the small files an operator names: secrets, certificates and keys."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["not_a_regular_file", "open_regular_file", "read_regular_file"]


def not_a_regular_file(mode: int) -> str:
    """Why a file of `mode` is refused where a regular file belongs: `not a regular file (a
    FIFO)` and the like."""
    return f"not a regular file ({_kind_of_file(mode)})"


def _kind_of_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular_file(path: Path) -> BinaryIO:
    """`path` opened for reading, if it is a regular file; else OSError naming it.

    A FIFO with no writer would block a plain open (and the event loop with it, at a reload),
    and a device never ends; opening one may act on it (a terminal, a tape that rewinds). So
    the path is looked at first, and then, as it may have changed in between, the file opened
    (without blocking, and never as a controlling terminal) is looked at again.

    Raises ValueError for a path with a NUL byte, as `open` does.
    """
    _refuse_unless_regular(path, os.stat(path).st_mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _refuse_unless_regular(path, os.fstat(descriptor).st_mode)
    except BaseException:
        os.close(descriptor)
        raise
    return open(descriptor, "rb")


def _refuse_unless_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, not_a_regular_file(mode), str(path))


def read_regular_file(path: Path, limit: int) -> bytes:
    """The content of `path`, a regular file of at most `limit` bytes; else OSError naming it.

    Reads at most one byte past the limit, so a file far larger costs no more than that.
    """
    with open_regular_file(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data
