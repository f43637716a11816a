"""Load a user's memories, vectors and links from the database into a :class:`UserIndex`.

Shared by retrieval (read engine) and the writer (inside the worker's write transaction), with
one process-wide cache keyed by (database, user) and validated by ``users.memory_version``.

When the version moved, the cached index is *refreshed*, not rebuilt: one narrow query lists
the user's (memory id, ``updated_at``, embedding id), and only memories whose triple changed
are read and decrypted (:meth:`UserIndex.apply`). The same refresh brings a snapshot from
disk (:mod:`memory.snapshot`) up to date, which is how a large user's first query after a
restart avoids decrypting and tokenising every memory. Large users get an ANN graph, built
in the background (exact search answers meanwhile) and then kept up to date by each refresh.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from sqlalchemy import String, Text, bindparam, or_, select, type_coerce
from sqlalchemy.orm import Session, aliased

from db import crypto
from db.metrics import time_query_stage
from db.models import Memory, MemoryEmbedding, MemoryLink, User
from memory import snapshot
from memory.ann import AnnDtype
from memory.index import (
    ANN_CONFIG,
    AnnSlot,
    Delta,
    Fingerprint,
    IndexCache,
    IndexedMemory,
    Link,
    UserIndex,
    encode,
)
from memory.lexical import docs_terms

log = structlog.get_logger("voxmem.index")

CACHE = IndexCache()


@dataclass
class PersistConfig:
    """Where and when large users' indexes are written to disk (``configure``)."""

    directory: Path | None = None
    # Users with fewer memories rebuild from the database fast enough (~0.3 s at 10k).
    min_memories: int = 20_000
    # A refreshed index is written again after this many changed memories, or after
    # ``interval_secs`` with any change; a removal rewrites it at once (the removed
    # memory's ciphertext must not linger on disk).
    every_changes: int = 1000
    interval_secs: float = 600.0
    # ANN builds and snapshot writes run on a background thread; False runs them inline
    # (tests, benchmarks).
    background: bool = True


PERSIST = PersistConfig()


def configure(
    *,
    ann_threshold: int | None = None,
    ann_dtype: AnnDtype | None = None,
    ann_min_pool: int | None = None,
    ann_per_result: int | None = None,
    persist: bool | None = None,
    persist_dir: Path | None = None,
    persist_min_memories: int | None = None,
    background: bool | None = None,
) -> None:
    """Process-wide index settings (``memory.engine`` calls this from Settings)."""
    if ann_threshold is not None:
        ANN_CONFIG.threshold = max(1, ann_threshold)
    if ann_dtype is not None:
        ANN_CONFIG.dtype = ann_dtype
    if ann_min_pool is not None:
        ANN_CONFIG.min_pool = max(1, ann_min_pool)
    if ann_per_result is not None:
        ANN_CONFIG.per_result = max(1, ann_per_result)
    if persist is False:
        PERSIST.directory = None
    elif persist_dir is not None:
        PERSIST.directory = persist_dir
    if persist_min_memories is not None:
        PERSIST.min_memories = max(1, persist_min_memories)
    if background is not None:
        PERSIST.background = background


