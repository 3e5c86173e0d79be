"""Long runs that look for resource leaks: `python bench/soak.py`.

Runs the real daemon (`python -m forwarder run -c CONFIG`, on 127.0.0.1 with free ports) against
real receivers (rsyslogd for syslog TCP and TLS, the fake HEC and Elasticsearch in their own
processes) and reads from /proc its open file descriptors, threads and resident memory at three
points of each long run: once warm (a tenth in), half-way and at the end. What keeps growing is
a leak; what grows once (caches filling, a thread pool reaching its size) is not, which is why
the middle is there to compare the end with.

The daemon is started through a wrapper (`--boot`, below) that changes nothing in it but adds a
SIGUSR1 handler writing what only the process itself can see: its asyncio tasks by coroutine,
its live Python objects by type (after a collection, thawing what `settle_collector` froze, as
a reload does), and how many aiohttp sessions and connectors, SSL contexts, thread pools,
dispatchers and outputs are alive. The wrapper also shortens a few periods (the healthcheck
interval, /readyz's failing threshold), so minutes go through as many cycles as days would.

    .venv/bin/python bench/soak.py                       # every scenario, long sizes (~12 min)
    .venv/bin/python bench/soak.py --only reload,outage
    .venv/bin/python bench/soak.py --quick               # every scenario, short sizes (~2 min)

Besides the figures, it counts the ERROR lines each daemon logged: found so, a node's failure
count overflowing its cooldown after 1,024 failures in a row made every send raise.

Scenarios:
- reload: 200 SIGHUPs with every output type (file, syslog TCP and TLS to rsyslogd, HEC, ES)
  and a TLS listener whose certificate is read again each time: with the same file, with every
  output changed each time, and with an invalid file (the outputs then reopen in place).
  Healthchecks run every 0.2 s, so some are under way when a reload replaces their output.
- reconnect: 500 batches each to a syslog TCP and a syslog TLS receiver that close the
  connection after every batch, and to a HEC that resets the connection of each request.
- outage: seven outputs whose receivers are down (refused, reset, a missing directory) with
  events queued, retrying every 10 to 50 ms and healthchecked every 0.5 s, for 3 minutes.
- posts: 50,000 posts, one in five a duplicate and one in ten not JSON (quarantined), then idle.
- status: 20,000 each of /readyz and /metrics with every output down (and /readyz failing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._scenarios import (  # noqa: E402 - after the path set-up
    chosen_scenarios,
    print_table,
    run_scenarios,
)
from tests.daemon.harness import Daemon, free_port, wait_until  # noqa: E402
from tests.peers.fake_hec import DEFAULT_TOKEN  # noqa: E402
from tests.peers.process import peer_process  # noqa: E402

Row = tuple[str, str, str, str, str]
Rows = list[Row]
Snapshots = list[tuple[str, "Snapshot"]]

PROBE_ENV = "SOAK_PROBE_FILE"
CONSTANTS_ENV = "SOAK_CONSTANTS"
JSON = {"Content-Type": "application/json"}
# Posts that fill the outbox's cache of parsed events (2048 of them) before the first figures,
# so that its growth, which stops there, is not taken for a leak; 7 in 10 are new events.
CACHE_FILL_POSTS = 3200
# A receiver that closes after each batch takes what arrives without a pause this long as one.
BATCH_GAP_SECS = 0.05
FIRST_BYTES_SECS = 10.0


# The daemon's side: what `--boot` runs instead of `python -m forwarder`.


def _boot(argv: list[str]) -> int:
    """`forwarder.cli.main(argv)`, with the probe on SIGUSR1 and the constants patched."""
    import concurrent.futures
    import gc
    import importlib
    import weakref

    from forwarder.delivery.dispatcher import Dispatcher
    from forwarder.outputs.base import Output
    from forwarder.telemetry.metrics import REGISTRY

    tracked: dict[str, weakref.WeakSet[Any]] = {}

    def track(cls: type[Any], name: str) -> None:
        alive: weakref.WeakSet[Any] = weakref.WeakSet()
        tracked[name] = alive
        original = cls.__init__
        takes_nothing = original is object.__init__  # SSLContext does all in __new__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            alive.add(self)
            if takes_nothing:
                original(self)
            else:
                original(self, *args, **kwargs)

        cls.__init__ = init

    track(aiohttp.ClientSession, "aiohttp sessions")
    track(aiohttp.TCPConnector, "aiohttp connectors")
    track(ssl.SSLContext, "SSL contexts")
    track(concurrent.futures.ThreadPoolExecutor, "thread pools")
    track(Dispatcher, "dispatchers")
    track(Output, "outputs")
    probe_file = Path(os.environ[PROBE_ENV])
    sequence = 0

    def write_probe() -> None:
        nonlocal sequence
        sequence += 1
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no loop running (start-up or shutdown)
            tasks = set()
        # Live objects only, so garbage waiting for the collector is collected first. The frozen
        # ones (settle_collector) are left out of get_objects(): they are thawed, collected and
        # frozen again, as a reload does. Frozen again without that collection, the garbage
        # among them would be kept for good, a leak of the probe's own making.
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        gc.collect()
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        if frozen:
            gc.freeze()
        series = sum(len(family.samples) for family in REGISTRY.collect())
        figures = {
            "sequence": sequence,
            "asyncio tasks": len(tasks),
            "metrics series": series,
            "python objects": sum(types.values()),
            **{name: len(alive) for name, alive in tracked.items()},
            "object_types": dict(types),
            "task_kinds": dict(Counter(_task_kind(task) for task in tasks).most_common(12)),
        }
        partial = probe_file.with_suffix(".partial")
        partial.write_text(json.dumps(figures))
        partial.replace(probe_file)

    def on_signal(signum: int, frame: object) -> None:
        loop = asyncio.events._get_running_loop()
        if loop is None:
            write_probe()
        else:  # between two steps of the event loop, not in the middle of one
            loop.call_soon_threadsafe(write_probe)

    signal.signal(signal.SIGUSR1, on_signal)
    for dotted, value in json.loads(os.environ.get(CONSTANTS_ENV, "{}")).items():
        module_name, _, name = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"soak: {module_name} has no {name}")
        setattr(module, name, value)
    from forwarder.cli import main

    return main(argv)


def _task_kind(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", None) or type(coro).__name__)


# Reading the daemon from outside


def fd_kinds(pid: int) -> Counter[str]:
    """The process's open file descriptors by kind: socket, pipe, anon_inode, file."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return kinds


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Snapshot:
    fds: int
    fd_kinds: dict[str, int]
    threads: int
    rss_kib: int
    probe: dict[str, Any]

    def figures(self) -> dict[str, float]:
        result: dict[str, float] = {
            "open fds": self.fds,
            "threads": self.threads,
            "RSS MiB": round(self.rss_kib / 1024, 1),
        }
        for key, value in self.probe.items():
            if isinstance(value, int) and key != "sequence":
                result[key] = value
        return result


