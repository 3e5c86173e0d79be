"""GET /metrics as an SRE who alerts on it sees it.

Every test scrapes a running app and reads the answer with prometheus_client's own parser, so
what is checked is what Prometheus gets: valid exposition, conventional names, a bounded number
of series whatever clients send, gauges that do not outlive the outputs they describe, and a
scrape that answers within a bound even when the store thread does not.
"""

from __future__ import annotations

import ast
import asyncio
import random
import string
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from forwarder.events import EventKind
from forwarder.pipeline import Pipeline
from forwarder.settings import Settings
from forwarder.store.database import Database, NewEvent
from forwarder.store.outbox import StoreUnavailable
from forwarder.telemetry import metrics
from tests.helpers import ClientFactory, memory_output, sample, served_pipelines

SECRET = "correct-horse-battery-staple"
JSON = {"Content-Type": "application/json"}
HANDLERS = Path(__file__).resolve().parents[2] / "forwarder" / "ingest" / "handlers.py"
# What Prometheus sends with every scrape; the answer must come well within it.
SCRAPE_TIMEOUT = "X-Prometheus-Scrape-Timeout-Seconds"

Serve = Callable[..., Awaitable[tuple[TestClient[Any, Any], Pipeline]]]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def memory(name: str) -> dict[str, Any]:
    return {"name": name, "type": "memory", "batch": {"timeout_secs": 0}}


@pytest.fixture
async def serve(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> AsyncIterator[Serve]:
    """`serve(**settings overrides)` -> a test client of the app and its pipeline."""
    async with served_pipelines(aiohttp_client) as start:

        async def starter(**overrides: Any) -> tuple[TestClient[Any, Any], Pipeline]:
            return await start(make_settings(**overrides))

        yield starter


# What an output reports about itself now: gone with it when a reload removes it.
OUTPUT_GAUGES = (
    "canary_forwarder_output_in_flight_events",
    "canary_forwarder_output_queued_events",
    "canary_forwarder_output_healthy",
    "canary_forwarder_output_last_success_timestamp_seconds",
)


async def scrape(client: TestClient[Any, Any], **headers: str) -> dict[str, Metric]:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(await response.text())
    return {family.name: family for family in families}


def series(families: Mapping[str, Metric]) -> Series:
    """Every sample by (sample name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families.values()
        for s in family.samples
    }


def values(families: Mapping[str, Metric], name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one family named `name` (a counter's name without `_total`)."""
    family = families.get(name)
    if family is None:
        return {}
    return {
        frozenset(s.labels.items()): s.value for s in family.samples if s.name != f"{name}_created"
    }


def output_values(families: Mapping[str, Metric], name: str, output: str) -> list[float]:
    return [v for labels, v in values(families, name).items() if ("output", output) in labels]


def value(families: Mapping[str, Metric], name: str, **labels: str) -> float:
    return values(families, name)[frozenset(labels.items())]


async def delivered(pipeline: Pipeline, output: str, since: float) -> None:
    """Wait until `output` has sent and acknowledged an event after `since` (time.time()).

    Its own gauge, not a counter: the registry is shared by every test in the process, and an
    earlier test's output of the same name leaves its counters behind.
    """
    await asyncio.wait_for(memory_output(pipeline, output).wait_for(1), 10)
    deadline = time.monotonic() + 10
    labels = {"output": output}
    while (
        metrics.REGISTRY.get_sample_value(
            "canary_forwarder_output_last_success_timestamp_seconds", labels
        )
        or 0
    ) < since:
        assert time.monotonic() < deadline, f"{output} never acknowledged its send"
        await asyncio.sleep(0.01)


# 1. Names, units, help text, and a valid exposition


UNIT_WORDS = ("duration", "latency", "age", "time", "timestamp", "uptime", "seconds")
NOT_BASE_UNITS = (
    "_milliseconds", "_ms", "_microseconds", "_us", "_minutes", "_hours", "_days",
    "_kilobytes", "_megabytes", "_gigabytes", "_kb", "_mb", "_bits", "_percent",
)  # fmt: skip
PREFIXES = ("canary_forwarder_", "process_", "python_")


async def test_exposition_is_valid_and_follows_the_naming_conventions(serve: Serve) -> None:
    client, pipeline = await serve()
    assert (await client.post("/canary", data=sample("incident_ssh_login"), headers=JSON)).ok
    assert (await client.post("/canary", data=b"nope", headers=JSON)).status == 400
    await asyncio.wait_for(memory_output(pipeline).wait_for(1), 10)
    await pipeline.check_outputs()
    families = await scrape(client)
    ours = [f for f in families.values() if f.name.startswith("canary_forwarder_")]
    assert len(ours) >= 19
    for family in families.values():
        name = family.name
        assert name.startswith(PREFIXES), name
        assert family.documentation.strip(), f"{name} has no help text"
        words = name.split("_")
        assert not any(f"_{w}" in NOT_BASE_UNITS for w in words), f"{name}: not a base unit"
        if family.type == "counter":
            # The parser strips `_total` from a counter family; every sample must carry it.
            assert not name.endswith("_total"), name
            assert {s.name for s in family.samples} <= {f"{name}_total"}, name
            unit_part = name
        elif family.type == "histogram":
            names = {s.name for s in family.samples}
            if names:
                assert names == {f"{name}_bucket", f"{name}_sum", f"{name}_count"}, name
                assert any(s.labels.get("le") == "+Inf" for s in family.samples), name
            unit_part = name
        else:
            assert family.type in ("gauge", "info"), (name, family.type)
            assert not name.endswith("_total"), f"gauge {name} is named like a counter"
            unit_part = name
        if any(word in UNIT_WORDS for word in words) and family.type != "info":
            assert unit_part.endswith("_seconds"), f"{name}: a time is in seconds, named so"
        if "bytes" in words:
            assert unit_part.endswith("_bytes"), f"{name}: bytes go at the end of the name"


async def test_process_and_python_metrics_are_exposed(serve: Serve) -> None:
    """RSS, file descriptors, CPU and the garbage collector, which the daemon tunes."""
    client, _ = await serve()
    families = await scrape(client)
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_gc_collections",
        "python_info",
    ):
        assert name in families, name
    assert families["process_cpu_seconds"].type == "counter"


