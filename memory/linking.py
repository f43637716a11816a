"""Waypoint links between memories of one user.

Unlike OpenMemory (one outgoing edge per node, no threshold, no mirror edge), a new memory links
to up to ``top_k`` memories at cosine >= ``threshold``, in both directions, weight = cosine;
retrieving two linked memories together strengthens their link a little.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_TOP_K = 5
DEFAULT_THRESHOLD = 0.80
# Co-retrieval nudges the weight toward 1 by this fraction of the remaining gap (bounded,
# so a popular pair cannot run away).
CO_RETRIEVAL_RATE = 0.05


@dataclass(frozen=True, slots=True)
class PlannedLink:
    source: int
    target: int
    weight: float


def plan_links(
    new_id: int,
    neighbours: Sequence[tuple[int, float]],
    *,
    top_k: int = DEFAULT_TOP_K,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[PlannedLink]:
    """Links for a new memory from (id, cosine) neighbours: both directions, strongest first."""
    chosen = sorted(
        ((mid, sim) for mid, sim in neighbours if mid != new_id and sim >= threshold),
        key=lambda x: (-x[1], x[0]),
    )[: max(0, top_k)]
    out: list[PlannedLink] = []
    for mid, sim in chosen:
        weight = round(min(1.0, float(sim)), 6)
        out.append(PlannedLink(new_id, mid, weight))
        out.append(PlannedLink(mid, new_id, weight))
    return out


def reinforce_weight(weight: float, rate: float = CO_RETRIEVAL_RATE) -> float:
    return min(1.0, weight + rate * (1.0 - weight))


def co_retrieval_updates(
    retrieved: Iterable[int],
    links: Mapping[tuple[int, int], float],
    rate: float = CO_RETRIEVAL_RATE,
) -> dict[tuple[int, int], float]:
    """New weights for existing links between memories returned by one query (each
    direction); pairs that are not linked are left alone."""
    ids = list(dict.fromkeys(retrieved))
    out: dict[tuple[int, int], float] = {}
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            for pair in ((a, b), (b, a)):
                if pair in links:
                    out[pair] = reinforce_weight(links[pair], rate)
    return out
