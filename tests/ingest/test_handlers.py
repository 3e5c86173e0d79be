from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from forwarder.events import parse_event
from forwarder.ingest import handlers
from forwarder.ingest.handlers import LIMITER
from forwarder.outputs.base import HealthcheckError
from forwarder.pipeline import Pipeline
from forwarder.settings import ConfigError, Settings
from forwarder.store.database import Database
from forwarder.telemetry import metrics
from tests.helpers import SAMPLES, ClientFactory, memory_output, sample, served_pipelines

SECRET = "correct-horse-battery-staple"
JSON = {"Content-Type": "application/json"}
AUTH = {"X-Canary-Token": SECRET, **JSON}
BASIC = {"basic": {"username": "canary", "password": SECRET}}

Started = Callable[..., Awaitable[tuple[TestClient[Any, Any], Pipeline]]]


@pytest.fixture
async def start(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Started]:
    async with served_pipelines(aiohttp_client) as serve:

        async def starter(
            *, store: Mapping[str, Any] | None = None, **listen: Any
        ) -> tuple[TestClient[Any, Any], Pipeline]:
            overrides: dict[str, Any] = {"listen": listen} if listen else {}
            if store:
                overrides["store"] = {"path": str(make_settings().store.path), **store}
            return await serve(make_settings(**overrides))

        yield starter


def quarantined(pipeline: Pipeline) -> list[tuple[str, bytes]]:
    database = Database(pipeline.settings.store.path)
    try:
        return [(reason, body) for _, _, reason, _, body in database.quarantined()]
    finally:
        database.close()


async def raw_post(
    client: TestClient[Any, Any],
    headers: bytes = b"",
    body: bytes = b"{}",
    *,
    content_length: int | None = None,
    path: bytes = b"/canary",
) -> tuple[int, Any]:
    """Post bytes the aiohttp client will not send (non-ASCII headers, a short body).

    Returns the status and the JSON answer.
    """
    reader, writer = await asyncio.open_connection(client.host, client.port)
    length = len(body) if content_length is None else content_length
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n" + headers + b"Content-Length: %d\r\n\r\n" % length
    )
    try:
        writer.write(head + body)
        await writer.drain()
        # Not until EOF: after an answer to a short body aiohttp lingers, reading the rest.
        answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = answer_head.decode().splitlines()
        [length] = [
            int(line.partition(":")[2])
            for line in header_lines
            if line.lower().startswith("content-length:")
        ]
        answer = await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1]), orjson.loads(answer)


def rejected(reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("canary_forwarder_rejected_total", {"reason": reason})
        or 0.0
    )


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


async def test_posts_that_differ_only_in_a_long_number_are_both_stored(start: Started) -> None:
    client, _ = await start()
    body = b'{"Description": "x", "CanaryID": "c", "AdditionalDetails": [["n", %s]]}'
    for number in (b"123456789012345678901234567890", b"123456789012345678901234567891"):
        response = await client.post("/canary", data=body % number, headers=JSON)
        assert (await response.json())["status"] == "stored"


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


async def test_compressed_body_is_refused_and_quarantined_as_sent(start: Started) -> None:
    client, pipeline = await start()
    body = gzip.compress(sample("test_event"))
    headers = {**JSON, "Content-Encoding": "gzip"}
    response = await client.post("/canary", data=body, headers=headers)
    assert response.status == 415
    assert await response.json() == {"error": "content_encoding_not_supported"}
    assert quarantined(pipeline) == [("content_encoding_not_supported", body)]


async def test_compressed_body_over_limit_is_still_415(start: Started) -> None:
    client, pipeline = await start(max_body_bytes=2048)
    headers = {**JSON, "Content-Encoding": "gzip"}
    response = await client.post("/canary", data=b"\x1f\x8b" + b"\0" * 4096, headers=headers)
    assert response.status == 415
    assert await response.json() == {"error": "content_encoding_not_supported"}
    assert quarantined(pipeline) == [
        ("content_encoding_not_supported; body_too_large: Content-Length 4098", b"")
    ]


async def test_body_over_limit_is_413_and_the_refusal_quarantined(start: Started) -> None:
    client, pipeline = await start(max_body_bytes=2048)
    response = await client.post("/canary", data=b"{" + b" " * 4096 + b"}", headers=JSON)
    assert response.status == 413
    assert await response.json() == {"error": "body_too_large"}
    # Refused on its Content-Length, before any of it was read.
    assert quarantined(pipeline) == [("body_too_large: Content-Length 4098", b"")]


