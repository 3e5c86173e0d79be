"""Several endpoints of one destination (a SIEM cluster): round-robin with failover.

An endpoint that fails is benched for a cooldown that doubles with each further failure up to a
cap, and is tried again once the cooldown is over. An endpoint can also be held for as long as
it asked (`Retry-After`); unlike a cooldown, a hold is not lifted by a success elsewhere on that
endpoint (an ack poll, a health check). When every endpoint is benched or held, the one free
soonest is used, so a send is always attempted and its result classified.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Endpoints", "first_to_pass"]

T = TypeVar("T")


@dataclass(slots=True)
class _Health:
    failures: int = 0
    benched_until: float = 0.0
    held_until: float = 0.0

    @property
    def free_at(self) -> float:
        return max(self.benched_until, self.held_until)


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
        """The next endpoint in turn that is neither benched nor held, else the one freed
        soonest."""
        now = self._clock()
        count = len(self._endpoints)
        for step in range(count):
            index = (self._next + step) % count
            if self._health[index].free_at <= now:
                self._next = (index + 1) % count
                return self._endpoints[index]
        soonest = min(range(count), key=lambda i: self._health[i].free_at)
        return self._endpoints[soonest]

    def hold(self, endpoint: T, secs: float) -> float:
        """Keep `endpoint` out of turn for `secs` (it asked, with `Retry-After`); returns the
        seconds until some endpoint may take the retry (0 when one may now): this one once its
        hold is over (it answered, so it is up), another once it is neither held nor benched.

        Another endpoint's bench counts: counted as free, the retry came at once, and `pick`
        gave it to this endpoint (freed sooner than the benched one), long before the time it
        had asked for.
        """
        now = self._clock()
        health = self._health[self._endpoints.index(endpoint)]
        health.held_until = max(health.held_until, now + secs)
        return max(
            0.0,
            min(other.held_until if other is health else other.free_at for other in self._health)
            - now,
        )

    def succeeded(self, endpoint: T) -> None:
        health = self._health[self._endpoints.index(endpoint)]
        health.failures = 0
        health.benched_until = 0.0

    def failed(self, endpoint: T) -> None:
        health = self._health[self._endpoints.index(endpoint)]
        health.failures += 1
        # The exponent capped: the count grows for as long as the node is down, and past 1024
        # the cooldown overflowed a float, so every send to a node down for hours raised.
        cooldown = min(self._max, self._base * 2 ** min(health.failures - 1, 64))
        health.benched_until = self._clock() + cooldown


async def first_to_pass(
    attempts: Sequence[Awaitable[T]],
    passes: Callable[[T], bool],
    release: Callable[[T], Awaitable[None]] | None = None,
) -> list[T] | None:
    """Run `attempts` (a check of each endpoint) side by side: None as soon as one's result
    `passes`, else every result, in order. What an attempt raises is raised.

    Side by side, not in turn: a healthcheck has 10 s in all, and an endpoint that never answers
    takes its whole timeout, which in turn would fail the check however well the next one
    answers. Once one passes the others are cancelled. `release` is awaited for the result of
    every attempt that finished, however this ends: it closes what the attempt opened.
    """
    tasks = [asyncio.ensure_future(attempt) for attempt in attempts]
    try:
        for finished in asyncio.as_completed(tasks):
            if passes(await finished):
                return None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if release is not None:
            await asyncio.gather(
                *(
                    release(task.result())
                    for task in tasks
                    if not task.cancelled() and task.exception() is None
                )
            )
    return [task.result() for task in tasks]
