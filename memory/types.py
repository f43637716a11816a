"""Value types shared by extraction, consolidation, storage and retrieval.

The worker builds a :class:`CallForExtraction` from stored rows (or straight from an ElevenLabs
payload with :func:`memory.call_input.call_from_elevenlabs`); extractors turn it into
:class:`CandidateMemory` values; :mod:`memory.store` persists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal


class Sector(StrEnum):
    SEMANTIC = "semantic"  # facts, preferences, attributes
    EPISODIC = "episodic"  # events, things done or promised
    PROCEDURAL = "procedural"  # how the caller wants things done
    EMOTIONAL = "emotional"  # sentiment
    REFLECTIVE = "reflective"  # patterns across calls


SECTORS: tuple[str, ...] = tuple(s.value for s in Sector)

Role = Literal["user", "agent"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One transcript turn; ``index`` is its 0-based position in the call's transcript array
    (tool-call turns with no text keep their index, so provenance matches CONTRACT §4)."""

    index: int
    role: Role
    text: str
    time_in_call_secs: int | None = None


@dataclass(frozen=True, slots=True)
class CallForExtraction:
    conversation_id: str
    start_time: datetime
    turns: tuple[Turn, ...]
    # Names resolve "I"/"you" into self-contained third-person memories.
    caller_name: str | None = None
    agent_name: str | None = None
    transcript_summary: str | None = None
    # data_collection_results flattened to {item id: value}; null values dropped.
    data_collection: Mapping[str, Any] = field(default_factory=dict)
    call_successful: str | None = None
    # Contents of memories the memory_query tool returned during this call: when the agent
    # reads them back they must not be stored again (mem0's re-stored-recall junk).
    recalled: tuple[str, ...] = ()


@dataclass(slots=True)
class CandidateMemory:
    content: str
    sector: str
    salience: float
    sources: tuple[int, ...]  # turn indices in this call
    valid_from: datetime | None = None
    # Why it exists: "fact", "commitment", "preference", "event", "emotion", "summary",
    # "data_collection", "pattern". Stored in metadata; drives consolidation rules.
    kind: str = "fact"
    role: Role | None = None
    # Set by rule-based extraction when the text announces a change ("moving to", "switched",
    # "no longer"): consolidation then looks for the older fact to supersede.
    is_update: bool = False


@dataclass(slots=True)
class ExtractionResult:
    memories: list[CandidateMemory]
    extractor: str  # "local" | "llm" | "llm->local" (fell back)
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    fallback_reason: str | None = None
    duration_ms: float = 0.0
