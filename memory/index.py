"""Per-user in-process retrieval index: vectors + BM25 + link neighbours, exact or ANN.

Columnar: one row per memory (ids, vectors, salience, ... as numpy arrays; text, provenance and
token ids beside them), so an index is built, persisted and updated without one Python object
per memory.

Search is exact below ``ANN_CONFIG.threshold`` memories (one matmul + argpartition: ~2 ms at
10k x 384, exact, no extra structure) and ANN-assisted above it: usearch's HNSW graph
(:mod:`memory.ann`) proposes a generous vector pool, BM25 proposes its own lexical pool, and
the union is scored with exactly the same composite as the exact path. Filters, link
expansion and the entity hop are unchanged.

Indexes are cached per user and tagged with the user's ``memory_version``; a write bumps the
version in the same transaction. The loader (:mod:`memory.loader`) turns the cached index into
the current one with :meth:`UserIndex.apply` — only the memories that changed are decrypted,
tokenised and added to (or removed from) the ANN graph — so a memory is queryable the moment
its job commits without rebuilding a large user's index. Versions are copy-on-write: a reader
holding an older version keeps a consistent view while a newer one is derived (rows are
appended to a shared vector buffer beyond the older view; removed rows become tombstones until
the index is compacted).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from db import tracing
from db.metrics import time_query_stage
from memory.ann import AnnDtype, AnnIndex
from memory.lexical import BM25, docs_terms, normalise
from memory.scoring import DEFAULT_WEIGHTS, Weights, composite_scores, decay_rate, recency_scores
from memory.types import SECTORS

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]
Bools = npt.NDArray[np.bool_]

# What the loader compares with the database to find changed memories: the memory row's
# ``updated_at`` as stored (every update sets it) and the id of its embedding row.
Fingerprint = tuple[str, int]


@dataclass
class AnnConfig:
    """Process-wide ANN settings (``memory.loader.configure`` sets them from Settings)."""

    # ANN candidates only when the user has at least this many searchable memories; exact
    # below it, where the scan is both fast and exact.
    threshold: int = 20_000
    dtype: AnnDtype = "f32"
    # Vector pool per query: max(min_pool, per_result x limit); the lexical pool is as large.
    min_pool: int = 200
    per_result: int = 20


ANN_CONFIG = AnnConfig()
# How much wider the second vector pool is when the first leaves too many rows unresolved.
WIDEN = 8


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


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed in the database since an index's version (``memory.loader.refresh``)."""

    version: int
    upserts: Sequence[IndexedMemory]  # new memories and changed ones, in full
    removed: Collection[int]  # ids gone (deleted, or no embedding of this model any more)
    # Every current link whose source or target is an upserted or removed memory.
    links: Sequence[Link]
    fingerprints: Mapping[int, Fingerprint] = field(default_factory=dict)


# Given the top hits' memory ids (best first), more memories to offer per hit:
# {hit memory id: [(memory id, weight in [0, 1])]}. Used for the entity-graph hop.
RelatedLookup = Callable[[list[int]], Mapping[int, Sequence[tuple[int, float]]]]


class _VectorBuffer:
    """Row storage shared by the versions of one user's index: a version sees ``data[:n]``;
    a newer version appends beyond it, so older readers are never disturbed."""

    def __init__(self, data: F32, used: int, *, writable: bool) -> None:
        self.data = data
        self.used = used
        self.writable = writable
        self.lock = threading.Lock()

    def promote(self) -> None:
        """Copy read-only (memory-mapped) rows into memory with room to append, so the next
        version does not copy them on the request path. Versions holding the old rows keep
        them (same values)."""
        with self.lock:
            if self.writable:
                return
            n = self.used
            capacity = max(int(n * 1.25), n + 1024)
            data = np.empty((capacity, self.data.shape[1]), dtype=np.float32)
            data[:n] = self.data[:n]
            self.data, self.writable = data, True

    def extend(self, parent: F32, new: F32) -> tuple[_VectorBuffer, F32]:
        n, k = parent.shape[0], new.shape[0]
        with self.lock:
            if self.writable and self.used == n and self.data.shape[0] >= n + k:
                self.data[n : n + k] = new
                self.used = n + k
                return self, self.data[: n + k]
        dim = new.shape[1] if k else parent.shape[1]
        capacity = max(int((n + k) * 1.25), n + k + 1024)
        data = np.empty((capacity, dim), dtype=np.float32)
        data[:n] = parent
        data[n : n + k] = new
        buffer = _VectorBuffer(data, n + k, writable=True)
        return buffer, data[: n + k]


