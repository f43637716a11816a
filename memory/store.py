"""Write a call's memories for one user inside the caller's transaction (the worker commits).

Pipeline per call: embed every candidate in one batch -> merge restatements within the call ->
for each, decide against the user's existing memories (reinforce a near-duplicate, supersede a
contradicted fact, skip an agent echo, else insert) -> write embeddings, provenance and links
-> bump ``users.memory_version`` so readers rebuild their index after the commit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import crypto
from db.models import ConversationMemory, Memory, MemoryEmbedding, MemoryLink, User
from memory.consolidation import (
    DEFAULT_THRESHOLDS,
    Action,
    Existing,
    Thresholds,
    decide,
    merge_sources,
    merge_within_call,
    replaced_objects,
)
from memory.embedders import Embedder
from memory.index import UserIndex
from memory.linking import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    co_retrieval_updates,
    plan_links,
)
from memory.loader import get_index, vector_to_bytes
from memory.scoring import decay_rate, reinforce_salience
from memory.types import CandidateMemory, ExtractionResult

# Existing memories considered per candidate (by vector similarity).
NEIGHBOURS = 10
_NORMALISE = re.compile(r"[^a-z0-9]+")


@dataclass(slots=True)
class WriteReport:
    inserted: list[int] = field(default_factory=list)
    reinforced: list[int] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)
    skipped_echoes: int = 0
    merged_in_call: int = 0
    links_written: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class _Fresh:
    """A memory inserted earlier in this same call (not yet in the cached index)."""

    id: int
    content: str
    sector: str
    vector: npt.NDArray[np.float32]


def content_hash(text: str) -> str | None:
    """Keyed hash of the normalised text (exact-duplicate lookups without decrypting)."""
    normal = _NORMALISE.sub(" ", text.lower()).strip()
    try:
        return crypto.keyring().lookup_hash(normal)
    except crypto.CryptoNotConfiguredError:
        return None


class MemoryWriter:
    def __init__(
        self,
        embedder: Embedder,
        *,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        link_top_k: int = DEFAULT_TOP_K,
        link_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.embedder = embedder
        self.thresholds = thresholds
        self.link_top_k = link_top_k
        self.link_threshold = link_threshold

    def write_call(
        self,
        session: Session,
        *,
        user_id: str,
        conversation_id: str,
        extraction: ExtractionResult,
        conversation_fk: int | None = None,
        recalled: Sequence[str] = (),
        now: datetime | None = None,
    ) -> WriteReport:
        """Persist one call's extraction for ``user_id``. Never commits."""
        now = now or datetime.now(UTC)
        report = WriteReport()
        user = session.get(User, user_id)
        if user is None:
            raise LookupError(f"unknown user {user_id}")
        candidates = [c for c in extraction.memories if c.content.strip()]
        index = get_index(session, user_id, self.embedder.name)
        if candidates:
            texts = [c.content for c in candidates]
            vectors = self.embedder.embed(texts + list(recalled))
            cand_vecs, recalled_vecs = vectors[: len(texts)], vectors[len(texts) :]
            merged = merge_within_call(candidates, cand_vecs, self.thresholds)
            report.merged_in_call = len(candidates) - len(merged)
            fresh: list[_Fresh] = []
            for item in merged:
                self._write_one(
                    session,
                    user,
                    index,
                    item.candidate,
                    item.vector,
                    recalled_vecs,
                    fresh,
                    conversation_id,
                    conversation_fk,
                    extraction.extractor,
                    now,
                    report,
                )
        if report.inserted or report.reinforced or report.superseded:
            user.memory_version = (user.memory_version or 0) + 1
            user.total_memories = (user.total_memories or 0) + len(report.inserted)
        report.version = user.memory_version or 0
        session.flush()
        return report

    def _existing(
        self,
        index: UserIndex,
        cand: CandidateMemory,
        vector: npt.NDArray[np.float32],
        fresh: list[_Fresh],
    ) -> list[Existing]:
        out: dict[int, Existing] = {}
        for mid, sim in index.nearest(vector, k=NEIGHBOURS):
            m = index.memory(mid)
            out[mid] = Existing(mid, m.content, m.sector, sim, m.state)
        # "from Salesforce to HubSpot": the replaced fact may share no meaning with the new
        # text (cosine 0.12), so find it by name as well.
        for name in replaced_objects(cand.content):
            pattern = re.compile(rf"\b{re.escape(name)}\b", re.I)
            # Text first: building every memory of a large user to test it would be slow.
            for row, text in enumerate(index.contents):
                if not index.alive[row] or not pattern.search(text):
                    continue
                m = index.memory_at(row)
                if m.id not in out and m.state == "active":
                    sim = float(m.vector @ vector)
                    out[m.id] = Existing(m.id, m.content, m.sector, sim, m.state)
        for f in fresh:
            out[f.id] = Existing(f.id, f.content, f.sector, float(f.vector @ vector))
        return list(out.values())

    def _write_one(
        self,
        session: Session,
        user: User,
        index: UserIndex,
        cand: CandidateMemory,
        vector: npt.NDArray[np.float32],
        recalled_vecs: npt.NDArray[np.float32],
        fresh: list[_Fresh],
        conversation_id: str,
        conversation_fk: int | None,
        extractor: str,
        now: datetime,
        report: WriteReport,
    ) -> None:
        echo = float((recalled_vecs @ vector).max()) if len(recalled_vecs) else 0.0
        existing = self._existing(index, cand, vector, fresh)
        decision = decide(cand, existing, echo, self.thresholds)
        if decision.action is Action.SKIP:
            report.skipped_echoes += 1
            return
        if decision.action is Action.REINFORCE and decision.target_id is not None:
            target = session.get(Memory, decision.target_id)
            if target is not None and target.user_id == user.user_id:
                target.salience = reinforce_salience(max(target.salience, cand.salience * 0.9))
                target.recency = now
                target.reinforcement_count = (target.reinforcement_count or 0) + 1
                target.sources = merge_sources(target.sources, conversation_id, cand.sources)
                self._provenance(session, conversation_fk, target.id, cand, "reinforced")
                report.reinforced.append(target.id)
                return
        memory = Memory(
            user_id=user.user_id,
            content=cand.content,
            content_hash=content_hash(cand.content),
            sector_type=cand.sector,
            salience=cand.salience,
            recency=now,
            decay_rate=decay_rate(cand.sector),
            state="active",
            source_conversation=conversation_id,
            sources=merge_sources(None, conversation_id, cand.sources),
            metadata_={"kind": cand.kind, "role": cand.role},
            valid_from=cand.valid_from or now,
            extractor=extractor,
            created_at=now,
            updated_at=now,
        )
        session.add(memory)
        session.flush()
        session.add(
            MemoryEmbedding(
                memory_id=memory.id,
                sector=cand.sector,
                embedding=vector_to_bytes(vector),
                embedding_model=self.embedder.name,
                dimension=int(vector.shape[0]),
            )
        )
        self._provenance(session, conversation_fk, memory.id, cand, "auto")
        report.inserted.append(memory.id)
        for old_id in decision.supersede:
            old = session.get(Memory, old_id)
            if old is None or old.user_id != user.user_id or old.state != "active":
                continue
            old.state = "superseded"
            old.valid_to = cand.valid_from or now
            old.superseded_by = memory.id
            report.superseded.append(old_id)
        superseded = set(decision.supersede)
        neighbours = [
            (mid, sim)
            for mid, sim in index.nearest(
                vector, k=self.link_top_k + len(superseded), min_similarity=self.link_threshold
            )
            if mid not in superseded
        ]
        neighbours += [(f.id, float(f.vector @ vector)) for f in fresh]
        planned = plan_links(
            memory.id, neighbours, top_k=self.link_top_k, threshold=self.link_threshold
        )
        report.links_written += upsert_links(
            session, [(p.source, p.target, p.weight) for p in planned]
        )
        fresh.append(_Fresh(memory.id, cand.content, cand.sector, vector))

    @staticmethod
    def _provenance(
        session: Session,
        conversation_fk: int | None,
        memory_id: int,
        cand: CandidateMemory,
        extraction_type: str,
    ) -> None:
        if conversation_fk is None:
            return
        row = session.execute(
            select(ConversationMemory).where(
                ConversationMemory.conversation_fk == conversation_fk,
                ConversationMemory.memory_id == memory_id,
            )
        ).scalar_one_or_none()
        if row is None:
            session.add(
                ConversationMemory(
                    conversation_fk=conversation_fk,
                    memory_id=memory_id,
                    extraction_type=extraction_type,
                    confidence=cand.salience,
                    turns=list(cand.sources),
                )
            )
        else:
            row.turns = sorted(set(row.turns or []) | set(cand.sources))


