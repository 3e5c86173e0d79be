"""A stand-in for the `time` module of forwarder.store.outbox, whose clocks a test moves."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class FakeTime:
    """A wall clock that can jump and a monotonic one that cannot; neither moves by itself."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.steady = 5000.0

    def time(self) -> float:
        return self.wall

    def time_ns(self) -> int:
        return int(self.wall * 1e9)

    def monotonic(self) -> float:
        return self.steady

    def wait(self, secs: float) -> None:
        """Time passes: both clocks move."""
        self.wall += secs
        self.steady += secs

    def jump(self, secs: float) -> None:
        """The wall clock is set: only it moves."""
        self.wall += secs

    def now(self) -> datetime:
        """What ingest stamps a post with."""
        return datetime.fromtimestamp(self.wall, UTC)
