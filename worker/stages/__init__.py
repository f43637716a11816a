"""The pipeline's stage list.

To add a stage (memory extraction, embedding, linking, summaries, ...): write
``Stage(name, apply=..., prepare=...)`` next to your domain code and append it in
``default_stages()`` after the core stages, which guarantee ``ctx.user``,
``ctx.conversation`` and ``ctx.turns`` for ``post_call_transcription`` events.
"""

from __future__ import annotations

from worker.pipeline import Stage
from worker.stages.conversation import CORE_STAGES
from worker.stages.insights import INSIGHT_STAGES
from worker.stages.memories import MEMORY_STAGES


def default_stages() -> list[Stage]:
    return [
        *CORE_STAGES,
        *MEMORY_STAGES,  # issue 4: extract, embed, consolidate, link, summary
        *INSIGHT_STAGES,  # issue 7: session memory, issue patterns, entities, profile, reflection
    ]


__all__ = ["CORE_STAGES", "Stage", "default_stages"]