class AnnSlot:
    """A user's ANN graph, shared by every version of their index (see :mod:`memory.ann`).

    ``latest`` is the newest index derived; the graph follows it. While the graph is being
    built (in the background) the ids touched by later versions are queued and replayed."""

    def __init__(self) -> None:
        self.ann: AnnIndex | None = None
        self.building = False
        self.pending: set[int] = set()
        self.latest: UserIndex | None = None
        self.lock = threading.Lock()

    def ready(self) -> AnnIndex | None:
        return self.ann

    def follow(self, index: UserIndex, touched: Collection[int] | None) -> None:
        """``index`` is the newest version; ``touched`` the ids that changed from the previous
        one (None: compare the whole membership)."""
        with self.lock:
            if self.latest is not None and self.latest.version > index.version:
                return
            self.latest = index
            if self.ann is not None:
                if touched is None:
                    _sync_all(self.ann, index)
                else:
                    _sync_ids(self.ann, index, touched)
            elif self.building:
                if touched is None:
                    self.pending.update(int(i) for i in index.ids.tolist())
                else:
                    self.pending.update(touched)

    def attach(self, ann: AnnIndex, index: UserIndex) -> None:
        """Use a graph restored from disk for ``index`` (membership compared in full)."""
        with self.lock:
            self.latest = index
            self.ann = ann
            _sync_all(ann, index)

    def build(self, dtype: AnnDtype, threads: int = 1) -> bool:
        """Build the graph from the latest version (slow: call off the request path)."""
        with self.lock:
            base = self.latest
            if self.ann is not None or self.building or base is None:
                return False
            self.building = True
            self.pending = set()
            rows = np.flatnonzero(base.active)
            ids, vectors = base.ids[rows].copy(), np.array(base.vectors[rows], dtype=np.float32)
        try:
            ann = AnnIndex.build(ids, vectors, dtype, threads=threads)
        except BaseException:
            with self.lock:
                self.building = False
            raise
        with self.lock:
            latest = self.latest or base
            if latest is not base:
                _sync_ids(ann, latest, self.pending)
            self.ann, self.building, self.pending = ann, False, set()
        return True


def _sync_ids(ann: AnnIndex, index: UserIndex, touched: Iterable[int]) -> None:
    add_ids, add_rows, remove = [], [], []
    for mid in touched:
        row = index.row_of.get(int(mid))
        if row is not None and index.active[row]:
            add_ids.append(int(mid))
            add_rows.append(row)
        else:
            remove.append(int(mid))
    ann.sync(remove, np.asarray(add_ids, dtype=np.int64), _rows(index.vectors, add_rows))


def _sync_all(ann: AnnIndex, index: UserIndex) -> None:
    """Make the graph's members exactly the index's searchable memories (by id; a restored
    graph and its index file were saved together, so shared ids have the same vector)."""
    have = ann.keys()
    rows = np.flatnonzero(index.active)
    want = index.ids[rows]
    remove = np.setdiff1d(have, want, assume_unique=True)
    missing = ~np.isin(want, have, assume_unique=True)
    add_rows = rows[missing].tolist()
    ann.sync(remove.tolist(), want[missing], _rows(index.vectors, add_rows))


