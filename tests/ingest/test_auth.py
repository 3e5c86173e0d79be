from __future__ import annotations

import pytest

from forwarder.ingest.auth import is_allowed
from forwarder.settings import ListenConfig


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        # How a dual-stack socket shows an IPv4 client.
        ("::ffff:10.1.2.3", True),
        ("::ffff:192.0.2.1", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("not an address", False),
    ],
)
def test_allow_list_matches_ipv4_clients_seen_through_ipv6(address: str, allowed: bool) -> None:
    listen = ListenConfig(allow=("10.0.0.0/8", "2001:db8::/32"))
    assert is_allowed(address, listen) is allowed
