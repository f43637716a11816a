"""Forgotten stays forgotten (issue 5): late work of a forgotten user's calls writes nothing.

A forget leaves a tombstone of keyed hashes (memory/tombstones.py); the worker checks it in the
transaction that completes each job (worker/forgotten.py). Covered here: a job claimed before
the forget and completed after it (a real worker process paused in ``prepare``), a job retried
after the forget on an expired lease (backdated in SQL), a redelivered webhook of a forgotten
conversation, a late first delivery of a call that was under way during the forget, a new call
from the same number after the forget (served, fresh guest), the init and tool-log races, what
a tombstone row holds, expiry and pruning, and PostgreSQL (migration, the same flows, the
advisory lock that orders a forget against completing transactions).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.models import (
    DEFAULT_TENANT,
    CallerNumber,
    Conversation,
    ConversationBinding,
    ConversationTurn,
    ForgetTombstone,
    ToolInvocation,
    User,
    WebhookEvent,
)
from db.settings import Settings
from db.tenancy import TokenIdentity, active_webhook_secrets, create_token, require_tenant
from memory import privacy, tombstones
from memory.context import NO_HISTORY
from memory.identity import number_hash
from tests.agent_helpers import add_user, bind
from tests.conftest import REPO, Deployment, make_settings, settings_env
from tests.intake_helpers import edited_body, signed, start_worker, stop, wait_for
from worker.pipeline import PrepareContext, Stage
from worker.runner import make_process_next
from worker.stages import CORE_STAGES

NUMBER = "+15550000001"
OTHER_NUMBER = "+15550000002"
POST_CALL = "/webhook/post-call"
INIT = "/webhook/conversation-init"


# --- helpers --------------------------------------------------------------------------------
def call_body(
    conversation_id: str,
    *,
    started: datetime,
    number: str | None = NUMBER,
    user_var: str | None = None,
) -> bytes:
    """The full fixture as one call of ``number`` (as written, any format) that started at
    ``started``; ``user_var`` is our ``user_id`` dynamic variable (None: not sent)."""
    ts = int(started.timestamp())

    def mutate(doc: dict[str, Any]) -> None:
        doc["event_timestamp"] = ts + 40
        data = doc["data"]
        data["conversation_id"] = conversation_id
        data["user_id"] = None
        meta = data["metadata"]
        meta["start_time_unix_secs"] = ts
        meta["accepted_time_unix_secs"] = ts
        phone = meta["phone_call"]
        phone["call_sid"] = f"CA{conversation_id}"
        init = data["conversation_initiation_client_data"]
        init["user_id"] = None
        variables = init["dynamic_variables"]
        variables["system__conversation_id"] = conversation_id
        variables["system__call_sid"] = f"CA{conversation_id}"
        if number is None:
            meta["phone_call"] = None
            variables.pop("system__caller_id", None)
            variables.pop("system__called_number", None)
        else:
            phone["external_number"] = number
            variables["system__caller_id"] = number
        if user_var is None:
            variables.pop("user_id", None)
        else:
            variables["user_id"] = user_var

    return edited_body(mutate)


def deliver(client: TestClient, deployment: Deployment, body: bytes) -> str:
    r = client.post(POST_CALL, content=body, headers=signed(deployment.webhook_secret, body))
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def drain(deployment: Deployment, *extra: Stage) -> int:
    process = make_process_next(
        deployment.settings, deployment.db, worker_id="test", stages=[*CORE_STAGES, *extra]
    )
    n = 0
    while process():
        n += 1
    return n


def count(deployment: Deployment, model: type[Any], *where: Any) -> int:
    with deployment.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def written(deployment: Deployment) -> dict[str, int]:
    """Rows a processed call writes (core stages)."""
    return {
        m.__tablename__: count(deployment, m)
        for m in (User, CallerNumber, Conversation, ConversationTurn, ToolInvocation)
    }


NOTHING = {
    "users": 0,
    "caller_numbers": 0,
    "conversations": 0,
    "conversation_turns": 0,
    "tool_invocations": 0,
}


def user_of(deployment: Deployment, conversation_id: str) -> str | None:
    with deployment.db.read() as session:
        return session.scalar(
            select(Conversation.user_id).where(Conversation.conversation_id == conversation_id)
        )


def event(deployment: Deployment, conversation_id: str) -> WebhookEvent | None:
    with deployment.db.read() as session:
        return session.scalar(
            select(WebhookEvent).where(WebhookEvent.conversation_id == conversation_id)
        )


def forget(client: TestClient, deployment: Deployment, user_id: str) -> dict[str, Any]:
    r = client.delete(f"/v1/users/{user_id}", headers=deployment.auth("admin"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def drops(matched: str, source: str = "worker") -> float:
    labels = {"source": source, "matched": matched}
    return REGISTRY.get_sample_value("forgotten_writes_dropped_total", labels) or 0.0


def assert_dropped(deployment: Deployment, conversation_id: str) -> None:
    row = event(deployment, conversation_id)
    assert row is not None
    assert (row.status, row.error_class, row.payload) == ("completed", "Forgotten", None)
    assert row.error_message and "forgotten at" in row.error_message


@contextmanager
def deployment_on(settings: Settings) -> Iterator[Deployment]:
    """conftest's ``deployment`` for any database (the dialect-parametrised tests)."""
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        secret = active_webhook_secrets(session, tenant.id)[0]
        tokens = {
            scope: create_token(session, DEFAULT_TENANT, scope).token
            for scope in ("tool", "init", "admin")
        }
    try:
        yield Deployment(settings=settings, db=db, webhook_secret=secret, tokens=tokens)
    finally:
        db.dispose()


