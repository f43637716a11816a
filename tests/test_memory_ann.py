"""The per-user index at scale: ANN candidates above a threshold (usearch), incremental refresh
after writes, and the encrypted on-disk snapshot that makes a large user's first query after a
restart cheap.

Thresholds are forced low so a few thousand synthetic memories exercise the large-user paths.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import delete, select

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.models import Memory, MemoryEmbedding, MemoryLink, User
from db.settings import Settings
from db.tenancy import require_tenant
from memory import loader, snapshot
from memory.ann import EXPANSION_SEARCH, AnnIndex
from memory.identity import create_guest
from memory.index import (
    ANN_CONFIG,
    AnnSlot,
    Delta,
    IndexedMemory,
    Link,
    UserIndex,
    build_index,
)
from memory.loader import vector_to_bytes
from memory.scoring import Weights
from memory.store import reembed_user
from tests.conftest import Deployment

T0 = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
NOW = (T0 + timedelta(days=10)).timestamp()
MODEL = "test-vectors"
DIM = 32
WORDS = (
    "invoice router refund plan pricing allergy peanut flight lisbon denver salesforce hubspot "
    "printer laptop violin chess delivery callback friday monday discount contract billing "
    "daughter manager football swimming coffee monitor helmet sofa ticket upgrade"
).split()
# The tuned retrieval weights (db/settings.py): half vector, half BM25.
TUNED = Weights(similarity=0.5, salience=0.0, recency=0.0, link=0.0, lexical=0.5)


@pytest.fixture(autouse=True)
def _index_config() -> Iterator[None]:
    """Each test sets its own thresholds; the process-wide defaults come back afterwards."""
    saved_ann = replace(ANN_CONFIG)
    saved_persist = replace(loader.PERSIST)
    loader.drop_all()
    loader.configure(background=False)
    yield
    for field in ("threshold", "dtype", "min_pool", "per_result"):
        setattr(ANN_CONFIG, field, getattr(saved_ann, field))
    for field in ("directory", "min_memories", "every_changes", "interval_secs", "background"):
        setattr(loader.PERSIST, field, getattr(saved_persist, field))
    loader.drop_all()


def _corpus(n: int, seed: int = 7) -> tuple[np.ndarray, list[str]]:
    """Clustered unit vectors (like sentence embeddings) and texts of a few words each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 25), DIM)).astype(np.float32)
    vecs = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = [" ".join(rng.choice(WORDS, size=5)) + f" ticket{i % 997}" for i in range(n)]
    return vecs.astype(np.float32), texts


def _memories(n: int, seed: int = 7) -> list[IndexedMemory]:
    vecs, texts = _corpus(n, seed)
    rng = np.random.default_rng(seed + 1)
    return [
        IndexedMemory(
            id=i + 1,
            content=texts[i],
            sector=("semantic", "episodic", "procedural")[i % 3],
            state="active",
            salience=float(rng.uniform(0.2, 0.9)),
            last_seen_epoch=T0.timestamp() - float(rng.uniform(0, 90)) * 86400,
            vector=vecs[i],
            sources=({"conversation_id": f"c{i // 6}", "turns": [i % 6]},),
            created_epoch=T0.timestamp(),
        )
        for i in range(n)
    ]


def _queries(n: int, seed: int = 99) -> list[tuple[np.ndarray, str]]:
    vecs, texts = _corpus(n, seed)
    return [(vecs[i], " ".join(texts[i].split()[:2])) for i in range(n)]


def _with_ann(index: UserIndex) -> UserIndex:
    slot = AnnSlot()
    index.ann_slot = slot
    slot.follow(index, None)
    assert slot.build(ANN_CONFIG.dtype)
    return index


def _ids(hits: Sequence[object]) -> list[int]:
    return [h.memory_id for h in hits]  # type: ignore[attr-defined]


