"""Entity graph (seed 003): people, companies, products and places a caller mentions.

Extraction is deterministic (patterns over the caller's own words plus a small gazetteer of
products), so it costs microseconds, needs no model and gives the same graph on a replay.
Each extracted mention carries a confidence: an explicit statement ("I work at Acme") is 0.9,
a capitalised name after a weaker cue 0.6, a gazetteer hit 0.7.

Storage: ``entities`` (name encrypted, keyed ``name_hash`` for lookups without decrypting),
``entity_relations`` (typed edges with strength and confidence), ``entity_mentions`` (entity →
memory). Relations are reinforced rather than duplicated: each new observation moves strength
a third of the way to 1 and keeps the higher confidence.

Retrieval uses :func:`related_memories`: memories that mention an entity the query names, or an
entity mentioned by a hit, are reachable even when their text is not similar to the query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import crypto
from db.models import ConversationMemory, Entity, EntityMention, EntityRelation, Memory, User
from db.types import utcnow

KINDS = ("person", "company", "product", "place")
SELF_RELATION_SOURCE = "caller"

# Products callers of support lines name most; matched case-insensitively as whole words.
PRODUCTS = (
    "Salesforce",
    "HubSpot",
    "Zendesk",
    "Slack",
    "Shopify",
    "QuickBooks",
    "Xero",
    "Stripe",
    "PayPal",
    "Excel",
    "Outlook",
    "Gmail",
    "Google Calendar",
    "Google Drive",
    "Microsoft Teams",
    "Zoom",
    "Teams",
    "Dropbox",
    "Jira",
    "Trello",
    "Asana",
    "Notion",
    "WordPress",
    "Mailchimp",
    "iPhone",
    "iPad",
    "Android",
    "Windows",
    "MacBook",
    "Chrome",
    "Safari",
    "Firefox",
    "Pipedrive",
    "Zoho",
    "Square",
    "Twilio",
    "Calendly",
    "Okta",
)
_PRODUCT_RE = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(PRODUCTS, key=len, reverse=True)) + r")\b",
    re.I,
)
_CANON = {p.lower(): p for p in PRODUCTS}

_NAME = r"([A-Z][\w&'.-]*(?:\s+(?:&\s+)?[A-Z][\w&'.-]*){0,3})"
_PERSON = r"([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"
_SUFFIX = r"(?:\s+(?:Inc|LLC|Ltd|Corp|GmbH|Co|Group|Labs|Partners)\.?)?"
_STOP_NAMES = frozenset(
    {
        "I",
        "I'm",
        "Im",
        "Hi",
        "Hello",
        "Hey",
        "Yes",
        "No",
        "Thanks",
        "Thank",
        "Please",
        "Okay",
        "OK",
        "The",
        "A",
        "An",
        "My",
        "Our",
        "We",
        "It",
        "This",
        "That",
        "So",
        "But",
        "And",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
        "Sorry",
        "Great",
        "Sure",
    }
)


@dataclass(frozen=True, slots=True)
class Mention:
    kind: str
    name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Edge:
    """A typed relation between two mentions; ``source`` None means the caller themself."""

    source: Mention | None
    relation: str
    target: Mention
    confidence: float


@dataclass(slots=True)
class Extraction:
    mentions: list[Mention] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    caller_name: str | None = None


def _clean(name: str) -> str | None:
    words = name.strip(" .,'-").split()
    while words and words[0] in _STOP_NAMES:
        words.pop(0)
    while words and words[-1] in _STOP_NAMES:
        words.pop()
    out = " ".join(words).strip(" .,'-")
    if not out or len(out) < 2 or len(out) > 80:
        return None
    return out


# (pattern, kind, relation from the caller, confidence). Order matters only for readability.
_RULES: tuple[tuple[re.Pattern[str], str, str | None, float], ...] = (
    (re.compile(r"\b(?i:my name is) " + _PERSON), "self", None, 0.95),
    (
        re.compile(r"\b(?i:this is|I'm|I am) " + _PERSON + r"(?= from| at| with|[,.])"),
        "self",
        None,
        0.7,
    ),
    (
        re.compile(r"\b(?i:I (?:work|am) (?:at|for|with)) " + _NAME + _SUFFIX),
        "company",
        "works_at",
        0.9,
    ),
    (
        re.compile(r"\b(?i:(?:I'm|I am) (?:calling )?from) " + _NAME + _SUFFIX),
        "company",
        "works_at",
        0.8,
    ),
    (
        re.compile(
            r"\b(?i:(?:our|my) (?:company|business|firm|agency|practice|clinic|shop|store))"
            r"(?:,| is| is called| called)? " + _NAME + _SUFFIX
        ),
        "company",
        "works_at",
        0.85,
    ),
    (re.compile(r"\b" + _NAME + r"\s+(?:Inc|LLC|Ltd|Corp|GmbH)\b\.?"), "company", None, 0.8),
    (
        re.compile(r"\b(?i:(?:based|located|live|living|headquartered|office is) in) " + _NAME),
        "place",
        "located_in",
        0.85,
    ),
    (re.compile(r"\b(?i:(?:moving|moved|relocating) to) " + _NAME), "place", "moving_to", 0.8),
    (
        re.compile(
            r"\b(?i:my (?:colleague|manager|boss|wife|husband|partner|assistant|accountant|"
            r"son|daughter|coworker|co-worker|admin|CTO|CEO)) (?:is )?" + _PERSON
        ),
        "person",
        "knows",
        0.85,
    ),
    (
        re.compile(r"\b(?i:(?:spoke|talked|spoken|speaking) (?:to|with)) " + _PERSON),
        "person",
        "spoke_with",
        0.7,
    ),
    (
        re.compile(
            r"\b(?i:(?:we|I) (?:use|used|are using|am using|switched to|moved to|run on|are on))"
            r" " + _NAME
        ),
        "product",
        "uses",
        0.75,
    ),
)
_REPLACED = re.compile(r"\bfrom " + _NAME + r" to " + _NAME)


def extract(lines: Iterable[str], *, caller_name: str | None = None) -> Extraction:
    """Mentions and typed edges from the caller's lines (deterministic)."""
    out = Extraction(caller_name=caller_name)
    seen: dict[tuple[str, str], Mention] = {}

    def add(kind: str, raw: str, confidence: float) -> Mention | None:
        name = _clean(raw)
        if name is None:
            return None
        if kind == "product" or name.lower() in _CANON:
            name = _CANON.get(name.lower(), name)
        key = (kind, name.lower())
        old = seen.get(key)
        if old is None or old.confidence < confidence:
            seen[key] = Mention(kind, name, confidence)
        return seen[key]

    for line in lines:
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            in_sentence: list[Mention] = []
            for pattern, kind, relation, confidence in _RULES:
                for match in pattern.finditer(sentence):
                    if kind == "self":
                        name = _clean(match.group(1))
                        if name and out.caller_name is None:
                            out.caller_name = name
                        continue
                    mention = add(kind, match.group(1), confidence)
                    if mention is None:
                        continue
                    in_sentence.append(mention)
                    if relation is not None:
                        out.edges.append(Edge(None, relation, mention, confidence))
            for match in _REPLACED.finditer(sentence):
                old = add("product", match.group(1), 0.7)
                if old is not None and old.name.lower() in _CANON:
                    out.edges.append(Edge(None, "used_before", old, 0.7))
            for match in _PRODUCT_RE.finditer(sentence):
                mention = add("product", match.group(1), 0.7)
                if mention is not None:
                    in_sentence.append(mention)
            # Entities named in the same sentence are related (weak evidence).
            uniq = list(dict.fromkeys(in_sentence))
            for i, a in enumerate(uniq):
                for b in uniq[i + 1 :]:
                    relation = _co_relation(a, b)
                    if relation:
                        out.edges.append(Edge(a, relation, b, 0.5))
    out.mentions = list(seen.values())
    return out


