"""The queue contract (style anchor B.4), on SQLite and PostgreSQL, with a pinned clock.

Every function takes ``now``; leases are expired by moving the clock, never by sleeping.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from db import queue as q
from db.models import DEFAULT_TENANT, WebhookEvent
from db.settings import Settings
from db.tenancy import require_tenant
from db.types import utcnow
from tests.conftest import Deployment

LEASE = 60.0
BACKOFF = q.Backoff(base_secs=10.0, cap_secs=100.0)


@pytest.fixture
def settings(any_settings: Settings) -> Settings:
    return any_settings


@pytest.fixture
def t0() -> datetime:
    return utcnow().replace(microsecond=0)


def add_events(
    deployment: Deployment,
    n: int,
    *,
    at: datetime,
    key: str | None = None,
    max_attempts: int = 3,
    prefix: str = "e",
) -> list[int]:
    ids = []
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        for i in range(n):
            row = WebhookEvent(
                tenant_id=tenant.id,
                event_id=f"post_call_transcription:{prefix}{i}",
                event_type="post_call_transcription",
                payload="{}",
                conversation_id=f"{prefix}{i}",
                ordering_key=key,
                max_attempts=max_attempts,
                run_after=at,
                created_at=at,
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def claim(deployment: Deployment, now: datetime, worker: str = "w1") -> q.Job | None:
    with deployment.db.write() as session:
        return q.claim(session, worker_id=worker, now=now, lease_secs=LEASE)


def row(deployment: Deployment, event_id: int) -> WebhookEvent:
    with deployment.db.read() as session:
        found = session.get(WebhookEvent, event_id)
        assert found is not None
        return found


def test_claim_leases_one_event_and_counts_the_attempt(
    deployment: Deployment, t0: datetime
) -> None:
    assert claim(deployment, t0) is None
    ids = add_events(deployment, 2, at=t0)
    job = claim(deployment, t0)
    assert job is not None and job.id == ids[0]
    assert job.attempt == 1 and len(job.lease_token) == 32
    stored = row(deployment, job.id)
    assert stored.status == "processing"
    assert stored.retry_count == 1
    assert stored.lease_token == job.lease_token
    assert stored.locked_by == "w1"
    assert stored.locked_until == t0 + timedelta(seconds=LEASE)
    # One row per claim: the other event is still pending.
    assert row(deployment, ids[1]).status == "pending"


def test_two_claimers_never_get_the_same_row(deployment: Deployment, t0: datetime) -> None:
    add_events(deployment, 1, at=t0)
    assert claim(deployment, t0, "a") is not None
    assert claim(deployment, t0, "b") is None


def test_concurrent_claimers_take_each_event_once(deployment: Deployment, t0: datetime) -> None:
    ids = add_events(deployment, 40, at=t0)
    claimed: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def claimer(name: str) -> None:
        barrier.wait()
        while True:
            job = claim(deployment, t0, name)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids


def test_run_after_in_the_future_is_not_claimable(deployment: Deployment, t0: datetime) -> None:
    add_events(deployment, 1, at=t0 + timedelta(seconds=30))
    assert claim(deployment, t0) is None
    assert claim(deployment, t0 + timedelta(seconds=30)) is not None


def test_expired_lease_is_reclaimed_and_the_old_token_is_fenced(
    deployment: Deployment, t0: datetime
) -> None:
    add_events(deployment, 1, at=t0)
    first = claim(deployment, t0, "dead-worker")
    assert first is not None
    # Not before the lease runs out...
    assert claim(deployment, t0 + timedelta(seconds=LEASE - 1)) is None
    # ...then another worker takes it over, as attempt 2.
    second = claim(deployment, t0 + timedelta(seconds=LEASE + 1), "live-worker")
    assert second is not None and second.id == first.id
    assert second.attempt == 2 and second.lease_token != first.lease_token
    later = t0 + timedelta(seconds=LEASE + 2)
    with deployment.db.write() as session, pytest.raises(q.LeaseLostError):
        q.complete(session, first, now=later)
    with deployment.db.write() as session, pytest.raises(q.LeaseLostError):
        q.heartbeat(session, first, now=later, lease_secs=LEASE)
    with deployment.db.write() as session:
        assert (
            q.fail(session, first, now=later, error="x", permanent=True, backoff=BACKOFF) == "lost"
        )
    assert row(deployment, first.id).status == "processing"
    with deployment.db.write() as session:
        q.complete(session, second, now=later)
    stored = row(deployment, first.id)
    assert stored.status == "completed" and stored.lease_token is None
    assert stored.retry_count == 2


def test_heartbeat_extends_the_lease(deployment: Deployment, t0: datetime) -> None:
    add_events(deployment, 1, at=t0)
    job = claim(deployment, t0)
    assert job is not None
    with deployment.db.write() as session:
        until = q.heartbeat(session, job, now=t0 + timedelta(seconds=LEASE - 1), lease_secs=LEASE)
    assert until == t0 + timedelta(seconds=2 * LEASE - 1)
    assert claim(deployment, t0 + timedelta(seconds=LEASE + 1)) is None
    with deployment.db.write() as session:
        q.assert_lease(session, job, now=t0 + timedelta(seconds=LEASE + 1))
        with pytest.raises(q.LeaseLostError):
            q.assert_lease(session, job, now=t0 + timedelta(seconds=2 * LEASE))


def test_retry_backoff_then_dead_letter_with_error_kept(
    deployment: Deployment, t0: datetime
) -> None:
    (event_id,) = add_events(deployment, 1, at=t0, max_attempts=3)
    now = t0
    for attempt in (1, 2):
        job = claim(deployment, now)
        assert job is not None and job.attempt == attempt
        with deployment.db.write() as session:
            status = q.fail(
                session,
                job,
                now=now,
                error=RuntimeError(f"boom {attempt}"),
                permanent=False,
                backoff=BACKOFF,
            )
        assert status == "pending"
        stored = row(deployment, event_id)
        delay = (stored.run_after - now).total_seconds()
        expected = BACKOFF.base_secs * 2 ** (attempt - 1)
        assert 0.8 * expected - 0.01 <= delay <= 1.2 * expected + 0.01
        assert stored.error_message == f"boom {attempt}" and stored.error_class == "RuntimeError"
        assert claim(deployment, now) is None  # not before run_after
        now = stored.run_after
    job = claim(deployment, now)
    assert job is not None and job.attempt == 3
    with deployment.db.write() as session:
        assert (
            q.fail(
                session, job, now=now, error=ValueError("final"), permanent=False, backoff=BACKOFF
            )
            == "dead_letter"
        )
    stored = row(deployment, event_id)
    assert stored.status == "dead_letter"
    assert stored.error_message == "final" and stored.retry_count == 3
    assert claim(deployment, now + timedelta(days=1)) is None


def test_permanent_error_goes_straight_to_dead_letter(deployment: Deployment, t0: datetime) -> None:
    (event_id,) = add_events(deployment, 1, at=t0, max_attempts=8)
    job = claim(deployment, t0)
    assert job is not None
    with deployment.db.write() as session:
        status = q.fail(session, job, now=t0, error="unparseable", permanent=True, backoff=BACKOFF)
    assert status == "dead_letter"
    assert row(deployment, event_id).retry_count == 1


def test_retry_after_is_honoured(deployment: Deployment, t0: datetime) -> None:
    (event_id,) = add_events(deployment, 1, at=t0)
    job = claim(deployment, t0)
    assert job is not None
    with deployment.db.write() as session:
        q.fail(session, job, now=t0, error="429", permanent=False, backoff=BACKOFF, retry_after=50)
    assert (row(deployment, event_id).run_after - t0).total_seconds() >= 50


def test_crash_loop_ends_in_dead_letter_at_claim(deployment: Deployment, t0: datetime) -> None:
    """Attempts are counted at claim, so a job whose worker always dies still terminates."""
    (event_id,) = add_events(deployment, 1, at=t0, max_attempts=2)
    now = t0
    for attempt in (1, 2):
        job = claim(deployment, now)
        assert job is not None and job.attempt == attempt
        now += timedelta(seconds=LEASE + 1)  # the worker died: the lease runs out
    assert claim(deployment, now) is None
    stored = row(deployment, event_id)
    assert stored.status == "dead_letter"
    assert stored.error_class == "LeaseExpired"


def test_same_ordering_key_runs_one_at_a_time(deployment: Deployment, t0: datetime) -> None:
    a1, a2 = add_events(deployment, 2, at=t0, key="user:a", prefix="a")
    (b1,) = add_events(deployment, 1, at=t0, key="user:b", prefix="b")
    first = claim(deployment, t0)
    assert first is not None and first.id == a1
    other = claim(deployment, t0)
    assert other is not None and other.id == b1  # a2 waits for a1; b is independent
    assert claim(deployment, t0) is None
    with deployment.db.write() as session:
        q.complete(session, first, now=t0)
    nxt = claim(deployment, t0)
    assert nxt is not None and nxt.id == a2


def test_expired_holder_does_not_block_its_key_forever(
    deployment: Deployment, t0: datetime
) -> None:
    a1, a2 = add_events(deployment, 2, at=t0, key="user:a")
    assert claim(deployment, t0) is not None
    later = t0 + timedelta(seconds=LEASE + 1)
    # The dead holder's event is re-run first (oldest run_after), still one at a time.
    job = claim(deployment, later)
    assert job is not None and job.id == a1
    assert claim(deployment, later) is None
    with deployment.db.write() as session:
        q.complete(session, job, now=later)
    job2 = claim(deployment, later)
    assert job2 is not None and job2.id == a2


def test_operator_retry_and_replay(deployment: Deployment, t0: datetime) -> None:
    ids = add_events(deployment, 3, at=t0, max_attempts=1)
    jobs = [claim(deployment, t0) for _ in ids]
    with deployment.db.write() as session:
        for job in jobs[:2]:
            assert job is not None
            q.fail(session, job, now=t0, error="bad", permanent=True, backoff=BACKOFF)
        assert jobs[2] is not None
        q.complete(session, jobs[2], now=t0)
    with deployment.db.write() as session:
        with pytest.raises(q.QueueOperationError, match="completed"):
            q.retry(session, ids[2])
        with pytest.raises(q.QueueOperationError, match="no event"):
            q.retry(session, 999_999)
        q.retry(session, ids[0], now=t0)
    stored = row(deployment, ids[0])
    assert stored.status == "pending" and stored.retry_count == 0
    assert stored.error_message == "bad"  # kept until it succeeds
    with deployment.db.write() as session:
        assert q.replay_dead_letters(session, now=t0) == 1
    with deployment.db.read() as session:
        statuses = {
            r.id: r.status for r in session.execute(select(WebhookEvent.id, WebhookEvent.status))
        }
    assert statuses == {ids[0]: "pending", ids[1]: "pending", ids[2]: "completed"}


def test_backoff_is_capped_and_jittered() -> None:
    delays = [BACKOFF.delay(20) for _ in range(50)]
    assert all(0.8 * 100 <= d <= 1.2 * 100 for d in delays)
    assert len(set(delays)) > 1
    assert 8.0 <= BACKOFF.delay(1) <= 12.0
    assert BACKOFF.delay(1, retry_after=500) == 100.0  # Retry-After, still under the cap
