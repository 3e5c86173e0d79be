"""The elasticsearch output against Elasticsearch's documented `_bulk` behaviour: the cases an
audit of the output found classified wrongly, or not modelled by the fake, and the cases it
checked and found right (Elastic Cloud IDs, failure store, ingest `fail` processor, closed
index, Elasticsearch 6's mapping types, gzip against `http.max_content_length`, cut answers)."""

from __future__ import annotations

import base64

import pytest
import structlog
from pydantic import ValidationError
from yarl import URL

from forwarder.outputs.base import Delivered, Partial, Reject, Retry, TooLarge
from forwarder.outputs.elasticsearch import (
    DEFAULT_INDEX,
    FILTER_PATH,
    bulk_item_result,
    decode_cloud_id,
)
from tests.outputs.test_elasticsearch import Connect, assert_retry, es_config
from tests.outputs.test_elasticsearch import connect as connect  # a fixture
from tests.peers._server import Respond
from tests.peers.fake_es import FakeEs
from tests.peers.records import make_records

pytest_plugins = ["tests.peers.fixtures"]


# Elastic Cloud ID: the same vectors Kibana's decodeCloudId is tested with
# (x-pack/plugins/fleet/common/services/decode_cloud_id.test.ts).


@pytest.mark.parametrize(
    ("cloud_id", "url"),
    [
        (
            "custom-port:dXMtY2VudHJhbDEuZ2NwLmNsb3VkLmVzLmlvOjkyNDMkYWMzMWViYjkwMjQxNzczMTU3MDQzYzM0"
            "ZmQyNmZkNDYkYTRjMDYyMzBlNDhjOGZjZTdiZTg4YTA3NGEzYmIzZTA=",
            "https://ac31ebb90241773157043c34fd26fd46.us-central1.gcp.cloud.es.io:9243",
        ),
        (
            # The Elasticsearch UUID carries its own port: `host$es_uuid:9243$kibana_uuid:9244`.
            "different-es-kb-port:dXMtY2VudHJhbDEuZ2NwLmNsb3VkLmVzLmlvJGFjMzFlYmI5MDI0MTc3MzE1NzA0"
            "M2MzNGZkMjZmZDQ2OjkyNDMkYTRjMDYyMzBlNDhjOGZjZTdiZTg4YTA3NGEzYmIzZTA6OTI0NA==",
            "https://ac31ebb90241773157043c34fd26fd46.us-central1.gcp.cloud.es.io:9243",
        ),
        (
            # Only Kibana has a port: Elasticsearch keeps the default 443.
            "only-kb-set:dXMtY2VudHJhbDEuZ2NwLmNsb3VkLmVzLmlvJGFjMzFlYmI5MDI0MTc3MzE1NzA0M2MzNGZkMjZm"
            "ZDQ2JGE0YzA2MjMwZTQ4YzhmY2U3YmU4OGEwNzRhM2JiM2UwOjkyNDQ=",
            "https://ac31ebb90241773157043c34fd26fd46.us-central1.gcp.cloud.es.io:443",
        ),
        (
            # Without its `name:` prefix, as Beats, Logstash and Kibana take it.
            "dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyRjZWM2ZjI2MWE3NGJmMjRjZTMzYmI4ODExYjg0Mjk0ZiRjNmMyY2E2ZD"
            "A0MjI0OWFmMGNjN2Q3YTllOTYyNTc0Mw==",
            "https://cec6f261a74bf24ce33bb8811b84294f.us-east-1.aws.found.io:443",
        ),
        (
            # An empty name, and the padding left off.
            ":dXMtZWFzdC0xLmF3cy5mb3VuZC5pbyRjZWM2ZjI2MWE3NGJmMjRjZTMzYmI4ODExYjg0Mjk0ZiRjNmMyY2E2Z"
            "DA0MjI0OWFmMGNjN2Q3YTllOTYyNTc0Mw",
            "https://cec6f261a74bf24ce33bb8811b84294f.us-east-1.aws.found.io:443",
        ),
        (
            "extra-items:dXMtY2VudHJhbDEuZ2NwLmNsb3VkLmVzLmlvJGFjMzFlYmI5MDI0MTc3MzE1NzA0M2MzNGZkMjZm"
            "ZDQ2JGE0YzA2MjMwZTQ4YzhmY2U3YmU4OGEwNzRhM2JiM2UwJGFub3RoZXJpZCRhbmRhbm90aGVy",
            "https://ac31ebb90241773157043c34fd26fd46.us-central1.gcp.cloud.es.io:443",
        ),
    ],
)
def test_cloud_ids_decode_as_elastic_decodes_them(cloud_id: str, url: str) -> None:
    expected = URL(url)
    decoded = decode_cloud_id(cloud_id)
    assert (decoded.scheme, decoded.host, decoded.port) == ("https", expected.host, expected.port)
    assert es_config(cloud_id=cloud_id).base_urls() == [decoded]


