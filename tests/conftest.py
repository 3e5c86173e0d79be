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


REAL_PEER_VARIABLES = ("SPLUNK_HEC_URL", "ELASTICSEARCH_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the opt-in real-peer tests unless a URL for a real peer is given.

    They are deselected rather than skipped, so a CI run that must skip nothing stays clean.
    """
    if any(os.environ.get(name) for name in REAL_PEER_VARIABLES):
        return
    kept = [item for item in items if item.get_closest_marker("realpeer") is None]
    deselected = [item for item in items if item.get_closest_marker("realpeer") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With FORWARDER_REQUIRE_RECEIVERS=1 (CI), a skipped test is a failure: CI has them all."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("FORWARDER_REQUIRE_RECEIVERS") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every receiver must be present: {report.longrepr}"
