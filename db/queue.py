"""The durable event queue on ``webhook_events`` (style anchor B.3 items 9–16, B.6).

Statuses:
- ``pending``: waiting to run at ``run_after`` — new events and events waiting for a retry
  (``retry_count`` > 0 and ``error_message`` set). Retries stay ``pending`` so that the claim
  only touches rows covered by the partial index ``status IN ('pending', 'processing')``.
- ``processing``: leased to a worker until ``locked_until``; an expired lease is reclaimable.
- ``completed``; ``dead_letter`` (permanent error, or attempts exhausted; error kept).
- ``failed``: not produced by the worker (see above); ``retry`` accepts it for old rows.

Every function takes ``now`` so tests can drive the clock, and runs inside the caller's
transaction (``Database.write()``: BEGIN IMMEDIATE on SQLite). Completion and failure are fenced
by the lease token: a worker whose lease expired and was taken over changes nothing.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from db.models import WebhookEvent
from db.types import utcnow

CLAIMABLE = ("pending", "processing")
RETRYABLE_BY_OPERATOR = ("failed", "dead_letter")
MAX_ERROR_CHARS = 2000


class LeaseLostError(RuntimeError):
    """The job's lease expired and may belong to another worker: stop, write nothing more."""


class QueueOperationError(ValueError):
    """An operator action that does not apply to the event (unknown id, wrong status)."""


@dataclass(frozen=True)
class Job:
    """A claimed event. ``attempt`` counts this claim (1 on the first run)."""

    id: int
    tenant_id: int
    event_type: str
    event_id: str
    conversation_id: str | None
    ordering_key: str | None
    payload: str | None
    attempt: int
    max_attempts: int
    lease_token: str
    locked_until: datetime
    trace_context: dict[str, Any] | None


@dataclass(frozen=True)
class Backoff:
    base_secs: float
    cap_secs: float

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """``min(cap, base * 2**(attempt-1)) * U(0.8, 1.2)``, never less than Retry-After."""
        exponent = min(max(attempt - 1, 0), 30)
        delay = min(self.cap_secs, self.base_secs * (2**exponent)) * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_secs))
        return float(delay)


def _claim_statement(now: datetime, lease_until: datetime, token: str, worker_id: str) -> Any:
    event = WebhookEvent
    # Aliases, so that neither subquery is correlated with the UPDATE's own table.
    cand = aliased(WebhookEvent, name="cand")
    other = aliased(WebhookEvent, name="other")
    # Another event of the same ordering key under a live lease holds the key.
    key_busy = exists().where(
        other.ordering_key == cand.ordering_key,
        other.status == "processing",
        other.locked_until >= now,
        other.id != cand.id,
    )
    candidate = (
        select(cand.id)
        .where(
            cand.status.in_(CLAIMABLE),
            or_(
                and_(cand.status == "pending", cand.run_after <= now),
                # Expired lease: the worker died or stalled; attempts were counted at claim.
                and_(cand.status == "processing", cand.locked_until < now),
            ),
            or_(cand.ordering_key.is_(None), ~key_busy),
        )
        .order_by(cand.run_after, cand.id)
        .limit(1)
        # FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite renders nothing (BEGIN IMMEDIATE
        # already serialises claimers).
        .with_for_update(skip_locked=True, of=cand)
    )
    return (
        update(event)
        .where(event.id.in_(candidate))
        .values(
            status="processing",
            retry_count=event.retry_count + 1,
            lease_token=token,
            locked_by=worker_id[:128],
            locked_until=lease_until,
        )
        .returning(
            event.id,
            event.tenant_id,
            event.event_type,
            event.event_id,
            event.conversation_id,
            event.ordering_key,
            event.payload,
            event.retry_count,
            event.max_attempts,
            event.trace_context,
        )
        .execution_options(synchronize_session=False)
    )