@pytest.fixture
def any_deployment(any_settings: Settings) -> Iterator[tuple[Deployment, TestClient]]:
    from api.app import create_app

    with deployment_on(any_settings) as dep, TestClient(create_app(dep.settings)) as client:
        yield dep, client


def now() -> datetime:
    return datetime.now(UTC)


# --- redelivery, late delivery, new call (SQLite and PostgreSQL) ----------------------------
def test_redelivered_webhook_of_a_forgotten_conversation_writes_nothing(
    any_deployment: tuple[Deployment, TestClient],
) -> None:
    deployment, client = any_deployment
    body = call_body("conv_forgot_a", started=now() - timedelta(minutes=10))
    assert deliver(client, deployment, body) == "accepted"
    assert drain(deployment) == 1
    user_id = user_of(deployment, "conv_forgot_a")
    assert user_id is not None and written(deployment)["conversation_turns"] > 0

    answer = forget(client, deployment, user_id)
    assert answer["deleted"]["webhook_events"] == 1
    expires = datetime.fromisoformat(answer["tombstone_expires_at"])
    assert timedelta(days=29) < expires - now() <= timedelta(days=30)
    assert written(deployment) == NOTHING

    before = drops("conversation")
    # ElevenLabs delivers the same call again (a retry, or an operator's resend).
    assert deliver(client, deployment, body) == "accepted"  # the forget deleted the old row
    assert drain(deployment) == 1
    assert written(deployment) == NOTHING
    assert_dropped(deployment, "conv_forgot_a")
    assert drops("conversation") == before + 1
    # The dropped row (payload cleared) now deduplicates further redeliveries at intake.
    assert deliver(client, deployment, body) == "duplicate"
    assert drain(deployment) == 0


def test_late_calls_of_a_forgotten_caller_are_dropped_and_a_new_call_is_served(
    any_deployment: tuple[Deployment, TestClient],
) -> None:
    deployment, client = any_deployment
    body = call_body("conv_a", started=now() - timedelta(hours=1))
    assert deliver(client, deployment, body) == "accepted"
    assert drain(deployment) == 1
    forgotten = user_of(deployment, "conv_a")
    assert forgotten is not None
    forget(client, deployment, forgotten)

    # A call that was under way during the forget: its webhook arrives afterwards, from the
    # same number (written differently) and never bound at init.
    deliver(
        client,
        deployment,
        call_body("conv_b", started=now() - timedelta(minutes=2), number="(555) 000-0001"),
    )
    # A web call (no number) that carried the forgotten user id as its dynamic variable.
    deliver(
        client,
        deployment,
        call_body("conv_c", started=now() - timedelta(minutes=1), number=None, user_var=forgotten),
    )
    before = (drops("number"), drops("user"))
    assert drain(deployment) == 2
    assert written(deployment) == NOTHING
    assert_dropped(deployment, "conv_b")
    assert_dropped(deployment, "conv_c")
    assert (drops("number"), drops("user")) == (before[0] + 1, before[1] + 1)

    # The same person calls again after the forget: served, as a stranger. (ElevenLabs gives
    # start times in whole seconds; one in the very second of the forget counts as before it.)
    init = client.post(
        INIT,
        json={
            "caller_id": NUMBER,
            "called_number": "+15559876543",
            "agent_id": "agent_x",
            "call_sid": "CAconv_d",
            "conversation_id": "conv_d",
        },
        headers=deployment.auth("init"),
    )
    variables = init.json()["dynamic_variables"]
    fresh = variables["user_id"]
    assert fresh and fresh != forgotten and variables["caller_status"] == "new"
    assert variables["memory_context"] == NO_HISTORY  # nothing of theirs
    deliver(
        client,
        deployment,
        call_body("conv_d", started=now() + timedelta(seconds=1), user_var=fresh),
    )
    assert drain(deployment) == 1
    assert user_of(deployment, "conv_d") == fresh
    event_d = event(deployment, "conv_d")
    assert event_d is not None and event_d.error_class is None
    with deployment.db.read() as session:
        mapped = session.scalar(
            select(CallerNumber.user_id).where(CallerNumber.number_hash == number_hash(NUMBER))
        )
    assert mapped == fresh
    assert count(deployment, User) == 1
    # Another caller is untouched by the tombstone.
    deliver(client, deployment, call_body("conv_e", started=now(), number=OTHER_NUMBER))
    assert drain(deployment) == 1
    assert user_of(deployment, "conv_e") not in (None, fresh, forgotten)


