"""Reflective memories (issue 7 §6): the queued reflection job writes patterns across calls,
idempotently, and supersedes them when the pattern changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import Memory, WebhookEvent
from db.settings import Settings
from memory import reflection
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, now, post_call, user_of

LOGIN = (
    ("user", "I can't log in to my account, the password is rejected."),
    ("agent", "I've reset your password."),
)


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(tmp_path / "data", reflection_interval_secs=1.0)


def fridays(n: int) -> list[datetime]:
    today = now().replace(hour=14, minute=30, second=0, microsecond=0)
    last_friday = today - timedelta(days=(today.weekday() - 4) % 7 or 7)
    return [last_friday - timedelta(weeks=w) for w in range(n)][::-1]


def reflective(deployment: Deployment, user_id: str) -> list[Memory]:
    with deployment.db.read() as session:
        return list(
            session.scalars(
                select(Memory)
                .where(Memory.user_id == user_id, Memory.sector_type == "reflective")
                .order_by(Memory.id)
            )
        )


def test_reflection_job_writes_patterns_idempotently(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15555550001"
    for i, start in enumerate(fridays(3)):
        post_call(client, deployment, f"conv_f{i}", number, LOGIN, start=start, duration_secs=90)
    drain(deployment, reflections=True)
    user_id = user_of(client, deployment, number)
    active = {m.content for m in reflective(deployment, user_id) if m.state == "active"}
    assert "The caller usually calls on Friday afternoons." in active
    assert "Most of the caller's calls are about login." in active
    assert "The caller's calls are usually short, under two minutes." in active
    # The job ran through the queue as an internal event, once per window.
    with deployment.db.read() as session:
        jobs = list(
            session.scalars(
                select(WebhookEvent).where(WebhookEvent.event_type == reflection.REFLECTION_EVENT)
            )
        )
    assert jobs and all(j.status == "completed" for j in jobs)
    before = [(m.id, m.state) for m in reflective(deployment, user_id)]
    # Running it again changes nothing (same observations → same rows).
    with deployment.db.write() as session:
        assert reflection.schedule(
            session, deployment.settings, jobs[0].tenant_id, user_id, now() + timedelta(seconds=5)
        )
    drain(deployment, reflections=True)
    assert [(m.id, m.state) for m in reflective(deployment, user_id)] == before
    # A changed habit supersedes the old reflection (history kept).
    monday = now().replace(hour=9, minute=0) - timedelta(days=(now().weekday()) % 7 or 7)
    for i in range(4):
        post_call(
            client,
            deployment,
            f"conv_m{i}",
            number,
            LOGIN,
            start=monday - timedelta(weeks=i, hours=-i),
            duration_secs=90,
        )
    drain(deployment, reflections=True)
    rows = reflective(deployment, user_id)
    call_time = [m for m in rows if (m.metadata_ or {}).get("key") == "call_time"]
    assert call_time[0].state == "superseded"
    assert call_time[-1].state == "active" and "Monday" in call_time[-1].content


def test_observations_callback_and_outcomes() -> None:
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    calls = [
        reflection.CallRow("a", t, "billing", "failure", 300),
        reflection.CallRow("b", t + timedelta(days=1), "login", "failure", 300),
        reflection.CallRow("c", t + timedelta(days=2), "login", "success", 300),
    ]
    found = reflection.observations(calls, "Dana", 3)
    assert found["callback"] == (
        "Dana called back about login within 1 days; the earlier fix may not have held."
    )
    assert found["outcomes"].startswith("Several of Dana's recent calls ended unresolved")
    assert "duration" not in found
