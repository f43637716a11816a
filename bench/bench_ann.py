"""The per-user index at 1k / 10k / 100k memories: exact vs ANN search, recall of ANN against
exact, and what a cold first query costs (database rebuild, snapshot, before this index).

    .venv/bin/python -m bench.bench_ann [--root data/bench-scale/full] [--sizes 1000,10000,100000]
        [--queries 200] [--before-rev REV] [--json]

Runs on the scale benchmark's database (``bench/load_memories.py``; ``run_all --only query``
creates it), engine only (no HTTP): for each probe user it

* loads the index from the database with snapshots off (the rebuild a process without a
  snapshot does) and times it;
* builds the user's ANN graph (timed) even below the production threshold, so exact and ANN
  can be compared at every size;
* embeds ``--queries`` realistic queries with the local MiniLM (not timed), then times
  ``UserIndex.search`` (limit 10, the tuned weights from Settings) on the exact path and on the
  ANN path, and reports recall@10 of the ANN path's results against the exact ones, and of the
  graph alone (its 10 nearest against the exact 10 nearest by cosine);
* writes the user's snapshot into a scratch directory and times the cold load from it (what a
  restarted process does), and the refresh after a write (the narrow scan of the user's rows);
* with ``--before-rev``, times the cold load of the index as that git revision built it (a
  temporary worktree, same virtualenv), for the before/after comparison.

Prints one JSON object (``--json``) or a table.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.harness import REPO, pct  # noqa: E402
from bench.harness import SCALE_QUERIES as QUERIES  # noqa: E402

BEFORE_SCRIPT = """
import json, os, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
from db import crypto
from db.engine import open_database
from db.settings import Settings
from memory.loader import get_index
data = Path(sys.argv[1])
s = Settings(_env_file=None, database_url=f"sqlite:///{data / 'voxmem.db'}", data_dir=data,
             log_level="ERROR")
crypto.configure(crypto.load_keyring(s))
db = open_database(s)
out = {}
for uid in sys.argv[3:]:
    with db.read() as session:
        t = time.perf_counter()
        index = get_index(session, uid, sys.argv[2])
        out[uid] = [(time.perf_counter() - t) * 1000, len(index)]
