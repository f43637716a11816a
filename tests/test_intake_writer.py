"""The intake's group-commit writer (api/intake.py): events handed over in one loop iteration
are committed together, and each still gets its own answer — accepted with its row id,
duplicate, refused alone, or a timeout whose row a retry then finds."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from sqlalchemy import select

from api.intake import IngestWriter, InsertResult, OrderingHint, PendingEvent, WriterStoppedError
from db.models import DEFAULT_TENANT, Tenant, WebhookEvent
from tests.conftest import Deployment


def default_tenant_id(deployment: Deployment) -> int:
    with deployment.db.read() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == DEFAULT_TENANT))
        assert tenant is not None
        return tenant.id


def event(tenant_id: int, conversation_id: str) -> PendingEvent:
    return PendingEvent(
        tenant_id=tenant_id,
        event_id=f"post_call_transcription:{conversation_id}",
        event_type="post_call_transcription",
        conversation_id=conversation_id,
        payload=f'{{"type":"post_call_transcription","data":{{"id":"{conversation_id}"}}}}',
        hint=OrderingHint(user_key=None, fallback_key=f"conv:{conversation_id}"),
        signature_timestamp=1_700_000_000,
        payload_bytes=64,
        trace_context=None,
        max_attempts=5,
    )


def stored_ids(deployment: Deployment) -> dict[str, int]:
    with deployment.db.read() as session:
        rows = session.execute(select(WebhookEvent.event_id, WebhookEvent.id)).all()
    return {event_id: row_id for event_id, row_id in rows}


async def insert_together(
    writer: IngestWriter, items: list[PendingEvent], deadline: float = 10.0
) -> list[InsertResult | BaseException]:
    # gather starts every insert in the same loop iteration: one hand-over, one batch.
    return await asyncio.gather(
        *(writer.insert(item, deadline_secs=deadline) for item in items), return_exceptions=True
    )


def test_one_batch_answers_new_stored_and_repeated_events_each(deployment: Deployment) -> None:
    tenant = default_tenant_id(deployment)
    writer = IngestWriter(deployment.db, batch_max=128)
    try:
        (first,) = asyncio.run(insert_together(writer, [event(tenant, "a")]))
        batch = [event(tenant, "a"), event(tenant, "b"), event(tenant, "b"), event(tenant, "c")]
        results = asyncio.run(insert_together(writer, batch))
    finally:
        writer.close()
    assert isinstance(first, InsertResult) and not first.duplicate
    assert all(isinstance(r, InsertResult) for r in results)
    answers = [r.duplicate for r in results if isinstance(r, InsertResult)]
    # Already stored, new, the same new one again in the same batch, new.
    assert answers == [True, False, True, False]
    ids = stored_ids(deployment)
    assert len(ids) == 3
    # The row ids reported are the stored rows' ids (they come from lastrowid, not RETURNING).
    assert first.event_row_id == ids["post_call_transcription:a"]
    b, c = results[1], results[3]
    assert isinstance(b, InsertResult) and b.event_row_id == ids["post_call_transcription:b"]
    assert isinstance(c, InsertResult) and c.event_row_id == ids["post_call_transcription:c"]


def test_batches_larger_than_batch_max_are_all_stored(deployment: Deployment) -> None:
    tenant = default_tenant_id(deployment)
    writer = IngestWriter(deployment.db, batch_max=7)
    try:
        items = [event(tenant, f"n{i:03d}") for i in range(50)]
        results = asyncio.run(insert_together(writer, items))
    finally:
        writer.close()
    ids = stored_ids(deployment)
    assert len(ids) == 50
    for item, result in zip(items, results, strict=True):
        assert isinstance(result, InsertResult) and result.event_row_id == ids[item.event_id]


def test_an_event_the_database_refuses_fails_alone(deployment: Deployment) -> None:
    tenant = default_tenant_id(deployment)
    writer = IngestWriter(deployment.db, batch_max=128)
    try:
        # A tenant deleted between the secret lookup and the insert: the foreign key refuses it.
        batch = [event(tenant, "ok1"), event(987_654, "orphan"), event(tenant, "ok2")]
        results = asyncio.run(insert_together(writer, batch))
    finally:
        writer.close()
    assert isinstance(results[0], InsertResult) and not results[0].duplicate
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert isinstance(results[2], InsertResult) and not results[2].duplicate
    assert sorted(stored_ids(deployment)) == [
        "post_call_transcription:ok1",
        "post_call_transcription:ok2",
    ]


def test_a_missed_deadline_is_a_timeout_and_the_retry_finds_the_row(
    deployment: Deployment,
) -> None:
    tenant = default_tenant_id(deployment)
    path = deployment.settings.sqlite_path
    assert path is not None
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    writer = IngestWriter(deployment.db, batch_max=128)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits for the write lock
        release = threading.Timer(1.5, blocker.execute, args=("COMMIT",))
        release.start()
        (late,) = asyncio.run(insert_together(writer, [event(tenant, "slow")], deadline=0.5))
        release.join()
        assert isinstance(late, TimeoutError)
        # The writer had the event before the deadline, so it committed it once the lock was
        # free: a sender's retry is answered as a duplicate, not stored twice.
        (retry,) = asyncio.run(insert_together(writer, [event(tenant, "slow")]))
    finally:
        writer.close()
        blocker.close()
    assert isinstance(retry, InsertResult) and retry.duplicate
    assert list(stored_ids(deployment)) == ["post_call_transcription:slow"]


def test_a_closed_writer_refuses_instead_of_hanging(deployment: Deployment) -> None:
    writer = IngestWriter(deployment.db, batch_max=128)
    writer.close()
    with pytest.raises(WriterStoppedError):
        asyncio.run(writer.insert(event(default_tenant_id(deployment), "x"), deadline_secs=5))


def test_the_writer_holds_no_lock_between_batches(deployment: Deployment) -> None:
    # The writer keeps one connection for its life: each batch must still end its
    # transaction, including a batch the database refused, or workers would wait for the lock.
    tenant = default_tenant_id(deployment)
    path = deployment.settings.sqlite_path
    assert path is not None
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    writer = IngestWriter(deployment.db, batch_max=128)
    try:
        for batch in ([event(tenant, "kept")], [event(987_654, "refused")]):
            asyncio.run(insert_together(writer, batch))
            other.execute("BEGIN IMMEDIATE")  # SQLITE_BUSY at once if the writer held it
            other.execute("ROLLBACK")
    finally:
        writer.close()
        other.close()
    assert list(stored_ids(deployment)) == ["post_call_transcription:kept"]