def vector_to_bytes(vector: np.ndarray[tuple[int], np.dtype[np.float32]]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def bytes_to_vector(raw: bytes, dim: int) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    v = np.frombuffer(raw, dtype="<f4")
    if v.shape[0] != dim:
        raise ValueError(f"stored vector has {v.shape[0]} floats, row says {dim}")
    return v.astype(np.float32)


def _epoch(value: datetime | str | None) -> float:
    """A datetime column as unix time, from the driver's value or SQLite's stored text."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def cache_key(session: Session, user_id: str) -> tuple[str, str]:
    # Keyed by database too: tests and tools may open several databases in one process.
    return (str(session.get_bind().engine.url), user_id)


# Asked before every search (is the cached index current?): prebuilt, and run on the
# session's connection, which skips the ORM's statement handling (~0.15 ms a call).
_USER_VERSION = select(User.memory_version).where(User.user_id == bindparam("user_id"))


def user_version(session: Session, user_id: str) -> int | None:
    value = session.connection().execute(_USER_VERSION, {"user_id": user_id}).scalar()
    return int(value) if value is not None else None


# The columns an index row needs, read raw: the text as its Fernet token (decrypted here, in
# one loop), datetimes and provenance as stored (no per-row type processing).
_ROW_COLUMNS = (
    Memory.id,
    type_coerce(Memory.content, Text),
    Memory.sector_type,
    Memory.state,
    Memory.salience,
    type_coerce(Memory.recency, String),
    type_coerce(Memory.sources, String),
    type_coerce(Memory.created_at, String),
    type_coerce(Memory.valid_to, String),
    type_coerce(Memory.updated_at, String),
    MemoryEmbedding.id,
    MemoryEmbedding.embedding,
    MemoryEmbedding.dimension,
)


@dataclass
class _Rows:
    """Rows of the user's memories as index columns (the bulk path builds no per-memory
    objects)."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    salience: npt.NDArray[np.float64]
    last_seen: npt.NDArray[np.float64]
    created: npt.NDArray[np.float64]
    valid_to: npt.NDArray[np.float64]  # NaN: still valid
    sectors: list[str]
    states: list[str]
    contents: list[str]
    sources: list[Any]  # JSON text as stored (SQLite) or decoded lists (PostgreSQL)
    fingerprints: dict[int, Fingerprint]

    def memories(self) -> list[IndexedMemory]:
        return [
            IndexedMemory(
                id=int(self.ids[i]),
                content=self.contents[i],
                sector=self.sectors[i],
                state=self.states[i],
                salience=float(self.salience[i]),
                last_seen_epoch=float(self.last_seen[i]),
                vector=self.vectors[i],
                sources=_sources(self.sources[i]),
                created_epoch=float(self.created[i]),
                valid_to_epoch=None if np.isnan(self.valid_to[i]) else float(self.valid_to[i]),
            )
            for i in range(len(self.ids))
        ]

    def index(self, version: int, model: str, links: Sequence[Link]) -> UserIndex:
        flat, offsets = docs_terms(self.contents)
        sector_vocab: list[str] = []
        state_names: list[str] = []
        return UserIndex.from_columns(
            version,
            model,
            ids=self.ids,
            vectors=self.vectors,
            salience=self.salience,
            last_seen=self.last_seen,
            created=self.created,
            valid_to=self.valid_to,
            sector_vocab=sector_vocab,
            sector_of=encode(self.sectors, sector_vocab),
            state_names=state_names,
            state_code=encode(self.states, state_names),
            contents=self.contents,
            sources=[s if isinstance(s, str) else _sources(s) for s in self.sources],
            term_flat=flat,
            term_off=offsets,
            links=(
                np.array([link.source for link in links], dtype=np.int64),
                np.array([link.target for link in links], dtype=np.int64),
                np.array([link.weight for link in links], dtype=np.float64),
            ),
            fingerprints=self.fingerprints,
        )


def _fetch(session: Session, user_id: str, model: str, ids: Collection[int] | None = None) -> _Rows:
    query = (
        select(*_ROW_COLUMNS)
        .join(MemoryEmbedding, MemoryEmbedding.memory_id == Memory.id)
        .where(Memory.user_id == user_id, MemoryEmbedding.embedding_model == model)
        .order_by(Memory.id)
    )
    rows: list[Any] = []
    if ids is None:
        rows = list(session.execute(query).all())
    else:
        wanted = sorted(ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows += session.execute(query.where(Memory.id.in_(chunk))).all()
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(_ROW_COLUMNS)
    (mid, token, sector, state, salience, recency, sources, created, valid_to) = cols[:9]
    updated, emb_id, raw, dims = cols[9:]
    decrypt = crypto.keyring().decrypt
    ids_arr = np.array(mid, dtype=np.int64)
    return _Rows(
        ids=ids_arr,
        vectors=_matrix(raw, dims),
        salience=np.array(salience, dtype=np.float64),
        last_seen=_epochs(recency),
        created=_epochs(created),
        valid_to=_epochs(valid_to, missing=np.nan),
        sectors=list(sector),
        states=list(state),
        contents=[decrypt(str(t)) for t in token],
        sources=list(sources),
        fingerprints=dict(
            zip(
                ids_arr.tolist(),
                zip([str(u) for u in updated], [int(e) for e in emb_id], strict=True),
                strict=True,
            )
        ),
    )


def _matrix(raw: Sequence[bytes], dims: Sequence[int]) -> npt.NDArray[np.float32]:
    if not raw:
        return np.zeros((0, 0), dtype=np.float32)
    dim = int(dims[0])
    if any(int(d) != dim or len(r) != 4 * dim for r, d in zip(raw, dims, strict=True)):
        for r, d in zip(raw, dims, strict=True):
            bytes_to_vector(r, int(d))  # raises on the row that does not fit
        raise ValueError("stored vectors of different dimensions for one model")
    flat = np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), dim)
    return np.array(flat, dtype=np.float32)