def _co_relation(a: Mention, b: Mention) -> str | None:
    pair = {a.kind, b.kind}
    if pair == {"person", "company"}:
        return "works_at" if a.kind == "person" else "employs"
    if pair == {"company", "product"}:
        return "uses" if a.kind == "company" else "used_by"
    if "place" in pair and len(pair) == 2:
        return "located_in" if b.kind == "place" else "location_of"
    return "mentioned_with"


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------
def name_hash(kind: str, name: str) -> str:
    """Keyed hash of the normalised name (one entity per user, kind and spelling-insensitive
    name; the plaintext name is only ever stored encrypted)."""
    normal = " ".join(name.lower().split())
    return crypto.keyring().lookup_hash(f"entity:{kind}:{normal}")


def upsert_entity(
    session: Session, user_id: str, kind: str, name: str, now: datetime, *, count: bool = True
) -> Entity:
    digest = name_hash(kind, name)
    row = session.scalar(
        select(Entity).where(
            Entity.user_id == user_id, Entity.name_hash == digest, Entity.kind == kind
        )
    )
    if row is None:
        row = Entity(
            user_id=user_id,
            kind=kind,
            name=name,
            name_hash=digest,
            mention_count=1,
            first_seen=now,
            last_seen=now,
        )
        session.add(row)
        session.flush()
        return row
    if count:
        row.mention_count = (row.mention_count or 0) + 1
    row.last_seen = max(row.last_seen, now)
    return row


