"""What the store's check at open costs: SQLite's quick check against its full integrity check.

    python bench/store_check.py [--events 100000] [--outputs 1 3] [--rounds 2]

The daemon runs the full check (`PRAGMA integrity_check`) at every open of its store, which
unlike the quick check also matches each index with its table; store commands run the quick one.
Fills a store (SQLite, `sync: normal`) with copies of the seed's FTP incident, each its own
event, queued for each number of outputs in turn, and prints the wall time of each check on it
(the best of `--rounds`, with the file in the page cache, as it is right after a restart).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forwarder.store.database import DB_NAME, Database, NewEvent  # noqa: E402

SAMPLE = ROOT / "tests" / "samples" / "incident_ftp_login.json"
GROUP = 1000


def fill(directory: Path, events: int, outputs: int) -> Path:
    body = SAMPLE.read_bytes()
    names = [f"output-{n}" for n in range(outputs)]
    store = Database(directory, sync="normal")
    try:
        for start in range(0, events, GROUP):
            group = [
                NewEvent(
                    event_id=f"event-{n}",
                    fingerprint=f"fingerprint-{n}",
                    kind="incident",
                    received_at=time.time(),
                    body=body,
                )
                for n in range(start, min(start + GROUP, events))
            ]
            store.append(group, names, dedupe_window=0)
    finally:
        store.close()
    return directory / DB_NAME


def best_time(path: Path, pragma: str, rounds: int) -> float:
    with sqlite3.connect(path) as db:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            [(answer,)] = db.execute(f"PRAGMA {pragma}").fetchall()
            times.append(time.perf_counter() - started)
            if answer != "ok":
                raise SystemExit(f"{pragma} found {answer!r}")
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--outputs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| events | outputs | file MB | quick_check s | integrity_check s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for outputs in args.outputs:
        with tempfile.TemporaryDirectory() as scratch:
            path = fill(Path(scratch) / "state", args.events, outputs)
            quick = best_time(path, "quick_check", args.rounds)
            full = best_time(path, "integrity_check", args.rounds)
            size = path.stat().st_size / 1e6
            print(
                f"| {args.events:,} | {outputs} | {size:.0f} | {quick:.2f} | {full:.2f} "
                f"| {full / quick:.1f} |"
            )


if __name__ == "__main__":
    main()