# 2. Bounded cardinality


def _rejected_reasons_in_handlers() -> set[str]:
    """The `error` strings forwarder/ingest/handlers.py can count in `rejected`.

    Read from the source: every literal (or module constant) given as the error of `_error`,
    `_refuse` or `_BodyNotRead`, so a reason added there without METRICS knowing fails here.
    """
    tree = ast.parse(HANDLERS.read_text("utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    position = {"_error": 1, "_refuse": 3, "_BodyNotRead": 1}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        index = position.get(node.func.id)
        if index is None or len(node.args) <= index:
            continue
        arg = node.args[index]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in constants:
            found.add(constants[arg.id])
    return found


def test_rejected_reasons_are_a_fixed_set_known_to_the_metrics() -> None:
    found = _rejected_reasons_in_handlers()
    assert len(found) >= 8
    assert found == set(metrics.REJECT_REASONS)


async def test_series_stay_bounded_whatever_clients_send(serve: Serve) -> None:
    client, _ = await serve(listen={"auth": {"secret_path": SECRET}})
    rng = random.Random(20240611)

    def word(length: int = 12) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=length))

    # One request of every legitimate kind first, so what follows can only add what is hostile.
    await client.post(f"/canary/{SECRET}", data=sample("incident_ssh_login"), headers=JSON)
    for path in ("/healthz", "/readyz", "/metrics"):
        await client.get(path)
    before = series(await scrape(client))
    sent: set[str] = set()
    for _ in range(1000):
        path = f"/{word()}/{word(4)}"
        sent.add(path)
        async with client.request(rng.choice(("GET", "POST", "HEAD")), path) as response:
            await response.read()
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "MKCOL", "BREW", word(8)):
        for path in ("/canary", f"/canary/{SECRET}", "/metrics", "/healthz", f"/{word()}"):
            async with client.request(method, path) as response:
                await response.read()
    for _ in range(1000):
        secret = word(24)
        sent.add(secret)
        headers = {"Content-Type": rng.choice(("application/json", word(6), "text/x-" + word()))}
        async with client.post(f"/canary/{secret}", data=b"{}", headers=headers) as response:
            await response.read()
    after = series(await scrape(client))
    added = {key for key in after if key not in before}
    assert len(added) <= 20, sorted(added)
    label_values = {v for _, labels in after for _, v in labels}
    assert not label_values & sent, "a label took a value a client chose"
    handlers = {dict(labels).get("handler") for name, labels in after if "http_requests" in name}
    assert handlers <= {"/canary", "/canary/*", "/healthz", "/readyz", "/metrics", "unmatched"}
    reasons = {dict(ls)["reason"] for n, ls in after if n == "canary_forwarder_rejected_total"}
    assert reasons <= set(metrics.REJECT_REASONS)
    kinds = {dict(ls)["kind"] for n, ls in after if n == "canary_forwarder_accepted_total"}
    assert kinds <= {kind.value for kind in EventKind}
    statuses = {dict(ls)["status"] for n, ls in after if "http_requests" in n}
    assert all(s.isdigit() and len(s) == 3 for s in statuses), statuses


