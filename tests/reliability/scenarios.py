"""The long-running scenarios, parameterised: tests run them short, bench/reliability.py long.

Each returns its figures as a dataclass; the caller asserts (tests) or prints a table (bench).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon.harness import PostResults
from tests.reliability._peers import TcpProxy
from tests.reliability._support import (
    FaultyDaemon,
    HecProcess,
    Load,
    count_lost,
    hec_output,
    rss_kib,
    session,
    store_gauge,
    wait_until_async,
)

__all__ = ["CrashFigures", "OutageFigures", "crash", "outage"]


async def _drained(daemon: FaultyDaemon) -> bool:
    try:
        events, _ = await store_gauge(daemon)
    except (OSError, TimeoutError, ValueError):
        return False
    return events == 0


async def wait_drained(daemon: FaultyDaemon, timeout: float) -> float:
    """Wait until the store holds nothing undelivered; returns how long that took."""
    began = time.monotonic()
    await wait_until_async(lambda: _drained(daemon), timeout=timeout, what="the store to drain")
    return time.monotonic() - began


@dataclass
class CrashFigures:
    cycles: int
    batch: int
    posted: int = 0
    stored: int = 0
    unanswered: int = 0
    other: int = 0
    delivered_unique: int = 0
    delivered_total: int = 0
    lost: int = 0
    duplicates: int = 0
    unanswered_delivered: int = 0
    foreign: int = 0
    """Delivered ids nobody posted (must be 0)."""
    kills_at_stored: list[int] = field(default_factory=list)
    restart_secs: list[float] = field(default_factory=list)
    drain_secs: float = 0.0
    elapsed_secs: float = 0.0
    other_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)


async def crash(
    workdir: Path,
    *,
    cycles: int,
    kill_after: tuple[int, int] = (150, 400),
    clients: int = 8,
    batch: int = 100,
    seed: int = 6,
) -> CrashFigures:
    """SIGKILL the daemon `cycles` times under load, HEC in its own process; count every event.

    Each cycle starts the daemon on the same store, posts from `clients` concurrent clients, and
    kills it once a random number (within `kill_after`) more posts were answered 200, while
    requests and HEC sends are in flight. Then a last start drains the store.
    """
    figures = CrashFigures(cycles=cycles, batch=batch)
    chooser = random.Random(seed)
    hec = HecProcess().start()
    daemon = FaultyDaemon(
        workdir / "daemon",
        {"outputs": [hec_output("hec", hec.url, batch={"timeout_secs": 0, "max_events": batch})]},
        graceful_secs=5,
    )
    began = time.monotonic()
    load: Load | None = None
    try:
        for _ in range(cycles):
            restart = time.monotonic()
            await daemon.start()
            figures.restart_secs.append(time.monotonic() - restart)
            results = load.results if load is not None else PostResults()
            load = Load(daemon.webhook_url, clients=clients, results=results).start()
            target = len(load.results.stored) + chooser.randint(*kill_after)
            await load.wait_stored(target, timeout=60, alive=daemon.alive)
            assert daemon.alive(), daemon.stderr_text()[-2000:]
            load.halt()  # no await between these two: requests are still in flight
            code = daemon.kill()
            await load.stop()
            assert code == -signal.SIGKILL
            figures.kills_at_stored.append(len(load.results.stored))
        await daemon.start()
        figures.drain_secs = await wait_drained(daemon, timeout=120)
        assert await daemon.stop() == 0
        delivered = await hec.ids()
    finally:
        daemon.close()
        hec.kill()
    figures.elapsed_secs = time.monotonic() - began
    assert load is not None
    results = load.results
    lost, duplicates = count_lost(results.stored, delivered)
    figures.posted = len(results.sent)
    figures.stored = len(results.stored)
    figures.unanswered = len(results.unanswered)
    figures.other = len(results.other)
    figures.other_examples = list(results.other.values())[:5]
    figures.delivered_unique = len(delivered)
    figures.delivered_total = sum(delivered.values())
    figures.lost = len(lost)
    figures.lost_examples = sorted(lost)[:5]
    figures.duplicates = duplicates
    figures.unanswered_delivered = len(results.unanswered & set(delivered))
    figures.foreign = len(set(delivered) - results.sent)
    return figures


@dataclass
class OutageFigures:
    outage_secs: float
    stored: int = 0
    other: int = 0
    lost: int = 0
    duplicates: int = 0
    backlog_events: int = 0
    backlog_bytes: int = 0
    rss_before_kib: int = 0
    rss_during_max_kib: int = 0
    rss_after_kib: int = 0
    rss_samples: list[tuple[float, str, int]] = field(default_factory=list)
    drain_secs: float = 0.0
    posts_per_sec_during: float = 0.0
    p99_latency_ms_during: float = 0.0
    other_examples: list[str] = field(default_factory=list)


async def outage(
    workdir: Path,
    *,
    outage_secs: float,
    warmup_secs: float = 3.0,
    after_secs: float = 3.0,
    rate: float = 60.0,
    pad: int = 64 * 1024,
    clients: int = 4,
    sample_secs: float = 0.5,
) -> OutageFigures:
    """Take the HEC receiver down for `outage_secs` under load; RSS before, during and after.

    Events are padded to about `pad` bytes so the backlog (tens of MB) would show in the RSS if
    it were held in memory. The load keeps going while the receiver is back and the store drains.
    """
    figures = OutageFigures(outage_secs=outage_secs)
    hec = HecProcess().start()
    # The daemon reaches HEC through a proxy that is taken down: connections are refused for
    # the outage, yet HEC keeps running and keeps count of everything it accepted.
    proxy = await TcpProxy(hec.port).up()
    daemon = FaultyDaemon(
        workdir / "daemon",
        {
            "outputs": [
                hec_output(
                    "hec",
                    proxy.url,
                    batch={"timeout_secs": 0, "max_events": 100, "max_bytes": 1024 * 1024},
                    retry={"initial_backoff_secs": 0.05, "max_backoff_secs": 1.0},
                )
            ]
        },
        graceful_secs=5,
    )
    load: Load | None = None
    started = time.monotonic()

    def sample(phase: str) -> int:
        value = rss_kib(daemon.pid)
        figures.rss_samples.append((round(time.monotonic() - started, 2), phase, value))
        return value

    async def sample_for(phase: str, seconds: float) -> list[int]:
        values = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            values.append(sample(phase))
            await asyncio.sleep(sample_secs)  # a sampling period, not a wait for a condition
        return values

    try:
        await daemon.start()
        load = Load(daemon.webhook_url, clients=clients, rate=rate, pad=pad).start()
        before = await sample_for("before", warmup_secs)
        # The baseline is the daemon warmed up under this very load, with the receiver up.
        figures.rss_before_kib = max(before[len(before) // 2 :])
        await proxy.down()
        stored_at_outage = len(load.results.stored)
        latencies_at_outage = len(load.latencies)
        down_since = time.monotonic()
        during = await sample_for("during", outage_secs)
        figures.rss_during_max_kib = max(during)
        figures.posts_per_sec_during = (len(load.results.stored) - stored_at_outage) / (
            time.monotonic() - down_since
        )
        window = sorted(load.latencies[latencies_at_outage:])
        if window:
            figures.p99_latency_ms_during = 1000 * window[int(0.99 * (len(window) - 1))]
        figures.backlog_events, figures.backlog_bytes = await store_gauge(daemon)
        await proxy.up()
        await load.stop()
        figures.drain_secs = await wait_drained(daemon, timeout=max(60.0, outage_secs * 2))
        after = await sample_for("after", after_secs)
        figures.rss_after_kib = max(after)
        assert await daemon.stop() == 0
        delivered = await hec.ids()
    finally:
        if load is not None:
            await load.stop()
        daemon.close()
        await proxy.down()
        hec.kill()
    results = load.results
    lost, figures.duplicates = count_lost(results.stored, delivered)
    figures.lost = len(lost)
    figures.stored = len(results.stored)
    figures.other = len(results.other)
    figures.other_examples = list(results.other.values())[:5]
    return figures


async def ping(daemon: FaultyDaemon) -> int:
    """GET /readyz once: its status."""
    async with session(timeout=5) as client, client.get(f"{daemon.base_url}/readyz") as answer:
        return answer.status
