"""`listen.host` as an operator writes it: IPv6 literals, zones, the loopback spellings that need no
authentication, and the mistakes that must be refused with what to write instead."""

from __future__ import annotations

from typing import Any

import pytest

from forwarder.settings import ConfigError, ListenConfig, parse_settings

SECRET = "correct-horse-battery-staple"
AUTH = {"header": "X-Canary-Token", "secret": SECRET}


def listen(**options: Any) -> ListenConfig:
    outputs = [{"name": "mem", "type": "memory"}]
    return parse_settings({"listen": options, "outputs": outputs}, environ={}).listen


@pytest.mark.parametrize("host", ["::1", "0:0:0:0:0:0:0:1", "127.0.0.1", "localhost"])
def test_loopback_spellings_need_no_authentication(host: str) -> None:
    assert listen(host=host).host == host


@pytest.mark.parametrize(
    ("host", "shown"),
    [("::", "::"), ("", "every address"), ("2001:db8::1", "2001:db8::1"), ("fe80::1%lo", "fe80")],
)
def test_other_addresses_need_authentication(host: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=f"refusing to listen on {shown}.* without auth"):
        listen(host=host)
    assert listen(host=host, auth=AUTH).host == host


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("[::1]", r"'\[::1\]': write an address without brackets"),
        ("[::1]:8080", r"without brackets .* the port in listen\.port"),
        ("127.0.0.1:8080", r"the port in listen\.port"),
        ("localhost:8080", r"the port in listen\.port"),
        ("::ffff:127.0.0.1", r"IPv4-mapped address; write 127\.0\.0\.1"),
        ("fe80::1", r"link-local address, which needs its interface: fe80::1%eth0"),
        ("2001:db8::1::2", r"is not an IPv6 address"),
    ],
)
def test_a_host_that_cannot_be_listened_on_is_refused_with_what_to_write(
    host: str, message: str
) -> None:
    # With authentication, so that the host itself is what is refused; before, these passed
    # and the start failed with "Name or service not known" or "invalid argument".
    with pytest.raises(ConfigError, match=rf"listen\.host: .*{message}"):
        listen(host=host, auth=AUTH)