def _epochs(values: Sequence[Any], missing: float = 0.0) -> npt.NDArray[np.float64]:
    """Datetime column values as unix times; ``missing`` for NULL. SQLite's stored text is
    parsed by numpy in one call; driver datetimes (PostgreSQL) one by one."""
    if all(v is None or isinstance(v, str) for v in values):
        try:
            parsed = np.array(values, dtype="datetime64[us]")
        except ValueError:
            parsed = None
        if parsed is not None:
            out = parsed.astype(np.int64).astype(np.float64) / 1e6
            out[np.isnat(parsed)] = missing
            return out
    return np.array([missing if v is None else _epoch(v) for v in values], dtype=np.float64)


def _sources(raw: Any) -> tuple[Any, ...]:
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return tuple(value) if isinstance(value, list | tuple) else ()


def load_memories(
    session: Session, user_id: str, model: str, ids: Collection[int] | None = None
) -> list[IndexedMemory]:
    """The user's memories with a ``model`` embedding (decrypted), by id; only ``ids`` when
    given (database-side search loads its candidates, never the whole user)."""
    if ids is not None and not ids:
        return []
    return _fetch(session, user_id, model, ids).memories()


def load_links_from(
    session: Session, user_id: str, model: str, source_ids: Collection[int]
) -> list[Link]:
    """Outgoing links of ``source_ids`` whose target is one of the user's memories with a
    ``model`` embedding: exactly the links a full index of the user would keep for them."""
    if not source_ids:
        return []
    target = aliased(Memory)
    has_vector = (
        select(MemoryEmbedding.id)
        .where(
            MemoryEmbedding.memory_id == MemoryLink.target_memory_id,
            MemoryEmbedding.embedding_model == model,
        )
        .exists()
    )
    rows = session.execute(
        select(MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight)
        .join(target, target.id == MemoryLink.target_memory_id)
        .where(
            MemoryLink.source_memory_id.in_(list(source_ids)),
            MemoryLink.source_memory_id != MemoryLink.target_memory_id,
            target.user_id == user_id,
            has_vector,
        )
    ).all()
    return [Link(int(s), int(t), float(w)) for s, t, w in rows]


def _user_links(session: Session, user_id: str) -> list[Link]:
    rows = session.execute(
        select(MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight)
        .join(Memory, Memory.id == MemoryLink.source_memory_id)
        .where(Memory.user_id == user_id)
    ).all()
    return [Link(int(s), int(t), float(w)) for s, t, w in rows]


def _links_touching(session: Session, ids: Collection[int]) -> list[Link]:
    """Every link with its source or its target in ``ids`` (all of one user's memories)."""
    out: dict[tuple[int, int], Link] = {}
    wanted = sorted(ids)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for s, t, w in session.execute(
            select(
                MemoryLink.source_memory_id, MemoryLink.target_memory_id, MemoryLink.link_weight
            ).where(
                or_(
                    MemoryLink.source_memory_id.in_(chunk),
                    MemoryLink.target_memory_id.in_(chunk),
                )
            )
        ):
            out[(int(s), int(t))] = Link(int(s), int(t), float(w))
    return list(out.values())


def load_index(session: Session, user_id: str, model: str, version: int) -> UserIndex:
    """The user's full index from the database (every memory read and decrypted)."""
    return _fetch(session, user_id, model).index(version, model, _user_links(session, user_id))


