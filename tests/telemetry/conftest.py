"""The daemon tests' `daemons` fixture, for the tests here that run the daemon."""

from __future__ import annotations

from tests.daemon.conftest import daemons

__all__ = ["daemons"]
