"""The fake Elasticsearch does what the bulk API documents, so the output tests mean something."""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from forwarder.outputs.base import Delivered
from forwarder.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchOutput
from tests.peers.fake_es import FakeEs, ItemError, encode_api_key
from tests.peers.process import peer_process
from tests.peers.records import make_records

pytest_plugins = ["tests.peers.fixtures"]

NDJSON = {"Content-Type": "application/x-ndjson"}
STREAM = "logs-canary.test-default"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def lines(*values: Any) -> bytes:
    return b"".join(json.dumps(value).encode() + b"\n" for value in values)


async def bulk(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/_bulk",
) -> tuple[int, Any]:
    sent = NDJSON if headers is None else headers
    async with session.post(url + path, data=body, headers=sent) as response:
        return response.status, await response.json(content_type=None)


def statuses(answer: Any) -> list[int]:
    return [next(iter(item.values()))["status"] for item in answer["items"]]


async def test_items_come_back_in_order_and_independent(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    create = {"create": {"_index": STREAM, "_id": "a"}}
    body = lines(
        create,
        {"@timestamp": "2026-01-01T00:00:00Z"},
        create,
        {"@timestamp": "2026-01-01T00:00:00Z"},
        {"create": {"_index": STREAM, "_id": "b"}},
        {"no": "timestamp"},
        {"index": {"_index": STREAM, "_id": "c"}},
        {"@timestamp": "2026-01-01T00:00:00Z"},
        {"create": {"_index": STREAM, "_id": "d"}},
        "not an object",
    )
    status, answer = await bulk(http, fake_es.url, body)
    assert status == 200 and answer["errors"] is True
    assert statuses(answer) == [201, 409, 400, 400, 400]
    types = [next(iter(i.values())).get("error", {}).get("type") for i in answer["items"]]
    assert types == [
        None,
        "version_conflict_engine_exception",
        "document_parsing_exception",
        "illegal_argument_exception",
        "document_parsing_exception",
    ]
    assert answer["items"][0]["create"]["_index"].startswith(f".ds-{STREAM}-")
    assert list(fake_es.docs(STREAM)) == ["a"]


async def test_filter_path_keeps_one_entry_per_item(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    body = lines(
        {"create": {"_index": "plain", "_id": "a"}},
        {"x": 1},
        {"create": {"_index": "plain", "_id": "a"}},
        {"x": 1},
    )
    path = "/_bulk?filter_path=errors,items.*.status,items.*.error.type"
    _, answer = await bulk(http, fake_es.url, body, path=path)
    assert answer == {
        "errors": True,
        "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
        ],
    }
    _, only_errors = await bulk(http, fake_es.url, body, path="/_bulk?filter_path=items.*.error")
    assert len(only_errors["items"]) == 2  # both now conflict; a success would be dropped


async def test_target_in_the_path_and_missing_index_without_auto_create(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeEs(auto_create_index=False) as peer:
        body = lines({"create": {"_id": "a"}}, {"x": 1})
        _, answer = await bulk(http, peer.url, body, path="/events/_bulk")
        assert statuses(answer) == [404]
        assert answer["items"][0]["create"]["error"]["type"] == "index_not_found_exception"
        _, answer = await bulk(
            http,
            peer.url,
            lines({"create": {"_id": "a"}}, {"@timestamp": "t"}),
            path=f"/{STREAM}/_bulk",
        )
        assert statuses(answer) == [201]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"", 400, "action_request_validation_exception"),
        (b'{"create":{"_index":"x"}}\n{"a":1}', 400, "illegal_argument_exception"),
        (b'{"upsert":{"_index":"x"}}\n{"a":1}\n', 400, "illegal_argument_exception"),
        (b"not json\n", 400, "illegal_argument_exception"),
    ],
)
async def test_malformed_bulk_bodies_fail_whole(
    fake_es: FakeEs, http: aiohttp.ClientSession, body: bytes, status: int, kind: str
) -> None:
    answer = await bulk(http, fake_es.url, body)
    assert answer[0] == status and answer[1]["error"]["type"] == kind


