"""Opt-in: the splunk_hec output against a real Splunk HEC.

Set SPLUNK_HEC_URL (base URL, e.g. https://splunk.example:8088) and SPLUNK_HEC_TOKEN. Optional:
SPLUNK_HEC_INDEX (an index the token may write to), SPLUNK_HEC_CA_FILE (PEM of the CA that
signed HEC's certificate), SPLUNK_HEC_INSECURE=1 (skip certificate checks, for Splunk's default
self-signed certificate), SPLUNK_HEC_ACK=1 (the token has indexer acknowledgement on).

What arrives is checked by HEC's own answers (200 with code 0, or the acknowledgement), not by a
search. Every event has source `canary-forwarder-realpeer-test`, to find and delete them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from yarl import URL

from forwarder.outputs._http import HttpAnswer, HttpClient
from forwarder.outputs.base import Delivered, Retry
from forwarder.outputs.splunk_hec import SplunkHecConfig, SplunkHecOutput, hec_envelope
from tests.peers.records import make_records

HEC_URL = os.environ.get("SPLUNK_HEC_URL")
TOKEN = os.environ.get("SPLUNK_HEC_TOKEN")
SOURCE = "canary-forwarder-realpeer-test"

pytestmark = [
    pytest.mark.realpeer,
    pytest.mark.skipif(
        not (HEC_URL and TOKEN),
        reason="set SPLUNK_HEC_URL and SPLUNK_HEC_TOKEN to run against Splunk",
    ),
]


def hec_config(**overrides: Any) -> SplunkHecConfig:
    tls: dict[str, Any] = {}
    if os.environ.get("SPLUNK_HEC_CA_FILE"):
        tls["ca_file"] = os.environ["SPLUNK_HEC_CA_FILE"]
    if os.environ.get("SPLUNK_HEC_INSECURE") == "1":
        tls["verify"] = False
    data: dict[str, Any] = {
        "name": "real-splunk",
        "type": "splunk_hec",
        "url": HEC_URL,
        "token": TOKEN,
        "source": SOURCE,
        "tls": tls,
        "indexer_ack": os.environ.get("SPLUNK_HEC_ACK") == "1",
        "ack_timeout_secs": 120,
        "ack_poll_interval_secs": 1,
    }
    if os.environ.get("SPLUNK_HEC_INDEX"):
        data["index"] = os.environ["SPLUNK_HEC_INDEX"]
    return SplunkHecConfig.model_validate({**data, **overrides})


@pytest.fixture
async def output() -> AsyncIterator[SplunkHecOutput]:
    running = SplunkHecOutput(hec_config())
    await running.start()
    yield running
    await running.aclose()


def fresh_records(count: int, **options: Any) -> list[Any]:
    # Distinct events on every run, so runs never look like duplicates of each other.
    return make_records(count, start=time.time_ns() // 1000, **options)


async def test_healthcheck_passes(output: SplunkHecOutput) -> None:
    await output.healthcheck()


async def test_a_batch_of_documents_and_text_is_accepted(output: SplunkHecOutput) -> None:
    assert await output.send(fresh_records(3)) == Delivered()
    assert await output.send(fresh_records(2, body="text")) == Delivered()


async def test_a_wrong_token_needs_an_operator() -> None:
    wrong = SplunkHecOutput(hec_config(token="00000000-0000-4000-8000-000000000000"))
    try:
        result = await wrong.send(fresh_records(1))
    finally:
        await wrong.aclose()
    assert isinstance(result, Retry) and result.operator_action, result
    assert "HEC code 4" in result.reason or "HEC code 1" in result.reason


async def test_hec_stops_at_a_blank_event_and_names_it() -> None:
    """What the code-6 split relies on: HEC names the first bad envelope of a batch."""
    config = hec_config()
    client = HttpClient(config, [URL(config.url[0])], {"Authorization": f"Splunk {TOKEN}"})
    good = hec_envelope(fresh_records(1)[0], config)
    body = orjson.dumps(good) + orjson.dumps({**good, "event": ""}) + orjson.dumps(good)
    try:
        answer = await client.request(
            "POST",
            "/services/collector/event",
            body=body,
            headers={"X-Splunk-Request-Channel": "0b9a1c57-3f9e-4d0c-9a55-6a0b3c2d1e0f"},
        )
    finally:
        await client.aclose()
    assert isinstance(answer, HttpAnswer), answer
    reply = answer.json()
    assert answer.status == 400, reply
    assert reply["code"] == 13 and reply["invalid-event-number"] == 1
