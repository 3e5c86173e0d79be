"""`store stats` read beside a wall clock that was stepped: what its age says, and what not."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from forwarder.cli import main
from forwarder.store.database import Database, NewEvent
from tests.cli.test_commands import file_config, run_cli


def queue_stamped(tmp_path: Path, *received_at: float) -> None:
    """Events with these receipt stamps, queued for the output `local`."""
    database = Database(tmp_path / "state")
    events = [
        NewEvent(f"id{n}", f"fp{n}", "incident", at, b"{}") for n, at in enumerate(received_at)
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


def test_store_help_says_which_clock_the_age_is_on(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["store", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "The age is on the wall clock" in said
    assert "0 when the stamp is ahead of the clock" in said
    assert "canary_forwarder_store_oldest_event_age_seconds counts on the monotonic clock" in said
