"""The long versions of tests/reliability/, with figures: `python bench/reliability.py`.

Runs the real daemon (as a subprocess, through the test harness) against the fake receivers,
rsyslogd-free, on 127.0.0.1 only, and prints one table of figures. Every scenario is also a test
in tests/reliability/ that asserts the same properties at a size fit for the normal suite.

    .venv/bin/python bench/reliability.py                     # everything, long sizes (~12 min)
    .venv/bin/python bench/reliability.py --only crash,outage --outage-secs 300
    .venv/bin/python bench/reliability.py --quick             # every scenario, short sizes

Scenarios: crash, outage, poison, diskfull, corrupt, stalled, slowclients, connections, bomb,
bruteforce, fuzz, throughput. docs/reliability.md explains each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._scenarios import (  # noqa: E402 - after the path set-up
    chosen_scenarios,
    print_table,
    run_scenarios,
)
from tests.daemon.harness import PostResults  # noqa: E402
from tests.peers.fake_hec import FakeHec  # noqa: E402
from tests.reliability._peers import StalledPeer  # noqa: E402
from tests.reliability._support import (  # noqa: E402
    FaultyDaemon,
    HecProcess,
    fast_retry,
    hec_output,
    incident_body,
    post_one,
    raise_fd_limit,
    rss_kib,
    session,
    wait_until,
    wait_until_async,
)
from tests.reliability.scenarios import crash, outage, wait_drained  # noqa: E402
from tests.reliability.test_hostile import SECRET, cpu_secs, gzip_bomb, hostile_config  # noqa: E402

Row = tuple[str, str, str]
Rows = list[Row]


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    return f"{value:,.{digits}f}{unit}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1) + 0.5))]


# Crash and outage (tests/reliability/scenarios.py)


async def bench_crash(work: Path, args: argparse.Namespace) -> Rows:
    cycles = 3 if args.quick else args.crash_cycles
    figures = await crash(work, cycles=cycles, kill_after=(150, 600), batch=100)
    name = f"crash ({cycles} x SIGKILL)"
    return [
        (
            name,
            "posts answered 200 / unanswered at a kill",
            f"{figures.stored} / {figures.unanswered}",
        ),
        (name, "events delivered (unique) to HEC", str(figures.delivered_unique)),
        (name, "answered 200 but lost", str(figures.lost)),
        (
            name,
            "duplicates (bound: one batch of 100 per kill)",
            f"{figures.duplicates} (<= {cycles * 100})",
        ),
        (name, "unanswered posts that were delivered anyway", str(figures.unanswered_delivered)),
        (name, "restart to /healthz, mean", fmt(statistics.mean(figures.restart_secs), " s", 2)),
        (name, "drain after the last restart", fmt(figures.drain_secs, " s", 2)),
    ]


async def bench_outage(work: Path, args: argparse.Namespace) -> Rows:
    secs = 10.0 if args.quick else args.outage_secs
    pad = 16 * 1024
    figures = await outage(
        work, outage_secs=secs, warmup_secs=10, after_secs=10, rate=60, pad=pad, sample_secs=1
    )
    name = f"outage ({secs:g} s, 60 posts/s of {pad // 1024} KiB)"
    mib = 1024
    return [
        (
            name,
            "posts answered 200 / lost / duplicates",
            f"{figures.stored} / {figures.lost} / {figures.duplicates}",
        ),
        (
            name,
            "backlog at the end of the outage",
            f"{figures.backlog_events} events, {figures.backlog_bytes / 2**20:,.0f} MiB",
        ),
        (name, "RSS before (warm, receiver up)", fmt(figures.rss_before_kib / mib, " MiB")),
        (name, "RSS max during the outage", fmt(figures.rss_during_max_kib / mib, " MiB")),
        (name, "RSS max after the drain", fmt(figures.rss_after_kib / mib, " MiB")),
        (name, "posts/s accepted during the outage", fmt(figures.posts_per_sec_during)),
        (name, "p99 answer time during the outage", fmt(figures.p99_latency_ms_during, " ms")),
        (name, "backlog drained in", fmt(figures.drain_secs, " s")),
    ]


# Poison


async def bench_poison(work: Path, args: argparse.Namespace) -> Rows:
    events, every = (200, 20) if args.quick else (2000, 50)
    async with FakeHec() as hec:
        daemon = FaultyDaemon(
            work / "daemon",
            {
                "outputs": [
                    hec_output("hec", hec.url, batch={"timeout_secs": 0.2, "max_events": every})
                ]
            },
        )
        ids = [uuid.uuid4().hex for _ in range(events)]
        poison = set(ids[every // 2 :: every])
        hec.poison.update(poison)
        try:
            await daemon.start()
            began = time.monotonic()
            results = PostResults()
            async with session() as client:
                for event_id in ids:
                    await post_one(client, daemon.webhook_url, results, event_id=event_id)
            good = set(ids) - poison
            await wait_until(
                lambda: good <= set(hec.values("canary_event_id")) or None,
                timeout=120,
                what="the good events",
            )
            await wait_drained(daemon, timeout=60)
            flowed = time.monotonic() - began
            listing = await asyncio.to_thread(
                daemon.cli_output, "dead-letters", "list", "--limit", "100000"
            )
            dead = {json.loads(line)["event_id"] for line in listing.splitlines() if line.strip()}
            hec.poison.clear()
            replayed = await asyncio.to_thread(daemon.cli_output, "dead-letters", "replay", "--all")
            await wait_until(
                lambda: poison <= set(hec.values("canary_event_id")) or None,
                timeout=60,
                what="the replayed events",
            )
            delivered = hec.values("canary_event_id")
            await daemon.stop()
        finally:
            daemon.close()
    name = f"poison (1 in {every} refused, HEC code 6)"
    return [
        (name, "events posted / poisoned", f"{events} / {len(poison)}"),
        (
            name,
            "good events delivered (each once)",
            f"{len(good & set(delivered))} ({len(delivered) - len(set(delivered))} duplicates)",
        ),
        (name, "dead letters == the poisoned events", str(dead == poison)),
        (name, "all posted, delivered or dead-lettered in", fmt(flowed, " s")),
        (name, "`dead-letters replay --all`", replayed.strip()),
        (name, "every event delivered after the replay", str(set(delivered) == set(ids))),
    ]


# Store faults


async def _status(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as answer:
        return answer.status


async def _fill_until_503(daemon: FaultyDaemon, results: PostResults, pads: tuple[int, ...]) -> int:
    refused = 0
    async with session() as client:
        for pad in pads:
            for _ in range(100_000):
                event_id = await post_one(client, daemon.webhook_url, results, pad=pad)
                if event_id not in results.stored:
                    refused += 1
                    answer = results.other.pop(event_id, "")
                    if not answer.startswith("503"):
                        raise RuntimeError(f"expected 503 once full, got {answer}")
                    break
    return refused


async def _recovery(daemon: FaultyDaemon, results: PostResults) -> tuple[float, float]:
    """(seconds until /readyz passes, until a post is stored) after the cause was fixed."""
    began = time.monotonic()
    async with session() as client:

        async def stored() -> bool:
            event_id = await post_one(client, daemon.webhook_url, results)
            if event_id in results.other:
                del results.other[event_id]
            return event_id in results.stored

        await wait_until_async(stored, timeout=60, what="a post to be stored again")
        accepted = time.monotonic() - began
        await wait_until_async(
            lambda: _ready(client, daemon), timeout=60, what="/readyz to pass again"
        )
    return time.monotonic() - began, accepted


async def _ready(client: aiohttp.ClientSession, daemon: FaultyDaemon) -> bool:
    return await _status(client, f"{daemon.base_url}/readyz") == 200


async def bench_diskfull(work: Path, args: argparse.Namespace) -> Rows:
    rows: Rows = []
    # 1. SQLite's max_page_count (works anywhere), as in the test.
    limit = work / "pages"
    limit.write_text("0")
    hec = HecProcess()
    daemon = FaultyDaemon(
        work / "pagelimit",
        {"outputs": [hec_output("hec", hec.url)]},
        patches={"disk_limit_file": str(limit)},
    )
    results = PostResults()
    try:
        await daemon.start()
        async with session() as client:
            for _ in range(50):
                await post_one(client, daemon.webhook_url, results)
        limit.write_text("1")
        await _fill_until_503(daemon, results, (200_000, 2_000))
        async with session() as client:
            ready_while_full = await _status(client, f"{daemon.base_url}/readyz")
        limit.write_text(str(1 << 30))
        ready_secs, post_secs = await _recovery(daemon, results)
        hec.start()
        delivered_ok = await _all_delivered(hec, results.stored, daemon)
        errors = len(daemon.find_logs("Store cannot commit; new posts get 503 until it can."))
        await daemon.stop()
    finally:
        daemon.close()
        hec.kill()
    name = "disk full (SQLite max_page_count)"
    rows += [
        (name, "/readyz while full", str(ready_while_full)),
        (
            name,
            "after space is freed: first post stored / /readyz passes",
            f"{post_secs:.2f} s / {ready_secs:.2f} s",
        ),
        (name, "ERROR lines for the episode", str(errors)),
        (
            name,
            f"every one of {len(results.stored)} posts answered 200 delivered",
            str(delivered_ok),
        ),
    ]
    rows += await _diskfull_tmpfs(work)
    return rows


async def _all_delivered(hec: HecProcess, ids: set[str], daemon: FaultyDaemon) -> bool:
    with contextlib.suppress(AssertionError):
        await wait_drained(daemon, timeout=60)
    return ids <= set(await hec.ids())


async def _run_command(*command: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(command), capture_output=True, text=True, check=False
    )


async def _diskfull_tmpfs(work: Path) -> Rows:
    """A real ENOSPC: the store on a small tmpfs that is then grown. Needs mount(8) rights."""
    name = "disk full (real ENOSPC, 16 MiB tmpfs)"
    mount = work / "tmpfs"
    mount.mkdir()
    done = await _run_command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount))
    if done.returncode != 0:
        return [(name, "skipped", f"cannot mount a tmpfs here: {done.stderr.strip()[:60]}")]
    hec = HecProcess()
    daemon = FaultyDaemon(
        work / "enospc",
        {"store": {"path": str(mount / "state")}, "outputs": [hec_output("hec", hec.url)]},
    )
    results = PostResults()
    try:
        await daemon.start()
        await _fill_until_503(daemon, results, (200_000, 2_000))
        line = daemon.find_logs("Store cannot commit; new posts get 503 until it can.")
        async with session() as client:
            ready_while_full = await _status(client, f"{daemon.base_url}/readyz")
        await _run_command("mount", "-o", "remount,size=64m", str(mount))
        ready_secs, post_secs = await _recovery(daemon, results)
        hec.start()
        delivered_ok = await _all_delivered(hec, results.stored, daemon)
        await daemon.stop()
    finally:
        daemon.close()
        hec.kill()
        await _run_command("umount", "-l", str(mount))
    return [
        (name, "the ERROR says", line[0]["error"] if line else "(none)"),
        (name, "/readyz while full", str(ready_while_full)),
        (
            name,
            "after remount to 64 MiB: first post stored / /readyz passes",
            f"{post_secs:.2f} s / {ready_secs:.2f} s",
        ),
        (
            name,
            f"every one of {len(results.stored)} posts answered 200 delivered",
            str(delivered_ok),
        ),
    ]


def bench_corrupt_sync(work: Path, args: argparse.Namespace) -> Rows:
    """Damage one random page of a 2000-event outbox, many times; count what salvage keeps."""
    from forwarder.store.database import DB_NAME, Database, NewEvent, move_aside

    trials = 10 if args.quick else 100
    source = work / "pristine"
    database = Database(source)
    events = []
    for _ in range(2000):
        event_id, body = incident_body()
        events.append(NewEvent(event_id, event_id, "incident", time.time(), body))
    database.append(events, ["hec"], 0)
    database.close()
    size = (source / DB_NAME).stat().st_size
    pages = size // 4096
    chooser = random.Random(6)
    lost: list[int] = []
    unnoticed = 0
    for trial in range(trials):
        copy = work / f"trial{trial}"
        shutil.copytree(source, copy)
        page = chooser.randrange(1, pages)
        with (copy / DB_NAME).open("r+b") as handle:
            handle.seek(page * 4096)
            handle.write(chooser.randbytes(4096))
        try:
            Database(copy).close()
            unnoticed += 1  # a free or unused page: SQLite's check passes, nothing is lost
            lost.append(0)
        except Exception:
            moved = move_aside(copy / DB_NAME, time.time())
            fresh = Database(copy)
            salvaged, _ = fresh.salvage(moved, ["hec"])
            fresh.close()
            lost.append(2000 - salvaged)
        shutil.rmtree(copy)
    # And the worst case: the first page (the file header and the schema) destroyed.
    copy = work / "header"
    shutil.copytree(source, copy)
    with (copy / DB_NAME).open("r+b") as handle:
        handle.write(b"\0" * 4096)
    try:
        Database(copy).close()
        header_lost = 0
    except Exception:
        moved = move_aside(copy / DB_NAME, time.time())
        fresh = Database(copy)
        salvaged, _ = fresh.salvage(moved, ["hec"])
        fresh.close()
        header_lost = 2000 - salvaged
    name = f"corrupt store (1 random page of {pages}, {trials} trials)"
    damaged = [n for n in lost if n]
    return [
        (name, "trials where SQLite noticed the damage", str(trials - unnoticed)),
        (
            name,
            "events lost per damaged page: median / max",
            f"{statistics.median(damaged or [0]):g} / {max(lost)} of 2000",
        ),
        (name, "events lost with the header page destroyed", f"{header_lost} of 2000"),
    ]


async def bench_corrupt(work: Path, args: argparse.Namespace) -> Rows:
    return await asyncio.to_thread(bench_corrupt_sync, work, args)


# Stalled receivers


async def bench_stalled(work: Path, args: argparse.Namespace) -> Rows:
    events = 50 if args.quick else 300
    output = work / "out.jsonl"
    async with (
        StalledPeer("silent") as silent,
        StalledPeer("half_close") as half,
        StalledPeer("no_read") as deaf,
    ):
        # Production timeouts (30 s requests and writes): the file output must not wait for them.
        daemon = FaultyDaemon(
            work / "daemon",
            {
                "outputs": [
                    {
                        "name": "hec_silent",
                        "type": "splunk_hec",
                        "url": silent.url,
                        "token": "t" * 36,
                    },
                    {"name": "hec_half", "type": "splunk_hec", "url": half.url, "token": "t" * 36},
                    {
                        "name": "syslog_deaf",
                        "type": "syslog",
                        "hosts": [deaf.address],
                        "format": "json",
                    },
                    {
                        "name": "file",
                        "type": "file",
                        "path": str(output),
                        "batch": {"timeout_secs": 0},
                    },
                ]
            },
            graceful_secs=10,
        )
        latencies: list[float] = []
        try:
            await daemon.start()
            results = PostResults()
            async with session() as client:
                for _ in range(events):
                    posted = time.monotonic()
                    event_id = await post_one(client, daemon.webhook_url, results, pad=32 * 1024)
                    await wait_until(
                        lambda event_id=event_id: event_id.encode() in output.read_bytes() or None,  # type: ignore[misc]
                        timeout=30,
                        what="the event in the file",
                    )
                    latencies.append(1000 * (time.monotonic() - posted))
            stopping = time.monotonic()
            code = await daemon.stop(timeout=120)
            stop_secs = time.monotonic() - stopping
        finally:
            daemon.close()
    name = "stalled receivers (3 stalled outputs + 1 file)"
    return [
        (name, "events through the file output", str(len(latencies))),
        (
            name,
            "post -> line in the file: p50 / p99 / max",
            f"{percentile(latencies, 0.5):.0f} / {percentile(latencies, 0.99):.0f}"
            f" / {max(latencies):.0f} ms",
        ),
        (
            name,
            "SIGTERM -> exit (--graceful-timeout 10) / exit code",
            f"{stop_secs:.1f} s / {code}",
        ),
    ]


# Hostile clients, production settings


async def _time_until_closed(
    port: int, head: bytes, drip: float, limit: float
) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    began = time.monotonic()
    answer = b""
    try:
        for index in range(len(head)):
            if time.monotonic() - began > limit:
                break
            writer.write(head[index : index + 1])
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(4096), drip)
            if reader.at_eof():
                break
        with contextlib.suppress(TimeoutError):
            while not reader.at_eof() and time.monotonic() - began < limit:
                answer += await asyncio.wait_for(reader.read(4096), 1.0)
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
    return time.monotonic() - began, answer


async def bench_slowclients(work: Path, args: argparse.Namespace) -> Rows:
    daemon = FaultyDaemon(work / "daemon", hostile_config(work), graceful_secs=2)
    try:
        await daemon.start()
        header_head = b"POST /canary HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: slowloris\r\n" * 100_000
        header_secs, _ = await _time_until_closed(daemon.port, header_head, 0.5, 120)
        _, body = incident_body()
        body_head = (
            f"POST /canary HTTP/1.1\r\nHost: x\r\nX-Canary-Token: {SECRET}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) * 1000}\r\n\r\n"
        ).encode() + body * 1000
        # Send the headers at once, then the body a byte every half second.
        split = body_head.index(b"\r\n\r\n") + 4
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", daemon.port, local_addr=("127.0.0.2", 0)
        )
        writer.write(body_head[:split])
        began = time.monotonic()
        answer = b""
        answered_at = closed_at = None
        try:
            for index in range(split, len(body_head)):
                writer.write(body_head[index : index + 1])
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    chunk = await asyncio.wait_for(reader.read(4096), 0.5)
                    if chunk and answered_at is None:
                        answered_at = time.monotonic() - began
                    answer += chunk
                    if not chunk:
                        closed_at = time.monotonic() - began
                        break
                if time.monotonic() - began > 120:
                    break
        except (ConnectionResetError, BrokenPipeError):
            closed_at = time.monotonic() - began
        finally:
            writer.close()
        await daemon.stop()
    finally:
        daemon.close()
    name = "slow clients (production timeouts)"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "(none)"
    return [
        (name, "headers sent a byte per 0.5 s: connection closed after", fmt(header_secs, " s")),
        (name, "body sent a byte per 0.5 s: answer / at", f"{status} / {answered_at or 0:.1f} s"),
        (
            name,
            "body sent a byte per 0.5 s: connection closed after",
            fmt(closed_at or float("nan"), " s"),
        ),
    ]


async def bench_connections(work: Path, args: argparse.Namespace) -> Rows:
    count = 2000 if args.quick else 10_000
    raise_fd_limit(count + 1000)
    daemon = FaultyDaemon(work / "daemon", hostile_config(work), graceful_secs=2)
    writers: list[asyncio.StreamWriter] = []
    try:
        await daemon.start()
        rss_before = rss_kib(daemon.pid)
        began = time.monotonic()
        for index in range(count):
            source = f"127.3.{index // 250}.{index % 250 + 1}"
            _, writer = await asyncio.open_connection(
                "127.0.0.1", daemon.port, local_addr=(source, 0)
            )
            writer.write(b"POST /canary HTTP/1.1\r\nHost: x\r\n")
            writers.append(writer)
        opened = time.monotonic() - began
        await wait_until(
            lambda: len(os.listdir(f"/proc/{daemon.pid}/fd")) >= count or None,
            timeout=60,
            what="all connections accepted",
        )
        latencies = []
        async with session() as client:
            for _ in range(20):
                results = PostResults()
                posted = time.monotonic()
                await post_one(
                    client,
                    daemon.webhook_url,
                    results,
                    headers={
                        "X-Canary-Token": SECRET,
                        "Content-Type": "application/json",
                    },
                )
                if not results.stored:
                    raise RuntimeError(f"legit post refused: {results.other}")
                latencies.append(1000 * (time.monotonic() - posted))
        rss_held = rss_kib(daemon.pid)
        for writer in writers:
            writer.close()
        await daemon.stop()
    finally:
        for writer in writers:
            writer.close()
        daemon.close()
    name = f"{count:,} idle connections"
    return [
        (name, "opened in", fmt(opened, " s")),
        (
            name,
            "legit post while they are held: median / max",
            f"{statistics.median(latencies):.1f} / {max(latencies):.1f} ms",
        ),
        (
            name,
            "daemon RSS before / with them",
            f"{rss_before / 1024:.0f} / {rss_held / 1024:.0f} MiB",
        ),
    ]


async def bench_bomb(work: Path, args: argparse.Namespace) -> Rows:
    daemon = FaultyDaemon(work / "daemon", hostile_config(work), graceful_secs=2)
    bomb = gzip_bomb(1024 if args.quick else 4096)
    try:
        await daemon.start()
        before = cpu_secs(daemon.pid)
        rss_before = rss_kib(daemon.pid)
        headers = {
            "X-Canary-Token": SECRET,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        began = time.monotonic()
        async with (
            session(60) as client,
            client.post(daemon.webhook_url, data=io.BytesIO(bomb), headers=headers) as answer,
        ):
            status = answer.status
        took = time.monotonic() - began
        spent = cpu_secs(daemon.pid) - before
        rss_after = rss_kib(daemon.pid)
        await daemon.stop()
    finally:
        daemon.close()
    expanded = 1 if args.quick else 4
    name = f"gzip bomb ({len(bomb) / 2**20:.1f} MiB -> {expanded} GiB)"
    return [
        (name, "answer / time", f"{status} / {took * 1000:.0f} ms"),
        (name, "daemon CPU spent on it", fmt(spent, " s", 2)),
        (
            name,
            "daemon RSS before / after",
            f"{rss_before / 1024:.0f} / {rss_after / 1024:.0f} MiB",
        ),
    ]


async def bench_bruteforce(work: Path, args: argparse.Namespace) -> Rows:
    daemon = FaultyDaemon(work / "daemon", hostile_config(work), graceful_secs=2)
    near = SECRET[:-1] + "X"  # every character but the last right
    far = "X" + SECRET[1:]  # the first one already wrong
    addresses = 40 if args.quick else 600
    samples: dict[str, list[float]] = {"near": [], "far": []}
    _, body = incident_body()
    try:
        await daemon.start()
        statuses = []
        async with session(local_addr=("127.0.0.99", 0)) as attacker:
            for guess in range(30):
                async with attacker.post(
                    daemon.webhook_url,
                    data=body,
                    headers={"X-Canary-Token": f"{guess:036d}", "Content-Type": "application/json"},
                ) as answer:
                    statuses.append(answer.status)
        for index in range(addresses):
            source = f"127.4.{index // 250}.{index % 250 + 1}"
            async with session(local_addr=(source, 0)) as client:
                for round_ in range(8):  # under the 10 failures an address may make
                    kind = ("near", "far")[(round_ + index) % 2]
                    headers = {
                        "X-Canary-Token": near if kind == "near" else far,
                        "Content-Type": "application/json",
                    }
                    began = time.perf_counter()
                    async with client.post(
                        daemon.webhook_url, data=body, headers=headers
                    ) as answer:
                        await answer.read()
                        if answer.status != 401:
                            raise RuntimeError(f"expected 401, got {answer.status}")
                    samples[kind].append(1e6 * (time.perf_counter() - began))
        await daemon.stop()
    finally:
        daemon.close()
    first_429 = statuses.index(429) + 1 if 429 in statuses else None
    near_median, far_median = statistics.median(samples["near"]), statistics.median(samples["far"])
    name = "authentication brute force"
    return [
        (name, "wrong guesses answered 401 before the first 429", str((first_429 or 0) - 1)),
        (name, "of 30 guesses from one address, refused with 429", str(statuses.count(429))),
        (
            name,
            f"401 time over HTTP, {len(samples['near'])} samples each: near-miss / far-miss median",
            f"{near_median:.0f} / {far_median:.0f} us (ratio {near_median / far_median:.3f})",
        ),
    ]


# Fuzzing, throughput


async def bench_fuzz(work: Path, args: argparse.Namespace) -> Rows:
    profile = "reliability" if args.quick else "reliability-long"
    began = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability/test_fuzz.py",
        ],
        cwd=ROOT,
        env={**os.environ, "HYPOTHESIS_PROFILE_RELIABILITY": profile},
        capture_output=True,
        text=True,
        check=False,
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    examples = 100 if args.quick else 5000
    return [
        (
            "fuzzing (Hypothesis)",
            f"3 properties x {examples:,} examples",
            f"{tail} ({time.monotonic() - began:.0f} s)",
        ),
    ]


WRK_SCRIPT = """
local counter = 0
local prefix = ""
init = function(args)
  prefix = tostring(math.random(1, 1000000000)) .. "-" .. tostring({}):sub(8)
