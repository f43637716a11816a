"""Worker heartbeats, visible in /health."""

from __future__ import annotations

import os
import socket

from sqlalchemy import update

from db.engine import Database
from db.models import WorkerHeartbeat
from db.types import utcnow


def register(db: Database, worker_id: str) -> None:
    with db.write() as session:
        row = session.get(WorkerHeartbeat, worker_id)
        now = utcnow()
        if row is None:
            session.add(
                WorkerHeartbeat(
                    worker_id=worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    last_seen=now,
                )
            )
        else:
            row.pid = os.getpid()
            row.started_at = now
            row.last_seen = now
            row.stopped_at = None


def beat(
    db: Database, worker_id: str, *, current_event_id: int | None, processed: int, failed: int
) -> None:
    with db.write() as session:
        session.execute(
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.worker_id == worker_id)
            .values(
                last_seen=utcnow(),
                current_event_id=current_event_id,
                processed_count=processed,
                failed_count=failed,
            )
        )


def stopped(db: Database, worker_id: str) -> None:
    with db.write() as session:
        session.execute(
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.worker_id == worker_id)
            .values(stopped_at=utcnow(), current_event_id=None)
        )
