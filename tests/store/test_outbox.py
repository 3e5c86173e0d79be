from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forwarder.events import CanaryEvent, parse_event
from forwarder.settings import StoreConfig
from forwarder.store.database import DB_NAME, Database, NewEvent
from forwarder.store.outbox import Outbox, StoreFull, StoreUnavailable


def event(n: int) -> CanaryEvent:
    body = b'{"Description": "FTP Login Attempt", "AlertType": "CanaryIncident", "N": %d}' % n
    return parse_event(body, received_at=datetime.now(UTC))


async def open_outbox(tmp_path: Path, **options: Any) -> Outbox:
    outbox = await Outbox.open(StoreConfig(path=tmp_path / "state", **options))
    outbox.set_outputs(["a"])
    return outbox


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    commits = 0
    original = Database.append

    def counting(self: Database, *args: Any) -> Any:
        nonlocal commits
        commits += 1
        return original(self, *args)

    Database.append = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(outbox.append(event(n)) for n in range(200)))
    finally:
        Database.append = original  # type: ignore[method-assign]
    assert all(results)
    assert commits < 20, commits
    assert (await outbox.stats()).queued == {"a": 200}
    await outbox.aclose()


async def test_append_reports_duplicates(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    assert await outbox.append(event(1)) is False
    assert outbox.events == 1
    await outbox.aclose()


async def test_full_store_refuses_new_events(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path, max_bytes=1024 * 1024)
    outbox.bytes = 1024 * 1024 - 10
    with pytest.raises(StoreFull):
        await outbox.append(event(1))
    assert (await outbox.stats()).events == 0
    await outbox.aclose()


async def test_failed_commit_is_unavailable_and_recovers(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    original = Database.append

    def failing(self: Database, *args: Any) -> Any:
        raise OSError(28, "No space left on device")

    Database.append = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreUnavailable, match="No space left"):
            await outbox.append(event(1))
        assert outbox.healthy is False
    finally:
        Database.append = original  # type: ignore[method-assign]
    assert await outbox.probe() is True
    assert await outbox.append(event(2)) is True
    assert outbox.healthy is True
    await outbox.aclose()


async def test_listeners_hear_about_new_events_only(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    woken: list[int] = []
    outbox.on_append(lambda: woken.append(1))
    await outbox.append(event(1))
    await outbox.append(event(1))
    assert woken == [1]
    await outbox.aclose()


async def test_totals_follow_acks_and_dead_letters(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    for n in range(3):
        await outbox.append(event(n))
    batch = await outbox.fetch("a", 10, 1 << 20)
    await outbox.ack("a", [batch[0].seq])
    await outbox.dead_letter("a", {batch[1].seq: "refused"})
    assert outbox.events == 1
    assert outbox.bytes == len(batch[2].body)
    await outbox.aclose()
    reopened = await open_outbox(tmp_path)
    assert (reopened.events, reopened.bytes) == (1, len(batch[2].body))
    await reopened.aclose()


async def test_corrupt_store_is_moved_aside_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"garbage" * 1000)
    outbox = await open_outbox(tmp_path)
    assert await outbox.append(event(1)) is True
    assert [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    await outbox.aclose()


async def test_close_commits_pending_appends(tmp_path: Path) -> None:
    outbox = await open_outbox(tmp_path)
    pending = [asyncio.ensure_future(outbox.append(event(n))) for n in range(5)]
    await asyncio.sleep(0)  # let the appends enqueue; the committer has not run yet
    await outbox.aclose()
    assert all(task.result() for task in pending)
    database = Database(tmp_path / "state")
    assert database.stats().events == 5
    database.close()


async def test_unopenable_store_degrades_instead_of_crashing(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    outbox = await Outbox.open(StoreConfig(path=blocker / "inner"), ["a"])
    assert outbox.available is False and outbox.healthy is False
    assert "Not a directory" in (outbox.last_error or "")
    with pytest.raises(StoreUnavailable):
        await outbox.append(event(1))
    assert await outbox.probe() is False
    blocker.unlink()
    assert await outbox.probe() is True
    assert await outbox.append(event(1)) is True
    await outbox.aclose()


async def test_corrupt_store_salvages_readable_events(tmp_path: Path) -> None:
    state = tmp_path / "state"
    database = Database(state)
    bodies = [b'{"n": %d, "pad": "%s"}' % (n, b"x" * 3000) for n in range(40)]
    database.append(
        [NewEvent(f"id{n}", f"fp{n}", "incident", 1.0, body) for n, body in enumerate(bodies)],
        ["a"],
        0,
    )
    database.close()  # checkpoints the WAL into the main file
    raw = bytearray((state / DB_NAME).read_bytes())
    middle = len(raw) // 4096 // 2 * 4096
    raw[middle : middle + 4096] = b"\xde\xad\xbe\xef" * 1024
    (state / DB_NAME).write_bytes(bytes(raw))

    outbox = await Outbox.open(StoreConfig(path=state), ["a"])
    assert outbox.healthy
    salvaged = await outbox.fetch("a", 100, 1 << 30)
    assert 0 < len(salvaged) < 40
    assert all(item.body == bodies[int(item.event_id[2:])] for item in salvaged)
    assert any(".corrupt-" in p.name for p in state.iterdir())
    await outbox.aclose()
