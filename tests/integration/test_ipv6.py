"""The real daemon over IPv6, on loopback only: which families `listen.host` takes (`::1`, `::`,
the empty string, a name with addresses of both), and `send-test` to `http://[::1]:PORT`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forwarder.cli.run import NotLoopback, _bind, serve
from forwarder.settings import EX_CONFIG, parse_settings
from tests.cli.test_commands import run_cli
from tests.daemon.harness import Daemon, daemon_factory, file_output, incident, wait_until
from tests.support.loopback6 import requires_loopback6

pytestmark = requires_loopback6

SECRET = "correct-horse-battery-staple"
AUTH = {"header": "X-Canary-Token", "secret": SECRET}
POST_HEADERS = {"Content-Type": "application/json", "X-Canary-Token": SECRET}


def free_port_on_both_families() -> int:
    """A TCP port that nothing listens on, on any IPv4 or IPv6 address."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        port: int = probe.getsockname()[1]
        return port


class Daemon6(Daemon):
    """A daemon the harness reaches on [::1] instead of 127.0.0.1."""

    @property
    def base_url(self) -> str:
        return f"http://[::1]:{self.port}"


@pytest.fixture
def daemon6(tmp_path: Path) -> Iterator[Any]:
    """`daemon6(host, **listen)`: a started daemon listening on `host`, on a port free on both
    families; stopped after the test."""
    with daemon_factory(Daemon6, tmp_path) as make:

        async def start(host: str, **listen: Any) -> Daemon6:
            port = free_port_on_both_families()
            daemon = make(
                {
                    "listen": {"host": host, "port": port, **listen},
                    "outputs": [file_output("out", tmp_path / "out.jsonl")],
                }
            )
            daemon.port = port  # the harness's own pick is free on 127.0.0.1 only
            await daemon.start()
            return daemon

        yield start


async def post(url: str) -> int:
    """Post one new incident to `url`; the status."""
    _, body = incident()
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{url}/canary", data=body, headers=POST_HEADERS) as response,
    ):
        return response.status


def refused(host: str, port: int) -> bool:
    """Whether nothing listens at host:port (the connection is refused)."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.slow
async def test_listening_on_ipv6_loopback_takes_ipv6_only_and_needs_no_auth(daemon6: Any) -> None:
    daemon = await daemon6("::1")
    assert await post(daemon.base_url) == 200
    [accepted] = await wait_until(
        lambda: daemon.find_logs("Event accepted.") or None, timeout=10, what="the accept log"
    )
    assert accepted["client"] == "::1"
    [listening] = daemon.find_logs("Listening.")
    assert listening["addresses"] == [f"[::1]:{daemon.port}"]
    assert refused("127.0.0.1", daemon.port)
    assert await daemon.stop() == 0


@pytest.mark.slow
async def test_the_ipv6_unspecified_address_takes_ipv6_only(daemon6: Any) -> None:
    # asyncio's and this daemon's IPv6 sockets are IPV6_V6ONLY, whatever the system default:
    # `::` is every IPv6 address and no IPv4 one.
    daemon = await daemon6("::", auth=AUTH)
    assert await post(daemon.base_url) == 200
    assert refused("127.0.0.1", daemon.port)
    assert await daemon.stop() == 0


@pytest.mark.slow
async def test_an_empty_host_takes_both_families(daemon6: Any) -> None:
    daemon = await daemon6("", auth=AUTH)
    assert await post(daemon.base_url) == 200
    assert await post(f"http://127.0.0.1:{daemon.port}") == 200
    assert await daemon.stop() == 0


async def test_a_name_with_addresses_of_both_families_listens_on_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # /etc/hosts decides what `localhost` is, and on many machines it is 127.0.0.1 alone; the
    # resolver is told to answer both, as it does where ::1 is listed too.
    port = free_port_on_both_families()
    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
    ]
    loop = asyncio.get_running_loop()

    async def resolve(host: str | None, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "localhost"
        return answers

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    sockets = await _bind("localhost", port)
    with contextlib.ExitStack() as stack:
        for sock in sockets:
            stack.enter_context(sock)
        assert sorted((s.family, s.getsockname()[0]) for s in sockets) == [
            (socket.AF_INET, "127.0.0.1"),
            (socket.AF_INET6, "::1"),
        ]
        [six] = [s for s in sockets if s.family == socket.AF_INET6]
        assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


@pytest.mark.slow
async def test_send_test_reaches_a_daemon_on_ipv6_loopback(
    daemon6: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = await daemon6("::1")
    url = f"http://[::1]:{daemon.port}/canary"
    code, out, err = await asyncio.to_thread(run_cli, capsys, "send-test", "--url", url)
    assert (code, err) == (0, "")
    assert out.startswith('200 {"status":"stored"')
    assert await daemon.stop() == 0
    closed = f"http://[::1]:{free_port_on_both_families()}/canary"
    code, out, err = await asyncio.to_thread(run_cli, capsys, "send-test", "--url", closed)
    assert code == 1
    assert err.startswith(f"cannot reach {closed.removesuffix('/canary')}: ")


async def test_a_name_that_resolves_off_loopback_is_refused_without_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `localhost` needs no auth by the configuration's rules; an /etc/hosts that maps it to an
    # interface address must not open the webhook to the network.
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.10", 8080))]
    loop = asyncio.get_running_loop()

    async def resolve(host: str | None, *args: Any, **kwargs: Any) -> list[Any]:
        return answers

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    with pytest.raises(NotLoopback, match=r"localhost resolves to 192\.0\.2\.10"):
        await _bind("localhost", 8080, loopback_only=True)


async def test_the_daemon_refuses_such_a_name_with_exit_status_78(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()

    async def resolve(host: str | None, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.10", 8080))]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    settings = parse_settings(
        {
            "listen": {"host": "localhost"},
            "store": {"path": str(tmp_path / "state")},
            "outputs": [{"name": "mem", "type": "memory"}],
        },
        environ={},
    )
    assert await serve(settings, None, 1.0) == EX_CONFIG
    assert not (tmp_path / "state").exists()  # refused before anything started
