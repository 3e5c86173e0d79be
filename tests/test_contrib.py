"""contrib/grafana-dashboard.json and docs/operations.md follow forwarder/telemetry/metrics.py,
the one list of metrics.

A dashboard that names a metric or a label the daemon does not export shows an empty panel and
no error, and an alert written from the docs on a metric that does not exist never fires; so the
names are checked here against the live registry, both ways.
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

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_PATH = ROOT / "contrib" / "grafana-dashboard.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
OPERATIONS = ROOT / "docs" / "operations.md"
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
# The daemon's own metrics, and those of prometheus_client's process, platform and GC collectors.
PREFIXES = ("canary_forwarder", "process", "python")
_NAME = rf"\b(?:{'|'.join(PREFIXES)})_[a-z0-9_]+"
METRIC_NAME = re.compile(_NAME)
SELECTOR = re.compile(rf"({_NAME})\{{([^}}]*)\}}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
AGGREGATION = re.compile(r"\b(?:sum|min|max|avg|count)\s*\(")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LABEL_VALUES = re.compile(rf"label_values\(({_NAME})(?:\{{[^}}]*\}})?,\s*(\w+)\)")


def exposition_names(family: Metric) -> set[str]:
    """The series names a family appears under in the text exposition format."""
    if family.type == "counter":
        return {f"{family.name}_total"}
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family.name}


FAMILIES = list(metrics.REGISTRY.collect())
EXPORTED = {name: family for family in FAMILIES for name in exposition_names(family)}


def family_labels(family: Metric) -> set[str]:
    """Labels of a family: from its metric object, or the samples a collector gave it."""
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._name == family.name:
            labels = set(value._labelnames)
            return labels | {"le"} if family.type == "histogram" else labels
    if family.name.startswith("canary_forwarder_"):
        raise AssertionError(f"no metric object for {family.name}")
    return {label for sample in family.samples for label in sample.labels}


def label_names(series_name: str) -> set[str]:
    """Labels of the metric behind an exposition name."""
    return family_labels(EXPORTED[series_name])


def targets() -> list[dict[str, Any]]:
    return [target for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def expressions() -> list[str]:
    found = [target["expr"] for target in targets()]
    for variable in DASHBOARD["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def result_labels(expression: str) -> set[str]:
    """The labels the series of an expression's result carry (for this dashboard's forms)."""
    groupings = GROUPING.findall(expression)
    if groupings:
        labels = {label.strip() for grouping in groupings for label in grouping.split(",")}
    elif AGGREGATION.search(expression):
        labels = set()
    else:
        names = METRIC_NAME.findall(expression)
        labels = set().union(*(label_names(name) for name in names)) | TARGET_LABELS
    if "histogram_quantile" in expression:
        labels.discard("le")
    return labels


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
    ours = {family.name for family in FAMILIES if family.name.startswith("canary_forwarder_")}
    assert ours <= shown, sorted(ours - shown)
    # The process panels: memory, CPU, file descriptors and the garbage collector.
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "python_gc_collections",
    } <= shown


@pytest.mark.parametrize("target", targets(), ids=lambda target: target["expr"][:60])
def test_every_legend_names_a_label_of_its_series(target: dict[str, Any]) -> None:
    """A legend `{{label}}` the series does not carry shows as empty text, and panels with
    several series then show them all under one name."""
    used = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
    assert used <= result_labels(target["expr"]), (target["expr"], target["legendFormat"])


def test_every_variable_lists_a_label_that_exists() -> None:
    queries = [
        variable["query"]["query"]
        for variable in DASHBOARD["templating"]["list"]
        if isinstance(variable.get("query"), dict)
    ]
    assert queries
    for query in queries:
        for name, label in LABEL_VALUES.findall(query):
            assert label in label_names(name) | TARGET_LABELS, query


def test_histogram_quantiles_group_by_le() -> None:
    quantiles = [e for e in expressions() if "histogram_quantile" in e]
    assert {"0.5", "0.99"} <= {re.findall(r"histogram_quantile\(([\d.]+)", e)[0] for e in quantiles}
    for expression in quantiles:
        assert "_bucket" in expression
        grouped = GROUPING.findall(expression)[0]
        assert "le" in {label.strip() for label in grouped.split(",")}


# docs/operations.md: the table of metrics under "Health, metrics and the watchdog".

DOC_ROW = re.compile(r"^\| `([a-z0-9_*]+)` \| ([a-z, ]*) \| ([^|]*) \| [^|]+ \|$", re.M)
DOC_MENTION = re.compile(r"\bcanary_forwarder_[a-z0-9_]+")


def documented_rows() -> dict[str, tuple[str, set[str]]]:
    """Name -> (type, labels) of each row of the metrics table in docs/operations.md."""
    rows = {
        name: (kind.strip(), set(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in DOC_ROW.findall(OPERATIONS.read_text("utf-8"))
    }
    assert len(rows) >= 20, "no metrics table found in docs/operations.md"
    return rows


def documented_name(family: Metric) -> str:
    """How the docs name a family: as it is written in the exposition (a histogram by its base)."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    rows = documented_rows()
    ours = {documented_name(f): f for f in FAMILIES if f.name.startswith("canary_forwarder_")}
    documented = {name for name in rows if name.startswith("canary_forwarder_")}
    assert sorted(documented - set(ours)) == [], "documented but not exported"
    assert sorted(set(ours) - documented) == [], "exported but not documented"
    for name, family in ours.items():
        kind, labels = rows[name]
        assert kind == family.type, name
        assert labels == family_labels(family) - {"le"}, name


def test_the_process_and_python_metrics_are_documented() -> None:
    rows = documented_rows()
    wildcards = [name.removesuffix("*") for name in rows if name.endswith("*")]
    assert sorted(wildcards) == ["process_", "python_"]
    for family in FAMILIES:
        if not family.name.startswith("canary_forwarder_"):
            assert family.name.startswith(tuple(wildcards)), family.name


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_every_metric_the_docs_name_exists(path: Path) -> None:
    """Alerts and advice in the docs name series an operator will copy into Prometheus."""
    bases = {documented_name(family) for family in FAMILIES}
    for name in DOC_MENTION.findall(path.read_text("utf-8")):
        assert name in EXPORTED or name in bases, f"{path.name} names {name}, not exported"
