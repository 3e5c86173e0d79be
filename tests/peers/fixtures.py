"""Pytest fixtures of the fake peers: `pytest_plugins = ["tests.peers.fixtures"]` in a test module.

`fake_hec` and `fake_es` run a peer in the test's event loop on 127.0.0.1 and stop it after.
A test module must not import this module itself (pytest could not rewrite its asserts); the
peers in their own process are in `tests.peers.process`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.peers.fake_es import FakeEs
from tests.peers.fake_hec import FakeHec

__all__ = ["fake_es", "fake_hec"]


@pytest.fixture
async def fake_hec() -> AsyncIterator[FakeHec]:
    async with FakeHec() as peer:
        yield peer


@pytest.fixture
async def fake_es() -> AsyncIterator[FakeEs]:
    async with FakeEs() as peer:
        yield peer
