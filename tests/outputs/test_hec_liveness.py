"""The splunk_hec check the daemon runs every 30 s: Splunk's health endpoint, not an event post.

The healthcheck's empty post is answered 400 "No data", which Splunk counts and logs as an HEC
error; made every 30 s it would be a steady stream of errors from us in the SOC's dashboards.
`liveness` asks `GET /services/collector/health` and posts that probe only when nothing proved
the token for `TOKEN_PROOF_SECS`. `validate --healthcheck` keeps the full check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.outputs import splunk_hec
from forwarder.outputs.base import Delivered, HealthcheckError, Retry
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from forwarder.pipeline import healthcheck_problem
from tests.helpers import closed_port_url, started_outputs
from tests.peers._server import Delay, Reset, Respond
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec
from tests.peers.records import make_records

pytest_plugins = ["tests.peers.fixtures"]

Connect = Callable[..., Awaitable[SplunkHecOutput]]

HEALTH = ("GET", "/services/collector/health")
EVENT = ("POST", "/services/collector/event")
ACK = ("POST", "/services/collector/ack")
OTHER_TOKEN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def connect(fake_hec: FakeHec) -> AsyncIterator[Connect]:
    """Build and start outputs (to the fake HEC unless `url` is given); closed after the test."""

    def make(url: str | list[str] | None = None, **options: Any) -> SplunkHecOutput:
        config = {
            "name": "hec",
            "type": "splunk_hec",
            "url": url or fake_hec.url,
            "token": DEFAULT_TOKEN,
            "request_timeout_secs": 2,
            **options,
        }
        return SplunkHecOutput(SplunkHecConfig.model_validate(config))

    async with started_outputs(make) as build:
        yield build


async def proven(connect: Connect, fake_hec: FakeHec, **options: Any) -> SplunkHecOutput:
    """An output whose token an accepted send has proven; the fake forgets that send."""
    output = await connect(**options)
    assert await output.send(make_records(1)) == Delivered()
    fake_hec.seen.clear()
    return output


# Healthy: only the health endpoint


async def test_liveness_asks_only_the_health_endpoint_once_a_send_proved_the_token(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await proven(connect, fake_hec)
    for _ in range(3):
        await output.liveness()
    assert fake_hec.seen == [HEALTH] * 3
    assert all(r.headers["Authorization"] == f"Splunk {DEFAULT_TOKEN}" for r in fake_hec.requests)


async def test_an_unproven_token_is_probed_once_at_start_then_never_while_proven(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect()
    for _ in range(4):
        await output.liveness()
    assert fake_hec.seen == [HEALTH, EVENT, HEALTH, HEALTH, HEALTH]
    assert fake_hec.events == []


async def test_the_token_is_probed_again_once_its_proof_is_older_than_token_proof_secs(
    fake_hec: FakeHec, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = await proven(connect, fake_hec)
    await output.liveness()
    monkeypatch.setattr(splunk_hec, "TOKEN_PROOF_SECS", 0.0)
    await output.liveness()
    assert fake_hec.seen == [HEALTH, HEALTH, EVENT]
    assert len(fake_hec.events) == 1  # the send that proved the token


async def test_with_indexer_ack_an_empty_ack_poll_proves_the_token_and_nothing_is_posted(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    output = await connect(indexer_ack=True)
    await output.liveness()
    await output.liveness()
    assert fake_hec.seen == [HEALTH, ACK, HEALTH]
    ack_poll = fake_hec.requests[1]
    assert (ack_poll.body, ack_poll.query) == (b'{"acks":[]}', {"channel": output.channel})


async def test_with_indexer_ack_on_a_token_without_acks_liveness_says_so(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect(indexer_ack=True)
    with pytest.raises(
        HealthcheckError, match=r"ack poll: HTTP 400: HEC code 14.*`indexer_ack` off"
    ):
        await output.liveness()
    assert EVENT not in fake_hec.seen


async def test_the_pipelines_check_passes(fake_hec: FakeHec, connect: Connect) -> None:
    output = await proven(connect, fake_hec)
    assert await healthcheck_problem(output.liveness) is None
    assert fake_hec.seen == [HEALTH]


# Failing, with the reason, and still without posting events


async def test_unhealthy_hec_fails_with_splunks_reason(fake_hec: FakeHec, connect: Connect) -> None:
    output = await proven(connect, fake_hec)
    fake_hec.healthy = False
    with pytest.raises(HealthcheckError) as failed:
        await output.liveness()
    assert str(failed.value) == (
        f"127.0.0.1:{fake_hec.port}: health: HTTP 503: HEC code 18: "
        "HEC is unhealthy, queues are full"
    )
    assert fake_hec.seen == [HEALTH]


async def test_an_unproven_token_is_not_probed_while_hec_is_unhealthy(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.healthy = False
    with pytest.raises(HealthcheckError, match="queues are full"):
        await (await connect()).liveness()
    assert fake_hec.seen == [HEALTH]


@pytest.mark.parametrize(
    ("disabled", "expected"),
    [
        (False, "HTTP 400: HEC code 21: Invalid token: HEC does not know this token: fix `token`"),
        (True, "HTTP 400: HEC code 22: Token disabled: the token is disabled in Splunk"),
    ],
)
async def test_a_token_the_health_endpoint_refuses_fails_without_a_probe(
    fake_hec: FakeHec, connect: Connect, disabled: bool, expected: str
) -> None:
    fake_hec.token_disabled = disabled
    output = await connect(token=DEFAULT_TOKEN if disabled else OTHER_TOKEN)
    with pytest.raises(HealthcheckError, match=expected):
        await output.liveness()
    assert fake_hec.seen == [HEALTH]


async def test_a_token_revoked_while_idle_is_caught_when_its_proof_expires(
    fake_hec: FakeHec, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Splunk whose health endpoint ignores the token: only the periodic probe notices."""
    fake_hec.health_checks_token = False
    output = await proven(connect, fake_hec)
    fake_hec.token = OTHER_TOKEN  # revoked in Splunk
    await output.liveness()  # still within the proof: passes, and posts nothing
    monkeypatch.setattr(splunk_hec, "TOKEN_PROOF_SECS", 0.0)
    with pytest.raises(HealthcheckError, match="probe send: HTTP 403: HEC code 4: Invalid token"):
        await output.liveness()
    assert fake_hec.seen == [HEALTH, HEALTH, EVENT]


