"""Extraction throughput: six-turn calls per second, extraction alone and end to end
(extract -> embed -> consolidate/link -> store in SQLite, one transaction per call).

    .venv/bin/python -m bench.extraction_throughput [--calls N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.settings import Settings
from db.tenancy import require_tenant
from memory.embedders import LocalEmbedder
from memory.extractors.local import LocalExtractor
from memory.identity import create_guest
from memory.store import MemoryWriter
from memory.types import CallForExtraction, Turn

TOPICS = ["router", "invoice", "delivery", "password", "subscription", "refund", "printer", "app"]


def six_turn_call(i: int) -> CallForExtraction:
    topic = TOPICS[i % len(TOPICS)]
    turns = (
        Turn(0, "agent", "Thanks for calling Acme support, how can I help today?"),
        Turn(1, "user", f"Hi, my name is Dana and my {topic} has been failing since call {i}."),
        Turn(2, "agent", f"I'm sorry about the {topic}. I'll escalate ticket {1000 + i} today."),
        Turn(3, "user", "Please text me the update, I'm usually in meetings in the morning."),
        Turn(
            4, "agent", "Noted, we'll text you. I'll also send the troubleshooting guide by Friday."
        ),
        Turn(5, "user", "Great, thanks. That's all!"),
    )
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i)
    return CallForExtraction(f"bench_{i}", start, turns, caller_name="Dana")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    calls = [six_turn_call(i) for i in range(args.calls)]
    ex = LocalExtractor()
    t = time.perf_counter()
    for c in calls:
        ex.extract(c)
    print(f"extraction only: {len(calls) / (time.perf_counter() - t):.0f} six-turn calls/s")

    tmp = Path(tempfile.mkdtemp(prefix="extraction_bench_"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite:///{tmp / 'v.db'}", data_dir=tmp, environment="test"
    )
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    emb = LocalEmbedder()
    emb.warm_up()
    writer = MemoryWriter(emb)
    users = []
    with db.write() as s:
        tenant = require_tenant(s, "default").id
        users = [create_guest(s, tenant).user_id for _ in range(20)]
    per_call = []
    t = time.perf_counter()
    for i, c in enumerate(calls):
        t1 = time.perf_counter()
        result = ex.extract(c)
        with db.write() as s:
            writer.write_call(
                s,
                user_id=users[i % len(users)],
                conversation_id=c.conversation_id,
                extraction=result,
                now=c.start_time,
            )
        per_call.append((time.perf_counter() - t1) * 1000)
    total = time.perf_counter() - t
    per_call.sort()
    print(
        f"end to end (extract+embed+store, SQLite): {len(calls) / total:.1f} six-turn calls/s; "
        f"per call p50 {per_call[len(per_call) // 2]:.1f} ms, "
        f"p95 {per_call[int(len(per_call) * 0.95)]:.1f} ms"
    )


if __name__ == "__main__":
    main()
