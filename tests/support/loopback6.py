"""Whether this machine can run the IPv6 tests: they listen on ::1 and nowhere else."""

from __future__ import annotations

import socket

import pytest

__all__ = ["requires_loopback6"]


def _missing() -> str | None:
    """Why nothing can listen on ::1 here, or None when it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"::1 is not configured on the loopback interface ({exc})"
    return None


_WHY = _missing()

requires_loopback6 = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
