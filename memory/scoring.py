"""Composite score, per-sector decay, recency.

Seed 001's transparent linear composite (0.6 similarity, 0.2 salience, 0.1 recency, 0.1 average
link weight) plus a lexical BM25 term. Unlike OpenMemory's current code there is no sigmoid or
z-scoring: every component is returned, so a ranking can be explained.

Decay is always computed from a stored base (salience as written, ``recency`` = last time the
memory was seen or reinforced), never written back daily, so it cannot compound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from memory.types import Sector

SECONDS_PER_DAY = 86_400.0

# Per-day decay rates (OpenMemory's table; half-lives: episodic 46 d, semantic 139 d,
# procedural 87 d, emotional 35 d, reflective 693 d). How someone feels fades fastest; a
# pattern across calls is the most durable.
DECAY_LAMBDA: dict[str, float] = {
    Sector.EPISODIC.value: 0.015,
    Sector.SEMANTIC.value: 0.005,
    Sector.PROCEDURAL.value: 0.008,
    Sector.EMOTIONAL.value: 0.020,
    Sector.REFLECTIVE.value: 0.001,
}
# Decayed salience never falls below this: an old memory stays findable by similarity.
SALIENCE_FLOOR = 0.08


def decay_rate(sector: str) -> float:
    return DECAY_LAMBDA.get(sector, DECAY_LAMBDA[Sector.SEMANTIC.value])


def days_between(earlier: datetime, later: datetime) -> float:
    """Non-negative: a clock skew must not turn decay into growth."""
    return max(0.0, (later - earlier).total_seconds() / SECONDS_PER_DAY)


def recency_score(sector: str, last_seen: datetime, now: datetime) -> float:
    """exp(-λ_sector · days since last seen), in (0, 1]."""
    return math.exp(-decay_rate(sector) * days_between(last_seen, now))


def decayed_salience(base: float, sector: str, days: float) -> float:
    """Salience after ``days`` without reinforcement: s·e^(−λd) + floor·(1 − e^(−λd)).

    Pure function of the stored base, so applying it on every read is idempotent.
    """
    f = math.exp(-decay_rate(sector) * max(0.0, days))
    return min(1.0, max(0.0, base * f + SALIENCE_FLOOR * (1.0 - f)))


def reinforce_salience(current: float, amount: float = 0.15) -> float:
    """Move salience toward 1 by a fraction of the remaining gap: repeated mentions matter,
    but nothing runs away to a constant +0.5 per hit (OpenMemory's rich-get-richer loop)."""
    return min(1.0, current + amount * (1.0 - current))


@dataclass(frozen=True, slots=True)
class Weights:
    similarity: float = 0.6
    salience: float = 0.2
    recency: float = 0.1
    link: float = 0.1
    lexical: float = 0.0
    # Single-hop expansion: a neighbour of a hit scores at least hit·link_weight·this.
    expansion: float = 0.9


DEFAULT_WEIGHTS = Weights()


def composite_score(
    similarity: float,
    salience: float,
    recency: float,
    link: float,
    lexical: float = 0.0,
    weights: Weights = DEFAULT_WEIGHTS,
) -> float:
    return (
        weights.similarity * similarity
        + weights.salience * salience
        + weights.recency * recency
        + weights.link * link
        + weights.lexical * lexical
    )


FloatArray = npt.NDArray[np.float32] | npt.NDArray[np.float64]


def composite_scores(
    similarity: FloatArray,
    salience: FloatArray,
    recency: FloatArray,
    link: FloatArray,
    lexical: FloatArray,
    weights: Weights,
) -> npt.NDArray[np.float64]:
    """Vectorised :func:`composite_score` over every memory of a user."""
    out: npt.NDArray[np.float64] = (
        weights.similarity * similarity.astype(np.float64)
        + weights.salience * salience.astype(np.float64)
        + weights.recency * recency.astype(np.float64)
        + weights.link * link.astype(np.float64)
        + weights.lexical * lexical.astype(np.float64)
    )
    return out


def recency_scores(
    lambdas: npt.NDArray[np.float64], last_seen_epoch: npt.NDArray[np.float64], now_epoch: float
) -> npt.NDArray[np.float64]:
    days = np.maximum(0.0, (now_epoch - last_seen_epoch) / SECONDS_PER_DAY)
    out: npt.NDArray[np.float64] = np.exp(-lambdas * days)
    return out
