"""`file`: one record per line in a local file, for audit copies and the built-in default.

Documents are written as compact JSON, text records as they are. With `fsync: batch` (the
default) a batch is only reported delivered once it is on disk. A write that fails half-way is
cut back to the last whole line, so a retry never leaves a torn record behind. SIGHUP reopens the
file, so logrotate can move it away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

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


class FileConfig(OutputConfig):
    path: Path = Field(default=Path("canary-events.jsonl"))
    """File to append to; created with mode 0600 if missing. Its directory must exist."""
    fsync: Literal["batch", "never"] = "batch"
    """`batch`: fsync before a batch counts as delivered. `never`: leave it to the kernel."""


def encode_line(record: Record) -> bytes:
    """One record as one line; raises ValueError if a text record spans lines."""
    text = record.text()
    if "\n" in text or "\r" in text:
        raise ValueError("text record contains a line break")
    return text.encode("utf-8", "surrogateescape") + b"\n"


class FileOutput(Output[FileConfig]):
    config_class = FileConfig

    def __init__(self, config: FileConfig) -> None:
        super().__init__(config)
        self._fd: int | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def send(self, batch: Sequence[Record]) -> SendResult:
        lines: list[bytes] = []
        refused: dict[int, Retry | Reject] = {}
        for index, record in enumerate(batch):
            try:
                lines.append(encode_line(record))
            except ValueError as exc:
                refused[index] = Reject(str(exc))
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, b"".join(lines))
            except OSError as exc:
                return Retry(f"cannot write {self.config.path}: {exc.strerror or exc}")
        return Partial(refused) if refused else Delivered()

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        fd = self._fd
        assert fd is not None  # noqa: S101 - _open sets it or raises
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.config.fsync == "batch":
                os.fsync(fd)
        except OSError:
            # Cut a half-written batch back to the last whole line so the retry leaves no torn
            # record behind; if even that fails, the next open appends after the fragment.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    async def healthcheck(self) -> None:
        directory = self.config.path.resolve().parent
        if not os.access(directory, os.W_OK):
            raise HealthcheckError(f"directory {directory} is not writable")

    async def reopen(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)
            await asyncio.to_thread(self._open)

    async def aclose(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)