@pytest.mark.parametrize(
    ("flavor", "content_type", "status"),
    [
        ("elasticsearch", "application/x-ndjson", 200),
        ("elasticsearch", "application/json; charset=UTF-8", 200),
        ("elasticsearch", "application/vnd.elasticsearch+x-ndjson; compatible-with=8", 200),
        ("opensearch", "application/x-ndjson", 200),
        ("opensearch", "application/vnd.elasticsearch+x-ndjson; compatible-with=8", 406),
        ("elasticsearch", "text/plain", 406),
    ],
)
async def test_content_types(
    http: aiohttp.ClientSession, flavor: str, content_type: str, status: int
) -> None:
    async with FakeEs(flavor=flavor) as peer:  # type: ignore[arg-type]
        body = lines({"create": {"_index": "x", "_id": "a"}}, {"a": 1})
        assert (await bulk(http, peer.url, body, {"Content-Type": content_type}))[0] == status


async def test_security(http: aiohttp.ClientSession) -> None:
    key = encode_api_key("id", "secret")
    async with FakeEs(api_keys={key}, users={"elastic": "pw"}) as peer:
        body = lines({"create": {"_index": "x", "_id": "a"}}, {"a": 1})
        status, answer = await bulk(http, peer.url, body)
        assert status == 401 and "missing authentication" in answer["error"]["reason"]
        assert (await bulk(http, peer.url, body, {**NDJSON, "Authorization": f"ApiKey {key}"}))[
            0
        ] == 200
        basic = aiohttp.encode_basic_auth("elastic", "pw")
        assert (await bulk(http, peer.url, body, {**NDJSON, "Authorization": basic}))[0] == 200
        wrong = aiohttp.encode_basic_auth("elastic", "nope")
        assert (await bulk(http, peer.url, body, {**NDJSON, "Authorization": wrong}))[0] == 401


async def test_oversized_requests_are_413(http: aiohttp.ClientSession) -> None:
    async with FakeEs(max_content_length=100) as peer:
        body = lines({"create": {"_index": "x", "_id": "a"}}, {"a": "x" * 200})
        assert (await bulk(http, peer.url, body))[0] == 413
        assert peer.indices == {}


async def test_unknown_paths_get_no_handler(fake_es: FakeEs, http: aiohttp.ClientSession) -> None:
    status, answer = await bulk(http, fake_es.url, b"{}\n", path="/a/b/_bulk")
    assert status == 400 and "no handler found for uri [/a/b/_bulk]" in answer["error"]


