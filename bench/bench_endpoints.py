"""Agent endpoints: conversation-init p50/p95 and memory-query p95 at 10k memories for one user.

Server-side figures: the real app (auth, middleware, SQLite in WAL with synchronous=FULL, the
real memory engine and local MiniLM query embedding) driven in process through Starlette's
TestClient, so no TCP or client stack is in the numbers. The 10k memories get random unit
vectors instead of MiniLM embeddings (embedding 10k texts takes about a minute on 2 cores and
does not change the cost of a query, which is one matmul over the user's matrix).

    .venv/bin/python -m bench.bench_endpoints [--memories 10000] [--requests 300]
"""

from __future__ import annotations

import os

# As `voxmem` does (api/cli.py): one BLAS thread, before numpy loads. Without it numpy's pool
# doubled this process's CPU per query on the shared 2-core box.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from db import crypto  # noqa: E402
from db.bootstrap import bootstrap  # noqa: E402
from db.engine import open_database  # noqa: E402
from db.models import DEFAULT_TENANT, Memory, MemoryEmbedding, User  # noqa: E402
from db.settings import Settings  # noqa: E402
from db.tenancy import create_token, require_tenant  # noqa: E402
from memory.embedders import get_embedder  # noqa: E402
from memory.identity import resolve_or_create_by_number  # noqa: E402
from memory.loader import vector_to_bytes  # noqa: E402

TOPICS = [
    "billing",
    "invoice",
    "refund",
    "Salesforce",
    "API integration",
    "password reset",
    "shipping delay",
    "vacation",
    "daughter's violin lessons",
    "peanut allergy",
]
QUERIES = [
    "what did we promise about the refund",
    "caller CRM preferences",
    "shipping problems",
    "family details",
    "allergies",
    "how they like to be contacted",
    "last invoice",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def seed(settings: Settings, n_memories: int) -> tuple[str, dict[str, str]]:
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    embedder = get_embedder(settings)
    dim = int(embedder.embed(["dimension probe"])[0].shape[0])
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        tokens = {
            scope: create_token(session, DEFAULT_TENANT, scope).token for scope in ("init", "tool")
        }
        user = resolve_or_create_by_number(session, tenant.id, "+15551234567").user
        user.name = "John"
        user.last_interaction = now - timedelta(days=2)
        user_id = user.user_id
    batch = 1000
    for start in range(0, n_memories, batch):
        with db.write() as session:
            for i in range(start, min(n_memories, start + batch)):
                vec = rng.standard_normal(dim).astype(np.float32)
                vec /= np.linalg.norm(vec)
                memory = Memory(
                    user_id=user_id,
                    content=f"Memory {i}: John mentioned {TOPICS[i % len(TOPICS)]} on call {i}.",
                    sector_type=("semantic", "episodic", "procedural")[i % 3],
                    salience=float(rng.uniform(0.2, 1.0)),
                    recency=now - timedelta(hours=i),
                    sources=[{"conversation_id": f"conv_{i // 20}", "turns": [i % 20]}],
                )
                session.add(memory)
                session.flush()
                session.add(
                    MemoryEmbedding(
                        memory_id=memory.id,
                        sector=memory.sector_type,
                        embedding=vector_to_bytes(vec),
                        embedding_model=embedder.name,
                        dimension=dim,
                    )
                )
    with db.write() as session:
        row = session.get(User, user_id)
        assert row is not None
        row.memory_version += 1
        row.total_memories = n_memories
    db.dispose()
    return user_id, tokens


def timed(client: TestClient, url: str, body: object, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    resp = client.post(url, json=body, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if resp.status_code != 200:
        raise SystemExit(f"{url} answered {resp.status_code}: {resp.text[:200]}")
    return elapsed


def summary(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {statistics.median(values):.2f} | {pct(values, 0.95):.2f} "
        f"| {pct(values, 0.99):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    from api.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=f"sqlite:///{data / 'voxmem.db'}",
            data_dir=data,
            log_level="ERROR",
            log_format="console",
        )
        t0 = time.perf_counter()
        user_id, tokens = seed(settings, args.memories)
        print(f"seeded {args.memories} memories in {time.perf_counter() - t0:.1f}s")
        init_h = {"Authorization": f"Bearer {tokens['init']}"}
        tool_h = {"Authorization": f"Bearer {tokens['tool']}"}
        with TestClient(create_app(settings)) as client:
            # Warm-up: model load, first index build, first digest (reported separately).
            cold_tool = timed(
                client, "/tools/memory-query", {"query": "warm up", "user_id": user_id}, tool_h
            )
            cold_init = timed(
                client,
                "/webhook/conversation-init",
                {"caller_id": "+15551234567", "conversation_id": "conv_warm"},
                init_h,
            )
            baseline = []
            for _ in range(args.requests):
                started = time.perf_counter()
                client.get("/health/live")
                baseline.append((time.perf_counter() - started) * 1000)
            returning, new_callers, tool = [], [], []
            for i in range(args.requests):
                returning.append(
                    timed(
                        client,
                        "/webhook/conversation-init",
                        {
                            "caller_id": "+15551234567",
                            "agent_id": "agent_x",
                            "call_sid": f"CA{i:032d}",
                            "conversation_id": f"conv_r{i}",
                        },
                        init_h,
                    )
                )
                new_callers.append(
                    timed(
                        client,
                        "/webhook/conversation-init",
                        {
                            "caller_id": f"+1555{2000000 + i:07d}",
                            "agent_id": "agent_x",
                            "call_sid": f"CB{i:032d}",
                            "conversation_id": f"conv_n{i}",
                        },
                        init_h,
                    )
                )
                tool.append(
                    timed(
                        client,
                        "/tools/memory-query",
                        {
                            "query": f"{QUERIES[i % len(QUERIES)]} #{i}",  # never cached
                            "conversation_id": f"conv_r{i}",
                            "limit": 5,
                        },
                        tool_h,
                    )
                )
        print(
            f"cold: first tool call {cold_tool:.1f} ms (index build of {args.memories}), "
            f"first init {cold_init:.1f} ms"
        )
        print("| endpoint | n | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|")
        print(summary("GET /health/live (TestClient + middleware baseline)", baseline))
        print(
            summary("conversation-init, returning caller (10k memories, binds the call)", returning)
        )
        print(
            summary("conversation-init, first-time caller (creates guest + binding)", new_callers)
        )
        print(summary(f"memory-query, {args.memories} memories, limit 5", tool))


if __name__ == "__main__":
    main()
