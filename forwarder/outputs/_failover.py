"""Several endpoints of one destination (a SIEM cluster): round-robin with failover.

An endpoint that fails is benched for a cooldown that doubles with each further failure up to a
cap, and is tried again once the cooldown is over. When every endpoint is benched, the one whose
cooldown ends first is used, so a send is always attempted and its result classified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Endpoints"]

T = TypeVar("T")


@dataclass(slots=True)
class _Health:
    failures: int = 0
    benched_until: float = 0.0


class Endpoints(Generic[T]):
    def __init__(
        self,
        endpoints: Sequence[T],
        *,
        base_cooldown_secs: float = 1.0,
        max_cooldown_secs: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self._endpoints = list(endpoints)
        self._health = [_Health() for _ in self._endpoints]
        self._next = 0
        self._base = base_cooldown_secs
        self._max = max_cooldown_secs
        self._clock = clock

    def __len__(self) -> int:
        return len(self._endpoints)

    def pick(self) -> T:
        """The next endpoint in turn that is not benched, else the one freed soonest."""
        now = self._clock()
        count = len(self._endpoints)
        for step in range(count):
            index = (self._next + step) % count
            if self._health[index].benched_until <= now:
                self._next = (index + 1) % count
                return self._endpoints[index]
        soonest = min(range(count), key=lambda i: self._health[i].benched_until)
        return self._endpoints[soonest]

    def succeeded(self, endpoint: T) -> None:
        health = self._health[self._endpoints.index(endpoint)]
        health.failures = 0
        health.benched_until = 0.0

    def failed(self, endpoint: T) -> None:
        health = self._health[self._endpoints.index(endpoint)]
        health.failures += 1
        cooldown = min(self._max, self._base * 2 ** (health.failures - 1))
        health.benched_until = self._clock() + cooldown
