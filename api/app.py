"""The FastAPI application factory."""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from api import search
from api.background import EXTRA_KEY as BACKGROUND_WRITER
from api.background import BackgroundWriter
from api.middleware import RequestContextMiddleware
from api.routes import admin as admin_routes
from api.routes import console_api, health, webhooks
from api.routes import init as init_routes
from api.routes import insights as insights_routes
from api.routes import metrics as metrics_route
from api.routes import tools as tool_routes
from api.security.deadline import BodyDeadlineMiddleware
from api.state import AppState
from db import crypto, metrics, tracing
from db.checkpoint import Checkpointer, mitigation_in_force
from db.engine import ensure_wal, open_database, sqlite_version
from db.logs import configure_logging
from db.settings import Settings, get_settings

log = structlog.get_logger("voxmem.api")
_gc_frozen: set[str] = set()


def build_state(settings: Settings) -> AppState:
    keyring = crypto.load_keyring(settings)
    crypto.configure(keyring)
    db = open_database(settings)
    checkpointer = None
    if db.dialect == "sqlite":
        ensure_wal(db.write_engine)
        path = settings.sqlite_path
        if path is not None:
            checkpointer = Checkpointer.from_settings(settings, path)
            checkpointer.start()
    return AppState(settings=settings, db=db, keyring=keyring, checkpointer=checkpointer)


def _freeze_startup_objects(stage: str) -> None:
    """Everything built at start-up lives as long as the process: move it out of the
    collector's reach, so full collections scan only later objects. An automatic gen-2 pass
    over the imported modules stalled the event loop 60–120 ms (webhook p99), and one over the
    embedding model and tokenizer the warm-up thread loads still took 40–90 ms, so there are
    two stages: after the imports and after the warm-up.

    Once per stage per process: a test process builds many apps, whose objects must stay
    freeable.
    """
    if stage in _gc_frozen:
        return
    _gc_frozen.add(stage)
    gc.collect()
    gc.freeze()


def _warm_up(state: AppState) -> None:
    search.warm_up(state)
    _freeze_startup_objects("warm-up")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.configure_process(settings)
        # Shut down at exit only what this lifespan installed (a test may have its own).
        owns_tracing = not tracing.enabled() and tracing.init_tracing(settings, "voxmem-api")
        state = build_state(settings)
        app.state.voxmem = state
        # Agent endpoints: tool logs and token last_used_at are written off the hot path.
        writer = BackgroundWriter(state.db)
        writer.start()
        state.extras[BACKGROUND_WRITER] = writer
        # Not ready until the model is loaded: the first calls routed to a process still
        # loading it (ONNX session build holds the CPU ~0.5 s) overran init's deadline.
        state.extras[search.WARM_KEY] = threading.Event()
        threading.Thread(target=_warm_up, args=(state,), daemon=True).start()
        log.info(
            "api.started",
            database=state.db.dialect,
            sqlite_version=sqlite_version() if state.db.dialect == "sqlite" else None,
            wal_reset_mitigation=mitigation_in_force() if state.db.dialect == "sqlite" else None,
        )
        _freeze_startup_objects("imports")
        try:
            yield
        finally:
            writer.stop()
            webhooks.close_intake(state)
            if state.checkpointer is not None:
                state.checkpointer.stop()
            state.db.dispose()
            if owns_tracing:
                tracing.shutdown_tracing()
            log.info("api.stopped")

    app = FastAPI(
        title="voxmem",
        version="0.1.0",
        description="Long-term memory gateway for ElevenLabs voice agents.",
        lifespan=lifespan,
        # Our own middleware traces and measures every request (api/middleware.py, db/metrics);
        # FastAPI's native telemetry would add a second server span per request once an OTel
        # SDK is configured, and checks whether it is on for every request either way.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Innermost of ours: runs after the request context is set, ahead of FastAPI's routing.
    app.add_middleware(webhooks.PostCallDispatch)
    # Added first, so it runs inside the request-context middleware (its 408s get a request id,
    # an access-log line and metrics like any other answer).
    app.add_middleware(
        BodyDeadlineMiddleware,
        timeout_secs=settings.request_body_timeout_secs,
        max_bytes=settings.max_body_bytes,
    )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    # Agent-facing endpoints and the admin API; every path is also served per tenant under
    # /t/{tenant}/… (kept out of the schema to avoid listing each route twice).
    for router in (
        init_routes.router,
        tool_routes.router,
        admin_routes.router,
        insights_routes.router,  # issue 7: session, profile, analytics, patterns
        console_api.router,  # issue 11: the operator console at /console and its endpoints
    ):
        app.include_router(router)
        app.include_router(router, prefix="/t/{tenant}", include_in_schema=False)
    app.include_router(metrics_route.router)
    return app
