"""The fake HEC does what Splunk documents, so the output tests against it mean something."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from forwarder.outputs.base import Delivered, Retry
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput
from tests.peers._server import Respond
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec, HecEvent
from tests.peers.process import peer_process
from tests.peers.records import make_records

pytest_plugins = ["tests.peers.fixtures"]

CHANNEL = "0b9a1c57-3f9e-4d0c-9a55-6a0b3c2d1e0f"
AUTH = {"Authorization": f"Splunk {DEFAULT_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/services/collector/event",
) -> tuple[int, Any]:
    sent = AUTH if headers is None else headers
    async with session.post(url + path, data=body, headers=sent) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, 2),
        ({"Authorization": "Bearer x"}, 401, 3),
        ({"Authorization": "Splunk wrong"}, 403, 4),
        (AUTH, 200, 0),
        (
            {"Authorization": "Basic " + base64.b64encode(f"x:{DEFAULT_TOKEN}".encode()).decode()},
            200,
            0,
        ),
    ],
)
async def test_auth_codes(
    fake_hec: FakeHec,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    status: int,
    code: int,
) -> None:
    answer = await post(http, fake_hec.url, b'{"event":"x"}', headers)
    assert answer[0] == status and answer[1]["code"] == code


async def test_query_string_token_needs_permission(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    path = f"/services/collector/event?token={DEFAULT_TOKEN}"
    assert (await post(http, fake_hec.url, b'{"event":"x"}', {}, path))[1]["code"] == 16
    fake_hec.allow_query_token = True
    assert (await post(http, fake_hec.url, b'{"event":"x"}', {}, path))[1]["code"] == 0


@pytest.mark.parametrize(
    ("body", "code", "number", "kept"),
    [
        (b"", 5, None, 0),
        (b'{"event":"a"}{"event":"b"}', 0, None, 2),
        (b'{"event":"a"}\n{"event":"b"}\n', 0, None, 2),
        (b'[{"event":"a"}]', 6, 0, 0),
        (b'{"event":"a"}{"event":', 6, 1, 1),
        (b'{"event":"a"}{"host":"h"}{"event":"c"}', 12, 1, 1),
        (b'{"event":"a"}{"event":"  "}', 13, 1, 1),
        (b'{"event":"a","fields":{"x":{"nested":1}}}', 15, 0, 0),
        (b'{"event":"a","time":"yesterday"}', 6, 0, 0),
    ],
)
async def test_envelopes_are_checked_in_order_and_hec_stops_at_the_first_bad_one(
    fake_hec: FakeHec,
    http: aiohttp.ClientSession,
    body: bytes,
    code: int,
    number: int | None,
    kept: int,
) -> None:
    status, answer = await post(http, fake_hec.url, body)
    assert answer["code"] == code and status == (200 if code == 0 else 400)
    assert answer.get("invalid-event-number") == number
    assert len(fake_hec.events) == kept


async def test_gzip_bodies_and_unsupported_encodings(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    packed = gzip.compress(b'{"event":"a"}')
    status, _ = await post(http, fake_hec.url, packed, {**AUTH, "Content-Encoding": "gzip"})
    assert status == 200 and len(fake_hec.events) == 1
    status, _ = await post(http, fake_hec.url, packed, {**AUTH, "Content-Encoding": "deflate"})
    assert status == 415


async def test_oversized_requests_are_413(fake_hec: FakeHec, http: aiohttp.ClientSession) -> None:
    fake_hec.max_content_length = 100
    status, _ = await post(http, fake_hec.url, b'{"event":"' + b"x" * 200 + b'"}')
    assert status == 413 and fake_hec.events == []


async def test_incorrect_index(fake_hec: FakeHec, http: aiohttp.ClientSession) -> None:
    fake_hec.allowed_indexes = {"main"}
    ok, bad = b'{"event":"a","index":"main"}', b'{"event":"b","index":"other"}'
    status, answer = await post(http, fake_hec.url, ok + bad)
    assert (status, answer["code"], answer["invalid-event-number"]) == (400, 7, 1)


async def test_acks_need_a_channel_and_are_reported_once(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = 1
    assert (await post(http, fake_hec.url, b'{"event":"a"}'))[1]["code"] == 10
    bad_channel = {**AUTH, "X-Splunk-Request-Channel": "not-a-guid"}
    assert (await post(http, fake_hec.url, b'{"event":"a"}', bad_channel))[1]["code"] == 11
    with_channel = {**AUTH, "X-Splunk-Request-Channel": CHANNEL}
    for expected_id in (0, 1):
        _, answer = await post(http, fake_hec.url, b'{"event":"a"}', with_channel)
        assert answer == {"text": "Success", "code": 0, "ackId": expected_id}
    ack_path = f"/services/collector/ack?channel={CHANNEL}"
    polls = [
        (await post(http, fake_hec.url, b'{"acks":[0,1,7]}', AUTH, ack_path))[1]["acks"]
        for _ in range(3)
    ]
    assert polls[0] == {"0": False, "1": False, "7": False}
    assert polls[1] == {"0": True, "1": True, "7": False}
    assert polls[2] == {"0": False, "1": False, "7": False}  # reported once, then forgotten


async def test_ack_endpoint_without_ack_on_the_token_is_code_14(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    path = f"/services/collector/ack?channel={CHANNEL}"
    status, answer = await post(http, fake_hec.url, b'{"acks":[0]}', AUTH, path)
    assert (status, answer["code"]) == (400, 14)


@pytest.mark.parametrize(
    ("headers", "healthy", "status", "code"),
    [
        ({}, True, 200, 17),
        (AUTH, True, 200, 17),
        ({}, False, 503, 18),
        ({"Authorization": "Splunk wrong"}, True, 400, 21),
    ],
)
async def test_health_endpoint(
    fake_hec: FakeHec,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    healthy: bool,
    status: int,
    code: int,
) -> None:
    fake_hec.healthy = healthy
    async with http.get(fake_hec.url + "/services/collector/health", headers=headers) as response:
        assert response.status == status and (await response.json())["code"] == code


async def test_health_endpoint_with_a_disabled_token_is_code_22(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.token_disabled = True
    async with http.get(fake_hec.url + "/services/collector/health", headers=AUTH) as response:
        assert (response.status, (await response.json())["code"]) == (400, 22)


async def test_health_endpoint_may_ignore_the_token_and_suffers_its_own_faults(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.health_checks_token = False
    wrong = {"Authorization": "Splunk wrong"}
    url = fake_hec.url + "/services/collector/health"
    async with http.get(url, headers=wrong) as response:
        assert (response.status, (await response.json())["code"]) == (200, 17)
    fake_hec.health_faults.push(Respond(502, "<html>Bad Gateway</html>"))
    async with http.get(url) as response:
        assert response.status == 502


async def test_every_request_to_hec_is_seen_even_when_refused(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, fake_hec.url, b'{"event":"x"}', {"Authorization": "Splunk no"})
    assert status == 403
    async with http.get(fake_hec.url + "/services/collector/health/1.0"):
        pass
    assert fake_hec.seen == [
        ("POST", "/services/collector/event"),
        ("GET", "/services/collector/health/1.0"),
    ]
    assert fake_hec.events == []


def test_stats_count_duplicates_across_calls_and_after_a_reset() -> None:
    hec = FakeHec()

    def arrive(*fingerprints: str) -> None:
        for value in fingerprints:
            envelope = {"event": "x", "fields": {"canary_fingerprint": value}}
            hec.events.append(HecEvent(envelope, 0.0, None))

    arrive("a", "b")
    assert (hec.stats()["unique"], hec.stats()["duplicates"]) == (2, 0)
    arrive("a", "c")  # "a" again, counted on from the last call
    assert (hec.stats()["events"], hec.stats()["unique"], hec.stats()["duplicates"]) == (4, 3, 1)
    hec.reset()
    arrive("a", "b", "c", "d", "e")  # more than before the reset: still counted afresh
    assert (hec.stats()["unique"], hec.stats()["duplicates"]) == (5, 0)
    hec.events.clear()
    arrive("z")
    assert (hec.stats()["events"], hec.stats()["unique"], hec.stats()["duplicates"]) == (1, 1, 0)


def control(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(url + path, data=data, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


async def test_standalone_process_is_driven_over_http() -> None:
    with peer_process("tests.peers.fake_hec", "--ack") as url:
        output = SplunkHecOutput(
            SplunkHecConfig.model_validate(
                {
                    "name": "hec",
                    "type": "splunk_hec",
                    "url": url,
                    "token": DEFAULT_TOKEN,
                    "indexer_ack": True,
                    "ack_poll_interval_secs": 0.02,
                }
            )
        )
        try:
            records = make_records(3)
            control(url, "/_fake/faults", [{"respond": {"status": 503, "body": {"code": 9}}}])
            assert not isinstance(await output.send(records), Delivered)
            assert await output.send(records) == Delivered()
            stats = control(url, "/_fake/stats")
            assert (stats["events"], stats["unique"], stats["duplicates"]) == (3, 3, 0)
            listed = control(url, "/_fake/events?offset=1")
            assert [e["fields"]["canary_fingerprint"] for e in listed] == [
                r.event.fingerprint for r in records[1:]
            ]
            control(url, "/_fake/down", {"down": True})
            assert isinstance(await output.send(make_records(1, start=9)), Retry)
            control(url, "/_fake/down", {"down": False})
            assert control(url, "/_fake/stats")["events"] == 3
            control(url, "/_fake/reset", {})
            assert control(url, "/_fake/stats")["events"] == 0
        finally:
            await output.aclose()


# Behaviour added with the HEC audit (each row cites what Splunk was seen or documented to do)


@pytest.mark.parametrize(
    ("fields", "code", "kept"),
    [
        # Splunk's "Automate indexed field extractions" page allows only strings, and a flat
        # array of them for several values; a nested object or array is code 15.
        ({"a": "x", "b": ["y", "z"]}, 0, {"a": "x", "b": ["y", "z"]}),
        ({"a": {"nested": "x"}}, 15, None),
        ({"a": ["x", ["nested"]]}, 15, None),
        # Seen on Splunk (vectordotdev/vector#24292): floats, booleans and null are kept, and
        # an integer is dropped without a word.
        ({"f": 1.5, "t": True, "n": None, "i": 7}, 0, {"f": 1.5, "t": True, "n": None}),
    ],
)
async def test_indexed_fields_follow_splunks_type_rules(
    fake_hec: FakeHec,
    http: aiohttp.ClientSession,
    fields: dict[str, Any],
    code: int,
    kept: dict[str, Any] | None,
) -> None:
    body = json.dumps({"event": "a", "fields": fields}).encode()
    _status, answer = await post(http, fake_hec.url, body)
    assert answer["code"] == code
    if kept is None:
        assert answer["invalid-event-number"] == 0 and fake_hec.events == []
    else:
        assert fake_hec.events[0].fields == kept


async def test_the_size_limit_counts_wire_bytes_unless_told_to_count_the_body(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.max_content_length = 1000
    body = b'{"event":"' + b"x" * 2000 + b'"}'
    packed = gzip.compress(body)
    gzipped = {**AUTH, "Content-Encoding": "gzip"}
    assert len(packed) < 1000 < len(body)
    assert (await post(http, fake_hec.url, packed, gzipped))[0] == 200
    fake_hec.limit_decompressed = True
    status, answer = await post(http, fake_hec.url, packed, gzipped)
    assert status == 413 and "maximum is 1000" in answer["text"]
    assert len(fake_hec.events) == 1


async def test_an_event_over_max_event_size_is_code_6_not_413(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.max_event_size = 100
    small, big = b'{"event":"a"}', b'{"event":"' + b"x" * 200 + b'"}'
    status, answer = await post(http, fake_hec.url, small + big + small)
    assert (status, answer["code"], answer["invalid-event-number"]) == (400, 6, 1)
    assert len(fake_hec.events) == 1


async def test_a_restart_forgets_pending_acks_and_restarts_the_ids(
    fake_hec: FakeHec, http: aiohttp.ClientSession
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = 0
    with_channel = {**AUTH, "X-Splunk-Request-Channel": CHANNEL}
    assert (await post(http, fake_hec.url, b'{"event":"a"}', with_channel))[1]["ackId"] == 0
    fake_hec.restart()
    ack_path = f"/services/collector/ack?channel={CHANNEL}"
    _, polled = await post(http, fake_hec.url, b'{"acks":[0]}', AUTH, ack_path)
    assert polled == {"acks": {"0": False}}
    assert (await post(http, fake_hec.url, b'{"event":"b"}', with_channel))[1]["ackId"] == 0


async def test_a_prefix_serves_every_route_under_it(http: aiohttp.ClientSession) -> None:
    async with FakeHec(prefix="/splunk/hec/") as peer:
        async with http.post(peer.url + "/services/collector/event", headers=AUTH) as response:
            assert response.status == 404
        path = "/splunk/hec/services/collector/event"
        assert (await post(http, peer.url, b'{"event":"a"}', path=path))[0] == 200
        async with http.get(peer.url + "/splunk/hec/services/collector/health") as response:
            assert response.status == 200
        assert peer.seen[-1] == ("GET", "/splunk/hec/services/collector/health")
