"""Prometheus metrics, named after the Prometheus conventions (unit suffixes, `_total` counters).

One module so every counter is defined once and the Grafana dashboard in contrib/ and the table
in docs/operations.md have one list to follow. prometheus_client writes the exposition format;
nothing here formats text by hand.

Every label value comes from a fixed set or from the configuration, never from a client: the
`handler` of a request is its route (unknown paths and methods are all `unmatched`), `reason`
and `kind` are the constants below, `output` an output's configured name, `cert` the configured
path of the listener's certificate.

What /metrics reports beside the counters is gathered at each scrape by `StoreReader.publish`:
the store's figures (read on the store thread, which a scrape waits for only so long), and
per-output series kept in line with the outputs configured now (see `track_outputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from forwarder.events import EventKind

if TYPE_CHECKING:
    from forwarder.pipeline import Pipeline
    from forwarder.store.outbox import Outbox

__all__ = [
    "ACCEPT_CLOSE_REASONS",
    "MALFORMED_REASONS",
    "REGISTRY",
    "REJECT_REASONS",
    "STORE_READER",
    "StoreReader",
    "track_outputs",
]

# The `_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
_NS = "canary_forwarder"

# The `process_*` and `python_*` series of prometheus_client's default registry (resident
# memory, CPU, open file descriptors, garbage collections), which this registry does not get
# by itself. Fresh instances: the library's own ones belong to its default registry.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Label values, each a fixed set.
REJECT_REASONS = (
    "forbidden",
    "too_many_failed_attempts",
    "unauthorized",
    "body_too_large",
    "body_timeout",
    "content_encoding_not_supported",
    "content_type_not_json",
    "invalid_payload",
    "store_full",
    "store_unavailable",
)
"""Every `error` the webhook answers with, which is the `reason` of `rejected`."""
MALFORMED_REASONS = ("request_line", "headers", "body", "too_long")
"""Where aiohttp's parser found a request malformed: the `reason` of `malformed_requests`."""
ACCEPT_CLOSE_REASONS = ("per_client", "open_files")
"""Why the listener closed a connection as it accepted it: the client holds
`listen.max_connections_per_client` already, or connections hold their share of open files."""
FAILED_RESULTS = ("retry", "reject")
DEAD_LETTER_REASONS = ("rejected", "expired")

