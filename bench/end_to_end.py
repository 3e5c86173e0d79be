"""End-to-end benchmark (issue 4): webhook in, fake Splunk HEC out, all on this machine.

    python bench/end_to_end.py [--duration 30] [--latency-rate 1000] [--backlog 100000]
                               [--connections 50] [--phases sustained,latency,drain]

Three phases (`--phases` picks some) against one daemon (`python -m forwarder run`, durable store with `sync: full`, one
`splunk_hec` output in the `json` format with its defaults: batches of up to 500, gzip) and the
protocol-faithful fake HEC of tests/peers in its own process:

1. sustained: wrk posts unique incidents at `--connections` (50) for `--duration` seconds.
   Reports the events per second the receiver got during the window and the store depth every
   2 s, so a growing backlog shows.
2. latency: a paced client offers `--latency-rate` events per second for `--duration` seconds
   and records when each 200 came back; the receiver records when each event arrived. Reports
   p50, p99 and max of arrival minus 200.
3. drain: the receiver goes down (it resets every connection), `--backlog` events are posted,
   the receiver comes back, and the time until the last one arrives gives the drain rate.

Every phase ends with a check that each event answered 200 reached the receiver. Peak RSS is
VmHWM of the daemon; RSS is also sampled before and after the backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402 - after the path set-up
    HOST,
    SAMPLE,
    free_port,
    metric,
    peak_rss_kib,
    run_wrk,
    server,
    wait_http,
)
from tests.peers.fake_hec import DEFAULT_TOKEN  # noqa: E402
from tests.peers.process import peer_process  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post_json(url: str, data: Any) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def arrivals(hec: str, offset: int = 0) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{hec}/_fake/events?offset={offset}", timeout=60) as answer:  # noqa: S310
        listed: list[dict[str, Any]] = orjson.loads(answer.read())
        return listed


def received_count(hec: str) -> int:
    with urllib.request.urlopen(f"{hec}/_fake/stats", timeout=10) as answer:  # noqa: S310
        stats: dict[str, Any] = orjson.loads(answer.read())
    return int(stats["events"])


def wait_for_count(hec: str, expected: int, timeout: float) -> float:
    """Poll the receiver until it holds `expected` events; returns when that was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if received_count(hec) >= expected:
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"receiver has {received_count(hec)} of {expected} events after {timeout}s")


