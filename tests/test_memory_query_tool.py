"""POST /tools/memory-query through the real app and the real memory engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.search import EXTRA_KEY, UnavailableSearch
from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.models import DEFAULT_TENANT, ToolInvocation
from db.settings import Settings
from db.tenancy import create_token
from tests.agent_helpers import add_memories, add_user, bind, token
from tests.conftest import FIXTURES, Deployment, make_settings

URL = "/tools/memory-query"
CRM_FACTS = [
    "John's company uses Salesforce CRM.",
    "John needs an API integration with Salesforce.",
    "John prefers email follow-ups over phone calls.",
]
OTHER_FACTS = ["Mary is allergic to peanuts.", "Mary's daughter plays the violin."]


@pytest.fixture
def settings(any_settings: Settings) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL (tests/pg.py)."""
    return any_settings


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.fixture
def seeded(deployment: Deployment) -> dict[str, str]:
    john = add_user(deployment.db, number="+15551234567", name="John")
    mary = add_user(deployment.db, number="+15550000002", name="Mary")
    add_memories(deployment.db, deployment.settings, john, CRM_FACTS, salience=0.8)
    add_memories(deployment.db, deployment.settings, mary, OTHER_FACTS)
    bind(deployment.db, DEFAULT_TENANT, john, "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p")
    return {"john": john, "mary": mary}


def query(client: TestClient, deployment: Deployment, **body: Any) -> dict[str, Any]:
    resp = client.post(URL, json=body, headers=deployment.auth("tool"))
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def contents(data: dict[str, Any]) -> list[str]:
    return [m["content"] for m in data["memories"]]


