"""Session memory (issue 7 §1, seed 000 story 5.1.1) through signed webhooks, the worker
pipeline, the admin API and conversation-init."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from db.models import SessionInteraction
from db.settings import Settings
from memory import session as session_mem
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, init_vars, now, post_call, user_of

LOGIN = (
    ("agent", "Hello, how can I help?"),
    ("user", "I can't log in, it says invalid password."),
    ("agent", "I've sent you a new password reset link."),
)
BILLING = (
    ("agent", "Hello, how can I help?"),
    ("user", "I was charged twice on my last invoice, can you check the billing?"),
    ("agent", "I've refunded the duplicate charge."),
)


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(tmp_path / "data", session_size=3)


def test_interactions_are_recorded_newest_first_with_fifo_of_size(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15551110001"
    for i in range(5):
        turns = LOGIN if i % 2 == 0 else BILLING
        post_call(
            client,
            deployment,
            f"conv_s{i}",
            number,
            turns,
            start=now() - timedelta(hours=10 - i),
            duration_secs=60 + i,
            title=f"call {i}",
            summary=f"summary {i}",
        )
    drain(deployment)
    user_id = user_of(client, deployment, number)
    r = client.get(f"/v1/users/{user_id}/session", headers=deployment.auth("admin"))
    assert r.status_code == 200
    items = r.json()["interactions"]
    # FIFO at session_size=3: calls 4, 3, 2 remain, newest first.
    assert [i["topic"] for i in items] == ["call 4", "call 3", "call 2"]
    assert [i["task_type"] for i in items] == ["login", "billing", "login"]
    assert items[0]["asked"] == "I can't log in, it says invalid password."
    assert items[0]["done"] == "summary 4"
    assert items[0]["outcome"] == "success" and items[0]["duration_secs"] == 64
    with deployment.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SessionInteraction)) == 3


def test_ttl_depends_on_tier_and_expired_rows_are_hidden_then_swept(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15551110002"
    post_call(client, deployment, "conv_t1", number, LOGIN)
    drain(deployment)
    user_id = user_of(client, deployment, number)
    items = client.get(f"/v1/users/{user_id}/session", headers=deployment.auth("admin")).json()
    expires = items["interactions"][0]["expires_at"]
    with deployment.db.read() as session:
        row = session.scalars(select(SessionInteraction)).one()
        assert timedelta(days=6.9) < row.expires_at - now() < timedelta(days=7.1)
    assert expires
    # A paid user gets 30 days.
    r = client.patch(
        f"/v1/users/{user_id}", json={"tier": "paid"}, headers=deployment.auth("admin")
    )
    assert r.status_code == 200
    post_call(client, deployment, "conv_t2", number, BILLING)
    drain(deployment)
    with deployment.db.read() as session:
        rows = {r.topic or "": r for r in session.scalars(select(SessionInteraction))}
        newest = max(rows.values(), key=lambda r: r.id)
        assert timedelta(days=29.9) < newest.expires_at - now() < timedelta(days=30.1)
    # Expired: invisible at once, deleted by the sweep.
    with deployment.db.write() as session:
        session.execute(update(SessionInteraction).values(expires_at=now() - timedelta(seconds=1)))
    items = client.get(f"/v1/users/{user_id}/session", headers=deployment.auth("admin")).json()
    assert items["interactions"] == []
    with deployment.db.write() as session:
        assert session_mem.sweep_expired(session) == 2
        assert session.scalar(select(func.count()).select_from(SessionInteraction)) == 0


def test_rating_and_clear_endpoints(client: TestClient, deployment: Deployment) -> None:
    number = "+15551110003"
    post_call(client, deployment, "conv_r1", number, LOGIN)
    drain(deployment)
    user_id = user_of(client, deployment, number)
    admin = deployment.auth("admin")
    item = client.get(f"/v1/users/{user_id}/session", headers=admin).json()["interactions"][0]
    r = client.patch(f"/v1/users/{user_id}/session/{item['id']}", json={"rating": 4}, headers=admin)
    assert r.status_code == 200 and r.json()["rating"] == 4
    assert (
        client.patch(
            f"/v1/users/{user_id}/session/{item['id']}", json={"rating": 6}, headers=admin
        ).status_code
        == 422
    )
    other = user_of(client, deployment, "+15551110099")
    assert (
        client.patch(
            f"/v1/users/{other}/session/{item['id']}", json={"rating": 2}, headers=admin
        ).status_code
        == 404
    )
    assert (
        client.post(
            f"/v1/users/{user_id}/session/clear", headers=deployment.auth("tool")
        ).status_code
        == 401
    )
    r = client.post(f"/v1/users/{user_id}/session/clear", headers=admin)
    assert r.json() == {"user_id": user_id, "cleared": 1}
    assert client.get(f"/v1/users/{user_id}/session", headers=admin).json()["interactions"] == []


def test_recent_calls_feed_memory_context_at_init(
    client: TestClient, deployment: Deployment
) -> None:
    number = "+15551110004"
    post_call(
        client,
        deployment,
        "conv_i1",
        number,
        LOGIN,
        title="Login problem",
        start=now() - timedelta(days=2),
    )
    drain(deployment)
    variables = init_vars(client, deployment, number)
    assert variables["session_context"].startswith("Previous call 2 days ago about Login problem")
    assert "invalid password" in variables["memory_context"]
    assert variables["memory_context"].startswith(variables["session_context"])
    # Unknown callers still get every documented variable (ElevenLabs refuses a call otherwise).
    r = client.post("/webhook/conversation-init", json={}, headers=deployment.auth("init"))
    assert r.json()["dynamic_variables"]["session_context"] == ""
    assert r.json()["dynamic_variables"]["profile_completeness"] == "0"
