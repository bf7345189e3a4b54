"""deploy/prometheus: the alert rules are well-formed Prometheus rules whose expressions parse as PromQL and name
only metrics that the API's and the worker's real /metrics export, and the scrape config points at both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.services import OrchestratorEnv

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
SEVERITIES = {"info", "warning", "critical"}
# Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can hold, including families that have no samples yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _selectors(node: Any) -> set[str]:
    """Metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql_parser.MatrixSelector):
        return _selectors(node.vector_selector)
    found: set[str] = set()
    for attribute in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attribute, None)
        if child is not None:
            found |= _selectors(child)
    for argument in getattr(node, "args", None) or ():
        found |= _selectors(argument)
    return found


@pytest.fixture
def exported(orch_env: OrchestratorEnv, tmp_path: Path) -> set[str]:
    """The names in the real expositions of an API app and a worker app."""
    from gpu_worker.server import create_app as create_worker_app
    from gpu_worker.settings import WorkerSettings
    from orchestrator.api.main import create_app

    api = TestClient(create_app(), client=("127.0.0.1", 40000)).get("/metrics")
    worker = TestClient(create_worker_app(WorkerSettings(models_dir=tmp_path), token="t", analyzers=["clip"])).get(
        "/metrics", headers={"Authorization": "Bearer t"}
    )
    assert api.status_code == 200 and worker.status_code == 200
    return _exported_names(api.text) | _exported_names(worker.text)


def test_every_rule_has_an_alert_name_expression_duration_severity_and_summary() -> None:
    rules = _rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert str(rule["for"])[-1] in "smh", rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert {
        "InstanceLeakSuspect",
        "InstanceInAlertState",
        "BudgetWarning",
        "BudgetExhausted",
        "QueueNotDraining",
        "NoBatchesFinishing",
        "NoReadyInstanceWhileWorkWaits",
        "WorkerNotReady",
        "ApiErrorRate",
    } <= names
    thresholds = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert ">= 0.8" in thresholds["BudgetWarning"] and ">= 1" in thresholds["BudgetExhausted"]


@pytest.mark.parametrize("orch_env", ["sqlite"], indirect=True)
def test_every_expression_parses_and_names_only_exported_metrics(exported: set[str]) -> None:
    for rule in _rules():
        used = _selectors(promql_parser.parse(rule["expr"]))
        assert used, rule["alert"]
        unknown = used - exported - SYNTHETIC
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {sorted(unknown)}"


def test_scrape_config_loads_the_rules_and_scrapes_the_api_and_a_worker() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    assert any(path.endswith("alerts.yml") for path in config["rule_files"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["orchestrator-api"]["metrics_path"] == "/metrics"
    assert jobs["gpu-worker"]["authorization"]["type"] == "Bearer"
    api_alerts = [rule["expr"] for rule in _rules() if 'job="' in rule["expr"]]
    assert all('job="orchestrator-api"' in expr for expr in api_alerts), "alerts name the job that exists"
