"""`voxmem reembed` after a model change: memories embedded with another model are invisible to
retrieval until it runs; it gives each one a vector of the configured model, resumably."""

from __future__ import annotations

import subprocess

from sqlalchemy import select, update

from db.models import MemoryEmbedding
from memory.embedders.local import MODEL_NAME
from memory.engine import build_retriever, embedder_for
from memory.store import users_missing_embeddings
from tests.agent_helpers import add_memories, add_user
from tests.conftest import REPO, Deployment, settings_env, voxmem_cmd

OLD_MODEL = "all-MiniLM-L6-v2-int8"


def reembed(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voxmem_cmd("reembed", *args),
        env=settings_env(deployment.settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def found(deployment: Deployment, user_id: str, query: str) -> list[str]:
    retriever = build_retriever(deployment.settings, embedder_for(deployment.settings))
    with deployment.db.read() as session:
        return [m.content for m in retriever.search(session, user_id, query, limit=3)]


def test_reembed_makes_memories_of_an_old_model_searchable_again(
    deployment: Deployment,
) -> None:
    alice = add_user(deployment.db, number="+15550001111", name="Alice")
    bob = add_user(deployment.db, number="+15550002222", name="Bob")
    add_memories(deployment.db, deployment.settings, alice, ["Alice is allergic to peanuts."])
    add_memories(deployment.db, deployment.settings, bob, ["Bob's company uses Salesforce."])
    # As a database embedded before the model change looks: every vector of the old model.
    with deployment.db.write() as session:
        session.execute(update(MemoryEmbedding).values(embedding_model=OLD_MODEL))
    with deployment.db.read() as session:
        assert users_missing_embeddings(session, MODEL_NAME) == sorted([alice, bob])
    assert found(deployment, alice, "food allergies") == []
    migrate = subprocess.run(
        voxmem_cmd("migrate"),
        env=settings_env(deployment.settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "2 users have memories without a" in migrate.stdout, migrate.stdout

    result = reembed(deployment)
    assert result.returncode == 0, result.stderr
    assert "re-embedded 2 memories of 2 users" in result.stdout

    with deployment.db.read() as session:
        assert users_missing_embeddings(session, MODEL_NAME) == []
        models = sorted(session.scalars(select(MemoryEmbedding.embedding_model)))
    assert models == sorted([OLD_MODEL, OLD_MODEL, MODEL_NAME, MODEL_NAME])  # old ones kept
    assert found(deployment, alice, "food allergies") == ["Alice is allergic to peanuts."]
    # Nothing left to do: a second run changes nothing and says so.
    again = reembed(deployment)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
