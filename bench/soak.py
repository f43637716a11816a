"""Soak: N minutes of steady mixed traffic against the real API with workers running.

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 10] [--workers 2] [--window 60]

Traffic at ``--rate`` requests/s (open loop, single client thread): per cycle of 10 requests,
2 signed post-call webhooks (six-turn calls), 3 conversation-inits and 5 memory-query tool
calls, over 200 distinct callers. Every ``--window`` seconds it records p95 per endpoint, the
API's and the worker's RSS and the error count. Reports whether p95 stayed stable (last window
within 1.5x of the first), RSS growth of the API after warm-up (< 10 % target) and errors (0).
The result is stored for docs/benchmarks.md (``bench/results/results.json``, key ``soak``);
``bench.run_all`` renders it but never runs it (CI need not).
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import children, deploy, pct, rss_mb, six_turns
from bench.run_all import RESULTS, Figure, Row, load_avg, save_figure, stamp

KINDS = ["webhook", "init", "tool", "tool", "init", "tool", "webhook", "tool", "init", "tool"]
FACTS = [
    "My router keeps dropping the connection every evening.",
    "I prefer to be contacted by email, not phone.",
    "We moved our CRM from Salesforce to HubSpot last month.",
    "My daughter Maya is allergic to peanuts.",
    "The invoice for March was charged twice.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument(
        "--from-log",
        type=Path,
        help="summarise a finished run from its printed output instead of running one",
    )
    args = ap.parse_args()
    if args.from_log:
        save_figure(args.results, stamp(from_log(args.from_log, args), quick=False))
        return

    windows: list[dict[str, float]] = []
    errors = 0
    sent = 0
    with tempfile.TemporaryDirectory(prefix="voxmem-soak-") as tmp:
        d = deploy(Path(tmp))
        try:
            d.start_api()
            wproc = d.start_workers(args.workers)
            time.sleep(3.0)
            init_h = {"Authorization": f"Bearer {d.init_token}"}
            lat: dict[str, list[float]] = {"webhook": [], "init": [], "tool": []}
            start = time.perf_counter()
            window_start = start
            end = start + args.minutes * 60
            i = 0
            with httpx.Client(timeout=30) as c:
                while True:
                    due = start + i / args.rate
                    if due >= end:
                        break
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    kind = KINDS[i % len(KINDS)]
                    caller = i % 200
                    number = f"+1555{5000000 + caller:07d}"
                    try:
                        if kind == "webhook":
                            d.post_call(
                                c,
                                conversation_id=f"conv_soak_{i:08d}",
                                number=number,
                                turns=six_turns(i, FACTS[i % len(FACTS)]),
                                start=datetime.now(UTC),
                            )
                        elif kind == "init":
                            r = c.post(
                                f"{d.base_url}/webhook/conversation-init",
                                json={
                                    "caller_id": number,
                                    "agent_id": "agent_soak",
                                    "conversation_id": f"conv_live_{i:08d}",
                                },
                                headers=init_h,
                            )
                            if r.status_code != 200:
                                raise RuntimeError(f"init {r.status_code}")
                        else:
                            d.memory_query(
                                c, {"query": FACTS[(i // 3) % len(FACTS)], "caller_id": number}
                            )
                        # Latency from the scheduled send (open loop): stalls count.
                        lat[kind].append((time.perf_counter() - due) * 1000)
                    except Exception as exc:
                        errors += 1
                        print(f"error: {kind}: {exc}", flush=True)
                    sent += 1
                    i += 1
                    now = time.perf_counter()
                    if now - window_start >= args.window:
                        kids = children(wproc.pid) or [wproc.pid]
                        row = {
                            "t_min": round((now - start) / 60, 1),
                            **{f"{k}_p95": round(pct(v, 0.95), 2) for k, v in lat.items()},
                            "api_rss_mb": round(rss_mb(d.api_pid), 1),
                            "worker_rss_mb": round(max(rss_mb(p) for p in kids), 1),
                            "errors": errors,
                            "queue": str(d.queue_counts()),
                            "load1": round(os.getloadavg()[0], 2),
                        }
                        windows.append(row)
                        print(row, flush=True)
                        lat = {k: [] for k in lat}
                        window_start = now
            backlog = d.queue_counts()
        finally:
            d.stop_all()
    fig = summarise(windows, errors=errors, sent=sent, backlog=str(backlog), args=args)
    save_figure(args.results, stamp(fig, quick=False))
    print(fig)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(
    windows: list[dict[str, Any]], *, errors: int, sent: int, backlog: str, args: argparse.Namespace
) -> Figure:
    """Stability compares thirds of the run, not two single windows: the first window holds
    the warm-up (model load, first index builds) and is left out, and one noisy minute on a
    shared machine must not decide the verdict either way. Per endpoint: the median of the
    per-window p95s in the last third vs in the first third."""
    fig = Figure(
        "soak",
        f"Soak: {args.minutes:g} minutes of mixed traffic at {args.rate:g} req/s",
        f".venv/bin/python -m bench.soak --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--workers {args.workers} --window {args.window:g}",
        floor_name="the first third of the same run (after the warm-up window)",
    )
    steady = windows[1:] if len(windows) >= 4 else windows
    third = max(1, len(steady) // 3)
    head, tail = steady[:third], steady[-third:]
    if len(windows) >= 2:
        for k in ("webhook", "init", "tool"):
            before = _median([w[f"{k}_p95"] for w in head])
            after = _median([w[f"{k}_p95"] for w in tail])
            fig.rows.append(
                Row(
                    f"{k} p95, median of the last third's windows vs the first third's",
                    after,
                    before,
                    target="stable (≤ 1.5× first third)",
                    met=after <= 1.5 * max(before, 1.0),
                )
            )
        for k, label in (("api_rss_mb", "API RSS"), ("worker_rss_mb", "worker RSS")):
            before, after = float(steady[0][k]), float(windows[-1][k])
            fig.rows.append(
                Row(
                    f"{label}, last window vs first after warm-up",
                    after,
                    before,
                    unit="MiB",
                    target="growth < 10 %",
                    met=(after - before) / before < 0.10,
                )
            )
    fig.rows.append(Row("errors", float(errors), None, unit="", target="0", met=errors == 0))
    table = [
        "| minute | webhook p95 ms | init p95 ms | tool p95 ms | API MiB | worker MiB | load |"
    ]
    table.append("|---:|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        table.append(
            f"| {w['t_min']} | {w['webhook_p95']} | {w['init_p95']} | {w['tool_p95']} "
            f"| {w['api_rss_mb']} | {w['worker_rss_mb']} | {w.get('load1', '')} |"
        )
    fig.notes += [
        f"{sent} requests (2 webhooks : 3 inits : 5 tool calls), {args.workers} worker processes, "
        f"200 callers; post-call queue at the end: {backlog}. Latency from each request's "
        f"scheduled send. Load average at the end: {load_avg()}.",
        "\n".join(table),
    ]
    return fig


def from_log(path: Path, args: argparse.Namespace) -> Figure:
    """Re-summarise a finished run from its printed window rows (``--from-log``)."""
    windows = [
        ast.literal_eval(line)
        for line in path.read_text().splitlines()
        if line.startswith("{'t_min'")
    ]
    errors = int(windows[-1]["errors"]) if windows else 0
    sent = round(args.minutes * 60 * args.rate)
    backlog = str(windows[-1]["queue"]) if windows else "?"
    return summarise(windows, errors=errors, sent=sent, backlog=backlog, args=args)


if __name__ == "__main__":
    main()