class SoakDaemon(Daemon):
    """The harness's daemon, started through `--boot`: it answers probes."""

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        constants: Mapping[str, float] | None = None,
        **options: Any,
    ) -> None:
        self.probe_file = workdir / "probe.json"
        self.logged: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._log_offset = 0
        environ = {PROBE_ENV: str(self.probe_file), CONSTANTS_ENV: json.dumps(constants or {})}
        super().__init__(workdir, config, environ=environ, **options)

    def command(self) -> list[str]:
        # [python, -m, forwarder, run, ...] -> [python, bench/soak.py, --boot, run, ...]
        return [sys.executable, str(Path(__file__).resolve()), "--boot", *super().command()[3:]]

    def read_log(self) -> Counter[str]:
        """Log lines by message (and `(errors)`), counting what was written since the last call
        into the totals it returns: the log of 50,000 posts is not read again at every wait."""
        try:
            with self.stderr_path.open("rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except FileNotFoundError:
            return self.logged
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    self.logged[str(parsed.get("event"))] += 1
                    if parsed.get("level") == "error":
                        self.logged["(errors)"] += 1
                        self.errors[str(parsed.get("event"))] += 1
        return self.logged

    async def wait_for_count(self, event: str, count: int, within: float = 60.0) -> None:
        await wait_until(
            lambda: self.read_log()[event] >= count or None, timeout=within, what=event
        )

    async def snapshot(self) -> Snapshot:
        try:
            last = json.loads(self.probe_file.read_text()).get("sequence", 0)
        except FileNotFoundError:
            last = 0
        self.send_signal(signal.SIGUSR1)

        def probed() -> dict[str, Any] | None:
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = json.loads(self.probe_file.read_text())
                if data.get("sequence", 0) > last:
                    return data
            return None

        probe = await wait_until(probed, timeout=10, what="the probe")
        pid = self.pid
        return Snapshot(
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            fd_kinds=dict(fd_kinds(pid)),
            threads=len(os.listdir(f"/proc/{pid}/task")),
            rss_kib=rss_kib(pid),
            probe=probe,
        )


def compare(name: str, snapshots: Snapshots) -> Rows:
    """One row per figure with its value at each point, then what changed most."""
    rows: Rows = []
    figures = [snapshot.figures() for _, snapshot in snapshots]
    for key in figures[0]:
        values = [str(f.get(key, "")) for f in figures] + ["", "", ""]
        rows.append((name, key, values[0], values[1], values[2]))
    kinds = [", ".join(f"{k} {v}" for k, v in sorted(s.fd_kinds.items())) for _, s in snapshots]
    kinds += ["", "", ""]
    rows.append((name, "fds by kind", kinds[0], kinds[1], kinds[2]))
    last = snapshots[-1][1].probe
    tasks = ", ".join(f"{k} {v}" for k, v in last.get("task_kinds", {}).items())
    rows.append((name, "asyncio tasks by coroutine", "", "", tasks))
    # Growth that stops (a pool reaching its size) shows in the first column only.
    growths = []
    for (_, earlier), (_, later) in itertools.pairwise(snapshots):
        grown = Counter(later.probe.get("object_types", {}))
        grown.subtract(earlier.probe.get("object_types", {}))
        top = ", ".join(f"{kind} {count:+}" for kind, count in grown.most_common(4) if count > 0)
        growths.append(top or "none")
    growths += ["", ""]
    rows.append((name, "object types grown most since", "", growths[0], growths[1]))
    return rows


def error_row(name: str, daemon: SoakDaemon) -> Row:
    """How many ERROR lines the daemon logged, and the commonest."""
    daemon.read_log()
    common = "; ".join(f"{n} x {message!r}" for message, n in daemon.errors.most_common(3))
    return (name, "ERROR lines", "", "", f"{daemon.logged['(errors)']} {common}".strip())


def report(name: str, snapshots: Snapshots, daemon: SoakDaemon) -> Rows:
    """A scenario's rows: its figures at each snapshot, then its ERROR lines."""
    return [*compare(name, snapshots), error_row(name, daemon)]


@contextlib.asynccontextmanager
async def running(daemon: SoakDaemon, *, tls: bool = False) -> AsyncIterator[SoakDaemon]:
    """`daemon` started for the block; stopped after it, its log read first, and cleaned up
    whatever happens. Listening over TLS, where the harness cannot ask /healthz, it counts as
    started once it logs "Listening."."""
    try:
        if tls:
            daemon.spawn()
            await daemon.wait_for_count("Listening.", 1, within=30)
        else:
            await daemon.start()
        yield daemon
        daemon.read_log()
        await daemon.stop()
    finally:
        daemon.close()


async def sample(
    daemon: SoakDaemon,
    cycles: int,
    step: Callable[[int], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
    *,
    fill: bool = True,
) -> Snapshots:
    """Fill the outbox's cache of parsed events (with `fill`; it takes outputs that deliver),
    then run `step(cycle)` `cycles` times; a snapshot a tenth in, half-way and at the end."""
    if fill:
        webhook = daemon.webhook_url.replace("http:", "https:") if tls else daemon.webhook_url
        await post_many(webhook, CACHE_FILL_POSTS, tls=tls)
        await drained(daemon, tls, within=300)
    marks = {max(1, cycles // 10): "warm", cycles // 2: "middle", cycles: "end"}
    snapshots: Snapshots = []
    for cycle in range(1, cycles + 1):
        await step(cycle)
        if cycle in marks:
            snapshots.append((marks[cycle], await daemon.snapshot()))
    return snapshots


# Receivers


async def fake_control(url: str, route: str, data: Any) -> Any:
    """A fake peer's control route (`/_fake/faults`, `/_fake/down`)."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{url}/_fake/{route}", json=data) as answer,
    ):
        return await answer.json()


class ClosingReceiver:
    """A syslog TCP (or TLS) receiver that reads one batch from each connection, then closes it."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.closed = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ClosingReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock = writer.get_extra_info("socket")
        # The batch, however many reads it takes: closed with unread bytes, the connection
        # would be reset, and a batch that is always reset is never delivered.
        with contextlib.suppress(OSError, TimeoutError):
            wait = FIRST_BYTES_SECS  # a TLS client waits a moment after its handshake
            while True:
                async with asyncio.timeout(wait):
                    if not await reader.read(65536):
                        break
                # Acknowledged at once, not after Linux's delayed ACK (up to 200 ms): a TLS
                # sender that sees the close before the acknowledgement sends the batch again,
                # and with every connection closed so soon, again for ever.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                wait = BATCH_GAP_SECS
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.closed += 1


# Posting


def body() -> bytes:
    sample = json.loads((ROOT / "tests" / "samples" / "incident_ftp_login.json").read_bytes())
    sample["IncidentHash"] = uuid.uuid4().hex
    return json.dumps(sample).encode()


def client_session(tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
    )


async def post_many(
    url: str, count: int, *, clients: int = 8, tls: ssl.SSLContext | None = None
) -> Counter[str]:
    """`count` posts, `clients` at a time: new events, but one in five a duplicate of an
    earlier one and one in ten not JSON (quarantined); the answers by status."""
    answers: Counter[str] = Counter()
    earlier: list[bytes] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for number in range(count):
        if number % 10 == 9:
            queue.put_nowait(b"{not json " + str(number).encode())
        elif number % 5 == 4 and earlier:
            queue.put_nowait(earlier[number % len(earlier)])
        else:
            posted = body()
            if len(earlier) < 1000:
                earlier.append(posted)
            queue.put_nowait(posted)

    async def client() -> None:
        async with client_session(tls) as session:
            while not queue.empty():
                data = queue.get_nowait()
                try:
                    async with session.post(url, data=data, headers=JSON) as answer:
                        await answer.read()
                        answers[str(answer.status)] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    answers[type(exc).__name__] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def post_some(url: str, count: int, tls: ssl.SSLContext | None = None) -> None:
    """`count` new events, one after the other; each must be stored."""
    async with client_session(tls) as session:
        for _ in range(count):
            async with session.post(url, data=body(), headers=JSON) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"a post was answered {answer.status}")


async def metric(daemon: Daemon, name: str, tls: ssl.SSLContext | None = None) -> float | None:
    """An unlabelled sample of the daemon's /metrics."""
    base = daemon.base_url.replace("http:", "https:") if tls is not None else daemon.base_url
    async with client_session(tls) as session, session.get(f"{base}/metrics") as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def drained(daemon: Daemon, tls: ssl.SSLContext | None = None, within: float = 60) -> None:
    """Wait until every output has delivered everything: the store holds no event."""

    async def empty() -> bool:
        return await metric(daemon, "canary_forwarder_store_events", tls) == 0

    deadline = time.monotonic() + within
    while not await empty():
        if time.monotonic() > deadline:
            raise RuntimeError("the store did not drain")
        await asyncio.sleep(0.05)


def fast(**options: Any) -> dict[str, Any]:
    """An output's options that send at once and retry every 10 to 50 ms."""
    return {
        "batch": {"timeout_secs": 0, "max_events": 50},
        "retry": {"initial_backoff_secs": 0.01, "max_backoff_secs": 0.05},
        **options,
    }


# Scenarios


async def scenario_reload(work: Path, quick: bool) -> Rows:
    from tests.support.rsyslog import Rsyslog, make_tls_files

    cycles = 20 if quick else 200
    tls_files = make_tls_files(work / "tls")
    tls_client = ssl.create_default_context(cafile=str(tls_files.ca_file))
    tcp = Rsyslog(work / "rsyslog-tcp", "tcp")
    tls = Rsyslog(work / "rsyslog-tls", "tls", tls=tls_files)
    rows: Rows = []
    try:
        with (
            peer_process("tests.peers.fake_hec") as hec_url,
            peer_process("tests.peers.fake_es") as es_url,
        ):

            def config(variant: int) -> dict[str, Any]:
                """Every output, with options that differ from one `variant` to the next."""
                common = {
                    "batch": {"timeout_secs": 0},
                    "retry": {"initial_backoff_secs": 0.5 + variant % 7, "max_backoff_secs": 10},
                }
                syslog = {"type": "syslog", "format": "rfc5424", **common}
                tls_options = {"ca_file": str(tls_files.ca_file)}
                return {
                    "listen": {
                        "tls": {
                            "cert": str(tls_files.server_cert),
                            "key": str(tls_files.server_key),
                        }
                    },
                    "outputs": [
                        {"name": "file", "type": "file", "path": str(work / "out.jsonl"), **common},
                        {"name": "tcp", "hosts": [tcp.address], "transport": "tcp", **syslog},
                        {
                            "name": "tls",
                            "hosts": [tls.address],
                            "transport": "tls",
                            "tls": tls_options,
                            **syslog,
                        },
                        {
                            "name": "hec",
                            "type": "splunk_hec",
                            "url": hec_url,
                            "token": DEFAULT_TOKEN,
                            **common,
                        },
                        {
                            "name": "es",
                            "type": "elasticsearch",
                            "url": es_url,
                            "format": "ecs",
                            **common,
                        },
                    ],
                }

            for variant in ("same", "changed", "refused"):
                daemon = SoakDaemon(
                    work / f"reload-{variant}",
                    config(0),
                    constants={"forwarder.pipeline.HEALTHCHECK_INTERVAL_SECS": 0.2},
                )
                async with running(daemon, tls=True):
                    step = functools.partial(_reload, daemon, variant, config, tls_client)
                    snapshots = await sample(daemon, cycles, step, tls_client)
                rows += report(f"{cycles} reloads, {variant} config", snapshots, daemon)
    finally:
        tcp.stop()
        tls.stop()
    return rows


async def _reload(
    daemon: SoakDaemon,
    variant: str,
    config: Callable[[int], dict[str, Any]],
    tls: ssl.SSLContext,
    cycle: int,
) -> None:
    """Post a few events, then SIGHUP, with the file as `variant` says; wait for the reload
    and the delivery."""
    if variant == "changed":
        daemon.write_config(config(cycle))
    elif variant == "refused":
        daemon.config_path.write_text("outputs: [{type: nonsense}]\n")
    await post_some(daemon.webhook_url.replace("http:", "https:"), 3, tls)
    daemon.send_signal(signal.SIGHUP)
    # The last line of a reload, refused or not.
    await daemon.wait_for_count("Listener certificate reloaded.", cycle)
    await drained(daemon, tls)


async def _post_one(daemon: SoakDaemon, cycle: int) -> None:
    """One event, delivered: one batch."""
    await post_some(daemon.webhook_url, 1)
    await drained(daemon)


async def _post_one_closed(daemon: SoakDaemon, receiver: ClosingReceiver, cycle: int) -> None:
    """One event, on a connection of its own: the receiver closed the last one first."""
    await wait_until(
        lambda: receiver.closed >= receiver.connections or None,
        timeout=30,
        what="the receiver to close its connections",
    )
    await _post_one(daemon, cycle)


async def _post_one_reset(daemon: SoakDaemon, hec_url: str, cycle: int) -> None:
    """One event, whose first send the HEC resets."""
    await fake_control(hec_url, "faults", [{"reset": True}])
    await _post_one(daemon, cycle)


async def scenario_reconnect(work: Path, quick: bool) -> Rows:
    from tests.support.rsyslog import make_tls_files

    cycles = 50 if quick else 500
    rows: Rows = []
    tls_files = make_tls_files(work / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    for transport in ("tcp", "tls"):
        async with ClosingReceiver(server_tls if transport == "tls" else None) as receiver:
            output: dict[str, Any] = {
                "name": transport,
                "type": "syslog",
                "hosts": [receiver.address],
                "transport": transport,
                **fast(),
            }
            if transport == "tls":
                output["tls"] = {"ca_file": str(tls_files.ca_file)}
            daemon = SoakDaemon(
                work / transport,
                {"outputs": [output]},
                constants={"forwarder.pipeline.HEALTHCHECK_INTERVAL_SECS": 1.0},
            )
            async with running(daemon):
                before = receiver.connections
                step = functools.partial(_post_one_closed, daemon, receiver)
                snapshots = await sample(daemon, cycles, step)
            name = f"syslog {transport}: {receiver.connections - before} connections closed"
            rows += report(name, snapshots, daemon)
    with peer_process("tests.peers.fake_hec") as hec_url:
        daemon = SoakDaemon(
            work / "hec",
            {
                "outputs": [
                    {
                        "name": "hec",
                        "type": "splunk_hec",
                        "url": hec_url,
                        "token": DEFAULT_TOKEN,
                        **fast(),
                    }
                ]
            },
            constants={"forwarder.pipeline.HEALTHCHECK_INTERVAL_SECS": 1.0},
        )
        async with running(daemon):
            step = functools.partial(_post_one_reset, daemon, hec_url)
            snapshots = await sample(daemon, cycles, step)
    name = f"HEC: {daemon.logged['Send failed; will retry.']} connections reset"
    rows += report(name, snapshots, daemon)
    return rows


async def scenario_outage(work: Path, quick: bool) -> Rows:
    secs = 20.0 if quick else 180.0
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    (work / "gone").mkdir()
    with peer_process("tests.peers.fake_hec") as resetting_hec:
        await fake_control(resetting_hec, "down", {"down": True})
        hec = {"type": "splunk_hec", "token": DEFAULT_TOKEN, **fast()}
        syslog = {"type": "syslog", "hosts": [refused], **fast()}
        daemon = SoakDaemon(
            work / "daemon",
            {
                "outputs": [
                    {"name": "tcp", "transport": "tcp", **syslog},
                    {"name": "tls", "transport": "tls", **syslog},
                    {"name": "udp", "transport": "udp", **syslog},
                    {"name": "hec-refused", "url": f"http://{refused}", **hec},
                    {"name": "hec-reset", "url": resetting_hec, **hec},
                    {
                        "name": "es-tls",
                        "type": "elasticsearch",
                        "url": f"https://{refused}",
                        "format": "ecs",
                        **fast(),
                    },
                    {"name": "file", "type": "file", "path": str(work / "gone" / "out"), **fast()},
                ]
            },
            constants={"forwarder.pipeline.HEALTHCHECK_INTERVAL_SECS": 0.5},
        )
        async with running(daemon):
            shutil.rmtree(work / "gone")  # the file output fails every write from here on
            await post_some(daemon.webhook_url, 200)
            began = time.monotonic()
            snapshots: Snapshots = []
            for label, share in (("warm", 0.1), ("middle", 0.5), ("end", 1.0)):
                await asyncio.sleep(max(0.0, began + share * secs - time.monotonic()))
                snapshots.append((label, await daemon.snapshot()))
    failures = (
        daemon.logged["Send failed; will retry."]
        + daemon.logged["Output needs an operator (credentials or configuration); events are kept."]
    )
    name = f"7 outputs down {secs:g} s: {failures} failed sends"
    return report(name, snapshots, daemon)


async def scenario_posts(work: Path, quick: bool) -> Rows:
    count = 5000 if quick else 50_000
    idle = 10.0 if quick else 60.0
    daemon = SoakDaemon(
        work / "daemon",
        {"outputs": [{"name": "file", "type": "file", "path": str(work / "out.jsonl")}]},
    )
    answers: Counter[str] = Counter()
    async with running(daemon):
        snapshots: Snapshots = []
        for label, share in (("warm", 0.1), ("middle", 0.4), ("end", 0.5)):
            answers += await post_many(daemon.webhook_url, int(count * share))
            await drained(daemon)
            snapshots.append((label, await daemon.snapshot()))
        await asyncio.sleep(idle)  # idle: what is left over once nothing happens
        snapshots[-1] = (f"end, {idle:g} s idle", await daemon.snapshot())
    statuses = ", ".join(f"{status} x{n}" for status, n in sorted(answers.items()))
    name = f"{count:,} posts ({statuses})"
    return report(name, snapshots, daemon)


async def scenario_status(work: Path, quick: bool) -> Rows:
    count = 2000 if quick else 20_000
    refused = f"127.0.0.1:{free_port()}"
    daemon = SoakDaemon(
        work / "daemon",
        {
            "outputs": [
                {"name": "tcp", "type": "syslog", "hosts": [refused], **fast()},
                {
                    "name": "hec",
                    "type": "splunk_hec",
                    "url": f"http://{refused}",
                    "token": DEFAULT_TOKEN,
                    **fast(),
                },
            ]
        },
        constants={
            "forwarder.ingest.handlers.READY_OUTPUT_FAILING_SECS": 1.0,
            "forwarder.pipeline.HEALTHCHECK_INTERVAL_SECS": 1.0,
        },
    )
    statuses: Counter[str] = Counter()
    async with running(daemon):
        await post_some(daemon.webhook_url, 20)
        async with client_session() as session:

            async def scrape(cycle: int) -> None:
                for path in ("/readyz", "/metrics"):
                    async with session.get(daemon.base_url + path) as answer:
                        await answer.read()
                        statuses[f"{path} {answer.status}"] += 1

            snapshots = await sample(daemon, count, scrape, fill=False)
    name = f"outputs down: {', '.join(f'{k} x{v}' for k, v in sorted(statuses.items()))}"
    return report(name, snapshots, daemon)


SCENARIOS: dict[str, Callable[[Path, bool], Awaitable[Rows]]] = {
    "reload": scenario_reload,
    "reconnect": scenario_reconnect,
    "outage": scenario_outage,
    "posts": scenario_posts,
    "status": scenario_status,
}


async def main(args: argparse.Namespace) -> int:
    chosen = chosen_scenarios(args.only, SCENARIOS)
    if chosen is None:
        return 2
    rows = await run_scenarios(
        chosen, "canary-soak-", lambda name, work: SCENARIOS[name](work, args.quick)
    )
    print(f"\ncanary-forwarder soak ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print_table(("scenario", "figure", "warm", "middle", "end"), rows)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="short sizes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--boot"]:
        raise SystemExit(_boot(sys.argv[2:]))
    raise SystemExit(asyncio.run(main(parse_args())))
