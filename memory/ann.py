"""Approximate nearest-neighbour candidates for large per-user indexes (usearch HNSW, cosine).

Only a *candidate generator*: :class:`memory.index.UserIndex` asks it for a generous pool of
memory ids, then scores the pool exactly (the same composite as the exact path), so an ANN miss
costs recall only when a memory is outside both the vector pool and the lexical pool.

One :class:`AnnIndex` per user, keyed by memory id (never by row: rows move when an index is
compacted, ids do not), shared by every version of that user's index: a committed job adds
its new memories and removes deleted or superseded ones in place, without rebuilding. The
members are the memories a default query may return (alive, active, no ``valid_to``); rows
outside it (superseded history asked for explicitly) are scanned exactly by the index.

usearch indexes are mutated and searched under one lock. An index restored from a snapshot
file is a read-only memory map (``view``): mutating a view crashes the process, so the first
mutation copies it into memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from usearch.index import Index

AnnDtype = Literal["f32", "f16", "i8"]

# HNSW parameters. On 100k MiniLM vectors here, search expansion 256 missed 7 of one question's
# 10 nearest ("who handles the account": a flat top, cosine 0.57 down to 0.51 at rank 200);
# 512 finds all of them for 200 realistic questions at ~1.3 ms (bench/notes.md).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 512


class AnnIndex:
    def __init__(self, dim: int, dtype: AnnDtype = "f32", *, index: Index | None = None) -> None:
        self.dim = dim
        self.dtype = dtype
        self._index = index if index is not None else _new(dim, dtype)
        self._view = False
        self._lock = threading.Lock()

    # --- construction -----------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ids: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32],
        dtype: AnnDtype = "f32",
        *,
        threads: int = 1,
    ) -> AnnIndex:
        ann = cls(int(vectors.shape[1]), dtype)
        if len(ids):
            ann._index.add(
                ids.astype(np.uint64), np.ascontiguousarray(vectors, np.float32), threads=threads
            )
        return ann

    @classmethod
    def restore(cls, path: Path, dim: int, dtype: AnnDtype) -> AnnIndex | None:
        """Memory-map a saved index (copied on first mutation); None if unreadable."""
        try:
            index = Index.restore(str(path), view=True)
        except Exception:  # noqa: BLE001 - a damaged cache file means "rebuild", not an error
            return None
        if index is None or int(index.ndim) != dim:
            return None
        ann = cls(dim, dtype, index=_tuned(index))
        ann._view = True
        return ann

    def save(self, path: Path) -> None:
        with self._lock:
            self._index.save(str(path))

    # --- membership ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    def keys(self) -> npt.NDArray[np.int64]:
        with self._lock:
            return np.asarray(self._index.keys, dtype=np.int64)

    def sync(
        self,
        remove: Iterable[int],
        add_ids: npt.NDArray[np.int64],
        add_vectors: npt.NDArray[np.float32],
    ) -> None:
        """Remove ``remove`` (absent ids are ignored), then add ``add_ids`` (an id already
        present is replaced: its vector may have changed)."""
        drop = {int(i) for i in remove} | {int(i) for i in add_ids.tolist()}
        with self._lock:
            self._writable()
            present = [i for i in drop if self._index.contains(i)]
            if present:
                self._index.remove(np.asarray(present, dtype=np.uint64))
            if len(add_ids):
                self._index.add(
                    add_ids.astype(np.uint64), np.ascontiguousarray(add_vectors, np.float32)
                )

    def _writable(self) -> None:
        if self._view:
            self._index = _tuned(self._index.copy())
            self._view = False

    # --- search ---------------------------------------------------------------------------
    def search(self, vector: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]:
        """Ids of (about) the ``count`` nearest members, nearest first."""
        with self._lock:
            if len(self._index) == 0 or count <= 0:
                return np.zeros(0, dtype=np.int64)
            found: Any = self._index.search(
                np.asarray(vector, dtype=np.float32), min(count, len(self._index)), threads=1
            )
            return np.asarray(found.keys, dtype=np.int64)


def _tuned(index: Index) -> Index:
    # A saved file keeps the graph, not the search-time expansion: restored and copied
    # indexes come back with usearch's default (64), which loses recall here.
    index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # usearch has a setter
    return index


def _new(dim: int, dtype: AnnDtype) -> Index:
    return Index(
        ndim=dim,
        metric="cos",
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )
