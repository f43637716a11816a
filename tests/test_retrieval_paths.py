"""Retrieval's two candidate paths and its entity hop, on SQLite and on the embedded PostgreSQL.

- PostgreSQL, user's index cold in this process (or larger than the threshold): candidates come
  from pgvector and only they are loaded; warm: the in-process index, as on SQLite (which never
  calls the database search). Both paths rank a small set identically.
- Entity hop (issue 7 §5): a memory about the same company as the best hit is reached although
  it shares no word and little meaning with the query; filters, users and failures respected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from db.metrics import metrics
from db.models import Entity, EntityMention, Memory, User
from db.settings import Settings
from db.tenancy import require_tenant
from db.vectors import VectorHit, search_pg
from memory import retrieval
from memory.embedders import LocalEmbedder
from memory.engine import weights_from
from memory.entities import link_mentions, upsert_entity
from memory.identity import create_guest
from memory.lexical import tokenize
from memory.loader import is_cached
from memory.retrieval import MemoryRetriever, RetrievedMemory
from memory.store import MemoryWriter
from memory.types import CandidateMemory, ExtractionResult
from tests.conftest import Deployment

T0 = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=20)
EMB = LocalEmbedder()

FIXTURE_SET = (
    ("The caller's company moved its CRM from Salesforce to HubSpot.", "semantic"),
    ("Dana prefers text messages over phone calls.", "procedural"),
    ("The office router drops the connection every evening.", "episodic"),
    ("Dana was frustrated about the repeated outages.", "emotional"),
    ("Caroline adopted a dog named Rex last spring.", "semantic"),
    ("Invoices are exported to Excel at the end of each month.", "procedural"),
    ("The team is based in Denver and works Mountain time.", "semantic"),
    ("Dana usually calls on Friday afternoons.", "reflective"),
    # Linked to each other by the writer (cosine above the link threshold, different sectors).
    ("Melanie paints landscapes every weekend.", "reflective"),
    ("Melanie paints landscapes on weekends.", "semantic"),
)
QUERIES = (
    "Which CRM does the company use?",
    "how should we contact Dana",
    "internet problems at night",
    "does Caroline have a pet",
    "what time zone are they in",
    "what is Melanie's hobby",
)

# Entity-hop story: the query finds the payroll memory; the warehouse memory names the same
# company and nothing of the query. The others outrank it on their own.
PAYROLL = "Dana runs payroll at Northwind Traders."
WAREHOUSE = "Northwind Traders opened a second warehouse in March."
ENTITY_QUERY = "who handles payroll for the company?"
OTHERS = (
    "Salary slips are emailed as PDF files.",
    "Invoices are exported to Excel monthly.",
    "Paychecks were late twice this year.",
    "The office router drops the connection every evening.",
)


@pytest.fixture
def settings(any_settings: Settings) -> Settings:
    return any_settings


def _user(dep: Deployment) -> str:
    with dep.db.write() as s:
        return create_guest(s, require_tenant(s, "default").id).user_id


def _write(dep: Deployment, user_id: str, items: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Memories by content -> id (each written as its own call, like separate extractions)."""
    ids: dict[str, int] = {}
    for i, (content, sector) in enumerate(items):
        candidate = CandidateMemory(content, sector, 0.6, (0,), valid_from=T0)
        with dep.db.write() as s:
            report = MemoryWriter(EMB).write_call(
                s,
                user_id=user_id,
                conversation_id=f"conv_{user_id}_{i}",
                extraction=ExtractionResult(memories=[candidate], extractor="local"),
                now=T0 + timedelta(hours=i),
            )
        assert len(report.inserted) == 1, f"{content!r} was consolidated: {report}"
        ids[content] = report.inserted[0]
    return ids


def _mention(dep: Deployment, user_id: str, name: str, memory_ids: Sequence[int]) -> int:
    with dep.db.write() as s:
        entity = upsert_entity(s, user_id, "company", name, T0)
        link_mentions(s, user_id, [entity], memory_ids)
        return entity.id


def _retriever(dep: Deployment, **kw: Any) -> MemoryRetriever:
    """The retriever as deployed: the settings' tuned weights (vector + BM25)."""
    return MemoryRetriever(EMB, weights=weights_from(dep.settings), **kw)


def _search(
    dep: Deployment, retriever: MemoryRetriever, user_id: str, query: str, **kw: Any
) -> list[RetrievedMemory]:
    with dep.db.read() as s:
        return retriever.search(s, user_id, query, now=NOW, **kw)


def _edit(dep: Deployment, user_id: str, memory_id: int, **values: Any) -> None:
    """Change a memory as the engine does: with a users.memory_version bump (the index cache
    is validated by it)."""
    with dep.db.write() as s:
        row = s.get(Memory, memory_id)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        user = s.get(User, user_id)
        assert user is not None
        user.memory_version = (user.memory_version or 0) + 1


