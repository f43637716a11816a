"""Consolidation rules: reinforce near-duplicates, supersede contradicted facts, drop echoes.

Pure functions over already-computed similarities, so every rule has exact unit tests and the
store only gathers inputs and applies the decision. Thresholds are for MiniLM cosine
(paraphrases ~0.6-0.8, restatements ~0.9+, unrelated ~0.1); another embedder needs its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from memory.types import CandidateMemory, Sector


@dataclass(frozen=True, slots=True)
class Thresholds:
    # Same user, same sector, at least this similar: the same memory said again.
    duplicate: float = 0.90
    # Two candidates from one call this similar are merged before anything is stored.
    within_call: float = 0.88
    # An agent sentence this close to a memory the tool returned in the call is an echo.
    echo: float = 0.80
    # An announced change ("moving to", "switched") supersedes facts at least this similar.
    update: float = 0.50
    # Same attribute ("email", "phone") with a different value, at least this similar.
    slot: float = 0.70
    # "likes X" vs "no longer likes X": opposite polarity, at least this similar.
    negation: float = 0.80
    max_superseded: int = 2


DEFAULT_THRESHOLDS = Thresholds()


class Action(StrEnum):
    INSERT = "insert"
    REINFORCE = "reinforce"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Existing:
    """An existing memory of the same user, with its cosine to the candidate."""

    id: int
    content: str
    sector: str
    similarity: float
    state: str = "active"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    target_id: int | None = None
    supersede: tuple[int, ...] = ()
    reason: str = ""


FACT_SECTORS = frozenset({Sector.SEMANTIC.value, Sector.PROCEDURAL.value})

_NEGATION = re.compile(
    r"\b(?:not|no longer|never|doesn't|don't|didn't|isn't|wasn't|won't|stopped|quit|any ?more)\b",
    re.I,
)
_FROM_OBJECT = re.compile(
    r"\b(?:from|instead of|no longer (?:uses?|using|with|at|in|on)|left|leaving|"
    r"away from|replac(?:e|ed|ing))\s+([A-Z][\w&.-]+(?:\s+[A-Z][\w&.-]+)?)"
)
_SLOT = re.compile(
    r"\b(email|e-mail|phone|number|address|birthday|employer|company|job|title|crm|provider|"
    r"plan|account|bank|doctor|school|partner|wife|husband)\b",
    re.I,
)
_VALUE = re.compile(r"[\w.+-]+@[\w.-]+|\+?\d[\d\s().-]{4,}\d|\b[A-Z][\w&-]{2,}\b")


def _negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def replaced_objects(text: str) -> list[str]:
    """Names the text says are being replaced: "from Salesforce to HubSpot" -> ["Salesforce"]."""
    return [m.group(1).strip(" .") for m in _FROM_OBJECT.finditer(text)]


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.I) is not None


def _slot_conflict(new: str, old: str) -> bool:
    slots_new = {s.lower() for s in _SLOT.findall(new)}
    slots_old = {s.lower() for s in _SLOT.findall(old)}
    if not slots_new & slots_old:
        return False
    values_new = {v.lower() for v in _VALUE.findall(new)}
    values_old = {v.lower() for v in _VALUE.findall(old)}
    # Same attribute, and the new text carries a value the old one does not have.
    return bool(values_new - values_old) and bool(values_old - values_new)


def decide(
    candidate: CandidateMemory,
    existing: Sequence[Existing],
    recalled_similarity: float = 0.0,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Decision:
    """What to do with one candidate given the user's most relevant existing memories."""
    th = thresholds
    if candidate.role == "agent" and recalled_similarity >= th.echo:
        return Decision(Action.SKIP, reason="echo of a recalled memory")
    active = [e for e in existing if e.state == "active"]
    same_sector = [e for e in active if e.sector == candidate.sector]
    dup = max(same_sector, key=lambda e: (e.similarity, -e.id), default=None)
    if (
        dup is not None
        and dup.similarity >= th.duplicate
        and _negated(dup.content) == _negated(candidate.content)
    ):
        return Decision(Action.REINFORCE, target_id=dup.id, reason="near-duplicate")

    superseded: list[tuple[float, int]] = []
    replaced = replaced_objects(candidate.content)
    for e in active:
        if e.sector not in FACT_SECTORS or e.similarity >= 0.995:
            continue
        why = None
        if replaced and any(_contains_word(e.content, obj) for obj in replaced):
            why = "named as replaced"
        elif candidate.is_update and e.similarity >= th.update:
            why = "announced change"
        elif e.similarity >= th.slot and _slot_conflict(candidate.content, e.content):
            why = "same attribute, new value"
        elif e.similarity >= th.negation and _negated(e.content) != _negated(candidate.content):
            why = "opposite polarity"
        if why:
            superseded.append((e.similarity, e.id))
    superseded.sort(key=lambda x: (-x[0], x[1]))
    ids = tuple(i for _, i in superseded[: th.max_superseded])
    return Decision(Action.INSERT, supersede=ids, reason="contradiction" if ids else "new")


@dataclass(slots=True)
class Merged:
    candidate: CandidateMemory
    vector: npt.NDArray[np.float32]
    merged_sources: list[int] = field(default_factory=list)


def merge_within_call(
    candidates: Sequence[CandidateMemory],
    vectors: npt.NDArray[np.float32],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Merged]:
    """Collapse restatements inside one call (the agent confirming what the caller said)
    into one candidate whose sources are the union; the caller's wording wins."""
    out: list[Merged] = []
    for cand, vec in zip(candidates, vectors, strict=True):
        match = None
        for m in out:
            if (
                m.candidate.sector == cand.sector
                and float(m.vector @ vec) >= thresholds.within_call
                and _negated(m.candidate.content) == _negated(cand.content)
            ):
                match = m
                break
        if match is None:
            out.append(Merged(candidate=cand, vector=vec))
            continue
        keep = match.candidate
        if keep.role == "agent" and cand.role == "user":
            match.candidate, match.vector = cand, vec
            keep, cand = cand, keep
        keep.sources = tuple(sorted(set(keep.sources) | set(cand.sources)))
        keep.salience = max(keep.salience, cand.salience)
        keep.is_update = keep.is_update or cand.is_update
    return out


def merge_sources(
    existing: list[dict[str, object]] | None, conversation_id: str, turns: Sequence[int]
) -> list[dict[str, object]]:
    """Add (conversation, turns) provenance to a memory's ``sources`` (CONTRACT §4 shape)."""
    out = [dict(s) for s in (existing or [])]
    for src in out:
        if src.get("conversation_id") == conversation_id:
            old = src.get("turns")
            old_turns = [int(t) for t in old] if isinstance(old, list) else []
            src["turns"] = sorted(set(old_turns) | {int(t) for t in turns})
            return out
    out.append({"conversation_id": conversation_id, "turns": sorted({int(t) for t in turns})})
    return out
