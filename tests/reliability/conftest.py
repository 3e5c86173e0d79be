"""Fixtures of the reliability suite: daemons that never outlive their test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import daemon_factory
from tests.reliability._support import FaultyDaemon

DaemonFactory = Callable[..., FaultyDaemon]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    """`daemons(config, patches=..., **options)`: a FaultyDaemon in tmp_path (not started)."""
    with daemon_factory(FaultyDaemon, tmp_path) as make:
        yield make
