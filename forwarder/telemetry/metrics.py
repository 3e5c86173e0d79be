"""Prometheus metrics, named after the Prometheus conventions (unit suffixes, `_total` counters).

One module so every counter is defined once and the Grafana dashboard in contrib/ has one list
to follow. prometheus_client writes the exposition format; nothing here formats text by hand.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["REGISTRY"]

# The `_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
_NS = "canary_forwarder"

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
    "store_oldest_event_age_seconds", "Age of the oldest undelivered event.",
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
    "output_queued_events", "Events waiting for an output.", ["output"],
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
