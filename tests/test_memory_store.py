"""Persistence + retrieval on a real SQLite database: consolidation, supersession, links,
provenance, version-invalidated index, user isolation, summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db.models import Conversation, ConversationMemory, Memory, MemoryEmbedding, MemoryLink, User
from db.tenancy import require_tenant
from memory.call_input import call_from_elevenlabs
from memory.embedders import LocalEmbedder
from memory.embedders.local import MODEL_NAME
from memory.extractors.local import LocalExtractor
from memory.identity import create_guest
from memory.retrieval import MemoryRetriever
from memory.store import MemoryWriter, reembed_user, reinforce_co_retrieved
from memory.summary import regenerate_summary
from memory.types import CallForExtraction, CandidateMemory, ExtractionResult, Turn
from tests.conftest import FIXTURES, Deployment

T0 = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
EMB = LocalEmbedder()


def _search_with_db(self: MemoryRetriever, dep: Deployment, uid: str, q: str, **kw: object):  # type: ignore[no-untyped-def]
    with dep.db.read() as s:
        return self.search(s, uid, q, now=T0 + timedelta(days=30), **kw)  # type: ignore[arg-type]


MemoryRetriever.search_with_db = _search_with_db  # type: ignore[attr-defined]


def new_user(dep: Deployment) -> str:
    with dep.db.write() as s:
        return create_guest(s, require_tenant(s, "default").id).user_id


def new_conversation(dep: Deployment, user_id: str, conversation_id: str) -> int:
    with dep.db.write() as s:
        conv = Conversation(
            tenant_id=require_tenant(s, "default").id,
            conversation_id=conversation_id,
            user_id=user_id,
            start_time=T0,
            status="done",
        )
        s.add(conv)
        s.flush()
        return conv.id


def extraction(*mems: CandidateMemory) -> ExtractionResult:
    return ExtractionResult(memories=list(mems), extractor="local")


def c(
    content: str, sector: str = "semantic", sources: tuple[int, ...] = (0,), **kw: object
) -> CandidateMemory:
    kw.setdefault("valid_from", T0)
    return CandidateMemory(content, sector, 0.6, sources, **kw)  # type: ignore[arg-type]


def write(
    dep: Deployment,
    user_id: str,
    conv: str,
    *mems: CandidateMemory,
    when: datetime = T0,
    **kw: object,
):  # type: ignore[no-untyped-def]
    with dep.db.write() as s:
        return MemoryWriter(EMB).write_call(
            s,
            user_id=user_id,
            conversation_id=conv,
            extraction=extraction(*mems),
            now=when,
            **kw,  # type: ignore[arg-type]
        )


def test_insert_then_duplicate_reinforces(deployment: Deployment) -> None:
    uid = new_user(deployment)
    fk = new_conversation(deployment, uid, "conv1")
    r1 = write(
        deployment, uid, "conv1", c("Melanie likes pottery.", sources=(2,)), conversation_fk=fk
    )
    assert len(r1.inserted) == 1
    assert r1.version == 1
    r2 = write(
        deployment,
        uid,
        "conv2",
        c("Melanie likes pottery a lot.", sources=(5,)),
        when=T0 + timedelta(days=3),
    )
    assert r2.inserted == []
    assert r2.reinforced == r1.inserted
    with deployment.db.read() as s:
        m = s.get(Memory, r1.inserted[0])
        assert m is not None
        assert m.reinforcement_count == 1
        # 0.6 -> 0.6 + 0.15·0.4
        assert m.salience == pytest.approx(0.66)
        assert m.recency == T0 + timedelta(days=3)
        assert m.sources == [
            {"conversation_id": "conv1", "turns": [2]},
            {"conversation_id": "conv2", "turns": [5]},
        ]
        emb = s.execute(select(MemoryEmbedding)).scalar_one()
        assert (emb.embedding_model, emb.dimension, len(emb.embedding)) == (
            MODEL_NAME,
            384,
            1536,
        )
        cm = s.execute(select(ConversationMemory)).scalar_one()
        assert (cm.conversation_fk, cm.memory_id, cm.turns, cm.extraction_type) == (
            fk,
            m.id,
            [2],
            "auto",
        )
        assert s.get(User, uid).memory_version == 2  # type: ignore[union-attr]


def test_contradiction_supersedes_with_validity_end(deployment: Deployment) -> None:
    uid = new_user(deployment)
    r1 = write(deployment, uid, "conv1", c("The caller's company uses Salesforce CRM."))
    later = T0 + timedelta(days=10)
    r2 = write(
        deployment,
        uid,
        "conv2",
        c(
            "Update CRM on file from Salesforce to HubSpot next quarter.",
            valid_from=later,
            is_update=True,
        ),
        when=later,
    )
    assert r2.superseded == r1.inserted
    with deployment.db.read() as s:
        old = s.get(Memory, r1.inserted[0])
        assert old is not None
        assert (old.state, old.valid_to, old.superseded_by) == ("superseded", later, r2.inserted[0])
    hits = MemoryRetriever(EMB).search_with_db(deployment, uid, "Which CRM does the caller use?")
    assert [h.content for h in hits] == [
        "Update CRM on file from Salesforce to HubSpot next quarter."
    ]


def test_links_both_directions_and_expansion(deployment: Deployment) -> None:
    uid = new_user(deployment)
    write(deployment, uid, "c1", c("Melanie paints landscapes every weekend.", "reflective"))
    r = write(deployment, uid, "c2", c("Melanie paints landscapes on weekends.", "semantic"))
    with deployment.db.read() as s:
        links = s.execute(select(MemoryLink).order_by(MemoryLink.id)).scalars().all()
        pairs = {(link.source_memory_id, link.target_memory_id) for link in links}
        assert len(links) == 2
        a, b = sorted(pairs)[0]
        assert (b, a) in pairs
        assert links[0].link_weight == pytest.approx(links[1].link_weight)
        assert links[0].link_weight >= 0.8
    with deployment.db.write() as s:
        assert reinforce_co_retrieved(s, uid, [a, b]) == 2
    with deployment.db.read() as s:
        w = [link.link_weight for link in s.execute(select(MemoryLink)).scalars()]
        assert w[0] == pytest.approx(links[0].link_weight + 0.05 * (1 - links[0].link_weight))
    assert r.links_written == 2


def test_echo_of_recalled_memory_not_stored(deployment: Deployment) -> None:
    uid = new_user(deployment)
    r = write(
        deployment,
        uid,
        "c1",
        c("The caller's company uses Salesforce CRM.", role="agent"),
        recalled=["Caller's company uses Salesforce CRM."],
    )
    assert r.inserted == []
    assert r.skipped_echoes == 1
    assert r.version == 0


def test_fixture_call_end_to_end_queryable_with_sources(deployment: Deployment) -> None:
    uid = new_user(deployment)
    data = json.loads((FIXTURES / "post_call_transcription.json").read_text())["data"]
    call = call_from_elevenlabs(data)
    result = LocalExtractor().extract(call)
    with deployment.db.write() as s:
        report = MemoryWriter(EMB).write_call(
            s,
            user_id=uid,
            conversation_id=call.conversation_id,
            extraction=result,
            recalled=call.recalled,
        )
    # The caller's "moving to HubSpot" and the agent's "Noted: you're moving..." are one memory.
    assert report.merged_in_call >= 1
    hits = MemoryRetriever(EMB).search_with_db(
        deployment, uid, "what CRM are they switching to", limit=3
    )
    top = hits[0]
    assert "HubSpot" in top.content
    assert top.sources[0]["conversation_id"] == call.conversation_id
    assert set(top.sources[0]["turns"]) >= {5}
    # Another user sees nothing of it.
    other = new_user(deployment)
    assert MemoryRetriever(EMB).search_with_db(deployment, other, "HubSpot") == []


def test_index_invalidated_by_version(deployment: Deployment) -> None:
    uid = new_user(deployment)
    retriever = MemoryRetriever(EMB)
    write(deployment, uid, "c1", c("Caroline adopted a dog named Rex."))
    assert len(retriever.search_with_db(deployment, uid, "pet")) == 1
    write(deployment, uid, "c2", c("Caroline works as a counselor.", sources=(1,)))
    hits = retriever.search_with_db(deployment, uid, "What is Caroline's job?")
    assert hits[0].content == "Caroline works as a counselor."
    assert len(hits) == 2


def test_sector_filter_and_summary(deployment: Deployment) -> None:
    uid = new_user(deployment)
    write(
        deployment,
        uid,
        "c1",
        c("Dana prefers text messages over calls.", "procedural"),
        c("Dana's router drops the connection every evening.", "reflective"),
        c("Dana was frustrated about the outages.", "emotional"),
    )
    hits = MemoryRetriever(EMB).search_with_db(deployment, uid, "router", sectors=["procedural"])
    assert [h.sector for h in hits] == ["procedural"]
    with deployment.db.write() as s:
        summary = regenerate_summary(s, uid, now=T0)
    assert summary == (
        "Dana prefers text messages over calls. Dana's router drops the connection every "
        "evening. Dana was frustrated about the outages."
    )


def test_reembed_is_idempotent(deployment: Deployment) -> None:
    uid = new_user(deployment)
    write(deployment, uid, "c1", c("Caroline adopted a dog named Rex."))
    with deployment.db.write() as s:
        assert reembed_user(s, uid, EMB) == 1
    with deployment.db.read() as s:
        assert len(s.execute(select(MemoryEmbedding)).scalars().all()) == 1


def test_call_turn_indices_survive_tool_turns() -> None:
    call = CallForExtraction(
        "c",
        T0,
        (
            Turn(0, "user", "My dog is called Rex."),
            Turn(1, "agent", ""),
            Turn(2, "user", "I live in Denver."),
        ),
    )
    mems = LocalExtractor().extract(call).memories
    assert [m.sources for m in mems] == [(0,), (2,)]
