"""Crash: SIGKILL under sustained load, again and again; nothing answered 200 is ever lost.

The receiver is the fake Splunk HEC in its own process, so it outlives every kill. Each event id
answered 200 "stored" must reach it; a kill between a send and its ack resends that batch (at
least once), so duplicates are allowed, but no more than one batch per kill.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import crash

pytestmark = pytest.mark.reliability

CYCLES = 3
BATCH = 100


async def test_sigkill_under_load_loses_nothing_answered_200(tmp_path: Path) -> None:
    figures = await crash(tmp_path, cycles=CYCLES, kill_after=(100, 250), batch=BATCH)
    print(f"\n{figures}")
    assert figures.other == 0, figures.other_examples
    assert figures.lost == 0, (
        f"{figures.lost} answered 200 but never delivered: {figures.lost_examples}"
    )
    assert figures.foreign == 0, "the receiver holds events nobody posted"
    # Only the batch in flight at each kill can be sent twice.
    assert figures.duplicates <= CYCLES * BATCH
    assert figures.stored >= CYCLES * 100
    assert figures.delivered_unique >= figures.stored
