"""deploy/: the Prometheus alert rules and the Grafana dashboard name only metrics the worker exports.

promtool is not available here: the files are parsed as YAML/JSON and every metric name in their
PromQL is checked against ``worker.metrics.EXPORTED_METRICS``; docs/operations.md must explain
every metric and every alert.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from worker.metrics import EXPORTED_METRICS

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/hokusai-registry.json"
OPERATIONS = ROOT / "docs/operations.md"
#: Prometheus' own series (scrape health).
BUILT_IN = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are no function, keyword or label."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?![A-Za-z0-9_:]*\s*\()", text))
    return {name for name in names if name not in _KEYWORDS and not re.fullmatch(r"\d.*|e\d*", name)}


def exported(name: str) -> bool:
    if name in BUILT_IN or name in EXPORTED_METRICS:
        return True
    base = re.sub(r"_(bucket|count|sum)$", "", name)
    return base.endswith("_seconds") and base in EXPORTED_METRICS  # a histogram's series


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_metric_name_extraction_sees_names_and_nothing_else() -> None:
    expr = 'sum by (le) (rate(foo_bucket{a="b c"}[5m])) / max(bar) > 0.1 and on (x) up{job="y"} == 0'
    assert metric_names(expr) == {"foo_bucket", "bar", "up"}


def test_alert_rules_parse_and_name_only_exported_metrics() -> None:
    rules = alert_rules()
    assert len(rules) >= 3
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        names = metric_names(str(rule["expr"]))
        assert names, rule["alert"]
        unknown = sorted(name for name in names if not exported(name))
        assert not unknown, f"alert {rule['alert']} names metrics the worker does not export: {unknown}"


@pytest.mark.parametrize(
    ("metric", "alert"),
    [
        ("hokusai_webhook_dead_letters", "HokusaiWebhookDeadLetters"),
        ("hokusai_queue_oldest_job_age_seconds", "HokusaiQueueBacklogOld"),
        ("hokusai_registrations_total", "HokusaiRegistrationFailureRate"),
        ("hokusai_webhook_endpoint_disabled", "HokusaiWebhookEndpointDisabled"),
        ("hokusai_backlog_oldest_age_seconds", "HokusaiBacklogOld"),
    ],
)
def test_the_alerts_the_issue_asks_for_exist(metric: str, alert: str) -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == alert]
    assert metric in metric_names(str(rule["expr"]))


def test_dashboard_queries_name_only_exported_metrics_and_show_them_all() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs and dashboard["uid"]
    shown: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        unknown = sorted(name for name in names if not exported(name))
        assert not unknown, f"dashboard query {expr!r} names metrics the worker does not export: {unknown}"
        shown |= {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}
    missing = sorted(set(EXPORTED_METRICS) - shown - {"hokusai_metrics_redis_up"})
    assert not missing, f"the dashboard shows no panel for {missing}"


def test_operations_runbook_documents_every_metric_and_alert() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for metric in EXPORTED_METRICS:
        assert f"| `{metric}` |" in text, f"docs/operations.md has no table row for {metric}"
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("### ")}
    for rule in alert_rules():
        assert rule["alert"] in headings, f"docs/operations.md has no section for alert {rule['alert']}"
        runbook = str(rule["annotations"]["runbook"])  # type: ignore[index]
        assert runbook == f"docs/operations.md#{str(rule['alert']).lower()}", runbook
