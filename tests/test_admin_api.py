"""Admin API /v1 through the real app: CONTRACT §4 shapes, tenant isolation, 4xx on bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import (
    DEFAULT_TENANT,
    EntityRelation,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    SessionInteraction,
    User,
    UserProfile,
    WebhookEvent,
)
from db.tenancy import require_tenant
from tests.agent_helpers import add_memories, add_user, token
from tests.conftest import Deployment

MEMORY_KEYS = {"id", "content", "sector", "salience", "state", "created_at", "links", "sources"}


@pytest.fixture
def user(deployment: Deployment) -> str:
    user_id = add_user(deployment.db, number="+15551234567", name="John")
    ids = add_memories(
        deployment.db,
        deployment.settings,
        user_id,
        ["John uses Salesforce.", "John wants an API integration."],
        sources=[{"conversation_id": "conv_1", "turns": [1, 3]}],
    )
    with deployment.db.write() as session:
        session.add(MemoryLink(source_memory_id=ids[0], target_memory_id=ids[1], link_weight=0.87))
        session.add(
            UserProfile(
                user_id=user_id,
                profile=json.dumps({"company": "Acme"}),
                communication_style="concise",
            )
        )
        now = datetime.now(UTC)
        for i in range(12):
            session.add(
                SessionInteraction(
                    user_id=user_id,
                    occurred_at=now - timedelta(hours=i),
                    topic=f"topic {i}",
                    outcome="resolved",
                    expires_at=now + timedelta(days=1),
                )
            )
    return user_id


def get(client: TestClient, deployment: Deployment, path: str) -> dict:  # type: ignore[type-arg]
    resp = client.get(path, headers=deployment.auth("admin"))
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_user_shape_and_patch(client: TestClient, deployment: Deployment, user: str) -> None:
    data = get(client, deployment, f"/v1/users/{user}")
    assert {"user_id", "name", "summary", "tier", "profile", "last_interaction"} <= set(data)
    assert data["name"] == "John" and data["tier"] == "trial"
    assert data["profile"]["company"] == "Acme"
    resp = client.patch(
        f"/v1/users/{user}",
        json={"name": "John Doe", "tier": "premium"},
        headers=deployment.auth("admin"),
    )
    assert resp.status_code == 200
    assert resp.json()["name"] == "John Doe" and resp.json()["tier"] == "premium"
    for bad in ({"tier": ""}, {"tier": "Not A Tier!"}, {"nickname": "x"}):
        assert (
            client.patch(
                f"/v1/users/{user}", json=bad, headers=deployment.auth("admin")
            ).status_code
            == 422
        )
    listed = get(client, deployment, "/v1/users")["users"]
    assert [u["user_id"] for u in listed] == [user]


def test_memories_contract_shape(client: TestClient, deployment: Deployment, user: str) -> None:
    memories = get(client, deployment, f"/v1/users/{user}/memories")["memories"]
    assert len(memories) == 2
    for m in memories:
        assert MEMORY_KEYS <= set(m)
        assert m["sources"] == [{"conversation_id": "conv_1", "turns": [1, 3]}]
        assert m["state"] == "active"
        assert m["links"] and set(m["links"][0]) == {"memory_id", "weight"}
        assert m["links"][0]["weight"] == pytest.approx(0.87)


def test_add_pause_archive_resume_salience_delete(
    client: TestClient, deployment: Deployment, user: str
) -> None:
    auth = deployment.auth("admin")
    resp = client.post(
        f"/v1/users/{user}/memories",
        json={"content": "Prefers calls after 5 pm.", "sector": "procedural", "salience": 0.8},
        headers=auth,
    )
    assert resp.status_code == 201
    added = resp.json()
    assert MEMORY_KEYS <= set(added) and added["sector"] == "procedural"
    mid = added["id"]
    with deployment.db.read() as session:  # embedded, so the tool can retrieve it
        assert (
            session.scalars(select(MemoryEmbedding).where(MemoryEmbedding.memory_id == mid)).first()
            is not None
        )
    tool = client.post(
        "/tools/memory-query",
        json={"query": "when to call", "user_id": user},
        headers=deployment.auth("tool"),
    ).json()
    assert mid in [m["id"] for m in tool["memories"]]

    assert (
        client.post(f"/v1/users/{user}/memories/{mid}/pause", headers=auth).json()["state"]
        == "paused"
    )
    active = get(client, deployment, f"/v1/users/{user}/memories")["memories"]
    assert mid not in [m["id"] for m in active]
    paused = get(client, deployment, f"/v1/users/{user}/memories?state=paused")["memories"]
    assert [m["id"] for m in paused] == [mid]
    tool = client.post(
        "/tools/memory-query",
        json={"query": "when to call", "user_id": user},
        headers=deployment.auth("tool"),
    ).json()
    assert mid not in [m["id"] for m in tool["memories"]]

    assert (
        client.post(f"/v1/users/{user}/memories/{mid}/archive", headers=auth).json()["state"]
        == "archived"
    )
    assert (
        client.post(f"/v1/users/{user}/memories/{mid}/resume", headers=auth).json()["state"]
        == "active"
    )
    patched = client.patch(
        f"/v1/users/{user}/memories/{mid}", json={"salience": 0.25}, headers=auth
    ).json()
    assert patched["salience"] == 0.25
    assert (
        client.patch(
            f"/v1/users/{user}/memories/{mid}", json={"salience": 2}, headers=auth
        ).status_code
        == 422
    )
    assert (
        client.patch(
            f"/v1/users/{user}/memories/{mid}", json={"state": "superseded"}, headers=auth
        ).status_code
        == 422
    )
    assert len(get(client, deployment, f"/v1/users/{user}/memories?state=all")["memories"]) == 3

    assert client.delete(f"/v1/users/{user}/memories/{mid}", headers=auth).status_code == 200
    with deployment.db.read() as session:
        assert session.get(Memory, mid) is None
        assert (
            session.scalars(select(MemoryEmbedding).where(MemoryEmbedding.memory_id == mid)).first()
            is None
        )
    assert client.delete(f"/v1/users/{user}/memories/{mid}", headers=auth).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": ""},
        {"content": "x", "sector": "gossip"},
        {"content": "x", "salience": -1},
        {"content": "x", "extra": 1},
    ],
)
def test_add_memory_validation(
    client: TestClient,
    deployment: Deployment,
    user: str,
    body: dict,  # type: ignore[type-arg]
) -> None:
    resp = client.post(f"/v1/users/{user}/memories", json=body, headers=deployment.auth("admin"))
    assert resp.status_code == 422


def test_session_graph_and_calls(client: TestClient, deployment: Deployment, user: str) -> None:
    interactions = get(client, deployment, f"/v1/users/{user}/session")["interactions"]
    assert len(interactions) == 10
    assert [i["topic"] for i in interactions[:3]] == ["topic 0", "topic 1", "topic 2"]
    graph = get(client, deployment, f"/v1/users/{user}/graph")
    assert graph == {"entities": [], "relations": []}
    assert get(client, deployment, f"/v1/users/{user}/conversations") == {"conversations": []}
    assert get(client, deployment, "/v1/conversations") == {"conversations": []}
    with deployment.db.read() as session:
        assert session.scalars(select(EntityRelation)).first() is None


def test_export_and_forget(client: TestClient, deployment: Deployment, user: str) -> None:
    data = get(client, deployment, f"/v1/users/{user}/export")
    assert {"user", "memories", "conversations"} <= set(data)
    assert data["user"]["user_id"] == user
    resp = client.delete(f"/v1/users/{user}", headers=deployment.auth("admin"))
    assert resp.status_code == 200 and resp.json()["forgotten"] is True
    assert client.get(f"/v1/users/{user}", headers=deployment.auth("admin")).status_code == 404
    assert client.delete(f"/v1/users/{user}", headers=deployment.auth("admin")).status_code == 404
    with deployment.db.read() as session:
        assert session.get(User, user) is None


def test_other_tenant_sees_nothing(client: TestClient, deployment: Deployment, user: str) -> None:
    acme = {"Authorization": f"Bearer {token(deployment.db, 'acme', 'admin')}"}
    with deployment.db.read() as session:
        mid = session.scalars(select(Memory.id).where(Memory.user_id == user)).first()
    for method, path in (
        ("GET", f"/t/acme/v1/users/{user}"),
        ("GET", f"/t/acme/v1/users/{user}/memories"),
        ("GET", f"/t/acme/v1/users/{user}/export"),
        ("GET", f"/t/acme/v1/users/{user}/session"),
        ("DELETE", f"/t/acme/v1/users/{user}/memories/{mid}"),
        ("POST", f"/t/acme/v1/users/{user}/memories/{mid}/pause"),
        ("DELETE", f"/t/acme/v1/users/{user}"),
    ):
        assert client.request(method, path, headers=acme).status_code == 404, path
    assert client.get("/t/acme/v1/users", headers=acme).json() == {"users": []}
    stats = client.get("/t/acme/v1/stats", headers=acme).json()
    assert stats["tenant"] == "acme" and stats["users"] == 0
    assert get(client, deployment, f"/v1/users/{user}")["user_id"] == user


def test_memory_of_another_user_is_404(
    client: TestClient, deployment: Deployment, user: str
) -> None:
    other = add_user(deployment.db, name="Mary")
    (mid,) = add_memories(deployment.db, deployment.settings, other, ["Mary likes tea."])
    resp = client.post(f"/v1/users/{user}/memories/{mid}/pause", headers=deployment.auth("admin"))
    assert resp.status_code == 404


def test_queue_events_list_and_retry(client: TestClient, deployment: Deployment) -> None:
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        dead = WebhookEvent(
            tenant_id=tenant.id,
            event_id="t:conv_1",
            event_type="t",
            status="dead_letter",
            error_message="boom",
            payload="{}",
        )
        done = WebhookEvent(
            tenant_id=tenant.id,
            event_id="t:conv_2",
            event_type="t",
            status="completed",
            payload="{}",
        )
        session.add_all([dead, done])
        session.flush()
        dead_id, done_id = dead.id, done.id
    auth = deployment.auth("admin")
    events = get(client, deployment, "/v1/queue/events?status=dead_letter")["events"]
    assert [e["id"] for e in events] == [dead_id]
    assert "payload" not in events[0]
    assert client.get("/v1/queue/events?status=bogus", headers=auth).status_code == 422
    resp = client.post(f"/v1/queue/events/{dead_id}/retry", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert client.post(f"/v1/queue/events/{done_id}/retry", headers=auth).status_code == 409
    assert client.post("/v1/queue/events/999999/retry", headers=auth).status_code == 404
    acme = {"Authorization": f"Bearer {token(deployment.db, 'acme', 'admin')}"}
    assert client.post(f"/t/acme/v1/queue/events/{dead_id}/retry", headers=acme).status_code == 404
    stats = get(client, deployment, "/v1/stats")
    assert stats["queue"]["pending"] == 1 and stats["queue"]["completed"] == 1


def test_stats_counts(client: TestClient, deployment: Deployment, user: str) -> None:
    stats = get(client, deployment, "/v1/stats")
    assert stats["users"] == 1
    assert stats["memories"]["by_state"]["active"] == 2
    assert stats["memories"]["active_by_sector"] == {"semantic": 2}


def test_openapi_documents_agent_and_admin_paths(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/webhook/conversation-init",
        "/tools/memory-query",
        "/v1/users/{user_id}",
        "/v1/users/{user_id}/memories",
        "/v1/users/{user_id}/export",
        "/v1/stats",
        "/v1/queue/events",
    ):
        assert path in paths, path
    init = paths["/webhook/conversation-init"]["post"]
    assert init["responses"]["200"]["content"]["application/json"]["examples"]
    assert client.get("/docs").status_code == 200
