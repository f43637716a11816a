"""Customer profile (seed 000 story 5.1.2, seed 004 preference learning).

Fields: industry, company_name, company_size, goals, pain_points, preferences (tone,
detail_level, format), communication_style, expertise_level, common_topics; plus completeness
with seed 000's weights (industry 15, company 10, size 10, goals 20, pain points 15,
communication style 10, preferences 20 → 0.0–1.0).

How it is learned, all inside the post-call transaction unless said otherwise:

- every call: call count, common topics (session memory), communication style and response
  length from the caller's own words as seed 004 does (formal: "please", "thank you",
  "appreciate", "kindly"; casual: "hey", "thanks", "cool", "awesome"; brief < 50 characters per
  message, detailed > 150), explicit requests in the call ("could you keep it short"), and
  ElevenLabs ``data_collection_results`` items named like profile fields;
- from the ``profile_enrichment_calls``-th call (3) on: enrichment. Heuristics (industry and
  company from the entity extractor, size, goals, pain points, expertise) run inline; when an
  LLM is configured, the reflection event (a queued internal job, see :mod:`memory.reflection`)
  also asks it, outside any write transaction, and merges the answer. An LLM failure is stored
  in ``user_profiles.enrichment_error`` (reported by ``/health``) and the heuristic profile
  stays: enrichment never blocks the core memory path;
- explicit feedback (admin API) sets fields and pins them, so no later inference overrides them.

The profile JSON is encrypted (``user_profiles.profile``); only the style label is plaintext.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Conversation, ConversationTurn, User, UserProfile
from db.types import utcnow
from memory import entities as entity_mod
from memory import session as session_mod
from memory.context import clip

if TYPE_CHECKING:
    from db.settings import Settings

log = structlog.get_logger("voxmem.profile")

WEIGHTS: dict[str, int] = {
    "industry": 15,
    "company_name": 10,
    "company_size": 10,
    "goals": 20,
    "pain_points": 15,
    "communication_style": 10,
    "preferences": 20,
}
STYLES = ("formal", "casual", "balanced")
TONES = ("formal", "casual", "balanced")
DETAIL_LEVELS = ("low", "medium", "high")
FORMATS = ("short_answer", "step_by_step", "detailed_explanation", "follow_up_by_email")
EXPERTISE = ("beginner", "intermediate", "expert")
SIZES = ("1-10", "11-50", "51-200", "201-1000", "1000+")
LIST_FIELDS = ("goals", "pain_points")
TEXT_FIELDS = ("industry", "company_name", "company_size", "expertise_level")
FEEDBACK_FIELDS = (
    "tone",
    "detail_level",
    "format",
    "communication_style",
    "expertise_level",
    "industry",
    "company_name",
    "company_size",
    "goals",
    "pain_points",
)
MAX_LIST = 5
HISTORY_CALLS = 10

# Seed 004's keyword sets, whole words, case-insensitive.
FORMAL_WORDS = (
    "please",
    "thank you",
    "appreciate",
    "kindly",
    "would you",
    "could you",
    "sincerely",
    "regards",
    "i would be grateful",
)
CASUAL_WORDS = (
    "hey",
    "thanks",
    "cool",
    "awesome",
    "yeah",
    "yep",
    "gonna",
    "wanna",
    "no worries",
    "cheers",
    "lol",
)
TECH_WORDS = (
    "api",
    "webhook",
    "sso",
    "dns",
    "oauth",
    "token",
    "json",
    "endpoint",
    "cache",
    "cookies",
    "browser",
    "server",
    "database",
    "ssl",
    "2fa",
    "integration",
    "sdk",
)
INDUSTRIES: tuple[tuple[str, str], ...] = (
    (r"dental|dentist", "dental"),
    (r"clinic|hospital|patients?|healthcare|medical|pharmacy", "healthcare"),
    (r"law firm|legal|attorneys?|lawyers?", "legal"),
    (r"restaurant|cafe|catering|bakery", "hospitality"),
    (r"real estate|realtor|property management", "real estate"),
    (r"e-?commerce|online store|online shop", "e-commerce"),
    (r"saas|software company|startup|app developer", "software"),
    (r"school|university|students|tutoring", "education"),
    (r"accounting|bookkeeping|insurance|bank|financial advis", "finance"),
    (r"construction|contractor|plumbing|roofing", "construction"),
    (r"marketing agency|ad agency|marketing", "marketing"),
    (r"logistics|trucking|freight|warehouse", "logistics"),
    (r"retail|boutique", "retail"),
    (r"non-?profit|charity", "non-profit"),
)
_GOAL = re.compile(
    r"\b(?:i want to|i'd like to|i would like to|we want to|we need to|i need to|we're trying "
    r"to|we are trying to|i'm trying to|i am trying to|our goal is to|my goal is to|looking to|"
    r"hoping to|planning to)\s+([^.!?]{4,120})",
    re.I,
)
_PAIN = re.compile(
    r"\b(?:can't|cannot|couldn't|can not|doesn't work|does not work|not working|keeps|error|"
    r"frustrat\w*|problem|issue|didn't (?:receive|get)|never (?:received|got)|too slow|broken|"
    r"failed|fails|invalid|locked out|wrong)\b",
    re.I,
)
_SIZE = re.compile(
    r"\b(?:team of|staff of|about|around|we have|we're|we are|company of)?\s*(\d[\d,]*)\s*"
    r"(?:-\s*)?(?:employees|people|staff|person|users|seats|agents|members)\b",
    re.I,
)
_SOLO = re.compile(r"\b(?:just me|one-person|solo|sole proprietor|freelancer?)\b", re.I)
_BEGINNER = re.compile(
    r"\b(?:not (?:very |that |too )?(?:technical|tech-savvy|good with (?:computers|tech))|"
    r"no idea how|i'm new to|i am new to|first time (?:using|doing)|not sure how)\b",
    re.I,
)
# Explicit requests in the call itself (seed 000: "profile updates on explicit feedback").
SPOKEN_FEEDBACK: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(
            r"\b(?:keep it|be) (?:short|brief|quick)|short version|just the (?:answer|"
            r"basics)|bottom line\b",
            re.I,
        ),
        "detail_level",
        "low",
    ),
    (
        re.compile(
            r"\b(?:more detail|in detail|explain (?:it )?(?:fully|properly|thoroughly)|"
            r"walk me through|step by step)\b",
            re.I,
        ),
        "detail_level",
        "high",
    ),
    (
        re.compile(r"\b(?:walk me through|step by step|one step at a time)\b", re.I),
        "format",
        "step_by_step",
    ),
    (
        re.compile(
            r"\b(?:email me|send (?:it|me|that|the details|a summary) (?:to me )?by email|"
            r"in writing)\b",
            re.I,
        ),
        "format",
        "follow_up_by_email",
    ),
    (
        re.compile(
            r"\b(?:no need to be (?:so )?formal|you can be casual|call me \w+, not)\b", re.I
        ),
        "tone",
        "casual",
    ),
)


def _count(text: str, phrase: str) -> int:
    return len(re.findall(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text))


# --------------------------------------------------------------------------------------------
# Derivations from the caller's words
# --------------------------------------------------------------------------------------------
def communication_style(lines: Sequence[str]) -> str | None:
    """Seed 004: formal vs casual keyword counts; ``balanced`` when neither clearly leads.
    None until the caller has said at least three things (seed 004's minimum)."""
    if len(lines) < 3:
        return None
    text = " ".join(lines).lower()
    formal = sum(_count(text, w) for w in FORMAL_WORDS)
    casual = sum(_count(text, w) for w in CASUAL_WORDS)
    if formal >= 2 and formal > casual:
        return "formal"
    if casual >= 2 and casual > formal:
        return "casual"
    return "balanced"


def detail_level(lines: Sequence[str]) -> str | None:
    """Seed 004's response-length preference from the caller's average message length."""
    if len(lines) < 3:
        return None
    average = sum(len(s) for s in lines) / len(lines)
    if average < 50:
        return "low"
    if average > 150:
        return "high"
    return "medium"


def expertise_level(lines: Sequence[str]) -> str | None:
    if not lines:
        return None
    text = " ".join(lines)
    if _BEGINNER.search(text):
        return "beginner"
    tech = sum(_count(text.lower(), w) for w in TECH_WORDS)
    return "expert" if tech >= 3 else "intermediate"


def industry_of(lines: Sequence[str]) -> str | None:
    text = " ".join(lines).lower()
    votes: Counter[str] = Counter()
    for pattern, label in INDUSTRIES:
        hits = len(re.findall(rf"\b(?:{pattern})\b", text))
        if hits:
            votes[label] += hits
    return votes.most_common(1)[0][0] if votes else None


def size_bucket(n: int) -> str:
    if n <= 10:
        return "1-10"
    if n <= 50:
        return "11-50"
    if n <= 200:
        return "51-200"
    if n <= 1000:
        return "201-1000"
    return "1000+"


def company_size(lines: Sequence[str]) -> str | None:
    text = " ".join(lines)
    if _SOLO.search(text):
        return "1-10"
    for match in _SIZE.finditer(text):
        try:
            n = int(match.group(1).replace(",", ""))
        except ValueError:
            continue
        if 0 < n < 10_000_000:
            return size_bucket(n)
    return None


def _sentences(lines: Iterable[str]) -> list[str]:
    return [s.strip() for line in lines for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]


def goals(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for match in _GOAL.finditer(" ".join(lines)):
        goal = clip(" ".join(match.group(1).split()).rstrip(",;"), 100)
        if goal.lower() not in {g.lower() for g in out}:
            out.append(goal)
    return out[:MAX_LIST]


def pain_points(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for sentence in _sentences(lines):
        if _PAIN.search(sentence) and len(sentence.split()) >= 3:
            point = clip(sentence.rstrip("."), 100)
            if point.lower() not in {p.lower() for p in out}:
                out.append(point)
    return out[:MAX_LIST]


def spoken_feedback(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        for pattern, key, value in SPOKEN_FEEDBACK:
            if pattern.search(line):
                found[key] = value
    return found


def company_name(lines: Sequence[str]) -> str | None:
    found = entity_mod.extract(lines)
    works = [e.target for e in found.edges if e.source is None and e.relation == "works_at"]
    return max(works, key=lambda m: m.confidence).name if works else None


# --------------------------------------------------------------------------------------------
# The stored profile
# --------------------------------------------------------------------------------------------
def completeness(data: Mapping[str, Any], style: str | None) -> float:
    """Seed 000's trigger, as a fraction: each field present adds its weight / 100."""
    score = 0
    for name, weight in WEIGHTS.items():
        value = style if name == "communication_style" else data.get(name)
        if value:  # non-empty string, list or dict
            score += weight
    return round(score / 100, 2)


def load(row: UserProfile | None) -> dict[str, Any]:
    if row is None or not row.profile:
        return {}
    try:
        data = json.loads(row.profile)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _store(row: UserProfile, data: dict[str, Any]) -> None:
    row.profile = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    row.completeness = completeness(data, row.communication_style)
    row.updated_at = utcnow()


def get_or_create(session: Session, user_id: str) -> UserProfile:
    row = session.get(UserProfile, user_id)
    if row is None:
        row = UserProfile(user_id=user_id, profile="{}", completeness=0.0, call_count=0)
        session.add(row)
        session.flush()
    return row


def _pinned(data: Mapping[str, Any]) -> set[str]:
    return set(data.get("pinned") or [])


def _set(data: dict[str, Any], key: str, value: Any, pinned: set[str]) -> None:
    """Inferred values never override an operator's or caller's explicit choice."""
    if value in (None, "", [], {}) or key in pinned:
        return
    if key in ("tone", "detail_level", "format"):
        prefs = dict(data.get("preferences") or {})
        prefs[key] = value
        data["preferences"] = prefs
    else:
        data[key] = value


def _merge_list(data: dict[str, Any], key: str, values: Sequence[str], pinned: set[str]) -> None:
    if key in pinned or not values:
        return
    current = [str(v) for v in data.get(key) or []]
    for v in values:
        if v.lower() not in {c.lower() for c in current}:
            current.append(v)
    data[key] = current[-MAX_LIST:]


def caller_history(session: Session, user_id: str, calls: int = HISTORY_CALLS) -> list[str]:
    """The caller's own lines over their last ``calls`` calls, oldest first."""
    conv_ids = list(
        session.scalars(
            select(Conversation.id)
            .where(Conversation.user_id == user_id)
            .order_by(Conversation.start_time.desc())
            .limit(calls)
        )
    )
    if not conv_ids:
        return []
    rows = session.execute(
        select(ConversationTurn.message)
        .join(Conversation, Conversation.id == ConversationTurn.conversation_fk)
        .where(ConversationTurn.conversation_fk.in_(conv_ids), ConversationTurn.role == "user")
        .order_by(Conversation.start_time, ConversationTurn.turn_order)
    )
    return [m.strip() for (m,) in rows if m and m.strip()]


def call_count(session: Session, user_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.user_id == user_id, Conversation.status != "initiation_failed")
        )
        or 0
    )


def _collected(data_collection: Mapping[str, Any]) -> dict[str, Any]:
    """ElevenLabs data_collection_results items named like profile fields."""
    aliases = {
        "industry": "industry",
        "company": "company_name",
        "company_name": "company_name",
        "company_size": "company_size",
        "team_size": "company_size",
        "goal": "goals",
        "goals": "goals",
        "pain_point": "pain_points",
        "pain_points": "pain_points",
        "expertise": "expertise_level",
        "expertise_level": "expertise_level",
    }
    out: dict[str, Any] = {}
    for key, item in data_collection.items():
        target = aliases.get(str(key).lower())
        value = item.get("value") if isinstance(item, Mapping) else item
        if target is None or value in (None, "", []):
            continue
        if target in LIST_FIELDS:
            values = value if isinstance(value, list) else [value]
            out[target] = [clip(str(v), 100) for v in values if str(v).strip()]
        elif target == "company_size":
            digits = re.sub(r"[^\d]", "", str(value))
            out[target] = size_bucket(int(digits)) if digits else str(value)[:16]
        else:
            out[target] = clip(str(value), 80)
    return out


def update_after_call(
    session: Session,
    settings: Settings,
    user: User,
    *,
    data_collection: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> UserProfile:
    """The per-call profile update (worker stage). Idempotent: derived from stored calls."""
    now = now or utcnow()
    row = get_or_create(session, user.user_id)
    data = load(row)
    pinned = _pinned(data)
    lines = caller_history(session, user.user_id)
    row.call_count = call_count(session, user.user_id)

    style = communication_style(lines)
    if style is not None and "communication_style" not in pinned:
        row.communication_style = style
    _set(data, "tone", style if style != "balanced" else None, pinned)
    _set(data, "detail_level", detail_level(lines), pinned)
    for key, value in spoken_feedback(lines).items():
        _set(data, key, value, pinned)
    data["common_topics"] = session_mod.common_topics(
        session_mod.topic_counts(session, user.user_id, now=now)
    ) or data.get("common_topics", [])
    for key, value in _collected(data_collection or {}).items():
        if key in LIST_FIELDS:
            _merge_list(data, key, value, pinned)
        else:
            _set(data, key, value, pinned)

    if row.call_count >= settings.profile_enrichment_calls:
        enrich_heuristically(data, lines, pinned)
        meta = dict(data.get("enrichment") or {})
        meta.update(heuristic_at=now.isoformat(), heuristic_calls=row.call_count)
        data["enrichment"] = meta
        row.enriched_at = now
    _store(row, data)
    return row


def enrich_heuristically(data: dict[str, Any], lines: Sequence[str], pinned: set[str]) -> None:
    for key, value in (
        ("industry", industry_of(lines)),
        ("company_name", company_name(lines)),
        ("company_size", company_size(lines)),
        ("expertise_level", expertise_level(lines)),
    ):
        if not data.get(key) or data.get("enrichment", {}).get("method") != "llm":
            _set(data, key, value, pinned)
    _merge_list(data, "goals", goals(lines), pinned)
    _merge_list(data, "pain_points", pain_points(lines), pinned)


# --------------------------------------------------------------------------------------------
# LLM enrichment (run from the reflection job's prepare phase: no transaction is open)
# --------------------------------------------------------------------------------------------
ENRICH_PROMPT = """Analyze what this customer said on support calls and extract profile \
information. Return one JSON object with any of these keys you have evidence for:
"industry" (string), "company_name" (string), "company_size" ("1-10"|"11-50"|"51-200"|\
"201-1000"|"1000+"), "goals" (list of short strings), "pain_points" (list of short strings),
"communication_style" ("formal"|"casual"|"balanced"), "expertise_level" \
("beginner"|"intermediate"|"expert"), "preferences": {"tone": "formal"|"casual"|"balanced", \
"detail_level": "low"|"medium"|"high", "format": "short_answer"|"step_by_step"|\
"detailed_explanation"|"follow_up_by_email"}.
Be specific and evidence-based. If unclear, omit the key.

CUSTOMER SAID:
"""


def llm_configured(settings: Settings) -> bool:
    if settings.profile_enrichment == "heuristic":
        return False
    if settings.profile_enrichment == "llm":
        return True
    return bool(settings.openai_api_key or settings.openai_base_url)


@dataclass(frozen=True, slots=True)
class LlmEnrichment:
    fields: dict[str, Any] | None
    error: str | None
    model: str
    duration_ms: float


def llm_enrich(settings: Settings, lines: Sequence[str]) -> LlmEnrichment:
    """Ask the configured OpenAI-compatible model (official ``openai`` client); never raises."""
    started = time.perf_counter()
    model = settings.llm_model
    try:
        from openai import OpenAI

        client = OpenAI(
            api_key=settings.openai_api_key or "unused",
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout_secs,
            max_retries=settings.llm_max_retries,
        )
        said = "\n".join(f"- {clip(s, 300)}" for s in lines[-60:])
        reply = client.chat.completions.create(
            model=model,
            temperature=0.2,
            response_format={"type": "json_object"},
            messages=[
                {
                    "role": "system",
                    "content": "You are an expert at analyzing customer interactions and "
                    "extracting profile information. Answer with JSON only.",
                },
                {"role": "user", "content": ENRICH_PROMPT + said},
            ],
        )
        raw = reply.choices[0].message.content if reply.choices else None
        fields = validate_llm_fields(json.loads(raw or "{}"))
        return LlmEnrichment(fields, None, model, (time.perf_counter() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 - any failure degrades to the heuristic profile
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
        log.warning("profile.llm_enrichment_failed", error=error)
        return LlmEnrichment(None, error, model, (time.perf_counter() - started) * 1000)


def validate_llm_fields(raw: Any) -> dict[str, Any]:
    """Keep only well-typed, allowed values (the model's JSON is input, not trusted)."""
    if not isinstance(raw, dict):
        raise ValueError("LLM answer is not a JSON object")
    out: dict[str, Any] = {}
    for key in ("industry", "company_name"):
        if isinstance(raw.get(key), str) and raw[key].strip():
            out[key] = clip(raw[key].strip(), 80)
    for key, allowed in (
        ("company_size", SIZES),
        ("communication_style", STYLES),
        ("expertise_level", EXPERTISE),
    ):
        if raw.get(key) in allowed:
            out[key] = raw[key]
    for key in LIST_FIELDS:
        values = raw.get(key)
        if isinstance(values, list):
            out[key] = [clip(str(v).strip(), 100) for v in values if str(v).strip()][:MAX_LIST]
    prefs = raw.get("preferences")
    if isinstance(prefs, dict):
        clean = {
            k: prefs[k]
            for k, allowed in (
                ("tone", TONES),
                ("detail_level", DETAIL_LEVELS),
                ("format", FORMATS),
            )
            if prefs.get(k) in allowed
        }
        if clean:
            out["preferences"] = clean
    return out


def apply_llm_enrichment(
    session: Session, user_id: str, result: LlmEnrichment, *, calls: int, now: datetime
) -> UserProfile:
    row = get_or_create(session, user_id)
    data = load(row)
    pinned = _pinned(data)
    meta = dict(data.get("enrichment") or {})
    if result.fields is None:
        row.enrichment_error = (result.error or "unknown error")[:500]
        meta.update(llm_error_at=now.isoformat())
        data["enrichment"] = meta
        _store(row, data)
        return row
    fields = dict(result.fields)
    style = fields.pop("communication_style", None)
    if style and "communication_style" not in pinned:
        row.communication_style = style
    for key, value in (fields.pop("preferences", None) or {}).items():
        _set(data, key, value, pinned)
    for key, value in fields.items():
        if key in LIST_FIELDS:
            _merge_list(data, key, value, pinned)
        else:
            _set(data, key, value, pinned)
    meta.update(method="llm", model=result.model, llm_at=now.isoformat(), llm_calls=calls)
    data["enrichment"] = meta
    row.enrichment_error = None
    row.enriched_at = now
    _store(row, data)
    return row


def needs_llm_enrichment(settings: Settings, row: UserProfile | None) -> bool:
    if row is None or not llm_configured(settings):
        return False
    if row.call_count < settings.profile_enrichment_calls:
        return False
    done = int((load(row).get("enrichment") or {}).get("llm_calls") or 0)
    return row.call_count > done


# --------------------------------------------------------------------------------------------
# Explicit feedback
# --------------------------------------------------------------------------------------------
def apply_feedback(
    session: Session, user_id: str, feedback: Mapping[str, Any], *, now: datetime | None = None
) -> UserProfile:
    """Set fields from explicit feedback and pin them. ``text`` (what the caller said, e.g.
    "please keep it short") is interpreted like spoken feedback in a call."""
    now = now or utcnow()
    row = get_or_create(session, user_id)
    data = load(row)
    changes: dict[str, Any] = {}
    text = feedback.get("text")
    if isinstance(text, str) and text.strip():
        changes.update(spoken_feedback([text]))
        style = communication_style([text] * 3)
        if style in ("formal", "casual"):
            changes.setdefault("communication_style", style)
    for key in FEEDBACK_FIELDS:
        if feedback.get(key) not in (None, "", []):
            changes[key] = feedback[key]
    if not changes:
        raise ValueError("feedback names no profile field")
    pinned = _pinned(data)
    for key, value in changes.items():
        pinned.discard(key)
        if key == "communication_style":
            if value not in STYLES:
                raise ValueError(f"communication_style must be one of {', '.join(STYLES)}")
            row.communication_style = value
        elif key in LIST_FIELDS:
            values = value if isinstance(value, list) else [value]
            data[key] = [clip(str(v), 100) for v in values if str(v).strip()][:MAX_LIST]
        else:
            allowed = {
                "tone": TONES,
                "detail_level": DETAIL_LEVELS,
                "format": FORMATS,
                "expertise_level": EXPERTISE,
                "company_size": SIZES,
            }.get(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}")
            _set(data, key, clip(str(value), 80), set())
        pinned.add(key)
    data["pinned"] = sorted(pinned)
    history = list(data.get("feedback") or [])[-9:]
    history.append({"at": now.isoformat(), "fields": sorted(changes)})
    data["feedback"] = history
    _store(row, data)
    return row


# --------------------------------------------------------------------------------------------
# Reading: admin API and conversation-init
# --------------------------------------------------------------------------------------------
def profile_out(row: UserProfile | None) -> dict[str, Any]:
    data = load(row)
    prefs = data.get("preferences") or {}
    return {
        "industry": data.get("industry"),
        "company_name": data.get("company_name"),
        "company_size": data.get("company_size"),
        "goals": list(data.get("goals") or []),
        "pain_points": list(data.get("pain_points") or []),
        "preferences": {
            "tone": prefs.get("tone"),
            "detail_level": prefs.get("detail_level"),
            "format": prefs.get("format"),
        },
        "communication_style": row.communication_style if row else None,
        "expertise_level": data.get("expertise_level"),
        "common_topics": list(data.get("common_topics") or []),
        "completeness": row.completeness if row else 0.0,
        "call_count": row.call_count if row else 0,
        "enriched_at": row.enriched_at.isoformat().replace("+00:00", "Z")
        if row and row.enriched_at
        else None,
        "enrichment": data.get("enrichment") or {},
        "enrichment_error": row.enrichment_error if row else None,
        "pinned": list(data.get("pinned") or []),
    }


# Extra conversation-init variables (docs/features.md). Always present, always strings: an
# agent prompt that uses one must never make ElevenLabs refuse the call.
NEUTRAL_INIT_VARIABLES: dict[str, str] = {
    "communication_style": "",
    "preferred_tone": "",
    "detail_level": "",
    "response_format": "",
    "expertise_level": "",
    "common_topics": "",
    "customer_profile": "",
    "profile_completeness": "0",
    "session_context": "",
}
MEMORY_CONTEXT_MAX = 900


def profile_sentence(data: Mapping[str, Any]) -> str:
    parts: list[str] = []
    if data.get("company_name"):
        size = f" ({data['company_size']} people)" if data.get("company_size") else ""
        parts.append(f"Works at {data['company_name']}{size}.")
    if data.get("industry"):
        parts.append(f"Industry: {data['industry']}.")
    if data.get("goals"):
        parts.append("Goals: " + "; ".join(data["goals"][:2]) + ".")
    if data.get("pain_points"):
        parts.append("Pain points: " + "; ".join(data["pain_points"][:2]) + ".")
    return clip(" ".join(parts), 300)


def init_variables(session: Session, user: User, digest: str) -> dict[str, str]:
    """Profile variables, and ``memory_context`` led by the last calls (session memory).

    ``digest`` is the memory digest init computed (may be empty); ``memory_context`` is only
    returned when there are recent calls to put in front of it.

    Called by the conversation-init webhook for a known caller. One primary-key read and one
    index range scan; an error here returns no extras (the core answer still goes out).
    """
    try:
        now = utcnow()
        row = session.get(UserProfile, user.user_id)
        data = load(row)
        prefs = data.get("preferences") or {}
        recent = session_mod.session_context(session, user.user_id, now=now)
        out = dict(NEUTRAL_INIT_VARIABLES)
        out.update(
            communication_style=(row.communication_style if row else None) or "",
            preferred_tone=str(prefs.get("tone") or ""),
            detail_level=str(prefs.get("detail_level") or ""),
            response_format=str(prefs.get("format") or ""),
            expertise_level=str(data.get("expertise_level") or ""),
            common_topics=", ".join(data.get("common_topics") or []),
            customer_profile=profile_sentence(data),
            profile_completeness=str(round((row.completeness if row else 0.0) * 100)),
            session_context=recent,
        )
        if recent:
            out["memory_context"] = clip(f"{recent} {digest}".strip(), MEMORY_CONTEXT_MAX)
        return out
    except Exception as exc:  # noqa: BLE001 - init must answer; extras are optional
        log.warning("profile.init_variables_failed", error=str(exc)[:200])
        return {}