def scan(session: Session, user_id: str, model: str) -> dict[int, Fingerprint]:
    """(memory id -> fingerprint) of the user's memories with a ``model`` embedding: the
    narrow read that tells a refresh what changed (no text, no vector)."""
    # The driver's cursor directly: at 100k rows SQLAlchemy's result rows and per-value
    # conversions cost as much as SQLite's own read (~0.2 s here), and the values are only
    # compared for equality. Same connection, so same transaction and snapshot.
    conn = session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            f"SELECT m.id, m.updated_at, e.id FROM {Memory.__tablename__} m "  # noqa: S608
            f"JOIN {MemoryEmbedding.__tablename__} e ON e.memory_id = m.id "
            f"WHERE m.user_id = {mark} AND e.embedding_model = {mark}",
            (user_id, model),
        )
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if rows and not isinstance(rows[0][1], str):  # PostgreSQL hands back datetimes
        return {int(mid): (str(updated), int(emb)) for mid, updated, emb in rows}
    return {mid: (updated, emb) for mid, updated, emb in rows}


def refresh(
    session: Session, base: UserIndex, user_id: str, model: str, version: int
) -> UserIndex | None:
    """``base`` brought to the database's current state at ``version``; None when too much
    changed for a refresh to beat a full load. ``index.delta_size`` tells what it applied."""
    if base.fingerprints is None:
        return None
    if base.version == version:
        # Nothing was written since: every write bumps the version in its transaction (the
        # same trust the in-process cache places in it; `voxmem restore`, which can take a
        # user's version back, deletes the snapshots).
        return base
    current = scan(session, user_id, model)
    old = base.fingerprints
    changed = [mid for mid, _ in current.items() - old.items()]
    removed = list(old.keys() - current.keys())
    if len(changed) > max(2000, len(current) // 2):
        return None
    upserts: list[IndexedMemory] = []
    fingerprints: dict[int, Fingerprint] = {}
    if changed:
        rows = _fetch(session, user_id, model, changed)
        upserts, fingerprints = rows.memories(), rows.fingerprints
    # A memory that vanished between the two reads is treated as removed.
    removed += [mid for mid in changed if mid not in fingerprints]
    touched = {m.id for m in upserts} | set(removed)
    links = _links_touching(session, touched) if touched else []
    index = base.apply(
        Delta(
            version=version,
            upserts=upserts,
            removed=removed,
            links=links,
            fingerprints=fingerprints,
        )
    )
    index.delta_size = (len(upserts), len(removed))
    return index


# --- the process-wide cache with refresh, snapshots and background ANN builds ---------------
_key_locks: dict[tuple[str, str], threading.Lock] = {}
_key_locks_guard = threading.Lock()


def _lock_for(key: tuple[str, str]) -> threading.Lock:
    with _key_locks_guard:
        lock = _key_locks.get(key)
        if lock is None:
            if len(_key_locks) > 4 * 4096:
                # Bounded. Dropping a lock someone holds costs at most one duplicate load of
                # that user (the cache keeps the newer version).
                _key_locks.clear()
            lock = _key_locks[key] = threading.Lock()
        return lock


@dataclass
class _PersistState:
    version: int
    at: float
    changed: int = 0


_persisted: dict[tuple[str, str], _PersistState] = {}
# Keys forgotten in this process: never written to disk again by it.
_forgotten: set[tuple[str, str]] = set()


def _on_invalidate(key: tuple[str, str]) -> None:
    """A user's data was erased (``forget``): drop their snapshot at once."""
    _forgotten.add(key)
    _persisted.pop(key, None)
    if PERSIST.directory is not None:
        snapshot.delete(PERSIST.directory, key)


CACHE.on_invalidate = _on_invalidate


class _Background:
    """One daemon thread running ANN builds and snapshot writes, at most one pending job of
    each kind per user."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, tuple[str, str]]] = queue.Queue()
        self._jobs: dict[tuple[str, tuple[str, str]], Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, kind: str, key: tuple[str, str], job: Callable[[], None]) -> None:
        if not PERSIST.background:
            _run(kind, key, job)
            return
        with self._lock:
            fresh = (kind, key) not in self._jobs
            self._jobs[(kind, key)] = job  # the newest job of a kind replaces a queued one
            self.idle.clear()
            if fresh:
                self._queue.put((kind, key))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="voxmem-index", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                kind, key = self._queue.get(timeout=30)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            with self._lock:
                job = self._jobs.pop((kind, key), None)
            if job is not None:
                _run(kind, key, job)
            with self._lock:
                if not self._jobs:
                    self.idle.set()

    def wait(self, timeout: float = 600.0) -> bool:
        """Until every queued job ran (tests and benchmarks)."""
        return self.idle.wait(timeout)


def _run(kind: str, key: tuple[str, str], job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:  # a background cache job must never take the process down
        log.exception("index.background_failed", job=kind, user_id=key[1])


BACKGROUND = _Background()


def _persist_now(key: tuple[str, str], slot: AnnSlot | None, index: UserIndex) -> None:
    directory = PERSIST.directory
    if directory is None or key in _forgotten:
        return
    latest, nonce, dtype = index, snapshot.new_nonce(), None
    if slot is not None:
        with slot.lock:
            # The graph is written while no refresh can move it (searches wait for the write,
            # ~0.1 s at 100k), so the graph on disk matches the index version taken with it;
            # the rest of the snapshot is written from that immutable version afterwards.
            latest = slot.latest or index
            if slot.ann is not None and latest.fingerprints is not None:
                snapshot.save_ann(directory, key, nonce, slot.ann)
                dtype = slot.ann.dtype
    if latest.fingerprints is None:
        return
    snapshot.save(directory, key, latest, crypto.keyring(), nonce=nonce, ann_dtype=dtype)
    if key in _forgotten:  # erased while we wrote
        snapshot.delete(directory, key)
        return
    _persisted[key] = _PersistState(latest.version, time.monotonic())


def _build_ann(key: tuple[str, str], slot: AnnSlot) -> None:
    started = time.perf_counter()
    if slot.build(ANN_CONFIG.dtype):
        latest = slot.latest
        log.info(
            "index.ann_built",
            user_id=key[1],
            memories=len(latest) if latest is not None else 0,
            seconds=round(time.perf_counter() - started, 2),
        )
        if latest is not None and len(latest) >= PERSIST.min_memories:
            _persist_now(key, slot, latest)


def _after_put(
    key: tuple[str, str], index: UserIndex, *, how: str, changed: int, removed: bool, ann: bool
) -> None:
    """Background work a new version may call for: an ANN build, a snapshot write."""
    if index.fingerprints is None:
        return
    slot = index.ann_slot
    members = int(index.active.sum())
    if ann and slot is not None and slot.ann is None and not slot.building:
        if members >= ANN_CONFIG.threshold:
            BACKGROUND.submit("ann", key, lambda: _build_ann(key, slot))
            return  # the build writes the snapshot when it is done
    if how == "cache" or PERSIST.directory is None or key in _forgotten:
        return
    if members >= ANN_CONFIG.threshold and (slot is None or slot.ann is None):
        # A process without the user's graph (a worker: it never builds one) must not replace
        # a snapshot that has it; the process that builds the graph writes the snapshot.
        return
    if len(index) < PERSIST.min_memories:
        return
    state = _persisted.get(key)
    if how == "database":
        due = True
    elif how == "snapshot":
        due = changed > 0 and (removed or changed >= PERSIST.every_changes)
        if state is None:
            _persisted[key] = _PersistState(index.version, time.monotonic(), changed)
    else:
        if state is None:
            state = _persisted[key] = _PersistState(-1, time.monotonic())
        state.changed += changed
        due = (
            removed
            or state.changed >= PERSIST.every_changes
            or (state.changed > 0 and time.monotonic() - state.at >= PERSIST.interval_secs)
        )
    if due:
        BACKGROUND.submit("persist", key, lambda: _persist_now(key, slot, index))


_last_sweep = 0.0
SWEEP_SECS = 600.0


def sweep_orphans(session: Session) -> int:
    """Delete snapshots of users that no longer exist (a forget in another process, or a
    write that raced one); returns how many. Runs from ``get_index`` every ``SWEEP_SECS``."""
    directory = PERSIST.directory
    if directory is None:
        return 0
    found = snapshot.users(directory)
    if not found:
        return 0
    ids = sorted({uid for uid, _ in found.values()})
    alive: set[str] = set()
    for start in range(0, len(ids), 500):
        alive.update(
            session.scalars(select(User.user_id).where(User.user_id.in_(ids[start : start + 500])))
        )
    gone = [name for name, (uid, _) in found.items() if uid not in alive]
    for name in gone:
        snapshot.delete_name(directory, name)
    return len(gone)


def _maybe_sweep(session: Session) -> None:
    global _last_sweep
    now = time.monotonic()
    if PERSIST.directory is None or now - _last_sweep < SWEEP_SECS:
        return
    _last_sweep = now
    try:
        sweep_orphans(session)
    except Exception:  # housekeeping must not fail a query
        log.exception("index.sweep_failed")


def cached_index(
    session: Session, user_id: str, model: str, version: int | None = None
) -> UserIndex | None:
    """The user's index if this process already holds it at ``version`` (the current one when
    not given), without loading anything: one small query at most."""
    if version is None:
        version = user_version(session, user_id) or 0
    return CACHE.get(cache_key(session, user_id), version, model)


def is_cached(session: Session, user_id: str, model: str, version: int | None = None) -> bool:
    return cached_index(session, user_id, model, version) is not None


def get_index(session: Session, user_id: str, model: str, *, ann: bool = False) -> UserIndex:
    """The user's index at its current version: cached; else the cached (or on-disk) index
    refreshed with what changed; else a full load. ``ann``: build the user's ANN graph in the
    background if they are large enough (the query path asks; the writer does not)."""
    version = user_version(session, user_id)
    key = cache_key(session, user_id)
    index = CACHE.get(key, version or 0, model)
    if index is not None:
        if ann:
            _after_put(key, index, how="cache", changed=0, removed=False, ann=True)
        return index
    _maybe_sweep(session)
    with _lock_for(key):
        index = CACHE.get(key, version or 0, model)
        if index is not None:
            return index
        how, changed, removed = "refresh", 0, False
        index, base = None, CACHE.peek(key, model)
        if base is None and version is not None and PERSIST.directory is not None:
            base = _load_snapshot(key, model)
            how = "snapshot"
            if base is not None:
                # Its vectors are a read-only map of the file: make room for the next write's
                # rows off the request path.
                BACKGROUND.submit("promote", key, base.prepare_appends)
        if base is not None:
            with time_query_stage("index_refresh"):
                index = refresh(session, base, user_id, model, version or 0)
            if index is not None and index is not base:
                changed, gone = index.delta_size
                changed, removed = changed + gone, gone > 0
        if index is None:
            how = "database"
            with time_query_stage("index_load"):
                index = load_index(session, user_id, model, version or 0)
            if base is not None and base.ann_slot is not None:
                index.ann_slot = base.ann_slot
                base.ann_slot.follow(index, None)
        if index.ann_slot is None:
            index.ann_slot = AnnSlot()
            index.ann_slot.follow(index, None)
        CACHE.put(key, index)
    _after_put(key, index, how=how, changed=changed, removed=removed, ann=ann)
    return index


def _load_snapshot(key: tuple[str, str], model: str) -> UserIndex | None:
    directory = PERSIST.directory
    if directory is None:
        return None
    try:
        with time_query_stage("index_snapshot"):
            loaded = snapshot.load(directory, key, model, crypto.keyring())
    except Exception:  # a damaged snapshot means "rebuild from the database"
        log.exception("index.snapshot_unreadable", user_id=key[1])
        with contextlib.suppress(OSError):
            snapshot.delete(directory, key)
        return None
    if loaded is None:
        return None
    slot = AnnSlot()
    loaded.index.ann_slot = slot
    if loaded.ann is not None:
        slot.attach(loaded.ann, loaded.index)
    else:
        slot.follow(loaded.index, None)
    return loaded.index


def prewarm(session: Session, user_id: str, model: str) -> None:
    """Bring the user's index into this process (e.g. when their call starts)."""
    get_index(session, user_id, model, ann=True)


def drop_all() -> None:
    """Forget every cached index and pending background job state (tests, benchmarks)."""
    CACHE.clear()
    _persisted.clear()
    _forgotten.clear()


def wait_background(timeout: float = 600.0) -> bool:
    return BACKGROUND.wait(timeout)


__all__: Sequence[str] = (
    "CACHE",
    "PERSIST",
    "cache_key",
    "cached_index",
    "configure",
    "get_index",
    "is_cached",
    "load_index",
    "load_links_from",
    "load_memories",
    "refresh",
    "scan",
    "sweep_orphans",
    "user_version",
    "vector_to_bytes",
)
