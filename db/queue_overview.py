"""One tenant's queue at a glance, for the operator console (issue 11): depth, oldest pending,
throughput over recent windows and the dead letters with their errors. Read-only; the payload
column (large, encrypted) is never loaded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from db.models import QUEUE_STATUSES, WebhookEvent
from db.types import utcnow

THROUGHPUT_WINDOWS_MIN = (1, 5, 60)


def _aware(value: Any) -> datetime | None:
    # Aggregates bypass the column type: SQLite hands back the stored naive ISO string.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def overview(
    session: Session, tenant_id: int, *, now: datetime | None = None, dead_limit: int = 50
) -> dict[str, Any]:
    now = now or utcnow()
    counts = dict.fromkeys(QUEUE_STATUSES, 0)
    for status, n in session.execute(
        select(WebhookEvent.status, func.count())
        .where(WebhookEvent.tenant_id == tenant_id)
        .group_by(WebhookEvent.status)
    ):
        counts[status] = int(n)
    oldest = _aware(
        session.scalar(
            select(func.min(WebhookEvent.created_at)).where(
                WebhookEvent.tenant_id == tenant_id, WebhookEvent.status == "pending"
            )
        )
    )
    throughput = []
    for minutes in THROUGHPUT_WINDOWS_MIN:
        done = session.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(
                WebhookEvent.tenant_id == tenant_id,
                WebhookEvent.status == "completed",
                WebhookEvent.processed_at >= now - timedelta(minutes=minutes),
            )
        )
        throughput.append(
            {
                "window_minutes": minutes,
                "completed": int(done or 0),
                "per_minute": round(int(done or 0) / minutes, 2),
            }
        )
    dead = session.scalars(
        select(WebhookEvent)
        .options(defer(WebhookEvent.payload))
        .where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.status == "dead_letter")
        .order_by(WebhookEvent.id.desc())
        .limit(dead_limit)
    )
    return {
        "generated_at": _iso(now),
        "counts": counts,
        "depth": counts["pending"] + counts["processing"],
        "oldest_pending_age_secs": (
            round(max(0.0, (now - oldest).total_seconds()), 1) if oldest is not None else None
        ),
        "oldest_pending_at": _iso(oldest),
        "throughput": throughput,
        "dead_letters": [
            {
                "id": e.id,
                "event_type": e.event_type,
                "conversation_id": e.conversation_id,
                "retry_count": e.retry_count,
                "error_class": e.error_class,
                "error_message": e.error_message,
                "created_at": _iso(_aware(e.created_at)),
                "processed_at": _iso(_aware(e.processed_at)),
            }
            for e in dead
        ],
    }
