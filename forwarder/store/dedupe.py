"""The dedupe window's memory: which fingerprints the store took lately, and when.

A console with a global and a flock webhook posts each alert twice; the store keeps the first
post and answers the second as a duplicate, for as long as `store.dedupe_window_secs` says.

The memory is looked up here, in a dict, and kept on disk only as an append-only log (the
`seen` table, in fingerprint order of arrival) that is read back when the store opens. A table
keyed by fingerprint, as before, put every post's fingerprint at a random place in a large
B-tree: a commit of 50 posts rewrote 82 pages of 4 kB where it now writes 14, and under the
ingest benchmark the daemon answered 12-18 % fewer posts per second, with a p99 about 45 % higher
(docs/benchmarks.md, "Tenth pass").

The memory holds at most `limit` fingerprints. A flood that stores more than that within the
window shortens the window for the oldest of them: a repeat of one of those is stored again,
which delivery's at-least-once contract already allows; nothing is dropped.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise

__all__ = ["DEDUPE_MEMORY_MAX", "DedupeMemory"]

# About 170 bytes each (the key, its time, its place in the order): 100,000 take 17 MB, and
# cover a 600 s window at 160 stored posts a second, far above what any console sends.
DEDUPE_MEMORY_MAX = 100_000


class DedupeMemory:
    """The fingerprints stored lately, in the order they were stored, each with when; at most
    `limit` of them."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = DEDUPE_MEMORY_MAX if limit is None else limit
        self._last_seen: dict[str, float] = {}
        # In the order they were stored, as two deques rather than one of pairs: a pair would
        # add a third to the memory each fingerprint takes. A fingerprint stored again later
        # appears twice; only its latest time is in `_last_seen`.
        self._fingerprints: deque[str] = deque()
        self._times: deque[float] = deque()
        # Whether a time is earlier than one stored before it (the wall clock was set back):
        # then the oldest entries are not all at the front.
        self._out_of_order = False
        self.last_id = 0
        """The highest row id of the `seen` log this memory holds (see `Database.append`)."""
        self.dropped_at: float | None = None
        """When the youngest fingerprint dropped for room (not for age) was stored, if any."""

    def __len__(self) -> int:
        return len(self._times)

    @property
    def full(self) -> bool:
        return len(self._times) >= self.limit

    def last_seen(self, fingerprint: str) -> float | None:
        return self._last_seen.get(fingerprint)

    @property
    def newest_seen_at(self) -> float | None:
        return self._times[-1] if self._times else None

    def add(self, fingerprint: str, seen_at: float) -> None:
        """Remember a fingerprint the store has committed."""
        if self._times and seen_at < self._times[-1]:
            self._out_of_order = True
        self._last_seen[fingerprint] = seen_at
        self._fingerprints.append(fingerprint)
        self._times.append(seen_at)
        while len(self._times) > self.limit:
            self.dropped_at = self._drop_oldest()

    def entries(self) -> list[tuple[str, float]]:
        """(fingerprint, time) of each entry, in the order they were stored."""
        return list(zip(self._fingerprints, self._times, strict=True))

    def forget_outside(self, now: float, window: float) -> bool:
        """Forget every fingerprint more than `window` from `now`, on either side (ahead of
        `now`: the wall clock was set back since it was stored). True if the clock had been set
        back, so that the log on disk cannot be cut from its old end alone.

        In order, those too old are at the front and the rest is not looked at, unless the
        newest is ahead of the window.
        """
        if not self._out_of_order:
            while self._times and self._times[0] < now - window:
                self._drop_oldest()
            if not self._times or self._times[-1] <= now + window:
                return False
        # Each fingerprint's latest entry, the one `last_seen` answers with, if within the
        # window; an earlier one stays forgotten, as it was when the latest replaced it. Only
        # those are left, so `entries` gives what the log on disk should hold.
        kept = [
            (fingerprint, seen_at)
            for fingerprint, seen_at in zip(self._fingerprints, self._times, strict=True)
            if self._last_seen.get(fingerprint) == seen_at and abs(seen_at - now) <= window
        ]
        self._fingerprints = deque(fingerprint for fingerprint, _ in kept)
        self._times = deque(seen_at for _, seen_at in kept)
        self._last_seen = dict(kept)
        self._out_of_order = any(later < earlier for earlier, later in pairwise(self._times))
        return True

    def _drop_oldest(self) -> float:
        fingerprint, seen_at = self._fingerprints.popleft(), self._times.popleft()
        if self._last_seen.get(fingerprint) == seen_at:
            del self._last_seen[fingerprint]
        return seen_at