def reinforce(
    session: Session,
    user_id: str,
    source: Entity,
    target: Entity,
    relation: str,
    confidence: float,
) -> EntityRelation:
    row = session.scalar(
        select(EntityRelation).where(
            EntityRelation.source_entity_id == source.id,
            EntityRelation.target_entity_id == target.id,
            EntityRelation.relation == relation,
        )
    )
    if row is None:
        row = EntityRelation(
            user_id=user_id,
            source_entity_id=source.id,
            target_entity_id=target.id,
            relation=relation,
            strength=round(0.3 + 0.2 * confidence, 4),
            confidence=round(confidence, 4),
        )
        session.add(row)
        return row
    row.strength = round(min(1.0, row.strength + (1.0 - row.strength) / 3.0), 4)
    row.confidence = round(max(row.confidence, confidence), 4)
    return row


def self_hash() -> str:
    # The caller's own node is found by this fixed key, not by name: the name may be learned
    # only on a later call (or never), and there must be one self node per user.
    return crypto.keyring().lookup_hash("entity:self")


def caller_entity(session: Session, user: User, name: str | None, now: datetime) -> Entity:
    """The caller's own node (a person), renamed once we learn the name."""
    label = name or user.name or "caller"
    row = session.scalar(
        select(Entity).where(Entity.user_id == user.user_id, Entity.name_hash == self_hash())
    )
    if row is None:
        row = Entity(
            user_id=user.user_id,
            kind="person",
            name=label,
            name_hash=self_hash(),
            mention_count=1,
            first_seen=now,
            last_seen=now,
        )
        session.add(row)
        session.flush()
        return row
    if row.name == "caller" and label != "caller":
        row.name = label
    row.last_seen = max(row.last_seen, now)
    return row


def record_call(
    session: Session,
    user: User,
    lines: Sequence[str],
    *,
    conversation_fk: int | None,
    now: datetime | None = None,
    already_counted: bool = False,
) -> Extraction:
    """Store one call's entities and relations; link them to the call's memories.

    ``already_counted``: a replay of a call seen before refreshes links without inflating
    mention counts or relation strength.
    """
    now = now or utcnow()
    found = extract(lines, caller_name=None)
    if not found.mentions and not found.edges:
        return found
    rows: dict[tuple[str, str], Entity] = {}
    for m in found.mentions:
        rows[(m.kind, m.name.lower())] = upsert_entity(
            session, user.user_id, m.kind, m.name, now, count=not already_counted
        )
    me: Entity | None = None
    if not already_counted:
        for edge in found.edges:
            target = rows.get((edge.target.kind, edge.target.name.lower()))
            if target is None:
                continue
            if edge.source is None:
                me = me or caller_entity(session, user, found.caller_name or user.name, now)
                source = me
            else:
                found_source = rows.get((edge.source.kind, edge.source.name.lower()))
                if found_source is None:
                    continue
                source = found_source
            if source.id != target.id:
                reinforce(session, user.user_id, source, target, edge.relation, edge.confidence)
    session.flush()
    if conversation_fk is not None:
        memory_ids = list(
            session.scalars(
                select(ConversationMemory.memory_id).where(
                    ConversationMemory.conversation_fk == conversation_fk
                )
            )
        )
        link_mentions(session, user.user_id, list(rows.values()), memory_ids)
    return found


def link_mentions(
    session: Session, user_id: str, entities: Sequence[Entity], memory_ids: Sequence[int]
) -> int:
    """Entity → memory mentions where the memory's text names the entity (idempotent)."""
    if not entities or not memory_ids:
        return 0
    memories = list(
        session.execute(
            select(Memory.id, Memory.content).where(
                Memory.id.in_(list(memory_ids)), Memory.user_id == user_id
            )
        )
    )
    existing = {
        (e, m)
        for e, m in session.execute(
            select(EntityMention.entity_id, EntityMention.memory_id).where(
                EntityMention.entity_id.in_([e.id for e in entities]),
                EntityMention.memory_id.in_([mid for mid, _ in memories]),
            )
        )
    }
    added = 0
    for entity in entities:
        if entity.name == "caller":
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(entity.name)}(?!\w)", re.I)
        for mid, content in memories:
            if (entity.id, mid) not in existing and content and pattern.search(content):
                session.add(EntityMention(entity_id=entity.id, memory_id=mid))
                existing.add((entity.id, mid))
                added += 1
    return added


