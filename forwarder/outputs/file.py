"""`file`: one record per line in a local file, for audit copies and the built-in default.

Documents are written as compact JSON, text records as they are. With `fsync: batch` (the
default) a batch is only reported delivered once it is on disk, and so, after the first batch
of each open, is the file's directory entry. A write that fails half-way is cut back to where
it started, so a retry never leaves a torn record behind; a torn last line left by a crash or a
failed cut-back is ended before the next record, never glued to it.

Before and after each write the output checks that its path still names the file it has open:
one that was renamed (logrotate without a SIGHUP) or deleted is reopened, and a batch that went
into a file renamed while it was being written is written again into the new one, since
logrotate may compress or delete the old one at once. SIGHUP reopens the file as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from pydantic import Field

from forwarder.files import not_a_regular_file
from forwarder.mappers.base import Record
from forwarder.outputs.base import (
    Delivered,
    HealthcheckError,
    Output,
    OutputConfig,
    Partial,
    Reject,
    Retry,
    SendResult,
)

__all__ = ["FileConfig", "FileOutput", "encode_line"]

log = structlog.get_logger("forwarder.outputs.file")

# Failures that waiting does not fix: the path, a permission or a mount is wrong. Disk full,
# quota and I/O errors stay ordinary retries: space comes back when logrotate or a cleanup runs.
_OPERATOR_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ENXIO,
        errno.EINVAL,
    }
)
# How often one batch is written again because its file was renamed during the write.
_WRITE_ATTEMPTS = 3
# O_NONBLOCK: opening a FIFO that nobody reads would otherwise block the start for ever.
# O_NOCTTY: a terminal named by mistake must not become the daemon's controlling terminal.
_OPEN_FLAGS = os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


class FileConfig(OutputConfig):
    path: Path = Field(default=Path("canary-events.jsonl"))
    """File to append to; created with mode 0600 if missing. Its directory must exist. A
    directory, FIFO, socket or block device is refused."""
    fsync: Literal["batch", "never"] = "batch"
    """`batch`: a batch counts as delivered once it is fsynced (and a new file's directory
    entry too), so it survives a power loss. `never`: once the kernel has it; a crash of the
    machine, not of the daemon, can lose what was reported delivered shortly before."""


def encode_line(record: Record) -> bytes:
    """One record as one line; raises ValueError if a text record spans lines."""
    text = record.text()
    if "\n" in text or "\r" in text:
        raise ValueError("text record contains a line break")
    return text.encode("utf-8", "surrogateescape") + b"\n"


class _InodeLock:
    """Serialises appends to one file within the process.

    Two outputs may name the same file, and a reload's new output may write while the last
    write of the output it replaced still runs: a failed append is cut back to where it began,
    which must never cut away another writer's lines.
    """

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_inode_locks: weakref.WeakValueDictionary[tuple[int, int], _InodeLock] = (
    weakref.WeakValueDictionary()
)
_inode_locks_guard = threading.Lock()


def _inode_lock(info: os.stat_result) -> _InodeLock:
    key = (info.st_dev, info.st_ino)
    with _inode_locks_guard:
        found = _inode_locks.get(key)
        if found is None:
            found = _InodeLock()
            _inode_locks[key] = found
        return found


@dataclass(eq=False, slots=True)
class _Handle:
    """One open file. Closed once retired and no write uses it any more."""

    fd: int
    dev: int
    ino: int
    inode_lock: _InodeLock
    unsynced_directory: str | None
    """The file's directory, until the first batch through this handle has synced it."""
    users: int = 0
    retired: bool = False


def _writable_kind(mode: int) -> bool:
    # Character devices stay allowed: /dev/null discards on purpose, /dev/full tests a full disk.
    return stat.S_ISREG(mode) or stat.S_ISCHR(mode)


def _ends_a_line(fd: int, end: int) -> bool:
    try:
        return os.pread(fd, 1, end - 1) == b"\n"
    except OSError:
        return True  # opened write-only (no read permission): cannot tell, so add nothing


