"""Fixtures shared across the suite: sample payloads and a pipeline with a memory output."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from forwarder.pipeline import Pipeline
from forwarder.settings import Settings, parse_settings

# Third-party plug-ins installed in a developer's environment must not change test results.
os.environ.setdefault("FORWARDER_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings with the store in tmp_path and one memory output, overridable by keyword."""

    def build(**overrides: Any) -> Settings:
        data: dict[str, Any] = {
            "store": {"path": str(tmp_path / "state")},
            "outputs": [
                {"name": "mem", "type": "memory", "batch": {"timeout_secs": 0}},
            ],
        }
        data.update(overrides)
        return parse_settings(data, environ={})

    return build


@pytest.fixture
async def pipeline(make_settings: Callable[..., Settings]) -> AsyncIterator[Pipeline]:
    running = await Pipeline.start(make_settings())
    yield running
    await running.stop(graceful_secs=5)
