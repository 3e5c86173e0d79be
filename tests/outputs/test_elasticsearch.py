"""The elasticsearch output against the fake Elasticsearch / OpenSearch: documents, the bulk
request, every row of the per-item and whole-request tables, auth, failover and the healthcheck."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

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
from forwarder.outputs.elasticsearch import (
    DEFAULT_INDEX,
    ElasticsearchConfig,
    ElasticsearchOutput,
    bulk_item_result,
    decode_cloud_id,
    es_document,
)
from tests.helpers import closed_port_url, started_outputs
from tests.peers._server import Delay, Reset, Respond
from tests.peers.fake_es import FakeEs, ItemError, encode_api_key
from tests.peers.records import make_records, sample_records

pytest_plugins = ["tests.peers.fixtures"]

Connect = Callable[..., Awaitable[ElasticsearchOutput]]
API_KEY = encode_api_key("VuaCfGcBCdbkQm-e5aOx", "ui2lp2axTNmsyakw9tvNnw")
CLOUD_ID = (
    "cluster:dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyRjZWM2ZjI2MWE3NGJmMjRjZTMzYmI4ODExYjg0Mjk0ZiRjNmMy"
    "Y2E2ZDA0MjI0OWFmMGNjN2Q3YTllOTYyNTc0Mw=="
)
REJECTED = ItemError(429, "es_rejected_execution_exception", "rejected execution of bulk")
UNAVAILABLE = ItemError(503, "unavailable_shards_exception", "primary shard is not active")
# What nginx answers a plain HTTP request to its TLS port (its internal 497, sent as a 400).
NGINX_497 = (
    "<html><head><title>400 The plain HTTP request was sent to HTTPS port</title>"
    "</head><body><center><h1>400 Bad Request</h1></center><hr><center>nginx</center>"
    "</body></html>"
)
# Refusals that did not come from Elasticsearch: a proxy's or another server's, not JSON with
# "error" (a gateway's {"message": ...} included).
NOT_ELASTICSEARCH_4XX = [
    (400, NGINX_497),
    (405, "<html><body><h1>405 Not Allowed</h1></body></html>"),
    (411, "<html><body><h1>411 Length Required</h1></body></html>"),
    (415, "Unsupported Media Type"),
    (400, {"message": "Bad Request"}),
]


def es_config(url: str | list[str] | None = None, **options: Any) -> ElasticsearchConfig:
    data: dict[str, Any] = {"name": "es", "type": "elasticsearch", "request_timeout_secs": 5}
    if url is not None:
        data["url"] = url
    return ElasticsearchConfig.model_validate({**data, **options})


@pytest.fixture
async def connect(fake_es: FakeEs) -> AsyncIterator[Connect]:
    """Build and start outputs (to the fake unless `url` is given); closed after the test."""

    def make(url: str | list[str] | None = None, **options: Any) -> ElasticsearchOutput:
        return ElasticsearchOutput(es_config(url or fake_es.url, **options))

    async with started_outputs(make) as build:
        yield build


def assert_retry(result: SendResult | Retry | Reject | None, *, operator: bool = False) -> Retry:
    assert isinstance(result, Retry), result
    assert result.operator_action is operator, result
    return result


def ndjson(body: bytes) -> list[Any]:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body[:-1].split(b"\n")]


# Configuration


def test_config_needs_exactly_one_of_url_and_cloud_id() -> None:
    with pytest.raises(ValidationError, match="either url or cloud_id"):
        es_config()
    with pytest.raises(ValidationError, match="either url or cloud_id"):
        es_config("https://es:9200", cloud_id=CLOUD_ID)


def test_cloud_id_decodes_to_the_elasticsearch_url() -> None:
    url = decode_cloud_id(CLOUD_ID)
    assert (url.scheme, url.host, url.port) == (
        "https",
        "cec6f261a74bf24ce33bb8811b84294f.us-east-1.aws.found.io",
        443,
    )
    assert es_config(cloud_id=CLOUD_ID).base_urls() == [url]


def test_cloud_id_with_a_port_and_a_name_with_colons() -> None:
    encoded = base64.b64encode(b"eu-west-1.aws.found.io:9243$abc$def").decode()
    assert str(decode_cloud_id(f"my:deployment:{encoded}")) == (
        "https://abc.eu-west-1.aws.found.io:9243"
    )


@pytest.mark.parametrize(
    "cloud_id", ["no-colon", "name:", "name:!!!", "name:" + base64.b64encode(b"host-only").decode()]
)
def test_a_malformed_cloud_id_is_a_config_error(cloud_id: str) -> None:
    with pytest.raises(ValidationError, match="cloud_id is not"):
        es_config(cloud_id=cloud_id)


def test_auth_options_are_exclusive_and_complete() -> None:
    with pytest.raises(ValidationError, match="username and password go together"):
        es_config("https://es:9200", username="elastic")
    with pytest.raises(ValidationError, match="either api_key or username"):
        es_config("https://es:9200", api_key=API_KEY, username="u", password="p")
    # It passed `validate`, then stopped the daemon's start with aiohttp's ValueError.
    with pytest.raises(ValidationError, match=r"username\n.*cannot contain ':' \(RFC 7617\)"):
        es_config("https://es:9200", username="corp:svc", password="p")


@pytest.mark.parametrize("index", ["Logs-x-y", "logs x", "-logs", "logs,x", "a:b", ".", "x" * 256])
def test_index_names_follow_elasticsearch_rules(index: str) -> None:
    with pytest.raises(ValidationError, match="not an index or data stream name"):
        es_config("https://es:9200", index=index)


@pytest.mark.parametrize("index", ["logs-thinkst_canary.alert-Émile", "logs-x-ΣΩ", "canary-Ωmega"])
def test_an_index_name_with_capitals_in_any_script_is_a_config_error(index: str) -> None:
    # Elasticsearch compares the name with its lowercase in every script, not only A-Z: such a
    # name passed validation, then every document failed with invalid_index_name_exception.
    with pytest.raises(ValidationError, match=r"index\n.*not an index or data stream name") as bad:
        es_config("https://es:9200", index=index)
    assert f"must be lowercase ({index.lower()!r})" in str(bad.value)


def test_defaults_and_secrets() -> None:
    config = es_config("https://es:9200", api_key=API_KEY)
    assert config.index == DEFAULT_INDEX == "logs-thinkst_canary.alert-default"
    assert config.gzip is True and config.tls.verify is True and config.pipeline is None
    assert API_KEY not in repr(config)


def test_auth_headers() -> None:
    assert es_config("https://e", api_key=API_KEY).auth_header() == {
        "Authorization": f"ApiKey {API_KEY}"
    }
    plain = es_config("https://e", api_key="VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw")
    assert plain.auth_header() == {"Authorization": f"ApiKey {API_KEY}"}
    basic = es_config("https://e", username="elastic", password="changeme").auth_header()
    assert basic == {"Authorization": "Basic " + base64.b64encode(b"elastic:changeme").decode()}
    assert es_config("https://e").auth_header() == {}


# Documents


def test_a_document_gets_the_event_timestamp_when_it_has_none() -> None:
    record = make_records(1)[0]
    document = es_document(record)
    assert document["@timestamp"] == "2026-03-05T08:00:01.000Z"
    assert {k: v for k, v in document.items() if k != "@timestamp"} == record.body


def test_a_document_keeps_its_own_timestamp() -> None:
    record = make_records(1)[0]
    own = Record(event=record.event, body={"@timestamp": "2020-01-01T00:00:00Z", "a": 1})
    assert es_document(own) == {"@timestamp": "2020-01-01T00:00:00Z", "a": 1}


def test_a_text_record_is_wrapped_as_message() -> None:
    record = make_records(1, body="text")[0]
    assert es_document(record) == {
        "@timestamp": "2026-03-05T08:00:01.000Z",
        "message": record.body,
    }


# Sending


async def test_a_batch_is_one_bulk_request_of_create_actions(
    fake_es: FakeEs, connect: Connect
) -> None:
    records = make_records(3)
    assert await (await connect()).send(records) == Delivered()
    (request,) = fake_es.requests
    assert request.path == "/_bulk"
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert "compatible-with" not in request.headers.get("Accept", "")
    assert request.headers["Content-Encoding"] == "gzip"
    assert "refresh" not in request.query
    assert request.query["filter_path"].startswith("errors,items.*.status")
    lines = ndjson(request.body)
    assert lines[0::2] == [
        {"create": {"_index": DEFAULT_INDEX, "_id": r.event.fingerprint}} for r in records
    ]
    assert all("@timestamp" in document for document in lines[1::2])
    assert set(fake_es.docs(DEFAULT_INDEX)) == {r.event.fingerprint for r in records}
    assert fake_es.indices[DEFAULT_INDEX].data_stream


async def test_sending_a_batch_again_duplicates_nothing(fake_es: FakeEs, connect: Connect) -> None:
    output = await connect()
    records = make_records(3)
    assert await output.send(records) == Delivered()
    assert await output.send([*records, *make_records(1, start=3)]) == Delivered()  # 409s
    assert len(fake_es.docs(DEFAULT_INDEX)) == 4


async def test_text_records_and_a_configured_index_and_pipeline(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.pipelines = {"canary"}
    output = await connect(index="canary-cef", pipeline="canary", gzip=False)
    records = make_records(2, body="text")
    assert await output.send(records) == Delivered()
    (request,) = fake_es.requests
    assert request.query["pipeline"] == "canary" and "Content-Encoding" not in request.headers
    documents = fake_es.docs("canary-cef")
    assert documents[records[0].event.fingerprint]["message"] == records[0].body
    assert not fake_es.indices["canary-cef"].data_stream


async def test_an_unencodable_record_is_refused_and_the_rest_delivered(
    fake_es: FakeEs, connect: Connect
) -> None:
    good = make_records(2)
    batch = [good[0], Record(event=good[1].event, body={"bad": {1, 2}}), good[1]]
    result = await (await connect()).send(batch)
    assert isinstance(result, Partial) and list(result.results) == [1]
    assert isinstance(result.results[1], Reject)
    assert len(fake_es.docs(DEFAULT_INDEX)) == 2


@pytest.mark.parametrize("format_name", ["ecs", "json", "cef"])
async def test_every_sample_in_a_format_becomes_one_document(
    fake_es: FakeEs, connect: Connect, format_name: str
) -> None:
    records = sample_records(format_name)
    assert await (await connect()).send(records) == Delivered()
    documents = fake_es.docs(DEFAULT_INDEX)
    assert set(documents) == {r.event.fingerprint for r in records}
    assert all("@timestamp" in document for document in documents.values())


# Auth


async def test_api_key_auth(connect: Connect) -> None:
    async with FakeEs(api_keys={API_KEY}) as secured:
        assert await (await connect(secured.url, api_key=API_KEY)).send(make_records(1)) == (
            Delivered()
        )
        other = encode_api_key("id", "wrong")
        retry = assert_retry(
            await (await connect(secured.url, api_key=other)).send(make_records(1)), operator=True
        )
        assert "HTTP 401" in retry.reason and "security_exception" in retry.reason
        assert secured.requests[0].headers["Authorization"] == f"ApiKey {API_KEY}"


async def test_basic_auth_against_opensearch(connect: Connect) -> None:
    async with FakeEs(users={"admin": "s3cret"}, flavor="opensearch") as opensearch:
        output = await connect(opensearch.url, username="admin", password="s3cret")
        assert await output.send(make_records(2)) == Delivered()
        wrong = await connect(opensearch.url, username="admin", password="nope")
        assert_retry(await wrong.send(make_records(1)), operator=True)
        assert len(opensearch.docs(DEFAULT_INDEX)) == 2


# Per-item results (the bulk answer is 200 even when items fail)


async def test_a_429_item_is_retried_alone_and_then_arrives_once(
    fake_es: FakeEs, connect: Connect
) -> None:
    records = make_records(3)
    fake_es.fail_item(records[1].event.fingerprint, REJECTED)
    output = await connect()
    result = await output.send(records)
    assert isinstance(result, Partial) and list(result.results) == [1]
    retry = assert_retry(result.results[1])
    assert "429 es_rejected_execution_exception: rejected execution of bulk" in retry.reason
    assert await output.send([records[1]]) == Delivered()
    assert len(fake_es.docs(DEFAULT_INDEX)) == 3


async def test_a_5xx_item_is_retried(fake_es: FakeEs, connect: Connect) -> None:
    records = make_records(2)
    fake_es.fail_item(records[0].event.fingerprint, UNAVAILABLE)
    result = await (await connect()).send(records)
    assert isinstance(result, Partial) and list(result.results) == [0]
    assert "503 unavailable_shards_exception" in assert_retry(result.results[0]).reason


@pytest.mark.parametrize(
    ("flavor", "kind"),
    [("elasticsearch", "document_parsing_exception"), ("opensearch", "mapper_parsing_exception")],
)
async def test_a_400_item_is_dead_lettered_with_type_and_reason(
    connect: Connect, flavor: str, kind: str
) -> None:
    async with FakeEs(flavor=flavor) as peer:  # type: ignore[arg-type]
        records = make_records(3)
        peer.poison.add(records[2].event.fingerprint)
        result = await (await connect(peer.url)).send(records)
        assert isinstance(result, Partial) and list(result.results) == [2]
        reject = result.results[2]
        assert isinstance(reject, Reject)
        assert reject.reason == f"400 {kind}: [1:2] failed to parse field [poison]"
        assert len(peer.docs(DEFAULT_INDEX)) == 2


async def test_a_missing_index_keeps_the_events_for_an_operator(connect: Connect) -> None:
    async with FakeEs(auto_create_index=False) as peer:
        result = await (await connect(peer.url, index="canary-events")).send(make_records(2))
        assert isinstance(result, Partial) and sorted(result.results) == [0, 1]
        retry = assert_retry(result.results[0], operator=True)
        assert "missing index / data stream 'canary-events': config error" in retry.reason
        assert "404 index_not_found_exception" in retry.reason
        assert peer.indices == {}


async def test_an_item_without_write_privilege_needs_an_operator(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.forbidden.add(DEFAULT_INDEX)
    result = await (await connect()).send(make_records(1))
    assert isinstance(result, Partial)
    assert "403 security_exception" in assert_retry(result.results[0], operator=True).reason


async def test_a_missing_ingest_pipeline_needs_an_operator(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.pipelines = set()
    result = await (await connect(pipeline="canary")).send(make_records(1))
    assert isinstance(result, Partial)
    assert "ingest pipeline missing" in assert_retry(result.results[0], operator=True).reason


async def test_an_invalid_index_name_keeps_the_events_for_an_operator(
    fake_es: FakeEs, connect: Connect
) -> None:
    # Every document fails alike until the name is fixed: not the documents' fault.
    records = make_records(2)
    invalid = ItemError(
        400, "invalid_index_name_exception", f"Invalid index name [{DEFAULT_INDEX}], must be ..."
    )
    for record in records:
        fake_es.fail_item(record.event.fingerprint, invalid)
    result = await (await connect()).send(records)
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1]
    for position in (0, 1):
        retry = assert_retry(result.results[position], operator=True)
        assert f"refuses the index name {DEFAULT_INDEX!r}: config error" in retry.reason
        assert "400 invalid_index_name_exception" in retry.reason


async def test_a_mixed_answer_is_classified_item_by_item(fake_es: FakeEs, connect: Connect) -> None:
    records = make_records(5)
    output = await connect()
    assert await output.send([records[3]]) == Delivered()
    fake_es.fail_item(records[1].event.fingerprint, REJECTED)
    fake_es.poison.add(records[2].event.fingerprint)
    fake_es.fail_item(records[4].event.fingerprint, UNAVAILABLE)
    result = await output.send(records)
    assert isinstance(result, Partial)
    assert sorted(result.results) == [1, 2, 4]  # 0 created, 3 a 409 duplicate: delivered
    assert_retry(result.results[1])
    assert isinstance(result.results[2], Reject)
    assert_retry(result.results[4])


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"create": {"status": 201}}, None),
        ({"create": {"status": 200}}, None),
        ({"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}, None),
        ({"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}}, Retry),
        ({"create": {"status": 500, "error": {"type": "internal_server_error"}}}, Retry),
        ({"create": {"status": 503, "error": {"type": "unavailable_shards_exception"}}}, Retry),
        ({"create": {"status": 400, "error": {"type": "illegal_argument_exception"}}}, Reject),
        ({"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}}, Reject),
        ({"create": {"status": 404, "error": {"type": "index_not_found_exception"}}}, Retry),
        ({"create": {"error": "no status"}}, Retry),
        ("not an item", Retry),
    ],
)
def test_the_per_item_table(item: Any, expected: type | None) -> None:
    result = bulk_item_result(item, DEFAULT_INDEX, retry_after=3.0)
    if expected is None:
        assert result is None
    else:
        assert isinstance(result, expected)


def test_item_reasons_carry_the_cause() -> None:
    error = {
        "type": "document_parsing_exception",
        "reason": "[1:40] failed to parse field [source.port] of type [long]",
        "caused_by": {"type": "illegal_argument_exception", "reason": 'For input string: "x"'},
    }
    result = bulk_item_result({"create": {"status": 400, "error": error}}, DEFAULT_INDEX)
    assert isinstance(result, Reject)
    assert result.reason.endswith('(caused by illegal_argument_exception: For input string: "x")')


# Whole-request results


async def test_a_request_over_http_max_content_length_is_413_too_large(connect: Connect) -> None:
    async with FakeEs(max_content_length=2048) as peer:
        result = await (await connect(peer.url, gzip=False)).send(make_records(5))
        assert isinstance(result, TooLarge) and "HTTP 413" in result.reason


async def test_a_batch_over_max_request_bytes_is_packed_or_refused_before_sending(
    fake_es: FakeEs, connect: Connect
) -> None:
    output = await connect(max_request_bytes=4096)
    big = Record(event=make_records(1)[0].event, body="x" * 5000)
    result = await output.send([big])
    assert isinstance(result, Partial) and "max_request_bytes" in result.results[0].reason
    assert fake_es.requests == []
    assert await output.send(make_records(5)) == Delivered()
    assert len(fake_es.requests) > 1
    assert all(len(request.body) <= 4096 for request in fake_es.requests)
    assert len(fake_es.docs(DEFAULT_INDEX)) == 5


async def test_a_429_storm_honours_retry_after_and_then_delivers_once(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.faults.storm(3, 429, retry_after="4")
    output = await connect()
    records = make_records(4)
    for _ in range(3):
        assert assert_retry(await output.send(records)).retry_after == 4.0
    assert await output.send(records) == Delivered()
    assert len(fake_es.docs(DEFAULT_INDEX)) == 4


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_answers_are_retried(fake_es: FakeEs, connect: Connect, status: int) -> None:
    fake_es.faults.push(Respond(status, "upstream trouble"))
    retry = assert_retry(await (await connect()).send(make_records(1)))
    assert f"HTTP {status}: upstream trouble" in retry.reason


async def test_a_forbidden_request_needs_an_operator(fake_es: FakeEs, connect: Connect) -> None:
    body = {"error": {"type": "security_exception", "reason": "action unauthorized"}, "status": 403}
    fake_es.faults.push(Respond(403, body))
    retry = assert_retry(await (await connect()).send(make_records(1)), operator=True)
    assert "security_exception: action unauthorized" in retry.reason


async def test_a_wrong_url_path_needs_an_operator(fake_es: FakeEs, connect: Connect) -> None:
    output = await connect(fake_es.url + "/proxy/es")
    retry = assert_retry(await output.send(make_records(1)), operator=True)
    assert "HTTP 400" in retry.reason and "no handler found for uri" in retry.reason
    assert "check url" in retry.reason


async def test_a_404_from_a_proxy_needs_an_operator(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.faults.push(Respond(404, "<html>Not Found</html>"))
    retry = assert_retry(await (await connect()).send(make_records(1)), operator=True)
    assert "HTTP 404" in retry.reason and "check url" in retry.reason


async def test_a_bad_request_is_rejected_with_the_message(
    fake_es: FakeEs, connect: Connect
) -> None:
    body = {"error": {"type": "illegal_argument_exception", "reason": "Malformed action"}}
    fake_es.faults.push(Respond(400, body))
    result = await (await connect()).send(make_records(1))
    assert isinstance(result, Reject) and "illegal_argument_exception: Malformed action" in (
        result.reason
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [*NOT_ELASTICSEARCH_4XX, (501, "<html><body><h1>501 Not Implemented</h1></body></html>")],
)
async def test_a_non_elasticsearch_4xx_keeps_the_events_for_an_operator(
    fake_es: FakeEs, connect: Connect, status: int, body: Any
) -> None:
    # Dead-lettered, every batch would be lost while /readyz stayed green.
    fake_es.faults.push(Respond(status, body))
    retry = assert_retry(await (await connect()).send(make_records(3)), operator=True)
    assert f"HTTP {status}" in retry.reason
    assert "something other than Elasticsearch or OpenSearch answered: check `url`" in (
        retry.reason
    )


@pytest.mark.parametrize(
    "body",
    [{"errors": False, "items": []}, {"errors": False}, "<html>proxy</html>"],
)
async def test_an_answer_that_does_not_match_the_request_is_retried(
    fake_es: FakeEs, connect: Connect, body: Any
) -> None:
    fake_es.faults.push(Respond(200, body))
    assert_retry(await (await connect()).send(make_records(2)))


# Faults on the wire and several URLs


async def test_a_slow_answer_times_out_into_a_retry(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.faults.push(Delay(30))
    retry = assert_retry(await (await connect(request_timeout_secs=0.3)).send(make_records(1)))
    assert "no answer within" in retry.reason


async def test_a_reset_connection_is_a_retry(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.faults.push(Reset())
    output = await connect()
    assert_retry(await output.send(make_records(1)))
    assert await output.send(make_records(1)) == Delivered()


async def test_a_dead_node_is_benched_and_the_next_send_goes_to_a_live_one(
    fake_es: FakeEs, connect: Connect
) -> None:
    output = await connect([closed_port_url(), fake_es.url])
    assert "cannot connect" in assert_retry(await output.send(make_records(1))).reason
    for start in range(2):
        assert await output.send(make_records(1, start=start)) == Delivered()
    assert len(fake_es.requests) == 2


# Healthcheck


async def test_healthcheck_passes_and_writes_nothing(fake_es: FakeEs, connect: Connect) -> None:
    await (await connect()).healthcheck()
    (request,) = fake_es.requests
    assert request.path == "/_bulk" and request.headers["Content-Encoding"] == "gzip"
    assert ndjson(request.body)[0] == {
        "create": {"_index": DEFAULT_INDEX, "_id": "canary-forwarder-healthcheck"}
    }
    assert fake_es.all_ids() == []


async def test_healthcheck_tells_bad_credentials(connect: Connect) -> None:
    async with FakeEs(api_keys={API_KEY}) as secured:
        output = await connect(secured.url, api_key=encode_api_key("a", "b"))
        with pytest.raises(HealthcheckError, match="HTTP 401"):
            await output.healthcheck()
        await (await connect(secured.url, api_key=API_KEY)).healthcheck()


async def test_healthcheck_tells_a_missing_write_privilege(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.forbidden.add(DEFAULT_INDEX)
    with pytest.raises(HealthcheckError, match="not allowed to write"):
        await (await connect()).healthcheck()


async def test_healthcheck_tells_a_missing_index(connect: Connect) -> None:
    async with FakeEs(auto_create_index=False) as peer:
        with pytest.raises(HealthcheckError, match="missing index / data stream"):
            await (await connect(peer.url, index="canary-events")).healthcheck()


async def test_healthcheck_tells_a_missing_pipeline(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.pipelines = {"other"}
    with pytest.raises(HealthcheckError, match="ingest pipeline missing"):
        await (await connect(pipeline="canary")).healthcheck()


async def test_healthcheck_fails_while_the_cluster_is_busy(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.faults.push(Respond(503, "unavailable"))
    with pytest.raises(HealthcheckError, match="HTTP 503"):
        await (await connect()).healthcheck()


async def test_healthcheck_fails_when_nothing_answers(connect: Connect) -> None:
    with pytest.raises(HealthcheckError, match="cannot connect"):
        await (await connect(closed_port_url())).healthcheck()


async def test_healthcheck_passes_when_one_node_of_several_is_healthy(
    fake_es: FakeEs, connect: Connect
) -> None:
    await (await connect([closed_port_url(), fake_es.url])).healthcheck()


async def test_liveness_reads_and_never_writes(fake_es: FakeEs, connect: Connect) -> None:
    # Run every 30 s: the healthcheck's probe document would land in a failure store.
    await (await connect()).liveness()
    assert fake_es.requests == []  # no bulk request at all
    assert fake_es.all_ids() == []


async def test_liveness_tells_bad_credentials_and_a_dead_cluster(connect: Connect) -> None:
    async with FakeEs(api_keys={API_KEY}) as secured:
        with pytest.raises(HealthcheckError, match="HTTP 401"):
            await (await connect(secured.url, api_key=encode_api_key("a", "b"))).liveness()
        await (await connect(secured.url, api_key=API_KEY)).liveness()
    with pytest.raises(HealthcheckError, match="cannot connect"):
        await (await connect(closed_port_url())).liveness()


@pytest.mark.parametrize(("status", "body"), NOT_ELASTICSEARCH_4XX)
async def test_liveness_fails_when_something_else_answers_with_a_4xx(
    fake_es: FakeEs, connect: Connect, status: int, body: Any
) -> None:
    # Every send would wait for an operator meanwhile: /readyz must not stay green.
    fake_es.faults.push(Respond(status, body))
    with pytest.raises(HealthcheckError, match=rf"HTTP {status}: .*something other than"):
        await (await connect()).liveness()


async def test_liveness_passes_on_elasticsearchs_own_403(fake_es: FakeEs, connect: Connect) -> None:
    # A key that may only write documents is refused the cluster's info, in Elasticsearch's JSON.
    body = {"error": {"type": "security_exception", "reason": "action unauthorized"}, "status": 403}
    fake_es.faults.push(Respond(403, body))
    await (await connect()).liveness()


async def test_liveness_fails_while_the_cluster_is_busy(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.faults.push(Respond(503, "unavailable"))
    with pytest.raises(HealthcheckError, match="HTTP 503"):
        await (await connect()).liveness()
