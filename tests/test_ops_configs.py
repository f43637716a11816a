"""ops/: alert rules checked and unit-tested by promtool, dashboards that load and only query
metrics voxmem exports, and the monitoring profile wired to them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from db.metrics import exported_metric_names
from tests.conftest import REPO, Deployment

OPS = REPO / "ops"
PROMETHEUS = OPS / "prometheus"
DASHBOARDS = OPS / "grafana" / "dashboards"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le",
}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run ops/install-promtool.sh (make test does)")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=120)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, grouping clauses, ranges,
    strings, Grafana variables and function names removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\b\d+(?:\.\d+)?(?:ms|[smhdwy])?\b", "", expr)  # numbers, durations
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket"
        '{status=~"5.."}[$__rate_interval]))) / on (job) up > 0.5 unless foo_total offset 5m'
    )
    assert metric_names(expr) == {"http_request_duration_seconds_bucket", "up", "foo_total"}


def test_promtool_checks_config_and_rules() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_the_key_alerts() -> None:
    result = promtool("test", "rules", "tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests/alerts_test.yml").read_text())
    )
    assert {
        "HighMemoryQueryLatency",
        "WebhookQueueBacklog",
        "WebhookDeadLetters",
        "WorkerHeartbeatsMissing",
        "High5xxRate",
        "HighInitFallbackRate",
        "OldestPendingEventTooOld",
    } <= tested


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_seed_alerts_as_specified() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    latency = rules["HighMemoryQueryLatency"]
    assert "memory_query_latency_seconds_bucket" in latency["expr"]
    assert "0.95" in latency["expr"] and latency["expr"].rstrip().endswith("> 0.5")
    assert latency["for"] == "5m"
    backlog = rules["WebhookQueueBacklog"]
    assert backlog["expr"].strip() == "webhook_queue_depth > 50" and backlog["for"] == "10m"


def test_every_alert_is_in_the_runbook_and_queries_exported_metrics() -> None:
    runbook = (REPO / "docs" / "operations.md").read_text().lower()
    exported = exported_metric_names()
    for rule in alert_rules():
        assert metric_names(rule["expr"]) <= exported, rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {rule['alert'].lower()}" in runbook, rule["alert"]
        assert anchor == rule["alert"].lower()


def test_dashboards_load_and_query_exported_metrics() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert [f.stem for f in files] == [
        "api-performance",
        "external-apis",
        "memory-system",
        "webhooks-queue",
    ]
    datasources = yaml.safe_load(
        (OPS / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    prometheus_uid = next(d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus")
    exported = exported_metric_names()
    uids = set()
    for path in files:
        dashboard = json.loads(path.read_text())
        uids.add(dashboard["uid"])
        assert dashboard["panels"], path.name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in dashboard["panels"]:
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == prometheus_uid
                names = metric_names(target["expr"])
                assert names, (path.name, panel["title"])
                assert names <= exported, (path.name, panel["title"], names - exported)
    assert len(uids) == 4


def test_monitoring_profile_is_wired_to_these_files() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana", "jaeger"):
        assert services[name]["profiles"] == ["monitoring"], name
    # The default `docker compose up` still starts only voxmem itself.
    assert "profiles" not in services["api"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), (name, source)


def load_test_helpers() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("voxload", OPS / "locust" / "voxload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_test_requests_are_accepted_by_the_service(
    deployment: Deployment, client: TestClient
) -> None:
    """What ops/locust sends is what the service accepts: signed webhooks, tool queries."""
    voxload = load_test_helpers()
    for caller in (1, 2):
        body = voxload.post_call_body(caller)
        response = client.post(
            "/webhook/post-call",
            content=body,
            headers={
                "Content-Type": "application/json",
                "ElevenLabs-Signature": voxload.signature_header(deployment.webhook_secret, body),
            },
        )
        assert response.status_code == 200 and response.json() == {"status": "accepted"}
    query = client.post(
        "/tools/memory-query", json=voxload.memory_query_body(1), headers=deployment.auth("tool")
    )
    assert query.status_code == 200
    assert "memories" in query.json()
    # The locustfile itself at least compiles (locust is not a test dependency).
    compile((OPS / "locust" / "locustfile.py").read_text(), "locustfile.py", "exec")
