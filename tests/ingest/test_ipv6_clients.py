"""IPv6 clients: who the client is behind a proxy, the lists that match it, the failure limiter's
key, and what the log and the quarantine record. The daemon's app listens on ::1 for real."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict

from forwarder.ingest.auth import FailureLimiter, client_address
from forwarder.pipeline import Pipeline
from forwarder.settings import ListenConfig, Settings
from forwarder.store.database import Database
from tests.helpers import ClientFactory, sample, served_pipelines
from tests.support.loopback6 import requires_loopback6

SECRET = "correct-horse-battery-staple"
JSON = {"Content-Type": "application/json"}


def seen_from(peer: str, *forwarded: str, **listen: Any) -> str:
    """The client address the daemon takes for a request from `peer` with these
    X-Forwarded-For lines."""
    headers = CIMultiDict(("X-Forwarded-For", line) for line in forwarded)
    request = make_mocked_request("POST", "/canary", headers=headers).clone(remote=peer)
    return client_address(request, ListenConfig(**listen))


PROXY6 = {"trusted_proxies": ("::1/128", "2001:db8:ffff::/48")}


@pytest.mark.parametrize(
    ("hop", "client"),
    [
        ("2001:db8::7", "2001:db8::7"),
        # RFC 7239 writes an IPv6 node in brackets; proxies that copy it into X-Forwarded-For
        # keep them, and some add the client's port.
        ("[2001:db8::7]", "2001:db8::7"),
        ("[2001:db8::7]:4711", "2001:db8::7"),
        ("192.0.2.7:4711", "192.0.2.7"),
        # One address, one spelling: the limiter's key and the log must not depend on it.
        ("2001:DB8:0:0:0:0:0:7", "2001:db8::7"),
        # The IPv4 client behind a dual-stack proxy socket.
        ("::ffff:192.0.2.7", "192.0.2.7"),
        # Not an address: kept as sent (no list matches it).
        ("unknown", "unknown"),
        ("[2001:db8::7", "[2001:db8::7"),
        # Not ASCII: in backslash escapes (see test_listener_limits for bytes not UTF-8).
        ("proxy-\u00e9", "proxy-\\xe9"),
    ],
)
def test_a_forwarded_hop_is_read_in_any_form_proxies_write(hop: str, client: str) -> None:
    assert seen_from("::1", f"198.51.100.1, {hop}", **PROXY6) == client


@pytest.mark.parametrize(
    "proxy_hop", ["2001:db8:ffff::2", "[2001:db8:ffff::2]", "[2001:db8:ffff::2]:443"]
)
def test_a_trusted_proxy_is_skipped_however_its_hop_is_written(proxy_hop: str) -> None:
    assert seen_from("::1", f"2001:db8::7, {proxy_hop}", **PROXY6) == "2001:db8::7"


def test_without_a_trusted_proxy_the_ipv6_peer_is_the_client() -> None:
    assert seen_from("2001:db8::9", "[2001:db8::7]:4711") == "2001:db8::9"
    assert seen_from("2001:db8::9", "[2001:db8::7]:4711", **PROXY6) == "2001:db8::9"


def test_failed_attempts_from_one_ipv6_64_share_a_bucket() -> None:
    # Every IPv6 host has a /64 to itself (RFC 7421): counted per address, each guess could
    # come from an address of its own, and the limit would never be reached.
    limiter = FailureLimiter(burst=3, per_minute=1)
    for n in range(3):
        assert limiter.blocked(f"2001:db8:0:1::{n + 1:x}") is None
        limiter.failed(f"2001:db8:0:1::{n + 1:x}")
    assert limiter.blocked("2001:db8:0:1:ffff:ffff:ffff:ffff") is not None
    assert limiter.blocked("2001:db8:0:2::1") is None  # the next /64 is someone else
    assert limiter.blocked("192.0.2.1") is None


def test_an_ipv4_client_counts_the_same_however_it_is_written() -> None:
    limiter = FailureLimiter(burst=2, per_minute=1)
    limiter.failed("192.0.2.1")
    limiter.failed("::ffff:192.0.2.1")
    assert limiter.blocked("192.0.2.1") is not None
    assert limiter.blocked("192.0.2.2") is None


# --- the daemon's app on ::1 --------------------------------------------------------------------

Serve = Callable[..., Awaitable[tuple[TestClient[Any, Any], Pipeline]]]


@pytest.fixture
async def serve6(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Serve]:
    """`serve6(**listen)`: the daemon's app listening on ::1, and its pipeline."""
    async with served_pipelines(aiohttp_client, host="::1") as serve:

        async def start(**listen: Any) -> tuple[TestClient[Any, Any], Pipeline]:
            return await serve(make_settings(listen={"host": "::1", **listen}))

        yield start


def quarantined_clients(pipeline: Pipeline) -> list[str]:
    database = Database(pipeline.settings.store.path)
    try:
        return [client for _, _, _, client, _ in database.quarantined()]
    finally:
        database.close()


async def post(
    client: TestClient[Any, Any], body: bytes, headers: Mapping[str, str] | None = None
) -> int:
    response = await client.post("/canary", data=body, headers={**JSON, **(headers or {})})
    return response.status


@requires_loopback6
async def test_an_ipv6_peer_is_matched_by_allow_and_status_allow(serve6: Serve) -> None:
    client, _ = await serve6(allow=["::1/128"])
    assert await post(client, sample("test_event")) == 200
    assert (await client.get("/metrics")).status == 200  # ::1 is in the default status_allow
    refusing, _ = await serve6(allow=["127.0.0.0/8"], status_allow=["127.0.0.0/8"])
    assert await post(refusing, sample("test_event")) == 403
    assert (await refusing.get("/metrics")).status == 403


@requires_loopback6
async def test_a_client_behind_an_ipv6_proxy_is_logged_allowed_and_quarantined_by_address(
    serve6: Serve,
) -> None:
    client, pipeline = await serve6(allow=["2001:db8::/32"], trusted_proxies=["::1/128"])
    forwarded = {"X-Forwarded-For": "[2001:db8::7]:4711"}
    with structlog.testing.capture_logs() as logs:
        assert await post(client, sample("test_event"), forwarded) == 200
    [accepted] = [line for line in logs if line["event"] == "Event accepted."]
    assert accepted["client"] == "2001:db8::7"
    assert await post(client, b"{not json", forwarded) == 400
    assert quarantined_clients(pipeline) == ["2001:db8::7"]
    outside = {"X-Forwarded-For": "[2001:db9::7]:4711"}
    assert await post(client, sample("test_event"), outside) == 403


@requires_loopback6
async def test_guesses_from_many_addresses_of_one_ipv6_64_are_rate_limited(serve6: Serve) -> None:
    client, _ = await serve6(
        auth={"header": "X-Canary-Token", "secret": SECRET}, trusted_proxies=["::1/128"]
    )
    statuses = [
        await post(
            client,
            b"{}",
            {"X-Forwarded-For": f"2001:db8:0:1::{n + 1:x}", "X-Canary-Token": "guess"},
        )
        for n in range(15)
    ]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    elsewhere = {"X-Forwarded-For": "2001:db8:0:2::1", "X-Canary-Token": SECRET}
    assert await post(client, sample("test_event"), elsewhere) == 200
