"""The fake Elasticsearch does what the bulk API documents, so the output tests mean something."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from forwarder.outputs.base import Delivered
from forwarder.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchOutput
from tests.peers.fake_es import FakeEs, encode_api_key
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
