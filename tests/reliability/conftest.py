"""Fixtures of the reliability suite: daemons that never outlive their test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.reliability._support import FaultyDaemon

DaemonFactory = Callable[..., FaultyDaemon]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    """`daemons(config, patches=..., **options)`: a FaultyDaemon in tmp_path (not started)."""
    made: list[FaultyDaemon] = []

    def make(config: Mapping[str, Any], **options: Any) -> FaultyDaemon:
        daemon = FaultyDaemon(tmp_path / f"daemon{len(made)}", config, **options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