class DepthSampler(threading.Thread):
    """Samples the daemon's store depth every `interval` seconds while running."""

    def __init__(self, base_url: str, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.base_url, self.interval = base_url, interval
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.samples.append(int(metric(self.base_url, "canary_forwarder_store_events")))


async def paced_posts(url: str, rate: float, total: int, tag: str) -> dict[str, float]:
    """Offer `total` posts at `rate` per second; returns event id -> time of its 200."""
    template = orjson.loads(SAMPLE.read_bytes())
    answered: dict[str, float] = {}
    numbers = iter(range(total))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for number in numbers:
                delay = started + number / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                event_id = f"{tag}-{number}"
                body = orjson.dumps({**template, "IncidentHash": event_id})
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status == 200:
                        answered[event_id] = time.time()

        await asyncio.gather(*(worker() for _ in range(64)))
    return answered


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


Rows = list[tuple[str, str]]
PHASES = ("sustained", "latency", "drain")


def duplicates_in(events: list[dict[str, Any]]) -> int:
    return len(events) - len({e["fields"]["canary_event_id"] for e in events})


def sustained(base: str, hec: str, workdir: Path, args: argparse.Namespace) -> Rows:
    """Phase 1: wrk at full speed; what the receiver got during the window."""
    sampler = DepthSampler(base)
    sampler.start()
    window_start = time.time()
    result = run_wrk(f"{base}/canary", workdir, args, args.duration)
    window_end = time.time()
    sampler.halt.set()
    sampler.join()
    accepted = int(metric(base, 'canary_forwarder_accepted_total{kind="incident"}'))
    done_at = wait_for_count(hec, accepted, 300)
    # Requests wrk left in flight may commit after the first reading: read it again.
    accepted = int(metric(base, 'canary_forwarder_accepted_total{kind="incident"}'))
    done_at = max(done_at, wait_for_count(hec, accepted, 60))
    listed = arrivals(hec)
    in_window = sum(1 for e in listed if window_start <= e["arrived"] <= window_end)
    return [
        (
            "sustained: posts answered 200 per second (wrk)",
            f"{result.ok / (result.duration_us / 1e6):,.0f}",
        ),
        (
            "sustained: events delivered per second during the window",
            f"{in_window / (window_end - window_start):,.0f}",
        ),
        ("sustained: store depth every 2 s", ", ".join(map(str, sampler.samples))),
        (
            "sustained: all accepted events delivered",
            f"{len(listed):,} of {accepted:,}, {done_at - window_end:.1f} s after the load stopped",
        ),
        ("sustained: duplicates at the receiver", str(duplicates_in(listed))),
    ]


def latency(base: str, hec: str, workdir: Path, args: argparse.Namespace) -> Rows:
    """Phase 2: a fixed offered rate; from each 200 to that event's arrival."""
    total = int(args.latency_rate * args.duration)
    answered = asyncio.run(paced_posts(f"{base}/canary", args.latency_rate, total, "lat"))
    wait_for_count(hec, len(answered), 120)
    listed = arrivals(hec)
    late = [
        e["arrived"] - answered[e["fields"]["canary_event_id"]]
        for e in listed
        if e["fields"].get("canary_event_id") in answered
    ]
    return [
        (
            f"latency at {args.latency_rate:g}/s offered: events",
            f"{len(late):,} of {len(answered):,} answered 200",
        ),
        ("latency: 200 to arrival p50 ms", f"{1000 * statistics.median(late):.1f}"),
        ("latency: 200 to arrival p99 ms", f"{1000 * percentile(late, 0.99):.1f}"),
        ("latency: 200 to arrival max ms", f"{1000 * max(late):.1f}"),
        ("latency: duplicates at the receiver", str(duplicates_in(listed))),
    ]


def drain(base: str, hec: str, workdir: Path, args: argparse.Namespace, daemon_pid: int) -> Rows:
    """Phase 3: the receiver down while a backlog is posted, then back; the drain rate."""
    rss_before = rss_kib(daemon_pid)
    post_json(f"{hec}/_fake/down", {"down": True})
    answered = asyncio.run(paced_posts(f"{base}/canary", 1e9, args.backlog, "bl"))
    rss_backlog = rss_kib(daemon_pid)
    depth = int(metric(base, "canary_forwarder_store_events"))
    up_at = time.time()
    post_json(f"{hec}/_fake/down", {"down": False})
    wait_for_count(hec, len(answered), 600)
    listed = arrivals(hec)
    first, last = min(e["arrived"] for e in listed), max(e["arrived"] for e in listed)
    return [
        ("drain: backlog queued while the receiver was down", f"{depth:,} events"),
        (
            "drain: events per second from first to last arrival",
            f"{len(listed) / max(last - first, 1e-9):,.0f}",
        ),
        ("drain: seconds from receiver back to backlog delivered", f"{last - up_at:.1f}"),
        (
            "RSS MiB before backlog / with backlog queued / peak (VmHWM)",
            f"{rss_before / 1024:.1f} / {rss_backlog / 1024:.1f} / "
            f"{peak_rss_kib(daemon_pid) / 1024:.1f}",
        ),
        ("drain: duplicates at the receiver", str(duplicates_in(listed))),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"which phases to run, in order, comma-separated (default {','.join(PHASES)})",
    )
    args = parser.parse_args()
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {list(PHASES)}")

    with (
        tempfile.TemporaryDirectory(prefix="canary-e2e-") as tmp,
        peer_process("tests.peers.fake_hec") as hec,
    ):
        workdir = Path(tmp)
        port = free_port()
        base = f"http://{HOST}:{port}"
        config = {
            "listen": {
                "host": HOST,
                "port": port,
                # All the load comes from one address, with as many connections as asked for.
                "max_connections_per_client": 0,
            },
            "store": {"path": str(workdir / "state")},
            "outputs": [
                {
                    "name": "splunk",
                    "type": "splunk_hec",
                    "url": hec,
                    "token": DEFAULT_TOKEN,
                    "format": "json",
                    # The drain phase measures delivery, not how long the last backoff lasts.
                    "retry": {"max_backoff_secs": 2},
                }
            ],
        }
        (workdir / "e2e.yaml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "forwarder", "run", "-c", "e2e.yaml"]
        rows: Rows = []
        with server(command, workdir, workdir / "daemon.log") as daemon:
            wait_http(f"{base}/healthz", daemon)
            for phase in phases:
                # Each phase starts with an empty receiver: it keeps every event in memory, and
                # what the previous phase left would only slow it down.
                post_json(f"{hec}/_fake/reset", {})
                if phase == "drain":
                    rows += drain(base, hec, workdir, args, daemon.pid)
                else:
                    rows += {"sustained": sustained, "latency": latency}[phase](
                        base, hec, workdir, args
                    )
        failures = [
            json.loads(line).get("reason", "")
            for line in (workdir / "daemon.log").read_text().splitlines()
            if '"Send failed; will retry."' in line
        ]
        rows.append(
            (
                "failed sends (retried) over the whole run",
                f"{len(failures)} {sorted(set(failures))[:3]}",
            )
        )

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
