"""The splunk_hec send path against Splunk's documented (or, where it documents nothing, observed)
behaviour: the envelope, sizes, gzip, indexer acknowledgement, code 6 splits, 413, failover with
Retry-After, and Splunk Cloud URLs. Each test names the source it follows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from pydantic import ValidationError
from yarl import URL

from forwarder.delivery.dispatcher import Dispatcher
from forwarder.events import parse_event
from forwarder.mappers.base import Record
from forwarder.mappers.json import JsonConfig, JsonMapper
from forwarder.outputs._http import endpoint_name
from forwarder.outputs.base import Delivered, Partial, Reject, Retry
from forwarder.outputs.splunk_hec import SplunkHecOutput, hec_envelope
from forwarder.settings import StoreConfig
from forwarder.store.outbox import Outbox
from tests.helpers import sample
from tests.outputs.test_splunk_hec import Connect, hec_config
from tests.outputs.test_splunk_hec import connect as connect  # a fixture
from tests.peers._server import Respond
from tests.peers.fake_hec import FakeHec
from tests.peers.records import RECEIVED, make_records

pytest_plugins = ["tests.peers.fixtures"]

# The keys of Splunk's "Format events for HTTP Event Collector" event metadata table.
ENVELOPE_KEYS = {"time", "host", "source", "sourcetype", "index", "fields", "event"}
SAFE_FIELD_VALUE = re.compile(r"[A-Za-z0-9:._@-]{1,200}")


def record_of(**changes: Any) -> Record:
    """The SSH-login sample with some payload keys changed, mapped by the json format."""
    payload = {**orjson.loads(sample("incident_ssh_login")), **changes}
    event = parse_event(orjson.dumps(payload), received_at=RECEIVED)
    return JsonMapper(JsonConfig(type="json")).map(event)


# The envelope


def test_the_envelope_uses_only_the_keys_hec_documents() -> None:
    config = hec_config("http://s", index="security", host="h")
    for record in [*make_records(2), *make_records(1, body="text")]:
        assert set(hec_envelope(record, config)) <= ENVELOPE_KEYS


async def test_time_goes_as_a_json_number_of_seconds_with_milliseconds(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # "time: The event time ... in the format <sec>.<ms>" (Format events for HEC); Splunk reads
    # a 13- or 19-digit integer as milliseconds or nanoseconds, so seconds must not be scaled.
    record = record_of(Timestamp="1772697601.123456")
    assert await (await connect()).send([record]) == Delivered()
    assert b'"time":1772697601.123,' in fake_hec.requests[0].body
    assert fake_hec.events[0].envelope["time"] == 1772697601.123


@pytest.mark.parametrize(
    "stamp", ["1960-01-01 00:00:00", "2999-01-01 00:00:00", "99999999999", "garbage"]
)
def test_a_time_outside_1970_to_30_days_ahead_is_never_sent(stamp: str) -> None:
    envelope = hec_envelope(record_of(Timestamp=stamp), hec_config("http://s"))
    assert envelope["time"] == RECEIVED.timestamp() > 0


async def test_attacker_text_cannot_add_indexed_fields_or_break_the_envelope(
    fake_hec: FakeHec, connect: Connect
) -> None:
    hostile = 'x", "fields": {"evil": "1"}, "y": "z\n{"event": "forged"}'
    record = record_of(
        IncidentHash=hostile,
        LogType="4002 evil::1",
        CanaryName='web"\n{"event":"forged","index":"main"}',
        Description=hostile,
    )
    assert await (await connect()).send([record]) == Delivered()
    [event] = fake_hec.events
    assert set(event.fields) == {"canary_event_id", "canary_fingerprint", "canary_kind"}
    assert all(isinstance(v, str) and SAFE_FIELD_VALUE.fullmatch(v) for v in event.fields.values())
    assert event.envelope["host"] == 'web"\n{"event":"forged","index":"main"}'
    assert set(event.envelope) <= ENVELOPE_KEYS and "index" not in event.envelope


async def test_every_indexed_field_survives_splunks_type_rules(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # "Only strings can be used as field values" (Automate indexed field extractions with HEC);
    # an integer is dropped silently (vectordotdev/vector#24292), so every value is a string.
    records = make_records(3)
    assert await (await connect()).send(records) == Delivered()
    for record, event in zip(records, fake_hec.events, strict=True):
        assert event.fields == hec_envelope(record, hec_config("http://s"))["fields"]
        assert all(isinstance(value, str) for value in event.fields.values())


# Sizes and gzip


@pytest.mark.parametrize("limit_decompressed", [False, True])
async def test_requests_under_max_request_bytes_pass_either_way_hec_counts_them(
    fake_hec: FakeHec, connect: Connect, limit_decompressed: bool
) -> None:
    # Splunk's 413 names the Content-Length (the wire bytes); max_request_bytes counts the
    # uncompressed body, so it holds whether a receiver counts the one or the other.
    fake_hec.max_content_length = 8192
    fake_hec.limit_decompressed = limit_decompressed
    output = await connect(max_request_bytes=8192)
    records = make_records(30)
    assert await output.send(records) == Delivered()
    assert fake_hec.values("canary_event_id") == [r.event.id for r in records]
    assert all(r.headers["Content-Encoding"] == "gzip" for r in fake_hec.requests)


async def test_an_event_over_hecs_max_event_size_is_dead_lettered_alone(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # Over inputs.conf maxEventSize Splunk answers 400 code 6 with the event's number, not 413
    # (signalfx/splunk-otel-collector-chart#696).
    records = make_records(3)
    big = Record(event=records[1].event, body="x" * 4000)
    fake_hec.max_event_size = 3000
    result = await (await connect()).send([records[0], big, records[2]])
    assert isinstance(result, Partial) and sorted(result.results) == [1, 2]
    assert isinstance(result.results[1], Reject) and "HEC code 6" in result.results[1].reason
    assert isinstance(result.results[2], Retry)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(StoreConfig(path=tmp_path))
    box.set_outputs(["hec"])
    yield box
    await box.aclose()


async def deliver_through_a_dispatcher(
    outbox: Outbox, output: SplunkHecOutput, records: list[Record], done: Callable[[], bool]
) -> None:
    for record in records:
        await outbox.append(record.event)
    dispatcher = Dispatcher(output, JsonMapper(JsonConfig(type="json")), outbox)
    dispatcher.start()
    try:
        async with asyncio.timeout(10):
            while not done():
                await asyncio.sleep(0.02)
            while (await outbox.stats()).events:
                await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop(5)


async def test_a_single_event_hec_refuses_with_413_is_dead_lettered_not_retried_forever(
    fake_hec: FakeHec, connect: Connect, outbox: Outbox
) -> None:
    # max_request_bytes set above the input's max_content_length: the batch's 413 halves it,
    # and the event that is still too large alone goes to dead letters with HEC's reason.
    fake_hec.max_content_length = 4000  # each sample is ~2 KB, the big one ~6 KB
    output = await connect(gzip=False, max_request_bytes=100_000)
    records = [record_of(Description="x" * 2000), *make_records(3)]
    await deliver_through_a_dispatcher(outbox, output, records, lambda: len(fake_hec.events) == 3)
    [letter] = await outbox.dead_letters()
    assert letter.reason.startswith("too large even alone: ")
    assert "HTTP 413" in letter.reason and "maximum is 4000" in letter.reason
    assert sorted(fake_hec.values("canary_event_id")) == sorted(r.event.id for r in records[1:])


async def test_a_code_6_split_through_the_dispatcher_delivers_everything_else_once(
    fake_hec: FakeHec, connect: Connect, outbox: Outbox
) -> None:
    records = make_records(5)
    fake_hec.poison.add(records[2].event.fingerprint)
    output = await connect()
    await deliver_through_a_dispatcher(outbox, output, records, lambda: len(fake_hec.events) == 4)
    [letter] = await outbox.dead_letters()
    assert "HEC code 6: Invalid data format" in letter.reason
    assert fake_hec.duplicates() == 0
    assert fake_hec.values("canary_event_id") == [
        r.event.id for i, r in enumerate(records) if i != 2
    ]


# Code 6 and invalid-event-number N


def split(count: int, number: Any, code: int = 6) -> Respond:
    return Respond(
        400, {"text": "Invalid data format", "code": code, "invalid-event-number": number}
    )


@pytest.mark.parametrize(
    ("number", "bad"),
    [(0, 0), (3, 3), ("2", 2)],
    ids=["first", "last", "a string"],
)
async def test_invalid_event_number_splits_the_request_there(
    fake_hec: FakeHec, connect: Connect, number: Any, bad: int
) -> None:
    fake_hec.faults.push(split(4, number))
    result = await (await connect()).send(make_records(4))
    assert isinstance(result, Partial) and sorted(result.results) == list(range(bad, 4))
    assert isinstance(result.results[bad], Reject)
    assert all(isinstance(result.results[i], Retry) for i in range(bad + 1, 4))


@pytest.mark.parametrize("number", [4, 99, -1, "x", True])
async def test_an_invalid_event_number_outside_the_request_says_so(
    fake_hec: FakeHec, connect: Connect, number: Any
) -> None:
    fake_hec.faults.push(split(4, number))
    result = await (await connect()).send(make_records(4))
    assert isinstance(result, Reject), result
    assert "HEC code 6: Invalid data format" in result.reason
    assert "cannot tell which event" in result.reason


async def test_a_split_in_the_second_of_two_requests_maps_onto_the_batch(
    fake_hec: FakeHec, connect: Connect
) -> None:
    records = make_records(8)
    fake_hec.poison.add(records[6].event.fingerprint)
    output = await connect(max_request_bytes=5000)
    result = await output.send(records)
    assert (
        len(fake_hec.requests) > 1 and records[6].event.id.encode() not in fake_hec.requests[0].body
    )
    assert isinstance(result, Partial) and sorted(result.results) == [6, 7]
    assert isinstance(result.results[6], Reject) and isinstance(result.results[7], Retry)


# Indexer acknowledgement


async def test_the_channel_is_one_guid_per_output_on_every_request(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    output = await connect(indexer_ack=True)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", output.channel
    )
    for start in (0, 1):
        assert await output.send(make_records(1, start=start)) == Delivered()
    await output.healthcheck()
    channels = {r.headers["X-Splunk-Request-Channel"] for r in fake_hec.requests}
    assert channels == {output.channel}
    assert {r.query["channel"] for r in fake_hec.requests if r.path.endswith("/ack")} == {
        output.channel
    }


async def test_the_acks_of_a_packed_batch_are_polled_together(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # One poll may ask for many ids: {"acks": [0, 1, 2]} (About HEC Indexer Acknowledgment). A
    # batch packed into several requests sends them all, then waits for their acks at once.
    fake_hec.acks = True
    fake_hec.ack_after_polls = 1
    output = await connect(indexer_ack=True, max_request_bytes=4500)
    records = make_records(12)
    assert await output.send(records) == Delivered()
    posts = [r for r in fake_hec.requests if r.path.endswith("/event")]
    polls = [r for r in fake_hec.requests if r.path.endswith("/ack")]
    ids = list(range(len(posts)))
    assert len(posts) > 2
    assert [orjson.loads(p.body)["acks"] for p in polls] == [ids, ids]
    assert max(p.arrived for p in posts) <= min(p.arrived for p in polls)
    assert fake_hec.values("canary_event_id") == [r.event.id for r in records]


async def test_an_ack_that_does_not_come_resends_only_that_requests_events(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = None
    fake_hec.ack_faults.push(Respond(200, {"acks": {"0": True}}))
    output = await connect(indexer_ack=True, max_request_bytes=4500, ack_timeout_secs=0.2)
    records = make_records(8)
    result = await output.send(records)
    first = next(r for r in fake_hec.requests if r.path.endswith("/event")).body.count(b"\n")
    assert isinstance(result, Partial) and sorted(result.results) == list(range(first, 8))
    for item in result.results.values():
        assert isinstance(item, Retry) and re.search(r"ackId [1-9] not acknowledged", item.reason)
    polls = [orjson.loads(r.body)["acks"] for r in fake_hec.requests if r.path.endswith("/ack")]
    # The scripted first poll (not recorded) confirmed id 0; later polls ask only for the rest.
    assert fake_hec.ack_polls == len(polls) + 1 and all(0 not in poll for poll in polls)


async def test_acks_lost_in_an_indexer_restart_time_out_into_a_resend(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # A restarted indexer answers false for ids it issued before: only the timeout ends it.
    fake_hec.acks = True
    fake_hec.ack_after_polls = None
    output = await connect(indexer_ack=True, ack_timeout_secs=0.3)
    records = make_records(2)
    sending = asyncio.create_task(output.send(records))
    await fake_hec.wait_until(lambda: fake_hec.ack_polls >= 1)
    fake_hec.restart()
    fake_hec.ack_after_polls = 0
    retry = await sending
    assert isinstance(retry, Retry) and "not acknowledged within 0.3 s" in retry.reason
    assert await output.send(records) == Delivered()
    assert fake_hec.duplicates() == 2  # at least once: the resend is told apart by fingerprint


async def test_an_ack_id_issued_twice_in_one_batch_resends_the_first_requests_events(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # Ids count from 0 per channel and a restart starts them again: the same id twice in one
    # batch means the node forgot the first request's id (a scripted 200 stands in for it).
    fake_hec.acks = True
    fake_hec.faults.push(Respond(200, {"text": "Success", "code": 0, "ackId": 0}))
    output = await connect(indexer_ack=True, max_request_bytes=4500)
    result = await output.send(make_records(4))
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1]
    assert all("ackId 0 issued twice" in item.reason for item in result.results.values())


async def test_the_ack_endpoint_answering_code_14_mid_stream_trusts_the_200(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.ack_faults.push(Respond(400, {"text": "ACK is disabled", "code": 14}))
    output = await connect(indexer_ack=True)
    with structlog.testing.capture_logs() as logs:
        assert await output.send(make_records(2)) == Delivered()
    assert [e["sign"] for e in logs if e["log_level"] == "warning"] == [
        "HEC code 14: ACK is disabled"
    ]


async def test_an_ack_id_given_as_a_string_is_still_waited_for(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.faults.push(Respond(200, {"text": "Success", "code": 0, "ackId": "7"}))
    fake_hec.ack_faults.push(Respond(200, {"acks": {"7": True}}))
    assert await (await connect(indexer_ack=True)).send(make_records(1)) == Delivered()
    assert fake_hec.ack_polls == 1


# Failover and Retry-After


async def test_a_busy_node_asking_to_wait_does_not_hold_back_a_healthy_one(
    fake_hec: FakeHec, connect: Connect
) -> None:
    async with FakeHec() as busy:
        busy.faults.push(Respond(503, {"text": "Server is busy", "code": 9}, {"Retry-After": "30"}))
        output = await connect([busy.url, fake_hec.url])
        retry = await output.send(make_records(1))
        assert isinstance(retry, Retry) and "HEC code 9: Server is busy" in retry.reason
        # Another node can take the retry now: no 30 s wait for the whole output.
        assert retry.retry_after is None
        await asyncio.sleep(1.1)  # past the failover cooldown, not past the node's Retry-After
        for start in (1, 2, 3):
            assert await output.send(make_records(1, start=start)) == Delivered()
        assert (len(busy.requests), len(fake_hec.events)) == (0, 3)


async def test_when_every_node_asked_to_wait_the_retry_waits_for_the_soonest(
    fake_hec: FakeHec, connect: Connect
) -> None:
    async with FakeHec() as other:
        busy = {"text": "Server is busy", "code": 9}
        other.faults.push(Respond(503, busy, {"Retry-After": "30"}))
        fake_hec.faults.push(Respond(503, busy, {"Retry-After": "10"}))
        output = await connect([other.url, fake_hec.url])
        assert (await output.send(make_records(1))).retry_after is None  # type: ignore[union-attr]
        retry = await output.send(make_records(1))
        assert isinstance(retry, Retry) and retry.retry_after is not None
        assert 9 < retry.retry_after <= 10


async def test_a_single_busy_node_still_passes_retry_after_on(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.faults.push(
        Respond(429, {"text": "HEC queue is at capacity", "code": 26}, {"Retry-After": "12"})
    )
    retry = await (await connect()).send(make_records(1))
    assert isinstance(retry, Retry) and retry.retry_after == 12.0


# Splunk Cloud and URLs


def test_the_splunk_cloud_url_form_is_accepted_on_port_443() -> None:
    # https://http-inputs-<host>.splunkcloud.com:443/<endpoint> (Send data to HEC on Splunk Cloud)
    config = hec_config("https://http-inputs-acme.splunkcloud.com")
    assert config.url == ("https://http-inputs-acme.splunkcloud.com",)
    assert endpoint_name(URL(config.url[0])) == "http-inputs-acme.splunkcloud.com:443"
    explicit = hec_config("https://http-inputs-acme.splunkcloud.com:443/")
    assert URL(explicit.url[0]).port == 443


@pytest.mark.parametrize(
    "path", ["/services/collector", "/services/collector/event", "/services/collector/event/1.0"]
)
def test_an_endpoint_path_in_the_url_is_refused_with_the_base_url_hint(path: str) -> None:
    with pytest.raises(ValidationError, match="give the base URL"):
        hec_config("https://http-inputs-acme.splunkcloud.com:443" + path)


async def test_a_reverse_proxy_prefix_reaches_every_hec_route(connect: Connect) -> None:
    async with FakeHec(acks=True, prefix="/splunk/hec") as proxied:
        output = await connect(proxied.url + "/splunk/hec/", indexer_ack=True)
        assert await output.send(make_records(2)) == Delivered()
        await output.healthcheck()
        await output.liveness()
        assert {path for _, path in proxied.seen} == {
            "/splunk/hec/services/collector/event",
            "/splunk/hec/services/collector/ack",
            "/splunk/hec/services/collector/health",
        }
        assert len(proxied.events) == 2


async def test_splunk_clouds_channel_missing_code_28_keeps_the_events_for_an_operator(
    fake_hec: FakeHec, connect: Connect
) -> None:
    # Splunk Cloud answers code 28 where Splunk Enterprise answers 10 (not in Splunk's table).
    fake_hec.faults.push(
        Respond(
            400, {"text": "Data channel is missing. If you have multiple indexers, ...", "code": 28}
        )
    )
    retry = await (await connect()).send(make_records(2))
    assert isinstance(retry, Retry) and retry.operator_action, retry
    assert "HEC code 28" in retry.reason