# Ingest
received = Counter(
    "received", "Webhook posts received on the ingest path.", namespace=_NS, registry=REGISTRY
)
accepted = Counter(
    "accepted", "Events committed to the store and answered 200.", ["kind"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
rejected = Counter(
    "rejected", "Posts answered with an error, by reason.", ["reason"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
duplicates = Counter(
    "duplicates", "Posts identical to one stored within the dedupe window.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
http_requests = Counter(
    "http_requests", "HTTP requests answered, by path group and status.", ["handler", "status"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
quarantined = Counter(
    "quarantined", "Authenticated posts kept in quarantine because they could not be read.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip

# Listener
malformed_requests = Counter(
    "malformed_requests", "Requests refused as malformed by the HTTP parser, by reason.",
    ["reason"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
connections_closed_at_accept = Counter(
    "connections_closed_at_accept",
    "Connections closed as they were accepted, before TLS or HTTP, by reason.",
    ["reason"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
listener_certificate_expiry = Gauge(
    "listener_certificate_expiry_timestamp_seconds",
    "Unix time the listener's TLS certificate expires (notAfter), as last loaded.",
    ["cert"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip

# Store
store_depth = Gauge(
    "store_events", "Events in the store not yet delivered to every output.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
store_bytes = Gauge(
    "store_bytes", "Payload bytes in the store not yet delivered to every output.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
store_oldest_age = Gauge(
    "store_oldest_event_age_seconds",
    "Age of the oldest undelivered event (0 with none), counted as store.max_age_secs counts "
    "it: on the monotonic clock while the daemon runs, so a step of the wall clock does not "
    "move it.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
store_healthy = Gauge(
    "store_healthy",
    "0 from a failed store call (a commit, a read, an ack, a probe) until a commit or a probe "
    "succeeds, else 1; while 0, posts get 503.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
store_stats_time = Gauge(
    "store_stats_timestamp_seconds",
    "Unix time of the store read behind the oldest event's age and the queued events per output.",
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip

# Outputs
output_sent = Counter(
    "output_sent_events", "Events an output delivered.", ["output"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_retried = Counter(
    "output_retried_events", "Events an output has to send again.", ["output"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_failed = Counter(
    "output_failed_sends", "Sends that did not deliver the whole batch, by result.",
    ["output", "result"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_dead_lettered = Counter(
    "output_dead_lettered_events", "Events moved to dead letters, by reason class.",
    ["output", "reason"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_in_flight = Gauge(
    "output_in_flight_events", "Events in a send that has not finished.", ["output"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_queued = Gauge(
    "output_queued_events", "Events in the store waiting for an output.", ["output"],
    namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_latency = Histogram(
    "output_send_duration_seconds", "Time one send took, whatever its result.", ["output"],
    namespace=_NS, registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
output_last_success = Gauge(
    "output_last_success_timestamp_seconds", "Unix time of an output's last delivered send.",
    ["output"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_truncated = Counter(
    "output_truncated_records", "Records an output shortened to fit its transport (UDP syslog).",
    ["output"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip
output_healthy = Gauge(
    "output_healthy", "1 if the output's last healthcheck passed (every 30 s), else 0.",
    ["output"], namespace=_NS, registry=REGISTRY,
)  # fmt: skip

# A labelled series that first appears at 1 hides that first increase from rate() and
# increase(): every series whose label values are known up front starts at 0.
for _reason in REJECT_REASONS:
    rejected.labels(_reason)
for _kind in EventKind:
    accepted.labels(_kind.value)
for _reason in MALFORMED_REASONS:
    malformed_requests.labels(_reason)
for _reason in ACCEPT_CLOSE_REASONS:
    connections_closed_at_accept.labels(_reason)


@functools.cache
def series(counter: Counter, *labels: str) -> Counter:
    """`counter.labels(*labels)`, looked up once. prometheus_client's lookup takes a lock and
    costs three times the increment, and the ingest path counts twice per post. Only for a
    counter whose series are never removed, and labels from a fixed set (this keeps them all).
    """
    return counter.labels(*labels)


# Gauges that describe a running output, which go when a reload removes it.
_RUNNING_OUTPUT_GAUGES = (output_in_flight, output_healthy, output_last_success)


def track_outputs(configured: Collection[str], queued: Mapping[str, int]) -> None:
    """Keep the per-output series in line with the outputs configured now.

    A configured output has all its counters from the start, at 0. An output that a reload
    removed (or renamed) loses the gauges of a running output, which would otherwise report
    its last in-flight count, health and success forever; its counters stay (a counter that
    vanishes reads as a reset, and its history is still true). Its queue is reported as long as
    the store holds events for it (`queued`, read from the store), so an orphaned queue shows
    until it is delivered to the output configured again or dead-lettered.

    Run at every scrape rather than at the reload, so that a send or a healthcheck of a removed
    output that finishes after the reload cannot bring a stale series back.
    """
    for name in configured:
        output_sent.labels(name)
        output_retried.labels(name)
        output_truncated.labels(name)
        output_latency.labels(name)
        output_in_flight.labels(name)
        for result in FAILED_RESULTS:
            output_failed.labels(name, result)
        for reason in DEAD_LETTER_REASONS:
            output_dead_lettered.labels(name, reason)
    waiting = {name: count for name, count in queued.items() if count}
    waiting.update({name: queued.get(name, 0) for name in configured})
    for name, count in waiting.items():
        output_queued.labels(name).set(count)
    for gauge in _RUNNING_OUTPUT_GAUGES:
        _keep_only(gauge, set(configured))
    _keep_only(output_queued, set(waiting))


def _keep_only(gauge: Gauge, outputs: set[str]) -> None:
    present = {sample.labels["output"] for family in gauge.collect() for sample in family.samples}
    for name in present - outputs:
        gauge.remove(name)


# A scrape waits this long for the store's figures (or half the scrape timeout Prometheus sends,
# if that is shorter), then answers with the last ones read.
STORE_READ_WAIT_SECS = 1.0
# A read younger than this is used again: a read scans the events table on the store thread,
# which commits wait behind, and /metrics answers whoever reaches the listener.
STORE_READ_INTERVAL_SECS = 5.0
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def store_read_wait(scrape_timeout: str | None) -> float:
    """How long a scrape may wait for the store, given the scraper's timeout header if any."""
    wait = STORE_READ_WAIT_SECS
    with contextlib.suppress(ValueError):
        timeout = float(scrape_timeout or "nan")
        if math.isfinite(timeout) and timeout > 0:
            wait = min(wait, timeout / 2)
    return wait


class StoreReader:
    """The store's figures for /metrics, read one read at a time.

    Depth and bytes are the outbox's running totals (what `store.max_bytes` is checked against):
    exact, current and free. The oldest event's age and the events queued per output need a
    read on the store thread: a scrape starts one (or joins the one under way) but waits for it
    only so long, and never queues a second read behind a thread that is stuck, where a scrape
    every 15 s would otherwise pile up a read each. What it cannot wait for it reports from the
    last read, whose time `store_stats_timestamp_seconds` gives. `start` is also called when
    the app starts, so the first scrape has the figures of a backlog without waiting for them.
    """

    def __init__(self) -> None:
        self._reading: asyncio.Task[None] | None = None
        self._started = -math.inf  # monotonic time the last read started
        # The monotonic time since which the oldest event has waited (`StoreStats.oldest_since`).
        self._oldest_since: float | None = None
        self._queued: dict[str, int] = {}

    def start(self, outbox: Outbox) -> asyncio.Task[None]:
        """The read under way, or a new one unless the last started within the interval."""
        reading = self._reading
        fresh = time.monotonic() - self._started < STORE_READ_INTERVAL_SECS
        if reading is None or (reading.done() and not fresh):
            self._started = time.monotonic()
            reading = asyncio.create_task(self._read(outbox), name="metrics-store-read")
            self._reading = reading
        return reading

    async def _read(self, outbox: Outbox) -> None:
        try:
            stats = await outbox.stats()
        except Exception:
            return  # the outbox logs a store that fails; the stale timestamp shows it here
        self._oldest_since, self._queued = stats.oldest_since, dict(stats.queued)
        store_stats_time.set(time.time())

    async def refresh(self, pipeline: Pipeline, wait_secs: float) -> None:
        """Read the store, waiting at most `wait_secs`, and set what /metrics reports."""
        reading = self.start(pipeline.outbox)
        if not reading.done():
            # Shielded: a scrape that gives up leaves the read to finish for the next one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_secs):
                    await asyncio.shield(reading)
        self.publish(pipeline)

    def publish(self, pipeline: Pipeline) -> None:
        outbox = pipeline.outbox
        store_healthy.set(outbox.healthy)
        store_depth.set(outbox.events)
        store_bytes.set(outbox.bytes)
        queued = self._queued
        if outbox.events == 0:  # delivered since the last read, or none to begin with
            store_oldest_age.set(0)
            queued = {}
        elif self._oldest_since is not None:
            store_oldest_age.set(max(0.0, time.monotonic() - self._oldest_since))
        track_outputs([d.name for d in pipeline.dispatchers], queued)

    async def aclose(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading


STORE_READER = web.AppKey("store_reader", StoreReader)
