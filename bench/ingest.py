"""Ingest benchmark (issue 2, "9. Benchmark"): the daemon's durable 200 against a bare aiohttp 200.

    python bench/ingest.py [--duration 20] [--connections 50] [--threads 2] [--rounds 1]

Both servers run on this machine in this run, one after the other, under the same load: wrk
posting the seed's FTP incident (tests/samples/incident_ftp_login.json) with the given
connections and threads.

- daemon: `python -m forwarder run` with its durable store (store.sync: full, the default: every
  event is committed, fsync included, before its 200) and a `file` output (fsync per batch).
- bare: an aiohttp handler in its own process that reads the body and answers 200, nothing else.

Every post is a new event: the wrk Lua script puts a per-request counter (with the wrk thread and
a run tag) into IncidentHash, so no post is a duplicate within the dedupe window and each one is
committed to the store. (Posting the same body would measure the dedupe path after the first post.)

After the daemon's run the script waits for the store to drain and checks the output file: its
line count must equal the daemon's accepted count and every id must be unique; wrk's 2xx count may
fall short of it by at most the number of connections (requests in flight when wrk stopped were
committed but their answers were not counted).

Prints a Markdown table: req/s, p50 and p99 latency, peak RSS (VmHWM) of the server process, and
the ratio daemon / bare. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "samples" / "incident_ftp_login.json"
HOST = "127.0.0.1"
HASH_MARK = "@@HASH@@"

# wrk: every request posts the sample with IncidentHash = <tag>-<thread>-<counter>, and `done`
# prints wrk's own totals as one JSON line (latency in microseconds).
LUA = r"""
local prefix = [==[%(prefix)s]==]
local suffix = [==[%(suffix)s]==]
local tag = "%(tag)s"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  local body = prefix .. tag .. "-" .. tid .. "-" .. counter .. suffix
  return wrk.format(nil, nil, nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"""

BARE_SERVER = """
import sys
from aiohttp import web

async def handle(request):
    await request.read()
    return web.json_response({"status": "stored"})

app = web.Application()
app.router.add_post("/canary", handle)
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None,
            backlog=1024)
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_us: int
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def ok(self) -> int:
        """Answers with a 2xx (or 3xx) status."""
        return self.requests - self.status

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout


