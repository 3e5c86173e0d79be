"""What a leaner ingest could reach: the issue 2 targets against a minimal durable handler.

    python bench/ingest_ceiling.py [--duration 20] [--connections 50] [--workers 1,2]

`bench/ingest.py` measures the daemon. This script measures a design the daemon does not have,
to tell a target out of reach on this machine from one out of reach for the current design.
Under the same wrk load as `bench/ingest.py` (the seed's FTP incident, a unique IncidentHash per
post) it runs, one after the other:

- bare: the same bare aiohttp handler as `bench/ingest.py`;
- lean xN: N processes sharing the port (SO_REUSEPORT). Each runs one aiohttp handler that
  reads the body, runs the daemon's own `parse_event`, commits the raw body to its own SQLite
  file (WAL, `synchronous=FULL`, group commit on one store thread, as the daemon's store does)
  and logs the daemon's "Event accepted." line, then answers 200. No delivery, no metrics, no
  dedupe across processes, no auth or allow-list: only what every durable 200 needs.

After each lean run the script counts the rows in every process's file: there must be at least
as many as wrk counted 2xx answers. Prints a Markdown table and each lean row's ratio to bare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402 - after the path set-up
    HOST,
    Row,
    bench_bare,
    free_port,
    peak_rss_kib,
    run_wrk,
    server,
    table,
    wait_http,
    wrk_parser,
)

LEAN_SERVER = """
import asyncio, socket, sqlite3, sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web

sys.path.insert(0, sys.argv[4])
from forwarder.events import parse_event
from forwarder.telemetry.logging import configure_logging

HOST, PORT, DB = sys.argv[1], int(sys.argv[2]), sys.argv[3]
configure_logging("info", json=True)
log = structlog.get_logger("forwarder.ingest")
db = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, id TEXT, body BLOB)")
store = ThreadPoolExecutor(1)
pending = []
wakeup = asyncio.Event()


def commit(group):
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (id, body) VALUES (?, ?)", [(i, b) for i, b, _ in group])
    db.execute("COMMIT")


async def committer():
    loop = asyncio.get_running_loop()
    while True:
        await wakeup.wait()
        wakeup.clear()
        group = pending[:]
        del pending[:]
        await loop.run_in_executor(store, commit, group)
        for _, _, done in group:
            done.set_result(None)


async def webhook(request):
    body = await request.read()
    event = parse_event(body, received_at=datetime.now(UTC))
    done = asyncio.get_running_loop().create_future()
    pending.append((event.id, body, done))
    wakeup.set()
    await done
    log.info("Event accepted.", event_id=event.id, kind=event.kind.value, client=request.remote)
    return web.Response(
        body=orjson.dumps({"status": "stored", "id": event.id}), content_type="application/json"
    )


async def main():
    asyncio.create_task(committer())
    app = web.Application()
    app.router.add_post("/canary", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, PORT))
    sock.listen(1024)
    await web.SockSite(runner, sock).start()
    await asyncio.Event().wait()


asyncio.run(main())
"""


def bench_lean(workdir: Path, args: argparse.Namespace, workers: int) -> tuple[Row, str]:
    port = free_port()
    script = workdir / "lean_server.py"
    script.write_text(LEAN_SERVER, "utf-8")
    url = f"http://{HOST}:{port}/canary"
    databases = [workdir / f"lean-{workers}-{n}.db" for n in range(workers)]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                server(
                    [sys.executable, str(script), HOST, str(port), str(db), str(ROOT)],
                    workdir,
                    db.with_suffix(".log"),
                )
            )
            for db in databases
        ]
        for proc in procs:
            # GET on a POST route answers 405: the process is listening.
            wait_http(url, proc)
        warm = run_wrk(url, workdir, args, args.warmup) if args.warmup else None
        result = run_wrk(url, workdir, args, args.duration)
        rss = sum(peak_rss_kib(proc.pid) for proc in procs)
    stored = 0
    for db in databases:
        with sqlite3.connect(db) as connection:
            stored += connection.execute("SELECT count(*) FROM events").fetchone()[0]
    answered = result.ok + (warm.ok if warm else 0)
    check = f"lean x{workers}: wrk counted {answered} 2xx answers; {stored} events committed"
    if stored < answered:
        raise SystemExit(f"{check}\nFAILED: fewer events committed than answered 200")
    name = f"lean x{workers} (parse, durable commit, log line)"
    return Row(name, result, rss), check


def main() -> int:
    parser = wrk_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", default="1,2", help="lean process counts to run (1,2)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    counts = [int(count) for count in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="canary-ceiling-"))
    try:
        bare = bench_bare(workdir, args)
        lean = [bench_lean(workdir, args, count) for count in counts]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [bare, *(row for row, _ in lean)]
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s; {os.cpu_count()} CPUs\n"
    )
    print(table(rows))
    print()
    for row, check in lean:
        ratio = row.wrk.rps / bare.wrk.rps
        p99_ms = row.wrk.p99_us / 1000
        print(f"{row.name}: ratio to bare {ratio:.2f}, p99 {p99_ms:.2f} ms. {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