def test_fixture_request_resolves_bound_conversation(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    body = fixture("tool_memory_query_request.json")  # its user_id is a foreign "user_123"
    resp = client.post(URL, json=body, headers=deployment.auth("tool"))
    assert resp.status_code == 200
    data = resp.json()
    assert set(data) == {"summary", "memories", "query_time_ms"}
    assert isinstance(data["query_time_ms"], int)
    assert data["memories"], data
    assert set(contents(data)) <= set(CRM_FACTS)
    assert "Salesforce" in data["summary"]
    for m in data["memories"]:
        assert set(m) == {"id", "content", "sector", "salience", "score", "timestamp"}
        assert m["timestamp"].endswith("Z")
    assert len(resp.content) <= 2048


def test_bound_conversation_cannot_be_switched_by_user_id(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    data = query(
        client,
        deployment,
        query="allergies and children",
        limit=5,
        conversation_id="conv_6801kb3m9q2rv4tx8e0d7c5j1n3p",
        user_id=seeded["mary"],
    )
    assert not set(contents(data)) & set(OTHER_FACTS)


def test_resolution_order_user_id_then_caller_id(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    # Unbound conversation: user_id decides.
    data = query(
        client,
        deployment,
        query="allergies",
        conversation_id="conv_unbound",
        user_id=seeded["mary"],
        caller_id="+15551234567",
    )
    assert set(contents(data)) <= set(OTHER_FACTS) and data["memories"]
    # No user_id: caller_id (normalised) decides.
    data = query(client, deployment, query="allergies", caller_id="+1 (555) 000-0002")
    assert set(contents(data)) <= set(OTHER_FACTS) and data["memories"]
    # Empty dynamic variables count as absent.
    data = query(
        client, deployment, query="CRM", conversation_id="", user_id="", caller_id="+15551234567"
    )
    assert set(contents(data)) <= set(CRM_FACTS) and data["memories"]


def test_no_resolvable_user_is_200_empty(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    expected = fixture("tool_memory_query_response_empty.json")
    for body in (
        {"query": "anything"},
        {"query": "anything", "user_id": "usr_doesnotexist"},
        {"query": "anything", "caller_id": "+15559999999"},
        {"query": "anything", "conversation_id": "conv_unknown"},
    ):
        data = query(client, deployment, **body)
        assert data["memories"] == []
        assert data["summary"] == expected["summary"]


def test_other_tenant_user_is_invisible(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    acme = token(deployment.db, "acme", "tool")
    resp = client.post(
        "/t/acme" + URL,
        json={
            "query": "CRM",
            "user_id": seeded["john"],
            "caller_id": "+15551234567",
            "conversation_id": "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p",
        },
        headers={"Authorization": f"Bearer {acme}"},
    )
    assert resp.status_code == 200
    assert resp.json()["memories"] == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "   "},
        {"query": "x", "limit": 0},
        {"query": "x", "limit": 21},
        {"query": "x", "limit": "many"},
        {"query": "x", "sectors": ["gossip"]},
        {"query": "x", "sectors": "semantic"},
        {"query": "x", "include_sources": "perhaps"},
        {"query": 5},
        ["query"],
    ],
)
def test_malformed_body_is_422(client: TestClient, deployment: Deployment, body: object) -> None:
    resp = client.post(URL, json=body, headers=deployment.auth("tool"))
    assert resp.status_code == 422


def test_non_json_body_is_422(client: TestClient, deployment: Deployment) -> None:
    resp = client.post(
        URL,
        content=b"query=x",
        headers={**deployment.auth("tool"), "Content-Type": "application/json"},
    )
    assert resp.status_code == 422


def test_sectors_limit_and_sources(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    add_memories(
        deployment.db,
        deployment.settings,
        seeded["john"],
        ["John always wants the invoice emailed as PDF."],
        sector="procedural",
        sources=[{"conversation_id": "conv_a", "turns": [2, 5]}],
    )
    data = query(
        client,
        deployment,
        query="invoice",
        user_id=seeded["john"],
        sectors=["procedural"],
        include_sources=True,
        limit=1,
    )
    assert len(data["memories"]) == 1
    memory = data["memories"][0]
    assert memory["sector"] == "procedural"
    assert memory["sources"] == [{"conversation_id": "conv_a", "turns": [2, 5]}]


def test_paused_memories_are_not_returned(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    add_memories(
        deployment.db,
        deployment.settings,
        seeded["john"],
        ["John's secret project is codenamed Bluebird."],
        state="paused",
    )
    data = query(
        client, deployment, query="secret project Bluebird", user_id=seeded["john"], limit=20
    )
    assert "John's secret project is codenamed Bluebird." not in contents(data)


def test_response_stays_small(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    long_facts = [
        f"Fact {i}: " + "John talked about the Salesforce rollout. " * 12 for i in range(20)
    ]
    add_memories(deployment.db, deployment.settings, seeded["john"], long_facts)
    resp = client.post(
        URL,
        json={
            "query": "Salesforce rollout",
            "user_id": seeded["john"],
            "limit": 20,
            "include_sources": True,
        },
        headers=deployment.auth("tool"),
    )
    assert resp.status_code == 200
    # 2 KB per five requested memories: limit 20 may use 8 KB, and 20 long facts still overflow.
    assert len(resp.content) <= 2048 * 4
    assert 1 <= len(resp.json()["memories"]) < 20
    default = client.post(
        URL,
        json={"query": "Salesforce rollout", "user_id": seeded["john"], "include_sources": True},
        headers=deployment.auth("tool"),
    )
    assert len(default.content) <= 2048
    assert 1 <= len(default.json()["memories"]) <= 5


def test_invocation_logged_off_the_hot_path(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    query(client, deployment, query="CRM", conversation_id="conv_6801kb3m9q2rv4tx8e0d7c5j1n3p")
    query(client, deployment, query="nobody", user_id="usr_nobody")
    writer = client.app.state.voxmem.extras["background_writer"]  # type: ignore[attr-defined]
    assert writer.flush()
    with deployment.db.read() as session:
        rows = session.scalars(select(ToolInvocation).order_by(ToolInvocation.id)).all()
        assert [r.user_id for r in rows] == [seeded["john"], None]
        first = rows[0]
        assert first.tool_name == "memory_query" and first.origin == "live" and first.success
        assert first.conversation_id == "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
        assert json.loads(first.request_params)["query"] == "CRM"
        assert json.loads(first.response_data or "{}")["memories"]
    # Encrypted at rest.
    with deployment.db.read_engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT request_params FROM tool_invocations").scalars().all()
    # Fernet tokens (base64url, so "CRM" could occur in one by chance; a quote cannot).
    assert raw and all(r.startswith("gAAAAA") and '"' not in r for r in raw)


def test_engine_unavailable_answers_200(
    client: TestClient, deployment: Deployment, seeded: dict[str, str]
) -> None:
    state = client.app.state.voxmem  # type: ignore[attr-defined]
    state.extras[EXTRA_KEY] = UnavailableSearch("model file missing")
    data = query(client, deployment, query="CRM", user_id=seeded["john"])
    assert data["memories"] == []
    assert "unavailable" in data["summary"]


@pytest.fixture
def limited_client(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    from api.app import create_app

    settings = make_settings(tmp_path / "data", tool_rate_limit="3/minute")
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    with db.write() as session:
        first = create_token(session, DEFAULT_TENANT, "tool").token
        second = create_token(session, DEFAULT_TENANT, "tool").token
    db.dispose()
    with TestClient(create_app(settings)) as client:
        yield client, first, second


def test_rate_limit_per_token(limited_client: tuple[TestClient, str, str]) -> None:
    client, first, second = limited_client
    h1 = {"Authorization": f"Bearer {first}"}
    codes = [client.post(URL, json={"query": "x"}, headers=h1).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    limited = client.post(URL, json={"query": "x"}, headers=h1)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Another token has its own budget.
    h2 = {"Authorization": f"Bearer {second}"}
    assert client.post(URL, json={"query": "x"}, headers=h2).status_code == 200