def _cached(dep: Deployment, user_id: str) -> bool:
    with dep.db.read() as s:
        return is_cached(s, user_id, EMB.name)


def _warm(dep: Deployment, retriever: MemoryRetriever, user_id: str) -> None:
    with dep.db.read() as s:
        retriever.index(s, user_id)


@pytest.fixture
def pg_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts database-side searches (the k asked for, per call)."""
    calls: list[int] = []
    real: Callable[..., list[VectorHit]] = search_pg

    def spy(session: Any, user_id: str, vec: Any, k: int, **kw: Any) -> list[VectorHit]:
        calls.append(k)
        return real(session, user_id, vec, k, **kw)

    monkeypatch.setattr(retrieval, "search_pg", spy)
    return calls


def test_cold_uses_database_warm_uses_index_same_ranking(
    deployment: Deployment, pg_calls: list[int]
) -> None:
    postgres = not deployment.settings.is_sqlite
    uid = _user(deployment)
    ids = _write(deployment, uid, FIXTURE_SET)
    retriever = _retriever(deployment)
    assert not _cached(deployment, uid)  # the writer's index is at the pre-write version

    cold = {q: _search(deployment, retriever, uid, q, limit=3) for q in QUERIES}
    hubspot = ids[FIXTURE_SET[0][0]]
    assert cold[QUERIES[0]][0].id == hubspot
    assert cold[QUERIES[3]][0].content.startswith("Caroline adopted")
    if postgres:
        # One pgvector search per query, k = max(limit*8, 50); nothing loaded whole.
        assert pg_calls == [50] * len(QUERIES)
        assert not _cached(deployment, uid)
    else:
        assert pg_calls == []  # SQLite never asks the database to search
        assert _cached(deployment, uid)

    _warm(deployment, retriever, uid)
    assert _cached(deployment, uid)
    before = len(pg_calls)
    warm = {q: _search(deployment, retriever, uid, q, limit=3) for q in QUERIES}
    assert len(pg_calls) == before  # warm: in process, whatever the dialect
    melanie = warm[QUERIES[-1]]
    assert melanie[0].content.startswith("Melanie") and melanie[0].components["link"] > 0.8
    for q in QUERIES:
        # Every memory is a candidate here, so both paths score the same set: same ranking,
        # same composite (pgvector's cosine vs numpy's dot differ only in float rounding).
        assert [m.id for m in warm[q]] == [m.id for m in cold[q]], q
        for w, c in zip(warm[q], cold[q], strict=True):
            assert w.score == pytest.approx(c.score, abs=1e-4)
            assert w.components["lexical"] == pytest.approx(c.components["lexical"], abs=1e-6)

    # A warm index larger than the threshold goes back to the database on PostgreSQL.
    small = _retriever(deployment, db_search_threshold=len(FIXTURE_SET) - 1)
    top = _search(deployment, small, uid, QUERIES[0], limit=1)
    assert [m.id for m in top] == [hubspot]
    assert len(pg_calls) == before + (1 if postgres else 0)


def test_database_path_filters_and_isolation(deployment: Deployment, pg_calls: list[int]) -> None:
    uid = _user(deployment)
    ids = _write(deployment, uid, FIXTURE_SET)
    other = _user(deployment)
    _write(deployment, other, [("The caller's company moved its CRM to HubSpot.", "semantic")])
    retriever = _retriever(deployment)
    hits = _search(deployment, retriever, uid, "router outages", sectors=["emotional"])
    assert [h.sector for h in hits] == ["emotional"]
    # Superseded memories are not returned by default, but are on request.
    hubspot = ids[FIXTURE_SET[0][0]]
    _edit(deployment, uid, hubspot, state="superseded", valid_to=T0 + timedelta(days=1))
    crm = _search(deployment, retriever, uid, "Which CRM does the company use?", limit=8)
    assert hubspot not in {h.id for h in crm}
    assert {h.id for h in crm} <= set(ids.values())  # never the other user's HubSpot memory
    history = _search(deployment, retriever, uid, "Which CRM?", states=["superseded"], limit=8)
    assert [h.id for h in history] == [hubspot]
    assert bool(pg_calls) == (not deployment.settings.is_sqlite)


def _entity_story(dep: Deployment) -> tuple[str, dict[str, int]]:
    uid = _user(dep)
    ids = _write(
        dep,
        uid,
        [(PAYROLL, "semantic"), (WAREHOUSE, "semantic")] + [(t, "semantic") for t in OTHERS],
    )
    _mention(dep, uid, "Northwind Traders", list(ids.values()))
    return uid, ids


def test_entity_hop_reaches_memory_about_same_company(
    deployment: Deployment, pg_calls: list[int]
) -> None:
    # The premise: nothing of the query is in the warehouse memory.
    assert not set(tokenize(ENTITY_QUERY)) & set(tokenize(WAREHOUSE))
    uid, ids = _entity_story(deployment)
    payroll, warehouse = ids[PAYROLL], ids[WAREHOUSE]

    without = _search(
        deployment, _retriever(deployment, entity_expand=False), uid, ENTITY_QUERY, limit=4
    )
    assert without[0].id == payroll
    assert len(without) == 4  # a real ranking the hop has to break into (6 memories, limit 4)
    assert warehouse not in {m.id for m in without}

    hits = _search(deployment, _retriever(deployment), uid, ENTITY_QUERY, limit=4)
    by_id = {m.id: m for m in hits}
    assert hits[0].id == payroll
    assert warehouse in by_id
    reached = by_id[warehouse]
    assert reached.via == payroll
    # Scored like a link neighbour: hit score x mention weight (0.6) x expansion factor.
    factor = deployment.settings.memory_expansion_factor
    assert reached.score == pytest.approx(hits[0].score * 0.6 * factor, abs=1e-5)
    assert reached.score > reached.components["similarity"] * 0.5 + 1e-3
    assert bool(pg_calls) == (not deployment.settings.is_sqlite)


def test_entity_hop_outside_database_candidates(
    deployment: Deployment, pg_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the reached memory need not be a pgvector candidate: it is loaded (and
    only it) and scored with the candidates."""
    uid, ids = _entity_story(deployment)
    monkeypatch.setattr(retrieval, "DB_CANDIDATES_MIN", 1)
    monkeypatch.setattr(retrieval, "DB_CANDIDATES_PER_RESULT", 1)
    hits = _search(deployment, _retriever(deployment), uid, ENTITY_QUERY, limit=2)
    assert [m.id for m in hits] == [ids[PAYROLL], ids[WAREHOUSE]]
    assert hits[1].via == ids[PAYROLL]
    if not deployment.settings.is_sqlite:
        assert pg_calls == [2]
        with deployment.db.read() as s:
            nearest = search_pg(s, uid, EMB.embed([ENTITY_QUERY])[0], 2, model=EMB.name)
        assert ids[WAREHOUSE] not in {h.memory_id for h in nearest}


