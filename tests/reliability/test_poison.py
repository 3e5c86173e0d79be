"""Poison events: a receiver refuses one event of a batch for good; the rest keep flowing.

The fake HEC answers `400 {"code": 6, "invalid-event-number": N}` for an envelope it finds
invalid (here: one event of every batch, chosen by id). The daemon must dead-letter exactly that
event, resend the ones after it, keep delivering everything else, and `canary-forwarder
dead-letters list` must show the poison; once the receiver accepts it, `dead-letters replay`
delivers it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forwarder.events import parse_event
from tests.daemon.harness import PostResults
from tests.peers.fake_es import FakeEs
from tests.peers.fake_hec import FakeHec
from tests.reliability._support import (
    FaultyDaemon,
    fast_retry,
    hec_output,
    incident_body,
    post_one,
    session,
    wait_until,
)
from tests.reliability.conftest import DaemonFactory

pytestmark = pytest.mark.reliability

EVENTS = 40
EVERY = 8  # one poison per batch of this many


async def dead_letters(daemon: FaultyDaemon) -> list[dict[str, Any]]:
    done = await asyncio.to_thread(daemon.cli, "dead-letters", "list")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def dead_count(store: Path) -> int:
    """Dead letters in a live daemon's store, read-only (cheaper than the CLI, for polling)."""
    database = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        (count,) = database.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        return int(count)
    finally:
        database.close()


async def test_hec_poison_is_dead_lettered_the_rest_flows_and_replay_delivers_it(
    daemons: DaemonFactory,
) -> None:
    async with FakeHec() as hec:
        daemon = daemons(
            {
                "outputs": [
                    hec_output(
                        "hec",
                        hec.url,
                        # Let batches fill for a moment, so each holds several events.
                        batch={"timeout_secs": 0.2, "max_events": EVERY},
                    )
                ]
            }
        )
        await daemon.start()
        ids = [uuid.uuid4().hex for _ in range(EVENTS)]
        poison = set(ids[EVERY // 2 :: EVERY])
        good = set(ids) - poison
        hec.poison.update(poison)  # HEC refuses an envelope with one of these in its fields
        results = PostResults()
        async with session() as client:
            for event_id in ids:
                await post_one(client, daemon.webhook_url, results, event_id=event_id)
        assert results.stored == set(ids), results.other

        def delivered() -> Counter[str]:
            return Counter(hec.values("canary_event_id"))

        await wait_until(
            lambda: good <= set(delivered()) or None, timeout=20, what="every good event"
        )

        store = daemon.workdir / "state" / "outbox.sqlite3"
        await wait_until(
            lambda: dead_count(store) >= len(poison) or None,
            timeout=20,
            what="the poison in dead letters",
        )
        letters = await dead_letters(daemon)
        assert {letter["event_id"] for letter in letters} == poison
        for letter in letters:
            assert letter["output"] == "hec"
            assert "HEC code 6" in letter["reason"], letter
        # Everything else went through exactly once (the envelopes after a poison are sent
        # again, but HEC had not indexed them), and no poison slipped through.
        assert set(delivered()) == good
        assert all(count == 1 for count in delivered().values())

        # The receiver now accepts them: replay delivers them and empties the dead letters.
        hec.poison.clear()
        done = await asyncio.to_thread(daemon.cli, "dead-letters", "replay", "--all")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"replayed {len(poison)}"
        await wait_until(
            lambda: poison <= set(delivered()) or None, timeout=20, what="the replayed events"
        )
        assert await dead_letters(daemon) == []
        assert Counter(delivered()) == Counter(ids)
        assert daemon.alive()
        assert await daemon.stop() == 0


async def test_elasticsearch_poison_item_is_dead_lettered_and_replayed(
    daemons: DaemonFactory,
) -> None:
    """The same with Elasticsearch: one bulk item per batch answered 400
    (document_parsing_exception) while the other items of the request are created."""
    async with FakeEs() as es:
        daemon = daemons(
            {
                "outputs": [
                    {
                        "name": "es",
                        "type": "elasticsearch",
                        "url": es.url,
                        "format": "ecs",
                        **fast_retry(batch={"timeout_secs": 0.2, "max_events": EVERY}),
                    }
                ]
            }
        )
        await daemon.start()
        bodies = [incident_body()[1] for _ in range(EVENTS)]
        # Documents are created with _id = the event's fingerprint.
        fingerprints = [
            parse_event(body, received_at=datetime.now(UTC)).fingerprint for body in bodies
        ]
        poison = set(fingerprints[EVERY // 2 :: EVERY])
        good = set(fingerprints) - poison
        es.poison.update(poison)
        async with session() as client:
            for body in bodies:
                headers = {"Content-Type": "application/json"}
                async with client.post(daemon.webhook_url, data=body, headers=headers) as answer:
                    assert answer.status == 200, await answer.text()

        def delivered() -> set[str]:
            return set(es.all_ids())

        await wait_until(lambda: good <= delivered() or None, timeout=20, what="the good events")
        store = daemon.workdir / "state" / "outbox.sqlite3"
        await wait_until(
            lambda: dead_count(store) >= len(poison) or None,
            timeout=20,
            what="the poison in dead letters",
        )
        letters = await dead_letters(daemon)
        assert len(letters) == len(poison)
        for letter in letters:
            assert letter["output"] == "es"
            assert "document_parsing_exception" in letter["reason"], letter
        assert delivered() == good
        es.poison.clear()
        done = await asyncio.to_thread(daemon.cli, "dead-letters", "replay", "--all")
        assert done.stdout.strip() == f"replayed {len(poison)}", done.stderr
        await wait_until(
            lambda: delivered() == set(fingerprints) or None, timeout=20, what="the replayed"
        )
        assert await dead_letters(daemon) == []
        assert await daemon.stop() == 0
