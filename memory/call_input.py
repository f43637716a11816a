"""Build a :class:`CallForExtraction` from an ElevenLabs ``post_call_transcription`` payload.

The worker may also build it from stored rows; this parser is the tolerant reference (unknown
keys ignored, null messages kept as empty turns so indices match the transcript array).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from memory.types import CallForExtraction, Role, Turn

MEMORY_TOOL_NAMES = frozenset({"memory_query", "memory-query", "memoryquery"})


def recalled_contents(transcript: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """Memory texts the memory_query tool returned during the call (for echo suppression)."""
    out: list[str] = []
    for item in transcript:
        for result in item.get("tool_results") or []:
            name = str(result.get("tool_name") or "").lower()
            if name not in MEMORY_TOOL_NAMES or result.get("is_error"):
                continue
            try:
                body = json.loads(result.get("result_value") or "{}")
            except (TypeError, ValueError):
                continue
            if not isinstance(body, dict):
                continue
            for memory in body.get("memories") or []:
                if isinstance(memory, dict) and isinstance(memory.get("content"), str):
                    out.append(memory["content"])
            if isinstance(body.get("summary"), str) and body["summary"].strip():
                out.append(body["summary"])
    return tuple(out)


def call_from_elevenlabs(
    data: Mapping[str, Any],
    *,
    caller_name: str | None = None,
    agent_name: str | None = None,
) -> CallForExtraction:
    transcript = list(data.get("transcript") or [])
    metadata = data.get("metadata") or {}
    analysis = data.get("analysis") or {}
    start = datetime.fromtimestamp(int(metadata.get("start_time_unix_secs") or 0), tz=UTC)
    turns = []
    for index, item in enumerate(transcript):
        role: Role = "agent" if item.get("role") == "agent" else "user"
        turns.append(
            Turn(
                index=index,
                role=role,
                text=str(item.get("message") or ""),
                time_in_call_secs=item.get("time_in_call_secs"),
            )
        )
    collected: dict[str, Any] = {}
    for key, item in (analysis.get("data_collection_results") or {}).items():
        value = item.get("value") if isinstance(item, Mapping) else item
        if value is not None:
            collected[str(key)] = value
    init = data.get("conversation_initiation_client_data") or {}
    dynamic = init.get("dynamic_variables") or {}
    if caller_name is None:
        raw = dynamic.get("user_name")
        caller_name = raw if isinstance(raw, str) and raw.strip() else None
    return CallForExtraction(
        conversation_id=str(data.get("conversation_id") or ""),
        start_time=start,
        turns=tuple(turns),
        caller_name=caller_name,
        agent_name=agent_name,
        transcript_summary=analysis.get("transcript_summary"),
        data_collection=collected,
        call_successful=analysis.get("call_successful"),
        recalled=recalled_contents(transcript),
    )
