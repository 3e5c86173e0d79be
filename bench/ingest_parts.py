"""Where a durable post's cost goes: the daemon with parts of its work switched off.

    python bench/ingest_parts.py [--duration 10] [--rounds 3] [--connections 50]

`bench/ingest.py` measures the daemon against the bare handler; `bench/ingest_ceiling.py` a
minimal durable handler. This script measures what lies between them, under the same wrk load
(the seed's FTP incident, a unique IncidentHash per post), round by round, each server in turn:

- bare: `bench/ingest.py`'s bare aiohttp handler;
- daemon: `python -m forwarder run` as `bench/ingest.py` runs it (durable store, `file` output);
- daemon, no delivery: the same, with no dispatcher started (events stay in the store);
- daemon, no extras: the same, without the answer-counting middleware, the write-stall guard on
  connections, the webhook's counters and its "Event accepted." line;
- daemon, neither: both switched off; still the daemon's HTTP handling, checks, parsing,
  dedupe and durable group commit;
- lean x1: `bench/ingest_ceiling.py`'s minimal durable handler, one process.

The parts are switched off by a launcher that patches the daemon in its own process before it
starts; the daemon's code is not changed. For each server the script reads the CPU time of each
of its threads from /proc before and after the run, and wrk's own from its rusage, and prints
them per post: what the two CPUs must pay for each post. After each daemon run it checks that
every post answered 2xx is in the output file or still in the store.

Prints a Markdown table of the medians over the rounds. Not a target check: a measurement of
where the time goes (docs/benchmarks.md, thirteenth pass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import ingest  # noqa: E402 - after the path set-up
from bench.ingest import HOST, WrkResult  # noqa: E402
from bench.ingest_ceiling import LEAN_SERVER  # noqa: E402
from forwarder.store.database import DB_NAME  # noqa: E402

LAUNCHER = """
import sys

sys.path.insert(0, sys.argv[1])
off = set(sys.argv[2].split(",")) - {""}

if "delivery" in off:
    from forwarder.delivery.dispatcher import Dispatcher

    Dispatcher.start = lambda self: None

