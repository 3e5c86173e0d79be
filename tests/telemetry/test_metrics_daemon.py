"""GET /metrics of the real daemon, across a SIGHUP that removes one output and renames another.

tests/telemetry/test_metrics.py checks the same in process; this is what Prometheus scrapes from
`canary-forwarder run`, with the reload the operator triggers.
"""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.harness import (
    JSON_HEADERS,
    DaemonFactory,
    drained,
    file_output,
    incident,
    wait_until_async,
)

pytestmark = pytest.mark.slow

SECRET_HEADER = "X-Canary-Token"
SECRET = "hdr-Secret-8e21c4d07b9f3a56"
RUNNING_GAUGES = (
    "canary_forwarder_output_in_flight_events",
    "canary_forwarder_output_queued_events",
    "canary_forwarder_output_last_success_timestamp_seconds",
)


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, Metric]:
    async with session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def outputs_of(families: dict[str, Metric], name: str) -> dict[str, float]:
    return {s.labels["output"]: s.value for s in families[name].samples if "output" in s.labels}


async def test_a_sighup_that_removes_an_output_removes_its_gauges(
    daemons: DaemonFactory, tmp_path: Path
) -> None:
    listen = {"auth": {"header": SECRET_HEADER, "secret": SECRET}}
    daemon = daemons(
        {
            "listen": listen,
            "outputs": [
                file_output("keep", tmp_path / "keep.jsonl"),
                file_output("gone", tmp_path / "gone.jsonl"),
            ],
        }
    )
    await daemon.start()
    metrics_url = f"{daemon.base_url}/metrics"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        _, body = incident()
        headers = {**JSON_HEADERS, SECRET_HEADER: SECRET}
        async with session.post(daemon.webhook_url, data=body, headers=headers) as answer:
            assert answer.status == 200

        async def delivered() -> bool:
            families = await scrape(session, metrics_url)
            sent = outputs_of(families, "canary_forwarder_output_sent_events")
            return await drained(daemon, session) and sent.get("gone") == 1

        await wait_until_async(delivered, timeout=10, what="both outputs delivered")
        families = await scrape(session, metrics_url)
        for name in RUNNING_GAUGES:
            assert "gone" in outputs_of(families, name), name
        assert families["process_resident_memory_bytes"].samples[0].value > 0
        assert families["process_open_fds"].samples[0].value > 0

        daemon.write_config(
            {
                "listen": listen,
                "outputs": [
                    file_output("keep", tmp_path / "keep.jsonl"),
                    file_output("renamed", tmp_path / "gone.jsonl"),
                ],
            }
        )
        daemon.send_signal(signal.SIGHUP)
        await daemon.wait_for_log("Configuration reloaded.")
        families = await scrape(session, metrics_url)
        for name in (*RUNNING_GAUGES, "canary_forwarder_output_healthy"):
            assert "gone" not in outputs_of(families, name), f"{name} reports a removed output"
        assert outputs_of(families, "canary_forwarder_output_sent_events")["gone"] == 1
        assert outputs_of(families, "canary_forwarder_output_sent_events")["renamed"] == 0
        assert outputs_of(families, "canary_forwarder_output_queued_events")["renamed"] == 0
    assert await daemon.stop() == 0