print(json.dumps(out))
"""


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p95": pct(values, 0.95),
        "mean": statistics.fmean(values),
    }


def query_texts(n: int) -> list[str]:
    from bench.load_memories import pool_texts

    # The benchmark's own questions, then memory-like statements reworded as questions (the
    # loader's templates, another seed than the stored pool).
    extra = [f"does the caller mention {t.lower().rstrip('.')}" for t in pool_texts(n, seed=97)]
    return (QUERIES + extra)[:n]


def before_loads(rev: str, data_dir: Path, model: str, users: list[str]) -> dict[str, Any]:
    """Cold ``get_index`` of ``users`` as revision ``rev`` built it (temporary worktree)."""
    tree = Path(tempfile.mkdtemp(prefix="voxmem-before-"))
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), rev],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            [sys.executable, "-c", BEFORE_SCRIPT, str(data_dir), model, *users],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        return {"rev": rev, "loads": json.loads(done.stdout.strip().splitlines()[-1])}
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True
        )
        shutil.rmtree(tree, ignore_errors=True)


def measure(root: Path, sizes: list[int], n_queries: int, before_rev: str | None) -> dict[str, Any]:
    from db import crypto
    from db.engine import open_database
    from db.settings import Settings
    from memory import loader
    from memory.embedders import get_embedder
    from memory.engine import weights_from
    from memory.index import ANN_CONFIG, AnnSlot

    data = root / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    probes = {int(k): v for k, v in manifest["probes"].items() if int(k) in sizes}
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{data / 'voxmem.db'}",
        data_dir=data,
        log_level="ERROR",
    )
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    embedder = get_embedder(settings)
    model = embedder.name
    weights = weights_from(settings)
    texts = query_texts(n_queries)
    vectors = np.vstack([embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    scratch = Path(tempfile.mkdtemp(prefix="voxmem-bench-ann-"))
    loader.configure(background=False, persist=False)
    out: dict[str, Any] = {
        "model": model,
        "queries": len(texts),
        "ann": {"dtype": ANN_CONFIG.dtype, "min_pool": ANN_CONFIG.min_pool},
        "weights": {"similarity": weights.similarity, "lexical": weights.lexical},
        "sizes": {},
    }
    try:
        for size, uid in sorted(probes.items()):
            row: dict[str, Any] = {"user": uid}
            loader.drop_all()
            with db.read() as session:
                t = time.perf_counter()
                index = loader.load_index(session, uid, model, 1)
                row["load_db_ms"] = (time.perf_counter() - t) * 1000
                version = loader.user_version(session, uid) or 0
            index.version = version
            row["memories"] = len(index)
            slot = AnnSlot()
            index.ann_slot = slot
            slot.follow(index, None)
            t = time.perf_counter()
            slot.build(ANN_CONFIG.dtype, threads=1)
            row["ann_build_s"] = time.perf_counter() - t
            ann = slot.ann
            assert ann is not None
            threshold = ANN_CONFIG.threshold
            exact_ms, ann_ms, recall, graph_recall, pool_recall = [], [], [], [], []
            now = time.time()
            for q, text in zip(vectors, texts, strict=True):
                for _ in range(2):  # the second run of each is timed (warm caches)
                    t0 = time.perf_counter()
                    exact = index.search(
                        q, text, now_epoch=now, limit=10, weights=weights, exact=True
                    )
                    t1 = time.perf_counter()
                    ANN_CONFIG.threshold = 1  # force the ANN path at every size
                    try:
                        approx = index.search(q, text, now_epoch=now, limit=10, weights=weights)
                    finally:
                        ANN_CONFIG.threshold = threshold
                    t2 = time.perf_counter()
                exact_ms.append((t1 - t0) * 1000)
                ann_ms.append((t2 - t1) * 1000)
                want = {h.memory_id for h in exact}
                recall.append(len(want & {h.memory_id for h in approx}) / max(1, len(want)))
                sims = index.vectors @ q
                truth = set(index.ids[np.argsort(-sims)[:10]].tolist())
                graph_recall.append(len(truth & set(ann.search(q, 10).tolist())) / 10)
                pool = max(ANN_CONFIG.min_pool, ANN_CONFIG.per_result * 10)
                pool_recall.append(len(truth & set(ann.search(q, pool).tolist())) / 10)
            row["exact_ms"] = _stats(exact_ms)
            row["ann_ms"] = _stats(ann_ms)
            row["recall_at_10"] = statistics.fmean(recall)
            row["recall_at_10_min"] = min(recall)
            row["graph_recall_at_10"] = statistics.fmean(graph_recall)
            row["pool_recall_at_10"] = statistics.fmean(pool_recall)
            # Cold start from a snapshot, and the refresh a write causes.
            with db.read() as session:
                key = loader.cache_key(session, uid)
            from memory import snapshot

            t = time.perf_counter()
            snapshot.save(scratch, key, index, crypto.keyring(), ann)
            row["snapshot_save_ms"] = (time.perf_counter() - t) * 1000
            row["snapshot_bytes"] = sum(
                p.stat().st_size for p in scratch.glob(f"{snapshot.name_for(key)}.*")
            )
            loader.drop_all()
            # As in the service: background jobs (the vector copy that makes room for the next
            # write's rows runs there, not in the first query).
            loader.configure(
                persist=True, persist_dir=scratch, persist_min_memories=1, background=True
            )
            try:
                with db.read() as session:
                    t = time.perf_counter()
                    cold = loader.get_index(session, uid, model, ann=True)
                    row["load_snapshot_ms"] = (time.perf_counter() - t) * 1000
                    t = time.perf_counter()
                    cold.search(vectors[0], texts[0], now_epoch=now, limit=10, weights=weights)
                    row["first_search_after_snapshot_ms"] = (time.perf_counter() - t) * 1000
                    loader.wait_background()
                    t = time.perf_counter()
                    refreshed = loader.refresh(session, cold, uid, model, cold.version + 1)
                    row["refresh_after_write_ms"] = (time.perf_counter() - t) * 1000
                    assert refreshed is not None
                    assert len(refreshed) == len(cold)
            finally:
                loader.wait_background()
                loader.configure(persist=False, background=False)
            print(f"{size}: {json.dumps(row)}", file=sys.stderr, flush=True)
            out["sizes"][str(size)] = row
            del index, cold, refreshed, slot, ann
            loader.drop_all()
    finally:
        db.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    if before_rev:
        users = [probes[s] for s in sorted(probes)]
        got = before_loads(before_rev, data, model, users)
        out["before"] = {
            "rev": got["rev"],
            "load_ms": {str(s): got["loads"][probes[s]][0] for s in sorted(probes)},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO / "data" / "bench-scale" / "full")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--before-rev", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(
        args.root, [int(s) for s in args.sizes.split(",") if s], args.queries, args.before_rev
    )
    if args.json:
        print(json.dumps(result))
        return
    for size, row in result["sizes"].items():
        print(
            f"{size:>7}: exact p50/p95 {row['exact_ms']['p50']:.2f}/{row['exact_ms']['p95']:.2f}"
            f" ms, ANN {row['ann_ms']['p50']:.2f}/{row['ann_ms']['p95']:.2f} ms, recall@10 "
            f"{row['recall_at_10']:.4f} (graph {row['graph_recall_at_10']:.4f}), load db "
            f"{row['load_db_ms']:.0f} ms, snapshot {row['load_snapshot_ms']:.0f} ms"
        )
    if "before" in result:
        print(json.dumps(result["before"]))


if __name__ == "__main__":
    main()