def test_a_job_known_to_be_forgotten_skips_prepare(
    deployment: Deployment, client: TestClient
) -> None:
    """No slow stage (LLM extraction, embeddings) sees a transcript after its forget."""
    prepared: list[int] = []

    def probe(ctx: PrepareContext) -> None:
        prepared.append(ctx.job.id)

    stage = Stage("probe", prepare=probe)
    body = call_body("conv_p", started=now() - timedelta(minutes=3))
    deliver(client, deployment, body)
    assert drain(deployment, stage) == 1 and len(prepared) == 1
    user_id = user_of(deployment, "conv_p")
    assert user_id is not None
    forget(client, deployment, user_id)
    deliver(client, deployment, body)
    assert drain(deployment, stage) == 1
    assert len(prepared) == 1
    assert_dropped(deployment, "conv_p")


# --- what a tombstone holds ------------------------------------------------------------------
def test_the_tombstone_holds_no_plaintext_identifier_or_text(deployment: Deployment) -> None:
    from tests.test_privacy import seed_everything

    alice = seed_everything(deployment, NUMBER, "Alice", "conv_alice")
    with deployment.db.write() as session:
        session.execute(update(User).where(User.user_id == alice).values(external_id="crm-4471"))
        session.execute(
            update(ConversationBinding)
            .where(ConversationBinding.user_id == alice)
            .values(call_sid="CA0123456789abcdef")
        )
    with deployment.db.write() as session:
        tenant_id = require_tenant(session, DEFAULT_TENANT).id
        report = privacy.forget_user(session, tenant_id, alice, tombstone_days=30)
    with deployment.db.read() as session:
        rows = list(session.scalars(select(ForgetTombstone)))
    assert report.tombstone_keys == len(rows)
    # conv_alice (bound and stored) and conv_alice-x (queued, found by the number in it).
    assert sorted(r.kind for r in rows) == sorted(
        ["user", "external", "number", "conversation", "conversation", "call_sid"]
    )
    assert all(re.fullmatch(r"[0-9a-f]{64}", r.key_hash) for r in rows)
    # Domain-separated: not joinable with caller_numbers.number_hash of a later guest.
    assert number_hash(NUMBER) not in {r.key_hash for r in rows}
    secrets_ = [NUMBER, NUMBER.lstrip("+"), "5550000001", alice, "Alice", "crm-4471", "conv_alice"]
    secrets_ += ["CA0123456789abcdef", "Salesforce", "Denver", "printer"]
    path = deployment.settings.sqlite_path
    assert path is not None
    conn = sqlite3.connect(path)
    try:
        raw = conn.execute("SELECT * FROM forget_tombstones").fetchall()
        columns = [d[1] for d in conn.execute("PRAGMA table_info(forget_tombstones)")]
    finally:
        conn.close()
    assert columns == ["id", "tenant_id", "kind", "key_hash", "forgotten_at", "expires_at"]
    for row in raw:
        for needle in secrets_:
            assert needle not in repr(row), needle
    # And the whole file (WAL included, after a checkpoint-free write) never has the number.
    for file in (path, path.with_name(path.name + "-wal")):
        if file.exists():
            assert NUMBER.encode() not in file.read_bytes()