async def test_a_send_refused_for_the_token_makes_the_next_check_probe_it(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.health_checks_token = False
    output = await proven(connect, fake_hec)
    fake_hec.token = OTHER_TOKEN
    refused = await output.send(make_records(1))
    assert isinstance(refused, Retry) and refused.operator_action
    with pytest.raises(HealthcheckError, match="probe send: HTTP 403: HEC code 4"):
        await output.liveness()


async def test_nothing_answering_fails(connect: Connect) -> None:
    with pytest.raises(HealthcheckError, match="cannot connect"):
        await (await connect(closed_port_url())).liveness()


async def test_a_hang_or_a_reset_fails(fake_hec: FakeHec, connect: Connect) -> None:
    output = await proven(connect, fake_hec, request_timeout_secs=0.3)
    fake_hec.health_faults.push(Delay(5))
    with pytest.raises(HealthcheckError, match=r"127\.0\.0\.1:\d+: no answer within 0\.3 s"):
        await output.liveness()
    fake_hec.health_faults.push(Reset(), Reset())  # aiohttp retries a GET once on a reset
    with pytest.raises(HealthcheckError, match=r"127\.0\.0\.1:\d+: connection"):
        await output.liveness()
    assert EVENT not in fake_hec.seen


async def test_a_wrong_url_fails_with_the_hint(fake_hec: FakeHec, connect: Connect) -> None:
    with pytest.raises(HealthcheckError, match=r"health: HTTP 404.*check `url`"):
        await (await connect(fake_hec.url + "/splunk")).liveness()
    assert fake_hec.seen == []  # no HEC route at that path


# Several nodes


async def test_one_healthy_node_of_several_is_enough(fake_hec: FakeHec, connect: Connect) -> None:
    async with FakeHec() as full:
        full.healthy = False
        output = await connect([closed_port_url(), full.url, fake_hec.url])
        await output.liveness()
        await output.liveness()
        assert full.seen == [HEALTH, HEALTH]
        assert fake_hec.seen == [HEALTH, EVENT, HEALTH]  # the token is proven on a healthy node


async def test_every_node_failing_names_each_one(fake_hec: FakeHec, connect: Connect) -> None:
    async with FakeHec() as full:
        full.healthy = False
        dead = closed_port_url()
        output = await connect([dead, full.url])
        with pytest.raises(HealthcheckError) as failed:
            await output.liveness()
        reasons = str(failed.value).split("; ")
        assert len(reasons) == 2
        assert "cannot connect" in reasons[0] and dead.removeprefix("http://") in reasons[0]
        assert reasons[1].startswith(f"127.0.0.1:{full.port}: health: HTTP 503: HEC code 18")
        assert full.seen == [HEALTH]


async def test_a_busy_node_answering_health_with_a_proxy_page_fails(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await proven(connect, fake_hec)
    fake_hec.health_faults.push(Respond(502, "<html>Bad Gateway</html>"))
    with pytest.raises(HealthcheckError, match="health: HTTP 502: <html>Bad Gateway</html>"):
        await output.liveness()


# `validate --healthcheck` keeps the full check


async def test_validate_healthcheck_still_proves_the_token_with_the_probe(
    fake_hec: FakeHec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"outputs:\n  - name: hec\n    type: splunk_hec\n    url: {fake_hec.url}\n"
        f"    token: {DEFAULT_TOKEN}\n"
    )
    # In a thread: the command runs its own event loop, the fake HEC runs in this one.
    assert await asyncio.to_thread(main, ["validate", "-c", str(config), "--healthcheck"]) == 0
    assert "output hec: healthy" in capsys.readouterr().out
    assert fake_hec.seen == [HEALTH, EVENT]
    assert fake_hec.events == []