def upsert_links(session: Session, links: Sequence[tuple[int, int, float]]) -> int:
    """Insert links, or raise an existing pair's weight to the new one (never lower it)."""
    written = 0
    for source, target, weight in links:
        row = session.execute(
            select(MemoryLink).where(
                MemoryLink.source_memory_id == source, MemoryLink.target_memory_id == target
            )
        ).scalar_one_or_none()
        if row is None:
            session.add(
                MemoryLink(
                    source_memory_id=source,
                    target_memory_id=target,
                    link_weight=weight,
                    link_type="automatic",
                )
            )
            written += 1
        elif weight > row.link_weight:
            row.link_weight = weight
            written += 1
    return written


def reinforce_co_retrieved(session: Session, user_id: str, memory_ids: Sequence[int]) -> int:
    """Strengthen existing links among memories one query returned together, and mark them
    accessed. Call from a write transaction off the request path (it is not urgent)."""
    ids = list(dict.fromkeys(memory_ids))
    if len(ids) < 2:
        return 0
    rows = session.execute(
        select(MemoryLink)
        .join(Memory, Memory.id == MemoryLink.source_memory_id)
        .where(
            Memory.user_id == user_id,
            MemoryLink.source_memory_id.in_(ids),
            MemoryLink.target_memory_id.in_(ids),
        )
    ).scalars()
    by_pair = {(r.source_memory_id, r.target_memory_id): r for r in rows}
    updates = co_retrieval_updates(ids, {k: v.link_weight for k, v in by_pair.items()})
    for pair, weight in updates.items():
        by_pair[pair].link_weight = weight
        by_pair[pair].link_type = "reinforced"
    # No memory_version bump: this runs after queries, and invalidating the user's index on
    # every query would rebuild it every time. Cached link weights catch up at the next write.
    return len(updates)


