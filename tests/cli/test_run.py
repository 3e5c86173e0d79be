from __future__ import annotations

import gc

from forwarder.cli import run


def test_settle_collector_freezes_start_up_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        run.settle_collector()
        assert gc.get_freeze_count() > 0, "start-up's objects must leave the collector's sight"
        assert gc.get_threshold() == run.GC_THRESHOLDS
        assert run.GC_THRESHOLDS[0] > 700, "CPython's default young threshold is 700"
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
