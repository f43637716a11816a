"""The one settings object. Nothing else in voxmem reads the environment.

It lives in ``db`` because that is the bottom layer: api, worker and memory may all import it,
and it imports nothing of ours.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "changethis", "secret", "test", "placeholder"})


def split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXMEM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- deployment -------------------------------------------------------------------------
    environment: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite:///data/voxmem.db"
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    # --- secrets (comma-separated; first one is primary) ------------------------------------
    webhook_secrets: str = ""
    encryption_keys: str = ""
    # Keyed hash for lookups (token hashes, caller numbers). Not rotated with the Fernet keys:
    # rotating it would orphan every stored token hash. Defaults to a key file in data_dir.
    lookup_key: str = ""

    # --- external services ------------------------------------------------------------------
    embedder: Literal["local", "openai"] = "local"
    extractor: Literal["local", "llm"] = "local"
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "VOXMEM_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "VOXMEM_OPENAI_BASE_URL")
    )
    llm_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    llm_timeout_secs: float = 20.0
    llm_max_retries: int = 2
    # Library protocol variables, read here so no other module reads the environment.
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED")
    )
    otel_service_name: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_SERVICE_NAME")
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR")
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )

    # --- post-call intake -------------------------------------------------------------------
    max_body_bytes: int = 16 * 1024 * 1024
    signature_tolerance_secs: int = 30 * 60
    signature_future_skew_secs: int = 5 * 60
    keep_audio: bool = False
    # Tenant webhook secrets are cached per API process for this long (a revoked secret keeps
    # verifying at most this long; a new tenant is found at once).
    intake_secret_cache_secs: float = 5.0
    # Group commit: at most this many webhook events per intake transaction (one fsync each).
    intake_batch_max: int = 128
    # A request waits this long for its commit before answering 503 (the sender may retry).
    intake_commit_timeout_secs: float = 10.0
    # Bodies larger than this are verified and parsed on a thread, not on the event loop.
    intake_offload_bytes: int = 256 * 1024
    # The whole webhook body must arrive within this many seconds, else 408 (slow-loris guard;
    # uvicorn itself has no body read timeout).
    intake_body_timeout_secs: float = 30.0
    # Every other request body (init, tool, admin, console) must arrive within this many
    # seconds, else 408 (api/security/deadline.py). Their bodies are a few hundred bytes.
    request_body_timeout_secs: float = 10.0
    # A request's line and headers (and a new connection's first byte) must arrive within this
    # many seconds, else 408 and close (api/security/head_deadline.py; uvicorn has no such timer).
    request_head_timeout_secs: float = 10.0

    # --- queue ------------------------------------------------------------------------------
    queue_lease_secs: float = 300.0
    queue_max_attempts: int = 8
    queue_backoff_base_secs: float = 5.0
    queue_backoff_cap_secs: float = 1800.0
    queue_poll_min_secs: float = 0.05
    queue_poll_max_secs: float = 2.0
    worker_heartbeat_secs: float = 10.0
    # How long a forget's tombstone (keyed hashes of the forgotten user's ids, numbers and
    # conversations; memory/tombstones.py) drops late work for the forgotten data: queued jobs
    # claimed before the forget, redelivered or late post-call webhooks. Must outlast the
    # worst-case lease + retry window (checked below) and any webhook redelivery.
    forget_tombstone_days: float = 30.0
    # Small and often: each PASSIVE pass then copies ~0.1 s of writes and fsyncs a few hundred
    # KB of database instead of ~10 MB a second, which queued every intake commit's WAL fsync
    # behind it; and a pass often ends between two writes, so the WAL starts over by itself.
    # An idle pass costs ~0.2 ms of CPU in the one checkpointing process.
    checkpoint_interval_secs: float = 0.1
    wal_truncate_bytes: int = 64 * 1024 * 1024
    # Past this much WAL, the checkpointer follows its PASSIVE pass with a RESTART so writers
    # reuse the WAL from its start (db/checkpoint.py says why); it retries this long while a
    # writer or a reader is in the way.
    wal_restart_bytes: int = 16 * 1024 * 1024
    wal_restart_wait_ms: int = 5

    # --- agent endpoints --------------------------------------------------------------------
    init_deadline_ms: int = 300
    first_message_enabled: bool = False
    first_message_template: str = "Hi {user_name}, welcome back! How can I help you today?"
    first_message_template_new: str = ""
    tool_summary_budget_ms: int = 400
    tool_rate_limit: str = "600/minute"
    own_numbers: str = ""
    # Agent endpoints (issue 5): `llm` summarises tool results with the configured chat model
    # inside tool_summary_budget_ms, falling back to the extractive summary.
    tool_summary_mode: Literal["extractive", "llm"] = "extractive"
    # The agent's LLM rereads every tool result on each turn: keep the body small.
    # Byte budget of a default 5-memory tool answer; scales with a larger configured `limit`.
    tool_response_max_bytes: int = 2048
    # slowapi/limits storage; memory:// is per process, redis://… shares limits across workers.
    rate_limit_storage_uri: str = "memory://"

    # --- retrieval (seed 001's composite plus a lexical term; tuned on the LoCoMo dev split) -
    # Seed weights 0.6/0.2/0.1/0.1 with no lexical term reach recall@10 0.385 there: salience
    # and recency then outrank the query, and callers ask about old events on purpose. The
    # tuned 0.5 vector + 0.5 BM25 reaches 0.656 (`python -m bench.locomo_engine --grid`).
    w_similarity: float = 0.5
    w_salience: float = 0.0
    w_recency: float = 0.0
    w_link: float = 0.0
    w_lexical: float = 0.5
    link_top_k: int = 5
    link_threshold: float = 0.8

    # --- memory engine (memory/): consolidation, expansion, embedder runtime ----------------
    # Cosine thresholds are for the local MiniLM embedder (paraphrase ~0.6-0.8, restatement
    # ~0.9+); an OpenAI embedder needs its own values.
    memory_duplicate_threshold: float = 0.90
    memory_within_call_threshold: float = 0.88
    memory_echo_threshold: float = 0.80
    memory_update_threshold: float = 0.50
    # Single-hop expansion: top-N neighbours per hit, scored at hit x link weight x factor.
    memory_expand: bool = True
    memory_expand_per_hit: int = 2
    memory_expansion_factor: float = 0.9
    memory_index_cache_users: int = 256
    # Per-user index at scale (memory/index.py, memory/ann.py, memory/snapshot.py). Exact
    # search below the threshold (searchable memories of one user); above it an HNSW graph
    # (usearch, cosine) proposes max(min_pool, per_result x limit) candidates that the exact
    # composite re-scores with BM25's own pool. f32 keeps recall@10 >= 0.999 at 100k.
    memory_ann_threshold: int = 20_000
    memory_ann_dtype: Literal["f32", "f16", "i8"] = "f32"
    memory_ann_min_pool: int = 200
    memory_ann_per_result: int = 20
    # Users with at least this many memories keep an encrypted snapshot of their index on
    # disk (memory_index_dir, default <data_dir>/index), so their first query after a restart
    # loads it instead of decrypting and tokenising every memory. 0 disables snapshots.
    memory_index_persist_min: int = 20_000
    memory_index_dir: Path | None = None
    # PostgreSQL only: the tool path searches pgvector (HNSW) and loads just the candidates when
    # the user's in-process index is cold in this process, or when the user has more memories
    # than this (loading and decrypting that many per query costs more than the search).
    memory_db_search_threshold: int = 50_000
    # Retrieval also reaches memories that mention the same entity (person, company, product,
    # place) as the query or a hit, through the entity graph (issue 7 §5).
    memory_entity_expand: bool = True
    embedder_threads: int = 1
    # Where the local embedder keeps the model it derives once from the shipped weights
    # (memory/embedders/quantized.py, ~60 MB); default <data_dir>/models.
    model_cache_dir: Path | None = None

    # --- operations: metrics, backups, key rotation (issue 6) --------------------------------
    # prometheus-client multiprocess directory shared by API and workers (PROMETHEUS_MULTIPROC_DIR
    # wins when set); default <data_dir>/metrics.
    metrics_dir: Path | None = None
    backup_retention_days: float = 30.0
    # Run after each backup, e.g. "aws s3 cp {file} s3://bucket/voxmem/" ({file}, {sha256} are
    # replaced; without {file} the path is appended). Empty: keep backups local only.
    backup_upload_command: str = ""
    key_rotation_batch_size: int = 500

    # --- sister systems (issue 7): session memory, profiles, patterns, reflection ------------
    # Session memory (seed 000 story 5.1.1): last N calls per user, TTL by users.tier, counted
    # from when the call was recorded.
    session_size: int = 10
    session_ttl_trial_days: float = 7.0
    session_ttl_paid_days: float = 30.0
    # Tiers that get the paid TTL; every other tier (trial, guests) gets the trial one.
    session_paid_tiers: str = "paid,premium,pro,enterprise"
    # Profile enrichment (story 5.1.2) from this many calls on; `auto` uses the LLM when an
    # OpenAI-compatible endpoint is configured and heuristics otherwise.
    profile_enrichment_calls: int = 3
    profile_enrichment: Literal["auto", "heuristic", "llm"] = "auto"
    # Issue patterns (seed 002): cosine at which a reported problem is the same known problem
    # (local MiniLM: paraphrases of one error score ~0.7-0.9, different errors < 0.5).
    pattern_match_threshold: float = 0.72
    # Reflection: a queued internal event per user, at most once per interval, after a call.
    reflection_interval_secs: float = 900.0
    reflection_min_calls: int = 3
    analytics_default_days: int = 30

    @property
    def session_paid_tier_set(self) -> frozenset[str]:
        return frozenset(t.lower() for t in split_csv(self.session_paid_tiers))

    @property
    def webhook_secret_list(self) -> list[str]:
        return split_csv(self.webhook_secrets)

    @property
    def encryption_key_list(self) -> list[str]:
        return split_csv(self.encryption_keys)

    @property
    def own_number_list(self) -> list[str]:
        return split_csv(self.own_numbers)

    @property
    def model_cache_path(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        """Filesystem path of the SQLite database, or None for PostgreSQL / in-memory."""
        if not self.is_sqlite:
            return None
        raw = self.database_url.split(":///", 1)[1] if ":///" in self.database_url else ""
        if not raw or raw == ":memory:":
            return None
        return Path(raw)

    @property
    def key_file(self) -> Path:
        return self.data_dir / "voxmem.key"

    @property
    def lookup_key_file(self) -> Path:
        return self.data_dir / "voxmem.lookup.key"

    @property
    def queue_retry_window_secs(self) -> float:
        """Upper bound on how long a job can stay in flight: every attempt's lease plus the
        capped backoff (with jitter, or a Retry-After up to the cap) between attempts."""
        gaps = max(self.queue_max_attempts - 1, 0)
        return (
            self.queue_max_attempts * self.queue_lease_secs
            + gaps * self.queue_backoff_cap_secs * 1.2
        )

    @model_validator(mode="after")
    def _tombstones_outlast_retries(self) -> Settings:
        window = self.queue_retry_window_secs
        if self.forget_tombstone_days * 86400 <= window:
            raise ValueError(
                f"VOXMEM_FORGET_TOMBSTONE_DAYS={self.forget_tombstone_days:g} is shorter than "
                f"the queue's lease and retry window ({window / 86400:.2f} days): a retried job "
                "of a forgotten user could outlive its tombstone and write the data back"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        for name, values in (
            ("VOXMEM_ENCRYPTION_KEYS", self.encryption_key_list),
            ("VOXMEM_WEBHOOK_SECRETS", self.webhook_secret_list),
            ("VOXMEM_LOOKUP_KEY", split_csv(self.lookup_key)),
        ):
            if not values or any(v.lower() in PLACEHOLDER_SECRETS for v in values):
                problems.append(name)
        if problems:
            raise ValueError(
                "refusing to start in production with missing or placeholder secrets: "
                + ", ".join(problems)
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once per process."""
    return Settings()
