"""Read-only queue figures for health, metrics and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import QUEUE_STATUSES, WebhookEvent, WorkerHeartbeat
from db.types import utcnow


def status_counts(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(QUEUE_STATUSES, 0)
    rows = session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status))
    for status, count in rows:
        counts[status] = int(count)
    return counts


def oldest_pending_age_secs(session: Session, now: datetime | None = None) -> float:
    oldest = session.scalar(
        select(func.min(WebhookEvent.created_at)).where(WebhookEvent.status == "pending")
    )
    if oldest is None:
        return 0.0
    # Aggregates bypass the column type: SQLite hands back the stored naive ISO string.
    raw: object = oldest
    if isinstance(raw, str):
        oldest = datetime.fromisoformat(raw)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())


def live_workers(
    session: Session, within_secs: float, now: datetime | None = None
) -> list[WorkerHeartbeat]:
    cutoff = (now or utcnow()) - timedelta(seconds=within_secs)
    return list(
        session.scalars(
            select(WorkerHeartbeat).where(
                WorkerHeartbeat.last_seen >= cutoff, WorkerHeartbeat.stopped_at.is_(None)
            )
        )
    )
