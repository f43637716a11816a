"""The queue contract on both databases (River's habit: one suite, both drivers).

The claim is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` statement
on PostgreSQL; on SQLite BEGIN IMMEDIATE serialises claimers instead. Either way: no event is
ever leased to two workers, events of one ordering key run one at a time, and completion and
failure are fenced by the lease token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from db import crypto, queue
from db.bootstrap import bootstrap
from db.engine import Database, open_database
from db.models import DEFAULT_TENANT, WebhookEvent
from db.settings import Settings
from db.tenancy import require_tenant
from db.types import utcnow

BACKOFF = queue.Backoff(base_secs=5, cap_secs=60)


@pytest.fixture
def qdb(any_settings: Settings) -> Iterator[Database]:
    bootstrap(any_settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(any_settings))
    db = open_database(any_settings)
    yield db
    db.dispose()


def enqueue(db: Database, n: int, *, key: str | None = None, at: datetime | None = None) -> None:
    at = at or utcnow() - timedelta(seconds=1)
    with db.write() as s:
        tenant = require_tenant(s, DEFAULT_TENANT)
        start = s.scalar(select(func.count()).select_from(WebhookEvent)) or 0
        for i in range(start, start + n):
            s.add(
                WebhookEvent(
                    tenant_id=tenant.id,
                    event_id=f"post_call_transcription:c{i}",
                    event_type="post_call_transcription",
                    payload='{"data": {}}',
                    conversation_id=f"c{i}",
                    ordering_key=key,
                    run_after=at + timedelta(microseconds=i),
                )
            )


def claim(db: Database, worker: str, *, now: datetime | None = None) -> queue.Job | None:
    with db.write() as s:
        return queue.claim(s, worker_id=worker, now=now or utcnow(), lease_secs=60)


def statuses(db: Database) -> dict[str, int]:
    with db.read() as s:
        rows = s.execute(
            select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)
        ).all()
    return {status: int(n) for status, n in rows}


def test_claim_statement_shape_on_postgresql() -> None:
    now = utcnow()
    stmt = queue._claim_statement(now, now, "tok", "w1")
    sql = " ".join(str(stmt.compile(dialect=postgresql.dialect())).split())
    assert sql.startswith("UPDATE webhook_events SET")
    assert "WHERE webhook_events.id IN (SELECT cand.id" in sql
    assert "FOR UPDATE OF cand SKIP LOCKED" in sql
    assert "RETURNING webhook_events.id" in sql


def test_claim_complete_and_fencing(qdb: Database) -> None:
    enqueue(qdb, 2)
    first = claim(qdb, "w1")
    second = claim(qdb, "w2")
    assert first is not None and second is not None
    assert first.id != second.id and first.attempt == 1
    assert claim(qdb, "w3") is None
    with qdb.write() as s:
        queue.complete(s, first, now=utcnow())
    # A stale worker holding an old token changes nothing.
    stale = queue.Job(**{**second.__dict__, "lease_token": "not-the-token"})
    with qdb.write() as s, pytest.raises(queue.LeaseLostError):
        queue.complete(s, stale, now=utcnow())
    with qdb.write() as s:
        assert (
            queue.fail(
                s, second, now=utcnow(), error=RuntimeError("x"), permanent=False, backoff=BACKOFF
            )
            == "pending"
        )
    assert statuses(qdb) == {"completed": 1, "pending": 1}


def test_expired_lease_is_reclaimed_and_the_old_worker_is_fenced(qdb: Database) -> None:
    enqueue(qdb, 1)
    now = utcnow()
    job = claim(qdb, "dies", now=now)
    assert job is not None
    assert claim(qdb, "w2", now=now + timedelta(seconds=30)) is None  # lease still live
    again = claim(qdb, "w2", now=now + timedelta(seconds=61))
    assert again is not None and again.id == job.id and again.attempt == 2
    with qdb.write() as s, pytest.raises(queue.LeaseLostError):
        queue.complete(s, job, now=now + timedelta(seconds=62))
    with qdb.write() as s:
        queue.complete(s, again, now=now + timedelta(seconds=62))
    assert statuses(qdb) == {"completed": 1}


def test_one_ordering_key_runs_one_event_at_a_time(qdb: Database) -> None:
    enqueue(qdb, 2, key="user-1")
    enqueue(qdb, 1, key="user-2")
    a = claim(qdb, "w1")
    b = claim(qdb, "w2")
    assert a is not None and b is not None
    assert {a.ordering_key, b.ordering_key} == {"user-1", "user-2"}
    assert claim(qdb, "w3") is None  # user-1's second event waits for the first
    holder = a if a.ordering_key == "user-1" else b
    with qdb.write() as s:
        queue.complete(s, holder, now=utcnow())
    nxt = claim(qdb, "w3")
    assert nxt is not None and nxt.ordering_key == "user-1"


def _race(db: Database, threads: int, rounds_until_idle: int = 3) -> list[list[int]]:
    """``threads`` workers claim and complete until the queue stays empty; the ids each got."""
    got: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        try:
            barrier.wait()
            idle = 0
            while idle < rounds_until_idle:
                job = claim(db, f"w{i}")
                if job is None:
                    idle += 1
                    continue
                idle = 0
                got[i].append(job.id)
                with db.write() as s:
                    queue.complete(s, job, now=utcnow())
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors, errors
    return got


def test_concurrent_claimers_never_share_an_event(qdb: Database) -> None:
    enqueue(qdb, 200)
    got = _race(qdb, 4)
    every = [i for ids in got for i in ids]
    assert len(every) == len(set(every)) == 200
    assert statuses(qdb) == {"completed": 200}


def test_concurrent_claimers_keep_one_ordering_key_serial(qdb: Database) -> None:
    """Under READ COMMITTED two claimers could each see the other's key as free; the claim
    must still never lease two events of one key at the same moment."""
    enqueue(qdb, 30, key="same-user")
    overlaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with qdb.read() as s:
                n = s.scalar(
                    select(func.count())
                    .select_from(WebhookEvent)
                    .where(WebhookEvent.status == "processing")
                )
            if n and n > 1:
                overlaps.append(f"{n} processing at once")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        got = _race(qdb, 4)
    finally:
        stop.set()
        watcher.join()
    assert sum(len(ids) for ids in got) == 30
    assert overlaps == []