def test_entity_hop_respects_filters_and_users(deployment: Deployment) -> None:
    uid, ids = _entity_story(deployment)
    warehouse = ids[WAREHOUSE]
    retriever = _retriever(deployment)
    # Another user's memory tied to this user's entity (a corrupt mention row): never returned.
    other = _user(deployment)
    (stranger,) = _write(
        deployment, other, [("Northwind Traders is moving offices.", "semantic")]
    ).values()
    with deployment.db.write() as s:
        entity_id = s.scalar(select(Entity.id).where(Entity.user_id == uid))
        s.add(EntityMention(entity_id=entity_id, memory_id=stranger))
    hits = _search(deployment, retriever, uid, ENTITY_QUERY, limit=10)
    assert warehouse in {m.id for m in hits}
    assert stranger not in {m.id for m in hits}
    # Sector filter applies to reached memories too.
    _edit(deployment, uid, warehouse, sector_type="episodic")
    hits = _search(deployment, retriever, uid, ENTITY_QUERY, sectors=["semantic"])
    assert warehouse not in {m.id for m in hits}
    # Archived memories are not reached (default states: active and current).
    _edit(deployment, uid, warehouse, sector_type="semantic", state="archived", valid_to=T0)
    hits = _search(deployment, retriever, uid, ENTITY_QUERY, limit=10)
    assert warehouse not in {m.id for m in hits}


def test_entity_lookup_failure_never_fails_the_query(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid, ids = _entity_story(deployment)
    baseline = _search(deployment, _retriever(deployment, entity_expand=False), uid, ENTITY_QUERY)

    def broken(session: Any, *_a: Any, **_kw: Any) -> list[tuple[int, float]]:
        # A failing statement: on PostgreSQL it aborts the transaction unless contained.
        session.execute(select(Memory.id).where(Memory.id == "not a number"))
        raise AssertionError("unreachable on PostgreSQL")

    monkeypatch.setattr(retrieval, "related_memories", broken)
    failures = metrics().memory_query_stage.labels(stage="entity_hop_failed")
    before = failures._sum.get()  # prometheus-client has no public reader
    with deployment.db.read() as s:
        hits = _retriever(deployment).search(s, uid, ENTITY_QUERY, now=NOW)
        # The request's session is still usable after the failed lookup.
        assert s.scalar(select(Memory.id).where(Memory.id == ids[PAYROLL])) == ids[PAYROLL]
    assert [(m.id, m.score) for m in hits] == [(m.id, m.score) for m in baseline]
    assert failures._sum.get() > before
