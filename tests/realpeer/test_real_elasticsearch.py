"""Opt-in: the elasticsearch output against a real Elasticsearch or OpenSearch.

Set ELASTICSEARCH_URL and either ELASTICSEARCH_API_KEY (the `encoded` key) or
ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD. Optional: ELASTICSEARCH_INDEX (default
`logs-thinkst_canary.alert-realpeertest`, a data stream the built-in `logs-*-*` template
creates), ELASTICSEARCH_CA_FILE, ELASTICSEARCH_INSECURE=1 (skip certificate checks).

Arrival is checked by refreshing the target and counting the documents by `_id`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from forwarder.mappers.base import Record
from forwarder.outputs._http import HttpAnswer, HttpClient
from forwarder.outputs.base import Delivered, Retry
from forwarder.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchOutput
from tests.peers.records import make_records

ES_URL = os.environ.get("ELASTICSEARCH_URL")
API_KEY = os.environ.get("ELASTICSEARCH_API_KEY")
USERNAME = os.environ.get("ELASTICSEARCH_USERNAME")
PASSWORD = os.environ.get("ELASTICSEARCH_PASSWORD")
INDEX = os.environ.get("ELASTICSEARCH_INDEX", "logs-thinkst_canary.alert-realpeertest")

pytestmark = [
    pytest.mark.realpeer,
    pytest.mark.skipif(
        not (ES_URL and (API_KEY or (USERNAME and PASSWORD))),
        reason="set ELASTICSEARCH_URL and ELASTICSEARCH_API_KEY (or ELASTICSEARCH_USERNAME and "
        "ELASTICSEARCH_PASSWORD) to run against Elasticsearch or OpenSearch",
    ),
]


def es_config(**overrides: Any) -> ElasticsearchConfig:
    data: dict[str, Any] = {"name": "real-es", "type": "elasticsearch", "url": ES_URL}
    if API_KEY:
        data["api_key"] = API_KEY
    else:
        data["username"], data["password"] = USERNAME, PASSWORD
    tls: dict[str, Any] = {}
    if os.environ.get("ELASTICSEARCH_CA_FILE"):
        tls["ca_file"] = os.environ["ELASTICSEARCH_CA_FILE"]
    if os.environ.get("ELASTICSEARCH_INSECURE") == "1":
        tls["verify"] = False
    return ElasticsearchConfig.model_validate({**data, "tls": tls, "index": INDEX, **overrides})


@pytest.fixture
async def output() -> AsyncIterator[ElasticsearchOutput]:
    running = ElasticsearchOutput(es_config())
    await running.start()
    yield running
    await running.aclose()


@pytest.fixture
async def rest() -> AsyncIterator[HttpClient]:
    """The same URL, TLS and credentials, for reading back what arrived."""
    config = es_config()
    client = HttpClient(config, config.base_urls(), config.auth_header())
    yield client
    await client.aclose()


async def call(client: HttpClient, method: str, path: str, body: Any = None) -> Any:
    answer = await client.request(
        method,
        path,
        body=None if body is None else orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert isinstance(answer, HttpAnswer), answer
    assert answer.status == 200, answer.text()
    return answer.json()


async def stored(client: HttpClient, records: list[Record]) -> dict[str, Any]:
    """The documents of `records` in the target, by _id, after a refresh."""
    await call(client, "POST", f"/{INDEX}/_refresh")
    ids = [record.event.fingerprint for record in records]
    query = {"query": {"ids": {"values": ids}}, "size": len(ids)}
    found = await call(client, "POST", f"/{INDEX}/_search", query)
    return {hit["_id"]: hit["_source"] for hit in found["hits"]["hits"]}


def fresh_records(count: int, **options: Any) -> list[Record]:
    return make_records(count, start=time.time_ns() // 1000, **options)


async def test_healthcheck_passes(output: ElasticsearchOutput) -> None:
    await output.healthcheck()


async def test_documents_arrive_once_by_id_even_when_sent_twice(
    output: ElasticsearchOutput, rest: HttpClient
) -> None:
    records = fresh_records(3)
    assert await output.send(records) == Delivered()
    assert await output.send(records) == Delivered()  # 409 conflicts count as delivered
    found = await stored(rest, records)
    assert set(found) == {record.event.fingerprint for record in records}
    await call(rest, "POST", f"/{INDEX}/_refresh")
    ids = [record.event.fingerprint for record in records]
    counted = await call(rest, "POST", f"/{INDEX}/_count", {"query": {"ids": {"values": ids}}})
    assert counted["count"] == 3


async def test_text_records_arrive_as_message_with_timestamp(
    output: ElasticsearchOutput, rest: HttpClient
) -> None:
    records = fresh_records(2, body="text")
    assert await output.send(records) == Delivered()
    found = await stored(rest, records)
    document = found[records[0].event.fingerprint]
    assert document["message"] == records[0].body
    assert document["@timestamp"].startswith("2026-03-05T08:00:01")


async def test_wrong_credentials_need_an_operator() -> None:
    wrong = ElasticsearchOutput(
        es_config(api_key="bm90LWFuLWlkOm5vdC1hLWtleQ==", username=None, password=None)
        if API_KEY
        else es_config(password="not-the-password")
    )
    try:
        result = await wrong.send(fresh_records(1))
    finally:
        await wrong.aclose()
    assert isinstance(result, Retry) and result.operator_action, result
    assert "HTTP 401" in result.reason