def claim(session: Session, *, worker_id: str, now: datetime, lease_secs: float) -> Job | None:
    """Lease the next runnable event in one statement, counting the attempt. None if idle.

    An event whose attempts are already exhausted (its worker kept dying mid-job, so the lease
    kept expiring) is moved to the dead letter here instead of being run again; the caller
    then gets ``None`` for this round and simply polls again.
    """
    token = secrets.token_hex(16)
    lease_until = now + timedelta(seconds=lease_secs)
    if session.get_bind().dialect.name == "postgresql":
        row = _claim_row_postgresql(session, now, lease_until, token, worker_id)
    else:
        row = session.execute(_claim_statement(now, lease_until, token, worker_id)).first()
    if row is None:
        return None
    job = Job(
        id=row.id,
        tenant_id=row.tenant_id,
        event_type=row.event_type,
        event_id=row.event_id,
        conversation_id=row.conversation_id,
        ordering_key=row.ordering_key,
        payload=row.payload,
        attempt=int(row.retry_count),
        max_attempts=int(row.max_attempts),
        lease_token=token,
        locked_until=lease_until,
        trace_context=row.trace_context,
    )
    if job.attempt > job.max_attempts:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == job.id, WebhookEvent.lease_token == token)
            .values(
                status="dead_letter",
                lease_token=None,
                locked_until=None,
                locked_by=None,
                processed_at=now,
                error_class="LeaseExpired",
                error_message=(
                    f"lease expired on the final attempt ({job.max_attempts}); "
                    "the worker probably crashed or stalled"
                ),
            )
            .execution_options(synchronize_session=False)
        )
        return None
    return job


# A claim that lost an ordering-key race retries at once (the next pick skips that key).
PG_CLAIM_ATTEMPTS = 3


def _claim_row_postgresql(
    session: Session, now: datetime, lease_until: datetime, token: str, worker_id: str
) -> Any:
    """The same claim statement, plus what BEGIN IMMEDIATE gives SQLite for free.

    SKIP LOCKED alone keeps two claimers off one row, but under READ COMMITTED two claimers
    running at once can each see the other's ordering key as free (neither sees the other's
    uncommitted lease) and lease two events of one key. So, when the claimed event has a key:
    take a transaction-scoped advisory lock on the key (a concurrent claimer of the same key
    waits here until the other commits), then re-check with a fresh snapshot; on conflict roll
    back to the savepoint and pick again. Claims of different keys never wait for each other.
    """
    other = aliased(WebhookEvent, name="other")
    for _ in range(PG_CLAIM_ATTEMPTS):
        savepoint = session.begin_nested()
        row = session.execute(_claim_statement(now, lease_until, token, worker_id)).first()
        if row is None or row.ordering_key is None:
            savepoint.commit()
            return row
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(row.ordering_key, 0)))
        )
        busy = session.execute(
            select(
                exists().where(
                    other.ordering_key == row.ordering_key,
                    other.status == "processing",
                    other.locked_until >= now,
                    other.id != row.id,
                )
            )
        ).scalar()
        if not busy:
            savepoint.commit()
            return row
        savepoint.rollback()
    return None


