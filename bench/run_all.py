"""Every headline figure, each beside its floor measured in the same run; rewrites
docs/benchmarks.md.

    .venv/bin/python -m bench.run_all                 # everything (make bench), ~30-40 min
    .venv/bin/python -m bench.run_all --quick         # smaller N, a few minutes
    .venv/bin/python -m bench.run_all --only intake,locomo

Results of each figure are kept in ``bench/results/results.json`` (git-ignored) with the date,
commit and load average of the run that measured it, so ``--only x`` re-measures x and the
document is regenerated from the latest result of every figure. ``--output``/``--results``
redirect both (the smoke test writes to a temp dir).
"""

from __future__ import annotations

import os

# As in the `voxmem` entry point (api/cli.py): one BLAS thread, set before numpy loads, so the
# in-process server-side figures run the engine the way a deployed process does.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    REPO,
    SHARED,
    Deployment,
    deploy,
    free_port,
    pct,
    peak_rss_mb,
    server_ms,
    six_turns,
    unique_query,
)
from bench.harness import SCALE_QUERIES as QUERIES  # noqa: E402

PY = ".venv/bin/python"
DOC = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results" / "results.json"


@dataclass
class Row:
    label: str
    value: float
    floor: float | None = None
    unit: str = "ms"
    target: str = ""
    met: bool | None = None


@dataclass
class Figure:
    key: str
    title: str
    command: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    floor_name: str = ""
    measured: str = ""
    commit: str = ""
    load: str = ""
    quick: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