if "extras" in off:
    import forwarder.cli.run as run
    import forwarder.ingest.handlers as handlers
    import forwarder.ingest.listener as listener
    from forwarder.telemetry import metrics

    build_app = run.build_app

    def without_middleware(pipeline):
        app = build_app(pipeline)
        app.middlewares.clear()
        return app

    class Uncounted:
        def inc(self, *args):
            pass

        def labels(self, *args):
            return self

    class WebhookMetrics:
        received = accepted = Uncounted()

        @staticmethod
        def series(metric, *labels):
            return Uncounted()

        def __getattr__(self, name):
            return getattr(metrics, name)

    class NoInfoLines:
        def __init__(self, inner):
            self.inner = inner

        def info(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return getattr(self.inner, name)

    run.build_app = without_middleware
    listener.WriteStallLimit = lambda factory, timeout: factory()
    handlers.metrics = WebhookMetrics()
    handlers.log = NoInfoLines(handlers.log)

from forwarder.cli import main

raise SystemExit(main(sys.argv[3:]))
"""

# name, parts switched off ("" for the daemon as it is); None: not the daemon.
VARIANTS: list[tuple[str, str | None]] = [
    ("bare aiohttp handler", None),
    ("daemon", ""),
    ("daemon, no delivery", "delivery"),
    ("daemon, no extras", "extras"),
    ("daemon, neither", "delivery,extras"),
    ("lean x1", None),
]


@dataclasses.dataclass
class Measured:
    wrk: WrkResult
    loop_us: float  # the server's main thread (the event loop), CPU per post
    other_us: float  # every other thread of the server (store, executors), CPU per post
    wrk_us: float  # wrk itself, CPU per request


def thread_cpu_secs(pid: int) -> dict[int, float]:
    """CPU time (user + system) of each thread of `pid`, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def measure(pid: int, url: str, workdir: Path, args: argparse.Namespace) -> Measured:
    if args.warmup:
        ingest.run_wrk(url, workdir, args, args.warmup)
    before, children_before = thread_cpu_secs(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = ingest.run_wrk(url, workdir, args, args.duration)
    after, children_after = thread_cpu_secs(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {tid: secs - before.get(tid, 0.0) for tid, secs in after.items()}
    wrk_secs = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    posts = result.requests / 1e6  # so that seconds / posts is microseconds per post
    loop = spent.pop(pid, 0.0)
    return Measured(result, loop / posts, sum(spent.values()) / posts, wrk_secs / posts)


def run_daemon(off: str, workdir: Path, args: argparse.Namespace) -> Measured:
    run_dir = Path(tempfile.mkdtemp(prefix="daemon-", dir=workdir))
    port = ingest.free_port()
    output = run_dir / "events.jsonl"
    launcher = run_dir / "launcher.py"
    launcher.write_text(LAUNCHER, "utf-8")
    command = [sys.executable, str(launcher), str(ROOT), off]
    command += ingest.daemon_arguments(run_dir, port, output)
    with ingest.server(command, run_dir, run_dir / "daemon.log") as proc:
        ingest.wait_http(f"http://{HOST}:{port}/healthz", proc)
        measured = measure(proc.pid, f"http://{HOST}:{port}/canary", run_dir, args)
    # Stopped: every post answered 2xx is in the output, or still in the store.
    name = off or "daemon"
    delivered = {json.loads(line)["id"] for line in output.read_bytes().splitlines()}
    with sqlite3.connect(run_dir / "state" / DB_NAME) as store:
        held = {row[0] for row in store.execute("SELECT event_id FROM events")}
    kept = len(delivered | held)
    if kept < measured.wrk.ok:
        raise SystemExit(f"{name}: {measured.wrk.ok} answered 2xx, {kept} kept")
    # And the parts said to be off were off.
    if "delivery" in off and delivered:
        raise SystemExit(f"{name}: {len(delivered)} events delivered with delivery off")
    if "extras" in off and b"Event accepted." in (run_dir / "daemon.log").read_bytes():
        raise SystemExit(f"{name}: the daemon logged accepted events with its extras off")
    return measured


def run_script(source: str, extra: Callable[[Path], list[str]]) -> Callable[..., Measured]:
    """A runner for a one-file server (`source`) taking host, port and then `extra(run_dir)`."""

    def run(workdir: Path, args: argparse.Namespace) -> Measured:
        run_dir = Path(tempfile.mkdtemp(prefix="server-", dir=workdir))
        script = run_dir / "server.py"
        script.write_text(source, "utf-8")
        port = ingest.free_port()
        command = [sys.executable, str(script), HOST, str(port), *extra(run_dir)]
        with ingest.server(command, run_dir, run_dir / "server.log") as proc:
            url = f"http://{HOST}:{port}/canary"
            ingest.wait_http(url, proc)  # GET on the POST route answers 405: it is listening
            return measure(proc.pid, url, run_dir, args)

    return run


run_bare = run_script(ingest.BARE_SERVER, lambda run_dir: [])
run_lean = run_script(LEAN_SERVER, lambda run_dir: [str(run_dir / "lean.db"), str(ROOT)])


def main() -> int:
    parser = ingest.wrk_parser(__doc__.split("\n", 1)[0])
    parser.set_defaults(duration=10)
    parser.add_argument("--rounds", type=int, default=3, help="every server, this many times (3)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="canary-parts-"))
    runs: dict[str, list[Measured]] = {name: [] for name, _ in VARIANTS}
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        for _ in range(args.rounds):
            for name, off in VARIANTS:
                if off is not None:
                    runs[name].append(run_daemon(off, workdir, args))
                elif name.startswith("lean"):
                    runs[name].append(run_lean(workdir, args))
                else:
                    runs[name].append(run_bare(workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bare_rps = statistics.median(m.wrk.rps for m in runs[VARIANTS[0][0]])
    print(
        f"{started}; wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs\n"
    )
    print(
        "| server | req/s (range) | ratio to bare | p99 ms | CPU µs per post: event loop "
        "| other threads | wrk |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, measured in runs.items():
        rates = [m.wrk.rps for m in measured]
        rps = statistics.median(rates)
        print(
            f"| {name} | {rps:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {rps / bare_rps:.2f} "
            f"| {statistics.median(m.wrk.p99_us for m in measured) / 1000:.1f} "
            f"| {statistics.median(m.loop_us for m in measured):.0f} "
            f"| {statistics.median(m.other_us for m in measured):.0f} "
            f"| {statistics.median(m.wrk_us for m in measured):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