async def test_chunked_body_over_limit_is_413_and_what_arrived_quarantined(
    start: Started,
) -> None:
    client, pipeline = await start(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    response = await client.post("/canary", data=chunks(), headers=JSON)
    assert response.status == 413
    assert await response.json() == {"error": "body_too_large"}
    [(reason, kept)] = quarantined(pipeline)
    assert reason == "body_too_large: more than 2048 bytes"
    assert 2048 < len(kept) <= 10 * 1024
    assert kept == b" " * len(kept)


async def test_slow_body_is_408_and_what_arrived_quarantined(
    start: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "BODY_TIMEOUT_SECS", 0.2)
    client, pipeline = await start()
    arrived = b'{"partial": '
    answer = await raw_post(client, body=arrived, content_length=100)
    assert answer == (408, {"error": "body_timeout"})
    assert quarantined(pipeline) == [("body_timeout: 12 bytes within 0.2 s", arrived)]


async def test_wrong_method_is_405(start: Started) -> None:
    client, _ = await start()
    assert (await client.get("/canary")).status == 405
    answer = await client.put("/canary", data=b"{}")
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert await answer.json() == {"error": "method_not_allowed"}


async def test_an_unknown_path_is_a_json_404(start: Started) -> None:
    client, _ = await start()
    answer = await client.post("/elsewhere", data=b"{}")
    assert answer.status == 404
    assert await answer.json() == {"error": "not_found"}


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
    client, _ = await start(auth=BASIC)
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


@pytest.mark.parametrize(
    ("auth", "credential"),
    [
        ({"header": "X-Canary-Token", "secret": SECRET}, b"X-Canary-Token: caf\xe9\r\n"),
        (BASIC, "Authorization: Basic é\r\n".encode()),
        (BASIC, b"Authorization: Basic caf\xe9\r\n"),
        (BASIC, b"Authorization: Basic " + base64.b64encode(b"canary:caf\xe9") + b"\r\n"),
    ],
    ids=["header-latin1", "basic-utf8-not-base64", "basic-latin1", "basic-decodes-to-latin1"],
)
async def test_credentials_that_are_not_utf8_are_wrong_ones(
    start: Started, auth: dict[str, Any], credential: bytes
) -> None:
    client, _ = await start(auth=auth)
    limiter = client.app[LIMITER]
    limiter.burst = 1  # so the one failed attempt, if counted, blocks the next
    answer = await raw_post(client, credential, sample("test_event"))
    assert answer == (401, {"error": "unauthorized"})
    assert limiter.blocked("127.0.0.1") is not None


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


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["10.1.1.1, 203.0.113.9"], 403),
        # HAProxy adds a line of its own: the client's line comes first, not last.
        (["10.1.1.1", "203.0.113.9"], 403),
        (["203.0.113.9", "10.1.1.1"], 200),
    ],
    ids=["one-line", "spoofed-line-first", "allowed-client-last"],
)
async def test_forwarded_for_lines_are_read_as_one_list(
    start: Started, lines: list[str], status: int
) -> None:
    client, _ = await start(allow=["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
    headers = CIMultiDict([*JSON.items(), *(("X-Forwarded-For", line) for line in lines)])
    response = await client.post("/canary", data=sample("test_event"), headers=headers)
    assert response.status == status


async def test_full_store_answers_503_with_retry_after(start: Started) -> None:
    client, pipeline = await start()
    pipeline.outbox.bytes = pipeline.settings.store.max_bytes
    refused_before = rejected("store_full")
    with structlog.testing.capture_logs() as logs:
        response = await client.post("/canary", data=sample("test_event"), headers=JSON)
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert await response.json() == {"error": "store_full"}
    assert rejected("store_full") == refused_before + 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "Store is full; post refused with 503."
    ]


@pytest.mark.parametrize(
    "bounds", [{"max_count": 2}, {"max_bytes": 2 * len(b"not json 0")}], ids=["count", "bytes"]
)
async def test_quarantine_keeps_the_newest_within_the_configured_bounds(
    start: Started, bounds: dict[str, int]
) -> None:
    client, pipeline = await start(store={"quarantine": bounds})
    bodies = [b"not json %d" % n for n in range(3)]
    for body in bodies:
        assert (await client.post("/canary", data=body, headers=JSON)).status == 400
    assert [body for _, body in quarantined(pipeline)] == bodies[1:]


async def test_each_accepted_event_is_logged_once_with_its_id_and_kind(start: Started) -> None:
    client, _ = await start()
    names = ["incident_ssh_login", "canarytoken_web_bug"]
    with structlog.testing.capture_logs() as logs:
        answers = [
            await (await client.post("/canary", data=sample(name), headers=JSON)).json()
            for name in names
        ]
        duplicate = await client.post("/canary", data=sample(names[0]), headers=JSON)
    assert (await duplicate.json())["status"] == "duplicate"
    accepted = [
        (e["log_level"], e["event_id"], e["kind"]) for e in logs if e["event"] == "Event accepted."
    ]
    assert accepted == [("info", answer["id"], answer["kind"]) for answer in answers]


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


async def test_readyz_fails_for_an_idle_output_whose_healthcheck_keeps_failing(
    start: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, pipeline = await start()
    output = memory_output(pipeline)

    async def refused() -> None:
        raise HealthcheckError("cannot connect to 127.0.0.1:9: connection refused")

    monkeypatch.setattr(output, "healthcheck", refused)
    await pipeline.check_outputs()  # what the pipeline runs every 30 s
    assert (await client.get("/readyz")).status == 200  # a blip does not pull readiness
    monkeypatch.setattr(handlers, "READY_OUTPUT_FAILING_SECS", 0.0)
    not_ready = await client.get("/readyz")
    assert not_ready.status == 503
    assert await not_ready.json() == {
        "status": "not_ready",
        "problems": {
            "output mem": "healthcheck: cannot connect to 127.0.0.1:9: connection refused"
        },
    }


async def test_readyz_answers_in_bounded_time_while_the_store_probe_hangs(
    start: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, pipeline = await start()
    pipeline.outbox.healthy = False
    pipeline.outbox.last_error = "disk I/O error"

    async def stuck() -> bool:
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(pipeline.outbox, "probe", stuck)
    monkeypatch.setattr(handlers, "READY_PROBE_SECS", 0.05)
    async with asyncio.timeout(5):
        answer = await client.get("/readyz")
    assert answer.status == 503
    assert (await answer.json())["problems"] == {"store": "disk I/O error"}


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


# Status endpoints and who may read them (listen.status_allow)
# --------------------------------------------------------------------------------------------

FROM_INTERNET = {"X-Forwarded-For": "203.0.113.9"}


async def test_metrics_and_readyz_reasons_are_refused_to_clients_outside_status_allow(
    start: Started,
) -> None:
    client, pipeline = await start(trusted_proxies=["127.0.0.1/32"])
    pipeline.dispatchers[0].failing_since = -1e9
    pipeline.dispatchers[0].last_error = "cannot connect to 10.1.2.3:8088"
    metrics_answer = await client.get("/metrics", headers=FROM_INTERNET)
    assert metrics_answer.status == 403
    assert await metrics_answer.json() == {"error": "forbidden"}
    ready = await client.get("/readyz", headers=FROM_INTERNET)
    assert ready.status == 503  # the status itself is no secret: probes need it
    assert await ready.json() == {"status": "not_ready"}
    assert (await client.get("/healthz", headers=FROM_INTERNET)).status == 200
    # The same daemon answers in full to a private address behind the same proxy.
    inside = {"X-Forwarded-For": "10.0.0.7"}
    assert (await client.get("/metrics", headers=inside)).status == 200
    assert (await (await client.get("/readyz", headers=inside)).json())["problems"] == {
        "output mem": "cannot connect to 10.1.2.3:8088"
    }


async def test_status_allow_can_open_metrics_to_everyone(start: Started) -> None:
    client, _ = await start(trusted_proxies=["127.0.0.1/32"], status_allow=["0.0.0.0/0", "::/0"])
    assert (await client.get("/metrics", headers=FROM_INTERNET)).status == 200


async def test_an_empty_status_allow_refuses_metrics_even_on_loopback(start: Started) -> None:
    client, _ = await start(status_allow=[])
    assert (await client.get("/metrics")).status == 403


async def test_status_allow_rejects_a_value_that_is_not_a_cidr(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigError, match=r"listen\.status_allow.*'10\.0\.0\.0/33' is not a CIDR"):
        make_settings(listen={"status_allow": ["10.0.0.0/33"]})
