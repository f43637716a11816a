"""A call becomes memories: signed webhook → queue → worker pipeline → memories with provenance
→ the memory_query tool finds them, each traceable to the transcript turns it came from."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import ConversationMemory, Memory, MemoryEmbedding, User
from tests.conftest import Deployment
from tests.insight_helpers import drain, post_call, signed_post_call

NUMBER = "+14155550142"
TURNS = [
    ("agent", "Hi, thanks for calling Acme support. Who am I speaking with?"),
    ("user", "Hi, this is Maria Lopez. We use Salesforce as our CRM."),
    ("agent", "Thanks Maria. What can I help you with today?"),
    ("user", "I prefer email over phone calls for follow-ups, please."),
    ("agent", "Noted. I'll send the pricing PDF by Friday."),
    ("user", "Great, thank you. Bye."),
]


def _query(client: TestClient, deployment: Deployment, query: str) -> dict[str, object]:
    r = client.post(
        "/tools/memory-query",
        json={"query": query, "caller_id": NUMBER, "limit": 5, "include_sources": True},
        headers=deployment.auth("tool"),
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_a_processed_call_is_queryable_with_sources(
    client: TestClient, deployment: Deployment
) -> None:
    post_call(client, deployment, "conv_e2e_1", NUMBER, TURNS)
    drain(deployment)
    with deployment.db.read() as session:
        memories = list(session.scalars(select(Memory)))
        assert memories, "no memory extracted"
        n_embeddings = session.scalar(select(func.count()).select_from(MemoryEmbedding))
        assert n_embeddings == len(memories)
        assert session.scalar(select(func.count()).select_from(ConversationMemory)) == len(memories)
        user = session.scalar(select(User))
        assert user is not None
        assert user.summary  # regenerated after the call
        assert user.name == "Maria Lopez"  # learned from "this is Maria Lopez"
        for memory in memories:
            assert memory.sources
            for source in memory.sources:
                assert source["conversation_id"] == "conv_e2e_1"
                assert all(0 <= t < len(TURNS) for t in source["turns"])

    body = _query(client, deployment, "Which CRM does the customer use?")
    memories_out = body["memories"]
    assert isinstance(memories_out, list) and memories_out
    top = memories_out[0]
    assert "Salesforce" in top["content"]
    assert top["sources"] == [{"conversation_id": "conv_e2e_1", "turns": [1]}]

    commitments = _query(client, deployment, "What did the agent promise to send?")
    contents = " ".join(m["content"] for m in commitments["memories"])  # type: ignore[union-attr]
    assert "pricing PDF" in contents


def test_redelivered_call_does_not_duplicate_memories(
    client: TestClient, deployment: Deployment
) -> None:
    post_call(client, deployment, "conv_e2e_2", NUMBER, TURNS)
    drain(deployment)
    with deployment.db.read() as session:
        before = session.scalar(select(func.count()).select_from(Memory))
    # Same conversation id again: the receiver answers duplicate and nothing is re-processed.
    body, headers = signed_post_call(deployment.webhook_secret, "conv_e2e_2", NUMBER, TURNS)
    r = client.post("/webhook/post-call", content=body, headers=headers)
    assert r.json() == {"status": "duplicate"}
    drain(deployment)
    with deployment.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Memory)) == before


def test_a_second_call_reinforces_instead_of_duplicating(
    client: TestClient, deployment: Deployment
) -> None:
    post_call(client, deployment, "conv_e2e_3", NUMBER, TURNS)
    drain(deployment)
    with deployment.db.read() as session:
        before = session.scalar(select(func.count()).select_from(Memory))
    post_call(client, deployment, "conv_e2e_4", NUMBER, TURNS)
    drain(deployment)
    with deployment.db.read() as session:
        after = session.scalar(select(func.count()).select_from(Memory))
        reinforced = session.scalar(select(func.max(Memory.reinforcement_count)))
    assert after == before
    assert reinforced is not None and reinforced >= 1