@pytest.mark.parametrize(
    "decoded", [b"host$uuid:notaport$kb", b"host$uuid:0$kb", b"host:99999$uuid$kb", b"$uuid$kb"]
)
def test_a_cloud_id_with_a_bad_port_or_host_is_a_config_error(decoded: bytes) -> None:
    with pytest.raises(ValidationError, match="cloud_id is not"):
        es_config(cloud_id="name:" + base64.b64encode(decoded).decode())


# Headers: no compatibility media types, which OpenSearch and Elasticsearch 7 refuse (406).


async def test_opensearch_takes_every_request_the_output_makes(connect: Connect) -> None:
    async with FakeEs(flavor="opensearch", users={"admin": "pw"}) as opensearch:
        output = await connect(opensearch.url, username="admin", password="pw")
        assert await output.send(make_records(2)) == Delivered()
        await output.healthcheck()
        await output.liveness()
        for request in opensearch.requests:
            for header in ("Content-Type", "Accept"):
                assert "vnd.elasticsearch" not in request.headers.get(header, ""), request


# Failure store (Elasticsearch 9.1+): a refused document is stored in the data stream's failure
# store and its item answered 201 with `"failure_store": "used"`.


async def test_a_document_redirected_to_the_failure_store_is_delivered_with_a_warning(
    connect: Connect,
) -> None:
    assert "items.*.failure_store" in FILTER_PATH.split(",")
    async with FakeEs(failure_store={DEFAULT_INDEX}) as peer:
        records = make_records(3)
        peer.poison.add(records[1].event.fingerprint)
        output = await connect(peer.url)
        with structlog.testing.capture_logs() as logs:
            assert await output.send(records) == Delivered()
        assert set(peer.docs(DEFAULT_INDEX)) == {
            records[0].event.fingerprint,
            records[2].event.fingerprint,
        }
        assert len(peer.indices[DEFAULT_INDEX].failures) == 1
        (warning,) = [entry for entry in logs if entry["log_level"] == "warning"]
        assert warning["count"] == 1 and warning["failures"] == f"{DEFAULT_INDEX}::failures"


async def test_the_healthcheck_probe_in_a_failure_store_passes_without_a_warning(
    connect: Connect,
) -> None:
    async with FakeEs(failure_store={DEFAULT_INDEX}) as peer:
        output = await connect(peer.url)
        with structlog.testing.capture_logs() as logs:
            await output.healthcheck()
        assert logs == []
        assert len(peer.indices[DEFAULT_INDEX].failures) == 1  # as docs/outputs-http.md says


async def test_without_a_failure_store_a_refused_document_is_still_dead_lettered(
    fake_es: FakeEs, connect: Connect
) -> None:
    records = make_records(2)
    fake_es.poison.add(records[0].event.fingerprint)
    result = await (await connect()).send(records)
    assert isinstance(result, Partial) and list(result.results) == [0]
    assert isinstance(result.results[0], Reject)
    assert "document_parsing_exception" in result.results[0].reason


# Ingest pipelines: a processor failure is the document's (400 since Elasticsearch 7.5), but the
# `fail` processor throws a plain exception, which the bulk item reports as 500.


async def test_an_ingest_fail_processor_dead_letters_instead_of_retrying_forever(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.failing_pipelines["canary"] = "no canary field"
    result = await (await connect(pipeline="canary")).send(make_records(2))
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1]
    reject = result.results[0]
    assert isinstance(reject, Reject)
    assert reject.reason == "500 fail_processor_exception: no canary field"
    assert fake_es.all_ids() == []


async def test_a_fail_processor_with_a_failure_store_is_delivered(connect: Connect) -> None:
    async with FakeEs(failure_store={DEFAULT_INDEX}) as peer:
        peer.failing_pipelines["canary"] = "no canary field"
        output = await connect(peer.url, pipeline="canary")
        assert await output.send(make_records(2)) == Delivered()
        assert len(peer.indices[DEFAULT_INDEX].failures) == 2


