"""contrib/grafana-dashboard.json follows forwarder/telemetry/metrics.py, the one list of metrics.

A dashboard that names a metric or a label the daemon does not export shows an empty panel and
no error, so the names are checked here against the live registry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Metric
from prometheus_client.metrics import MetricWrapperBase

from forwarder.telemetry import metrics

DASHBOARD_PATH = Path(__file__).resolve().parents[1] / "contrib" / "grafana-dashboard.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
METRIC_NAME = re.compile(r"\bcanary_forwarder_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(canary_forwarder_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")


def exposition_names(family: Metric) -> set[str]:
    """The series names a family appears under in the text exposition format."""
    if family.type == "counter":
        return {f"{family.name}_total"}
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family.name}


FAMILIES = list(metrics.REGISTRY.collect())
EXPORTED = {name: family for family in FAMILIES for name in exposition_names(family)}


def label_names(series_name: str) -> set[str]:
    """Labels of the metric behind an exposition name, read from the metric objects."""
    family = EXPORTED[series_name]
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._name == family.name:
            labels = set(value._labelnames)
            return labels | {"le"} if family.type == "histogram" else labels
    raise AssertionError(f"no metric object for {family.name}")


def expressions() -> list[str]:
    found = [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]
    for variable in DASHBOARD["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_variable() -> None:
    assert DASHBOARD["schemaVersion"] >= 39
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_uses_the_datasource_variable() -> None:
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("expression", expressions())
def test_every_metric_in_an_expression_is_exported(expression: str) -> None:
    names = METRIC_NAME.findall(expression)
    assert names, f"no canary_forwarder metric in {expression}"
    for name in names:
        assert name in EXPORTED, f"{name} is not exported by forwarder.telemetry.metrics"


@pytest.mark.parametrize("expression", expressions())
def test_every_label_in_an_expression_exists(expression: str) -> None:
    used_by_metric = {
        name: {matcher.split("=")[0].strip(" !~") for matcher in body.split(",") if matcher}
        for name, body in SELECTOR.findall(expression)
    }
    for name, labels in used_by_metric.items():
        assert labels <= label_names(name) | TARGET_LABELS, (name, labels)
    known = set().union(*(label_names(name) for name in METRIC_NAME.findall(expression)))
    for grouping in GROUPING.findall(expression):
        grouped = {label.strip() for label in grouping.split(",")}
        assert grouped <= known | TARGET_LABELS, (expression, grouped)


def test_every_exported_metric_has_a_panel() -> None:
    """A metric added to the registry needs a panel too; this is where that gets noticed."""
    used = {name for expression in expressions() for name in METRIC_NAME.findall(expression)}
    shown = {EXPORTED[name].name for name in used if name in EXPORTED}
    assert shown == {family.name for family in FAMILIES}


def test_histogram_quantiles_group_by_le() -> None:
    quantiles = [e for e in expressions() if "histogram_quantile" in e]
    assert {"0.5", "0.99"} <= {re.findall(r"histogram_quantile\(([\d.]+)", e)[0] for e in quantiles}
    for expression in quantiles:
        assert "_bucket" in expression
        grouped = GROUPING.findall(expression)[0]
        assert "le" in {label.strip() for label in grouped.split(",")}