# --- ANN against exact ------------------------------------------------------------------------
def test_ann_search_agrees_with_exact_on_a_forced_threshold_index() -> None:
    ANN_CONFIG.threshold = 500
    index = _with_ann(build_index(1, MODEL, _memories(3000), []))
    assert index.ann() is not None
    recalls, vector_recalls = [], []
    for q, text in _queries(60):
        for weights in (TUNED, Weights()):
            exact = index.search(q, text, now_epoch=NOW, limit=10, weights=weights, exact=True)
            ann = index.search(q, text, now_epoch=NOW, limit=10, weights=weights)
            recalls.append(len(set(_ids(exact)) & set(_ids(ann))) / len(exact))
            # Same memory, same score: the pool is re-scored with the exact composite.
            scores = {h.memory_id: h.score for h in exact}
            for h in ann:
                if h.memory_id in scores:
                    assert h.score == pytest.approx(scores[h.memory_id])
        truth = np.argsort(-(index.vectors @ q))[:10]
        proposed = set(index.ann().search(q, 10).tolist())  # type: ignore[union-attr]
        vector_recalls.append(len(proposed & set(index.ids[truth].tolist())) / 10)
    assert np.mean(recalls) >= 0.95
    assert np.mean(vector_recalls) >= 0.95  # the graph alone, without the wide pool
    # nearest() (dedup and linking in the writer) goes through the graph too.
    for q, _ in _queries(20, seed=5):
        ann_near = index.nearest(q, k=5, min_similarity=0.0)
        ANN_CONFIG.threshold = 10**9
        exact_near = index.nearest(q, k=5, min_similarity=0.0)
        ANN_CONFIG.threshold = 500
        assert [m for m, _ in ann_near] == [m for m, _ in exact_near]