end
request = function()
  counter = counter + 1
  local body = '{"Description":"SSH Login Attempt","Timestamp":"2026-02-02 14:10:14 (UTC)",' ..
    '"CanaryName":"bench","CanaryID":"0000000abcdef12","CanaryIP":"10.0.0.5",' ..
    '"SourceIP":"10.0.0.9","AlertType":"CanaryIncident","LogType":4002,' ..
    '"Intro":"bench","IncidentHash":"' .. prefix .. "-" .. counter .. '"}'
  return wrk.format("POST", "/canary", {["Content-Type"]="application/json"}, body)
end
"""


async def bench_throughput(work: Path, args: argparse.Namespace) -> Rows:
    wrk = shutil.which("wrk")
    if wrk is None:
        return [("throughput (wrk)", "skipped", "wrk is not installed")]
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    rows: Rows = []
    for sync in ("full", "normal"):
        daemon = FaultyDaemon(
            work / f"daemon-{sync}",
            {
                "store": {"path": str(work / f"state-{sync}"), "sync": sync},
                "outputs": [
                    {
                        "name": "file",
                        "type": "file",
                        "path": str(work / f"out-{sync}.jsonl"),
                        **fast_retry(),
                    }
                ],
            },
            graceful_secs=5,
        )
        try:
            await daemon.start()
            secs = 5 if args.quick else 20
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    wrk,
                    "-t2",
                    "-c32",
                    f"-d{secs}s",
                    "--latency",
                    "-s",
                    str(script),
                    daemon.webhook_url,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            await wait_drained(daemon, timeout=120)
            lines = sum(1 for _ in (work / f"out-{sync}.jsonl").open("rb"))
            await daemon.stop()
        finally:
            daemon.close()
        text = done.stdout
        rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
        p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
        p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
        errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        total = re.search(r"(\d+) requests in", text)
        name = f"throughput (wrk, 32 connections, store.sync {sync})"
        rows += [
            (name, "posts/s answered", rate.group(1) if rate else text[-200:]),
            (
                name,
                "answer time p50 / p99",
                f"{p50.group(1) if p50 else '?'} / {p99.group(1) if p99 else '?'}",
            ),
            (
                name,
                "requests / non-2xx / lines delivered",
                f"{total.group(1) if total else '?'} / {errors.group(1) if errors else 0}"
                f" / {lines}",
            ),
        ]
    return rows


SCENARIOS: dict[str, Callable[[Path, argparse.Namespace], Awaitable[Rows]]] = {
    "crash": bench_crash,
    "outage": bench_outage,
    "poison": bench_poison,
    "diskfull": bench_diskfull,
    "corrupt": bench_corrupt,
    "stalled": bench_stalled,
    "slowclients": bench_slowclients,
    "connections": bench_connections,
    "bomb": bench_bomb,
    "bruteforce": bench_bruteforce,
    "fuzz": bench_fuzz,
    "throughput": bench_throughput,
}


async def main(args: argparse.Namespace) -> int:
    chosen = chosen_scenarios(args.only, SCENARIOS)
    if chosen is None:
        return 2
    failed = 0

    async def run(name: str, work: Path) -> Rows:
        nonlocal failed
        try:
            return await SCENARIOS[name](work, args)
        except Exception as exc:  # a broken scenario is a row, the others still run
            failed += 1
            return [(name, "FAILED", f"{type(exc).__name__}: {str(exc)[:200]}")]

    rows = await run_scenarios(chosen, "canary-reliability-", run)
    print(
        f"\ncanary-forwarder reliability figures ({os.cpu_count()} CPUs,"
        f" Python {sys.version.split()[0]})\n"
    )
    print_table(("scenario", "measure", "value"), rows)
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="short sizes, as in the tests")
    parser.add_argument("--crash-cycles", type=int, default=20, metavar="N")
    parser.add_argument("--outage-secs", type=float, default=300.0, metavar="SECS")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