def _fenced(job_id: int, token: str) -> Any:
    return and_(
        WebhookEvent.id == job_id,
        WebhookEvent.lease_token == token,
        WebhookEvent.status == "processing",
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def heartbeat(session: Session, job: Job, *, now: datetime, lease_secs: float) -> datetime:
    """Extend the lease. Raises ``LeaseLostError`` when the token no longer holds it."""
    until = now + timedelta(seconds=lease_secs)
    result = session.execute(
        update(WebhookEvent)
        .where(_fenced(job.id, job.lease_token))
        .values(locked_until=until)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        raise LeaseLostError(f"event {job.id}: lease lost")
    return until


def assert_lease(session: Session, job: Job, *, now: datetime) -> None:
    """Inside the completing transaction: the lease is still ours and unexpired.

    Under BEGIN IMMEDIATE nobody can take it over between this check and the commit.
    """
    holder = session.execute(
        select(WebhookEvent.locked_until)
        .where(_fenced(job.id, job.lease_token))
        # PostgreSQL: lock the row so no claimer can take the lease over before our commit
        # (SQLite renders nothing; BEGIN IMMEDIATE already excludes other writers).
        .with_for_update()
    ).scalar_one_or_none()
    if holder is None or holder < now:
        raise LeaseLostError(f"event {job.id}: lease lost or expired before completion")


def complete(session: Session, job: Job, *, now: datetime) -> None:
    _finish(session, job, now)


def _finish(session: Session, job: Job, now: datetime, **extra: object) -> None:
    """Mark the leased job completed (only with its lease token), plus ``extra`` columns."""
    result = session.execute(
        update(WebhookEvent)
        .where(_fenced(job.id, job.lease_token))
        .values(
            # locked_by stays: it records which worker ran the event last.
            status="completed",
            processed_at=now,
            lease_token=None,
            locked_until=None,
            **extra,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        raise LeaseLostError(f"event {job.id}: lease lost before completion")


FORGOTTEN = "Forgotten"


def complete_dropped(session: Session, job: Job, *, now: datetime, reason: str) -> None:
    """Complete the job without running it: its event belongs to data a forget erased.

    The payload (a transcript) is cleared in the same statement, so nothing of the forgotten
    call stays in the queue; the row remains as a completed record (``error_class`` says why,
    ``reason`` carries no personal data) and deduplicates further redeliveries of the event.
    """
    _finish(
        session,
        job,
        now,
        payload=None,
        trace_context=None,
        error_class=FORGOTTEN,
        error_message=reason[:MAX_ERROR_CHARS],
    )


def fail(
    session: Session,
    job: Job,
    *,
    now: datetime,
    error: BaseException | str,
    permanent: bool,
    backoff: Backoff,
    retry_after: float | None = None,
) -> str:
    """Record a failed attempt: retry later, or dead-letter. Returns the new status.

    Returns ``"lost"`` (and changes nothing) when the lease is no longer ours: the worker
    that holds it now owns the outcome.
    """
    if isinstance(error, BaseException):
        error_class = type(error).__name__
        message = str(error) or error_class
    else:
        error_class, message = "Error", error
    dead = permanent or job.attempt >= job.max_attempts
    values: dict[str, Any] = {
        "lease_token": None,
        "locked_until": None,
        "error_class": error_class[:200],
        "error_message": message[:MAX_ERROR_CHARS],
    }
    if dead:
        values.update(status="dead_letter", processed_at=now)
    else:
        delay = backoff.delay(job.attempt, retry_after=retry_after)
        values.update(status="pending", run_after=now + timedelta(seconds=delay))
    result = session.execute(
        update(WebhookEvent)
        .where(_fenced(job.id, job.lease_token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return "lost"
    return "dead_letter" if dead else "pending"


def retry(session: Session, event_id: int, *, now: datetime | None = None) -> WebhookEvent:
    """Operator action: requeue one failed or dead-lettered event with fresh attempts."""
    row = session.get(WebhookEvent, event_id)
    if row is None:
        raise QueueOperationError(f"no event {event_id}")
    if row.status not in RETRYABLE_BY_OPERATOR:
        raise QueueOperationError(
            f"event {event_id} is {row.status}; only failed or dead_letter events can be retried"
        )
    row.status = "pending"
    row.retry_count = 0
    row.run_after = now or utcnow()
    row.lease_token = None
    row.locked_until = None
    row.locked_by = None
    row.processed_at = None
    session.flush()
    return row


def replay_dead_letters(
    session: Session, *, now: datetime | None = None, tenant_id: int | None = None
) -> int:
    """Operator action: requeue every dead-lettered event (fresh attempts, error kept)."""
    stmt = update(WebhookEvent).where(WebhookEvent.status == "dead_letter")
    if tenant_id is not None:
        stmt = stmt.where(WebhookEvent.tenant_id == tenant_id)
    result = session.execute(
        stmt.values(
            status="pending",
            retry_count=0,
            run_after=now or utcnow(),
            lease_token=None,
            locked_until=None,
            locked_by=None,
            processed_at=None,
        ).execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def list_events(
    session: Session, *, status: str | None = None, limit: int = 50
) -> list[WebhookEvent]:
    """Newest first, without the payload column (it is large and encrypted)."""
    from sqlalchemy.orm import defer

    stmt = select(WebhookEvent).options(defer(WebhookEvent.payload))
    if status is not None:
        stmt = stmt.where(WebhookEvent.status == status)
    return list(session.scalars(stmt.order_by(WebhookEvent.id.desc()).limit(limit)))
