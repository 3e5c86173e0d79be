"""Fuzzing the payload parser, every mapper and the webhook itself (Hypothesis).

- Arbitrary bytes and arbitrary JSON into `parse_event`: an event or PayloadError, nothing else.
- Every JSON object into every registered format (several option sets each): a record or
  MappingError, never another exception; a text record is one line, a document re-encodes.
- Arbitrary bodies, content types and encodings over HTTP (aiohttp's test client against the
  real application and store): 200 or a 4xx with a JSON error, never a 500 or a dropped
  connection, and every 200 is in the store.

Sizes are kept small for the normal suite; `HYPOTHESIS_PROFILE_RELIABILITY=reliability-long`
(bench/reliability.py sets it) runs fifty times more examples.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder.app import build_app
from forwarder.events import CanaryEvent, PayloadError, parse_event
from forwarder.mappers.base import Mapper, MappingError, Record
from forwarder.pipeline import Pipeline
from forwarder.registry import BUILTIN_MAPPERS, mapper_class
from forwarder.settings import parse_settings
from tests.mappers.helpers import payloads

pytestmark = pytest.mark.reliability

settings.register_profile(
    "reliability",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "reliability-long",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE_RELIABILITY", "reliability"))
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
CANARY_KEYS = [
    "Description", "Timestamp", "CanaryName", "CanaryID", "CanaryIP", "CanaryPublicIP",
    "CanaryLocation", "CanaryPort", "SourceIP", "ReverseDNS", "IncidentHash", "IncidentKey",
    "Intro", "AdditionalDetails", "AlertType", "LogType", "MatchedAnnotations", "Flock", "Token",
    "Reminder", "Triggered", "type", "payload",
]  # fmt: skip
# Objects with the keys the parser looks at, holding values of any JSON type.
canary_shaped = st.dictionaries(
    st.one_of(st.sampled_from(CANARY_KEYS), st.text(max_size=8)), json_values, max_size=12
)
objects = st.one_of(canary_shaped, payloads, st.dictionaries(st.text(), json_values, max_size=6))

# Every built-in format, with its default options and a few that change its code paths.
FORMAT_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    *((name, {}) for name in BUILTIN_MAPPERS),
    ("cef", {"syslog_header": "rfc5424"}),
    ("cef", {"syslog_header": "rfc3164"}),
    ("leef", {"delimiter": "x09", "syslog_header": "rfc5424"}),
    ("rfc5424", {"thinkst_compat": True}),
    ("json", {"include_payload": False}),
]


def build_mappers() -> list[tuple[str, Mapper[Any]]]:
    built = []
    for name, options in FORMAT_OPTIONS:
        cls = mapper_class(name)  # a format that cannot be imported fails the suite here
        built.append((f"{name}{options or ''}", cls(cls.config_class(type=name, **options))))
    return built


MAPPERS = build_mappers()


def check_record(label: str, record: Record) -> None:
    if isinstance(record.body, str):
        assert "\n" not in record.body and "\r" not in record.body, label
        record.body.encode("utf-8")  # no lone surrogate can have got in
    else:
        orjson.dumps(record.body)  # a document the outputs can encode
    assert 0 <= record.severity <= 10, label


def map_everywhere(event: CanaryEvent) -> None:
    for label, mapper in MAPPERS:
        try:
            record = mapper.map(event)
        except MappingError:
            continue  # dead-lettered with its reason: allowed
        check_record(label, record)


@PROFILE
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_parse_or_raise_payload_error(raw: bytes) -> None:
    try:
        event = parse_event(raw, received_at=RECEIVED)
    except PayloadError:
        return
    assert event.raw == raw
    map_everywhere(event)


@PROFILE
@given(objects)
def test_every_json_object_parses_and_maps_in_every_format(payload: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return  # e.g. an integer beyond 64 bits: no client could have sent it as such
    try:
        event = parse_event(raw, received_at=RECEIVED)
    except PayloadError as exc:
        # Only nesting beyond the limit is refused in a valid JSON object.
        assert "deep" in str(exc), exc
        return
    map_everywhere(event)


# Over HTTP


class Webhook:
    """The real application on a test server, run from a synchronous Hypothesis test."""

    def __init__(self, state: Path) -> None:
        self.loop = asyncio.new_event_loop()
        settings_ = parse_settings(
            {
                "store": {"path": str(state), "dedupe_window_secs": 0},
                "outputs": [{"name": "mem", "type": "memory", "batch": {"timeout_secs": 0}}],
            },
            environ={},
        )
        self.pipeline: Pipeline = self.loop.run_until_complete(Pipeline.start(settings_))

        async def start() -> TestClient[Any, Any]:
            # auto_decompress=False as `canary-forwarder run` sets it: compressed bodies are
            # refused by the handler, never inflated by aiohttp.
            server = TestServer(build_app(self.pipeline))
            await server.start_server(auto_decompress=False)
            client: TestClient[Any, Any] = TestClient(server)
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            async with self.client.post("/canary", data=body, headers=headers) as answer:
                return answer.status, await answer.read()

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.pipeline.stop(graceful_secs=2))
        self.loop.close()


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    running = Webhook(tmp_path / "state")
    yield running
    running.close()


content_types = st.one_of(
    st.just("application/json"),
    st.sampled_from(
        ["application/json; charset=utf-8", "application/cloudevents+json", "text/plain", ""]
    ),
    st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
)
bodies = st.one_of(
    st.binary(max_size=4096),
    objects.map(lambda o: orjson.dumps(o, option=orjson.OPT_NON_STR_KEYS)),
    payloads.map(orjson.dumps),
)
encodings = st.sampled_from([None, "identity", "gzip", "deflate", "br", "x"])


@PROFILE
@given(body=bodies, content_type=content_types, encoding=encodings)
def test_any_post_gets_200_or_a_4xx_never_a_500(
    webhook: Webhook, body: bytes, content_type: str, encoding: str | None
) -> None:
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    try:
        headers_ok = all(value.isprintable() for value in headers.values())
    except UnicodeError:
        headers_ok = False
    if not headers_ok:
        return
    status, answer = webhook.post(body, headers)
    assert status == 200 or 400 <= status < 500, (status, answer[:300])
    document = json.loads(answer)
    if status == 200:
        assert document["status"] in ("stored", "duplicate")
    else:
        assert isinstance(document.get("error"), str)
    assert webhook.pipeline.outbox.healthy