def control(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


async def test_standalone_process_refresh_and_count_by_id() -> None:
    key = encode_api_key("bench", "secret")
    with peer_process("tests.peers.fake_es", "--api-key", key) as url:
        config = ElasticsearchConfig.model_validate(
            {"name": "es", "type": "elasticsearch", "url": url, "api_key": key}
        )
        output = ElasticsearchOutput(config)
        try:
            records = make_records(3)
            assert await output.send(records) == Delivered()
            assert await output.send(records) == Delivered()
        finally:
            await output.aclose()
        stats = control(url, "/_fake/stats")
        assert (stats["bulk_requests"], stats["documents"]) == (2, 3)
        async with aiohttp.ClientSession(headers={"Authorization": f"ApiKey {key}"}) as http:
            index = config.index
            async with http.post(f"{url}/{index}/_refresh") as response:
                assert response.status == 200
            ids = [r.event.fingerprint for r in records] + ["absent"]
            query = {"query": {"ids": {"values": ids}}}
            async with http.post(f"{url}/{index}/_count", json=query) as response:
                assert (await response.json())["count"] == 3


# What the audit of the elasticsearch output added (docs/outputs-http.md has the sources).


async def test_max_content_length_counts_the_gunzipped_body(http: aiohttp.ClientSession) -> None:
    async with FakeEs(max_content_length=1000) as peer:
        body = lines({"create": {"_index": "x", "_id": "a"}}, {"a": "x" * 2000})
        packed = gzip.compress(body)
        assert len(packed) < 1000 < len(body)
        headers = {**NDJSON, "Content-Encoding": "gzip"}
        assert (await bulk(http, peer.url, packed, headers))[0] == 413
        assert peer.indices == {}


async def test_failure_store_takes_mapping_and_pipeline_refusals_only(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeEs(failure_store={"logs-*-*"}) as peer:
        peer.failing_pipelines["p"] = "refused"
        peer.fail_item("c", ItemError(429, "es_rejected_execution_exception", "busy"))
        stamp = {"@timestamp": "2026-01-01T00:00:00Z"}
        body = lines(
            {"create": {"_index": STREAM, "_id": "a"}},
            {"no": "timestamp"},
            {"create": {"_index": STREAM, "_id": "b", "pipeline": "p"}},
            stamp,
            {"create": {"_index": STREAM, "_id": "c"}},
            stamp,
            {"create": {"_index": STREAM, "_id": "d"}},
            stamp,
            {"create": {"_index": STREAM, "_id": "d"}},
            stamp,
        )
        _, answer = await bulk(http, peer.url, body)
        items = [next(iter(item.values())) for item in answer["items"]]
        assert [i["status"] for i in items] == [201, 201, 429, 201, 409]
        assert [i.get("failure_store") for i in items] == ["used", "used", None, None, None]
        assert items[0]["_index"].startswith(f".fs-{STREAM}-")
        assert answer["errors"] is True
        assert [f["error"]["type"] for f in peer.indices[STREAM].failures] == [
            "document_parsing_exception",
            "fail_processor_exception",
        ]
        assert list(peer.docs(STREAM)) == ["d"]


async def test_refusals_say_the_failure_store_is_off_on_data_streams_only(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    body = lines(
        {"create": {"_index": STREAM, "_id": "a"}},
        "not an object",
        {"create": {"_index": "plain", "_id": "a"}},
        "not an object",
    )
    _, answer = await bulk(http, fake_es.url, body)
    items = [next(iter(item.values())) for item in answer["items"]]
    assert [i.get("failure_store") for i in items] == ["not_enabled", None]


async def test_a_fail_processor_is_a_500_and_ingest_reads_the_source_first(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    fake_es.failing_pipelines["p"] = "no canary field"
    body = lines(
        {"create": {"_index": "x", "_id": "a"}},
        {"a": 1},
        {"create": {"_index": "x", "_id": "b"}},
        "s",
    )
    _, answer = await bulk(http, fake_es.url, body, path="/_bulk?pipeline=p")
    errors = [next(iter(item.values())) for item in answer["items"]]
    assert [(e["status"], e["error"]["type"]) for e in errors] == [
        (500, "fail_processor_exception"),
        (400, "parse_exception"),
    ]


async def test_a_closed_index_refuses_every_item(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    fake_es.closed.add("x")
    _, answer = await bulk(http, fake_es.url, lines({"create": {"_index": "x", "_id": "a"}}, {}))
    (item,) = answer["items"]
    assert item["create"]["status"] == 400
    assert item["create"]["error"]["type"] == "index_closed_exception"


async def test_elasticsearch_6_needs_a_type_on_every_action(http: aiohttp.ClientSession) -> None:
    async with FakeEs(require_type=True) as es6:
        untyped = lines({"create": {"_index": "x", "_id": "a"}}, {"a": 1})
        status, answer = await bulk(http, es6.url, untyped)
        assert status == 400
        assert answer["error"]["type"] == "action_request_validation_exception"
        assert answer["error"]["reason"] == "Validation Failed: 1: type is missing;"
        typed = lines({"create": {"_index": "x", "_type": "_doc", "_id": "a"}}, {"a": 1})
        assert (await bulk(http, es6.url, typed))[0] == 200


async def test_opensearch_has_no_built_in_data_stream_templates(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeEs(flavor="opensearch") as opensearch:
        body = lines({"create": {"_index": STREAM, "_id": "a"}}, {"no": "timestamp"})
        assert statuses((await bulk(http, opensearch.url, body))[1]) == [201]
        assert not opensearch.indices[STREAM].data_stream


async def test_a_cut_answer_ends_before_its_content_length(
    fake_es: FakeEs, http: aiohttp.ClientSession
) -> None:
    fake_es.truncate_answers = 1
    body = lines({"create": {"_index": "x", "_id": "a"}}, {"a": 1})
    with pytest.raises(aiohttp.ClientPayloadError):
        await bulk(http, fake_es.url, body)
    assert list(fake_es.docs("x")) == ["a"]
    assert (await bulk(http, fake_es.url, body))[0] == 200