def test_tombstones_expire_and_are_pruned(deployment: Deployment) -> None:
    start = now()
    with deployment.db.write() as session:
        tenant_id = require_tenant(session, DEFAULT_TENANT).id
        ids = tombstones.Identifiers.of(conversation_ids=["conv_x"], numbers=[NUMBER])
        n, expires = tombstones.record(session, tenant_id, ids, now=start, days=30)
    assert n == 2 and expires == start + timedelta(days=30)
    probe = tombstones.Identifiers.of(conversation_ids=["conv_x"])
    with deployment.db.read() as session:
        assert tombstones.find(session, tenant_id, probe, started_at=None, now=start) is not None
        # Expired rows no longer match, even before a prune removes them.
        late = expires + timedelta(seconds=1)
        assert tombstones.find(session, tenant_id, probe, started_at=None, now=late) is None
    with deployment.db.write() as session:
        assert tombstones.prune(session, now=expires - timedelta(seconds=1)) == 0
        assert tombstones.prune(session, now=expires) == 2
    assert count(deployment, ForgetTombstone) == 0


def test_number_and_user_tombstones_only_cover_calls_that_started_before_the_forget(
    deployment: Deployment,
) -> None:
    at = now()
    with deployment.db.write() as session:
        tenant_id = require_tenant(session, DEFAULT_TENANT).id
        tombstones.record(
            session,
            tenant_id,
            tombstones.Identifiers.of(
                conversation_ids=["conv_x"], user_ids=["usr_x"], numbers=[NUMBER]
            ),
            now=at,
        )
    before, after = at - timedelta(seconds=5), at + timedelta(seconds=5)
    with deployment.db.read() as session:

        def kind(started: datetime | None, **ids: Any) -> str | None:
            found = tombstones.find(
                session, tenant_id, tombstones.Identifiers.of(**ids), started_at=started
            )
            return found.kind if found else None

        assert kind(after, conversation_ids=["conv_x"], numbers=[NUMBER]) == "conversation"
        assert kind(before, numbers=[NUMBER]) == "number"
        assert kind(after, numbers=[NUMBER]) is None
        assert kind(None, numbers=[NUMBER]) == "number"  # unknown start: the safe reading
        assert kind(before, user_ids=["usr_x"]) == "user"
        assert kind(after, user_ids=["usr_x"]) is None
        assert kind(before, numbers=[OTHER_NUMBER], conversation_ids=["conv_y"]) is None


