"""The ``llm`` extractor: any OpenAI-compatible chat API (OpenAI, Ollama, vLLM) through the
official client, with JSON-schema structured output, a timeout, bounded retries, token
accounting, and a fallback to the local extractor on any failure (recorded in the result).

One call per transcript, whatever its length: cost is bounded (Graphiti's per-entity call
explosion is what users complain about).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from db import metrics, tracing
from memory.extractors.local import LocalExtractor
from memory.extractors.text import format_date
from memory.types import SECTORS, CallForExtraction, CandidateMemory, ExtractionResult

if TYPE_CHECKING:
    from openai import OpenAI

NAME = "llm"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["memories"],
    "properties": {
        "memories": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["content", "sector", "salience", "turns", "kind", "is_update"],
                "properties": {
                    "content": {"type": "string"},
                    "sector": {"type": "string", "enum": list(SECTORS)},
                    "salience": {"type": "number"},
                    "turns": {"type": "array", "items": {"type": "integer"}},
                    "kind": {
                        "type": "string",
                        "enum": ["fact", "preference", "event", "commitment", "emotion", "pattern"],
                    },
                    "is_update": {"type": "boolean"},
                },
            },
        }
    },
}

SYSTEM_PROMPT = """You turn a phone call transcript into long-term memories about the caller.
Rules:
- Each memory is one short, self-contained statement in the third person, with names instead \
of pronouns and absolute dates instead of "yesterday" (the call date is given).
- Sectors: semantic = facts, preferences, attributes; episodic = events, including what the \
agent promised to do (kind "commitment", e.g. "The agent will send the pricing PDF by \
Friday."); procedural = how the caller wants things done; emotional = the caller's sentiment; \
reflective = patterns across calls.
- Use both roles: the caller's facts and the agent's commitments. Skip greetings, small talk \
and anything the agent merely read back from memory lookups.
- salience 0-1 = how useful this is for a future call. turns = the [index] numbers of the \
transcript lines it comes from. is_update = true when it changes an earlier fact \
("moving to HubSpot" after using Salesforce).
Return JSON only."""

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.S)


class LLMExtractionError(RuntimeError):
    """The model's answer was unusable; the caller falls back to the local extractor."""


def render_transcript(call: CallForExtraction) -> str:
    caller = call.caller_name or "caller"
    agent = call.agent_name or "agent"
    lines = [f"Call date: {format_date(call.start_time)}"]
    if call.transcript_summary:
        lines.append(f"Summary by the call platform: {call.transcript_summary}")
    if call.data_collection:
        lines.append("Collected data: " + json.dumps(dict(call.data_collection), default=str))
    if call.recalled:
        lines.append("Memories read back during the call (do not store again): ")
        lines.extend(f"- {r}" for r in call.recalled)
    lines.append("Transcript:")
    for t in call.turns:
        if t.text.strip():
            who = caller if t.role == "user" else agent
            lines.append(f"[{t.index}] {t.role} ({who}): {t.text}")
    return "\n".join(lines)


def parse_memories(raw: str, call: CallForExtraction) -> list[CandidateMemory]:
    """Tolerant: strips <think> blocks and code fences (local models emit both)."""
    text = _FENCE.sub("", _THINK.sub("", raw).strip()).strip()
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise LLMExtractionError(f"not JSON: {exc}") from exc
    items = body.get("memories") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise LLMExtractionError("no memories array")
    valid_turns = {t.index for t in call.turns}
    roles = {t.index: t.role for t in call.turns}
    out: list[CandidateMemory] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        content = str(item.get("content") or "").strip()
        sector = str(item.get("sector") or "").strip().lower()
        if not content or sector not in SECTORS:
            continue
        try:
            salience = float(item.get("salience", 0.5))
        except (TypeError, ValueError):
            salience = 0.5
        turns = tuple(
            sorted({int(t) for t in item.get("turns") or [] if isinstance(t, int | float)})
        )
        turns = tuple(t for t in turns if t in valid_turns)
        role_set = {roles[t] for t in turns}
        out.append(
            CandidateMemory(
                content=content[:500],
                sector=sector,
                salience=round(min(1.0, max(0.0, salience)), 4),
                sources=turns,
                valid_from=call.start_time,
                kind=str(item.get("kind") or "fact"),
                role=next(iter(role_set)) if len(role_set) == 1 else None,
                is_update=bool(item.get("is_update", False)),
            )
        )
    return out


class LLMExtractor:
    name = NAME

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_secs: float = 20.0,
        max_retries: int = 2,
        client: OpenAI | None = None,
        fallback: LocalExtractor | None = None,
    ) -> None:
        if client is None:
            from openai import OpenAI

            # Retries are ours (below) so that malformed output is retried too and every
            # attempt is counted; the client's own retry loop is switched off.
            client = OpenAI(
                api_key=api_key or "not-needed",
                base_url=base_url,
                timeout=timeout_secs,
                max_retries=0,
            )
        self._client = client
        self.model = model
        self.timeout_secs = timeout_secs
        self.max_retries = max(0, max_retries)
        self._fallback = fallback or LocalExtractor()

    def _attempt(self, call: CallForExtraction) -> tuple[list[CandidateMemory], int, int]:
        started = time.perf_counter()
        try:
            response = self._create(call)
        except Exception:
            metrics.observe_llm_call("chat", self.model, "error", time.perf_counter() - started)
            raise
        usage = response.usage
        prompt = int(usage.prompt_tokens) if usage else 0
        completion = int(usage.completion_tokens) if usage else 0
        metrics.observe_llm_call(
            "chat",
            self.model,
            "ok",
            time.perf_counter() - started,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if not response.choices:
            raise LLMExtractionError("no choices")
        content = response.choices[0].message.content or ""
        return parse_memories(content, call), prompt, completion

    def _create(self, call: CallForExtraction) -> Any:
        return self._client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": render_transcript(call)},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "memories", "schema": SCHEMA, "strict": True},
            },
            temperature=0,
            timeout=self.timeout_secs,
        )

    def extract(self, call: CallForExtraction) -> ExtractionResult:
        with metrics.time_extraction(NAME), tracing.span("extract.llm"):
            return self._extract(call)

    def _extract(self, call: CallForExtraction) -> ExtractionResult:
        started = time.perf_counter()
        prompt_tokens = completion_tokens = 0
        last_error = "unknown"
        attempts = 0
        for attempt in range(self.max_retries + 1):
            attempts += 1
            try:
                memories, p, c = self._attempt(call)
            # Any failure (network, 5xx, timeout, bad JSON) means retry, then fall back.
            except Exception as exc:  # noqa: BLE001
                last_error = f"{type(exc).__name__}: {exc}"[:300]
                if attempt < self.max_retries:
                    time.sleep(min(2.0, 0.25 * 2**attempt))
                continue
            prompt_tokens += p
            completion_tokens += c
            return ExtractionResult(
                memories=memories,
                extractor=NAME,
                model=self.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                attempts=attempts,
                duration_ms=(time.perf_counter() - started) * 1000.0,
            )
        metrics.observe_llm_fallback("extractor", last_error.split(":", 1)[0])
        result = self._fallback.extract(call)
        result.extractor = f"{NAME}->local"
        result.model = self.model
        result.attempts = attempts
        result.fallback_reason = last_error
        result.duration_ms = (time.perf_counter() - started) * 1000.0
        return result