def test_threshold_switches_between_exact_and_ann(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = AnnIndex.search

    def counting(self: AnnIndex, vector: np.ndarray, count: int) -> np.ndarray:
        calls.append(count)
        return original(self, vector, count)

    monkeypatch.setattr(AnnIndex, "search", counting)
    ANN_CONFIG.threshold = 400
    index = _with_ann(build_index(1, MODEL, _memories(1500), []))
    q, text = _queries(1)[0]
    index.search(q, text, now_epoch=NOW, limit=10)
    assert calls == [200]  # max(min_pool 200, 20 x 10)
    index.search(q, text, now_epoch=NOW, limit=20)
    assert calls[-1] == 400
    # A sector filter keeping about a third of the rows widens the graph's pool to match.
    index.search(q, text, now_epoch=NOW, limit=10, sectors=["semantic"])
    assert calls[-1] == 600
    # Below the threshold: the exact scan, exactly as before ANN existed.
    ANN_CONFIG.threshold = 1501
    assert index.ann() is None
    index.search(q, text, now_epoch=NOW, limit=10)
    assert len(calls) == 3
    # A filter leaving fewer rows than the threshold scans only its rows, exactly.
    ANN_CONFIG.threshold = 1000
    narrow = index.search(q, text, now_epoch=NOW, limit=10, sectors=["episodic"])
    assert len(calls) == 3
    assert _ids(narrow) == _ids(
        index.search(q, text, now_epoch=NOW, limit=10, sectors=["episodic"], exact=True)
    )


def test_history_outside_the_graph_is_still_searchable() -> None:
    """Superseded memories are not graph members; asking for them scans them exactly."""
    ANN_CONFIG.threshold = 500
    mems = _memories(1200)
    old = [replace(m, state="superseded", valid_to_epoch=T0.timestamp()) for m in mems[:40]]
    index = _with_ann(build_index(1, MODEL, old + mems[40:], []))
    q = mems[3].vector
    default = index.search(q, "", now_epoch=NOW, limit=10)
    assert 4 not in _ids(default)
    both = index.search(q, "", now_epoch=NOW, limit=10, states=["active", "superseded"])
    assert _ids(both)[0] == 4
    exact = index.search(
        q, "", now_epoch=NOW, limit=10, states=["active", "superseded"], exact=True
    )
    assert _ids(both) == _ids(exact)


# --- incremental update -----------------------------------------------------------------------
def _fresh(index: UserIndex, memories: list[IndexedMemory], links: list[Link]) -> UserIndex:
    return build_index(index.version, MODEL, memories, links)


def _same_results(a: UserIndex, b: UserIndex, *, exact: bool = True) -> None:
    weights = Weights(similarity=0.5, salience=0.2, recency=0.1, link=0.1, lexical=0.3)
    for q, text in _queries(15, seed=3):
        for states in (None, ["active", "superseded"]):
            ha = a.search(
                q, text, now_epoch=NOW, limit=8, weights=weights, states=states, exact=exact
            )
            hb = b.search(
                q, text, now_epoch=NOW, limit=8, weights=weights, states=states, exact=True
            )
            assert [(h.memory_id, round(h.score, 9), h.via) for h in ha] == [
                (h.memory_id, round(h.score, 9), h.via) for h in hb
            ]


def test_apply_equals_a_fresh_build_and_keeps_older_versions_intact() -> None:
    ANN_CONFIG.threshold = 300
    mems = _memories(800)
    links = [Link(1, 2, 0.9), Link(2, 1, 0.9), Link(5, 6, 0.85), Link(6, 5, 0.85)]
    base = _with_ann(build_index(1, MODEL, mems, links))
    before = base.search(mems[10].vector, "refund", now_epoch=NOW, limit=10, exact=True)
    extra_vecs, extra_texts = _corpus(30, seed=42)
    added = [
        replace(mems[0], id=10_000 + i, content=extra_texts[i], vector=extra_vecs[i])
        for i in range(30)
    ]
    edited = replace(mems[5], content="the caller moved to lisbon", vector=extra_vecs[0])
    reinforced = replace(mems[7], salience=0.99, last_seen_epoch=NOW - 3600)
    superseded = replace(mems[9], state="superseded", valid_to_epoch=NOW - 60)
    new_links = [Link(10_000, 1, 0.95), Link(1, 10_000, 0.95), Link(6, 2, 0.8)]
    delta = Delta(
        version=2,
        upserts=[*added, edited, reinforced, superseded],
        removed=[2, 3],
        # Every current link touching an upserted or removed memory (what the loader reads).
        links=new_links,
    )
    new = base.apply(delta)
    final = {m.id: m for m in mems}
    for mid in (2, 3):
        del final[mid]
    for m in (*added, edited, reinforced, superseded):
        final[m.id] = m
    final_links = [link for link in links if not {link.source, link.target} & {2, 3, 6}]
    final_links += new_links
    fresh = _fresh(new, sorted(final.values(), key=lambda m: m.id), final_links)
    assert len(new) == len(fresh) == 800 - 2 + 30
    _same_results(new, fresh)
    _same_results(new, fresh, exact=False)  # the graph followed the delta
    graph = set(new.ann().keys().tolist())  # type: ignore[union-attr]
    assert {10_000, 10_029, 6} <= graph
    assert not {2, 3, 10} & graph  # removed and superseded memories left the graph
    # The older version is untouched: readers holding it see what they saw.
    again = base.search(mems[10].vector, "refund", now_epoch=NOW, limit=10, exact=True)
    assert [(h.memory_id, h.score) for h in again] == [(h.memory_id, h.score) for h in before]
    assert len(base) == 800 and 2 in base.row_of and 10_000 not in base.row_of


def test_many_removals_compact_the_index() -> None:
    mems = _memories(3000)
    index = build_index(1, MODEL, mems, [])
    removed = [m.id for m in mems[:1500]]
    new = index.apply(Delta(version=2, upserts=[], removed=removed, links=[]))
    assert new.dead == 0 and new.rows == len(new) == 1500  # rebuilt without tombstones
    _same_results(new, _fresh(new, mems[1500:], []))


# --- through the database: refresh, snapshot, forget --------------------------------------
@pytest.fixture
def any_deployment(any_settings: Settings) -> Iterator[Deployment]:
    """A migrated deployment on SQLite and on PostgreSQL (the refresh reads raw column values,
    which the two drivers return differently)."""
    bootstrap(any_settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(any_settings))
    db = open_database(any_settings)
    yield Deployment(settings=any_settings, db=db, webhook_secret="", tokens={})
    db.dispose()


def _user(dep: Deployment) -> str:
    with dep.db.write() as s:
        return create_guest(s, require_tenant(s, "default").id).user_id


def _insert(dep: Deployment, user_id: str, items: Sequence[tuple[str, np.ndarray]]) -> list[int]:
    with dep.db.write() as s:
        rows = [
            Memory(
                user_id=user_id,
                content=text,
                sector_type="semantic",
                salience=0.5,
                recency=T0,
                state="active",
                sources=[{"conversation_id": "c1", "turns": [0]}],
                created_at=T0,
                updated_at=T0,
            )
            for text, _ in items
        ]
        s.add_all(rows)
        s.flush()
        s.add_all(
            MemoryEmbedding(
                memory_id=m.id,
                sector="semantic",
                embedding=vector_to_bytes(v),
                embedding_model=MODEL,
                dimension=DIM,
            )
            for m, (_, v) in zip(rows, items, strict=True)
        )
        user = s.get(User, user_id)
        assert user is not None
        user.memory_version = (user.memory_version or 0) + 1
        return [m.id for m in rows]


def _bump(dep: Deployment, user_id: str) -> None:
    with dep.db.write() as s:
        user = s.get(User, user_id)
        assert user is not None
        user.memory_version = (user.memory_version or 0) + 1


def _index(dep: Deployment, user_id: str, *, ann: bool = True) -> UserIndex:
    with dep.db.read() as s:
        return loader.get_index(s, user_id, MODEL, ann=ann)


def _key(dep: Deployment, user_id: str) -> tuple[str, str]:
    with dep.db.read() as s:
        return loader.cache_key(s, user_id)


def _seed(dep: Deployment, n: int) -> tuple[str, list[int], np.ndarray, list[str]]:
    uid = _user(dep)
    vecs, texts = _corpus(n)
    ids = _insert(dep, uid, list(zip(texts, vecs, strict=True)))
    return uid, ids, vecs, texts


def test_a_committed_write_is_queryable_at_once_without_a_rebuild(
    any_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = any_deployment
    ANN_CONFIG.threshold = 500
    uid, ids, vecs, _ = _seed(deployment, 1200)
    first = _index(deployment, uid)
    assert first.ann() is not None  # built (inline here) once the user crossed the threshold
    full_loads: list[str] = []
    real_load = loader.load_index
    monkeypatch.setattr(
        loader, "load_index", lambda *a, **k: full_loads.append("x") or real_load(*a, **k)
    )
    new_vecs, _ = _corpus(3, seed=1234)
    [new_id] = _insert(deployment, uid, [("the caller's zebra vaccination is due", new_vecs[0])])
    with deployment.db.write() as s:  # a supersession and a deletion in a later job
        old = s.get(Memory, ids[0])
        assert old is not None
        old.state, old.valid_to = "superseded", T0
        s.execute(delete(MemoryEmbedding).where(MemoryEmbedding.memory_id == ids[1]))
        s.execute(delete(Memory).where(Memory.id == ids[1]))
        user = s.get(User, uid)
        assert user is not None
        user.memory_version += 1
    index = _index(deployment, uid)
    assert full_loads == []  # refreshed from the cached version, not rebuilt
    assert index.delta_size == (2, 1)  # the new memory, the superseded one; one removed
    hits = index.search(new_vecs[0], "zebra vaccination", now_epoch=NOW, limit=3)
    assert hits[0].memory_id == new_id
    assert new_id in set(index.ann().keys().tolist())  # type: ignore[union-attr]
    for gone in (ids[0], ids[1]):
        hits = index.search(vecs[_pos(ids, gone)], "", now_epoch=NOW, limit=10)
        assert gone not in _ids(hits)
    assert ids[1] not in index.row_of
    # Same answers as a full load of the same database state.
    loader.drop_all()
    with deployment.db.read() as s:
        fresh = real_load(s, uid, MODEL, index.version)
    _same_results(index, fresh, exact=True)


def _pos(ids: list[int], mid: int) -> int:
    return ids.index(mid)


def test_cold_start_loads_the_snapshot_and_applies_what_changed_since(
    any_deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = any_deployment
    ANN_CONFIG.threshold = 500
    loader.configure(persist_dir=tmp_path / "index", persist_min_memories=500)
    uid, ids, vecs, texts = _seed(deployment, 1200)
    warm = _index(deployment, uid)  # full load, graph built, snapshot written
    meta = snapshot.pointer(tmp_path / "index", _key(deployment, uid))
    assert meta is not None and meta["ann"] == "f32" and meta["rows"] == 1200
    expected = [
        warm.search(vecs[i], texts[i][:12], now_epoch=NOW, limit=10, weights=TUNED)
        for i in range(0, 1200, 100)
    ]
    # A restart: nothing in memory. The database path must not be taken.
    loader.drop_all()
    monkeypatch.setattr(loader, "load_index", _fail)
    cold = _index(deployment, uid)
    assert cold.ann() is not None and len(cold) == 1200
    # The graph comes back with our search expansion, not usearch's default for a loaded file.
    assert cold.ann().expansion_search == EXPANSION_SEARCH  # type: ignore[union-attr]
    got = [
        cold.search(vecs[i], texts[i][:12], now_epoch=NOW, limit=10, weights=TUNED)
        for i in range(0, 1200, 100)
    ]
    assert [[(h.memory_id, h.score) for h in r] for r in got] == [
        [(h.memory_id, h.score) for h in r] for r in expected
    ]
    assert cold.memory(ids[5]).content == texts[5]
    assert cold.memory(ids[5]).sources == ({"conversation_id": "c1", "turns": [0]},)
    # Written after the snapshot: the cold load applies it (and the removal) as a delta.
    loader.drop_all()
    new_vecs, _ = _corpus(2, seed=77)
    [new_id] = _insert(deployment, uid, [("the caller keeps an axolotl named kiwi", new_vecs[0])])
    with deployment.db.write() as s:
        s.execute(delete(MemoryEmbedding).where(MemoryEmbedding.memory_id == ids[7]))
        s.execute(delete(Memory).where(Memory.id == ids[7]))
    _bump(deployment, uid)
    later = _index(deployment, uid)
    assert later.delta_size == (1, 1)
    assert _ids(later.search(new_vecs[0], "axolotl kiwi", now_epoch=NOW, limit=1)) == [new_id]
    assert ids[7] not in later.row_of
    # The removal rewrote the snapshot at once: the deleted memory's ciphertext is gone too.
    meta2 = snapshot.pointer(tmp_path / "index", _key(deployment, uid))
    assert meta2 is not None and meta2["nonce"] != meta["nonce"] and meta2["rows"] == 1200
    assert len(list((tmp_path / "index").glob("*.blob"))) == 1


def test_a_process_without_the_graph_never_replaces_a_snapshot_that_has_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The worker never builds graphs: its refreshes must not overwrite the API's snapshot
    (a restarted API would then rebuild the graph for half a minute)."""
    ANN_CONFIG.threshold = 500
    loader.configure(persist_dir=tmp_path / "index", persist_min_memories=500)
    uid, ids, _, _ = _seed(deployment, 800)
    _index(deployment, uid, ann=True)  # the API: graph built, snapshot written
    written = snapshot.pointer(tmp_path / "index", _key(deployment, uid))
    assert written is not None and written["ann"] == "f32"
    loader.drop_all()
    loader.configure(persist=False)
    _index(deployment, uid, ann=False)  # a worker that loaded the user from the database
    loader.configure(persist_dir=tmp_path / "index")
    with deployment.db.write() as s:
        s.execute(delete(MemoryEmbedding).where(MemoryEmbedding.memory_id == ids[3]))
        s.execute(delete(Memory).where(Memory.id == ids[3]))
    _bump(deployment, uid)
    assert _index(deployment, uid, ann=False).delta_size == (0, 1)
    assert snapshot.pointer(tmp_path / "index", _key(deployment, uid)) == written


class _Constant:
    """An embedder of this test's model that maps every text to one vector."""

    name = MODEL

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.tile(self.vector, (len(texts), 1))


def test_reembedding_in_place_reaches_the_cached_index(deployment: Deployment) -> None:
    uid, ids, _, _ = _seed(deployment, 50)
    _index(deployment, uid)
    target = np.zeros(DIM, dtype=np.float32)
    target[0] = 1.0
    with deployment.db.write() as s:
        assert reembed_user(s, uid, _Constant(target)) == 50  # same model: rows updated
    index = _index(deployment, uid)
    assert index.delta_size == (50, 0)
    assert np.allclose(index.memory(ids[9]).vector, target)


def _fail(*_a: object, **_k: object) -> UserIndex:
    raise AssertionError("full database load on a cold start with a snapshot on disk")


def test_snapshot_files_hold_no_plaintext_memory_text(
    deployment: Deployment, tmp_path: Path
) -> None:
    loader.configure(persist_dir=tmp_path / "index", persist_min_memories=100)
    ANN_CONFIG.threshold = 100
    uid = _user(deployment)
    vecs, _ = _corpus(150)
    secrets_ = [
        f"patient zq{i:04d}x has a peanutallergy and lives at {i} elmstreet" for i in range(150)
    ]
    _insert(deployment, uid, list(zip(secrets_, vecs, strict=True)))
    _index(deployment, uid)
    files = [p for p in (tmp_path / "index").iterdir() if p.is_file()]
    assert {p.suffix for p in files} == {".current", ".blob", ".vec", ".ann"}
    blob = b"".join(p.read_bytes() for p in files)
    for needle in ("zq0042x", "peanutallergy", "elmstreet", "patient", "lives"):
        assert needle.encode() not in blob
        assert needle.encode("utf-16-le") not in blob
    # The blob opens with the deployment's keyring only.
    stranger = Fernet(Fernet.generate_key())
    other = crypto.Keyring(
        fernet=MultiFernet([stranger]),
        primary=stranger,
        key_count=1,
        lookup_key=b"x",
    )
    key = _key(deployment, uid)
    assert snapshot.load(tmp_path / "index", key, MODEL, other) is None
    assert not (tmp_path / "index").joinpath(f"{snapshot.name_for(key)}.current").exists()


def test_forget_deletes_the_snapshot_and_the_sweep_removes_orphans(
    deployment: Deployment, tmp_path: Path
) -> None:
    loader.configure(persist_dir=tmp_path / "index", persist_min_memories=100)
    ANN_CONFIG.threshold = 10**9
    alice, _, _, _ = _seed(deployment, 150)
    bob, _, _, _ = _seed(deployment, 150)
    _index(deployment, alice)
    _index(deployment, bob)
    assert len(snapshot.users(tmp_path / "index")) == 2
    with deployment.db.read() as s:
        loader.CACHE.invalidate(loader.cache_key(s, alice))  # what forget_user calls
    assert [u for u, _ in snapshot.users(tmp_path / "index").values()] == [bob]
    # Bob's rows disappear without this process hearing of it (another process forgot him).
    with deployment.db.write() as s:
        mids = list(s.scalars(select(Memory.id).where(Memory.user_id == bob)))
        s.execute(delete(MemoryLink).where(MemoryLink.source_memory_id.in_(mids)))
        s.execute(delete(MemoryEmbedding).where(MemoryEmbedding.memory_id.in_(mids)))
        s.execute(delete(Memory).where(Memory.user_id == bob))
        s.execute(delete(User).where(User.user_id == bob))
    with deployment.db.read() as s:
        assert loader.sweep_orphans(s) == 1
    assert snapshot.users(tmp_path / "index") == {}
    assert list((tmp_path / "index").iterdir()) == []


def test_usearch_loads_before_onnxruntime_without_crashing() -> None:
    """usearch >= 2.26.2 wheels crash the process when onnxruntime is imported after them
    (a static libstdc++ locale clash); the pinned version must not."""
    done = subprocess.run(
        [sys.executable, "-c", "import usearch.index, onnxruntime; print('ok')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-500:]


def test_restore_drops_the_index_snapshots(deployment: Deployment, tmp_path: Path) -> None:
    from db.backup import create_backup, restore_backup

    backup = create_backup(deployment.settings, tmp_path / "backups").path
    snapshots = deployment.settings.data_dir / "index"
    snapshots.mkdir()
    (snapshots / "x.current").write_text("{}")
    deployment.db.dispose()
    restore_backup(deployment.settings, backup, None)
    assert not snapshots.exists()
