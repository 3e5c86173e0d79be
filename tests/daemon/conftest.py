"""The `daemons` fixture: build `Daemon`s in tmp_path and make sure none outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import Daemon, DaemonFactory, daemon_factory


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    """`daemons(config, **options)` -> a Daemon whose files live in tmp_path (not started)."""
    with daemon_factory(Daemon, tmp_path) as make:
        yield make
