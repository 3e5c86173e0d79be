"""`store stats` read beside a wall clock that was stepped: what its age says, and what not.
`store check` of a sound store, of damaged ones, and beside a writer."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import _common as common
from forwarder.cli import main
from forwarder.cli import store as store_command
from forwarder.store import database as database_module
from forwarder.store.database import DB_NAME, MAX_FINDINGS, Database, NewEvent
from tests.cli.test_commands import file_config, run_cli
from tests.store.helpers import empty_the_index, write_foreign_store
from tests.store.test_runtime_failures import damage_the_tail


def queue_stamped(tmp_path: Path, *received_at: float, body: bytes = b"{}") -> None:
    """Events with these receipt stamps, queued for the output `local`."""
    database = Database(tmp_path / "state")
    events = [
        NewEvent(f"id{n}", f"fp{n}", "incident", at, body) for n, at in enumerate(received_at)
    ]
    database.append(events, ["local"], 0)
    database.close()


def stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code, out, err = run_cli(capsys, "store", "stats", "-c", str(file_config(tmp_path)))
    assert (code, err) == (0, "")
    figures = json.loads(out)
    assert isinstance(figures, dict)
    return figures


def test_store_stats_gives_the_wall_clock_age_and_the_stamp_it_is_read_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamp = time.time() - 3600
    queue_stamped(tmp_path, stamp + 60, stamp)
    figures = stats(tmp_path, capsys)
    assert figures["oldest_received_at"] == datetime.fromtimestamp(stamp, UTC).isoformat(
        timespec="seconds"
    )
    age = figures["oldest_age_secs"]
    assert isinstance(age, float) and 3600 <= age < 3660
    assert figures["oldest_age_clock"] == "wall"


def test_store_commands_open_with_the_quick_check_and_the_daemon_with_the_full_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full check matches every index with its table: on a large store with several outputs
    it takes about four times as long, and a command holds the store's lock all the while."""
    queue_stamped(tmp_path, 1.0, 2.0, 3.0)
    empty_the_index(tmp_path / "state" / DB_NAME, "deliveries_seq")
    assert stats(tmp_path, capsys)["events"] == 3  # found by store check, not by its open
    with pytest.raises(database_module.StoreDamaged) as damaged:
        Database(tmp_path / "state")
    assert damaged.value.findings[0] == "row 1 missing from index deliveries_seq"
    assert str(damaged.value).endswith("row 1 missing from index deliveries_seq (and 3 more)")


def test_a_store_with_more_findings_than_it_lists_says_so() -> None:
    listed = [f"row {n} missing from index deliveries_seq" for n in range(MAX_FINDINGS)]
    damaged = database_module.StoreDamaged(Path("outbox.sqlite3"), listed)
    assert str(damaged).endswith(f"(and at least {MAX_FINDINGS - 1} more)")


def test_store_stats_never_prints_a_negative_age(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wall clock was set back a day after the events came in: their stamps are ahead of
    it. The age was printed as about -86400."""
    queue_stamped(tmp_path, time.time() + 86_400)
    assert stats(tmp_path, capsys)["oldest_age_secs"] == 0.0


def test_store_stats_on_an_empty_store_has_no_age(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Database(tmp_path / "state").close()
    figures = stats(tmp_path, capsys)
    assert (figures["events"], figures["oldest_received_at"], figures["oldest_age_secs"]) == (
        0,
        None,
        None,
    )


def store_help(capsys: pytest.CaptureFixture[str]) -> str:
    """What `store --help` says, on one line."""
    with pytest.raises(SystemExit):
        main(["store", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_store_help_says_which_clock_the_age_is_on(capsys: pytest.CaptureFixture[str]) -> None:
    said = store_help(capsys)
    assert "The age is on the wall clock" in said
    assert "0 when the stamp is ahead of the clock" in said
    assert "canary_forwarder_store_oldest_event_age_seconds counts on the monotonic clock" in said


# `store check`


def test_store_help_tells_what_check_does(capsys: pytest.CaptureFixture[str]) -> None:
    said = store_help(capsys)
    assert "{stats,check}" in said
    assert "check runs SQLite's full integrity check" in said
    assert "never salvages or moves the file" in said


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    """The exit status of `store check` and the report it prints (nothing on stderr)."""
    code, out, err = run_cli(capsys, "store", "check", "-c", str(file_config(tmp_path)))
    assert err == ""
    report = json.loads(out)
    assert isinstance(report, dict)
    assert report["path"] == str(tmp_path / "state" / DB_NAME)
    return code, report


def store_files(tmp_path: Path) -> dict[str, bytes]:
    """Every file in the state directory, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted((tmp_path / "state").iterdir())}


