"""The store's disk fails: full, read-only (unusable), or corrupted while the daemon was stopped.

In every case: a clear ERROR log line, /readyz fails, new posts get 503 (never a 200 that was
not committed), the process stays up (no crash loop), it recovers by itself once the cause is
fixed, and no event already answered 200 is lost; for corruption, what SQLite can still read is
salvaged, and the test states exactly what could not be.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.harness import PostResults, ids_in
from tests.reliability._support import (
    FaultyDaemon,
    HecProcess,
    fast_retry,
    hec_output,
    incident_body,
    post_one,
    session,
    wait_until,
    wait_until_async,
)
from tests.reliability.conftest import DaemonFactory

pytestmark = pytest.mark.reliability

UNLIMITED_PAGES = 1_073_741_823
STORE_ERROR = "Store cannot commit; new posts get 503 until it can."
# The daemon re-probes an unusable store every 5 s; allow two rounds and a margin.
RECOVERY_SECS = 15.0


def file_out(path: Path, **options: Any) -> dict[str, Any]:
    return {"name": "out", "type": "file", "path": str(path), **fast_retry(), **options}


async def status_of(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as answer:
        return answer.status


async def post_status(client: aiohttp.ClientSession, daemon: FaultyDaemon, pad: int = 0) -> int:
    _, body = incident_body(pad=pad)
    async with client.post(
        daemon.webhook_url, data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        if answer.status == 503:
            assert answer.headers.get("Retry-After"), "a 503 must say when to retry"
            assert (await answer.json())["error"] in ("store_unavailable", "store_full")
        return answer.status


async def delivered(hec: HecProcess, ids: set[str]) -> bool:
    return ids <= set(await hec.ids())


async def test_disk_full_gives_503_and_recovers_without_losing_anything(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    limit = tmp_path / "pages"
    limit.write_text("0")
    # The receiver is down until the end, so nothing leaves the store and frees pages in it.
    hec = HecProcess()
    daemon = daemons(
        {"outputs": [hec_output("hec", hec.url)]}, patches={"disk_limit_file": str(limit)}
    )
    await daemon.start()
    results = PostResults()
    async with session() as client:
        for _ in range(20):
            await post_one(client, daemon.webhook_url, results)
        assert len(results.stored) == 20, results.other
        # The disk is full from now on: the store may not grow by a single page.
        limit.write_text("1")
        # Large posts first, then typical ones, until not even a typical post fits.
        filling = PostResults()
        for pad in (200_000, 2_000):
            for _ in range(300):  # bounded: the free pages are used up within a few dozen
                event_id = await post_one(client, daemon.webhook_url, filling, pad=pad)
                if event_id not in filling.stored:
                    break
            refused = filling.other.pop(event_id, "")
            assert refused.startswith("503 ") and "store_unavailable" in refused, refused
        assert not filling.other, filling.other
        results.stored |= filling.stored
        line = await daemon.wait_for_log(STORE_ERROR, level="error")
        assert "full" in line["error"]
        # Stays refused while full: no flapping between ready and not ready.
        for _ in range(3):
            assert await status_of(client, f"{daemon.base_url}/readyz") == 503
            assert await post_status(client, daemon) == 503
        assert daemon.alive()
        assert await status_of(client, f"{daemon.base_url}/healthz") == 200

        # Free space again: the daemon takes posts without being restarted.
        limit.write_text(str(UNLIMITED_PAGES))

        async def ready() -> bool:
            return await status_of(client, f"{daemon.base_url}/readyz") == 200

        await wait_until_async(ready, timeout=RECOVERY_SECS, what="/readyz to pass again")
        for _ in range(5):
            await post_one(client, daemon.webhook_url, results)
        assert not results.other, results.other
    hec.start()
    try:
        await wait_until_async(
            lambda: delivered(hec, results.stored), timeout=20, what="every event answered 200"
        )
    finally:
        hec.kill()
    assert daemon.alive()
    assert await daemon.stop() == 0
    assert len(daemon.find_logs(STORE_ERROR, level="error")) == 1, "the ERROR is logged once"


async def test_unusable_state_directory_gives_503_then_recovers_unattended(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """The state directory cannot be created (a regular file is in the way, which stops root
    too, unlike chmod): the daemon stays up and answers 503, and once the path is fixed it opens
    the store by itself within seconds; nobody has to call /readyz or restart it."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    output = tmp_path / "out.jsonl"
    daemon = daemons(
        {"store": {"path": str(blocker / "state")}, "outputs": [file_out(output)]},
    )
    await daemon.start()
    line = await daemon.wait_for_log(STORE_ERROR, level="error")
    assert "Not a directory" in line["error"] and str(blocker) in line["error"], line
    async with session() as client:
        assert await post_status(client, daemon) == 503
        async with client.get(f"{daemon.base_url}/readyz") as answer:
            assert answer.status == 503
            problems = (await answer.json())["problems"]
            assert "Not a directory" in problems["store"]
        assert await status_of(client, f"{daemon.base_url}/healthz") == 200
        assert daemon.alive()

        blocker.unlink()  # the operator fixes the path; nobody touches the daemon
        results = PostResults()

        async def accepted() -> bool:
            event_id = await post_one(client, daemon.webhook_url, results)
            return event_id in results.stored

        # Only posts from here on: they alone must not reopen the store; the daemon's own
        # periodic probe does.
        await wait_until_async(accepted, timeout=RECOVERY_SECS, what="a post to be stored")
        await wait_until(
            lambda: results.stored <= set(ids_in(output)) or None, timeout=10, what="delivery"
        )
    assert all(answer.startswith("503 ") for answer in results.other.values()), results.other
    assert (blocker / "state" / "outbox.sqlite3").is_file()
    assert len(daemon.find_logs(STORE_ERROR, level="error")) == 1
    assert daemon.find_logs("Store can commit again.")
    assert await daemon.stop() == 0