# --- environment -------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        # The files this program writes do not make the measured code dirty.
        dirty = subprocess.run(
            [
                *("git", "status", "--porcelain", "--untracked-files=no", "--", "."),
                *(":!docs/benchmarks.md", ":!bench/results"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine() -> dict[str, str]:
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": mem,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "os": platform.platform(),
    }


def ms_stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), pct(values, 0.95), pct(values, 0.99)


# --- post-call intake (bench_intake, run as a program) ------------------------------------------
def fig_intake(quick: bool) -> list[Figure]:
    seconds = 2 if quick else 10
    repeats = 1 if quick else 3
    fig = Figure(
        "intake",
        "Post-call ack latency and maximum sustained rate",
        f"{PY} -m bench.bench_intake --rate R --seconds {seconds} --concurrency 32 "
        f"--repeats {repeats} (R = 50, 200)",
        floor_name="bare FastAPI route returning 200, same uvicorn settings, same run",
    )
    if not (REPO / "bench" / "bench_intake.py").exists():
        fig.notes.append("bench/bench_intake.py is not present in this checkout: not measured.")
        return [fig]
    for rate in (50, 200):
        out = subprocess.run(
            [
                *(sys.executable, "-m", "bench.bench_intake", "--rate", str(rate)),
                *("--seconds", str(seconds), "--concurrency", "32"),
                *("--repeats", str(repeats)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            fig.notes.append(f"rate {rate}: failed: {out.stderr.strip()[-300:]}")
            continue
        data = json.loads(out.stdout.strip().splitlines()[-1])
        real, bare = data["voxmem"], data["bare"]
        fig.raw[str(rate)] = data
        p99_target = "≤ 5 ms (issue 3)" if rate == 200 else ""
        fig.rows += [
            Row(f"ack p50 at {rate} req/s", real["p50_ms"], bare["p50_ms"]),
            Row(
                f"ack p99 at {rate} req/s",
                real["p99_ms"],
                bare["p99_ms"],
                target=p99_target,
                met=real["p99_ms"] <= 5.0 if p99_target else None,
            ),
        ]
        fig.notes.append(
            f"At {rate} req/s: {real['ok_at_rate']}/{real['sent']} accepted (200 `accepted`)."
        )
        disk = data.get("fsync_ms")
        if disk:
            # Every acknowledgement waits for one WAL fsync: the disk's own tail is the floor
            # under the ack p99, and on a shared VM it moves from run to run.
            fig.notes.append(
                f"4 KiB write + fsync on the data disk in the {rate} req/s run: "
                f"p50 {disk['before']['p50']:.2f} / p99 {disk['before']['p99']:.2f} ms before, "
                f"{disk['after']['p50']:.2f} / {disk['after']['p99']:.2f} ms after."
            )
        if "steal_pct_at_rate" in real:
            # CPU the hypervisor gave to other guests while the paced requests ran: the other
            # thing on this shared VM that moves the p99 between runs of the same code.
            fig.notes.append(
                f"CPU steal while the {rate} req/s requests ran (median round): "
                f"{real['steal_pct_at_rate']:.1f} % (voxmem), {bare['steal_pct_at_rate']:.1f} % "
                "(bare endpoint)."
            )
        rounds = zip(real.get("rounds", []), bare.get("rounds", []), strict=True)
        for i, (mine, base) in enumerate(rounds):
            fig.notes.append(
                f"{rate} req/s, round {i + 1}: p99 {mine['p99_ms']:.2f} ms at "
                f"{mine['steal_pct_at_rate']:.1f} % steal, {mine['max_per_sec']:,.0f} accepted/s "
                f"(bare endpoint: p99 {base['p99_ms']:.2f} ms at "
                f"{base['steal_pct_at_rate']:.1f} % steal); started after "
                f"{mine.get('waited_for_quiet_secs', 0):.0f} s waiting for a quiet window."
            )
        if "send_late_p99_ms" in real:
            # The client's own timer: a late send would be counted as server latency.
            fig.notes.append(
                f"Client send lateness p99 at {rate} req/s (median round): "
                f"{real['send_late_p99_ms']:.2f} ms "
                f"(voxmem), {bare['send_late_p99_ms']:.2f} ms (bare endpoint)."
            )
        if rate == 200:
            fig.rows.append(
                Row(
                    "max sustained accepted/s (32 connections, closed loop)",
                    real["max_per_sec"],
                    bare["max_per_sec"],
                    unit="req/s",
                    target="≥ 1,000 req/s (issue 3)",
                    met=real["max_per_sec"] >= 1000,
                )
            )
            if "cpu_ms_per_request" in real:
                fig.rows.append(
                    Row(
                        "server CPU per accepted webhook at max rate",
                        real["cpu_ms_per_request"],
                        bare["cpu_ms_per_request"],
                    )
                )
    fig.notes.append(
        f"Each value is the median of {repeats} rounds per server taken in turns (bare, voxmem, "
        "bare, …), so both meet the same noisy spells of this shared VM; each round starts "
        "once a 5 s window shows ≤ 2 % CPU steal, or after 120 s without one. "
        "Open-loop client (latency counted from each request's scheduled send; sends paced by "
        "a thread on a nanosleep timer, responses read by a thread per connection), one uvicorn "
        "process, SQLite WAL synchronous=FULL, 12.6 KB signed bodies, no workers."
    )
    return [fig]


# --- conversation-init ----------------------------------------------------------------------
def fig_init(quick: bool) -> list[Figure]:
    n = 30 if quick else 300
    fig = Figure(
        "init",
        "conversation-init latency (server-side from Server-Timing, and client-side over loopback)",
        f"{PY} -m bench.run_all --only init",
        floor_name="GET /health/live on the same server and client",
    )
    with tempfile.TemporaryDirectory(prefix="voxmem-bench-init-") as tmp:
        d = deploy(Path(tmp))
        try:
            d.start_api()
            h = {"Authorization": f"Bearer {d.init_token}"}
            url = f"{d.base_url}/webhook/conversation-init"
            with httpx.Client(timeout=10) as c:
                c.post(url, json={"caller_id": "+15551234567", "conversation_id": "c_w"}, headers=h)
                floor, returning, first = [], [], []
                server: dict[int, list[float]] = {id(returning): [], id(first): []}
                server_floor: list[float] = []
                for i in range(n):
                    t = time.perf_counter()
                    live = c.get(f"{d.base_url}/health/live")
                    floor.append((time.perf_counter() - t) * 1000)
                    server_floor.append(server_ms(live))
                    for bucket, number in (
                        (returning, "+15551234567"),
                        (first, f"+1555{2000000 + i:07d}"),
                    ):
                        body = {
                            "caller_id": number,
                            "agent_id": "agent_bench",
                            "call_sid": f"CA{i:032d}{len(bucket)}",
                            "conversation_id": f"conv_{len(bucket)}_{number[-7:]}_{i}",
                        }
                        t = time.perf_counter()
                        r = c.post(url, json=body, headers=h)
                        bucket.append((time.perf_counter() - t) * 1000)
                        if r.status_code != 200:
                            raise RuntimeError(f"init answered {r.status_code}: {r.text[:200]}")
                        server[id(bucket)].append(server_ms(r))
        finally:
            d.stop_all()
    fp50, fp95, _ = ms_stats(floor)
    sp50, sp95, _ = ms_stats(server_floor)
    for name, vals in (("returning caller", returning), ("first-time caller", first)):
        s50, s95, _ = ms_stats(server[id(vals)])
        p50, p95, _ = ms_stats(vals)
        fig.rows += [
            Row(f"server-side init p50, {name}", s50, sp50),
            Row(
                f"server-side init p95, {name}",
                s95,
                sp95,
                target="≤ 10 ms (issue 5)",
                met=s95 <= 10,
            ),
            Row(f"client-side init p50, {name}", p50, fp50),
            Row(f"client-side init p95, {name}", p95, fp95),
        ]
    fig.notes.append(
        f"{n} requests each, keep-alive httpx client, one `voxmem serve` process, no workers. "
        "Server-side is the API's own Server-Timing header (time from the request reaching "
        "the app to its response head, all middleware included); client-side adds loopback "
        "TCP and the httpx client. Floor: GET /health/live measured the same two ways."
    )
    return [fig]


# --- memory-query at scale --------------------------------------------------------------------
def _floor_scan(db_path: Path, user_id: str, n: int) -> list[float]:
    """Embed the query + exact numpy scan (matmul + argpartition top 10) of the user's vectors."""
    import numpy as np

    from db.settings import Settings
    from memory.embedders import get_embedder

    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        raw = conn.execute(
            "SELECT e.embedding FROM memory_embeddings e JOIN memories m ON m.id = e.memory_id "
            "WHERE m.user_id = ?",
            (user_id,),
        ).fetchall()
    matrix = np.frombuffer(b"".join(r[0] for r in raw), dtype="<f4").reshape(len(raw), -1)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    emb = get_embedder(Settings(_env_file=None, data_dir=db_path.parent))  # type: ignore[call-arg]
    emb.embed(["warm up"])
    out = []
    for i in range(n):
        t = time.perf_counter()
        q = emb.embed([QUERIES[i % len(QUERIES)]])[0].astype(np.float32)
        sim = matrix @ q
        k = min(10, len(sim) - 1)
        top = np.argpartition(-sim, k)[:10]
        _ = top[np.argsort(-sim[top])]
        out.append((time.perf_counter() - t) * 1000)
    return out


def _engine_stages(d: Deployment, user_id: str, n: int) -> dict[str, Any]:
    """Where a warm query's time goes inside the engine (no HTTP): the user's index load (cold),
    the query embedding, the exact vector scan alone, and the whole ``UserIndex.search``
    (vectors + BM25 + composite + expansion)."""
    from db import crypto
    from db.engine import open_database
    from db.settings import Settings
    from memory import loader
    from memory.embedders import get_embedder
    from memory.engine import configure_index, weights_from

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=d.env["VOXMEM_DATABASE_URL"],
        data_dir=Path(d.env["VOXMEM_DATA_DIR"]),
        log_level="ERROR",
    )
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    emb = get_embedder(settings)
    emb.embed(["warm up"])
    weights = weights_from(settings)
    configure_index(settings)  # ANN threshold and snapshots as the service has them
    loader.drop_all()  # measure the cold load even if this process loaded the user before
    try:
        with db.read() as session:
            t = time.perf_counter()
            index = loader.get_index(session, user_id, emb.name, ann=True)
            load_ms = (time.perf_counter() - t) * 1000
        loader.wait_background()
        embed, scan, search = [], [], []
        for i in range(n):
            q = QUERIES[i % len(QUERIES)]
            t0 = time.perf_counter()
            v = emb.embed([q])[0]
            t1 = time.perf_counter()
            _ = index.vectors @ v
            t2 = time.perf_counter()
            index.search(v, q, now_epoch=time.time(), limit=10, weights=weights)
            t3 = time.perf_counter()
            embed.append((t1 - t0) * 1000)
            scan.append((t2 - t1) * 1000)
            search.append((t3 - t2) * 1000)
    finally:
        db.dispose()
    return {"load_ms": load_ms, "embed": embed, "scan": scan, "search": search}


def _prepare_indexes(d: Deployment, users: dict[int, str]) -> dict[int, float]:
    """What a running service leaves behind for its large users: the ANN graph built and the
    index snapshot written (memory/loader.py does both in the background after a user's first
    query). Returns seconds per size; users below the thresholds get nothing."""
    from db import crypto
    from db.engine import open_database
    from db.settings import Settings
    from memory import loader
    from memory.embedders import get_embedder
    from memory.engine import configure_index

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=d.env["VOXMEM_DATABASE_URL"],
        data_dir=Path(d.env["VOXMEM_DATA_DIR"]),
        log_level="ERROR",
    )
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    configure_index(settings)
    model = get_embedder(settings).name
    out: dict[int, float] = {}
    try:
        for size, uid in sorted(users.items()):
            if size < settings.memory_index_persist_min:
                continue
            loader.drop_all()
            t = time.perf_counter()
            with db.read() as session:
                loader.get_index(session, uid, model, ann=True)
            loader.wait_background(3600)
            out[size] = time.perf_counter() - t
    finally:
        loader.drop_all()
        db.dispose()
    return out


WARM_QUERIES = 150


def _over_http(
    d: Deployment, users: dict[int, str], n: int
) -> dict[int, tuple[float, list[float], list[float]]]:
    """Per size: (cold first query ms, client-side samples, server-side samples), against
    ``voxmem serve`` over loopback; server-side is the API's own Server-Timing header."""
    res: dict[int, tuple[float, list[float], list[float]]] = {}
    try:
        d.start_api(timeout=180)
        with httpx.Client(timeout=60) as c:
            for size, uid in sorted(users.items()):
                cold, _ = d.memory_query(c, {"query": "warm", "user_id": uid, "limit": 10})
                # Steady state: a fresh process answers its first ~100 queries at ~16 ms p50
                # and then ~7-9 ms (bench/notes.md); those are not what a running service
                # does, and the cold row above already reports the first query.
                for i in range(WARM_QUERIES):
                    body = {"query": unique_query(QUERIES, i), "user_id": uid, "limit": 10}
                    d.memory_query(c, body)
                client, server = [], []
                for i in range(n):
                    body = {"query": unique_query(QUERIES, i), "user_id": uid, "limit": 10}
                    cms, sms, data = d.memory_query_timed(c, body)
                    if not data["memories"]:
                        raise RuntimeError(f"probe user {uid} returned nothing for {body}")
                    client.append(cms)
                    server.append(sms)
                res[size] = (cold, client, server)
        res[-1] = (peak_rss_mb(d.api_pid), [], [])
    finally:
        d.stop_all()
    return res


def _scale_deployment(root: Path) -> Deployment:
    from api.commands.demo import read_credentials

    data = root / "data"
    creds = read_credentials(data / "credentials.txt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMEM_")}
    env.update(
        VOXMEM_DATABASE_URL=f"sqlite:///{data / 'voxmem.db'}",
        VOXMEM_DATA_DIR=str(data),
        VOXMEM_ENVIRONMENT="test",
        VOXMEM_LOG_LEVEL="WARNING",
        VOXMEM_TOOL_RATE_LIMIT="1000000/minute",
    )
    return Deployment(
        root=root,
        env=env,
        secret=creds.secret or "",
        init_token=creds.init_token or "",
        tool_token=creds.tool_token or "",
        admin_token=creds.admin_token or "",
        db_path=data / "voxmem.db",
    )


def fig_query(quick: bool) -> list[Figure]:
    from bench.load_memories import load

    n = 30 if quick else 200
    base = REPO / "data" / "bench-scale"
    if quick:
        stages = [("small-quick", 2_000, 50, [1000]), ("full-quick", 30_000, 300, [1000, 10000])]
    else:
        stages = [
            ("small", 11_000, 1, [1000, 10000]),
            ("full", 1_000_000, 10_000, [1000, 10000, 100000]),
        ]
    fig = Figure(
        "query",
        "memory-query latency by memories per user and in the database",
        f"{PY} -m bench.run_all --only query" + (" --quick" if quick else ""),
        floor_name="embed the query + exact numpy scan (matmul + top-10) of that user's vectors",
    )
    for name, total, users, sizes in stages:
        root = base / name
        manifest = load(
            root, total=total, users=users, sizes=sizes, pool=3000 if not quick else 300
        )
        d = _scale_deployment(root)
        probes = {int(k): v for k, v in manifest["probes"].items() if int(k) in sizes}
        in_db = int(manifest["total"])
        fig.raw[f"{name}:prepared_s"] = {str(k): v for k, v in _prepare_indexes(d, probes).items()}
        measured = _over_http(d, probes, n)
        for size, uid in sorted(probes.items()):
            floor = _floor_scan(d.db_path, uid, n)
            cold, cvals, server = measured[size]
            f50, f95, _ = ms_stats(floor)
            s50, s95, _ = ms_stats(server)
            c50, c95, _ = ms_stats(cvals)
            where = f"{size:,} for the user, {in_db:,} in the database"
            goal = size == 10_000 and in_db >= 1_000_000
            fig.rows += [
                Row(f"server-side p50 ({where})", s50, f50),
                Row(
                    f"server-side p95 ({where})",
                    s95,
                    f95,
                    target="≤ 15 ms" if goal else "",
                    met=(s95 <= 15) if goal else None,
                ),
                Row(f"client-side p50 ({where})", c50, f50),
                Row(f"client-side p95 ({where})", c95, f95),
                Row(f"cold first query, index load ({where})", cold, None),
            ]
            st = _engine_stages(d, uid, n)
            fig.rows += [
                Row(f"engine: query embedding p95 ({where})", pct(st["embed"], 0.95), None),
                Row(
                    f"engine: UserIndex.search p95, warm ({where})",
                    pct(st["search"], 0.95),
                    pct(st["scan"], 0.95),
                ),
                Row(f"engine: index load, cold ({where})", st["load_ms"], None),
            ]
        fig.raw[f"{name}:api_peak_rss_mb"] = measured[-1][0]
        fig.raw[f"{name}:load"] = manifest["load_seconds"]
    loads = "; ".join(
        f"{x['to_total']:,} memories in {x['seconds']} s (pool {x['pool']} texts embedded in "
        f"{x['pool_embed_s']} s)"
        for k, v in fig.raw.items()
        if k.endswith(":load")
        for x in v
    )
    fig.notes += [
        f"Data: `bench/load_memories.py` bulk load ({loads}). Contents are template-generated "
        "memories, encrypted with the deployment's keyring; vectors are real MiniLM embeddings "
        "of a pool of distinct texts, each reused with Gaussian noise and renormalised "
        "(cosine ~0.95 to its pool vector) so the load takes minutes, not hours.",
        f"{n} queries per size after {WARM_QUERIES} warm-up queries per user (steady state), "
        "16 realistic queries in rotation, each made unique (`#i` "
        "suffix) so the API's query-embedding cache never answers, limit 10. Both figures come "
        "from the same requests to `voxmem serve` over loopback with a keep-alive httpx "
        "client: server-side is the API's own Server-Timing header (request reaching the app "
        "to response head: auth, rate limit, user resolution, embedding, search, response), "
        "client-side adds TCP and the client.",
        "engine rows: the same process-local engine without HTTP; the floor of "
        "UserIndex.search is the exact vector matmul alone over the user's matrix, so the ratio "
        "shows what BM25, the composite and expansion add on top of the vector scan.",
        "Cold: the first query for a user after start-up loads its index: from its snapshot "
        "for users with >= 20k memories (prepared before the run, as a running service leaves "
        "it: ANN graph built, snapshot written), else from the database (read + decrypt every "
        "memory, build BM25). It is cached per process; after a write only what changed is "
        "read again. From 20k memories the search takes ANN candidates (the `ann` figure).",
    ]
    return [fig]


# --- per-user index at scale: exact vs ANN, recall, cold loads (bench_ann, run as a program) -----
# The index as it was before ANN, refresh and snapshots (the "before" of the cold-load rows).
ANN_BEFORE_REV = "b57eaa0"


def fig_ann(quick: bool) -> list[Figure]:
    from bench.load_memories import load

    n = 40 if quick else 200
    name, total, users, sizes = (
        ("full-quick", 30_000, 300, [1000, 10000])
        if quick
        else ("full", 1_000_000, 10_000, [1000, 10000, 100000])
    )
    root = REPO / "data" / "bench-scale" / name
    cmd = (
        f"{PY} -m bench.bench_ann --root data/bench-scale/{name} "
        f"--sizes {','.join(map(str, sizes))} --queries {n} --before-rev {ANN_BEFORE_REV}"
    )
    fig = Figure(
        "ann",
        "Per-user index at scale: exact vs ANN search, recall, cold load",
        cmd,
        floor_name="search rows: the exact scan of the same index; cold-load rows: the index "
        f"before this work (`{ANN_BEFORE_REV}`: full rebuild, decrypt + tokenise every memory)",
    )
    load(root, total=total, users=users, sizes=sizes, pool=3000 if not quick else 300)
    out = subprocess.run(
        [
            *(sys.executable, "-m", "bench.bench_ann", "--root", str(root), "--json"),
            *("--sizes", ",".join(map(str, sizes)), "--queries", str(n)),
            *("--before-rev", ANN_BEFORE_REV),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        fig.notes.append(f"failed: {out.stderr.strip()[-300:]}")
        return [fig]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    fig.raw = data
    before = data.get("before", {}).get("load_ms", {})
    for size, r in data["sizes"].items():
        at = f"{int(size):,} memories"
        ex, an = r["exact_ms"], r["ann_ms"]
        old = before.get(size)
        fig.rows += [
            Row(f"search p50, exact ({at})", ex["p50"], None),
            Row(f"search p95, exact ({at})", ex["p95"], None),
            Row(f"search p50, ANN ({at})", an["p50"], ex["p50"]),
            Row(
                f"search p95, ANN ({at})",
                an["p95"],
                ex["p95"],
                target="≤ 5 ms at 100k" if size == "100000" else "",
                met=(an["p95"] <= 5.0) if size == "100000" else None,
            ),
            Row(
                f"recall@10 of ANN search vs exact ({at})",
                r["recall_at_10"],
                None,
                unit="",
                target="≥ 0.95",
                met=r["recall_at_10"] >= 0.95,
            ),
            Row(
                f"recall@10 of the graph alone vs exact cosine ({at})",
                r["graph_recall_at_10"],
                None,
                unit="",
            ),
            Row(f"ANN graph build, 1 thread ({at})", r["ann_build_s"] * 1000, None),
            Row(f"cold load, database rebuild ({at})", r["load_db_ms"], old),
            Row(f"cold load, from snapshot ({at})", r["load_snapshot_ms"], old),
            Row(f"refresh after a write ({at})", r["refresh_after_write_ms"], old),
        ]
        fig.notes.append(
            f"{at}: recall@10 min {r['recall_at_10_min']:.2f} over the questions; snapshot "
            f"{r['snapshot_bytes'] / 2**20:.0f} MiB on disk, written in "
            f"{r['snapshot_save_ms']:.0f} ms; first search after the snapshot load "
            f"{r['first_search_after_snapshot_ms']:.1f} ms."
        )
    fig.notes += [
        f"Engine only (no HTTP, no query embedding): `UserIndex.search`, limit 10, the tuned "
        f"weights (similarity {data['weights']['similarity']}, lexical "
        f"{data['weights']['lexical']}), {data['queries']} questions (the query figure's 16 and "
        "template questions), each timed on its second run. ANN is forced at every size for "
        "the comparison; the service uses it from VOXMEM_MEMORY_ANN_THRESHOLD (20,000).",
        "Recall@10 of ANN search: the share of the exact search's 10 results the ANN path "
        "returns. The graph alone: its 10 nearest against the exact 10 nearest by cosine.",
        "Cold load, database rebuild: what a process without a snapshot does (read, decrypt, "
        "tokenise every memory). From snapshot: what a restarted process does for a user with "
        "a snapshot at the current version. Refresh after a write: the scan that finds what "
        "changed (no change applied here); the floor is the full reload the old index did "
        "after every write.",
    ]
    return [fig]


# --- call -> queryable, worker throughput, peak RSS -----------------------------------------------
def _probe_calls(d: Deployment, probes: int, offset: int) -> tuple[list[float], list[float]]:
    lat, floor = [], []
    with httpx.Client(timeout=30) as c:
        for k in range(probes):
            i = offset + k
            conv = f"conv_probe_{i:05d}"
            word = f"zq{i:05d}x"
            number = f"+1555{4000000 + i:07d}"
            t0 = time.perf_counter()
            ack = d.post_call(
                c,
                conversation_id=conv,
                number=number,
                turns=six_turns(i, f"My account code word is {word} for the refund."),
                start=datetime.now(UTC),
            )
            first_q: float | None = None
            deadline = time.monotonic() + 15
            found = False
            while time.monotonic() < deadline:
                ms, body = d.memory_query(
                    c,
                    {
                        "query": f"code word {word}",
                        "caller_id": number,
                        "limit": 5,
                        "include_sources": True,
                    },
                )
                first_q = ms if first_q is None else first_q
                if any(
                    s["conversation_id"] == conv
                    for m in body["memories"]
                    for s in m.get("sources") or []
                ):
                    found = True
                    break
                time.sleep(0.02)
            if found:
                lat.append((time.perf_counter() - t0) * 1000)
            floor.append(ack + (first_q or 0.0))
            time.sleep(0.3 + (k % 5) * 0.2)  # the worker idles between calls
    return lat, floor


def _throughput(d: Deployment, workers: int, calls: int, offset: int) -> float:
    proc = d.start_workers(workers)
    try:
        time.sleep(3.0)  # model load in the worker processes
        before = sum(d.queue_counts().values())
        with httpx.Client(timeout=30) as c:
            t = time.perf_counter()
            for i in range(calls):
                j = offset + i
                d.post_call(
                    c,
                    conversation_id=f"conv_tp_{j:06d}",
                    number=f"+1555{3000000 + j:07d}",
                    turns=six_turns(j, f"My router model X{j} keeps dropping the connection."),
                    start=datetime.now(UTC),
                )
            d.wait_drained(before + calls, timeout=600)
            return calls / (time.perf_counter() - t)
    finally:
        d.stop(proc)


def fig_queryable(quick: bool) -> list[Figure]:
    calls = 20 if quick else 150
    probes = 5 if quick else 40
    cmd = f"{PY} -m bench.run_all --only queryable" + (" --quick" if quick else "")
    q = Figure(
        "queryable",
        "Call → queryable (signed webhook posted → first memory-query that returns its memory)",
        cmd,
        floor_name="ack of the webhook + one memory-query round trip (processing taking 0 s)",
    )
    w = Figure(
        "workers",
        "Worker throughput, six-turn calls end to end (webhook → stored, embedded memories)",
        cmd,
        floor_name="the memory engine alone in one process (bench.extraction_throughput)",
    )
    r = Figure(
        "rss",
        "Peak RSS (VmHWM) of the API and of one worker process",
        cmd,
        floor_name="a bare FastAPI app under uvicorn, same interpreter",
    )
    with tempfile.TemporaryDirectory(prefix="voxmem-bench-q-") as tmp:
        d = deploy(Path(tmp))
        try:
            d.start_api()
            rates = {}
            offset = 0
            for n in (1, 2, 4):
                rates[n] = _throughput(d, n, calls, offset)
                offset += calls
            bare = _bare_rss()
            variants = [
                ("default settings", {}),
                ("queue_poll_max_secs=0.2", {"VOXMEM_QUEUE_POLL_MAX_SECS": "0.2"}),
            ]
            results = []
            for v, (label, env) in enumerate(variants):
                proc = d.start_workers(1, **env)
                time.sleep(3.0)
                lat, floor = _probe_calls(d, probes, offset=v * 1000)
                results.append((label, lat, floor))
                if v == 0:
                    r.rows.append(
                        Row("worker (1 process) peak RSS", peak_rss_mb(proc.pid), bare, unit="MiB")
                    )
                d.stop(proc)
            r.rows.insert(0, Row("API peak RSS", peak_rss_mb(d.api_pid), bare, unit="MiB"))
        finally:
            d.stop_all()
    for label, lat, floor in results:
        p50, p95, _ = ms_stats(lat) if lat else (float("nan"),) * 3
        f50, f95, _ = ms_stats(floor)
        q.rows += [
            Row(f"call → queryable p50, {label}", p50, f50),
            Row(f"call → queryable p95, {label}", p95, f95, target="≤ 1000 ms", met=p95 <= 1000),
        ]
        q.notes.append(f"{label}: {len(lat)}/{probes} calls became queryable within 15 s.")
    q.notes.append(
        f"{probes} calls per row, one at a time with 0.3–1.1 s pauses (the worker idles between "
        "calls as it does between real calls, so its poll interval backs off towards "
        "queue_poll_max_secs, default 2 s), 1 worker process. Polling every 20 ms with the "
        "caller's number, limit 5, include_sources, until a memory sourced from that call comes "
        "back."
    )
    e2e = _engine_rate(quick)
    for n, rate in rates.items():
        w.rows.append(
            Row(
                f"{n} worker process{'es' if n > 1 else ''}",
                rate,
                e2e,
                unit="calls/s",
                target="≥ 20 calls/s" if n == 1 else "",
                met=(rate >= 20) if n == 1 else None,
            )
        )
    w.notes.append(
        f"{calls} six-turn calls from distinct callers posted back to back per run, timed until "
        "the queue is drained (every job completed: conversation stored, memories extracted, "
        "embedded, consolidated, linked, summary and insights). The API and workers share the "
        "machine's 2 cores with the client."
    )
    r.notes.append(
        "Measured after the throughput and call → queryable runs above (the API served "
        f"{3 * calls + probes} webhooks and the probe queries; the worker processed "
        f"{probes} calls)."
    )
    return [q, w, r]


_BARE = (
    "import uvicorn\nfrom fastapi import FastAPI\napp = FastAPI()\n"
    "@app.get('/')\ndef ok() -> dict:\n    return {}\n"
    "uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
)


def _bare_rss() -> float:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE.replace("{port}", str(port))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                for _ in range(50):
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        return peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


_ENGINE_RATE: dict[bool, float] = {}


def _engine_rate(quick: bool) -> float:
    if quick not in _ENGINE_RATE:
        data = _extraction(quick)
        _ENGINE_RATE[quick] = data["end_to_end"]
    return _ENGINE_RATE[quick]


def _extraction(quick: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.extraction_throughput", "--calls", "40" if quick else "200"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    only = re.search(r"extraction only: ([\d.]+)", out)
    e2e = re.search(r"end to end.*?: ([\d.]+) six-turn", out)
    return {
        "extraction_only": float(only.group(1)) if only else float("nan"),
        "end_to_end": float(e2e.group(1)) if e2e else float("nan"),
    }


def fig_extraction(quick: bool) -> list[Figure]:
    calls = 40 if quick else 200
    fig = Figure(
        "extraction",
        "Extraction throughput in one process (no queue, no HTTP)",
        f"{PY} -m bench.extraction_throughput --calls {calls}",
        floor_name="local extraction alone (no embedding, no store)",
    )
    data = _extraction(quick)
    _ENGINE_RATE[quick] = data["end_to_end"]
    fig.rows.append(
        Row(
            "six-turn calls/s, extract + embed + consolidate + store (SQLite)",
            data["end_to_end"],
            data["extraction_only"],
            unit="calls/s",
            target="≥ 20 calls/s",
            met=data["end_to_end"] >= 20,
        )
    )
    return [fig]


# --- LoCoMo through the real API ----------------------------------------------------------------
def _covered(sources: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for s in sources:
        conv = str(s["conversation_id"])
        if "_s" not in conv:
            continue
        n = conv.rsplit("_s", 1)[1]
        out.update(f"D{n}:{int(t) + 1}" for t in s.get("turns") or [])
    return out


def fig_locomo(quick: bool) -> list[Figure]:
    from bench.locomo_engine import parse_when

    samples = json.loads((SHARED / "eval" / "locomo_dev.json").read_text())
    if quick:
        samples = samples[:1]
    fig = Figure(
        "locomo",
        "LoCoMo dev split through the real API (evidence recall)",
        f"{PY} -m bench.run_all --only locomo" + (" --quick" if quick else ""),
        floor_name="BM25 over raw turns (eval/README.md baseline, fixed)",
    )
    numbers = {s["sample_id"]: f"+1555{7000000 + i:07d}" for i, s in enumerate(samples)}
    with tempfile.TemporaryDirectory(prefix="voxmem-bench-locomo-") as tmp:
        d = deploy(Path(tmp))
        try:
            d.start_api()
            wproc = d.start_workers(2)
            posted = 0
            t_ingest = time.perf_counter()
            with httpx.Client(timeout=60) as c:
                for s in samples:
                    conv = s["conversation"]
                    a = conv["speaker_a"]
                    n = 1
                    while f"session_{n}" in conv:
                        turns = []
                        for t in conv[f"session_{n}"]:
                            text = f"{t['speaker']}: {t['text']}"
                            if t.get("blip_caption"):
                                text += f" [shares {t['blip_caption']}]"
                            turns.append(("user" if t["speaker"] == a else "agent", text))
                        d.post_call(
                            c,
                            conversation_id=f"locomo_{s['sample_id']}_s{n}",
                            number=numbers[s["sample_id"]],
                            turns=turns,
                            start=parse_when(conv[f"session_{n}_date_time"]),
                        )
                        posted += 1
                        n += 1
                d.wait_drained(posted, timeout=1800)
                ingest_s = time.perf_counter() - t_ingest
                counts = d.queue_counts()
                r5: dict[int, list[float]] = {}
                r10: dict[int, list[float]] = {}
                lat: list[float] = []
                server_ms: list[float] = []
                returned: list[int] = []
                for s in samples:
                    for qa in s["qa"]:
                        if qa.get("category") not in (1, 2, 3, 4) or not qa.get("evidence"):
                            continue
                        ms, body = d.memory_query(
                            c,
                            {
                                "query": qa["question"],
                                "caller_id": numbers[s["sample_id"]],
                                "limit": 10,
                                "include_sources": True,
                            },
                        )
                        lat.append(ms)
                        server_ms.append(float(body["query_time_ms"]))
                        mems = body["memories"]
                        returned.append(len(mems))
                        ev = set(qa["evidence"])
                        c5 = _covered([x for m in mems[:5] for x in m.get("sources") or []])
                        c10 = _covered([x for m in mems[:10] for x in m.get("sources") or []])
                        r5.setdefault(qa["category"], []).append(len(ev & c5) / len(ev))
                        r10.setdefault(qa["category"], []).append(len(ev & c10) / len(ev))
            api_rss = peak_rss_mb(d.api_pid)
            from bench.harness import children

            kids = children(wproc.pid) or [wproc.pid]
            worker_rss = max(peak_rss_mb(p) for p in kids)
        finally:
            d.stop_all()
    names = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
    all5 = [x for v in r5.values() for x in v]
    all10 = [x for v in r10.values() for x in v]
    overall10 = statistics.mean(all10)
    fig.rows += [
        Row("recall@5, overall", statistics.mean(all5), 0.502, unit=""),
        Row(
            "recall@10, overall",
            overall10,
            0.568,
            unit="",
            target="≥ 0.65",
            met=overall10 >= 0.65,
        ),
    ]
    for cat in sorted(r10):
        fig.rows += [
            Row(
                f"recall@5, cat {cat} {names[cat]} (n={len(r5[cat])})",
                statistics.mean(r5[cat]),
                None,
                unit="",
            ),
            Row(f"recall@10, cat {cat} {names[cat]}", statistics.mean(r10[cat]), None, unit=""),
        ]
    p50, p95, _ = ms_stats(lat)
    _, s95, _ = ms_stats(server_ms)
    fig.rows += [
        Row("query latency p50, client-side", p50, None),
        Row("query latency p95, client-side", p95, None),
        Row("query_time_ms p95 (server-reported, whole ms)", s95, None),
    ]
    fig.notes += [
        f"{len(samples)} samples, {posted} sessions posted as signed post_call_transcription "
        f"webhooks (protocol of ../shared/eval/README.md), drained by 2 worker processes in "
        f"{ingest_s:.0f} s (queue: {counts}); {len(all10)} questions of categories 1–4 through "
        "POST /tools/memory-query (caller_id, limit 10, include_sources).",
        "Floor column: the README's BM25-on-raw-turns baseline (0.502 / 0.568), not re-measured.",
        f"Memories returned per question (limit 10): mean {statistics.mean(returned):.2f}, "
        f"min {min(returned)} (fewer than 10 lowers recall@10: a response-size cut once did).",
        f"Peak RSS after this run: API {api_rss:.0f} MiB, worker process {worker_rss:.0f} MiB.",
    ]
    fig.raw = {"api_rss_mb": api_rss, "worker_rss_mb": worker_rss, "ingest_s": ingest_s}
    return [fig]


# --- sister systems (bench_insights, run as a program) ------------------------------------------
def fig_insights(quick: bool) -> list[Figure]:
    calls, users, repeat = (1000, 50, 10) if quick else (10_000, 500, 50)
    cmd = f"{PY} -m bench.bench_insights --calls {calls} --users {users} --repeat {repeat}"
    fig = Figure(
        "insights",
        "Sister-system read paths (session memory, profiles, analytics)",
        cmd,
        floor_name="",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_insights",
            "--calls",
            str(calls),
            "--users",
            str(users),
            "--repeat",
            str(repeat),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        fig.notes.append(f"failed: {out.stderr.strip()[-300:]}")
        return [fig]
    targets = {"session": 50.0, "analytics": 100.0}
    for line in out.stdout.splitlines():
        m = re.match(r"(.+?)\s+([\d.]+)\s+([\d.]+)$", line)
        if not m or m.group(1).startswith("read path"):
            continue
        name = m.group(1).strip()
        target = next((v for k, v in targets.items() if name.startswith(k)), None)
        p95 = float(m.group(3))
        fig.rows.append(
            Row(
                f"{name} p95 (median {float(m.group(2)):.2f})",
                p95,
                None,
                target=f"< {target:.0f} ms" if target else "",
                met=(p95 < target) if target else None,
            )
        )
    fig.notes.append(out.stdout.splitlines()[0] if out.stdout else "")
    return [fig]


def fig_endpoints(quick: bool) -> list[Figure]:
    memories, requests = (2000, 50) if quick else (10_000, 300)
    cmd = f"{PY} -m bench.bench_endpoints --memories {memories} --requests {requests}"
    fig = Figure(
        "endpoints",
        "Agent endpoints in process (bench_endpoints: TestClient, random-vector memories)",
        cmd,
        floor_name="GET /health/live through the same TestClient and middleware",
    )
    out = subprocess.run(
        [
            *(sys.executable, "-m", "bench.bench_endpoints", "--memories", str(memories)),
            *("--requests", str(requests)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        fig.notes.append(f"failed: {out.stderr.strip()[-300:]}")
        return [fig]
    table = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            table[cells[0]] = (float(cells[2]), float(cells[3]))
        elif line.startswith("cold:"):
            fig.notes.append(line)
    floor = next((v for k, v in table.items() if k.startswith("GET /health/live")), None)
    for name, (p50, p95) in table.items():
        if name.startswith("GET /health/live"):
            continue
        fig.rows += [
            Row(f"{name}: p50", p50, floor[0] if floor else None),
            Row(f"{name}: p95", p95, floor[1] if floor else None),
        ]
    return [fig]


FIGURES: dict[str, Callable[[bool], list[Figure]]] = {
    "intake": fig_intake,
    "init": fig_init,
    "extraction": fig_extraction,
    "queryable": fig_queryable,
    "query": fig_query,
    "ann": fig_ann,
    "locomo": fig_locomo,
    "insights": fig_insights,
    "endpoints": fig_endpoints,
}
ORDER = [
    "intake",
    "init",
    "query",
    "ann",
    "endpoints",
    "queryable",
    "workers",
    "extraction",
    "rss",
    "locomo",
    "insights",
    "soak",
    "locust",
]


# --- document ----------------------------------------------------------------------------------
def fmt(v: float | None, unit: str) -> str:
    if v is None or v != v:
        return "–"
    if unit == "":
        return f"{v:.3f}"
    if abs(v) >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.2f} {unit}".strip()


def render(results: dict[str, Any], mach: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.run_all`); do not edit by hand. "
        "Re-measure one figure with `--only <key>` (keys: " + ", ".join(FIGURES) + "), a quick "
        "pass with `--quick`. Every figure is measured beside its floor in the same run; the "
        "ratio is value / floor. Each section records the date, commit and load average of the "
        "run that produced it.",
        "",
        f"Machine: {mach['cores']} cores ({mach['cpu']}), {mach['memory']} RAM, Python "
        f"{mach['python']}, SQLite {mach['sqlite']}, {mach['os']}. **Shared development VM**: "
        "other engineers' test suites ran during these measurements (see each section's load "
        "average), so latencies are inflated against an idle machine.",
        "",
        "## Summary against targets",
        "",
        "| figure | value | target | met |",
        "|---|---:|---|---|",
    ]
    for key in ORDER:
        fig = results.get(key)
        if not fig:
            continue
        for row in fig["rows"]:
            if row.get("target"):
                met = {True: "yes", False: "**no**", None: "–"}[row.get("met")]
                lines.append(
                    f"| {fig['title'].split(' (')[0]}: {row['label']} | "
                    f"{fmt(row['value'], row['unit'])} | {row['target']} | {met} |"
                )
    lines.append("")
    for key in ORDER:
        fig = results.get(key)
        if not fig:
            continue
        lines += [f"## {fig['title']}", "", f"Command: `{fig['command']}`", ""]
        lines.append(
            f"Measured {fig['measured']} at commit `{fig['commit']}`, load average "
            f"{fig['load']}{' (quick mode)' if fig.get('quick') else ''}."
        )
        lines.append("")
        if fig["rows"]:
            has_floor = any(r.get("floor") is not None for r in fig["rows"])
            if has_floor:
                lines += [
                    f"Floor: {fig['floor_name']}.",
                    "",
                    "| figure | value | floor | ratio | target |",
                    "|---|---:|---:|---:|---|",
                ]
            else:
                lines += ["| figure | value | target |", "|---|---:|---|"]
            for r in fig["rows"]:
                target = r.get("target") or ""
                if target:
                    target += " ✓" if r.get("met") else (" ✗" if r.get("met") is False else "")
                if has_floor:
                    fl = r.get("floor")
                    ratio = (
                        f"{r['value'] / fl:.2f}×"
                        if fl not in (None, 0) and r["value"] == r["value"]
                        else "–"
                    )
                    lines.append(
                        f"| {r['label']} | {fmt(r['value'], r['unit'])} | {fmt(fl, r['unit'])} "
                        f"| {ratio} | {target} |"
                    )
                else:
                    lines.append(f"| {r['label']} | {fmt(r['value'], r['unit'])} | {target} |")
            lines.append("")
        for note in fig.get("notes") or []:
            if note:
                lines += [note, ""]
    extra = REPO / "bench" / "notes.md"
    if extra.exists():
        lines += [extra.read_text().rstrip(), ""]
    return "\n".join(lines)


def save_figure(results_path: Path, fig: Figure) -> dict[str, Any]:
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[fig.key] = asdict(fig)
    results_path.write_text(json.dumps(results, indent=1, default=str))
    return results


def stamp(fig: Figure, quick: bool) -> Figure:
    fig.measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.commit = git_commit()
    fig.load = load_avg()
    fig.quick = quick
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller N (minutes, not tens of them)")
    ap.add_argument("--only", default="", help="comma-separated keys: " + ",".join(FIGURES))
    ap.add_argument("--output", type=Path, default=DOC)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument(
        "--render", action="store_true", help="measure nothing; rewrite the document from results"
    )
    args = ap.parse_args(argv)
    keys = [] if args.render else [k for k in args.only.split(",") if k] or list(FIGURES)
    unknown = [k for k in keys if k not in FIGURES]
    if unknown:
        ap.error(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    failed = []
    for key in keys:
        started = time.perf_counter()
        print(f"== {key} ...", file=sys.stderr, flush=True)
        try:
            figs = FIGURES[key](args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(key)
            continue
        for fig in figs:
            save_figure(args.results, stamp(fig, args.quick))
        print(f"== {key} done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, machine()))
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