def quick_check(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [row for (row,) in db.execute("PRAGMA quick_check")]


def test_store_check_passes_a_sound_store_and_counts_its_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_stamped(tmp_path, 1.0, 2.0, 3.0)
    assert check(tmp_path, capsys) == (
        0,
        {"path": str(tmp_path / "state" / DB_NAME), "ok": True, "problems": [], "events": 3},
    )


def test_store_check_reports_damage_the_open_finds_and_leaves_the_file_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage the quick check at open finds is the check's finding, not "cannot open"."""
    queue_stamped(tmp_path, *[1.0] * 40, body=b"x" * 3000)  # a page or so each
    damage_the_tail(tmp_path / "state" / DB_NAME, pages=10)
    before = store_files(tmp_path)
    code, report = check(tmp_path, capsys)
    assert (code, report["ok"], report["events"]) == (1, False, None)
    assert report["problems"] == ["database disk image is malformed"]
    assert store_files(tmp_path) == before  # neither salvaged nor moved aside


def test_store_check_finds_an_index_that_lacks_rows_the_quick_check_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_stamped(tmp_path, 1.0, 2.0, 3.0)
    empty_the_index(tmp_path / "state" / DB_NAME, "deliveries_seq")
    assert quick_check(tmp_path / "state" / DB_NAME) == ["ok"]
    before = store_files(tmp_path)
    code, report = check(tmp_path, capsys)
    assert (code, report["ok"], report["events"]) == (1, False, 3)
    assert report["problems"] == [
        "row 1 missing from index deliveries_seq",
        "row 2 missing from index deliveries_seq",
        "row 3 missing from index deliveries_seq",
        "wrong # of entries in index deliveries_seq",
    ]
    assert store_files(tmp_path) == before


def test_store_check_prints_a_bounded_number_of_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_command, "MAX_PROBLEMS", 2)
    queue_stamped(tmp_path, 1.0, 2.0, 3.0)
    empty_the_index(tmp_path / "state" / DB_NAME, "deliveries_seq")
    code, report = check(tmp_path, capsys)
    assert (code, report["problems"]) == (
        1,
        ["row 1 missing from index deliveries_seq", "row 2 missing from index deliveries_seq"],
    )


def test_store_check_of_a_missing_store_says_so_as_store_stats_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(file_config(tmp_path, store="mistyped/state"))
    stats_said = run_cli(capsys, "store", "stats", "-c", config)
    check_said = run_cli(capsys, "store", "check", "-c", config)
    assert check_said == stats_said
    code, out, err = check_said
    assert (code, out) == (1, "")
    assert err.startswith(f"no store at {tmp_path / 'mistyped' / 'state' / DB_NAME}: ")
    assert not (tmp_path / "mistyped").exists()


def test_store_check_of_another_programs_database_cannot_open_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tables this version does not know are not damage: the message every store command
    gives, with no report, after one try (a second would double the waits for a lock)."""
    write_foreign_store(tmp_path / "state" / DB_NAME, "CREATE TABLE events (id INTEGER)")
    opens: list[Path] = []

    def counted(directory: Path, **options: Any) -> Database:
        opens.append(directory)
        return Database(directory, **options)

    for opener in (common, store_command):
        monkeypatch.setattr(opener, "Database", counted)
    code, out, err = run_cli(capsys, "store", "check", "-c", str(file_config(tmp_path)))
    assert len(opens) == 1
    assert (code, out) == (1, "")
    assert err.startswith(f"cannot open the store in {tmp_path / 'state'}: ")
    assert "not an outbox this version can use" in err


def test_store_check_waits_for_the_lock_store_commands_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the daemon puts a copy of a deleted store in place, the check keeps off it."""
    monkeypatch.setattr(database_module, "COMMAND_LOCK_WAIT_SECS", 0.0)
    daemon = Database(tmp_path / "state")
    lock = daemon.lock_out_commands()
    try:
        code, out, err = run_cli(capsys, "store", "check", "-c", str(file_config(tmp_path)))
    finally:
        lock.release()
        daemon.close()
    assert (code, out) == (1, "")
    assert "putting a new store file" in err and "a copy of the store" in err


def test_store_check_beside_a_writer_checks_what_it_committed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """WAL: the check reads a snapshot while another connection holds the write lock, with
    no "database is locked"; the events that connection has not committed are not counted."""
    writer = Database(tmp_path / "state")
    try:
        writer.append([NewEvent("id1", "fp1", "incident", 1.0, b"{}")], ["local"], 0)
        with writer._transaction() as writing:
            writing.execute(
                "INSERT INTO events (event_id, fingerprint, kind, received_at, size, body)"
                " VALUES ('id2', 'fp2', 'incident', 2.0, 2, '{}')"
            )
            assert check(tmp_path, capsys) == (
                0,
                {
                    "path": str(tmp_path / "state" / DB_NAME),
                    "ok": True,
                    "problems": [],
                    "events": 1,
                },
            )
        assert writer.append([NewEvent("id3", "fp3", "incident", 3.0, b"{}")], ["local"], 0)
    finally:
        writer.close()
