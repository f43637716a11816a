"""The API's background writer (tool logs, token touches): batched, never blocking, and one bad
row costs only itself."""

from __future__ import annotations

from sqlalchemy import select

from api.background import BackgroundWriter, Insert
from db.models import ToolInvocation
from tests.agent_helpers import add_user
from tests.conftest import Deployment

TABLE = ToolInvocation.__table__


def row(user_id: str, query: str) -> dict[str, object]:
    return {
        "user_id": user_id,
        "tool_name": "memory_query",
        "request_params": f'{{"query":"{query}"}}',
        "response_data": "{}",
        "latency_ms": 3,
        "success": True,
    }


def logged_queries(deployment: Deployment) -> list[str]:
    with deployment.db.read() as session:
        return sorted(r.request_params for r in session.scalars(select(ToolInvocation)))


def test_a_row_that_cannot_be_inserted_loses_only_itself(deployment: Deployment) -> None:
    alice = add_user(deployment.db, number="+15550001111", name="Alice")
    writer = BackgroundWriter(deployment.db)  # not started: flush() drains in this thread
    writer.submit(lambda _s: Insert(TABLE, row(alice, "one")))
    # A user forgotten between the job's check and the insert: the foreign key refuses it.
    writer.submit(lambda _s: Insert(TABLE, row("usr_gone", "two")))
    writer.submit(lambda _s: Insert(TABLE, row(alice, "three")))
    assert writer.flush()
    assert logged_queries(deployment) == ['{"query":"one"}', '{"query":"three"}']
    assert (writer.written, writer.failed) == (2, 1)


def test_a_failing_job_does_not_take_the_batch_with_it(deployment: Deployment) -> None:
    alice = add_user(deployment.db, number="+15550001111", name="Alice")
    writer = BackgroundWriter(deployment.db)

    def broken(_session: object) -> Insert:
        raise RuntimeError("boom")

    writer.submit(broken)
    writer.submit(lambda _s: Insert(TABLE, row(alice, "kept")))
    assert writer.flush()
    assert logged_queries(deployment) == ['{"query":"kept"}']
    assert (writer.written, writer.failed) == (1, 1)


def test_flush_ends_the_linger_at_once(deployment: Deployment) -> None:
    """The thread lingers to batch rows, but a flush (tests, shutdown) must not wait for it:
    with a 60 s linger, a flush that waited would time out."""
    alice = add_user(deployment.db, number="+15550001111", name="Alice")
    writer = BackgroundWriter(deployment.db, linger_secs=60.0)
    writer.start()
    try:
        writer.submit(lambda _s: Insert(TABLE, row(alice, "now")))
        assert writer.flush(timeout=10.0)
        assert logged_queries(deployment) == ['{"query":"now"}']
    finally:
        writer.stop(timeout=10.0)
