"""Query embeddings for the memory_query tool: prefetched while the user is resolved,
remembered for repeated questions, never cached when they failed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from memory.embedders import EmbedderError, LocalEmbedder
from memory.embedders.base import Vectors, l2_normalise
from memory.embedders.query_cache import QueryEmbeddingCache


class CountingEmbedder:
    """Deterministic vectors; counts calls; can be held (to observe prefetch) or failed."""

    name = "counting"
    dim = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail_next = False
        self.threads: list[str] = []

    def embed(self, texts: list[str]) -> Vectors:
        self.calls.append(list(texts))
        self.threads.append(threading.current_thread().name)
        self.started.set()
        self.release.wait(5)
        if self.fail_next:
            self.fail_next = False
            raise EmbedderError("model unavailable")
        rows = [[float(len(t)), float(sum(map(ord, t)) % 97), 1.0, 0.5] for t in texts]
        return l2_normalise(rows)


def test_prefetch_runs_in_the_background_and_search_reuses_it() -> None:
    inner = CountingEmbedder()
    cache = QueryEmbeddingCache(inner)
    inner.release.clear()
    cache.prefetch("refund promised?")
    assert inner.started.wait(5)
    assert inner.threads == ["voxmem-embed_0"]  # not the request thread
    inner.release.set()
    vector = cache.embed(["refund promised?"])
    assert len(inner.calls) == 1  # the prefetched result, not a second embedding
    np.testing.assert_allclose(vector, inner.embed(["refund promised?"]))


def test_a_repeated_question_is_not_embedded_again() -> None:
    inner = CountingEmbedder()
    cache = QueryEmbeddingCache(inner)
    first = cache.embed(["caller preferences"])
    second = cache.embed(["caller preferences"])
    assert len(inner.calls) == 1
    assert second is first
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 0.0  # shared between callers: nobody may change it in place


def test_least_recently_used_queries_are_evicted() -> None:
    inner = CountingEmbedder()
    cache = QueryEmbeddingCache(inner, max_items=2)
    for text in ("a", "b", "a", "c", "a", "b"):
        cache.embed([text])
    # "a" stayed (recently used), "b" was evicted by "c" and embedded again.
    assert [c[0] for c in inner.calls] == ["a", "b", "c", "b"]


def test_a_failed_embedding_is_raised_and_not_cached() -> None:
    inner = CountingEmbedder()
    cache = QueryEmbeddingCache(inner)
    inner.fail_next = True
    cache.prefetch("allergies")
    with pytest.raises(EmbedderError):
        cache.embed(["allergies"])
    assert cache.embed(["allergies"]).shape == (1, 4)  # retried, not the cached failure
    assert len(inner.calls) == 2


def test_batches_bypass_the_cache() -> None:
    inner = CountingEmbedder()
    cache = QueryEmbeddingCache(inner)
    cache.embed(["one", "two"])
    cache.embed(["one", "two"])
    assert inner.calls == [["one", "two"], ["one", "two"]]
    assert cache.name == "counting" and cache.dim == 4


def test_cached_vectors_equal_the_local_model() -> None:
    local = LocalEmbedder()
    cache = QueryEmbeddingCache(local)
    cache.prefetch("does the caller have pets")
    np.testing.assert_allclose(
        cache.embed(["does the caller have pets"]),
        local.embed(["does the caller have pets"]),
        rtol=1e-6,
    )
