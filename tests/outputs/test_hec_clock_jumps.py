"""splunk_hec on a host whose wall clock is wrong until NTP steps it: a node's Retry-After, as an
HTTP date, is read against that clock, and the hold it makes must not outlive the correction.
The nodes' monotonic clock is injected; nothing sleeps."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from forwarder.outputs import _http as http_module
from forwarder.outputs._failover import Endpoints
from forwarder.outputs.base import Delivered, Retry
from tests.outputs.test_splunk_hec import Connect
from tests.outputs.test_splunk_hec import connect as connect  # a fixture
from tests.peers._server import Respond
from tests.peers.fake_hec import FakeHec
from tests.peers.records import make_records

pytest_plugins = ["tests.peers.fixtures"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_node_asking_for_a_date_a_year_ahead_sits_out_no_longer_than_max_backoff(
    fake_hec: FakeHec, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(http_module, "Endpoints", functools.partial(Endpoints, clock=clock))
    async with FakeHec() as busy:
        # What a node sends as "in a minute" when this host's clock is a year behind.
        when = format_datetime(datetime.now(UTC) + timedelta(days=365, minutes=1), usegmt=True)
        busy.faults.push(Respond(503, {"text": "Server is busy", "code": 9}, {"Retry-After": when}))
        output = await connect([busy.url, fake_hec.url])  # retry.max_backoff_secs: 60
        assert isinstance(await output.send(make_records(1)), Retry)
        assert await output.send(make_records(1, start=1)) == Delivered()  # the other node
        clock.now += 60  # the longest the dispatcher waits for a Retry-After
        for start in (2, 3):
            assert await output.send(make_records(1, start=start)) == Delivered()
        assert (len(busy.events), len(fake_hec.events)) == (1, 2)
