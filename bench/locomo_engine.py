"""LoCoMo dev split straight through the memory engine (no HTTP): extraction -> store ->
retrieval, for developing and tuning the engine. The published figures come from the API
harness (every session as a signed webhook, every question through /tools/memory-query);
this one isolates the engine and lets a weight grid run in seconds.

    .venv/bin/python -m bench.locomo_engine [--grid] [--limit-samples N] [--weights W ...]

where W = sim,lex,sal,rec,link.

Dev split, local extractor + MiniLM, 128 sessions -> 3,948 memories (this machine, loaded):
  seed 0.6/0/0.2/0.1/0.1 (sim/lex/sal/rec/link): recall@5 0.279, recall@10 0.385
  vectors only: 0.493 / 0.593;  BM25 only over memories: 0.525 / 0.611
  0.5/0.5/0/0/0 with expansion: 0.579 / 0.656 (no expansion 0.582 / 0.661) -- recommended

Attribution follows ../shared/eval/README.md: a memory covers the turns in its ``sources``
(session from the conversation id, turn i -> D<n>:<i+1>).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db import crypto
from db.bootstrap import bootstrap
from db.engine import open_database
from db.settings import Settings
from db.tenancy import require_tenant
from memory.embedders import LocalEmbedder
from memory.extractors.local import LocalExtractor
from memory.identity import create_guest
from memory.retrieval import MemoryRetriever
from memory.scoring import Weights
from memory.store import MemoryWriter
from memory.types import CallForExtraction, Turn

DATA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "locomo_dev.json"
_DATE = re.compile(r"(\d{1,2}):(\d{2})\s*(am|pm) on (\d{1,2}) (\w+),? (\d{4})", re.I)


def parse_when(raw: str) -> datetime:
    m = _DATE.search(raw)
    if not m:
        return datetime(2023, 1, 1, tzinfo=UTC)
    hour, minute, ampm, day, month, year = m.groups()
    h = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    return datetime.strptime(f"{day} {month} {year} {h}:{minute}", "%d %B %Y %H:%M").replace(
        tzinfo=UTC
    )


def sessions(sample: dict[str, Any]) -> list[tuple[int, CallForExtraction]]:
    conv = sample["conversation"]
    a = conv["speaker_a"]
    out = []
    n = 1
    while f"session_{n}" in conv:
        turns = []
        for i, t in enumerate(conv[f"session_{n}"]):
            text = f"{t['speaker']}: {t['text']}"
            if t.get("blip_caption"):
                text += f" [shares {t['blip_caption']}]"
            turns.append(Turn(i, "user" if t["speaker"] == a else "agent", text))
        call = CallForExtraction(
            conversation_id=f"locomo_{sample['sample_id']}_s{n}",
            start_time=parse_when(conv[f"session_{n}_date_time"]),
            turns=tuple(turns),
        )
        out.append((n, call))
        n += 1
    return out


def covered(sources: list[dict[str, Any]]) -> set[str]:
    out = set()
    for s in sources:
        n = str(s["conversation_id"]).rsplit("_s", 1)[1]
        out.update(f"D{n}:{int(t) + 1}" for t in s["turns"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--limit-samples", type=int, default=0)
    ap.add_argument("--no-expand", action="store_true")
    ap.add_argument(
        "--weights",
        action="append",
        default=[],
        help="sim,lex,sal,rec,link (repeatable); evaluated after one ingestion",
    )
    args = ap.parse_args()
    samples = json.loads(DATA.read_text())
    if args.limit_samples:
        samples = samples[: args.limit_samples]
    tmp = Path(tempfile.mkdtemp(prefix="locomo_engine_"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite:///{tmp / 'v.db'}", data_dir=tmp, environment="test"
    )
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    emb = LocalEmbedder()
    extractor, writer = LocalExtractor(), MemoryWriter(emb)
    users: dict[str, str] = {}
    started = time.perf_counter()
    n_calls = n_mem = 0
    for sample in samples:
        with db.write() as s:
            users[sample["sample_id"]] = create_guest(s, require_tenant(s, "default").id).user_id
        for _, call in sessions(sample):
            result = extractor.extract(call)
            with db.write() as s:
                r = writer.write_call(
                    s,
                    user_id=users[sample["sample_id"]],
                    conversation_id=call.conversation_id,
                    extraction=result,
                    now=call.start_time,
                )
            n_calls += 1
            n_mem += len(r.inserted)
    ingest = time.perf_counter() - started
    print(
        f"ingested {n_calls} sessions -> {n_mem} memories in {ingest:.1f}s "
        f"({n_calls / ingest:.1f} sessions/s incl. embedding and store)"
    )

    questions = [
        (sample["sample_id"], q)
        for sample in samples
        for q in sample["qa"]
        if q.get("category") in (1, 2, 3, 4) and q.get("evidence")
    ]
    now = datetime(2024, 1, 1, tzinfo=UTC)

    # Embed each question once; the grid only re-scores.
    def run(weights: Weights, expand: bool) -> dict[str, Any]:
        retriever = MemoryRetriever(emb, weights=weights, expand=expand)
        r5: dict[int, list[float]] = {}
        r10: dict[int, list[float]] = {}
        lat = []
        with db.read() as s:
            for sid, q in questions:
                t = time.perf_counter()
                hits = retriever.search(s, users[sid], q["question"], limit=10, now=now)
                lat.append((time.perf_counter() - t) * 1000)
                ev = set(q["evidence"])
                cov5 = covered([src for h in hits[:5] for src in h.sources])
                cov10 = covered([src for h in hits[:10] for src in h.sources])
                r5.setdefault(q["category"], []).append(len(ev & cov5) / len(ev))
                r10.setdefault(q["category"], []).append(len(ev & cov10) / len(ev))
        all5 = [x for v in r5.values() for x in v]
        all10 = [x for v in r10.values() for x in v]
        lat.sort()
        return {
            "recall@5": round(statistics.mean(all5), 4),
            "recall@10": round(statistics.mean(all10), 4),
            "by_category@10": {k: round(statistics.mean(v), 4) for k, v in sorted(r10.items())},
            "by_category@5": {k: round(statistics.mean(v), 4) for k, v in sorted(r5.items())},
            "p50_ms": round(lat[len(lat) // 2], 2),
            "p95_ms": round(lat[int(len(lat) * 0.95)], 2),
        }

    if args.weights:
        for spec in args.weights:
            sim, lex, sal, rec, link = (float(x) for x in spec.split(","))
            w = Weights(similarity=sim, salience=sal, recency=rec, link=link, lexical=lex)
            for expand in (True, False):
                res = run(w, expand)
                print(json.dumps({"weights": spec, "expand": expand, **res}), flush=True)
    elif args.grid:
        best = None
        grid = [
            (1.0, 0.0, 0.0, 0.0, 0.0),
            (0.0, 1.0, 0.0, 0.0, 0.0),
            (0.6, 0.0, 0.2, 0.1, 0.1),
            (0.6, 0.0, 0.0, 0.0, 0.0),
            *list(itertools.product((0.6, 0.4), (0.2, 0.4, 0.6), (0.2, 0.05), (0.1, 0.0), (0.1,))),
        ]
        for sim, lex, sal, rec, link in [(g[0], g[1], g[2], g[3], g[4]) for g in grid]:
            w = Weights(similarity=sim, salience=sal, recency=rec, link=link, lexical=lex)
            res = run(w, not args.no_expand)
            print(
                json.dumps({"sim/lex/sal/rec/link": [sim, lex, sal, rec, link], **res}), flush=True
            )
            if best is None or res["recall@10"] > best[1]["recall@10"]:
                best = (w, res)
        print("BEST", best)
    else:
        print(json.dumps(run(Weights(), not args.no_expand)))


if __name__ == "__main__":
    main()
