"""Memory stages: extraction and embedding in ``prepare`` (outside the write lock: an LLM call
or a batch of embeddings must never hold SQLite's single writer), then consolidation, links
and the user's summary in ``apply``, inside the transaction that completes the event — so a
memory becomes queryable exactly when its call is marked processed, and never twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from db import metrics
from db.settings import Settings
from memory.call_input import call_from_elevenlabs, recalled_contents
from memory.embedders import Embedder
from memory.engine import build_writer, embedder_for, extractor_for
from memory.extractors.local import introduced_name
from memory.summary import regenerate_summary
from memory.types import CallForExtraction, ExtractionResult
from worker.pipeline import PrepareContext, Stage, StageContext

log = structlog.get_logger("voxmem.memories")


class PrecomputedEmbedder:
    """Serves vectors computed in ``prepare`` so ``apply`` embeds nothing new under the lock;
    any text not seen in prepare (none in practice) falls through to the real embedder."""

    def __init__(self, base: Embedder, vectors: Mapping[str, np.ndarray]) -> None:
        self.base = base
        self.name = base.name
        self.dim = base.dim
        self._vectors = dict(vectors)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            for text, vec in zip(missing, self.base.embed(list(missing)), strict=True):
                self._vectors[text] = vec
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class PreparedMemories:
    call: CallForExtraction
    extraction: ExtractionResult
    vectors: dict[str, np.ndarray]


def _call_for(data: Mapping[str, object]) -> CallForExtraction:
    call = call_from_elevenlabs(data)
    transcript = data.get("transcript")
    if isinstance(transcript, list) and not call.recalled:
        recalled = recalled_contents([t for t in transcript if isinstance(t, Mapping)])
        if recalled:
            from dataclasses import replace

            call = replace(call, recalled=recalled)
    return call


def prepare_memories(ctx: PrepareContext) -> PreparedMemories | None:
    if ctx.call is None or not ctx.data.get("transcript"):
        return None
    call = _call_for(ctx.data)
    extraction = extractor_for(ctx.settings).extract(call)
    if extraction.fallback_reason:
        metrics.observe_llm_fallback("extractor", extraction.fallback_reason[:60])
    ctx.check_lease()
    texts = [c.content for c in extraction.memories if c.content.strip()]
    texts += [t for t in call.recalled if t.strip()]
    vectors: dict[str, np.ndarray] = {}
    if texts:
        embedded = embedder_for(ctx.settings).embed(texts)
        vectors = {t: embedded[i] for i, t in enumerate(texts)}
    return PreparedMemories(call=call, extraction=extraction, vectors=vectors)


def apply_memories(ctx: StageContext) -> None:
    prepared = ctx.prepared.get("memories")
    if not isinstance(prepared, PreparedMemories):
        return
    user = ctx.require_user()
    conversation = ctx.require_conversation()
    settings: Settings = ctx.settings
    writer = build_writer(
        settings, embedder=PrecomputedEmbedder(embedder_for(settings), prepared.vectors)
    )
    report = writer.write_call(
        ctx.session,
        user_id=user.user_id,
        conversation_id=conversation.conversation_id,
        extraction=prepared.extraction,
        conversation_fk=conversation.id,
        recalled=prepared.call.recalled,
        # Memories date from the call, not from when a worker got round to it (temporal
        # questions and recency both depend on it).
        now=conversation.start_time,
    )
    # A caller who said their name is greeted by it next time (init's user_name); an operator's
    # edit is never overwritten.
    if not user.name:
        spoken = prepared.call.caller_name or introduced_name(prepared.call.turns)
        if spoken:
            user.name = spoken
    # Extractive here: an LLM summary would hold the write lock for seconds.
    regenerate_summary(ctx.session, user.user_id, now=ctx.now)
    log.info(
        "memories.written",
        event_id=ctx.job.id,
        user_id=user.user_id,
        extractor=prepared.extraction.extractor,
        inserted=len(report.inserted),
        reinforced=len(report.reinforced),
        superseded=len(report.superseded),
        echoes_skipped=report.skipped_echoes,
        links=report.links_written,
    )


MEMORY_STAGES = [Stage("memories", apply=apply_memories, prepare=prepare_memories)]
