"""What delivering one queued event costs, step by step, in CPU microseconds (issue 4's drain).

    python bench/delivery_cost.py [--events 20000] [--rounds 3] [--cpu 0]

A backlog drain, without the network: the events of a 100,000-event outage are in the store and
have to be parsed again (the parsed-event cache only holds recent ones). Fills a store (SQLite,
`sync: normal`) with copies of the seed's FTP incident, each with its own IncidentHash, then
drains it in batches of 500 as a `splunk_hec` output with the `json` format would: fetch, parse,
map, encode the HEC envelopes, gzip (level 1), ack. All in one thread, pinned to one CPU, with
the daemon's garbage-collector settings; times are CPU time of this process, so other load on
the machine counts less than in bench/end_to_end.py. The best of `--rounds` counts.

The end-to-end drain in bench/end_to_end.py runs all of this, plus HTTP, on the event loop and
the store thread of one process, which the GIL serialises: so what this prints per event is
close to what bounds the drain rate there (1,000,000 / microseconds per event).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forwarder.cli.run import settle_collector  # noqa: E402
from forwarder.events import parse_event  # noqa: E402
from forwarder.mappers.json import JsonConfig, JsonMapper  # noqa: E402
from forwarder.outputs._http import EncodedBatch, encode_batch  # noqa: E402
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput  # noqa: E402
from forwarder.store.database import Database, NewEvent  # noqa: E402

SAMPLE = ROOT / "tests" / "samples" / "incident_ftp_login.json"
SAMPLE_HASH = b"bc84b27ca5327d9d7f915fadae7ef9a4"
BATCH = 500
STEPS = ("fetch", "parse", "map", "encode", "gzip", "ack")


def fill(db: Database, count: int) -> None:
    raw = SAMPLE.read_bytes()
    now = time.time()
    queued = []
    for n in range(count):
        body = raw.replace(SAMPLE_HASH, b"%032x" % n)
        event = parse_event(body, received_at=datetime.now(UTC))
        queued.append(NewEvent(event.id, event.fingerprint, event.kind.value, now, body))
    for start in range(0, count, BATCH):
        db.append(queued[start : start + BATCH], ["hec"], 0)


def drain(db: Database) -> tuple[int, dict[str, float]]:
    """Deliver everything queued; the event count and the CPU seconds of each step."""
    mapper = JsonMapper(JsonConfig(type="json"))
    # Nothing is sent: the output only encodes.
    config = {"name": "hec", "type": "splunk_hec", "url": "http://127.0.0.1:9", "format": "json"}
    output = SplunkHecOutput(SplunkHecConfig.model_validate({**config, "token": "unused"}))
    spent = dict.fromkeys(STEPS, 0.0)
    delivered = 0

    def timed(step: str, started: float) -> float:
        now = time.process_time()
        spent[step] += now - started
        return now

    while True:
        mark = time.process_time()
        batch = db.fetch("hec", BATCH, 4 << 20)
        mark = timed("fetch", mark)
        if not batch:
            return delivered, spent
        events = [
            parse_event(
                stored.body,
                received_at=datetime.fromtimestamp(stored.received_at, UTC),
                fingerprint=stored.fingerprint,
            )
            for stored in batch
        ]
        mark = timed("parse", mark)
        records = [mapper.map(event) for event in events]
        mark = timed("map", mark)
        encoded = encode_batch(records, output._envelope_line, 4 << 20)
        if not isinstance(encoded, EncodedBatch):
            raise SystemExit(f"the batch did not encode: {encoded}")
        mark = timed("encode", mark)
        for request in encoded.requests:
            gzip.compress(request.body, compresslevel=1, mtime=0)
        mark = timed("gzip", mark)
        db.ack("hec", [stored.seq for stored in batch])
        timed("ack", mark)
        delivered += len(batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (0)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="canary-delivery-cost-") as tmp:
            db = Database(Path(tmp), sync="normal")
            try:
                fill(db, args.events)
                settle_collector()
                count, spent = drain(db)
            finally:
                db.close()
        if count != args.events:
            raise SystemExit(f"drained {count} events of {args.events}")
        per_event = {step: 1e6 * seconds / count for step, seconds in spent.items()}
        if not best or sum(per_event.values()) < sum(best.values()):
            best = per_event
    total = sum(best.values())
    print(f"CPU microseconds per event, best of {args.rounds} drains of {args.events:,} events")
    print()
    print("| step | µs per event |")
    print("|---|---:|")
    for step in STEPS:
        print(f"| {step} | {best[step]:.1f} |")
    print(f"| **total** | **{total:.1f}** (at most {1e6 / total:,.0f} events/s on one core) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
