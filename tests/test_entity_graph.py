"""Entity graph (issue 7 §5): people, companies, products and places from the caller's words,
relations with strength and confidence, GET /v1/users/{id}/graph, entity hops for retrieval."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import Memory
from db.settings import Settings
from memory import entities
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, now, post_call, user_of

CALL = (
    ("agent", "Hello, how can I help?"),
    ("user", "My name is Dana Reyes and I work at Northwind Traders."),
    ("user", "We use QuickBooks for invoicing and our office is in Denver."),
    ("user", "My colleague Maria handles payroll."),
    ("agent", "Thanks Dana, noted."),
)
FOLLOW_UP = (
    ("agent", "Hello again."),
    ("user", "We use QuickBooks still, and the export to Excel fails."),
)


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(tmp_path / "data", reflection_interval_secs=1.0)


def test_extraction_is_deterministic() -> None:
    found = entities.extract([line for role, line in CALL if role == "user"])
    kinds = {(m.kind, m.name) for m in found.mentions}
    assert {
        ("company", "Northwind Traders"),
        ("product", "QuickBooks"),
        ("place", "Denver"),
        ("person", "Maria"),
    } <= kinds
    assert found.caller_name == "Dana Reyes"
    assert {(e.relation, e.target.name) for e in found.edges if e.source is None} >= {
        ("works_at", "Northwind Traders"),
        ("uses", "QuickBooks"),
        ("located_in", "Denver"),
        ("knows", "Maria"),
    }
    assert entities.extract(["I can't log in."]).mentions == []


def test_graph_endpoint_strength_and_entity_hop(client: TestClient, deployment: Deployment) -> None:
    number = "+15554440001"
    admin = deployment.auth("admin")
    post_call(client, deployment, "conv_e1", number, CALL, start=now() - timedelta(days=1))
    drain(deployment)
    user_id = user_of(client, deployment, number)
    graph = client.get(f"/v1/users/{user_id}/graph", headers=admin).json()
    names = {e["name"]: e for e in graph["entities"]}
    assert {"Dana Reyes", "Northwind Traders", "QuickBooks", "Denver", "Maria"} <= set(names)
    uses = next(r for r in graph["relations"] if r["relation"] == "uses")
    assert uses["source_name"] == "Dana Reyes" and uses["target_name"] == "QuickBooks"
    assert 0 < uses["strength"] < 1 and uses["confidence"] == 0.75
    first_strength = uses["strength"]

    post_call(client, deployment, "conv_e2", number, FOLLOW_UP)
    # A memory about the product, added by an operator: linked by the reflection job.
    r = client.post(
        f"/v1/users/{user_id}/memories",
        json={"content": "QuickBooks exports fail on large invoices."},
        headers=admin,
    )
    memory_id = r.json()["id"]
    drain(deployment, reflections=True)
    graph = client.get(f"/v1/users/{user_id}/graph", headers=admin).json()
    names = {e["name"]: e for e in graph["entities"]}
    assert names["QuickBooks"]["mention_count"] == 2
    assert memory_id in names["QuickBooks"]["memory_ids"]
    uses = next(r for r in graph["relations"] if r["relation"] == "uses")
    assert uses["strength"] > first_strength
    # Retrieval's entity hop: a query naming the product reaches the memory about it, and so
    # does a hit on another memory that mentions the same entity.
    with deployment.db.read() as session:
        hops = entities.related_memories(session, user_id, query="what about quickbooks?", limit=10)
        assert (memory_id, 1.0) in hops
        texts = session.execute(select(Memory.id, Memory.content)).all()
        by_id = dict(texts)
        # Memories naming the entity come at full weight; one relation hop (the caller, their
        # company) only at relation strength x 0.8.
        for mid, weight in hops:
            assert ("quickbooks" in by_id[mid].lower()) == (weight == 1.0)
        # From a hit on the operator's memory, the graph reaches the other ones, not itself.
        others = entities.related_memories(session, user_id, query="x", memory_ids=[memory_id])
        assert memory_id not in {mid for mid, _ in others}
        assert entities.related_memories(session, user_id, query="unrelated words") == []
    # Forget removes the graph.
    client.delete(f"/v1/users/{user_id}", headers=admin)
    with deployment.db.read() as session:
        assert entities.graph(session, user_id) == {"entities": [], "relations": []}
