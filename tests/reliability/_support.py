"""What the reliability scenarios share: the daemon (with optional fault injection), sustained
load, RSS readings, and receivers in their own processes that can die and come back.

Used by tests/reliability/ (short versions) and bench/reliability.py (long versions with figures).
Every wait polls a condition under a deadline; every loop stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon.harness import (
    HOST,
    JSON_HEADERS,
    SAMPLE,
    Daemon,
    PostResults,
    free_port,
    wait_until,
    wait_until_async,
)
from tests.peers.fake_hec import DEFAULT_TOKEN
from tests.reliability._boot import boot_command

__all__ = [
    "DEFAULT_TOKEN",
    "HOST",
    "ROOT",
    "FaultyDaemon",
    "HecProcess",
    "Load",
    "fast_retry",
    "hec_output",
    "incident_body",
    "metric",
    "post_one",
    "raise_fd_limit",
    "rss_kib",
    "session",
    "store_gauge",
    "wait_until",
    "wait_until_async",
]

ROOT = Path(__file__).resolve().parents[2]


def fast_retry(**overrides: Any) -> dict[str, Any]:
    """Send at once, retry quickly: tests wait for deliveries, not for backoff."""
    options: dict[str, Any] = {
        "batch": {"timeout_secs": 0, "max_events": 100},
        "retry": {"initial_backoff_secs": 0.05, "max_backoff_secs": 0.5},
    }
    options.update(overrides)
    return options


def hec_output(name: str, url: str, token: str = DEFAULT_TOKEN, **options: Any) -> dict[str, Any]:
    """A `splunk_hec` output to `url` in the json format, sending at once, retrying quickly."""
    config: dict[str, Any] = {
        "name": name,
        "type": "splunk_hec",
        "url": url,
        "token": token,
        "format": "json",
        "request_timeout_secs": 5,
        "connect_timeout_secs": 2,
        **fast_retry(),
    }
    config.update(options)
    return config


class FaultyDaemon(Daemon):
    """The harness's `Daemon`, optionally started through tests/reliability/_boot.py patches."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        patches: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.patches = dict(patches or {})
        super().__init__(workdir, config, **options)

    def command(self) -> list[str]:
        command = super().command()
        if not self.patches:
            return command
        # [python, -m, forwarder, run, ...] -> [python, -c, BOOT, root, patches, run, ...]
        return boot_command(self.patches) + command[3:]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`canary-forwarder <args> -c CONFIG`, beside the running daemon."""
        return subprocess.run(
            [sys.executable, "-m", "forwarder", *args, "-c", str(self.config_path)],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_output(self, *args: str) -> str:
        """What `cli(*args)` printed, stdout then stderr."""
        done = self.cli(*args)
        return done.stdout + done.stderr

    def error_logs(self) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("level") == "error"]


def incident_body(event_id: str | None = None, pad: int = 0) -> tuple[str, bytes]:
    """The FTP incident sample with its own IncidentHash and `pad` bytes of AdditionalDetails."""
    event_id = event_id or uuid.uuid4().hex
    payload = json.loads(SAMPLE.read_bytes())
    payload["IncidentHash"] = event_id
    if pad:
        payload["AdditionalDetails"] = [*payload.get("AdditionalDetails", []), ["pad", "x" * pad]]
    return event_id, json.dumps(payload).encode()


async def post_one(
    client: aiohttp.ClientSession,
    url: str,
    results: PostResults,
    *,
    pad: int = 0,
    headers: Mapping[str, str] = JSON_HEADERS,
    event_id: str | None = None,
) -> str:
    """Post one new incident and file the outcome in `results` (as the harness's post_event)."""
    event_id, body = incident_body(event_id, pad=pad)
    try:
        async with client.post(url, data=body, headers=headers) as response:
            answer = await response.read()
    except (aiohttp.ClientError, OSError, TimeoutError):
        results.unanswered.add(event_id)
        return event_id
    if response.status == 200 and json.loads(answer).get("status") == "stored":
        results.stored.add(event_id)
    else:
        results.other[event_id] = f"{response.status} {answer[:200]!r}"
    return event_id


def session(timeout: float = 10.0, **connector: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(**connector) if connector else None,
    )


@dataclass
class Load:
    """`clients` concurrent posters, each at most `rate` posts per second (None: flat out)."""

    url: str
    clients: int = 4
    rate: float | None = None
    pad: int = 0
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    results: PostResults = field(default_factory=PostResults)
    latencies: list[float] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Load:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def _client(self) -> None:
        interval = None if self.rate is None else self.clients / self.rate
        async with session(timeout=10) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                await post_one(client, self.url, self.results, pad=self.pad, headers=self.headers)
                self.latencies.append(time.monotonic() - began)
                if interval is not None:
                    left = interval - (time.monotonic() - began)
                    if left > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), left)

    def halt(self) -> None:
        """Stop posting now (no await: every client may still have a request in flight)."""
        self._stop.set()

    async def stop(self) -> PostResults:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []
        return self.results

    async def wait_stored(self, count: int, timeout: float, alive: Callable[[], bool]) -> None:
        """Until `count` posts were stored in total (or the daemon died: the caller checks)."""
        await wait_until(
            lambda: len(self.results.stored) >= count or not alive() or None,
            timeout=timeout,
            what=f"{count} stored answers",
        )


def rss_kib(pid: int) -> int:
    """The resident set size of a process in KiB, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def metric(daemon: Daemon, name: str, labels: str = "") -> float | None:
    """One sample of GET /metrics: `name{labels}` (labels as written, e.g. `output="hec"`)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    async with session(timeout=5) as client, client.get(f"{daemon.base_url}/metrics") as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith(f"{wanted} "):
            return float(line.split()[1])
    return None


async def store_gauge(daemon: Daemon) -> tuple[int, int]:
    """(events, bytes) the daemon's store holds undelivered."""
    events = await metric(daemon, "canary_forwarder_store_events")
    size = await metric(daemon, "canary_forwarder_store_bytes")
    return int(events or 0), int(size or 0)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class HecProcess:
    """tests/peers/fake_hec.py in its own process, on a port chosen up front, so a daemon can be
    configured for it before it starts (a receiver that is down, then comes up)."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> HecProcess:
        assert self.process is None, "already running"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.fake_hec", "--port", str(self.port), *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdout is not None
        line = process.stdout.readline()  # the port once it listens; "" if it died
        if not line.strip().isdigit():
            process.kill()
            process.wait()
            raise RuntimeError(f"fake HEC did not start: {line!r}")
        self.process = process
        return self

    async def _fetch(self) -> list[dict[str, Any]]:
        async with (
            session(timeout=30) as client,
            client.get(f"{self.url}/_fake/events") as answer,
        ):
            listed: list[dict[str, Any]] = await answer.json()
        return [item["fields"] for item in listed]

    async def events(self) -> list[dict[str, Any]]:
        """Fields of every envelope accepted so far."""
        return await self._fetch()

    async def ids(self) -> Counter[str]:
        return Counter(fields["canary_event_id"] for fields in await self.events())

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


def count_lost(stored: Iterable[str], delivered: Counter[str]) -> tuple[set[str], int]:
    """(ids answered 200 that never arrived, how many deliveries were duplicates)."""
    lost = set(stored) - set(delivered)
    duplicates = sum(count - 1 for count in delivered.values())
    return lost, duplicates