def relink_user(session: Session, user_id: str) -> int:
    """Re-scan all of the user's active memories for entity names (used by reflection, so
    memories written after the entity stage of their call are linked too)."""
    entities = list(session.scalars(select(Entity).where(Entity.user_id == user_id)))
    ids = list(
        session.scalars(
            select(Memory.id).where(Memory.user_id == user_id, Memory.state == "active")
        )
    )
    return link_mentions(session, user_id, entities, ids)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def graph(session: Session, user_id: str) -> dict[str, Any]:
    """``{"entities": [...], "relations": [...]}`` for ``GET /v1/users/{id}/graph``."""
    entities = list(
        session.scalars(
            select(Entity)
            .where(Entity.user_id == user_id)
            .order_by(Entity.mention_count.desc(), Entity.id)
        )
    )
    relations = list(
        session.scalars(
            select(EntityRelation)
            .where(EntityRelation.user_id == user_id)
            .order_by(EntityRelation.strength.desc(), EntityRelation.id)
        )
    )
    mentions: dict[int, list[int]] = {}
    if entities:
        for eid, mid in session.execute(
            select(EntityMention.entity_id, EntityMention.memory_id).where(
                EntityMention.entity_id.in_([e.id for e in entities])
            )
        ):
            mentions.setdefault(eid, []).append(mid)

    def iso(value: datetime | None) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value is not None else None

    names = {e.id: e.name for e in entities}
    return {
        "entities": [
            {
                "id": e.id,
                "kind": e.kind,
                "name": e.name,
                "mention_count": e.mention_count,
                "first_seen": iso(e.first_seen),
                "last_seen": iso(e.last_seen),
                "memory_ids": sorted(mentions.get(e.id, [])),
            }
            for e in entities
        ],
        "relations": [
            {
                "source": r.source_entity_id,
                "source_name": names.get(r.source_entity_id),
                "target": r.target_entity_id,
                "target_name": names.get(r.target_entity_id),
                "relation": r.relation,
                "strength": round(float(r.strength), 4),
                "confidence": round(float(r.confidence), 4),
            }
            for r in relations
        ],
    }


def related_memories(
    session: Session,
    user_id: str,
    *,
    query: str,
    memory_ids: Sequence[int] = (),
    exclude: Iterable[int] = (),
    limit: int = 3,
) -> list[tuple[int, float]]:
    """Memories reachable through the entity graph: ``[(memory_id, weight)]``, best first.

    Seeds are the user's entities named in ``query`` (weight 1.0) and entities mentioned by the
    hits ``memory_ids`` (0.6); one hop along relations adds their neighbours at the relation's
    strength × 0.8. A memory's weight is the best weight of an entity it mentions.
    """
    # Core on the session's connection throughout: this runs inside every memory_query,
    # and the ORM's statement handling cost more than the queries themselves.
    conn = session.connection()
    entities = list(conn.execute(select(Entity.id, Entity.name).where(Entity.user_id == user_id)))
    if not entities:
        return []
    weight: dict[int, float] = {}
    lowered = query.lower()
    for eid, name in entities:
        if (
            name
            and name != "caller"
            and re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", lowered)
        ):
            weight[eid] = 1.0
    if memory_ids:
        for (eid,) in conn.execute(
            select(EntityMention.entity_id).where(EntityMention.memory_id.in_(list(memory_ids)))
        ):
            weight[eid] = max(weight.get(eid, 0.0), 0.6)
    if not weight:
        return []
    seeds = dict(weight)
    for src, dst, strength in conn.execute(
        select(
            EntityRelation.source_entity_id,
            EntityRelation.target_entity_id,
            EntityRelation.strength,
        ).where(
            EntityRelation.user_id == user_id,
            (EntityRelation.source_entity_id.in_(list(seeds)))
            | (EntityRelation.target_entity_id.in_(list(seeds))),
        )
    ):
        for a, b in ((src, dst), (dst, src)):
            if a in seeds:
                weight[b] = max(weight.get(b, 0.0), seeds[a] * float(strength) * 0.8)
    skip = set(exclude) | set(memory_ids)
    best: dict[int, float] = {}
    for eid, mid in conn.execute(
        select(EntityMention.entity_id, EntityMention.memory_id)
        .join(Memory, Memory.id == EntityMention.memory_id)
        .where(
            EntityMention.entity_id.in_(list(weight)),
            Memory.user_id == user_id,
            Memory.state == "active",
            Memory.valid_to.is_(None),
        )
    ):
        if mid not in skip:
            best[mid] = max(best.get(mid, 0.0), weight[eid])
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
