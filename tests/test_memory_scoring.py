"""Composite score, decay, BM25 and the per-user index, with exact expected values."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memory.index import IndexCache, IndexedMemory, Link, build_index
from memory.lexical import BM25, doc_terms, normalise, stem, tokenize
from memory.scoring import (
    DECAY_LAMBDA,
    SALIENCE_FLOOR,
    Weights,
    composite_score,
    decayed_salience,
    recency_score,
    reinforce_salience,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_seed_composite_exact() -> None:
    # Seed 001's own example.
    assert composite_score(0.9, 0.8, 0.7, 0.6) == pytest.approx(0.6 * 0.9 + 0.2 * 0.8 + 0.07 + 0.06)
    assert composite_score(0.9, 0.8, 0.7, 0.6) == pytest.approx(0.83)


def test_composite_with_lexical_weight() -> None:
    w = Weights(similarity=0.5, salience=0.1, recency=0.1, link=0.05, lexical=0.25)
    assert composite_score(0.4, 0.5, 1.0, 0.0, 1.0, w) == pytest.approx(
        0.2 + 0.05 + 0.1 + 0.0 + 0.25
    )


@pytest.mark.parametrize(
    ("sector", "half_life_days"),
    [
        ("episodic", 46.2),
        ("semantic", 138.6),
        ("procedural", 86.6),
        ("emotional", 34.7),
        ("reflective", 693.1),
    ],
)
def test_recency_half_lives(sector: str, half_life_days: float) -> None:
    later = T0 + timedelta(days=math.log(2) / DECAY_LAMBDA[sector])
    assert recency_score(sector, T0, later) == pytest.approx(0.5)
    assert math.log(2) / DECAY_LAMBDA[sector] == pytest.approx(half_life_days, abs=0.1)


def test_recency_never_grows_with_clock_skew() -> None:
    assert recency_score("episodic", T0 + timedelta(days=3), T0) == 1.0


def test_decayed_salience_exact_and_idempotent() -> None:
    # Episodic, s0 = 0.4, 30 days: 0.4·e^(−0.45) + 0.08·(1 − e^(−0.45)) = 0.28404...
    f = math.exp(-0.015 * 30)
    expected = 0.4 * f + SALIENCE_FLOOR * (1 - f)
    assert decayed_salience(0.4, "episodic", 30) == pytest.approx(expected)
    assert decayed_salience(0.4, "episodic", 30) == pytest.approx(0.284, abs=1e-3)
    # Computed from the stored base, 30 daily reads give the same value as one (no compounding).
    assert decayed_salience(0.4, "episodic", 30) == decayed_salience(0.4, "episodic", 30)
    assert decayed_salience(0.02, "episodic", 1000) == pytest.approx(SALIENCE_FLOOR, abs=1e-6)


def test_reinforce_salience_bounded() -> None:
    assert reinforce_salience(0.5) == pytest.approx(0.575)
    assert reinforce_salience(0.5, 0.2) == pytest.approx(0.6)
    s = 0.1
    for _ in range(200):
        s = reinforce_salience(s)
    assert s <= 1.0
    assert s == pytest.approx(1.0, abs=1e-6)


def test_stem_and_tokenize() -> None:
    assert stem("painting") == "paint"
    assert stem("paints") == "paint"
    assert stem("painted") == "paint"
    assert stem("stories") == "story"
    assert tokenize("Caroline's kids are painting!") == ["caroline", "kid", "paint"]


def test_bm25_exact() -> None:
    docs = ["caroline paints sunsets", "melanie runs", "caroline runs marathons daily"]
    bm = BM25([doc_terms(d) for d in docs])
    s = bm.scores("caroline sunsets")
    # Hand-computed Okapi BM25, k1=1.2, b=0.75, avgdl=3, N=3.
    idf_caroline = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    idf_sunset = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))

    def part(idf: float, dl: float) -> float:
        return idf * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * dl / 3))

    assert s[0] == pytest.approx(part(idf_caroline, 3) + part(idf_sunset, 3))
    assert s[1] == 0.0
    assert s[2] == pytest.approx(part(idf_caroline, 4))
    n = normalise(s)
    assert n[0] == 1.0
    assert n[2] == pytest.approx(s[2] / s[0])
    assert bm.scores("unknownword").sum() == 0.0


def _mem(mid: int, vec: list[float], **kw: object) -> IndexedMemory:
    v = np.asarray(vec, dtype=np.float32)
    v = v / np.linalg.norm(v)
    fields: dict[str, object] = {
        "content": f"memory {mid}",
        "sector": "semantic",
        "state": "active",
        "salience": 0.5,
        "last_seen_epoch": T0.timestamp(),
    }
    fields.update(kw)
    return IndexedMemory(id=mid, vector=v, **fields)  # type: ignore[arg-type]


def test_index_search_exact_scores_and_filters() -> None:
    mems = [
        _mem(1, [1, 0, 0], salience=0.9),
        _mem(2, [0.8, 0.6, 0], sector="episodic", salience=0.2),
        _mem(3, [0, 1, 0], state="archived"),
        _mem(4, [0, 0, 1], salience=1.0),
    ]
    idx = build_index(7, "m", mems, [])
    q = np.array([1, 0, 0], dtype=np.float32)
    hits = idx.search(q, "", now_epoch=T0.timestamp(), limit=3, expand=False)
    assert [h.memory_id for h in hits] == [1, 2, 4]
    # 0.6·1 + 0.2·0.9 + 0.1·1 + 0.1·0 = 0.88 ; 0.6·0.8 + 0.04 + 0.1 = 0.62 ; 0 + 0.2 + 0.1 = 0.3
    assert [round(h.score, 6) for h in hits] == [0.88, 0.62, 0.3]
    only_episodic = idx.search(q, "", now_epoch=T0.timestamp(), sectors=["episodic"])
    assert [h.memory_id for h in only_episodic] == [2]
    archived = idx.search(q, "", now_epoch=T0.timestamp(), states=["archived"])
    assert [h.memory_id for h in archived] == [3]


def test_index_recency_uses_sector_decay() -> None:
    now = T0 + timedelta(days=46.20981)  # one episodic half-life
    idx = build_index(1, "m", [_mem(1, [1, 0], sector="episodic", salience=0.0)], [])
    (hit,) = idx.search(np.array([0, 1], dtype=np.float32), "", now_epoch=now.timestamp())
    assert hit.recency == pytest.approx(0.5, abs=1e-5)
    assert hit.score == pytest.approx(0.05, abs=1e-6)


def test_single_hop_expansion_boosts_top2_neighbours_and_resorts() -> None:
    mems = [
        _mem(1, [1, 0, 0, 0], salience=0.0),
        _mem(2, [0, 1, 0, 0], salience=0.0),
        _mem(3, [0, 0, 1, 0], salience=0.0),
        _mem(4, [0, 0, 0, 1], salience=0.0),
        _mem(5, [0.1, 0, 0, 1], salience=0.0),
    ]
    links = [
        Link(1, 2, 0.95),
        Link(2, 1, 0.95),
        Link(1, 3, 0.85),
        Link(3, 1, 0.85),
        Link(1, 4, 0.81),
        Link(4, 1, 0.81),
    ]
    idx = build_index(1, "m", mems, links)
    q = np.array([1, 0, 0, 0], dtype=np.float32)
    hits = idx.search(q, "", now_epoch=T0.timestamp(), limit=3, expand=True)
    # Hit 1: 0.6 + 0.1 (recency) + 0.1·avg(0.95, 0.85, 0.81) = 0.887
    assert hits[0].memory_id == 1
    assert hits[0].score == pytest.approx(0.6 + 0.1 + 0.1 * (0.95 + 0.85 + 0.81) / 3)
    # Only the top-2 neighbours (2 and 3) are pulled in, each at parent·weight·0.9.
    assert [h.memory_id for h in hits[1:]] == [2, 3]
    assert hits[1].score == pytest.approx(hits[0].score * 0.95 * 0.9)
    assert hits[2].score == pytest.approx(hits[0].score * 0.85 * 0.9)
    assert hits[1].via == 1
    plain = idx.search(q, "", now_epoch=T0.timestamp(), limit=3, expand=False)
    # Without expansion 2 and 3 only get recency + their own link average.
    assert [h.memory_id for h in plain] == [1, 2, 3]
    assert [round(h.score, 6) for h in plain[1:]] == [0.195, 0.185]
    assert plain[1].via is None


def test_lexical_term_changes_ranking() -> None:
    mems = [
        _mem(1, [1, 0.05], content="caroline likes hiking"),
        _mem(2, [1, 0.0], content="melanie paints sunsets"),
    ]
    idx = build_index(1, "m", mems, [])
    q = np.array([1, 0], dtype=np.float32)
    no_lex = idx.search(q, "sunsets", now_epoch=T0.timestamp(), expand=False)
    assert no_lex[0].memory_id == 2
    with_lex = idx.search(
        q, "hiking", now_epoch=T0.timestamp(), expand=False, weights=Weights(lexical=0.3)
    )
    assert with_lex[0].memory_id == 1
    assert with_lex[0].lexical == 1.0


def test_superseded_hidden_by_default() -> None:
    idx = build_index(1, "m", [_mem(1, [1, 0], valid_to_epoch=1.0), _mem(2, [0, 1])], [])
    hits = idx.search(np.array([1, 0], dtype=np.float32), "", now_epoch=T0.timestamp())
    assert [h.memory_id for h in hits] == [2]


def test_nearest_threshold_and_exclusion() -> None:
    idx = build_index(1, "m", [_mem(1, [1, 0]), _mem(2, [0.9, 0.436]), _mem(3, [0, 1])], [])
    got = idx.nearest(np.array([1, 0], dtype=np.float32), k=5, min_similarity=0.8)
    assert [m for m, _ in got] == [1, 2]
    assert got[1][1] == pytest.approx(0.9, abs=1e-3)
    got = idx.nearest(np.array([1, 0], dtype=np.float32), k=5, min_similarity=0.8, exclude=[1])
    assert [m for m, _ in got] == [2]


def test_index_cache_version_invalidation() -> None:
    cache = IndexCache(max_users=2)
    idx = build_index(3, "m", [], [])
    cache.put(("t", "u"), idx)
    assert cache.get(("t", "u"), 3, "m") is idx
    assert cache.get(("t", "u"), 4, "m") is None
    assert cache.get(("t", "u"), 3, "other-model") is None
    cache.put(("t", "u"), build_index(2, "m", [], []))  # older: ignored
    assert cache.get(("t", "u"), 3, "m") is idx
    cache.put(("t", "a"), build_index(1, "m", [], []))
    cache.put(("t", "b"), build_index(1, "m", [], []))
    assert cache.get(("t", "u"), 3, "m") is None  # evicted (LRU, max 2)
