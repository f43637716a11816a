"""Per-user in-process retrieval index: vectors matrix + BM25 + link neighbours.

Exact search (one matmul + argpartition) rather than ANN: at 10k × 384 it costs ~0.6 ms, needs
no extra dependency, and filters/deletes are trivial. Indexes are cached per user and tagged
with the user's ``memory_version``; a write bumps the version in the same transaction, so the
next query after a commit rebuilds (reusing cached per-memory tokens and vectors) and a
memory is queryable the moment its job commits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from db import tracing
from db.metrics import time_query_stage
from memory.lexical import BM25, doc_terms, normalise
from memory.scoring import DEFAULT_WEIGHTS, Weights, composite_scores, decay_rate, recency_scores
from memory.types import SECTORS


@dataclass(frozen=True, slots=True)
class IndexedMemory:
    """What the index needs of one memory (decrypted)."""

    id: int
    content: str
    sector: str
    state: str
    salience: float
    last_seen_epoch: float  # the ``recency`` column as a unix time
    vector: npt.NDArray[np.float32]
    sources: tuple[Any, ...] = ()
    created_epoch: float = 0.0
    valid_to_epoch: float | None = None


@dataclass(frozen=True, slots=True)
class Link:
    source: int
    target: int
    weight: float


@dataclass(frozen=True, slots=True)
class Hit:
    memory_id: int
    score: float
    similarity: float
    salience: float
    recency: float
    link: float
    lexical: float
    # Set when the memory came in through single-hop expansion (a memory link or a shared
    # entity) from this hit.
    via: int | None = None


# Given the top hits' memory ids (best first), more memories to offer per hit:
# {hit memory id: [(memory id, weight in [0, 1])]}. Used for the entity-graph hop.
RelatedLookup = Callable[[list[int]], Mapping[int, Sequence[tuple[int, float]]]]


class UserIndex:
    def __init__(
        self,
        version: int,
        model: str,
        memories: list[IndexedMemory],
        links: list[Link],
        *,
        link_avg: Mapping[int, float] | None = None,
    ) -> None:
        """``link_avg`` (memory id -> average outgoing link weight) overrides the value computed
        from ``links``: a partial index (database-side search loads only candidates) does not
        hold every link target, and the link component must not depend on what was loaded."""
        self.version = version
        self.model = model
        self.memories = memories
        self.links = links
        n = len(self.memories)
        self.row_of: dict[int, int] = {m.id: i for i, m in enumerate(self.memories)}
        dim = self.memories[0].vector.shape[0] if n else 0
        self.vectors = np.zeros((n, dim), dtype=np.float32)
        for i, m in enumerate(self.memories):
            self.vectors[i] = m.vector
        self.ids = np.array([m.id for m in self.memories], dtype=np.int64)
        self.salience = np.array([m.salience for m in self.memories], dtype=np.float64)
        self.last_seen = np.array([m.last_seen_epoch for m in self.memories], dtype=np.float64)
        self.lambdas = np.array([decay_rate(m.sector) for m in self.memories], dtype=np.float64)
        self.sector_code = np.array(
            [SECTORS.index(m.sector) if m.sector in SECTORS else -1 for m in self.memories],
            dtype=np.int8,
        )
        self.active = np.array(
            [m.state == "active" and m.valid_to_epoch is None for m in self.memories], dtype=bool
        )
        self.states = np.array([m.state for m in self.memories], dtype=object)
        self.bm25 = BM25([_terms(m) for m in self.memories])
        # Neighbours per row, strongest first; average outgoing weight per row.
        neighbours: dict[int, list[tuple[int, float]]] = {}
        for link in self.links:
            s, t = self.row_of.get(link.source), self.row_of.get(link.target)
            if s is None or t is None or s == t:
                continue
            neighbours.setdefault(s, []).append((t, link.weight))
        self.link_avg = np.zeros(n, dtype=np.float64)
        for row, items in neighbours.items():
            items.sort(key=lambda x: (-x[1], int(self.ids[x[0]])))
            self.link_avg[row] = sum(w for _, w in items) / len(items)
        if link_avg is not None:
            self.link_avg[:] = 0.0
            for mid, avg in link_avg.items():
                at = self.row_of.get(mid)
                if at is not None:
                    self.link_avg[at] = avg
        self.neighbours = neighbours

    def __len__(self) -> int:
        return len(self.memories)

    def search(
        self,
        query_vector: npt.NDArray[np.float32],
        query_text: str,
        *,
        now_epoch: float,
        limit: int = 5,
        weights: Weights = DEFAULT_WEIGHTS,
        sectors: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        expand: bool = True,
        expand_per_hit: int = 2,
        similarity: Mapping[int, float] | None = None,
        related: RelatedLookup | None = None,
    ) -> list[Hit]:
        """Top ``limit`` memories by composite score, then single-hop link expansion, then the
        memories ``related`` offers for the hits (entity hop), all re-sorted together.

        ``similarity`` (memory id -> cosine) replaces the computed similarity of those rows:
        database-side search passes what pgvector measured, so both paths score one number.
        An offered memory scores max(its own score, hit score x weight x expansion), like a
        link neighbour; the filters apply to it as to any other row, and an id that is not in
        this (per-user) index is ignored, so an offer can never leak another user's memory.
        """
        n = len(self.memories)
        if n == 0 or limit <= 0:
            return []
        mask = self._mask(sectors, states)
        if not mask.any():
            return []
        sim = self.vectors @ query_vector.astype(np.float32)
        if similarity:
            for mid, value in similarity.items():
                at = self.row_of.get(mid)
                if at is not None:
                    sim[at] = value
        lex = normalise(self.bm25.scores(query_text)) if weights.lexical else np.zeros(n)
        rec = recency_scores(self.lambdas, self.last_seen, now_epoch)
        score = composite_scores(sim, self.salience, rec, self.link_avg, lex, weights)
        score = np.where(mask, score, -np.inf)
        k = min(limit, int(mask.sum()))
        top = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.isfinite(score[top])]
        # Deterministic order: score desc, then id asc for ties.
        top = top[np.lexsort((self.ids[top], -score[top]))]
        best: dict[int, tuple[float, int | None]] = {int(r): (float(score[r]), None) for r in top}

        def offer(nrow: int, parent_row: int, weight: float) -> None:
            own = float(score[nrow])
            boosted = max(own, float(score[parent_row]) * weight * weights.expansion)
            current = best.get(nrow)
            if current is None or boosted > current[0]:
                best[nrow] = (boosted, parent_row if boosted > own else None)

        if expand:
            # A sub-stage of "search" in the metrics and traces (db/metrics.py).
            with time_query_stage("expand"), tracing.span("memory_query.expand"):
                for r in top.tolist():
                    taken = 0
                    for nrow, w in self.neighbours.get(r, []):
                        if taken >= expand_per_hit:
                            break
                        if not mask[nrow]:
                            continue
                        taken += 1
                        offer(nrow, r, w)
        if related is not None and top.size:
            top_rows = set(top.tolist())
            for parent_id, items in related([int(self.ids[r]) for r in top]).items():
                prow = self.row_of.get(parent_id)
                if prow is None or prow not in top_rows:
                    continue
                for mid, w in items:
                    target = self.row_of.get(mid)
                    if target is not None and target != prow and mask[target]:
                        offer(target, prow, w)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], int(self.ids[kv[0]])))[:limit]
        return [
            Hit(
                memory_id=int(self.ids[r]),
                score=s,
                similarity=float(sim[r]),
                salience=float(self.salience[r]),
                recency=float(rec[r]),
                link=float(self.link_avg[r]),
                lexical=float(lex[r]),
                via=int(self.ids[via]) if via is not None else None,
            )
            for r, (s, via) in ranked
        ]

    def nearest(
        self,
        vector: npt.NDArray[np.float32],
        *,
        k: int,
        min_similarity: float = -1.0,
        active_only: bool = True,
        exclude: Iterable[int] = (),
    ) -> list[tuple[int, float]]:
        """(memory id, cosine) of the k most similar memories — for linking and dedup."""
        if not self.memories:
            return []
        sim = self.vectors @ vector.astype(np.float32)
        allowed = self.active.copy() if active_only else np.ones(len(self.memories), dtype=bool)
        for mid in exclude:
            row = self.row_of.get(mid)
            if row is not None:
                allowed[row] = False
        sim = np.where(allowed & (sim >= min_similarity), sim, -np.inf)
        k = min(k, len(self.memories))
        top = np.argpartition(-sim, k - 1)[:k]
        top = top[np.isfinite(sim[top])]
        top = top[np.lexsort((self.ids[top], -sim[top]))]
        return [(int(self.ids[r]), float(sim[r])) for r in top]

    def _mask(
        self, sectors: Iterable[str] | None, states: Iterable[str] | None
    ) -> npt.NDArray[np.bool_]:
        if states is None:
            mask = self.active.copy()
        else:
            wanted = set(states)
            mask = np.array([s in wanted for s in self.states], dtype=bool)
        if sectors is not None:
            codes = [SECTORS.index(s) for s in sectors if s in SECTORS]
            mask &= np.isin(self.sector_code, codes)
        return mask


# Tokenised text per (memory id, content): rebuilding a user's index after one new memory
# re-tokenises one text, not ten thousand.
_terms_cache: dict[tuple[int, str], npt.NDArray[np.int64]] = {}
_TERMS_CACHE_MAX = 500_000


def _terms(m: IndexedMemory) -> npt.NDArray[np.int64]:
    key = (m.id, m.content)
    hit = _terms_cache.get(key)
    if hit is None:
        if len(_terms_cache) >= _TERMS_CACHE_MAX:
            _terms_cache.clear()
        hit = _terms_cache[key] = doc_terms(m.content)
    return hit


class IndexCache:
    """LRU of per-user indexes, keyed by (namespace, user id), validated by version."""

    def __init__(self, max_users: int = 256) -> None:
        self._max = max_users
        self._items: OrderedDict[tuple[str, str], UserIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], version: int, model: str) -> UserIndex | None:
        with self._lock:
            index = self._items.get(key)
            if index is None or index.version != version or index.model != model:
                return None
            self._items.move_to_end(key)
            return index

    def put(self, key: tuple[str, str], index: UserIndex) -> None:
        with self._lock:
            current = self._items.get(key)
            # Never replace a newer index with an older one built by a slower thread.
            if current is not None and current.version > index.version:
                return
            self._items[key] = index
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def resize(self, max_users: int) -> None:
        with self._lock:
            self._max = max(1, max_users)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def invalidate(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def build_index(
    version: int,
    model: str,
    memories: Sequence[IndexedMemory],
    links: Sequence[Link],
    *,
    link_avg: Mapping[int, float] | None = None,
) -> UserIndex:
    return UserIndex(
        version=version, model=model, memories=list(memories), links=list(links), link_avg=link_avg
    )