def _fsync_directory(directory: str) -> bool:
    """Sync the directory's entries; False when the service may not open it to do so."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        # A directory the service may write but not list (-wx): the file is written all the
        # same, and refusing every batch for it would hold every event back.
        return False
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory; their entries are as durable as they get.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
    return True


def _retry(path: Path, exc: OSError) -> Retry:
    return Retry(
        f"cannot write {path}: {exc.strerror or exc}",
        operator_action=exc.errno in _OPERATOR_ERRNOS,
    )


class FileOutput(Output[FileConfig]):
    config_class = FileConfig

    def __init__(self, config: FileConfig) -> None:
        super().__init__(config)
        # Guards _handle, _closed and each handle's users/retired; never held across I/O, so a
        # reopen or close never waits for a write stuck on a slow disk.
        self._state = threading.Lock()
        self._handle: _Handle | None = None
        self._closed = False
        self._send_lock = asyncio.Lock()
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-check")
        self._check: asyncio.Future[str | None] | None = None

    # Opening and closing; these run in worker threads.

    def _open_handle(self) -> _Handle:
        path = self.config.path
        created = True
        try:
            fd = self._open_fd(path, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            created = False
            fd = self._open_fd(path, os.O_CREAT)
        try:
            if created:
                # 0600 whatever the umask: one of 0277 would leave the file read-only, and the
                # next reopen (a SIGHUP, a rotation) could not open it for writing.
                os.fchmod(fd, 0o600)
            info = os.fstat(fd)
            if not _writable_kind(info.st_mode):
                raise OSError(errno.EINVAL, not_a_regular_file(info.st_mode), str(path))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        if not created and stat.S_ISREG(info.st_mode) and info.st_mode & 0o007:
            log.warning(
                "Output file can be read or written by any user; events are sensitive.",
                output=self.name,
                path=str(path),
                mode=oct(stat.S_IMODE(info.st_mode)),
            )
        return _Handle(
            fd,
            info.st_dev,
            info.st_ino,
            _inode_lock(info),
            # Synced after the first batch of every handle, not only of one that created the
            # file: a reopen, a reload's new output or a second output on the path finds the
            # file there without knowing whether its entry was ever synced.
            os.path.dirname(os.path.realpath(path)),
        )

    @staticmethod
    def _open_fd(path: Path, create: int) -> int:
        # Read access lets a write look at the last byte for a torn line.
        try:
            return os.open(path, os.O_RDWR | _OPEN_FLAGS | create, 0o600)
        except PermissionError:
            return os.open(path, os.O_WRONLY | _OPEN_FLAGS | create, 0o600)

    def _names(self, handle: _Handle) -> bool:
        """Whether the configured path still names the file `handle` has open."""
        try:
            info = os.stat(self.config.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == (handle.dev, handle.ino)

    def _install(self, fresh: _Handle, *, use: bool) -> None:
        """Make `fresh` the handle writes use, and retire the one it replaces. With `use`, the
        caller takes it for a write in the same step, before any reopen can retire it."""
        with self._state:
            closed = self._closed
            if closed:
                old: _Handle | None = fresh
            else:
                old, self._handle = self._handle, fresh
                fresh.users += use
        if old is not None:
            self._retire(old)
        if closed:
            raise OSError(errno.EBADF, "the output is closed")

    def _retire(self, handle: _Handle) -> None:
        # Close only once no write uses it: the fd number would go to the next file opened
        # anywhere in the process, and the write, or its cut-back, would change that file.
        with self._state:
            if handle.retired:
                return
            handle.retired = True
            close = handle.users == 0
        if close:
            os.close(handle.fd)

    def _acquire(self) -> _Handle:
        with self._state:
            if self._closed:
                raise OSError(errno.EBADF, "the output is closed")
            handle = self._handle
            if handle is not None:
                handle.users += 1
        if handle is not None:
            if self._names(handle):
                return handle
            self._release(handle)
            with self._state:
                moved = self._handle is handle
                if moved:
                    self._handle = None
            if moved:  # once per file, not at every retry while the path cannot be opened
                self._retire(handle)
                log.info(
                    "Output file was moved or deleted; opening the path again.",
                    output=self.name,
                    path=str(self.config.path),
                )
        fresh = self._open_handle()
        self._install(fresh, use=True)
        return fresh

    def _release(self, handle: _Handle) -> None:
        with self._state:
            handle.users -= 1
            close = handle.retired and handle.users == 0
        if close:
            os.close(handle.fd)

    def _detach(self, *, closing: bool) -> None:
        with self._state:
            self._closed = self._closed or closing
            old, self._handle = self._handle, None
        if old is not None:
            self._retire(old)

    def _reopen(self) -> None:
        with self._state:
            if self._closed:
                return
        self._detach(closing=False)
        self._install(self._open_handle(), use=False)

    # Writing

    def _write(self, data: bytes) -> None:
        for _ in range(_WRITE_ATTEMPTS):
            handle = self._acquire()
            try:
                with handle.inode_lock.lock:
                    self._append(handle, data)
            finally:
                self._release(handle)
            if self._names(handle):
                return
            # Renamed or deleted while being written: logrotate may compress or remove the old
            # file right away, so the batch goes into the file now at the path too (at least
            # once: it may be in both).
        raise OSError(errno.ESTALE, "the file was replaced during every write")

    def _append(self, handle: _Handle, data: bytes) -> None:
        fd = handle.fd
        start = os.lseek(fd, 0, os.SEEK_END)
        if start and not _ends_a_line(fd, start):
            # A crash or a failed cut-back left a torn last line: end it, so the first record
            # of this batch stays a line of its own.
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if not written:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[written:]
            if self.config.fsync == "batch":
                os.fsync(fd)
                if handle.unsynced_directory is not None:
                    if not _fsync_directory(handle.unsynced_directory):
                        log.warning(
                            "Cannot open the output file's directory to sync its entries; a "
                            "power cut may lose a file just created in it.",
                            output=self.name,
                            directory=handle.unsynced_directory,
                        )
                    handle.unsynced_directory = None
        except OSError:
            # Cut a half-written batch back to where it began so the retry leaves no torn
            # record behind; never forward (a file truncated meanwhile would fill with NULs).
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size > start:
                    os.ftruncate(fd, start)
            raise

    # The Output interface

    async def start(self) -> None:
        self._install(await asyncio.to_thread(self._open_handle), use=False)

    async def start_for_healthcheck(self) -> None:
        # `validate --healthcheck` runs as whoever types it, often root: a file created then
        # would belong to root, and the service's user could not write it. `healthcheck`
        # looks at the path without opening it.
        pass

    async def send(self, batch: Sequence[Record]) -> SendResult:
        lines: list[bytes] = []
        refused: dict[int, Retry | Reject] = {}
        for index, record in enumerate(batch):
            try:
                lines.append(encode_line(record))
            except ValueError as exc:
                refused[index] = Reject(str(exc))
        if lines:
            async with self._send_lock:
                try:
                    await asyncio.to_thread(self._write, b"".join(lines))
                except OSError as exc:
                    return _retry(self.config.path, exc)
        return Partial(refused) if refused else Delivered()

    async def healthcheck(self) -> None:
        # On a thread of its own, and one check at a time: on a hung file system (a dead NFS
        # server) each 30 s check would otherwise leave one more of the process's shared worker
        # threads stuck, until name lookups, gzip and reloads, which need them, stopped for
        # every output.
        check = self._check
        if check is None or check.done():
            try:
                check = asyncio.get_running_loop().run_in_executor(self._checker, self._problem)
            except RuntimeError:  # closed: its thread is gone
                raise HealthcheckError("the output is closed") from None
            self._check = check
        problem = await asyncio.shield(check)
        if problem is not None:
            raise HealthcheckError(problem)

    def _problem(self) -> str | None:
        """Why a write would fail now, as far as can be told without writing."""
        path = self.config.path
        try:
            info: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        directory = path.resolve().parent
        if info is not None:
            if not _writable_kind(info.st_mode):
                return f"{path}: {not_a_regular_file(info.st_mode)}"
            if not os.access(path, os.W_OK):
                return f"{path} is not writable"
        elif not directory.is_dir():
            return f"directory {directory} does not exist"
        elif not os.access(directory, os.W_OK):
            return f"directory {directory} is not writable"
        try:
            space = os.statvfs(directory)
        except OSError as exc:
            return f"{directory}: {exc.strerror or exc}"
        free = space.f_bfree if os.geteuid() == 0 else space.f_bavail
        if space.f_blocks and not free:
            return f"no space left on the file system of {directory}"
        return None

    async def reopen(self) -> None:
        await asyncio.to_thread(self._reopen)

    async def aclose(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._detach, closing=True)
