"""Health, liveness and readiness per CONTRACT §4."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from db import crypto
from tests.conftest import make_settings


def test_live(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}


def test_ready_when_migrated_and_the_model_is_loaded(client: TestClient) -> None:
    from api.search import WARM_KEY

    warm = client.app.state.voxmem.extras[WARM_KEY]  # type: ignore[attr-defined]
    assert warm.wait(60), "the engine warm-up never finished"
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_not_ready_while_the_model_loads(client: TestClient) -> None:
    import threading

    from api.search import WARM_KEY

    extras = client.app.state.voxmem.extras  # type: ignore[attr-defined]
    real = extras[WARM_KEY]
    assert real.wait(60)  # the real warm-up is over: it cannot set the stand-in below
    extras[WARM_KEY] = threading.Event()  # a warm-up still running
    try:
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert "model" in response.json()["reason"]
        assert client.get("/health/live").status_code == 200  # alive all the same
    finally:
        extras[WARM_KEY] = real


def test_health_reports_sqlite_version_mitigation_and_queue(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] in {"healthy", "degraded", "unhealthy"}
    checks = body["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["sqlite"]["version"].count(".") == 2
    assert checks["sqlite"]["wal_reset_mitigation"] in {"designated-checkpointer", "sqlite-fixed"}
    assert set(checks["queue"]["counts"]) == {
        "pending",
        "processing",
        "completed",
        "failed",
        "dead_letter",
    }
    assert checks["dead_letters"]["count"] == 0
    assert checks["embedder"]["kind"] == "local"
    assert checks["extractor"]["kind"] == "local"
    # no worker is running in this test, which must show as degraded, not healthy
    assert body["status"] == "degraded"
    assert checks["workers"]["alive"] == 0


def test_not_ready_before_migration(tmp_path: Path) -> None:
    from api.app import create_app

    settings = make_settings(tmp_path / "fresh")
    crypto.ensure_key_files(settings)
    with TestClient(create_app(settings)) as c:
        response = c.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["reason"] == "schema not at head"


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert len(client.get("/health/live").headers["x-request-id"]) == 32


def test_every_response_carries_the_server_time(client: TestClient) -> None:
    import re

    timing = client.get("/health/live").headers["server-timing"]
    match = re.fullmatch(r"app;dur=(\d+\.\d{2})", timing)
    assert match is not None, timing
    assert 0 < float(match.group(1)) < 5_000
    # Rejections carry it too (a 401 is still server time worth seeing).
    assert "server-timing" in client.post("/tools/memory-query", json={}).headers
