"""Run ops/locust/locustfile.py (seed 001's load test) headless against a local voxmem (API + 2
workers, fresh SQLite deployment) and store the result for docs/benchmarks.md.

Locust is not a voxmem dependency; install it apart from the project venv, e.g.

    python3 -m venv /tmp/locust-venv && /tmp/locust-venv/bin/pip install locust
    .venv/bin/python -m bench.locust_run --locust /tmp/locust-venv/bin/locust \\
        [--users 20] [--spawn-rate 5] [--time 2m]

Seed 001's target: memory-query p95 < 500 ms.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, deploy
from bench.run_all import RESULTS, Figure, Row, save_figure, stamp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--locust", default="locust")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--spawn-rate", type=float, default=5)
    ap.add_argument("--time", default="2m")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="voxmem-locust-") as tmp:
        d = deploy(Path(tmp))
        try:
            d.start_api()
            d.start_workers(args.workers)
            time.sleep(3.0)
            env = {
                **os.environ,
                "VOXMEM_TOOL_TOKEN": d.tool_token,
                "VOXMEM_WEBHOOK_SECRET": d.secret,
            }
            prefix = Path(tmp) / "locust"
            cmd = [
                *(args.locust, "-f", str(REPO / "ops" / "locust" / "locustfile.py")),
                *("--host", d.base_url, "--headless", "-u", str(args.users)),
                *("-r", str(args.spawn_rate), "-t", args.time, "--csv", str(prefix)),
                "--only-summary",
            ]
            out = subprocess.run(
                cmd,
                cwd=REPO / "ops" / "locust",
                env=env,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
        finally:
            d.stop_all()
    fig = Figure(
        "locust",
        "Locust: seed 001's load test (ops/locust/locustfile.py)",
        f".venv/bin/python -m bench.locust_run --locust <locust> --users {args.users} "
        f"--spawn-rate {args.spawn_rate:g} --time {args.time}",
        floor_name="",
    )
    for r in rows:
        name = r["Name"]
        if name not in ("/tools/memory-query", "/webhook/post-call", "Aggregated"):
            continue
        p95 = float(r["95%"])
        is_tool = name == "/tools/memory-query"
        fig.rows.append(
            Row(
                f"{name} p95 (p50 {float(r['50%']):.0f} ms, {r['Request Count']} requests, "
                f"{r['Failure Count']} failures, {float(r['Requests/s']):.1f} req/s)",
                p95,
                None,
                target="< 500 ms (seed 001)" if is_tool else "",
                met=(p95 < 500) if is_tool else None,
            )
        )
    fig.notes.append(
        f"{args.users} simulated agents (wait 1–3 s, 3 tool calls : 1 webhook), API + "
        f"{args.workers} worker processes on the same 2 cores as locust; locust exit code "
        f"{out.returncode}. Locust was installed in a separate venv (not a voxmem dependency)."
    )
    save_figure(args.results, stamp(fig, quick=False))
    print(out.stdout[-3000:], out.stderr[-3000:])


if __name__ == "__main__":
    main()
