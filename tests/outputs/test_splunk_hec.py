"""The splunk_hec output against the fake HEC: envelope, every row of the status/code table,
indexer acknowledgement, failover, faults on the wire and the healthcheck."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from forwarder.events import EventKind, parse_event
from forwarder.mappers.base import Record
from forwarder.outputs.base import (
    Delivered,
    HealthcheckError,
    Partial,
    Reject,
    Retry,
    SendResult,
    TooLarge,
)
from forwarder.outputs.splunk_hec import (
    SplunkHecConfig,
    SplunkHecOutput,
    hec_envelope,
)
from tests.helpers import closed_port_url, sample, started_outputs
from tests.peers._server import Delay, Reset, Respond
from tests.peers.fake_hec import DEFAULT_TOKEN, FakeHec
from tests.peers.records import RECEIVED, make_records, sample_records

pytest_plugins = ["tests.peers.fixtures"]

Connect = Callable[..., Awaitable[SplunkHecOutput]]


def hec_config(url: str | list[str], **options: Any) -> SplunkHecConfig:
    return SplunkHecConfig.model_validate(
        {
            "name": "hec",
            "type": "splunk_hec",
            "url": url,
            "token": DEFAULT_TOKEN,
            "request_timeout_secs": 5,
            "ack_poll_interval_secs": 0.02,
            **options,
        }
    )


@pytest.fixture
async def connect(fake_hec: FakeHec) -> AsyncIterator[Connect]:
    """Build and start outputs (to the fake HEC unless `url` is given); closed after the test."""

    def make(url: str | list[str] | None = None, **options: Any) -> SplunkHecOutput:
        return SplunkHecOutput(hec_config(url or fake_hec.url, **options))

    async with started_outputs(make) as build:
        yield build


def assert_retry(result: SendResult, *, operator: bool = False) -> Retry:
    assert isinstance(result, Retry), result
    assert result.operator_action is operator, result
    return result


# Configuration


def test_config_needs_a_url_and_a_token() -> None:
    with pytest.raises(ValidationError, match="at least one HEC URL"):
        SplunkHecConfig.model_validate({"name": "h", "type": "splunk_hec", "token": "t"})
    with pytest.raises(ValidationError, match="token"):
        SplunkHecConfig.model_validate({"name": "h", "type": "splunk_hec", "url": "http://s"})


def test_config_refuses_the_endpoint_path_in_the_url() -> None:
    with pytest.raises(ValidationError, match="without /services/collector"):
        hec_config("https://splunk.example:8088/services/collector/event")


def test_config_defaults_follow_splunk_cloud_limits_and_keep_the_token_secret() -> None:
    config = hec_config("https://splunk.example:8088/")
    assert config.url == ("https://splunk.example:8088",)
    assert config.gzip is True
    assert config.max_request_bytes == 900_000
    assert config.indexer_ack is False
    assert config.tls.verify is True
    assert DEFAULT_TOKEN not in repr(config)


def test_each_output_instance_has_its_own_channel_unless_configured() -> None:
    first = SplunkHecOutput(hec_config("http://s:8088"))
    second = SplunkHecOutput(hec_config("http://s:8088"))
    assert first.channel != second.channel
    fixed = "0b9a1c57-3f9e-4d0c-9a55-6a0b3c2d1e0f"
    assert SplunkHecOutput(hec_config("http://s:8088", channel=fixed)).channel == fixed


# The envelope


def event_of(name: str) -> Record:
    return Record(event=parse_event(sample(name), received_at=RECEIVED), body={"k": "v"})


def test_envelope_carries_time_host_source_sourcetype_fields_and_the_body() -> None:
    record = make_records(1)[0]
    envelope = hec_envelope(record, hec_config("http://s"))
    assert envelope["time"] == 1772697601.0  # 2026-03-05 08:00:01 UTC, epoch seconds
    assert envelope["host"] == "web-dmz-02"
    assert envelope["source"] == "canary-forwarder"
    assert envelope["sourcetype"] == "canary_alerts"
    assert "index" not in envelope
    assert envelope["fields"] == {
        "canary_event_id": record.event.id,
        "canary_fingerprint": record.event.fingerprint,
        "canary_kind": "incident",
        "canary_log_type": "4002",
    }
    assert envelope["event"] == record.body


def test_envelope_time_keeps_milliseconds() -> None:
    record = event_of("incident_timestamp_epoch")
    envelope = hec_envelope(record, hec_config("http://s"))
    assert envelope["time"] == round(record.event.timestamp.timestamp(), 3)
    assert isinstance(envelope["time"], float)


def test_envelope_options_override_host_source_sourcetype_and_set_index() -> None:
    config = hec_config(
        "http://s", host="forwarder-1", source="canary", sourcetype="my:canary", index="security"
    )
    envelope = hec_envelope(make_records(1, body="text")[0], config)
    assert (envelope["host"], envelope["source"]) == ("forwarder-1", "canary")
    assert (envelope["sourcetype"], envelope["index"]) == ("my:canary", "security")
    assert envelope["event"].startswith("CEF:0|")


@pytest.mark.parametrize(
    ("name", "kind", "sourcetype"),
    [
        ("incident_ssh_login", EventKind.INCIDENT, "canary_alerts"),
        ("canarytoken_web_bug", EventKind.CANARYTOKEN, "canary_alerts"),
        ("operational_disconnected", EventKind.OPERATIONAL, "canary_alerts"),
        ("audit_user_login", EventKind.AUDIT, "canary_console_audit"),
        ("test_event", EventKind.TEST, "canary_test_connection"),
    ],
)
def test_default_sourcetypes_are_the_consoles_own(
    name: str, kind: EventKind, sourcetype: str
) -> None:
    record = event_of(name)
    assert record.event.kind is kind
    assert hec_envelope(record, hec_config("http://s"))["sourcetype"] == sourcetype


def test_audit_events_without_a_canary_name_leave_host_to_hec() -> None:
    envelope = hec_envelope(event_of("audit_user_login"), hec_config("http://s"))
    assert "host" not in envelope
    assert "canary_log_type" not in envelope["fields"]


# Sending


async def test_a_batch_is_one_gzipped_request_of_concatenated_envelopes(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect()
    records = make_records(3)
    assert await output.send(records) == Delivered()
    assert len(fake_hec.requests) == 1
    request = fake_hec.requests[0]
    assert request.path == "/services/collector/event"
    assert request.headers["Authorization"] == f"Splunk {DEFAULT_TOKEN}"
    assert request.headers["X-Splunk-Request-Channel"] == output.channel
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.wire_bytes < len(request.body)
    assert request.body.count(b"\n") == 3 and not request.body.startswith(b"[")
    assert fake_hec.values("canary_fingerprint") == [r.event.fingerprint for r in records]


async def test_gzip_can_be_turned_off(fake_hec: FakeHec, connect: Connect) -> None:
    output = await connect(gzip=False)
    assert await output.send(make_records(2, body="text")) == Delivered()
    assert "Content-Encoding" not in fake_hec.requests[0].headers
    assert [e.envelope["event"][:6] for e in fake_hec.events] == ["CEF:0|", "CEF:0|"]


async def test_an_empty_batch_sends_nothing(fake_hec: FakeHec, connect: Connect) -> None:
    output = await connect()
    assert await output.send([]) == Delivered()
    assert fake_hec.requests == []


async def test_blank_and_unencodable_records_are_refused_and_the_rest_delivered(
    fake_hec: FakeHec, connect: Connect
) -> None:
    good = make_records(3)
    batch = [good[0], Record(event=good[1].event, body="  "), good[2]]
    batch.append(Record(event=good[1].event, body={"not json": {1, 2}}))
    result = await (await connect()).send(batch)
    assert isinstance(result, Partial)
    assert set(result.results) == {1, 3}
    assert all(isinstance(item, Reject) for item in result.results.values())
    assert "blank" in result.results[1].reason
    assert fake_hec.values("canary_fingerprint") == [
        good[0].event.fingerprint,
        good[2].event.fingerprint,
    ]


@pytest.mark.parametrize("format_name", ["json", "splunk_console", "ecs", "cef", "leef", "rfc5424"])
async def test_every_sample_in_every_format_is_accepted(
    fake_hec: FakeHec, connect: Connect, format_name: str
) -> None:
    records = sample_records(format_name)
    assert await (await connect()).send(records) == Delivered()
    assert fake_hec.values("canary_fingerprint") == [r.event.fingerprint for r in records]
    assert {e.envelope["sourcetype"] for e in fake_hec.events} == {
        "canary_alerts",
        "canary_console_audit",
        "canary_test_connection",
    }


# The status and code table: what the fake HEC does by itself


async def test_invalid_token_code_4_keeps_events_for_an_operator(connect: Connect) -> None:
    output = await connect(token="00000000-0000-4000-8000-000000000000")
    retry = assert_retry(await output.send(make_records(1)), operator=True)
    assert "HTTP 403" in retry.reason and "HEC code 4: Invalid token" in retry.reason


async def test_disabled_token_code_1_keeps_events_for_an_operator(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.token_disabled = True
    retry = assert_retry(await (await connect()).send(make_records(1)), operator=True)
    assert "HEC code 1: Token disabled" in retry.reason


async def test_invalid_event_code_6_dead_letters_that_event_and_resends_the_rest(
    fake_hec: FakeHec, connect: Connect
) -> None:
    records = make_records(4)
    fake_hec.poison.add(records[1].event.fingerprint)
    result = await (await connect()).send(records)
    assert isinstance(result, Partial)
    assert 0 not in result.results  # indexed before HEC stopped
    bad = result.results[1]
    assert isinstance(bad, Reject) and "HEC code 6: Invalid data format" in bad.reason
    for index in (2, 3):
        assert_retry(result.results[index])
    assert fake_hec.values("canary_fingerprint") == [records[0].event.fingerprint]


async def test_after_a_split_the_resent_events_arrive_once(
    fake_hec: FakeHec, connect: Connect
) -> None:
    records = make_records(4)
    fake_hec.poison.add(records[1].event.fingerprint)
    output = await connect()
    result = await output.send(records)
    assert isinstance(result, Partial)
    resend = [records[i] for i, item in result.results.items() if isinstance(item, Retry)]
    assert await output.send(resend) == Delivered()
    assert fake_hec.duplicates() == 0
    assert len(fake_hec.events) == 3


async def test_index_not_allowed_code_7_is_a_config_error(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.allowed_indexes = {"main"}
    result = await (await connect(index="secret")).send(make_records(2))
    assert isinstance(result, Partial)
    assert_retry(result.results[0], operator=True)
    assert "HEC code 7: Incorrect index" in result.results[0].reason
    assert_retry(result.results[1])
    assert fake_hec.events == []


async def test_a_request_over_max_content_length_is_413_too_large(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.max_content_length = 2048
    result = await (await connect(gzip=False)).send(make_records(5))
    assert isinstance(result, TooLarge) and "HTTP 413" in result.reason
    assert fake_hec.events == []


async def test_a_batch_over_max_request_bytes_goes_in_several_requests_under_it(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect(max_request_bytes=4096)
    records = make_records(12)
    assert await output.send(records) == Delivered()
    assert len(fake_hec.requests) > 1
    assert all(len(request.body) <= 4096 for request in fake_hec.requests)
    assert fake_hec.values("canary_event_id") == [r.event.id for r in records]


async def test_a_record_over_max_request_bytes_alone_is_refused_and_the_rest_sent(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect(max_request_bytes=4096)
    big = Record(event=make_records(1)[0].event, body="x" * 5000)
    result = await output.send([big, *make_records(1, start=9)])
    assert isinstance(result, Partial) and list(result.results) == [0]
    assert "5280 bytes > max_request_bytes" in result.results[0].reason
    assert len(fake_hec.events) == 1
    assert await output.send([big]) == Partial(result.results)
    assert len(fake_hec.requests) == 1


# The status and code table: every row, as HEC would answer it

TABLE_ROWS = [
    # (HTTP status, code, text, expected result, needs an operator)
    (403, 1, "Token disabled", Retry, True),
    (401, 2, "Token is required", Retry, True),
    (401, 3, "Invalid authorization", Retry, True),
    (403, 4, "Invalid token", Retry, True),
    (400, 5, "No data", Reject, False),
    (400, 6, "Invalid data format", Reject, False),
    (400, 7, "Incorrect index", Retry, True),
    (500, 8, "Internal server error", Retry, False),
    (503, 9, "Server is busy", Retry, False),
    (400, 10, "Data channel is missing", Retry, True),
    (400, 11, "Invalid data channel", Retry, True),
    (400, 12, "Event field is required", Reject, False),
    (400, 13, "Event field cannot be blank", Reject, False),
    (400, 14, "ACK is disabled", Retry, True),
    (400, 15, "Error in handling indexed fields", Reject, False),
    (400, 16, "Query string authorization is not enabled", Retry, True),
    (503, 18, "HEC is unhealthy, queues are full", Retry, False),
    (503, 19, "HEC is unhealthy, ack service unavailable", Retry, False),
    (503, 20, "HEC is unhealthy, queues are full, ack service unavailable", Retry, False),
    (503, 23, "Server is shutting down", Retry, False),
    (200, 24, "HEC queue is approaching its capacity limit", Delivered, False),
    (200, 25, "HEC ACK is approaching its capacity limit", Delivered, False),
    (429, 26, "HEC queue is at capacity", Retry, False),
    (429, 27, "HEC ACK channel is at capacity", Retry, False),
]


@pytest.mark.parametrize(("status", "code", "text", "expected", "operator"), TABLE_ROWS)
async def test_every_code_of_the_table_is_classified_as_it_says(
    fake_hec: FakeHec,
    connect: Connect,
    status: int,
    code: int,
    text: str,
    expected: type,
    operator: bool,
) -> None:
    fake_hec.faults.push(Respond(status, {"text": text, "code": code}))
    result = await (await connect()).send(make_records(2))
    assert isinstance(result, expected), result
    if isinstance(result, Retry | Reject):
        assert f"HEC code {code}: {text}" in result.reason
    if isinstance(result, Retry):
        assert result.operator_action is operator


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (6, "Invalid data format"),
        (12, "Event field is required"),
        (13, "Event field cannot be blank"),
        (15, "Error in handling indexed fields"),
    ],
)
async def test_a_code_with_invalid_event_number_splits_the_batch_there(
    fake_hec: FakeHec, connect: Connect, code: int, text: str
) -> None:
    answer = {"text": text, "code": code, "invalid-event-number": 2}
    fake_hec.faults.push(Respond(400, answer))
    result = await (await connect()).send(make_records(4))
    assert isinstance(result, Partial)
    assert sorted(result.results) == [2, 3]
    assert isinstance(result.results[2], Reject) and f"HEC code {code}" in result.results[2].reason
    assert_retry(result.results[3])


async def test_an_invalid_event_number_outside_the_batch_is_not_trusted(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.faults.push(Respond(400, {"text": "x", "code": 6, "invalid-event-number": 7}))
    assert isinstance(await (await connect()).send(make_records(2)), Reject)


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_answers_honour_retry_after_seconds(
    fake_hec: FakeHec, connect: Connect, status: int
) -> None:
    fake_hec.faults.push(
        Respond(status, {"text": "Server is busy", "code": 9}, {"Retry-After": "7"})
    )
    retry = assert_retry(await (await connect()).send(make_records(1)))
    assert retry.retry_after == 7.0


async def test_retry_after_may_be_an_http_date(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.faults.push(
        Respond(
            503,
            {"text": "Server is busy", "code": 9},
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        )
    )
    retry = assert_retry(await (await connect()).send(make_records(1)))
    assert retry.retry_after == 0.0  # a date in the past: retry whenever the backoff says


async def test_a_429_storm_is_retried_until_it_passes_and_nothing_duplicates(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.faults.storm(
        3, 429, retry_after="2", body={"text": "HEC queue is at capacity", "code": 26}
    )
    output = await connect()
    records = make_records(5)
    results = [await output.send(records) for _ in range(4)]
    for result in results[:3]:
        assert assert_retry(result).retry_after == 2.0
    assert results[3] == Delivered()
    assert len(fake_hec.events) == 5 and fake_hec.duplicates() == 0


@pytest.mark.parametrize("body", ["<html>Down for maintenance</html>", "", {"status": "ok"}])
async def test_a_200_without_hecs_answer_keeps_the_events_for_an_operator(
    fake_hec: FakeHec, connect: Connect, body: Any
) -> None:
    """A proxy's maintenance page with 200 was taken for delivery: the events were acked and
    gone, none of them in Splunk."""
    fake_hec.faults.push(Respond(200, body))
    output = await connect()
    retry = assert_retry(await output.send(make_records(2)), operator=True)
    assert "HTTP 200 without HEC's answer" in retry.reason and "check `url`" in retry.reason
    assert fake_hec.events == []
    assert await output.send(make_records(2)) == Delivered()  # HEC itself answers again


async def test_the_healthcheck_fails_on_a_200_without_hecs_answer(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect()
    fake_hec.faults.push(Respond(200, "<html>portal</html>"))  # the health request's answer
    fake_hec.faults.push(Respond(200, "<html>portal</html>"))  # the probe send's
    with pytest.raises(HealthcheckError, match="probe send: HTTP 200"):
        await output.healthcheck()


async def test_a_502_from_a_load_balancer_is_retried(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.faults.push(Respond(502, "<html>Bad Gateway</html>"))
    retry = assert_retry(await (await connect()).send(make_records(1)))
    assert "HTTP 502" in retry.reason and "Bad Gateway" in retry.reason


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"text": "The requested URL was not found on this server.", "code": 404}),
        (404, "<html><body><h1>404 Not Found</h1><hr>nginx</body></html>"),
        (405, "<html><body><h1>405 Not Allowed</h1><hr>nginx</body></html>"),
        (400, "<html><body>The plain HTTP request was sent to HTTPS port</body></html>"),
        (501, "<html><body><h1>501 Not Implemented</h1></body></html>"),
    ],
)
async def test_a_wrong_url_keeps_the_events_for_an_operator(
    fake_hec: FakeHec, connect: Connect, status: int, body: Any
) -> None:
    fake_hec.faults.push(Respond(status, body))
    retry = assert_retry(await (await connect()).send(make_records(2)), operator=True)
    assert f"HTTP {status}" in retry.reason and "check `url`" in retry.reason


async def test_a_wrong_path_prefix_keeps_the_events_for_an_operator(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect(fake_hec.url + "/splunk")
    retry = assert_retry(await output.send(make_records(1)), operator=True)
    assert "HTTP 404" in retry.reason and "reverse-proxy path prefix" in retry.reason
    assert fake_hec.events == []
    with pytest.raises(HealthcheckError, match=r"health: HTTP 404.*check `url`"):
        await output.healthcheck()


# Faults on the wire: never raised, always a Retry with the reason


async def test_a_slow_answer_times_out_into_a_retry(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.faults.push(Delay(30))
    output = await connect(request_timeout_secs=0.3)
    retry = assert_retry(await output.send(make_records(1)))
    assert "no answer within" in retry.reason


async def test_a_reset_connection_is_a_retry(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.faults.push(Reset())
    output = await connect()
    retry = assert_retry(await output.send(make_records(1)))
    assert "127.0.0.1" in retry.reason
    assert await output.send(make_records(1)) == Delivered()


async def test_a_refused_connection_is_a_retry(connect: Connect) -> None:
    retry = assert_retry(await (await connect(closed_port_url())).send(make_records(1)))
    assert "cannot connect" in retry.reason


async def test_an_unresolvable_host_is_a_retry(connect: Connect) -> None:
    output = await connect("http://hec.invalid:8088", connect_timeout_secs=2)
    retry = assert_retry(await output.send(make_records(1)))
    assert "hec.invalid" in retry.reason


# Several URLs


async def test_a_dead_node_is_benched_and_the_next_send_goes_to_a_live_one(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect([closed_port_url(), fake_hec.url])
    assert_retry(await output.send(make_records(1)))
    assert await output.send(make_records(1, start=1)) == Delivered()
    assert await output.send(make_records(1, start=2)) == Delivered()  # the dead one is benched
    assert len(fake_hec.events) == 2


async def test_live_nodes_share_the_sends_round_robin(fake_hec: FakeHec, connect: Connect) -> None:
    async with FakeHec() as other:
        output = await connect([fake_hec.url, other.url])
        for start in range(4):
            assert await output.send(make_records(1, start=start)) == Delivered()
        assert (len(fake_hec.events), len(other.events)) == (2, 2)


async def test_a_busy_node_is_benched(fake_hec: FakeHec, connect: Connect) -> None:
    async with FakeHec() as other:
        other.faults.push(Respond(503, {"text": "Server is busy", "code": 9}))
        output = await connect([other.url, fake_hec.url])
        assert_retry(await output.send(make_records(1)))
        for start in range(1, 3):
            assert await output.send(make_records(1, start=start)) == Delivered()
        assert (len(other.events), len(fake_hec.events)) == (0, 2)


# Indexer acknowledgement


async def test_with_acks_a_batch_counts_once_acknowledged(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = 2
    assert await (await connect(indexer_ack=True)).send(make_records(3)) == Delivered()
    assert fake_hec.ack_polls == 3
    assert len(fake_hec.events) == 3


async def test_an_ack_that_never_comes_times_out_into_a_resend(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = None
    output = await connect(indexer_ack=True, ack_timeout_secs=0.3)
    records = make_records(3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    retry = assert_retry(await output.send(records))
    assert 0.3 <= loop.time() - started < 3
    assert "ackId 0 not acknowledged within 0.3 s" in retry.reason
    fake_hec.ack_after_polls = 0
    assert await output.send(records) == Delivered()
    # At least once: the resend duplicates, and the indexed fingerprint shows it.
    assert fake_hec.duplicates() == 3


async def test_an_ack_timeout_reports_hecs_answer_and_does_not_bench_the_node(
    fake_hec: FakeHec, connect: Connect
) -> None:
    async with FakeHec(acks=True) as other:
        fake_hec.acks = True
        fake_hec.ack_after_polls = None
        # A poll at once, then the pause runs into the deadline: the second and last poll
        # starts there. Each poll takes HEC a moment to answer, as on a loaded indexer.
        fake_hec.ack_faults.push(Delay(0.05), Delay(0.05))
        output = await connect(
            [fake_hec.url, other.url],
            indexer_ack=True,
            ack_timeout_secs=0.2,
            ack_poll_interval_secs=1,
        )
        retry = assert_retry(await output.send(make_records(1)))
        assert retry.reason.endswith(
            "ackId 0 not acknowledged within 0.2 s (HEC kept answering false); sending again"
        )
        assert fake_hec.ack_polls == 2
        fake_hec.ack_after_polls = 0
        for start in (1, 2):
            assert await output.send(make_records(1, start=start)) == Delivered()
        # The sends kept taking turns: the node that answered every poll was not benched.
        assert (len(fake_hec.events), len(other.events)) == (2, 1)


async def test_an_ack_timeout_reports_the_last_poll_that_went_wrong(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    fake_hec.ack_after_polls = None
    busy = Respond(503, {"text": "Server is busy", "code": 9})
    fake_hec.ack_faults.push(busy, busy)
    output = await connect(indexer_ack=True, ack_timeout_secs=0.1, ack_poll_interval_secs=1)
    retry = assert_retry(await output.send(make_records(1)))
    assert retry.reason.endswith(
        "(the last poll answered HTTP 503: HEC code 9: Server is busy); sending again"
    )
    assert fake_hec.ack_polls == 2


async def test_ack_polls_survive_failing_polls(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.acks = True
    fake_hec.ack_faults.push(Respond(503, {"text": "Server is busy", "code": 9}), Reset())
    assert await (await connect(indexer_ack=True)).send(make_records(1)) == Delivered()
    assert fake_hec.ack_polls == 3


async def test_ack_polls_go_to_the_node_that_took_the_batch(
    fake_hec: FakeHec, connect: Connect
) -> None:
    async with FakeHec(acks=True) as other:
        fake_hec.acks = True
        output = await connect([other.url, fake_hec.url], indexer_ack=True)
        assert await output.send(make_records(1)) == Delivered()
        assert (other.ack_polls, fake_hec.ack_polls) == (1, 0)
        assert (
            other.requests[0].query == {}
            and other.requests[0].headers["X-Splunk-Request-Channel"] == output.channel
        )


async def test_with_acks_on_but_off_on_the_token_the_200_is_trusted(
    fake_hec: FakeHec, connect: Connect
) -> None:
    assert await (await connect(indexer_ack=True)).send(make_records(2)) == Delivered()
    assert fake_hec.ack_polls == 0


async def test_a_split_batch_waits_for_the_ack_of_the_events_before_the_bad_one(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    records = make_records(3)
    fake_hec.poison.add(records[1].event.fingerprint)
    output = await connect(indexer_ack=True, ack_timeout_secs=0.2)
    result = await output.send(records)
    assert isinstance(result, Partial) and sorted(result.results) == [1, 2]
    fake_hec.ack_after_polls = None
    result = await output.send(records)
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1, 2]
    assert "not acknowledged" in result.results[0].reason


async def test_a_split_without_an_ack_id_sends_the_events_before_the_bad_one_again(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.acks = True
    split = {"text": "Invalid data format", "code": 6, "invalid-event-number": 2}
    fake_hec.faults.push(Respond(400, split))
    output = await connect(indexer_ack=True)
    with structlog.testing.capture_logs() as logs:
        result = await output.send(make_records(4))
    # Nothing acknowledges 0 and 1: taken on trust, a lost one would be gone.
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1, 2, 3]
    assert isinstance(result.results[0], Retry) and "without an ackId" in result.results[0].reason
    assert isinstance(result.results[2], Reject)
    assert not any("acknowledgement off" in entry["event"] for entry in logs)
    # And a token whose acknowledgement really is off is still reported.
    fake_hec.acks = False
    with structlog.testing.capture_logs() as logs:
        assert await output.send(make_records(2, start=4)) == Delivered()
    assert any("acknowledgement off" in entry["event"] for entry in logs)


# Healthcheck


async def test_healthcheck_passes_without_indexing_anything(
    fake_hec: FakeHec, connect: Connect
) -> None:
    await (await connect()).healthcheck()
    paths = [r.path for r in fake_hec.requests]
    assert paths == ["/services/collector/health", "/services/collector/event"]
    assert fake_hec.requests[1].body == b""
    assert fake_hec.events == []


async def test_healthcheck_tells_a_bad_token(connect: Connect) -> None:
    output = await connect(token="00000000-0000-4000-8000-000000000000")
    with pytest.raises(HealthcheckError, match="Invalid token"):
        await output.healthcheck()


async def test_healthcheck_tells_a_disabled_token(fake_hec: FakeHec, connect: Connect) -> None:
    fake_hec.token_disabled = True
    with pytest.raises(HealthcheckError, match="Token disabled"):
        await (await connect()).healthcheck()


async def test_healthcheck_fails_while_hec_is_unhealthy(
    fake_hec: FakeHec, connect: Connect
) -> None:
    fake_hec.healthy = False
    with pytest.raises(HealthcheckError, match=r"HTTP 503.*queues are full"):
        await (await connect()).healthcheck()


async def test_healthcheck_fails_when_nothing_answers(connect: Connect) -> None:
    with pytest.raises(HealthcheckError, match="cannot connect"):
        await (await connect(closed_port_url())).healthcheck()


async def test_healthcheck_passes_when_one_node_of_several_is_healthy(
    fake_hec: FakeHec, connect: Connect
) -> None:
    await (await connect([closed_port_url(), fake_hec.url])).healthcheck()


async def test_healthcheck_is_not_held_up_by_a_node_that_never_answers(
    fake_hec: FakeHec, connect: Connect
) -> None:
    with socket.socket() as silent:  # takes connections (the kernel does), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        output = await connect([url, fake_hec.url], request_timeout_secs=60)
        await asyncio.wait_for(output.healthcheck(), 5)
        dead = closed_port_url()
        both_fail = await connect([url, dead], request_timeout_secs=0.5)
        with pytest.raises(HealthcheckError) as failed:
            await both_fail.healthcheck()
    problems = str(failed.value)  # every node's problem, in the order listed
    assert 0 <= problems.index(url.split("//")[1]) < problems.index(dead.split("//")[1])


async def test_healthcheck_checks_that_the_token_has_acks_when_acks_are_on(
    fake_hec: FakeHec, connect: Connect
) -> None:
    output = await connect(indexer_ack=True)
    with pytest.raises(HealthcheckError, match="turn `indexer_ack` off"):
        await output.healthcheck()
    fake_hec.acks = True
    await output.healthcheck()


async def test_healthcheck_before_start_and_after_reopen(fake_hec: FakeHec) -> None:
    output = SplunkHecOutput(hec_config(fake_hec.url))
    try:
        await output.healthcheck()
        await output.reopen()
        assert await output.send(make_records(1)) == Delivered()
    finally:
        await output.aclose()
