"""`python -m tests.daemon.stalls run ...`: the daemon, held at one step of its start-up.

FORWARDER_TEST_STALL names the step and FORWARDER_TEST_STALL_DIR a directory: on reaching the step
the daemon creates `<step>.reached` there, and it goes on once the test creates `<step>.go`. So a
test can send a signal while start-up is at that step, waiting on files, never on the clock.

- `store`: opening the store, on the store thread, as a slow disk or the repair of a corrupt store
  holds it. A thread cannot be interrupted, so a stop has to wait for it.
- `config`: reading the configuration, before the event loop handles signals.
- `outputs`: starting the `memory` outputs, awaiting as an output connecting to its receiver
  would. This one can be cancelled.

Neither waits for ever (HOLD_SECS), so a test that never lets go still ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from forwarder.cli import main, run
from forwarder.outputs.base import Output, OutputConfig
from forwarder.outputs.memory import MemoryOutput
from forwarder.store import database

HOLD_SECS = 60.0
POLL_SECS = 0.01


def _directory() -> Path:
    return Path(os.environ["FORWARDER_TEST_STALL_DIR"])


def _reach(step: str) -> None:
    (_directory() / f"{step}.reached").touch()


def _released(step: str) -> bool:
    return (_directory() / f"{step}.go").exists()


def _hold_the_store_open() -> None:
    original = database.Database.__init__
    held = False

    def opening(self: database.Database, *args: Any, **kwargs: Any) -> None:
        nonlocal held
        if not held:  # the daemon's first open only
            held = True
            _reach("store")
            deadline = time.monotonic() + HOLD_SECS
            while not _released("store") and time.monotonic() < deadline:
                time.sleep(POLL_SECS)
        original(self, *args, **kwargs)

    database.Database.__init__ = opening  # type: ignore[method-assign]


def _hold_the_outputs_start() -> None:
    async def starting(self: Output[OutputConfig]) -> None:
        _reach("outputs")
        deadline = time.monotonic() + HOLD_SECS
        while not _released("outputs") and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECS)

    MemoryOutput.start = starting  # type: ignore[method-assign]


def _hold_the_config_load() -> None:
    original = run.settings_from_args

    def reading(args: Any) -> Any:
        _reach("config")
        deadline = time.monotonic() + HOLD_SECS
        while not _released("config") and time.monotonic() < deadline:
            time.sleep(POLL_SECS)
        return original(args)

    run.settings_from_args = reading


STALLS = {
    "config": _hold_the_config_load,
    "store": _hold_the_store_open,
    "outputs": _hold_the_outputs_start,
}

if __name__ == "__main__":
    STALLS[os.environ["FORWARDER_TEST_STALL"]]()
    raise SystemExit(main())
