"""Batched deletion of rows past their ``expires_at`` (session memory, forget tombstones)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.types import utcnow


def delete_expired(
    session: Session, model: Any, *, now: datetime | None = None, batch: int = 1000
) -> int:
    """Delete up to ``batch`` rows of ``model`` (a mapped class with ``id`` and an indexed
    ``expires_at``) whose time has passed; returns how many. Batched so a large backlog never
    holds the write lock for long: callers sweep again later."""
    now = now or utcnow()
    ids = list(session.scalars(select(model.id).where(model.expires_at <= now).limit(batch)))
    if not ids:
        return 0
    session.execute(
        delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False)
    )
    return len(ids)
