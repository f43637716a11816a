"""What one accepted webhook writes to disk: WAL bytes, database growth, stored payload size.

    .venv/bin/python -m bench.intake_storage [--events 1000]

One API process on loopback over a fresh migrated SQLite file, its checkpointer held off (so
the WAL keeps every frame), then N signed copies of the 12.6 KB fixture posted one at a time
(one commit each, as at low rates). Reports the WAL growth per event, the database growth per
event once everything is checkpointed, and the average stored payload. Unlike latency, these
do not move with the host's load, so they compare storage formats exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path

from bench.bench_intake import build_requests, flat_out, prepare_deployment, start_server


def measure(events: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="voxmem-bench-storage-") as tmp:
        env, secret, db_path = prepare_deployment(Path(tmp))
        env["VOXMEM_CHECKPOINT_INTERVAL_SECS"] = "100000"
        env["VOXMEM_WAL_TRUNCATE_BYTES"] = str(1 << 40)
        proc, port = start_server("voxmem", env)
        wal = db_path.with_name(db_path.name + "-wal")
        try:
            wal_before = wal.stat().st_size if wal.exists() else 0
            with sqlite3.connect(db_path) as conn:
                pages_before = conn.execute("PRAGMA page_count").fetchone()[0]
            _, ok = asyncio.run(flat_out(port, build_requests(secret, events, "storage"), 1))
            wal_after = wal.stat().st_size
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        conn = sqlite3.connect(db_path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages_after, page_size = (
                conn.execute("PRAGMA page_count").fetchone()[0],
                conn.execute("PRAGMA page_size").fetchone()[0],
            )
            stored = conn.execute("SELECT avg(length(payload)) FROM webhook_events").fetchone()[0]
        finally:
            conn.close()
    return {
        "events": ok,
        "wal_bytes_per_event": (wal_after - wal_before) / events,
        "db_bytes_per_event": (pages_after - pages_before) * page_size / events,
        "stored_payload_bytes": float(stored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    result = measure(args.events)
    print(
        f"{result['events']:.0f} accepted; WAL written per event "
        f"{result['wal_bytes_per_event']:,.0f} bytes; database growth per event "
        f"{result['db_bytes_per_event']:,.0f} bytes; stored payload "
        f"{result['stored_payload_bytes']:,.0f} bytes"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
