"""User summary regenerated after each call: extractive by default, LLM when configured.

Extractive = the user's most useful current memories (decayed salience × recency, one or two
per sector so a single topic cannot crowd out the rest), as plain sentences an agent can read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Memory, User
from memory.scoring import days_between, decayed_salience, recency_score

if TYPE_CHECKING:
    from openai import OpenAI

MAX_SUMMARY_CHARS = 700
PER_SECTOR = {"semantic": 3, "procedural": 2, "episodic": 2, "emotional": 1, "reflective": 1}
SECTOR_ORDER = ("semantic", "procedural", "episodic", "reflective", "emotional")


def rank(m: Memory, now: datetime) -> float:
    days = days_between(m.recency, now)
    return decayed_salience(m.salience, m.sector_type, days) * (
        0.5 + 0.5 * recency_score(m.sector_type, m.recency, now)
    )


def top_memories(session: Session, user_id: str, now: datetime, limit: int = 200) -> list[Memory]:
    rows = (
        session.execute(
            select(Memory)
            .where(Memory.user_id == user_id, Memory.state == "active", Memory.valid_to.is_(None))
            .order_by(Memory.salience.desc(), Memory.recency.desc())
            .limit(limit)
        )
        .scalars()
        .all()
    )
    return sorted(rows, key=lambda m: (-rank(m, now), m.id))


def extractive_summary(memories: list[Memory]) -> str:
    picked: dict[str, list[str]] = {}
    for m in memories:
        bucket = picked.setdefault(m.sector_type, [])
        if len(bucket) < PER_SECTOR.get(m.sector_type, 1):
            text = m.content.strip()
            bucket.append(text if text.endswith((".", "!", "?")) else text + ".")
    parts: list[str] = []
    for sector in SECTOR_ORDER:
        parts.extend(picked.get(sector, []))
    out = ""
    for p in parts:
        if len(out) + len(p) + 1 > MAX_SUMMARY_CHARS:
            break
        out = f"{out} {p}".strip()
    return out


def llm_summary(client: OpenAI, model: str, memories: list[Memory], timeout: float) -> str:
    facts = "\n".join(f"- ({m.sector_type}) {m.content}" for m in memories[:30])
    response = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "system",
                "content": "Summarise what a phone agent should know about this caller in at "
                "most three plain sentences (no lists, no markdown). Use only the facts given.",
            },
            {"role": "user", "content": facts},
        ],
        temperature=0,
        timeout=timeout,
    )
    text = (response.choices[0].message.content or "").strip() if response.choices else ""
    return text[:MAX_SUMMARY_CHARS]


def regenerate_summary(
    session: Session,
    user_id: str,
    *,
    now: datetime | None = None,
    client: OpenAI | None = None,
    model: str = "gpt-4o-mini",
    timeout: float = 10.0,
) -> str:
    """Recompute and store ``users.summary``; an LLM failure falls back to extractive."""
    now = now or datetime.now(UTC)
    memories = top_memories(session, user_id, now)
    summary = ""
    if client is not None and memories:
        try:
            summary = llm_summary(client, model, memories, timeout)
        except Exception:  # noqa: BLE001 - any LLM failure: the extractive summary is fine
            summary = ""
    if not summary:
        summary = extractive_summary(memories)
    user = session.get(User, user_id)
    if user is not None:
        user.summary = summary or None
    return summary
