"""Query a user's memories: embed once, score every memory exactly, expand one hop, return
ranked memories with their provenance. No LLM and no writes on this path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from db import tracing
from db.metrics import time_query_stage
from memory.embedders import Embedder
from memory.index import UserIndex
from memory.loader import get_index
from memory.scoring import DEFAULT_WEIGHTS, Weights


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
    ) -> None:
        self.embedder = embedder
        self.weights = weights
        self.expand = expand
        self.expand_per_hit = expand_per_hit

    def index(self, session: Session, user_id: str) -> UserIndex:
        return get_index(session, user_id, self.embedder.name)

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
        index = self.index(session, user_id)
        if len(index) == 0 or not query.strip():
            return []
        with time_query_stage("embed"), tracing.span("memory_query.embed"):
            vector = self.embedder.embed([query])[0]
        now = now or datetime.now(UTC)
        with time_query_stage("search"), tracing.span("memory_query.search"):
            hits = index.search(
                vector,
                query,
                now_epoch=now.timestamp(),
                limit=limit,
                weights=self.weights,
                sectors=sectors,
                states=states,
                expand=self.expand,
                expand_per_hit=self.expand_per_hit,
            )
        out = []
        for h in hits:
            m = index.memories[index.row_of[h.memory_id]]
            out.append(
                RetrievedMemory(
                    id=m.id,
                    content=m.content,
                    sector=m.sector,
                    salience=m.salience,
                    score=round(h.score, 6),
                    created_at=datetime.fromtimestamp(m.created_epoch, tz=UTC)
                    if m.created_epoch
                    else None,
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
            )
        return out
