"""Forget and export: everything of the user, everywhere, and nothing of anyone else."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from db.engine import Database
from db.models import (
    DEFAULT_TENANT,
    CallerNumber,
    Conversation,
    ConversationAnalysis,
    ConversationBinding,
    ConversationMemory,
    ConversationTurn,
    Entity,
    EntityMention,
    EntityRelation,
    IssueOccurrence,
    IssuePattern,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    SessionInteraction,
    ToolInvocation,
    User,
    UserProfile,
    WebhookEvent,
)
from db.tenancy import require_tenant
from memory import privacy
from memory.embedders.local import MODEL_NAME
from memory.loader import get_index
from tests.agent_helpers import add_memories, add_user, bind
from tests.conftest import REPO, Deployment, settings_env, voxmem_cmd

NOW = datetime.now(UTC)


def seed_everything(deployment: Deployment, number: str, name: str, conv: str) -> str:
    """A user with a row in every table that can hold something of theirs."""
    db = deployment.db
    user_id = add_user(db, number=number, name=name)
    mids = add_memories(
        db, deployment.settings, user_id, [f"{name} uses Salesforce.", f"{name} lives in Denver."]
    )
    bind(db, DEFAULT_TENANT, user_id, conv)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        c = Conversation(
            tenant_id=tenant.id,
            conversation_id=conv,
            user_id=user_id,
            start_time=NOW,
            status="done",
        )
        session.add(c)
        session.flush()
        session.add_all(
            [
                ConversationTurn(
                    conversation_fk=c.id, role="user", message=f"I am {name}", turn_order=0
                ),
                ConversationAnalysis(
                    conversation_fk=c.id, summary=f"{name} called", summary_title="Billing"
                ),
                ConversationMemory(conversation_fk=c.id, memory_id=mids[0], extraction_type="fact"),
                MemoryLink(source_memory_id=mids[0], target_memory_id=mids[1], link_weight=0.9),
                ToolInvocation(
                    tenant_id=tenant.id,
                    user_id=user_id,
                    conversation_id=conv,
                    conversation_fk=c.id,
                    tool_name="memory_query",
                    request_params='{"query": "x"}',
                ),
                SessionInteraction(
                    user_id=user_id,
                    conversation_fk=c.id,
                    occurred_at=NOW,
                    topic="billing",
                    expires_at=NOW + timedelta(days=1),
                ),
                UserProfile(user_id=user_id, profile=json.dumps({"company": "Acme"})),
                WebhookEvent(
                    tenant_id=tenant.id,
                    event_id=f"post_call_transcription:{conv}",
                    event_type="post_call_transcription",
                    conversation_id=conv,
                    payload=json.dumps({"data": {"conversation_id": conv}}),
                ),
                # Never bound at init: found through the caller number inside the payload.
                WebhookEvent(
                    tenant_id=tenant.id,
                    event_id=f"post_call_transcription:{conv}-x",
                    event_type="post_call_transcription",
                    conversation_id=f"{conv}-x",
                    payload=json.dumps(
                        {"data": {"metadata": {"phone_call": {"external_number": number}}}}
                    ),
                ),
            ]
        )
        e1 = Entity(user_id=user_id, kind="company", name="Salesforce", name_hash=f"h{name}1")
        e2 = Entity(user_id=user_id, kind="place", name="Denver", name_hash=f"h{name}2")
        session.add_all([e1, e2])
        session.flush()
        session.add_all(
            [
                EntityMention(entity_id=e1.id, memory_id=mids[0]),
                EntityRelation(
                    user_id=user_id,
                    source_entity_id=e1.id,
                    target_entity_id=e2.id,
                    relation="located_in",
                ),
            ]
        )
        pattern = IssuePattern(
            tenant_id=tenant.id, problem=f"{name}'s printer jams", problem_hash=f"p{name}"
        )
        session.add(pattern)
        session.flush()
        session.add(IssueOccurrence(pattern_id=pattern.id, user_id=user_id, conversation_fk=c.id))
    return user_id


USER_TABLES: list[tuple[type[Any], Any]] = [
    (Memory, lambda u: Memory.user_id == u),
    (CallerNumber, lambda u: CallerNumber.user_id == u),
    (ConversationBinding, lambda u: ConversationBinding.user_id == u),
    (Conversation, lambda u: Conversation.user_id == u),
    (ToolInvocation, lambda u: ToolInvocation.user_id == u),
    (SessionInteraction, lambda u: SessionInteraction.user_id == u),
    (UserProfile, lambda u: UserProfile.user_id == u),
    (Entity, lambda u: Entity.user_id == u),
    (EntityRelation, lambda u: EntityRelation.user_id == u),
    (IssueOccurrence, lambda u: IssueOccurrence.user_id == u),
    (User, lambda u: User.user_id == u),
]


def count(db: Database, model: type[Any], where: Any = None) -> int:
    with db.read() as session:
        stmt = select(func.count()).select_from(model)
        if where is not None:
            stmt = stmt.where(where)
        return int(session.scalar(stmt) or 0)


def totals(db: Database) -> dict[str, int]:
    models = [
        Memory,
        MemoryEmbedding,
        MemoryLink,
        EntityMention,
        ConversationMemory,
        ConversationTurn,
        ConversationAnalysis,
        IssuePattern,
        WebhookEvent,
        *(m for m, _ in USER_TABLES),
    ]
    return {m.__tablename__: count(db, m) for m in models}


@pytest.fixture
def two_users(deployment: Deployment) -> tuple[str, str]:
    alice = seed_everything(deployment, "+15550000001", "Alice", "conv_alice")
    bob = seed_everything(deployment, "+15550000002", "Bob", "conv_bob")
    return alice, bob


def test_forget_erases_everything_of_the_user_only(
    deployment: Deployment, two_users: tuple[str, str]
) -> None:
    alice, bob = two_users
    before = totals(deployment.db)
    # Warm the engine's in-process index: it holds decrypted text and must be dropped too.
    with deployment.db.read() as session:
        get_index(session, alice, MODEL_NAME)
    with deployment.db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        report = privacy.forget_user(session, tenant.id, alice)
    assert report.deleted["memories"] == 2
    assert report.deleted["webhook_events"] == 2
    after = totals(deployment.db)
    for model, where in USER_TABLES:
        assert count(deployment.db, model, where(alice)) == 0, model.__tablename__
        assert count(deployment.db, model, where(bob)) >= 1, model.__tablename__
    # Every shared table lost exactly Alice's half (each user seeded the same shape).
    for table, n in before.items():
        assert after[table] == n // 2, table
    # Nothing left anywhere in the file that names her: raw scan of every text column.
    with deployment.db.read_engine.connect() as conn:
        tables = (
            conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
            .scalars()
            .all()
        )
        for table in tables:
            for row in conn.exec_driver_sql(f'SELECT * FROM "{table}"'):  # noqa: S608
                assert alice not in repr(tuple(row)), table
    from memory import loader

    with deployment.db.read() as session:
        assert loader.CACHE.get(loader.cache_key(session, alice), 1, MODEL_NAME) is None


def test_forget_inside_tenant_only(deployment: Deployment, two_users: tuple[str, str]) -> None:
    from tests.agent_helpers import ensure_tenant

    other = ensure_tenant(deployment.db, "acme")
    with deployment.db.write() as session, pytest.raises(privacy.UserNotFound):
        privacy.forget_user(session, other, two_users[0])
    assert count(deployment.db, User, User.user_id == two_users[0]) == 1


def test_export_holds_everything_decrypted(
    deployment: Deployment, two_users: tuple[str, str]
) -> None:
    alice, _ = two_users
    with deployment.db.read() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        data = privacy.export_user(session, tenant.id, alice)
    assert data["user"]["user_id"] == alice
    assert data["user"]["name"] == "Alice"
    assert data["user"]["caller_numbers"] == ["+15550000001"]
    assert {m["content"] for m in data["memories"]} == {
        "Alice uses Salesforce.",
        "Alice lives in Denver.",
    }
    memory = data["memories"][0]
    assert {
        "id",
        "content",
        "sector",
        "salience",
        "state",
        "created_at",
        "links",
        "sources",
    } <= set(memory)
    linked = [m for m in data["memories"] if m["links"]]
    assert len(linked) == 2  # links are reported from both ends
    (conv,) = data["conversations"]
    assert conv["conversation_id"] == "conv_alice"
    assert conv["turns"][0]["message"] == "I am Alice"
    assert conv["analysis"]["summary"] == "Alice called"
    assert data["profile"]["company"] == "Acme"
    assert data["session"][0]["topic"] == "billing"
    assert data["tool_invocations"][0]["request"] == {"query": "x"}
    assert {e["name"] for e in data["graph"]["entities"]} == {"Salesforce", "Denver"}
    json.dumps(data)  # serialisable as is
    assert "Bob" not in json.dumps(data)


def test_cli_export_and_forget(deployment: Deployment, two_users: tuple[str, str]) -> None:
    alice, bob = two_users
    env = settings_env(deployment.settings)
    out = subprocess.run(
        voxmem_cmd("users", "export", alice),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["user"]["user_id"] == alice
    gone = subprocess.run(
        voxmem_cmd("users", "forget", alice),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert gone.returncode == 0, gone.stderr
    assert count(deployment.db, User, User.user_id == alice) == 0
    assert count(deployment.db, User, User.user_id == bob) == 1
    again = subprocess.run(
        voxmem_cmd("users", "forget", alice),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode != 0
    assert again.stderr.strip().startswith("error: no user")
    wrong = subprocess.run(
        voxmem_cmd("users", "export", bob, "--tenant", "nope"),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wrong.returncode != 0 and "no tenant" in wrong.stderr
