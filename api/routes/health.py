"""Liveness, readiness and the detailed health report (CONTRACT §4 Operators)."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.search import WARM_KEY
from db.checkpoint import mitigation_in_force
from db.engine import ping, sqlite_version
from db.migrate import is_migrated
from db.queue_stats import live_workers, oldest_pending_age_secs, status_counts

router = APIRouter(tags=["health"])

HEALTH_CHECKS: dict[str, Any] = {}
"""Extra checks later subsystems register: name → callable(AppState) -> dict with `status`."""


@router.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "alive"}


# A probe arriving during start-up waits this long for the model before answering 503.
WARM_WAIT_SECS = 0.5


@router.get("/health/ready")
def ready(state: StateDep) -> JSONResponse:
    try:
        ping(state.db)
        # Once at head, a running process stays at head (migrations run before deploys), so
        # the probe skips re-reading Alembic's script directory on every call.
        migrated = bool(state.extras.get("schema_at_head")) or is_migrated(
            state.db.read_engine, state.settings
        )
        state.extras["schema_at_head"] = migrated
    except Exception as exc:  # noqa: BLE001 - any failure means not ready, with the reason
        return JSONResponse({"status": "not_ready", "reason": str(exc)[:200]}, status_code=503)
    if not migrated:
        return JSONResponse({"status": "not_ready", "reason": "schema not at head"}, 503)
    warm = state.extras.get(WARM_KEY)
    if isinstance(warm, threading.Event) and not warm.wait(WARM_WAIT_SECS):
        return JSONResponse(
            {"status": "not_ready", "reason": "loading the memory engine's model"}, 503
        )
    return JSONResponse({"status": "ready"})


@router.get("/health")
def health(state: StateDep) -> JSONResponse:
    settings = state.settings
    checks: dict[str, Any] = {}
    status = "healthy"
    try:
        ping(state.db)
        with state.db.read() as session:
            counts = status_counts(session)
            oldest = oldest_pending_age_secs(session)
            workers = live_workers(session, within_secs=settings.worker_heartbeat_secs * 3)
        checks["database"] = {"status": "ok", "dialect": state.db.dialect}
        checks["queue"] = {
            "status": "ok",
            "depth": counts["pending"] + counts["processing"],
            "counts": counts,
            "oldest_pending_age_secs": round(oldest, 1),
        }
        checks["dead_letters"] = {
            "status": "ok" if counts["dead_letter"] == 0 else "warn",
            "count": counts["dead_letter"],
        }
        checks["workers"] = {
            "status": "ok" if workers else "warn",
            "alive": len(workers),
            "heartbeats": [
                {
                    "worker_id": w.worker_id,
                    "pid": w.pid,
                    "last_seen": w.last_seen.isoformat(),
                    "processed": w.processed_count,
                }
                for w in workers
            ],
        }
        if counts["dead_letter"] or not workers:
            status = "degraded"
    except Exception as exc:  # noqa: BLE001 - health must report, not raise
        checks["database"] = {"status": "error", "error": str(exc)[:200]}
        status = "unhealthy"
    if state.db.dialect == "sqlite":
        cp = state.checkpointer
        checks["sqlite"] = {
            "status": "ok",
            "version": sqlite_version(),
            "wal_reset_mitigation": mitigation_in_force(),
            "checkpointer_leader_here": bool(cp and cp.is_leader),
        }
    checks["embedder"] = {"status": "ok", "kind": settings.embedder}
    checks["extractor"] = {"status": "ok", "kind": settings.extractor}
    for name, check in HEALTH_CHECKS.items():
        try:
            checks[name] = check(state)
        except Exception as exc:  # noqa: BLE001
            checks[name] = {"status": "error", "error": str(exc)[:200]}
        if checks[name].get("status") == "error" and status == "healthy":
            status = "degraded"
    code = 503 if status == "unhealthy" else 200
    return JSONResponse({"status": status, "checks": checks}, status_code=code)
