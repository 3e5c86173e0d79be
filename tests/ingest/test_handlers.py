from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from forwarder.app import build_app
from forwarder.events import parse_event
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from forwarder.store.database import Database
from tests.helpers import SAMPLES, memory_output, sample

SECRET = "correct-horse-battery-staple"
JSON = {"Content-Type": "application/json"}
AUTH = {"X-Canary-Token": SECRET, **JSON}

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Started = Callable[..., Awaitable[tuple[TestClient[Any, Any], Pipeline]]]


@pytest.fixture
async def start(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Started]:
    running: list[Pipeline] = []

    async def starter(**listen: Any) -> tuple[TestClient[Any, Any], Pipeline]:
        settings = make_settings(listen=listen) if listen else make_settings()
        pipeline = await Pipeline.start(settings)
        running.append(pipeline)
        return await aiohttp_client(build_app(pipeline)), pipeline

    yield starter
    for pipeline in running:
        await pipeline.stop(graceful_secs=5)


def quarantined(pipeline: Pipeline) -> list[tuple[str, bytes]]:
    database = Database(pipeline.settings.store.path)
    try:
        return [(reason, body) for _, _, reason, _, body in database.quarantined()]
    finally:
        database.close()


async def test_every_sample_is_stored_then_delivered(start: Started) -> None:
    client, pipeline = await start()
    names = ["incident_ftp_login", "canarytoken_web_bug", "audit_user_login", "test_event",
             "operational_disconnected"]  # fmt: skip
    for name in names:
        response = await client.post("/canary", data=sample(name), headers=JSON)
        assert response.status == 200
        answer = await response.json()
        assert answer["status"] == "stored"
    kinds = ["incident", "canarytoken", "audit", "test", "operational"]
    records = await asyncio.wait_for(memory_output(pipeline).wait_for(5), 10)
    assert [r.event.kind.value for r in records] == kinds
    assert [r.event.raw for r in records] == [sample(n) for n in names]


async def test_200_means_committed(start: Started) -> None:
    client, pipeline = await start()
    for dispatcher in pipeline.dispatchers:
        await dispatcher.stop(1)  # nothing delivers: the event can only be in the store
    response = await client.post("/canary", data=sample("incident_ssh_login"), headers=JSON)
    assert response.status == 200
    database = Database(pipeline.settings.store.path)
    try:
        [stored] = database.fetch("mem", 10, 1 << 20)
    finally:
        database.close()
    assert stored.body == sample("incident_ssh_login")
    assert stored.event_id == (await response.json())["id"]


async def test_duplicate_post_is_stored_once(start: Started) -> None:
    client, pipeline = await start()
    first = await client.post("/canary", data=sample("incident_ftp_login"), headers=JSON)
    second = await client.post("/canary", data=sample("incident_ftp_login"), headers=JSON)
    assert (await first.json())["status"] == "stored"
    assert (await second.json()) == {
        "status": "duplicate",
        "id": "bc84b27ca5327d9d7f915fadae7ef9a4",
    }
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    assert len(memory_output(pipeline).records) == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "body is not valid UTF-8 JSON"),
        (b"[1, 2]", "body is JSON list, not an object"),
        (b'"text"', "body is JSON str, not an object"),
        (b"\xff\xfe{}", "body is not valid UTF-8 JSON"),
    ],
)
async def test_unreadable_body_is_400_and_quarantined(
    start: Started, body: bytes, detail: str
) -> None:
    client, pipeline = await start()
    response = await client.post("/canary", data=body, headers=JSON)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "invalid_payload"
    assert answer["detail"].startswith(detail)
    assert quarantined(pipeline) == [(f"invalid_payload: {answer['detail']}", body)]


async def test_wrong_content_type_is_415_and_quarantined(start: Started) -> None:
    client, pipeline = await start()
    body = sample("test_event")
    response = await client.post("/canary", data=body, headers={"Content-Type": "text/plain"})
    assert response.status == 415
    assert await response.json() == {"error": "content_type_not_json"}
    assert quarantined(pipeline)[0][1] == body


async def test_compressed_body_is_refused(start: Started) -> None:
    client, _ = await start()
    headers = {**JSON, "Content-Encoding": "gzip"}
    response = await client.post("/canary", data=b"\x1f\x8b" + b"\0" * 20, headers=headers)
    assert response.status == 415
    assert await response.json() == {"error": "content_encoding_not_supported"}


async def test_body_over_limit_is_413(start: Started) -> None:
    client, _ = await start(max_body_bytes=2048)
    response = await client.post("/canary", data=b"{" + b" " * 4096 + b"}", headers=JSON)
    assert response.status == 413
    assert await response.json() == {"error": "body_too_large"}


