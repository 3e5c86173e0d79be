"""The `daemons` fixture: build `Daemon`s in tmp_path and make sure none outlives its test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import Daemon, DaemonFactory


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonFactory]:
    """`daemons(config, **options)` -> a Daemon whose files live in tmp_path (not started)."""
    made: list[Daemon] = []

    def make(config: Mapping[str, Any], **options: Any) -> Daemon:
        daemon = Daemon(tmp_path / f"daemon{len(made)}", config, **options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
