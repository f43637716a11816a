"""SQLAlchemy models: seed 001's eleven tables with the same table and column names, plus what
the gateway needs around them (tenants, tokens, caller mapping, queue leases, provenance,
validity, session memory, profiles, entity graph, issue patterns).

Seed bugs fixed here: ``conversations`` referenced ``users`` before it existed (order does not
matter to the ORM, and the migration creates ``users`` first); ``call_successful`` is the
ElevenLabs string ``success|failure|unknown`` rather than a boolean; ElevenLabs has no
``webhook_event_id`` so ``event_id`` is our deduplication key ``{type}:{conversation_id}``.

Sensitive text (transcripts, memory content, summaries, payloads, phone numbers, secrets) is
stored through ``EncryptedText``; nothing in this file stores a caller number in the clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.crypto import CompressedEncryptedText, EncryptedText
from db.types import JSONType, UTCDateTime, utcnow

QUEUE_STATUSES = ("pending", "processing", "completed", "failed", "dead_letter")
SECTORS = ("semantic", "episodic", "procedural", "emotional", "reflective")
MEMORY_STATES = ("active", "paused", "archived", "superseded")
TOKEN_SCOPES = ("tool", "init", "admin")
DEFAULT_TENANT = "default"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime,
    }


# --------------------------------------------------------------------------------------------
# Tenancy and auth
# --------------------------------------------------------------------------------------------
class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """ElevenLabs HMAC secrets of a tenant; every active one verifies (rotation)."""

    __tablename__ = "webhook_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret: Mapped[str] = mapped_column(EncryptedText())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


# --------------------------------------------------------------------------------------------
# Users and caller mapping
# --------------------------------------------------------------------------------------------
class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_users_tenant_external"),
        Index("idx_users_tenant_last", "tenant_id", "last_interaction"),
    )

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # An id given to us from outside (ElevenLabs `data.user_id` not minted by us).
    external_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(EncryptedText())
    summary: Mapped[str | None] = mapped_column(EncryptedText())
    total_memories: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_interaction: Mapped[datetime | None] = mapped_column()
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    tier: Mapped[str] = mapped_column(String(16), default="trial", server_default="trial")
    # true() renders 1 on SQLite and TRUE on PostgreSQL, which rejects an integer default.
    is_guest: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Bumped on every memory write; retrieval caches are keyed by it.
    memory_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CallerNumber(Base):
    """Caller number → user. Keyed hash for lookup, ciphertext for display; never plaintext."""

    __tablename__ = "caller_numbers"
    __table_args__ = (UniqueConstraint("tenant_id", "number_hash", name="uq_caller_tenant_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    number_hash: Mapped[str] = mapped_column(String(64))
    number_enc: Mapped[str] = mapped_column(EncryptedText())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConversationBinding(Base):
    """conversation_id / call_sid bound to a user at conversation-init, for the whole call."""

    __tablename__ = "conversation_bindings"
    __table_args__ = (
        UniqueConstraint("tenant_id", "conversation_id", name="uq_binding_tenant_conversation"),
        Index("idx_binding_call_sid", "tenant_id", "call_sid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    call_sid: Mapped[str | None] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    agent_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ForgetTombstone(Base):
    """What a forget leaves behind so late work of the forgotten data can be recognised.

    One row per identifier of the forgotten user: ``key_hash`` is the keyed lookup hash
    (HMAC-SHA256 under the lookup key, domain-separated by ``kind``) of their user id, external
    id, caller numbers (E.164), conversation ids and call SIDs. No plaintext identifier, no
    text, no link to any live row. A queued job whose event matches is completed as dropped
    (``worker/forgotten.py``). Rows expire after ``VOXMEM_FORGET_TOMBSTONE_DAYS``.
    """

    __tablename__ = "forget_tombstones"
    __table_args__ = (
        # The hash input includes the kind, so (tenant, hash) is unique and one index probe
        # answers "is any identifier of this event forgotten?".
        UniqueConstraint("tenant_id", "key_hash", name="uq_tombstone_tenant_hash"),
        Index("idx_tombstone_expires", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # user | external | number | conversation | call_sid
    kind: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    forgotten_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()


# --------------------------------------------------------------------------------------------
# Integration layer: the durable queue
# --------------------------------------------------------------------------------------------
class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "event_id", name="uq_webhook_tenant_event"),
        Index(
            "idx_webhook_status_created",
            "status",
            "run_after",
            sqlite_where=text("status IN ('pending', 'processing')"),
            postgresql_where=text("status IN ('pending', 'processing')"),
        ),
        Index("idx_webhook_conversation", "conversation_id"),
        Index("idx_webhook_ordering", "ordering_key", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(300))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str | None] = mapped_column(CompressedEncryptedText())
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    # Events with the same key are processed one at a time (linking and summaries would race).
    ordering_key: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    retry_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, default=8, server_default=text("8"))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(200))
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    locked_by: Mapped[str | None] = mapped_column(String(128))
    locked_until: Mapped[datetime | None] = mapped_column()
    trace_context: Mapped[dict[str, Any] | None] = mapped_column()
    signature_timestamp: Mapped[int | None] = mapped_column(Integer)
    payload_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    current_event_id: Mapped[int | None] = mapped_column(Integer)
    processed_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    failed_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    stopped_at: Mapped[datetime | None] = mapped_column()


# --------------------------------------------------------------------------------------------
# Conversation domain
# --------------------------------------------------------------------------------------------
class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "conversation_id", name="uq_conversation_tenant_id"),
        Index("idx_conversation_user", "user_id", "start_time"),
        Index("idx_conversation_status", "status"),
        Index("idx_conversation_agent", "agent_id", "start_time"),
        # Tenant-wide analytics over a time window (per-agent success rates, failing types).
        Index("idx_conversation_tenant_start", "tenant_id", "start_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(String(128))
    agent_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    start_time: Mapped[datetime] = mapped_column()
    end_time: Mapped[datetime | None] = mapped_column()
    duration_secs: Mapped[int | None] = mapped_column(Integer)
    # ElevenLabs data.status (done|failed|...) or initiation_failed.
    status: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str | None] = mapped_column(String(16))
    call_successful: Mapped[str | None] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConversationTurn(Base):
    __tablename__ = "conversation_turns"
    __table_args__ = (Index("idx_turns_conversation", "conversation_fk", "turn_order"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_fk: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(EncryptedText())
    # Seconds into the call (ElevenLabs time_in_call_secs); absolute time = start + this.
    timestamp: Mapped[int] = mapped_column(Integer, default=0)
    turn_order: Mapped[int] = mapped_column(Integer)
    tool_calls: Mapped[str | None] = mapped_column(EncryptedText())
    tool_results: Mapped[str | None] = mapped_column(EncryptedText())


class ConversationAnalysis(Base):
    __tablename__ = "conversation_analysis"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_fk: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), unique=True
    )
    summary: Mapped[str | None] = mapped_column(EncryptedText())
    summary_title: Mapped[str | None] = mapped_column(EncryptedText())
    call_successful: Mapped[str | None] = mapped_column(String(16))
    evaluation_json: Mapped[dict[str, Any] | None] = mapped_column()
    # data_collection_results can hold what the caller said; kept as encrypted JSON text.
    data_collection: Mapped[str | None] = mapped_column(EncryptedText())


class ToolInvocation(Base):
    __tablename__ = "tool_invocations"
    __table_args__ = (
        Index("idx_tool_conversation", "conversation_fk"),
        Index("idx_tool_name", "tool_name", "timestamp"),
        Index(
            "idx_tool_latency",
            "latency_ms",
            sqlite_where=text("latency_ms > 1000"),
            postgresql_where=text("latency_ms > 1000"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_fk: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    # `live` for our own /tools/memory-query calls, `transcript` for calls seen in a transcript.
    origin: Mapped[str] = mapped_column(String(16), default="live", server_default="live")
    tool_name: Mapped[str] = mapped_column(String(128))
    request_params: Mapped[str] = mapped_column(EncryptedText())
    response_data: Mapped[str | None] = mapped_column(EncryptedText())
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    success: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    error_message: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------------------------
# Memory domain
# --------------------------------------------------------------------------------------------
class Memory(Base):
    __tablename__ = "memories"
    __table_args__ = (
        Index(
            "idx_memories_user_sector_state",
            "user_id",
            "sector_type",
            "state",
        ),
        Index("idx_memories_recency", "recency"),
        Index("idx_memories_salience", "salience"),
        Index("idx_memories_user_hash", "user_id", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(EncryptedText())
    # Keyed hash of the normalised content: exact-duplicate detection without decrypting.
    content_hash: Mapped[str | None] = mapped_column(String(64))
    sector_type: Mapped[str] = mapped_column(String(16))
    salience: Mapped[float] = mapped_column(Float, default=0.5, server_default=text("0.5"))
    recency: Mapped[datetime] = mapped_column(default=utcnow)
    decay_rate: Mapped[float] = mapped_column(Float, default=0.01, server_default=text("0.01"))
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    source_conversation: Mapped[str | None] = mapped_column(String(128))
    # Provenance: [{"conversation_id": str, "turns": [int, ...]}, ...] (CONTRACT §4).
    sources: Mapped[list[Any] | None] = mapped_column()
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    # Temporal validity (Zep-style): superseded memories keep their row with valid_to set.
    valid_from: Mapped[datetime | None] = mapped_column()
    valid_to: Mapped[datetime | None] = mapped_column()
    superseded_by: Mapped[int | None] = mapped_column(
        ForeignKey("memories.id", ondelete="SET NULL")
    )
    reinforcement_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_accessed_at: Mapped[datetime | None] = mapped_column()
    extractor: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MemoryEmbedding(Base):
    __tablename__ = "memory_embeddings"
    __table_args__ = (
        UniqueConstraint("memory_id", "embedding_model", name="uq_embedding_memory_model"),
        Index("idx_embeddings_sector", "sector"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    memory_id: Mapped[int] = mapped_column(
        ForeignKey("memories.id", ondelete="CASCADE"), index=True
    )
    sector: Mapped[str] = mapped_column(String(16))
    # float32 little-endian bytes; the dimension and model are recorded beside them.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    embedding_model: Mapped[str] = mapped_column(String(128))
    dimension: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MemoryLink(Base):
    __tablename__ = "memory_links"
    __table_args__ = (
        UniqueConstraint("source_memory_id", "target_memory_id", name="uq_link_pair"),
        Index("idx_links_source", "source_memory_id", "link_weight"),
        Index("idx_links_target", "target_memory_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    target_memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    link_weight: Mapped[float] = mapped_column(Float)
    link_type: Mapped[str] = mapped_column(
        String(16), default="automatic", server_default="automatic"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ConversationMemory(Base):
    __tablename__ = "conversation_memories"
    __table_args__ = (
        UniqueConstraint("conversation_fk", "memory_id", name="uq_conv_memory"),
        Index("idx_conv_memories_conversation", "conversation_fk"),
        Index("idx_conv_memories_memory", "memory_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_fk: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    extraction_type: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    turns: Mapped[list[Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------------------------
# Sister systems (seeds 000, 002, 003, 004)
# --------------------------------------------------------------------------------------------
class SessionInteraction(Base):
    """Session memory: the last interactions of a user, FIFO, with a tier-dependent TTL."""

    __tablename__ = "session_interactions"
    __table_args__ = (
        UniqueConstraint("conversation_fk", name="uq_session_conversation"),
        Index("idx_session_user_time", "user_id", "occurred_at"),
        Index("idx_session_expires", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    conversation_fk: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    occurred_at: Mapped[datetime] = mapped_column()
    topic: Mapped[str | None] = mapped_column(EncryptedText())
    task_type: Mapped[str | None] = mapped_column(String(64))
    asked: Mapped[str | None] = mapped_column(EncryptedText())
    done: Mapped[str | None] = mapped_column(EncryptedText())
    outcome: Mapped[str | None] = mapped_column(String(16))
    rating: Mapped[int | None] = mapped_column(Integer)
    duration_secs: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column()


class UserProfile(Base):
    """Customer profile (seeds 000 §5.1.2 and 004); sensitive fields live in encrypted JSON."""

    __tablename__ = "user_profiles"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True
    )
    profile: Mapped[str | None] = mapped_column(EncryptedText())
    communication_style: Mapped[str | None] = mapped_column(String(16))
    completeness: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    call_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    enriched_at: Mapped[datetime | None] = mapped_column()
    enrichment_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Entity(Base):
    """Entity graph node (seed 003): a person, company, product or place a caller mentioned."""

    __tablename__ = "entities"
    __table_args__ = (
        UniqueConstraint("user_id", "name_hash", "kind", name="uq_entity_user_name_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(EncryptedText())
    name_hash: Mapped[str] = mapped_column(String(64))
    mention_count: Mapped[int] = mapped_column(Integer, default=1, server_default=true())
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class EntityRelation(Base):
    __tablename__ = "entity_relations"
    __table_args__ = (
        UniqueConstraint(
            "source_entity_id", "target_entity_id", "relation", name="uq_entity_relation"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    source_entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    target_entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    relation: Mapped[str] = mapped_column(String(64))
    strength: Mapped[float] = mapped_column(Float, default=0.5)
    confidence: Mapped[float] = mapped_column(Float, default=0.5)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EntityMention(Base):
    __tablename__ = "entity_mentions"
    __table_args__ = (UniqueConstraint("entity_id", "memory_id", name="uq_entity_mention"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_id: Mapped[int] = mapped_column(
        ForeignKey("entities.id", ondelete="CASCADE"), index=True
    )
    memory_id: Mapped[int] = mapped_column(
        ForeignKey("memories.id", ondelete="CASCADE"), index=True
    )


class IssuePattern(Base):
    """Recurring problem and the resolution that worked, learned across a tenant (seed 002)."""

    __tablename__ = "issue_patterns"
    __table_args__ = (
        UniqueConstraint("tenant_id", "problem_hash", name="uq_issue_tenant_problem"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    problem: Mapped[str] = mapped_column(EncryptedText())
    problem_hash: Mapped[str] = mapped_column(String(64))
    resolution: Mapped[str | None] = mapped_column(EncryptedText())
    usage_count: Mapped[int] = mapped_column(Integer, default=1, server_default=true())
    success_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)


class IssueOccurrence(Base):
    """Which user/conversation reported a pattern; forget removes these with the user."""

    __tablename__ = "issue_occurrences"
    __table_args__ = (
        UniqueConstraint("pattern_id", "conversation_fk", name="uq_issue_occurrence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pattern_id: Mapped[int] = mapped_column(
        ForeignKey("issue_patterns.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    conversation_fk: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    resolved: Mapped[bool | None] = mapped_column(Boolean)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


# Keep memory_embeddings.embedding_vec (PostgreSQL only, migration 0002) in step with every ORM
# write of an embedding. At the bottom: db.vectors imports the models above.
from db.vectors import register_events  # noqa: E402

register_events()