# Configuration problems that refuse every document alike keep the events for an operator.


async def test_a_closed_index_keeps_the_events_for_an_operator(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.closed.add("canary-events")
    result = await (await connect(index="canary-events")).send(make_records(2))
    assert isinstance(result, Partial) and sorted(result.results) == [0, 1]
    retry = assert_retry(result.results[0], operator=True)
    assert "400 index_closed_exception: closed" in retry.reason and "canary-events" in retry.reason


def test_an_alias_without_a_write_index_needs_an_operator() -> None:
    reason = (
        "no write index is defined for alias [canary]. The write index may be explicitly "
        "disabled using is_write_index=false or the alias points to multiple indices without "
        "one being designated as a write index"
    )
    item = {
        "create": {"status": 400, "error": {"type": "illegal_argument_exception", "reason": reason}}
    }
    assert_retry(bulk_item_result(item, "canary"), operator=True)


async def test_elasticsearch_6_refusing_a_request_without_type_needs_an_operator(
    connect: Connect,
) -> None:
    async with FakeEs(require_type=True) as es6:
        retry = assert_retry(await (await connect(es6.url)).send(make_records(2)), operator=True)
        assert "type is missing" in retry.reason and "_type" in retry.reason
        assert es6.indices == {}


# http.max_content_length counts the body as Elasticsearch reads it: after gunzipping.


async def test_a_gzipped_request_over_http_max_content_length_is_413_too_large(
    connect: Connect,
) -> None:
    async with FakeEs(max_content_length=4096) as peer:
        output = await connect(peer.url)  # gzip on: the wire size is far below 4096 bytes
        result = await output.send(make_records(10))
        assert isinstance(result, TooLarge) and "HTTP 413" in result.reason
        assert peer.requests[0].wire_bytes < 4096 < len(peer.requests[0].body)
        assert peer.indices == {}
        assert await output.send(make_records(1)) == Delivered()


# Answers that are not a bulk answer.


async def test_an_answer_cut_short_is_retried_and_the_resend_duplicates_nothing(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.truncate_answers = 1
    output = await connect()
    records = make_records(3)
    assert_retry(await output.send(records))
    assert len(fake_es.docs(DEFAULT_INDEX)) == 3  # the node did the work before the cut
    assert await output.send(records) == Delivered()  # 409s
    assert len(fake_es.docs(DEFAULT_INDEX)) == 3


async def test_a_200_that_is_not_json_says_so(fake_es: FakeEs, connect: Connect) -> None:
    fake_es.faults.push(Respond(200, "<html><body>Sign in to the proxy</body></html>"))
    retry = assert_retry(await (await connect()).send(make_records(1)))
    assert "not JSON" in retry.reason and "Sign in to the proxy" in retry.reason


async def test_a_json_200_with_the_wrong_number_of_items_says_so(
    fake_es: FakeEs, connect: Connect
) -> None:
    fake_es.faults.push(Respond(200, {"errors": False, "items": [{"create": {"status": 201}}]}))
    retry = assert_retry(await (await connect()).send(make_records(2)))
    assert "1 items for 2 documents" in retry.reason


# Checked and found right: the per-item table for what the documentation describes.


@pytest.mark.parametrize(
    ("status", "kind", "expected", "operator"),
    [
        (429, "es_rejected_execution_exception", Retry, False),
        (429, "cluster_block_exception", Retry, False),  # flood-stage disk watermark
        (429, "circuit_breaking_exception", Retry, False),
        (500, "exception", Retry, False),
        (503, "unavailable_shards_exception", Retry, False),
        (400, "document_parsing_exception", Reject, False),
        (400, "mapper_parsing_exception", Reject, False),
        (400, "illegal_argument_exception", Reject, False),
        (400, "strict_dynamic_mapping_exception", Reject, False),
        (403, "cluster_block_exception", Retry, True),  # index.blocks.write
        (403, "security_exception", Retry, True),
        (404, "index_not_found_exception", Retry, True),
    ],
)
def test_the_documented_item_errors(status: int, kind: str, expected: type, operator: bool) -> None:
    item = {"create": {"status": status, "error": {"type": kind, "reason": "r"}}}
    result = bulk_item_result(item, DEFAULT_INDEX)
    assert isinstance(result, expected), result
    if isinstance(result, Retry):
        assert result.operator_action is operator
