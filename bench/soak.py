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
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

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
    args = ap.parse_args()

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
                        }
                        windows.append(row)
                        print(row, flush=True)
                        lat = {k: [] for k in lat}
                        window_start = now
            backlog = d.queue_counts()
        finally:
            d.stop_all()
    fig = Figure(
        "soak",
        f"Soak: {args.minutes:g} minutes of mixed traffic at {args.rate:g} req/s",
        f".venv/bin/python -m bench.soak --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--workers {args.workers} --window {args.window:g}",
        floor_name="the first window of the same run",
    )
    if len(windows) >= 2:
        first, last = windows[0], windows[-1]
        for k in ("webhook", "init", "tool"):
            fig.rows.append(
                Row(
                    f"{k} p95, last window vs first",
                    last[f"{k}_p95"],
                    first[f"{k}_p95"],
                    target="stable (≤ 1.5× first)",
                    met=last[f"{k}_p95"] <= 1.5 * max(first[f"{k}_p95"], 1.0),
                )
            )
        growth = (last["api_rss_mb"] - first["api_rss_mb"]) / first["api_rss_mb"]
        fig.rows.append(
            Row(
                "API RSS, last window vs first",
                last["api_rss_mb"],
                first["api_rss_mb"],
                unit="MiB",
                target="growth < 10 %",
                met=growth < 0.10,
            )
        )
        wgrowth = (last["worker_rss_mb"] - first["worker_rss_mb"]) / first["worker_rss_mb"]
        fig.rows.append(
            Row(
                "worker RSS, last window vs first",
                last["worker_rss_mb"],
                first["worker_rss_mb"],
                unit="MiB",
                target="growth < 10 %",
                met=wgrowth < 0.10,
            )
        )
    fig.rows.append(Row("errors", float(errors), None, unit="", target="0", met=errors == 0))
    table = ["| minute | webhook p95 ms | init p95 ms | tool p95 ms | API MiB | worker MiB |"]
    table.append("|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        table.append(
            f"| {w['t_min']} | {w['webhook_p95']} | {w['init_p95']} | {w['tool_p95']} "
            f"| {w['api_rss_mb']} | {w['worker_rss_mb']} |"
        )
    fig.notes += [
        f"{sent} requests (2 webhooks : 3 inits : 5 tool calls), {args.workers} worker processes, "
        f"200 callers; post-call queue at the end: {backlog}. Latency from each request's "
        f"scheduled send. Load average at the end: {load_avg()}.",
        "\n".join(table),
    ]
    save_figure(args.results, stamp(fig, quick=False))
    print(fig)


if __name__ == "__main__":
    main()