def users_missing_embeddings(session: Session, model: str) -> list[str]:
    """Users with at least one memory that has no embedding of ``model``: after a model
    change these are invisible to retrieval until ``voxmem reembed`` has run."""
    has_vector = (
        select(MemoryEmbedding.id)
        .where(MemoryEmbedding.memory_id == Memory.id, MemoryEmbedding.embedding_model == model)
        .exists()
    )
    return list(
        session.scalars(
            select(Memory.user_id)
            .where(~has_vector)
            .group_by(Memory.user_id)
            .order_by(Memory.user_id)
        )
    )


def reembed_user(session: Session, user_id: str, embedder: Embedder, batch: int = 256) -> int:
    """(Re)compute this user's embeddings with ``embedder`` (``voxmem reembed``)."""
    memories = list(
        session.execute(select(Memory).where(Memory.user_id == user_id).order_by(Memory.id))
        .scalars()
        .all()
    )
    done = 0
    for start in range(0, len(memories), batch):
        chunk = memories[start : start + batch]
        vectors = embedder.embed([m.content for m in chunk])
        existing = {
            e.memory_id: e
            for e in session.execute(
                select(MemoryEmbedding).where(
                    MemoryEmbedding.memory_id.in_([m.id for m in chunk]),
                    MemoryEmbedding.embedding_model == embedder.name,
                )
            ).scalars()
        }
        for m, v in zip(chunk, vectors, strict=True):
            row = existing.get(m.id)
            if row is None:
                session.add(
                    MemoryEmbedding(
                        memory_id=m.id,
                        sector=m.sector_type,
                        embedding=vector_to_bytes(v),
                        embedding_model=embedder.name,
                        dimension=int(v.shape[0]),
                    )
                )
            else:
                row.embedding = vector_to_bytes(v)
                row.dimension = int(v.shape[0])
                # The index refresh finds changed memories by updated_at (memory/loader.py).
                m.updated_at = datetime.now(UTC)
            done += 1
    user = session.get(User, user_id)
    if user is not None and done:
        user.memory_version = (user.memory_version or 0) + 1
    return done


def memory_payload(m: Memory, links: Sequence[MemoryLink] = ()) -> dict[str, Any]:
    """CONTRACT §4 shape of a memory returned in full."""
    return {
        "id": m.id,
        "content": m.content,
        "sector": m.sector_type,
        "salience": round(float(m.salience), 4),
        "state": m.state,
        "created_at": m.created_at.isoformat() if m.created_at else None,
        "links": [
            {"memory_id": link.target_memory_id, "weight": round(float(link.link_weight), 4)}
            for link in links
        ],
        "sources": list(m.sources or []),
    }