def _rows(vectors: F32, rows: Sequence[int]) -> F32:
    if not rows:
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    return np.asarray(vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class UserIndex:
    # Row-aligned columns (``rows`` = every row, tombstones included; ``len()`` = live ones).
    ids: I64
    vectors: F32
    salience: F64
    last_seen: F64
    lambdas: F64  # per-day decay of the row's sector
    created: F64
    valid_to: F64  # NaN: still valid
    # Sector and state as small codes into per-index vocabularies (``sector_vocab``,
    # ``state_names``); ``sector_code`` is the SECTORS position (filters), -1 if unknown.
    sector_of: I16
    sector_code: npt.NDArray[np.int8]
    state_code: I16
    alive: Bools
    active: Bools  # alive, state "active" and no valid_to: what a default query may return
    contents: list[str]
    # Provenance per row: a tuple, or the column's JSON text as read (decoded on demand:
    # only returned hits need it).
    sources: list[tuple[Any, ...] | str]
    fingerprints: dict[int, Fingerprint] | None

    def __init__(
        self,
        version: int,
        model: str,
        memories: list[IndexedMemory],
        links: list[Link],
        *,
        link_avg: Mapping[int, float] | None = None,
        fingerprints: Mapping[int, Fingerprint] | None = None,
    ) -> None:
        """``link_avg`` (memory id -> average outgoing link weight) overrides the value computed
        from ``links``: a partial index (database-side search loads only candidates) does not
        hold every link target, and the link component must not depend on what was loaded.

        ``fingerprints`` (memory id -> :data:`Fingerprint`) make the index refreshable in place
        by the loader; without them a version change means a full reload."""
        n = len(memories)
        dim = memories[0].vector.shape[0] if n else 0
        vectors = np.zeros((n, dim), dtype=np.float32)
        for i, m in enumerate(memories):
            vectors[i] = m.vector
        flat, offsets = docs_terms([m.content for m in memories])
        sector_vocab: list[str] = []
        state_names: list[str] = []
        self._assemble(
            version,
            model,
            ids=np.array([m.id for m in memories], dtype=np.int64),
            vectors=vectors,
            salience=np.array([m.salience for m in memories], dtype=np.float64),
            last_seen=np.array([m.last_seen_epoch for m in memories], dtype=np.float64),
            created=np.array([m.created_epoch for m in memories], dtype=np.float64),
            valid_to=np.array(
                [math.nan if m.valid_to_epoch is None else m.valid_to_epoch for m in memories],
                dtype=np.float64,
            ),
            sector_vocab=sector_vocab,
            sector_of=encode([m.sector for m in memories], sector_vocab),
            state_names=state_names,
            state_code=encode([m.state for m in memories], state_names),
            contents=[m.content for m in memories],
            sources=[tuple(m.sources) for m in memories],
            term_flat=flat,
            term_off=offsets,
            links=_link_arrays(links),
            link_avg_override=link_avg,
            fingerprints=dict(fingerprints) if fingerprints is not None else None,
        )

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_columns(
        cls,
        version: int,
        model: str,
        *,
        ids: I64,
        vectors: F32,
        salience: F64,
        last_seen: F64,
        created: F64,
        valid_to: F64,
        sector_vocab: list[str],
        sector_of: I16,
        state_names: list[str],
        state_code: I16,
        contents: list[str],
        sources: list[tuple[Any, ...] | str],
        term_flat: I64,
        term_off: I64,
        links: tuple[I64, I64, F64],
        fingerprints: dict[int, Fingerprint] | None,
        writable_vectors: bool = True,
    ) -> UserIndex:
        """An index from row-aligned columns (the loader's bulk path and snapshots)."""
        self = cls.__new__(cls)
        self._assemble(
            version,
            model,
            ids=ids,
            vectors=vectors,
            salience=salience,
            last_seen=last_seen,
            created=created,
            valid_to=valid_to,
            sector_vocab=sector_vocab,
            sector_of=sector_of,
            state_names=state_names,
            state_code=state_code,
            contents=contents,
            sources=sources,
            term_flat=term_flat,
            term_off=term_off,
            links=links,
            link_avg_override=None,
            fingerprints=fingerprints,
            writable_vectors=writable_vectors,
        )
        return self

    def _assemble(
        self,
        version: int,
        model: str,
        *,
        ids: I64,
        vectors: F32,
        salience: F64,
        last_seen: F64,
        created: F64,
        valid_to: F64,
        sector_vocab: list[str],
        sector_of: I16,
        state_names: list[str],
        state_code: I16,
        contents: list[str],
        sources: list[tuple[Any, ...] | str],
        term_flat: I64,
        term_off: I64,
        links: tuple[I64, I64, F64],
        link_avg_override: Mapping[int, float] | None,
        fingerprints: dict[int, Fingerprint] | None,
        writable_vectors: bool = True,
    ) -> None:
        n = len(ids)
        self.version = version
        self.model = model
        self.ids = ids
        self._buffer = _VectorBuffer(vectors, n, writable=writable_vectors)
        self.vectors = vectors[:n]
        self.salience = salience
        self.last_seen = last_seen
        self.created = created
        self.valid_to = valid_to
        self.sector_vocab, self.sector_of = sector_vocab, sector_of.astype(np.int16)
        self.state_names, self.state_code = state_names, state_code.astype(np.int16)
        self._derive_sectors()
        self.alive = np.ones(n, dtype=bool)
        self.active = self._active_rows()
        self.contents = contents
        self.sources = sources
        self.term_flat, self.term_off = term_flat, term_off
        self.bm25 = BM25.from_csr(term_flat, term_off, self.alive)
        self.row_of: dict[int, int] = {int(mid): i for i, mid in enumerate(ids.tolist())}
        self.fingerprints = fingerprints
        self.dead = 0
        self.ann_slot: AnnSlot | None = None
        # (memories upserted, memories removed) by the refresh that produced this version.
        self.delta_size: tuple[int, int] = (0, 0)
        self._links = links
        self._link_avg_override = dict(link_avg_override) if link_avg_override else None
        self._build_links()

    def _derive_sectors(self) -> None:
        vocab = self.sector_vocab
        codes = np.array([SECTORS.index(s) if s in SECTORS else -1 for s in vocab], np.int8)
        lambdas = np.array([decay_rate(s) for s in vocab], dtype=np.float64)
        self.sector_code = codes[self.sector_of] if len(vocab) else np.zeros(0, np.int8)
        self.lambdas = lambdas[self.sector_of] if len(vocab) else np.zeros(0)

    def _active_rows(self) -> Bools:
        if "active" not in self.state_names:
            return np.zeros(len(self.ids), dtype=bool)
        code = self.state_names.index("active")
        out: Bools = self.alive & (self.state_code == code) & np.isnan(self.valid_to)
        return out

    def _build_links(self) -> None:
        """Neighbours per row as CSR (strongest first, then target id) and the average
        outgoing link weight per row, from the link arrays (memory ids)."""
        rows_n = len(self.ids)
        src, dst, w = self._links
        live = np.flatnonzero(self.alive)
        order = np.argsort(self.ids[live], kind="stable")
        sorted_ids, sorted_rows = self.ids[live][order], live[order]

        def rows_of(mids: I64) -> tuple[I64, Bools]:
            if not len(sorted_ids):
                return np.zeros(len(mids), dtype=np.int64), np.zeros(len(mids), dtype=bool)
            at = np.clip(np.searchsorted(sorted_ids, mids), 0, len(sorted_ids) - 1)
            return sorted_rows[at], sorted_ids[at] == mids

        s_rows, s_ok = rows_of(src)
        t_rows, t_ok = rows_of(dst)
        keep = s_ok & t_ok & (s_rows != t_rows)
        s_rows, t_rows, weights = s_rows[keep], t_rows[keep], w[keep]
        order = np.lexsort((self.ids[t_rows], -weights, s_rows))
        self.nb_rows, self.nb_weights = t_rows[order], weights[order]
        counts = np.bincount(s_rows, minlength=rows_n)
        self.nb_off = np.zeros(rows_n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.nb_off[1:])
        sums = np.bincount(s_rows, weights=weights, minlength=rows_n)
        self.link_avg = np.divide(
            sums, counts, out=np.zeros(rows_n, dtype=np.float64), where=counts > 0
        )
        if self._link_avg_override is not None:
            self.link_avg[:] = 0.0
            for mid, avg in self._link_avg_override.items():
                at = self.row_of.get(mid)
                if at is not None:
                    self.link_avg[at] = avg

    # --- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.row_of)

    def prepare_appends(self) -> None:
        """See :meth:`_VectorBuffer.promote` (a snapshot's vectors are a read-only map)."""
        if self.vectors.ndim == 2 and self.vectors.shape[1]:
            self._buffer.promote()

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def links(self) -> list[Link]:
        src, dst, w = self._links
        return [Link(int(s), int(t), float(x)) for s, t, x in zip(src, dst, w, strict=True)]

    def memory(self, memory_id: int) -> IndexedMemory:
        return self.memory_at(self.row_of[memory_id])

    def iter_memories(self) -> Iterator[IndexedMemory]:
        """Live memories in row order (built one at a time: prefer the columns)."""
        for row in np.flatnonzero(self.alive).tolist():
            yield self.memory_at(row)

    @property
    def memories(self) -> list[IndexedMemory]:
        return list(self.iter_memories())

    def memory_at(self, row: int) -> IndexedMemory:
        valid_to = float(self.valid_to[row])
        return IndexedMemory(
            id=int(self.ids[row]),
            content=self.contents[row],
            sector=self.sector_vocab[int(self.sector_of[row])],
            state=self.state_names[int(self.state_code[row])],
            salience=float(self.salience[row]),
            last_seen_epoch=float(self.last_seen[row]),
            vector=self.vectors[row],
            sources=_sources(self.sources[row]),
            created_epoch=float(self.created[row]),
            valid_to_epoch=None if math.isnan(valid_to) else valid_to,
        )

    def neighbours(self, row: int) -> Iterator[tuple[int, float]]:
        """(row, weight) of a row's outgoing links, strongest first."""
        lo, hi = int(self.nb_off[row]), int(self.nb_off[row + 1])
        rows, weights = self.nb_rows[lo:hi].tolist(), self.nb_weights[lo:hi].tolist()
        for nrow, w in zip(rows, weights, strict=True):
            yield int(nrow), float(w)

    def ann(self) -> AnnIndex | None:
        """The ANN graph if this user is large enough to use it and it is built."""
        slot = self.ann_slot
        if slot is None or int(self.active.sum()) < ANN_CONFIG.threshold:
            return None
        return slot.ready()

    # --- search ------------------------------------------------------------------------------
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
        exact: bool = False,
    ) -> list[Hit]:
        """Top ``limit`` memories by composite score, then single-hop link expansion, then the
        memories ``related`` offers for the hits (entity hop), all re-sorted together.

        ``similarity`` (memory id -> cosine) replaces the computed similarity of those rows:
        database-side search passes what pgvector measured, so both paths score one number.
        An offered memory scores max(its own score, hit score x weight x expansion), like a
        link neighbour; the filters apply to it as to any other row, and an id that is not in
        this (per-user) index is ignored, so an offer can never leak another user's memory.

        Above the ANN threshold the composite is computed over a candidate pool (ANN vector
        pool | lexical pool | rows outside the graph that the filters ask for); ``exact``
        forces the full scan (the benchmark's reference).
        """
        if not self.row_of or limit <= 0:
            return []
        mask = self._mask(sectors, states)
        if not mask.any():
            return []
        q = np.asarray(query_vector, dtype=np.float32)
        lex_all = (
            normalise(self.bm25.scores(query_text)) if weights.lexical else np.zeros(self.rows)
        )
        pool = None if exact or similarity else self._candidates(q, mask, limit, lex_all)
        scored = _Scored(self, q, lex_all, now_epoch, weights, mask, similarity, pool)
        if pool is not None and not self._complete(scored, pool, weights, limit, wide=False):
            # Many rows outside the pool could still make the top (a large group of equal
            # lexical matches, say): a wider vector pool lowers the similarity bound of the
            # rest. Failing that, score every row.
            pool = self._candidates(q, mask, limit, lex_all, widen=WIDEN)
            scored = _Scored(self, q, lex_all, now_epoch, weights, mask, similarity, pool)
            if pool is not None and not self._complete(scored, pool, weights, limit, wide=True):
                scored = _Scored(self, q, lex_all, now_epoch, weights, mask, similarity, None)
        score = scored.score
        k = min(limit, int(np.isfinite(score).sum()))
        if k <= 0:
            return []
        at = np.argpartition(-score, k - 1)[:k] if k < len(score) else np.arange(len(score))
        at = at[np.isfinite(score[at])]
        top = scored.rows[at]
        # Deterministic order: score desc, then id asc for ties.
        top = top[np.lexsort((self.ids[top], -score[at]))]
        top_list = [int(r) for r in top.tolist()]
        best: dict[int, tuple[float, int | None]] = {r: (scored.of(r), None) for r in top_list}

        def offer(nrow: int, parent_row: int, weight: float) -> None:
            own = scored.of(nrow)
            boosted = max(own, scored.of(parent_row) * weight * weights.expansion)
            current = best.get(nrow)
            if current is None or boosted > current[0]:
                best[nrow] = (boosted, parent_row if boosted > own else None)

        if expand:
            # A sub-stage of "search" in the metrics and traces (db/metrics.py).
            with time_query_stage("expand"), tracing.span("memory_query.expand"):
                wanted: list[tuple[int, int, float]] = []
                for r in top_list:
                    taken = 0
                    for nrow, w in self.neighbours(r):
                        if taken >= expand_per_hit:
                            break
                        if not mask[nrow]:
                            continue
                        taken += 1
                        wanted.append((nrow, r, w))
                scored.include([n for n, _, _ in wanted])
                for nrow, r, w in wanted:
                    offer(nrow, r, w)
        if related is not None and top_list:
            top_rows = set(top_list)
            offers: list[tuple[int, int, float]] = []
            for parent_id, items in related([int(self.ids[r]) for r in top_list]).items():
                prow = self.row_of.get(parent_id)
                if prow is None or prow not in top_rows:
                    continue
                for mid, w in items:
                    target = self.row_of.get(mid)
                    if target is not None and target != prow and mask[target]:
                        offers.append((target, prow, w))
            scored.include([t for t, _, _ in offers])
            for target, prow, w in offers:
                offer(target, prow, w)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], int(self.ids[kv[0]])))[:limit]
        return [
            Hit(
                memory_id=int(self.ids[r]),
                score=s,
                similarity=scored.component("sim", r),
                salience=float(self.salience[r]),
                recency=scored.component("rec", r),
                link=float(self.link_avg[r]),
                lexical=float(lex_all[r]),
                via=int(self.ids[via]) if via is not None else None,
            )
            for r, (s, via) in ranked
        ]

    def _candidates(
        self, q: F32, mask: Bools, limit: int, lex_all: F64, widen: int = 1
    ) -> _Pool | None:
        """Rows to score first, or None for all of them (exact)."""
        ann = self.ann()
        if ann is None:
            return None
        covered = mask & self.active  # what the graph holds among the rows asked for
        n_covered = int(covered.sum())
        if n_covered < ANN_CONFIG.threshold:
            # A narrow filter: scanning just its rows exactly is cheap.
            return _Pool(np.flatnonzero(mask), -1.0)
        members = int(self.active.sum())
        pool = max(ANN_CONFIG.min_pool, ANN_CONFIG.per_result * limit)
        lexical_pool = pool
        pool *= widen
        # The graph is searched over every member: widen the pool by how much the filters
        # thin it out, so about ``pool`` of the proposed rows pass them.
        want = min(members, math.ceil(pool * members / n_covered))
        with time_query_stage("ann"), tracing.span("memory_query.ann"):
            found = ann.search(q, want)
        row_of = self.row_of
        vec_rows = np.asarray(
            [r for r in (row_of.get(int(i)) for i in found.tolist()) if r is not None],
            dtype=np.int64,
        )
        # Members outside the vector pool are (up to the graph's recall) no more similar than
        # its least similar row; with the whole graph in the pool there is no such member.
        floor = -1.0
        if want < members and len(vec_rows):
            floor = float((self.vectors[vec_rows] @ q).min())
        parts = [vec_rows, np.flatnonzero(mask & ~self.active)]
        lexical = np.where(mask, lex_all, 0.0)
        hits = int((lexical > 0).sum())
        if hits:
            take = min(lexical_pool, hits)
            parts.append(np.argpartition(-lexical, take - 1)[:take])
        rows = np.unique(np.concatenate(parts))
        return _Pool(rows[mask[rows]], floor)

    def _complete(
        self, scored: _Scored, pool: _Pool, weights: Weights, limit: int, *, wide: bool
    ) -> bool:
        """Add every row outside the pool whose score could still reach the top ``limit``.

        A row outside the pool has similarity <= ``sim_floor``, and every other component of
        its score is known without its vector (lexical, salience, recency, link), so an upper
        bound of its composite is cheap for all rows at once; only rows whose bound reaches the
        current ``limit``-th score are scored. The result then equals the exact scan's,
        provided the graph returned the true nearest rows. False when that would be too many
        rows, more than a tenth of the index: the caller widens the pool, or, ``wide``, scans
        every row."""
        sim_floor = pool.sim_floor
        if min(weights.similarity, weights.salience, weights.recency, weights.link) < 0:
            return False
        if weights.lexical < 0:
            return False
        outside = scored.mask.copy()
        outside[scored.rows] = False
        if not outside.any():
            return True
        finite = scored.score[np.isfinite(scored.score)]
        kth = -np.inf
        if len(finite) >= limit:
            kth = float(np.partition(finite, len(finite) - limit)[len(finite) - limit])
        bound = (
            weights.similarity * sim_floor
            + weights.lexical * scored.lex_all
            + weights.salience * self.salience
            + weights.link * self.link_avg
        )
        if weights.recency:
            bound = bound + weights.recency * recency_scores(
                self.lambdas, self.last_seen, scored.now
            )
        extra = np.flatnonzero(outside & (bound >= kth - 1e-9))
        if len(extra) > max(5000, self.rows // 10):
            return False
        scored.include(extra, distinct=True)  # outside the pool, from flatnonzero
        return True

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
        if not self.row_of or k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        allowed = self.active.copy() if active_only else self.alive.copy()
        for mid in exclude:
            row = self.row_of.get(mid)
            if row is not None:
                allowed[row] = False
        ann = self.ann() if active_only else None
        if ann is not None:
            want = max(ANN_CONFIG.min_pool, ANN_CONFIG.per_result * k) + len(set(exclude))
            found = [self.row_of.get(int(i)) for i in ann.search(q, want).tolist()]
            rows = np.asarray([r for r in found if r is not None], dtype=np.int64)
            rows = rows[allowed[rows]]
            sim = self.vectors[rows] @ q if len(rows) else np.zeros(0, dtype=np.float32)
        else:
            rows = np.flatnonzero(allowed)
            sim = (self.vectors @ q)[rows]
        if not len(rows):
            return []
        sim = np.where(sim >= min_similarity, sim, -np.inf)
        k = min(k, len(rows))
        at = np.argpartition(-sim, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        at = at[np.isfinite(sim[at])]
        at = at[np.lexsort((self.ids[rows[at]], -sim[at]))]
        return [(int(self.ids[rows[i]]), float(sim[i])) for i in at]

    def _mask(
        self, sectors: Iterable[str] | None, states: Iterable[str] | None
    ) -> npt.NDArray[np.bool_]:
        if states is None:
            mask = self.active.copy()
        else:
            codes = [i for i, name in enumerate(self.state_names) if name in set(states)]
            mask = self.alive & np.isin(self.state_code, codes)
        if sectors is not None:
            codes = [SECTORS.index(s) for s in sectors if s in SECTORS]
            mask &= np.isin(self.sector_code, codes)
        return mask

    # --- incremental update -----------------------------------------------------------------
    def apply(self, delta: Delta) -> UserIndex:
        """A new index at ``delta.version``: this one with ``delta`` applied. This index is
        left untouched (readers may still hold it)."""
        new = UserIndex.__new__(UserIndex)
        new.__dict__.update(self.__dict__)
        new.version = delta.version
        new.salience = self.salience.copy()
        new.last_seen = self.last_seen.copy()
        new.created = self.created.copy()
        new.valid_to = self.valid_to.copy()
        new.sector_of = self.sector_of.copy()
        new.sector_vocab = list(self.sector_vocab)
        new.state_names = list(self.state_names)
        new.state_code = self.state_code.copy()
        new.alive = self.alive.copy()
        new.contents = list(self.contents)
        new.sources = list(self.sources)
        new.row_of = dict(self.row_of)
        new.fingerprints = dict(self.fingerprints or {})
        touched = {int(m.id) for m in delta.upserts} | {int(i) for i in delta.removed}
        rows_changed = False

        def tombstone(mid: int) -> None:
            row = new.row_of.pop(mid, None)
            if row is not None:
                new.alive[row] = False
                new.dead += 1

        for mid in delta.removed:
            tombstone(int(mid))
            new.fingerprints.pop(int(mid), None)
        appended: list[IndexedMemory] = []
        for m in delta.upserts:
            row = new.row_of.get(m.id)
            if (
                row is not None
                and new.contents[row] == m.content
                and np.array_equal(self.vectors[row], m.vector)
            ):
                new._set_row(row, m)  # reinforced, superseded, ...: same text and vector
            else:
                tombstone(m.id)
                appended.append(m)
        if appended or new.dead != self.dead:
            rows_changed = True
        if appended:
            new._append(appended)
        new.fingerprints.update(delta.fingerprints)
        new._derive_sectors()
        new.active = new._active_rows()
        if rows_changed:
            new.bm25 = BM25.from_csr(new.term_flat, new.term_off, new.alive)
        src, dst, w = self._links
        if touched:
            t = np.fromiter(touched, dtype=np.int64)
            keep = ~(np.isin(src, t) | np.isin(dst, t))
            add_src, add_dst, add_w = _link_arrays(delta.links)
            new._links = (
                np.concatenate([src[keep], add_src]),
                np.concatenate([dst[keep], add_dst]),
                np.concatenate([w[keep], add_w]),
            )
        new._link_avg_override = None
        if new.dead > max(1024, new.rows // 3):
            new = new._compacted()
        else:
            new._build_links()
        if new.ann_slot is not None:
            new.ann_slot.follow(new, touched)
        return new

    def _set_row(self, row: int, m: IndexedMemory) -> None:
        self.salience[row] = m.salience
        self.last_seen[row] = m.last_seen_epoch
        self.created[row] = m.created_epoch
        self.valid_to[row] = math.nan if m.valid_to_epoch is None else m.valid_to_epoch
        self.sector_of[row] = encode([m.sector], self.sector_vocab)[0]
        self.state_code[row] = encode([m.state], self.state_names)[0]
        self.sources[row] = tuple(m.sources)

    def _append(self, items: list[IndexedMemory]) -> None:
        start = self.rows
        dim = self.vectors.shape[1] if self.vectors.ndim == 2 and self.rows else 0
        dim = dim or items[0].vector.shape[0]
        new_vecs = np.stack([np.asarray(m.vector, dtype=np.float32) for m in items])
        if self.rows == 0:
            self.vectors = np.zeros((0, dim), dtype=np.float32)
        self._buffer, self.vectors = self._buffer.extend(self.vectors, new_vecs)
        self.ids = np.concatenate([self.ids, np.array([m.id for m in items], dtype=np.int64)])
        self.salience = np.concatenate([self.salience, [m.salience for m in items]])
        self.last_seen = np.concatenate([self.last_seen, [m.last_seen_epoch for m in items]])
        self.created = np.concatenate([self.created, [m.created_epoch for m in items]])
        self.valid_to = np.concatenate(
            [
                self.valid_to,
                [math.nan if m.valid_to_epoch is None else m.valid_to_epoch for m in items],
            ]
        )
        self.sector_of = np.concatenate(
            [self.sector_of, encode([m.sector for m in items], self.sector_vocab)]
        )
        self.state_code = np.concatenate(
            [self.state_code, encode([m.state for m in items], self.state_names)]
        )
        self.alive = np.concatenate([self.alive, np.ones(len(items), dtype=bool)])
        self.contents += [m.content for m in items]
        self.sources += [tuple(m.sources) for m in items]
        flat, offsets = docs_terms([m.content for m in items])
        self.term_flat = np.concatenate([self.term_flat, flat])
        self.term_off = np.concatenate([self.term_off, offsets[1:] + self.term_off[-1]])
        for i, m in enumerate(items):
            self.row_of[m.id] = start + i

    def _compacted(self) -> UserIndex:
        """The same index without tombstones (rows renumbered; the ANN graph is keyed by id and
        carries over unchanged)."""
        live = np.flatnonzero(self.alive)
        lengths = np.diff(self.term_off)[live]
        offsets = np.zeros(len(live) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        owners = np.repeat(np.arange(self.rows), np.diff(self.term_off))
        flat = self.term_flat[self.alive[owners]]
        out = UserIndex.from_columns(
            self.version,
            self.model,
            ids=self.ids[live],
            vectors=np.array(self.vectors[live], dtype=np.float32),
            salience=self.salience[live],
            last_seen=self.last_seen[live],
            created=self.created[live],
            valid_to=self.valid_to[live],
            sector_vocab=list(self.sector_vocab),
            sector_of=self.sector_of[live],
            state_names=list(self.state_names),
            state_code=self.state_code[live],
            contents=[self.contents[r] for r in live.tolist()],
            sources=[self.sources[r] for r in live.tolist()],
            term_flat=flat,
            term_off=offsets,
            links=self._links,
            fingerprints=self.fingerprints,
        )
        out.ann_slot = self.ann_slot
        return out


@dataclass(frozen=True, slots=True)
class _Pool:
    rows: npt.NDArray[np.int64]
    sim_floor: float


class _Scored:
    """Composite components of the rows being considered: all rows (exact) or a candidate
    pool, extended on demand with expansion targets outside it."""

    def __init__(
        self,
        index: UserIndex,
        q: F32,
        lex_all: F64,
        now_epoch: float,
        weights: Weights,
        mask: Bools,
        similarity: Mapping[int, float] | None,
        pool: _Pool | None,
    ) -> None:
        self.index, self.q, self.lex_all = index, q, lex_all
        self.now, self.weights, self.mask = now_epoch, weights, mask
        self.override = similarity or {}
        # Position of each row in the arrays below; -1: not scored. None: every row, in order.
        self.pos: I64 | None = None
        if pool is None:
            self.rows = np.arange(index.rows, dtype=np.int64)
            sim = index.vectors @ q
        else:
            self.rows = pool.rows
            self.pos = np.full(index.rows, -1, dtype=np.int64)
            self.pos[pool.rows] = np.arange(len(pool.rows))
            sim = index.vectors[pool.rows] @ q if len(pool.rows) else np.zeros(0, np.float32)
        self.sim, self.rec, self.score = self._components(self.rows, sim)

    def _components(self, rows: npt.NDArray[np.int64], sim: F32) -> tuple[F64, F64, F64]:
        ix = self.index
        sim64 = sim.astype(np.float64)
        if self.override:
            for mid, value in self.override.items():
                row = ix.row_of.get(mid)
                if row is None:
                    continue
                # Only the exact path takes overrides (``search``), where position == row.
                if row < len(sim64) and rows[row] == row:
                    sim64[row] = np.float32(value)
        rec = recency_scores(ix.lambdas[rows], ix.last_seen[rows], self.now)
        score = composite_scores(
            sim64, ix.salience[rows], rec, ix.link_avg[rows], self.lex_all[rows], self.weights
        )
        return sim64, rec, np.where(self.mask[rows], score, -np.inf)

    def include(self, rows: Sequence[int] | I64, *, distinct: bool = False) -> None:
        """Score rows outside the pool (bound completion, expansion and entity-hop targets);
        ``distinct``: ``rows`` has no repeats and none of them is scored yet."""
        if self.pos is None or not len(rows):
            return
        arr = np.asarray(rows, dtype=np.int64)
        if not distinct:
            arr = np.unique(arr)
            arr = arr[self.pos[arr] < 0]
        if not len(arr):
            return
        sim, rec, score = self._components(arr, self.index.vectors[arr] @ self.q)
        self.pos[arr] = np.arange(len(self.rows), len(self.rows) + len(arr))
        self.rows = np.concatenate([self.rows, arr])
        self.sim = np.concatenate([self.sim, sim])
        self.rec = np.concatenate([self.rec, rec])
        self.score = np.concatenate([self.score, score])

    def _at(self, row: int) -> int:
        return row if self.pos is None else int(self.pos[row])

    def of(self, row: int) -> float:
        return float(self.score[self._at(row)])

    def component(self, name: str, row: int) -> float:
        values = self.sim if name == "sim" else self.rec
        return float(values[self._at(row)])


def encode(names: Sequence[str], vocab: list[str]) -> I16:
    """Codes of ``names`` in ``vocab`` (extended in place with new names)."""
    code = {name: i for i, name in enumerate(vocab)}
    out = np.empty(len(names), dtype=np.int16)
    for i, name in enumerate(names):
        c = code.get(name)
        if c is None:
            c = code[name] = len(vocab)
            vocab.append(name)
        out[i] = c
    return out


def _sources(value: tuple[Any, ...] | str) -> tuple[Any, ...]:
    if isinstance(value, str):
        decoded = json.loads(value)
        return tuple(decoded) if isinstance(decoded, list) else ()
    return value


def _link_arrays(links: Sequence[Link]) -> tuple[I64, I64, F64]:
    return (
        np.array([link.source for link in links], dtype=np.int64),
        np.array([link.target for link in links], dtype=np.int64),
        np.array([link.weight for link in links], dtype=np.float64),
    )


class IndexCache:
    """LRU of per-user indexes, keyed by (namespace, user id), validated by version."""

    def __init__(self, max_users: int = 256) -> None:
        self._max = max_users
        self._items: OrderedDict[tuple[str, str], UserIndex] = OrderedDict()
        self._lock = threading.Lock()
        # Called with the key of every invalidated entry (the loader drops its disk snapshot).
        self.on_invalidate: Callable[[tuple[str, str]], None] | None = None

    def get(self, key: tuple[str, str], version: int, model: str) -> UserIndex | None:
        with self._lock:
            index = self._items.get(key)
            if index is None or index.version != version or index.model != model:
                return None
            self._items.move_to_end(key)
            return index

    def peek(self, key: tuple[str, str], model: str) -> UserIndex | None:
        """The cached index of ``key`` whatever its version (a base to refresh from)."""
        with self._lock:
            index = self._items.get(key)
            return index if index is not None and index.model == model else None

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
        if self.on_invalidate is not None:
            self.on_invalidate(key)

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
    fingerprints: Mapping[int, Fingerprint] | None = None,
) -> UserIndex:
    return UserIndex(
        version=version,
        model=model,
        memories=list(memories),
        links=list(links),
        link_avg=link_avg,
        fingerprints=fingerprints,
    )