def test_tombstone_lifetime_must_outlast_the_retry_window(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.forget_tombstone_days * 86400 > settings.queue_retry_window_secs
    with pytest.raises(ValueError, match="FORGET_TOMBSTONE_DAYS"):
        make_settings(tmp_path, forget_tombstone_days=0.1)


# --- races with the agent endpoints ------------------------------------------------------------
def test_init_does_not_bind_a_user_forgotten_between_its_read_and_its_write(
    deployment: Deployment,
) -> None:
    from api.routes.init import InitRequest, InitWork

    user_id = add_user(deployment.db, number=NUMBER, name="Alice")

    class ForgetBeforeWrite:
        """The database, with the forget committing between init's read and write phases."""

        def read(self) -> Any:
            return deployment.db.read()

        def write_relaxed(self) -> Any:  # init's write phase (a binding: no fsync of its own)
            with deployment.db.write() as session:
                privacy.forget_user(session, require_tenant(session, DEFAULT_TENANT).id, user_id)
            return deployment.db.write_relaxed()

    with deployment.db.read() as session:
        tenant_id = require_tenant(session, DEFAULT_TENANT).id
    identity = TokenIdentity(token_id=1, tenant_id=tenant_id, tenant_slug="default", scope="init")
    req = InitRequest(
        caller_id=NUMBER,
        called_number=None,
        agent_id="agent_x",
        call_sid="CAring",
        conversation_id="conv_ring",
    )
    work = InitWork(deployment.settings, identity, req)
    before = drops("user_gone", "init")
    work.run(ForgetBeforeWrite())
    assert work.response is not None
    assert work.response["dynamic_variables"]["user_id"] == ""  # the neutral answer
    assert "Alice" not in repr(work.response)
    assert count(deployment, ConversationBinding) == 0
    assert count(deployment, User) == 0
    assert drops("user_gone", "init") == before + 1


def test_tool_log_written_after_the_forget_is_dropped(deployment: Deployment) -> None:
    from api.background import EXTRA_KEY, BackgroundWriter
    from api.routes.tools import MemoryQueryRequest, log_invocation

    alice = add_user(deployment.db, number=NUMBER, name="Alice")
    bob = add_user(deployment.db, number=OTHER_NUMBER, name="Bob")
    bind(deployment.db, "default", alice, "conv_alice_live")
    writer = BackgroundWriter(deployment.db)  # not started: flush() drains in this thread
    state: Any = SimpleNamespace(extras={EXTRA_KEY: writer})
    with deployment.db.read() as session:
        tenant_id = require_tenant(session, DEFAULT_TENANT).id
    identity = TokenIdentity(token_id=1, tenant_id=tenant_id, tenant_slug="default", scope="tool")
    answer = {"summary": "Alice lives in Denver.", "memories": [{"content": "Denver"}]}

    def logged(user_id: str | None, conversation_id: str) -> None:
        body = MemoryQueryRequest(query="where do I live", conversation_id=conversation_id)
        log_invocation(state, identity, user_id, body, answer, 3, None)

    logged(alice, "conv_alice_live")  # answered before the forget, written after it
    logged(None, "conv_alice_live")  # the same call, unresolved (binding gone), after it
    logged(bob, "conv_bob_live")
    with deployment.db.write() as session:
        privacy.forget_user(session, tenant_id, alice)
    writer.flush()
    with deployment.db.read() as session:
        rows = list(session.scalars(select(ToolInvocation)))
    assert [(r.user_id, r.conversation_id) for r in rows] == [(bob, "conv_bob_live")]


# --- real worker processes --------------------------------------------------------------------
def sql(deployment: Deployment, statement: str, *params: object) -> list[tuple[Any, ...]]:
    path = deployment.settings.sqlite_path
    assert path is not None
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        return list(conn.execute(statement, params).fetchall())
    finally:
        conn.close()


def start_gated_worker(deployment: Deployment, tmp_path: Path) -> tuple[Any, Path, Path]:
    marker, go = tmp_path / "in-prepare", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.forget_harness", "--marker", str(marker), "--go", str(go)],
        env=settings_env(deployment.settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.err", "ab"),
    )
    return proc, marker, go


def seeded_caller(deployment: Deployment, *, bound: bool) -> str:
    """A known caller with one queued call: bound at init (the forget finds the event), or
    not bound and with the number written as the payload has it (the forget cannot)."""
    user_id: str = add_user(deployment.db, number=NUMBER, name="Alice")
    if bound:
        bind(deployment.db, "default", user_id, "conv_race")
    return user_id


@pytest.mark.parametrize("bound", [True, False], ids=["found-by-forget", "missed-by-forget"])
def test_a_job_claimed_before_the_forget_and_completed_after_it_writes_nothing(
    deployment: Deployment, client: TestClient, tmp_path: Path, bound: bool
) -> None:
    user_id = seeded_caller(deployment, bound=bound)
    number = NUMBER if bound else "(555) 000-0001"
    deliver(
        client,
        deployment,
        call_body("conv_race", started=now() - timedelta(minutes=5), number=number),
    )
    proc, marker, go = start_gated_worker(deployment, tmp_path)
    try:
        wait_for(marker.exists, timeout=60, what="the worker in prepare")
        # Claimed and leased: the forget runs while the job is between its two phases.
        answer = forget(client, deployment, user_id)
        assert answer["deleted"].get("webhook_events", 0) == (1 if bound else 0)
        go.write_text("go")

        def settled() -> bool:
            if bound:  # the row is gone: the job ends "lost" (its lease vanished), counted
                beats = sql(
                    deployment, "SELECT processed_count + failed_count FROM worker_heartbeats"
                )
                return bool(beats) and int(beats[0][0]) >= 1
            row = event(deployment, "conv_race")
            return row is not None and row.status == "completed"

        wait_for(settled, timeout=60, what="the job finished")
    finally:
        stop(proc)
    assert written(deployment) == NOTHING
    if not bound:
        assert_dropped(deployment, "conv_race")
    else:
        assert event(deployment, "conv_race") is None


def test_a_job_retried_after_the_forget_is_dropped_without_running_its_stages(
    deployment: Deployment, client: TestClient, tmp_path: Path
) -> None:
    """The worker dies mid-job before the forget; after it, another worker reclaims the
    expired lease (backdated in SQL) and drops the job before any prepare (no LLM, no
    embedder for a forgotten transcript)."""
    user_id = seeded_caller(deployment, bound=False)
    deliver(
        client,
        deployment,
        call_body("conv_retry", started=now() - timedelta(minutes=5), number="555-000-0001"),
    )
    proc, marker, _go = start_gated_worker(deployment, tmp_path)
    try:
        wait_for(marker.exists, timeout=60, what="the worker in prepare")
    finally:
        proc.kill()
        proc.wait()
    forget(client, deployment, user_id)
    row = event(deployment, "conv_retry")
    assert row is not None and row.status == "processing"  # not found by the forget
    sql(
        deployment,
        "UPDATE webhook_events SET locked_until = '2000-01-01 00:00:00.000000' "
        "WHERE conversation_id = 'conv_retry'",
    )
    worker = start_worker(
        deployment, "--processes", "1", log=tmp_path / "worker2.log", VOXMEM_LOG_LEVEL="INFO"
    )
    try:
        wait_for(
            lambda: (e := event(deployment, "conv_retry")) is not None and e.status == "completed",
            timeout=90,
            what="the retried job completed",
        )
    finally:
        stop(worker)
    assert written(deployment) == NOTHING
    assert_dropped(deployment, "conv_retry")
    row = event(deployment, "conv_retry")
    assert row is not None and row.retry_count == 2  # claimed twice, run once (as a drop)
    log = (tmp_path / "worker2.log").read_text()
    assert "job.dropped_forgotten" in log
    for needle in (NUMBER, "5550000001", "conv_retry", user_id):
        assert needle not in log, needle


# --- PostgreSQL: the forget and completing transactions are ordered by an advisory lock -------
@pytest.mark.postgres
def test_pg_forget_waits_for_a_completing_transaction_and_holds_the_next_one(
    pg_settings: Settings,
) -> None:
    with deployment_on(pg_settings) as deployment:
        user_id = add_user(deployment.db, number=NUMBER)
        with deployment.db.read() as session:
            tenant_id = require_tenant(session, DEFAULT_TENANT).id
        finished: list[float] = []

        def run_forget() -> None:
            with deployment.db.write() as session:
                privacy.forget_user(session, tenant_id, user_id)
            finished.append(time.monotonic())

        # A worker's completing transaction holds the shared lock: the forget waits for it.
        with deployment.db.write() as session:
            tombstones.serialise_with_forget(session, tenant_id, exclusive=False)
            forgetter = threading.Thread(target=run_forget)
            forgetter.start()
            time.sleep(0.5)
            assert not finished, "the forget ran inside a completing transaction"
            released = time.monotonic()
        forgetter.join(30)
        assert finished and finished[0] >= released
        # Two completing transactions share the lock (workers never wait for each other).
        with deployment.db.write() as a, deployment.db.write() as b:
            tombstones.serialise_with_forget(a, tenant_id, exclusive=False)
            tombstones.serialise_with_forget(b, tenant_id, exclusive=False)
        with deployment.db.read() as session:
            assert session.scalar(select(func.count()).select_from(ForgetTombstone)) == 2


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0004_upgrades_a_0003_database_and_downgrades(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The migration on an existing deployment (not the template): 0003 -> head -> 0003."""
    from alembic import command
    from sqlalchemy import inspect

    from db.engine import make_engine
    from db.migrate import alembic_config, upgrade_to_head

    pg = request.getfixturevalue("pg_server") if dialect == "postgres" else None
    url = pg.new_database(template="template0") if pg is not None else None
    settings = make_settings(tmp_path / "data", **({"database_url": url} if url else {}))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)

    def migrate(target: str, *, down: bool = False) -> None:
        cfg = alembic_config(settings)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, target)

    try:
        migrate("0003")
        assert "forget_tombstones" not in inspect(engine).get_table_names()
        upgrade_to_head(settings)
        insp = inspect(engine)
        assert {c["name"] for c in insp.get_columns("forget_tombstones")} == {
            "id",
            "tenant_id",
            "kind",
            "key_hash",
            "forgotten_at",
            "expires_at",
        }
        uniques = {
            u["name"]: u["column_names"] for u in insp.get_unique_constraints("forget_tombstones")
        }
        assert uniques["uq_tombstone_tenant_hash"] == ["tenant_id", "key_hash"]
        assert "idx_tombstone_expires" in {i["name"] for i in insp.get_indexes("forget_tombstones")}
        migrate("0003", down=True)
        assert "forget_tombstones" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        if pg is not None and url is not None:
            pg.drop_database(url)