async def test_chunked_body_over_limit_is_413(start: Started) -> None:
    client, _ = await start(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    response = await client.post("/canary", data=chunks(), headers=JSON)
    assert response.status == 413


async def test_wrong_method_is_405(start: Started) -> None:
    client, _ = await start()
    assert (await client.get("/canary")).status == 405
    assert (await client.put("/canary", data=b"{}")).status == 405


async def test_header_secret(start: Started) -> None:
    client, pipeline = await start(auth={"header": "X-Canary-Token", "secret": SECRET})
    body = sample("test_event")
    ok = await client.post("/canary", data=body, headers=AUTH)
    assert ok.status == 200
    for headers in (JSON, {**JSON, "X-Canary-Token": SECRET[:-1]}, {**JSON, "X-Other": SECRET}):
        refused = await client.post("/canary", data=body, headers=headers)
        assert refused.status == 401
        assert await refused.json() == {"error": "unauthorized"}
    assert quarantined(pipeline) == []  # unauthenticated bodies are not kept


async def test_basic_auth(start: Started) -> None:
    client, _ = await start(auth={"basic": {"username": "canary", "password": SECRET}})
    good = base64.b64encode(f"canary:{SECRET}".encode()).decode()
    bad = base64.b64encode(b"canary:wrong").decode()
    body = sample("test_event")
    assert (
        await client.post("/canary", data=body, headers={**JSON, "Authorization": f"Basic {good}"})
    ).status == 200
    assert (
        await client.post("/canary", data=body, headers={**JSON, "Authorization": f"Basic {bad}"})
    ).status == 401
    assert (
        await client.post("/canary", data=body, headers={**JSON, "Authorization": "Basic !!"})
    ).status == 401


async def test_secret_path(start: Started) -> None:
    client, _ = await start(auth={"secret_path": SECRET})
    body = sample("test_event")
    assert (await client.post(f"/canary/{SECRET}", data=body, headers=JSON)).status == 200
    assert (
        await client.post("/canary/guess-guess-guess-guess", data=body, headers=JSON)
    ).status == 401
    assert (await client.post("/canary", data=body, headers=JSON)).status == 401


async def test_failed_attempts_are_rate_limited(start: Started) -> None:
    client, _ = await start(auth={"header": "X-Canary-Token", "secret": SECRET})
    statuses = []
    for _ in range(15):
        response = await client.post("/canary", data=b"{}", headers={**JSON, "X-Canary-Token": "x"})
        statuses.append(response.status)
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    assert int(response.headers["Retry-After"]) >= 1
    # Even the right secret waits until the bucket refills: no free guesses after the block.
    assert (await client.post("/canary", data=b"{}", headers=AUTH)).status == 429


async def test_allow_list(start: Started) -> None:
    client, _ = await start(allow=["10.0.0.0/8"])
    response = await client.post("/canary", data=sample("test_event"), headers=JSON)
    assert response.status == 403
    assert await response.json() == {"error": "forbidden"}


async def test_forwarded_for_is_believed_only_from_trusted_proxies(start: Started) -> None:
    client, _ = await start(allow=["192.0.2.0/24"], trusted_proxies=["127.0.0.0/8"])
    body = sample("test_event")
    forwarded = {**JSON, "X-Forwarded-For": "198.51.100.9, 192.0.2.7"}
    assert (await client.post("/canary", data=body, headers=forwarded)).status == 200
    spoofed = {**JSON, "X-Forwarded-For": "192.0.2.7, 198.51.100.9"}
    assert (await client.post("/canary", data=body, headers=spoofed)).status == 403


async def test_full_store_answers_503_with_retry_after(start: Started) -> None:
    client, pipeline = await start()
    pipeline.outbox.bytes = pipeline.settings.store.max_bytes
    response = await client.post("/canary", data=sample("test_event"), headers=JSON)
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert await response.json() == {"error": "store_full"}


async def test_health_endpoints(start: Started) -> None:
    client, pipeline = await start()
    assert await (await client.get("/healthz")).json() == {"status": "alive"}
    assert await (await client.get("/readyz")).json() == {"status": "ready"}
    pipeline.dispatchers[0].failing_since = -1e9
    pipeline.dispatchers[0].last_error = "connection refused"
    not_ready = await client.get("/readyz")
    assert not_ready.status == 503
    assert await not_ready.json() == {
        "status": "not_ready",
        "problems": {"output mem": "connection refused"},
    }


async def test_metrics_exposition(start: Started) -> None:
    client, pipeline = await start()
    await client.post("/canary", data=sample("incident_ssh_login"), headers=JSON)
    await client.post("/canary", data=b"nope", headers=JSON)
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert 'canary_forwarder_accepted_total{kind="incident"}' in text
    assert 'canary_forwarder_rejected_total{reason="invalid_payload"}' in text
    assert 'canary_forwarder_http_requests_total{handler="/canary",status="400"}' in text
    assert 'canary_forwarder_output_sent_events_total{output="mem"}' in text
    assert "canary_forwarder_store_events " in text


async def test_every_sample_file_is_accepted_over_http(start: Started) -> None:
    """Each payload in tests/samples gets a 200 with the kind the parser gives it."""
    client, pipeline = await start()
    names = sorted(p.stem for p in SAMPLES.glob("*.json"))
    assert len(names) >= 30
    for name in names:
        expected = parse_event(sample(name), received_at=datetime.now(UTC)).kind.value
        response = await client.post("/canary", data=sample(name), headers=JSON)
        assert response.status == 200, name
        answer = await response.json()
        assert (answer["status"], answer.get("kind")) == ("stored", expected), name
    records = await asyncio.wait_for(memory_output(pipeline).wait_for(len(names)), 10)
    assert sorted(r.event.raw for r in records) == sorted(sample(n) for n in names)
