"""Builds the function a worker process calls on every poll: claim → process → complete/fail."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from db import metrics, tracing
from db import queue as q
from db.engine import Database
from db.settings import Settings
from db.types import utcnow
from worker.loop import ProcessNext, WorkerStats
from worker.pipeline import BoundaryHook, Pipeline, Stage
from worker.stages import default_stages

log = structlog.get_logger("voxmem.worker")


def make_process_next(
    settings: Settings,
    db: Database,
    *,
    worker_id: str,
    stats: WorkerStats | None = None,
    stages: Sequence[Stage] | None = None,
    on_boundary: BoundaryHook | None = None,
) -> ProcessNext:
    pipeline = Pipeline(
        settings, db, default_stages() if stages is None else stages, on_boundary=on_boundary
    )
    counters = stats if stats is not None else WorkerStats()

    def process_next() -> bool:
        # The claim is its own short transaction: the write lock is never held while a job
        # runs its slow stages.
        claim_started = time.time_ns()
        with db.write() as session:
            job = q.claim(
                session, worker_id=worker_id, now=utcnow(), lease_secs=settings.queue_lease_secs
            )
        if job is None:
            return False
        # Recorded once the event (and so its trace) is known; idle polls make no spans.
        with tracing.span(
            "queue.claim",
            parent=job.trace_context,
            attributes={"event.id": job.id},
            start_time_ns=claim_started,
        ):
            pass
        metrics.observe_claim()
        counters.current_event_id = job.id
        try:
            outcome = pipeline.run(job)
        finally:
            counters.current_event_id = None
        if outcome.status in ("completed", "dropped"):
            counters.processed += 1
        else:
            counters.failed += 1
        return True

    return process_next
