"""The embedder contract every backend meets."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text, in order.

    ``name`` is stamped on every stored embedding row (with ``dim``) so vectors from two models
    are never compared: a model change means ``voxmem reembed``, not a silent mix.
    """

    name: str
    dim: int

    def embed(self, texts: list[str]) -> Vectors: ...


class EmbedderError(RuntimeError):
    """The embedder could not produce vectors (missing weights, remote failure)."""


def l2_normalise(matrix: npt.ArrayLike) -> Vectors:
    """Row-wise L2 normalisation; all-zero rows stay zero instead of becoming NaN."""
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    out: Vectors = (m / norms).astype(np.float32, copy=False)
    return out


def empty(dim: int) -> Vectors:
    return np.zeros((0, dim), dtype=np.float32)