async def test_output_labels_come_from_the_configuration(serve: Serve) -> None:
    client, pipeline = await serve(outputs=[memory("label-one"), memory("label-two")])
    await client.post("/canary", data=sample("incident_ssh_login"), headers=JSON)
    await asyncio.wait_for(memory_output(pipeline, "label-two").wait_for(1), 10)
    families = await scrape(client)
    mine = {"label-one", "label-two"}
    for family in families.values():
        for s in family.samples:
            output = s.labels.get("output")
            if output in mine:
                continue
            # Series other tests in this process left on the shared registry are counters.
            assert output is None or family.type in ("counter", "histogram"), (s.name, output)


# 3. Reload


async def test_a_reload_removes_the_gauges_of_a_removed_output(
    serve: Serve, make_settings: Callable[..., Settings]
) -> None:
    """Removed or renamed: its in-flight, queued, healthy and last-success series go; its
    counters stay (a counter that vanished would read as a reset)."""
    client, pipeline = await serve(outputs=[memory("keep"), memory("gone")])
    since = time.time()
    sent_before = metrics.REGISTRY.get_sample_value(
        "canary_forwarder_output_sent_events_total", {"output": "gone"}
    )
    await client.post("/canary", data=sample("incident_ssh_login"), headers=JSON)
    await delivered(pipeline, "gone", since)
    await pipeline.check_outputs()
    families = await scrape(client)
    for name in OUTPUT_GAUGES:
        assert output_values(families, name, "gone"), name
    # "gone" is renamed "renamed": the same output under a new name.
    await pipeline.reload(make_settings(outputs=[memory("keep"), memory("renamed")]), 5)
    families = await scrape(client)
    for name in OUTPUT_GAUGES:
        assert not output_values(families, name, "gone"), f"{name} reports a removed output"
    assert output_values(families, "canary_forwarder_output_sent_events", "gone") == [
        (sent_before or 0) + 1
    ]
    assert value(families, "canary_forwarder_output_in_flight_events", output="renamed") == 0
    assert value(families, "canary_forwarder_output_queued_events", output="renamed") == 0
    assert value(families, "canary_forwarder_output_sent_events", output="renamed") == 0
    assert output_values(families, "canary_forwarder_output_healthy", "keep") == [1.0]
    # A health check that was running during the reload cannot bring a stale series back.
    metrics.output_healthy.labels("gone").set(1)
    metrics.output_in_flight.labels("gone").set(3)
    families = await scrape(client)
    assert not output_values(families, "canary_forwarder_output_healthy", "gone")
    assert not output_values(families, "canary_forwarder_output_in_flight_events", "gone")


