"""Query a user's memories: embed once, score candidates with the composite, expand one hop
(memory links, then shared entities), return ranked memories with their provenance. No LLM and
no writes on this path.

Two ways to get candidates, one scoring:

- in process (SQLite always; PostgreSQL when this process already holds the user's index):
  every memory of the user is scored exactly (:class:`memory.index.UserIndex`);
- in the database (PostgreSQL, index cold here or the user too large): pgvector's HNSW search
  returns the nearest ``max(limit*8, 50)`` memories, only those (and their link neighbours) are
  loaded and decrypted into a partial index, which scores them with the same code. Lexical
  BM25 is then computed over that candidate set, so a memory that matches the query's words but
  is far from it in vector space is only reachable on the in-process path: the text is
  encrypted at rest and the database cannot search it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import tracing
from db.metrics import metrics, time_query_stage
from db.models import EntityMention
from db.vectors import is_postgres, search_pg
from memory.embedders import Embedder
from memory.entities import related_memories
from memory.index import Hit, RelatedLookup, UserIndex, build_index
from memory.loader import (
    cached_index,
    get_index,
    load_links_from,
    load_memories,
    user_version,
)
from memory.scoring import DEFAULT_WEIGHTS, Weights

log = structlog.get_logger("voxmem.retrieval")

# Database-side search: pgvector candidates per query (the composite re-ranks them, so fetch a
# generous multiple of what is returned; the floor keeps small limits from starving it).
DB_CANDIDATES_PER_RESULT = 8
DB_CANDIDATES_MIN = 50

Offers = Mapping[int, Sequence[tuple[int, float]]]


@dataclass(frozen=True, slots=True)
class RetrievedMemory:
    id: int
    content: str
    sector: str
    salience: float
    score: float
    created_at: datetime | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    # Score components (explainability) and the hit it was expanded from, if any.
    components: dict[str, float] = field(default_factory=dict)
    via: int | None = None


class MemoryRetriever:
    def __init__(
        self,
        embedder: Embedder,
        *,
        weights: Weights = DEFAULT_WEIGHTS,
        expand: bool = True,
        expand_per_hit: int = 2,
        entity_expand: bool = True,
        db_search_threshold: int = 50_000,
    ) -> None:
        self.embedder = embedder
        self.weights = weights
        self.expand = expand
        self.expand_per_hit = expand_per_hit
        self.entity_expand = entity_expand
        self.db_search_threshold = db_search_threshold

    def index(self, session: Session, user_id: str) -> UserIndex:
        # The query path asks for the ANN graph of a large user (built in the background).
        return get_index(session, user_id, self.embedder.name, ann=True)

    def search(
        self,
        session: Session,
        user_id: str,
        query: str,
        *,
        limit: int = 5,
        sectors: Sequence[str] | None = None,
        states: Sequence[str] | None = None,
        now: datetime | None = None,
    ) -> list[RetrievedMemory]:
        """Ranked memories of ``user_id`` only. ``states=None`` means active and currently
        valid (superseded facts are kept for history but not returned)."""
        if not query.strip() or limit <= 0:
            return []
        index: UserIndex | None
        if is_postgres(session):
            version = user_version(session, user_id)
            if version is None:
                return []  # no such user: do not pay for an embedding
            index = cached_index(session, user_id, self.embedder.name, version)
            if index is not None and len(index) > self.db_search_threshold:
                index = None
        else:
            index = self.index(session, user_id)
        if index is not None and len(index) == 0:
            return []
        with time_query_stage("embed"), tracing.span("memory_query.embed"):
            vector = self.embedder.embed([query])[0]
        now = now or datetime.now(UTC)
        related = self._related_lookup(session, user_id, query, limit)
        if index is None:
            found = self._search_db(
                session, user_id, vector, query, now, limit, sectors, states, related
            )
            if found is None:
                return []
            index, hits = found
        else:
            with time_query_stage("search"), tracing.span("memory_query.search"):
                hits = self._search_index(
                    index, vector, query, now, limit, sectors, states, related
                )
        return [_retrieved(index, h) for h in hits]

    def _search_index(
        self,
        index: UserIndex,
        vector: npt.NDArray[np.float32],
        query: str,
        now: datetime,
        limit: int,
        sectors: Sequence[str] | None,
        states: Sequence[str] | None,
        related: RelatedLookup | None,
        similarity: Mapping[int, float] | None = None,
    ) -> list[Hit]:
        return index.search(
            vector,
            query,
            now_epoch=now.timestamp(),
            limit=limit,
            weights=self.weights,
            sectors=sectors,
            states=states,
            expand=self.expand,
            expand_per_hit=self.expand_per_hit,
            similarity=similarity,
            related=related,
        )

    def _search_db(
        self,
        session: Session,
        user_id: str,
        vector: npt.NDArray[np.float32],
        query: str,
        now: datetime,
        limit: int,
        sectors: Sequence[str] | None,
        states: Sequence[str] | None,
        related: RelatedLookup | None,
    ) -> tuple[UserIndex, list[Hit]] | None:
        """pgvector candidates scored in a partial index of just them and their link
        neighbours (so one-hop expansion sees the same neighbours as the full index)."""
        model = self.embedder.name
        with time_query_stage("search"), tracing.span("memory_query.search_db"):
            candidates = search_pg(
                session,
                user_id,
                vector,
                max(limit * DB_CANDIDATES_PER_RESULT, DB_CANDIDATES_MIN),
                model=model,
                states=tuple(states) if states is not None else ("active",),
                sectors=sectors,
                # The index's default is stricter (any valid_to excludes); its mask applies
                # below, so this only has to avoid dropping what explicit states ask for.
                current_only=states is None,
            )
            if not candidates:
                return None
            similarity = {c.memory_id: c.similarity for c in candidates}
            links = load_links_from(session, user_id, model, similarity)
            wanted = set(similarity) | {link.target for link in links}
            # The neighbours' own outgoing links, for their link component.
            links += load_links_from(session, user_id, model, wanted - set(similarity))
            memories = load_memories(session, user_id, model, wanted)
            index = _partial_index(model, memories, links)
            # Offers the entity graph makes are kept, so a second pass (below) does not ask
            # the database again.
            offered: dict[int, list[tuple[int, float]]] = {}

            def remember(hit_ids: list[int]) -> Offers:
                got = related(hit_ids) if related is not None else {}
                for parent, items in got.items():
                    offered.setdefault(parent, []).extend(items)
                return got

            hits = self._search_index(
                index, vector, query, now, limit, sectors, states, remember, similarity
            )
            missing = {mid for items in offered.values() for mid, _ in items} - set(index.row_of)
            if missing:
                # Entity-reached memories outside the candidate set: load them (this user's
                # only) and score once more with them in, reusing the offers.
                extra = load_memories(session, user_id, model, missing)
                if extra:
                    extra_links = load_links_from(session, user_id, model, missing)
                    index = _partial_index(model, index.memories + extra, links + extra_links)
                    hits = self._search_index(
                        index,
                        vector,
                        query,
                        now,
                        limit,
                        sectors,
                        states,
                        lambda _ids: offered,
                        similarity,
                    )
        return index, hits

    def _related_lookup(
        self, session: Session, user_id: str, query: str, limit: int
    ) -> RelatedLookup | None:
        if not self.entity_expand:
            return None
        postgres = is_postgres(session)

        def lookup(hit_ids: list[int]) -> Offers:
            if not hit_ids:
                return {}
            started = time.perf_counter()
            try:
                # A savepoint on PostgreSQL: a failed statement aborts the whole transaction
                # there, and the query (and the request's later reads) must survive the
                # failure. SQLite keeps the transaction usable, and a savepoint costs ~0.2 ms.
                with (
                    time_query_stage("entity_hop"),
                    tracing.span("memory_query.entity_hop"),
                    session.begin_nested() if postgres else nullcontext(),
                ):
                    return entity_offers(session, user_id, query, hit_ids, limit)
            except Exception as exc:  # noqa: BLE001 - the entity hop is an enrichment
                log.warning(
                    "memory_query.entity_hop_failed",
                    user_id=user_id,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                # Counted as its own stage so failures show in /metrics without a new series
                # family: memory_query_stage_seconds_count{stage="entity_hop_failed"}.
                metrics().memory_query_stage.labels(stage="entity_hop_failed").observe(
                    time.perf_counter() - started
                )
                return {}

        return lookup


def entity_offers(
    session: Session, user_id: str, query: str, hit_ids: Sequence[int], limit: int
) -> dict[int, list[tuple[int, float]]]:
    """Memories sharing an entity with the query or the hits, grouped by the hit they hang
    from: ``{hit id: [(memory id, weight)]}``.

    A memory reached through an entity the query names (weight 1.0) hangs from the best hit:
    the query itself vouches for it. One reached through a hit's entity hangs from the best
    hit mentioning one of its entities; through a relation hop (no entity in common with any
    hit) from the best hit as well, the weight carrying the relation's strength.
    """
    found = related_memories(session, user_id, query=query, memory_ids=hit_ids, limit=limit)
    if not found:
        return {}
    entities_of: dict[int, set[int]] = {}
    for eid, mid in session.connection().execute(
        select(EntityMention.entity_id, EntityMention.memory_id).where(
            EntityMention.memory_id.in_([*hit_ids, *(mid for mid, _ in found)])
        )
    ):
        entities_of.setdefault(int(mid), set()).add(int(eid))
    offers: dict[int, list[tuple[int, float]]] = {}
    for mid, weight in found:
        parent = hit_ids[0]
        if weight < 1.0:
            mine = entities_of.get(mid, set())
            parent = next((h for h in hit_ids if entities_of.get(h, set()) & mine), parent)
        offers.setdefault(parent, []).append((mid, weight))
    return offers


def _partial_index(model: str, memories: Sequence[Any], links: Sequence[Any]) -> UserIndex:
    # The link component is the average over every outgoing link we fetched for a memory,
    # which is all of them (load_links_from), not only those whose target happens to be loaded.
    totals: dict[int, list[float]] = {}
    seen: set[tuple[int, int]] = set()
    unique = []
    for link in links:
        if (link.source, link.target) in seen:
            continue
        seen.add((link.source, link.target))
        unique.append(link)
        totals.setdefault(link.source, []).append(link.weight)
    link_avg = {mid: sum(ws) / len(ws) for mid, ws in totals.items()}
    # Version -1: never cached; a partial index must not stand in for the user's full one.
    return build_index(-1, model, memories, unique, link_avg=link_avg)


def _retrieved(index: UserIndex, h: Hit) -> RetrievedMemory:
    m = index.memory(h.memory_id)
    return RetrievedMemory(
        id=m.id,
        content=m.content,
        sector=m.sector,
        salience=m.salience,
        score=round(h.score, 6),
        created_at=datetime.fromtimestamp(m.created_epoch, tz=UTC) if m.created_epoch else None,
        sources=[dict(s) for s in m.sources if isinstance(s, dict)],
        components={
            "similarity": round(h.similarity, 6),
            "salience": round(h.salience, 6),
            "recency": round(h.recency, 6),
            "link": round(h.link, 6),
            "lexical": round(h.lexical, 6),
        },
        via=h.via,
    )