@dataclass(frozen=True)
class Row:
    name: str
    wrk: WrkResult
    peak_rss_kib: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def lua_script(directory: Path) -> Path:
    """A wrk script with its own tag: no two runs post the same IncidentHash."""
    payload = json.loads(SAMPLE.read_bytes())
    payload["IncidentHash"] = HASH_MARK
    prefix, suffix = json.dumps(payload).split(HASH_MARK)
    tag = uuid.uuid4().hex[:12]
    script = directory / f"post_incident_{tag}.lua"
    script.write_text(LUA % {"prefix": prefix, "suffix": suffix, "tag": tag}, "utf-8")
    return script


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll `url` until it answers (any status) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our loopback URL
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def run_wrk(url: str, workdir: Path, args: argparse.Namespace, duration: float) -> WrkResult:
    script = lua_script(workdir)
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            data = json.loads(line.removeprefix("WRK_RESULT "))
            data.pop("bytes")
            return WrkResult(**data)
    raise SystemExit(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


@contextlib.contextmanager
def server(command: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric(base_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:  # noqa: S310
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise RuntimeError(f"metric {name} not found")


def daemon_arguments(workdir: Path, port: int, output: Path) -> list[str]:
    """The `forwarder` arguments this benchmark runs the daemon with, its configuration written
    to `workdir`: the durable store (`sync: full`) in `workdir`, a `file` output to `output`
    (fsync per batch), JSON log lines."""
    config = {
        "listen": {
            "host": HOST,
            "port": port,
            # All the load comes from one address, with as many connections as asked for.
            "max_connections_per_client": 0,
        },
        "store": {"path": str(workdir / "state"), "sync": "full"},
        "outputs": [{"name": "file", "type": "file", "path": str(output), "fsync": "batch"}],
    }
    config_path = workdir / "daemon.yaml"
    config_path.write_text(yaml.safe_dump(config), "utf-8")
    return ["run", "-c", str(config_path), "--log-format", "json"]


def bench_daemon(workdir: Path, args: argparse.Namespace) -> tuple[Row, str]:
    port = free_port()
    output = workdir / "daemon-events.jsonl"
    command = [sys.executable, "-m", "forwarder", *daemon_arguments(workdir, port, output)]
    base_url = f"http://{HOST}:{port}"
    with server(command, workdir, workdir / "daemon.log") as proc:
        wait_http(f"{base_url}/healthz", proc)
        warm = run_wrk(f"{base_url}/canary", workdir, args, args.warmup) if args.warmup else None
        result = run_wrk(f"{base_url}/canary", workdir, args, args.duration)
        rss = peak_rss_kib(proc.pid)
        deadline = time.monotonic() + 120
        while metric(base_url, "canary_forwarder_store_events") > 0:
            if time.monotonic() > deadline:
                raise SystemExit("the daemon's store did not drain within 120 s")
            time.sleep(0.1)
        accepted = metric(base_url, 'canary_forwarder_accepted_total{kind="incident"}')
        duplicates = metric(base_url, "canary_forwarder_duplicates_total")
    lines = output.read_bytes().splitlines()
    ids = {json.loads(line)["id"] for line in lines}
    answered = result.ok + (warm.ok if warm else 0)
    unanswered_allowed = args.connections * (2 if warm else 1)
    problems = []
    if len(lines) != accepted:
        problems.append(f"{len(lines)} lines in the output but {accepted:g} events accepted")
    if len(ids) != len(lines):
        problems.append(f"{len(lines) - len(ids)} duplicate lines in the output")
    if duplicates:
        problems.append(f"{duplicates:g} posts were treated as duplicates")
    if not 0 <= len(lines) - answered <= unanswered_allowed:
        problems.append(f"{len(lines)} lines but wrk counted {answered} answers with 2xx")
    check = (
        f"daemon: wrk counted {answered} 2xx answers (warm-up included), the daemon accepted "
        f"{accepted:g}, the output file holds {len(lines)} lines with {len(ids)} distinct ids "
        f"after draining; {len(lines) - answered} were committed while wrk stopped "
        f"(at most {unanswered_allowed} can be)."
    )
    if problems:
        raise SystemExit(check + "\nFAILED: " + "; ".join(problems))
    return Row("daemon (durable store, file output)", result, rss), check


def bench_bare(workdir: Path, args: argparse.Namespace) -> Row:
    port = free_port()
    bare = workdir / "bare_server.py"
    bare.write_text(BARE_SERVER, "utf-8")
    with server([sys.executable, str(bare), HOST, str(port)], workdir, workdir / "bare.log") as p:
        wait_http(f"http://{HOST}:{port}/canary", p)
        url = f"http://{HOST}:{port}/canary"
        if args.warmup:
            run_wrk(url, workdir, args, args.warmup)
        result = run_wrk(url, workdir, args, args.duration)
        rss = peak_rss_kib(p.pid)
    return Row("bare aiohttp handler (200 only)", result, rss)


def table(rows: list[Row]) -> str:
    out = [
        "| server | req/s | p50 ms | p99 ms | max ms | non-2xx | socket errors | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w = row.wrk
        out.append(
            f"| {row.name} | {w.rps:,.0f} | {w.p50_us / 1000:.2f} | {w.p99_us / 1000:.2f} "
            f"| {w.max_us / 1000:.1f} | {w.status} | {w.socket_errors} "
            f"| {row.peak_rss_kib / 1024:.1f} |"
        )
    return "\n".join(out)


def wrk_parser(description: str) -> argparse.ArgumentParser:
    """The options of a wrk run (`run_wrk` reads them), with this benchmark's defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=float, default=20, help="seconds per server (20)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds before each (3; 0 off)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> int:
    parser = wrk_parser(__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="daemon then bare, this many times; the verdict uses the median ratio (1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="canary-bench-"))
    rows: list[Row] = []
    ratios: list[float] = []
    p99s_ms: list[float] = []
    checks: list[str] = []
    try:
        # Interleaved rounds, because a shared host's speed drifts within minutes: a ratio from
        # servers measured side by side is steadier than either figure alone.
        for number in range(1, args.rounds + 1):
            round_dir = workdir / f"round-{number}"
            round_dir.mkdir()
            daemon, check = bench_daemon(round_dir, args)
            bare = bench_bare(round_dir, args)
            if args.rounds > 1:
                daemon = dataclasses.replace(daemon, name=f"{number}: {daemon.name}")
                bare = dataclasses.replace(bare, name=f"{number}: {bare.name}")
            rows += [daemon, bare]
            ratios.append(daemon.wrk.rps / bare.wrk.rps)
            p99s_ms.append(daemon.wrk.p99_us / 1000)
            checks.append(check)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency "
        f"(after a {args.warmup:g} s warm-up), POST of the FTP incident with a unique "
        f"IncidentHash per request; {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}\n"
    )
    print(table(rows))
    print()
    ratio, p99_ms = statistics.median(ratios), statistics.median(p99s_ms)
    each = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if args.rounds > 1 else ""
    verdict = "met" if ratio >= 0.5 else "MISSED"
    print(f"ratio daemon / bare: {ratio:.2f}{each} (target >= 0.5: {verdict})")
    print(f"daemon p99: {p99_ms:.2f} ms (target <= 10 ms: {'met' if p99_ms <= 10 else 'MISSED'})")
    print("\n".join(checks))
    if args.keep:
        print(f"work directory kept: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