async def test_counters_of_a_configured_output_start_at_zero(serve: Serve) -> None:
    """A labelled counter that first appears at 1 hides its first increase from increase()
    and rate(), so the alert on dead letters would miss the first one."""
    client, _ = await serve(outputs=[memory("fresh-out")])
    families = await scrape(client)
    zero = {
        "canary_forwarder_output_sent_events": [{}],
        "canary_forwarder_output_retried_events": [{}],
        "canary_forwarder_output_failed_sends": [{"result": "retry"}, {"result": "reject"}],
        "canary_forwarder_output_dead_lettered_events": [
            {"reason": "rejected"},
            {"reason": "expired"},
        ],
        "canary_forwarder_output_truncated_records": [{}],
        "canary_forwarder_output_in_flight_events": [{}],
        "canary_forwarder_output_queued_events": [{}],
    }
    for name, label_sets in zero.items():
        for labels in label_sets:
            assert value(families, name, output="fresh-out", **labels) == 0, (name, labels)
    counts = values(families, "canary_forwarder_output_send_duration_seconds")
    assert counts[frozenset({("output", "fresh-out")})] == 0  # the histogram's _count
    for reason in metrics.REJECT_REASONS:
        assert ("reason", reason) in set().union(*values(families, "canary_forwarder_rejected"))
    for kind in EventKind:
        assert frozenset({("kind", kind.value)}) in values(families, "canary_forwarder_accepted")


# 4. The store's figures


def queue_for_ghost(settings: Settings, count: int = 5, age_secs: float = 3600) -> bytes:
    """Store `count` events, `age_secs` old, queued for an output named "ghost"; their body."""
    database = Database(settings.store.path)
    received_at = time.time() - age_secs
    body = sample("incident_ssh_login")
    database.append(
        [NewEvent(f"id-{n}", f"fp-{n}", "incident", received_at, body) for n in range(count)],
        ["ghost"],
        0,
    )
    database.close()
    return body


async def test_store_gauges_show_a_backlog_from_the_first_scrape(
    serve: Serve, make_settings: Callable[..., Settings]
) -> None:
    """Events queued before the start (here for an output no longer configured) count at once;
    an orphaned queue shows under its output name, with no gauges of a running output."""
    body = queue_for_ghost(make_settings())
    client, _ = await serve(outputs=[memory("mem")])
    families = await scrape(client)
    assert value(families, "canary_forwarder_store_events") == 5
    assert value(families, "canary_forwarder_store_bytes") == 5 * len(body)
    assert 3600 <= value(families, "canary_forwarder_store_oldest_event_age_seconds") < 3700
    assert value(families, "canary_forwarder_output_queued_events", output="ghost") == 5
    assert value(families, "canary_forwarder_store_healthy") == 1
    for name in (
        "canary_forwarder_output_in_flight_events",
        "canary_forwarder_output_healthy",
        "canary_forwarder_output_last_success_timestamp_seconds",
    ):
        assert not output_values(families, name, "ghost"), name


async def test_the_first_scrape_has_the_backlog_even_if_the_store_is_stuck_by_then(
    serve: Serve, make_settings: Callable[..., Settings]
) -> None:
    """The app reads the store when it starts, so a scrape that cannot wait for a read of its
    own still reports the backlog, not zeros."""
    queue_for_ghost(make_settings(), count=3, age_secs=7200)
    client, pipeline = await serve(outputs=[memory("mem")])
    stuck = threading.Event()
    # The thread runs calls in order: the read the app started is ahead of this one.
    pipeline.outbox._executor.submit(stuck.wait, 30)
    try:
        families = await asyncio.wait_for(scrape(client, **{SCRAPE_TIMEOUT: "0.2"}), 5)
    finally:
        stuck.set()
    assert value(families, "canary_forwarder_store_events") == 3
    assert value(families, "canary_forwarder_output_queued_events", output="ghost") == 3
    assert value(families, "canary_forwarder_store_oldest_event_age_seconds") >= 7200


