"""Sister-system read paths at 10k calls: session memory, init extras, analytics.

    .venv/bin/python -m bench.bench_insights [--calls 10000] [--users 500] [--repeat 50]

Builds a throwaway SQLite deployment (real keys, real schema), inserts ``--calls`` conversations
with analyses (evaluation criteria) spread over ``--users`` users and 3 agents, plus a full
session memory for one user, then times each read path (median and p95 of ``--repeat`` runs).
Targets (seed 000): session retrieval < 50 ms, analytics < 100 ms at 10k calls.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.models import Conversation, ConversationAnalysis, SessionInteraction, User
from db.settings import Settings
from db.types import utcnow
from memory import analytics, profile
from memory import session as session_mem
from memory.identity import create_guest

TOPICS = ("login", "billing", "technical", "account", "shipping", "general")
OUTCOMES = ("success", "success", "success", "failure", "unknown")


def seed(settings: Settings, calls: int, users: int) -> tuple[int, str]:
    db = open_database(settings)
    rng = random.Random(7)
    now = utcnow()
    with db.write() as session:
        ids = [create_guest(session, 1).user_id for _ in range(users)]
        for i in range(calls):
            outcome = rng.choice(OUTCOMES)
            conv = Conversation(
                tenant_id=1,
                conversation_id=f"conv_{i}",
                agent_id=f"agent_{i % 3}",
                user_id=ids[i % users],
                start_time=now - timedelta(minutes=rng.randrange(60 * 24 * 60)),
                duration_secs=rng.randrange(30, 900),
                status="done",
                call_successful=outcome,
                metadata_={"task_type": rng.choice(TOPICS)},
            )
            session.add(conv)
            session.flush()
            session.add(
                ConversationAnalysis(
                    conversation_fk=conv.id,
                    call_successful=outcome,
                    evaluation_json={
                        "resolved": {"criteria_id": "resolved", "result": outcome},
                        "polite": {"criteria_id": "polite", "result": "success"},
                    },
                )
            )
        target = ids[0]
        for j in range(10):
            session.add(
                SessionInteraction(
                    user_id=target,
                    occurred_at=now - timedelta(hours=j),
                    topic=f"topic {j}",
                    task_type="login",
                    asked="I can't log in",
                    done="Reset link sent",
                    outcome="success",
                    duration_secs=120,
                    expires_at=now + timedelta(days=7),
                )
            )
    db.dispose()
    return 1, target


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm caches and statement compilation
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=f"sqlite:///{data / 'voxmem.db'}",
            data_dir=data,
            environment="test",
        )
        bootstrap(settings, issue_tokens=False)
        crypto.configure(crypto.load_keyring(settings))
        tenant, user_id = seed(settings, args.calls, args.users)
        db = open_database(settings)
        cases: dict[str, Callable[[], object]] = {}

        def read(fn: Callable[..., object], *a: object, **kw: object) -> Callable[[], object]:
            def run() -> object:
                with db.read() as session:
                    return fn(session, *a, **kw)

            return run

        def init_extras() -> object:
            with db.read() as session:
                user = session.get(User, user_id)
                assert user is not None
                return profile.init_variables(session, user, "")

        cases["session: last 10 interactions"] = read(session_mem.recent_interactions, user_id)
        cases["init extras (session context + profile)"] = init_extras
        cases["analytics: one user (all time)"] = read(analytics.user_analytics, tenant, user_id)
        cases["analytics: agents, 30 days"] = read(analytics.agent_analytics, tenant, days=30)
        cases["analytics: agents, all time"] = read(analytics.agent_analytics, tenant, days=None)
        cases["analytics: failing types, 7 days"] = read(
            analytics.failing_call_types, tenant, days=7
        )
        print(f"{args.calls} calls, {args.users} users, SQLite, {args.repeat} runs each")
        print(f"{'read path':<44}{'median ms':>10}{'p95 ms':>10}")
        for name, fn in cases.items():
            median, p95 = timed(fn, args.repeat)
            print(f"{name:<44}{median:>10.2f}{p95:>10.2f}")
        db.dispose()


if __name__ == "__main__":
    main()
