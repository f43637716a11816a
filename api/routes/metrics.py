"""``GET /metrics``: Prometheus text format (CONTRACT §4 Operators).

Merges every process's samples (multiprocess mode, see db/metrics.py) and reads the queue
figures from the database at scrape time. Unauthenticated like /health: bind the API to a
private interface or filter /metrics at the proxy when the port is public.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import StateDep
from db import metrics

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: StateDep) -> Response:
    window = state.settings.worker_heartbeat_secs * 3
    # Reading mmap files and the database blocks; keep it off the event loop.
    body = await run_in_threadpool(metrics.render_latest, state.db, window)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
