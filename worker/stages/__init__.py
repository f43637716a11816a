"""The pipeline's stage list.

To add a stage (memory extraction, embedding, linking, summaries, ...): write
``Stage(name, apply=..., prepare=...)`` next to your domain code and append it in
``default_stages()`` after the core stages, which guarantee ``ctx.user``,
``ctx.conversation`` and ``ctx.turns`` for ``post_call_transcription`` events.
"""

from __future__ import annotations

from worker.pipeline import Stage
from worker.stages.conversation import CORE_STAGES


def default_stages() -> list[Stage]:
    return list(CORE_STAGES)


__all__ = ["CORE_STAGES", "Stage", "default_stages"]