PAGE = 4096


def corrupt_middle_page(database: Path) -> int:
    """Overwrite the page in the middle of the file with garbage; returns its number."""
    pages = database.stat().st_size // PAGE
    page = pages // 2
    with database.open("r+b") as handle:
        handle.seek(page * PAGE)
        handle.write(bytes((i * 7 + 13) % 256 for i in range(PAGE)))
    return page


async def test_store_corrupted_while_stopped_is_salvaged_and_the_rest_flows(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    """A page in the middle of the outbox is garbage when the daemon starts. It moves the file
    aside (kept for forensics), logs an ERROR with what it salvaged, starts afresh with every
    readable event still queued, and takes new posts at once. What cannot be salvaged: the
    events whose rows were on the damaged page (a few at most, counted and printed)."""
    hec = HecProcess()  # down until the end: events wait in the store
    daemon = daemons({"outputs": [hec_output("hec", hec.url)]})
    await daemon.start()
    before = PostResults()
    async with session() as client:
        for _ in range(300):
            await post_one(client, daemon.webhook_url, before)
    assert len(before.stored) == 300, before.other
    assert await daemon.stop() == 0  # a clean stop folds the WAL into the one file
    database = daemon.workdir / "state" / "outbox.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as check:
        assert check.execute("SELECT COUNT(*) FROM events").fetchone() == (300,)
    page = corrupt_middle_page(database)

    await daemon.start()
    [line] = daemon.find_logs(
        "Store was corrupt; moved it aside, started a fresh one and copied what was readable. "
        "Keep the moved file until the events are accounted for.",
        level="error",
    )
    moved = Path(line["moved_to"])
    assert moved.is_file() and moved.parent == database.parent
    salvaged = int(line["salvaged_events"])
    after = PostResults()
    async with session() as client:
        assert await status_of(client, f"{daemon.base_url}/readyz") in (200, 503)  # HEC is down
        for _ in range(20):
            await post_one(client, daemon.webhook_url, after)
    assert len(after.stored) == 20, after.other
    hec.start()
    try:
        await wait_until_async(
            lambda: delivered(hec, after.stored), timeout=20, what="the new events"
        )
        await wait_until_async(
            lambda: _store_empty(daemon), timeout=20, what="the salvaged events to drain"
        )
        arrived = await hec.ids()
    finally:
        hec.kill()
    lost = before.stored - set(arrived)
    print(f"\ncorrupted page {page}: salvaged {salvaged} of 300, lost {len(lost)}")
    assert salvaged + len(lost) == 300
    # One damaged 4 KiB page holds the rows of a few events; nothing else may go.
    assert len(lost) <= PAGE // len(incident_body()[1]), f"{len(lost)} lost to one damaged page"
    assert set(arrived) <= before.stored | after.stored
    assert daemon.alive()
    assert await daemon.stop() == 0


async def _store_empty(daemon: FaultyDaemon) -> bool:
    async with session() as client:
        return await daemon.metric(client, "canary_forwarder_store_events") == 0