@pytest.mark.parametrize(
    ("header", "wait"),
    [(None, 1.0), ("10", 1.0), ("1", 0.5), ("0.2", 0.1), ("0", 1.0), ("-3", 1.0), ("nan", 1.0),
     ("inf", 1.0), ("soon", 1.0), ("", 1.0)],
)  # fmt: skip
def test_a_scrape_waits_for_the_store_at_most_half_the_scrape_timeout(
    header: str | None, wait: float
) -> None:
    assert metrics.STORE_READ_WAIT_SECS == 1.0
    assert metrics.store_read_wait(header) == wait


def count_reads(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the time of every `outbox.stats()` call."""
    calls: list[float] = []
    real = pipeline.outbox.stats

    async def counted() -> Any:
        calls.append(time.monotonic())
        return await real()

    monkeypatch.setattr(pipeline.outbox, "stats", counted)
    return calls


async def test_a_scrape_answers_in_time_while_the_store_thread_is_stuck(
    serve: Serve, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync on a dead disk: the scrape answers within its bound with the last figures,
    and scrapes meanwhile queue one read on the store thread, not one each."""
    monkeypatch.setattr(metrics, "STORE_READ_INTERVAL_SECS", 0.0)
    queue_for_ghost(make_settings())
    client, pipeline = await serve()
    known = await scrape(client)
    assert value(known, "canary_forwarder_output_queued_events", output="ghost") == 5
    reads = count_reads(pipeline, monkeypatch)
    stuck = threading.Event()
    pipeline.outbox._executor.submit(stuck.wait, 30)
    try:
        for _ in range(5):
            started = time.monotonic()
            families = await asyncio.wait_for(scrape(client, **{SCRAPE_TIMEOUT: "1"}), 5)
            assert time.monotonic() - started < 1.0  # half the scraper's own timeout
            for name in (
                "canary_forwarder_store_events",
                "canary_forwarder_store_bytes",
                "canary_forwarder_output_queued_events",
                "canary_forwarder_store_stats_timestamp_seconds",
            ):
                assert values(families, name) == values(known, name)
            age = "canary_forwarder_store_oldest_event_age_seconds"
            assert value(families, age) >= value(known, age) >= 3600  # still growing
        assert len(reads) == 1
        # Without the header, the daemon's own bound applies.
        monkeypatch.setattr(metrics, "STORE_READ_WAIT_SECS", 0.2)
        started = time.monotonic()
        await asyncio.wait_for(scrape(client), 5)
        assert time.monotonic() - started < 1.0
        stamp = value(families, "canary_forwarder_store_stats_timestamp_seconds")
    finally:
        stuck.set()
    # Once the thread is back, the figures are read again.
    await asyncio.sleep(0.05)
    families = await scrape(client)
    assert value(families, "canary_forwarder_store_stats_timestamp_seconds") > stamp


async def test_a_scrape_answers_when_the_store_cannot_be_opened(
    serve: Serve, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Metrics matter most when the store is down: the scrape must not fail with it."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    client, pipeline = await serve(store={"path": str(blocked)})
    assert not pipeline.outbox.available
    families = await scrape(client)
    assert value(families, "canary_forwarder_store_healthy") == 0
    assert value(families, "canary_forwarder_output_queued_events", output="mem") == 0


async def test_a_scrape_answers_when_reading_the_store_fails(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "STORE_READ_INTERVAL_SECS", 0.0)
    client, pipeline = await serve()
    before = await scrape(client)

    async def failing() -> Any:
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr(pipeline.outbox, "stats", failing)
    families = await scrape(client)
    stamp = "canary_forwarder_store_stats_timestamp_seconds"
    assert values(families, stamp) == values(before, stamp)  # the figures are not fresh


async def test_scrapes_share_one_store_read(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read scans the events table on the thread commits wait for, and /metrics answers
    whoever reaches the listener: a flood of scrapes must not turn into a flood of scans."""
    client, pipeline = await serve()
    await scrape(client)
    reads = count_reads(pipeline, monkeypatch)
    await asyncio.gather(*(scrape(client) for _ in range(50)))
    for _ in range(50):
        await scrape(client)
    assert len(reads) <= 1
