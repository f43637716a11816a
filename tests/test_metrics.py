"""GET /metrics: seed 001's names, request latency, scrape-time queue gauges, and samples from
other processes merged through the multiprocess directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta

import httpx
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from db import metrics
from db.models import DEFAULT_TENANT, WebhookEvent
from db.tenancy import require_tenant
from db.types import utcnow
from tests.conftest import REPO, Deployment, LiveServer, settings_env


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def queue_events(deployment: Deployment, statuses: list[str], age_secs: float = 0.0) -> None:
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        created = utcnow() - timedelta(seconds=age_secs)
        for i, status in enumerate(statuses):
            session.add(
                WebhookEvent(
                    tenant_id=tenant.id,
                    event_id=f"post_call_transcription:conv_{status}_{i}_{age_secs}",
                    event_type="post_call_transcription",
                    payload="{}",
                    status=status,
                    created_at=created,
                    run_after=created,
                )
            )


def test_seed_names_and_queue_gauges_from_the_database(
    deployment: Deployment, client: TestClient
) -> None:
    queue_events(deployment, ["pending", "pending", "processing"], age_secs=120)
    queue_events(deployment, ["dead_letter", "completed"])
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    # Seed 001's names and types, exactly.
    assert "# TYPE memory_query_latency_seconds histogram" in response.text
    assert "# TYPE memory_query_total counter" in response.text
    assert "# TYPE webhook_queue_depth gauge" in response.text
    assert values[("webhook_queue_depth", ())] == 3.0
    assert values[("webhook_dead_letters", ())] == 1.0
    assert values[("webhook_queue_events", (("status", "completed"),))] == 1.0
    assert 110 <= values[("webhook_queue_oldest_pending_age_seconds", ())] < 3600
    assert values[("voxmem_database_up", ())] == 1.0
    assert values[("worker_heartbeats_alive", ())] == 0.0
    assert values[("sqlite_db_size_bytes", ())] > 0
    assert ("sqlite_wal_size_bytes", ()) in values
    for name in metrics.DATABASE_GAUGES:
        assert any(key[0] == name for key in values), name


def test_request_latency_by_route_template_and_status(client: TestClient) -> None:
    client.get("/health/live")
    client.get("/no/such/path")
    values = samples(client.get("/metrics").text)
    live = ("route", "/health/live"), ("method", "GET"), ("status", "200")
    assert values[("http_request_duration_seconds_count", tuple(sorted(live)))] >= 1
    missing = ("route", "unmatched"), ("method", "GET"), ("status", "404")
    assert values[("http_request_duration_seconds_count", tuple(sorted(missing)))] >= 1
    # The raw path of an unmatched request never becomes a label value.
    assert not any(
        dict(labels).get("route") == "/no/such/path" for _, labels in values
    )


def test_helpers_record_their_labels() -> None:
    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    rejected = {"outcome": "rejected", "reason": "signature"}
    before = value("webhook_events_total", rejected)
    metrics.observe_webhook("rejected", "signature")
    assert value("webhook_events_total", rejected) == before + 1

    retries = value("queue_job_retries_total", {"event_type": "post_call_transcription"})
    metrics.observe_job("post_call_transcription", "retry", 0.2)
    assert (
        value("queue_job_retries_total", {"event_type": "post_call_transcription"})
        == retries + 1
    )

    tokens = value("llm_tokens_total", {"model": "gpt-4o-mini", "kind": "completion"})
    metrics.observe_llm_call(
        "chat", "gpt-4o-mini", "ok", 0.3, prompt_tokens=10, completion_tokens=7
    )
    assert value("llm_tokens_total", {"model": "gpt-4o-mini", "kind": "completion"}) == tokens + 7

    fallbacks = value("conversation_init_fallbacks_total", {"reason": "deadline"})
    metrics.observe_init(0.31, fallback_reason="deadline")
    assert value("conversation_init_fallbacks_total", {"reason": "deadline"}) == fallbacks + 1

    count = value("pipeline_stage_duration_seconds_count", {"stage": "extract"})
    with metrics.time_stage("extract"):
        pass
    assert value("pipeline_stage_duration_seconds_count", {"stage": "extract"}) == count + 1

    count = value("memory_query_stage_seconds_count", {"stage": "embed"})
    try:
        with metrics.time_query_stage("embed"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    # A failing stage is still timed.
    assert value("memory_query_stage_seconds_count", {"stage": "embed"}) == count + 1


WORKER_LIKE = textwrap.dedent(
    """
    import sys
    from db import metrics
    from db.settings import Settings
    metrics.configure_process(Settings(_env_file=None))
    assert metrics.multiprocess_enabled()
    for _ in range(int(sys.argv[1])):
        metrics.observe_webhook("accepted")
        metrics.observe_job("post_call_transcription", "completed", 0.5)
    metrics.mark_process_dead()
    """
)


def test_other_processes_samples_reach_the_api(live_server: LiveServer) -> None:
    """What the API serves includes what two separate (worker) processes recorded."""
    settings = live_server.deployment.settings
    env = settings_env(settings)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(settings.data_dir / "metrics")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(httpx.get(f"{live_server.base_url}/metrics", timeout=10).text)

    key = ("webhook_events_total", (("outcome", "accepted"), ("reason", "none")))
    job = (
        "queue_job_duration_seconds_count",
        (("event_type", "post_call_transcription"), ("outcome", "completed")),
    )
    before = scrape()
    for n in (2, 3):
        subprocess.run(
            [sys.executable, "-c", WORKER_LIKE, str(n)], env=env, cwd=REPO, check=True
        )
    after = scrape()
    assert after[key] - before.get(key, 0.0) == 5
    assert after[job] - before.get(job, 0.0) == 5
    # The API's own request metrics are there too, from the API process.
    assert any(name == "http_request_duration_seconds_count" for name, _ in after)
