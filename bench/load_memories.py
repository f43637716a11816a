"""Bulk loader for the scale benchmarks: realistic memories for many users, written straight into
a migrated voxmem database through SQLAlchemy Core (not through HTTP or the worker).

    .venv/bin/python -m bench.load_memories [--root data/bench-scale] [--total 1000000]
        [--users 10000] [--sizes 1000,10000,100000] [--pool 3000]

* Content: short third-person memories from ~30 templates with random slot fills (names,
  products, places, dates, amounts), plus a per-memory detail (ticket number or date), so BM25
  sees a realistic vocabulary. Stored through the real ``EncryptedText`` column (the deployment's
  keyring, Fernet) and the real keyed ``content_hash``.
* Embeddings: the real local embedder (MiniLM int8) embeds a pool of ``--pool`` distinct template
  texts once; each memory's vector is its pool text's vector plus Gaussian noise (cosine ~0.95 to
  the pool vector), renormalised, stored as float32 bytes with the embedder's model name. This
  keeps a 1M load to minutes (embedding 1M texts would take hours on 2 cores) while the vectors
  keep the clustered structure of real sentence embeddings.
* Users: one "probe" user per size in ``--sizes`` (the benchmark queries these), then filler
  users (100 memories each on average) until the database holds ``--total`` memories. Re-running
  with a larger ``--total`` adds filler to the existing database (the query figure loads in
  stages: 11k total, then 1M).
* Load-time only: the loader's own connection runs with ``synchronous=OFF`` for speed; the
  service that later reads the database uses its normal settings.

A manifest (``data/manifest.json`` under the root) records what was loaded; the probe user ids are
in it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import create_engine, event, func, insert, select
from sqlalchemy.engine import Engine

from db import crypto
from db.models import DEFAULT_TENANT, Memory, MemoryEmbedding, Tenant, User
from db.settings import Settings
from memory.embedders import get_embedder
from memory.store import content_hash

REPO = Path(__file__).resolve().parent.parent
SECTORS = ("semantic", "episodic", "procedural", "emotional", "reflective")

NAMES = (
    "Anna Ben Carla Dev Elena Farid Grace Hiro Ines Jonas Kemi Liam Maya Noor Omar Priya".split()
)
RELS = "daughter son wife husband mother father brother sister partner colleague manager".split()
FOODS = "peanuts shellfish gluten dairy eggs sesame soy strawberries".split()
CHANNELS = ["email", "text message", "a phone call", "WhatsApp", "the customer portal"]
DAYPARTS = ["morning", "afternoon", "evening", "lunch break"]
CRMS = "Salesforce HubSpot Zoho Pipedrive Dynamics Freshsales".split()
TEAMS = "sales support finance marketing logistics engineering".split()
DEVICES = ["router", "printer", "laptop", "thermostat", "phone", "smart speaker", "modem"]
DOCS = ["pricing PDF", "contract draft", "troubleshooting guide", "invoice copy", "refund form"]
DAYS = "Monday Tuesday Wednesday Thursday Friday".split()
CITIES = "Lisbon Denver Osaka Nairobi Toronto Berlin Austin Seoul Dublin Lima".split()
MONTHS = "January February March April May June July August September October".split()
PRODUCTS = ["Pro plan", "family plan", "starter bundle", "premium support", "cloud backup"]
ITEMS = ["standing desk", "coffee grinder", "running shoes", "monitor", "bike helmet", "sofa"]
ISSUES = ["double charge", "late delivery", "login failure", "billing error", "dropped calls"]
HOBBIES = ["violin", "football", "chess", "swimming", "painting", "piano", "climbing"]
MOODS = ["frustrated", "relieved", "anxious", "delighted", "impatient", "grateful"]
TEMPLATES = [
    "The caller's {rel} {name} is allergic to {food}.",
    "The caller prefers to be contacted by {channel} in the {daypart}.",
    "The caller's company uses {crm} for its {team} team.",
    "The caller's {device} stopped working after the last update.",
    "The agent promised to send the {doc} by {day}.",
    "The caller is planning a trip to {city} in {month}.",
    "The caller was {mood} about the {issue} on the {product}.",
    "The caller's order of a {item} was delayed and they want a new delivery date.",
    "The caller's {rel} {name} takes {hobby} lessons on {day}s.",
    "The caller asked for a refund of ${amount} for the {product}.",
    "The caller wants to migrate from {crm} to another CRM in {month}.",
    "The caller moved to {city} and needs the billing address updated.",
    "The caller's {rel} {name} handles the {product} account.",
    "The caller reported a {issue} twice this {month}.",
    "The caller wants a callback on {day} {daypart} about the {doc}.",
    "The caller is usually in meetings in the {daypart} and prefers {channel}.",
    "The caller felt {mood} after the agent fixed the {device}.",
    "The caller bought a {item} for their {rel} {name}.",
    "The caller's {team} team of {amount} people is evaluating the {product}.",
    "The caller prefers short answers and no upselling of the {product}.",
    "The agent escalated the {issue} to the {team} team on {day}.",
    "The caller is vegetarian and avoids {food}.",
    "The caller's {rel} {name} lives in {city}.",
    "The caller plays {hobby} every {day} {daypart}.",
    "The caller wants the {doc} sent to their {rel} {name} as well.",
    "The caller usually calls about the {device} when travelling to {city}.",
    "The caller was promised a discount of ${amount} on the {product} in {month}.",
    "The caller keeps a {item} at the office in {city}.",
    "The caller tends to call back when the {issue} is not fixed within a day.",
    "The caller asked the agent to remember that {name} is their {rel}.",
]


def pool_texts(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(n * 50):
        if len(out) >= n:
            break
        text = rng.choice(TEMPLATES).format(
            rel=rng.choice(RELS),
            name=rng.choice(NAMES),
            food=rng.choice(FOODS),
            channel=rng.choice(CHANNELS),
            daypart=rng.choice(DAYPARTS),
            crm=rng.choice(CRMS),
            team=rng.choice(TEAMS),
            device=rng.choice(DEVICES),
            doc=rng.choice(DOCS),
            day=rng.choice(DAYS),
            city=rng.choice(CITIES),
            month=rng.choice(MONTHS),
            mood=rng.choice(MOODS),
            issue=rng.choice(ISSUES),
            product=rng.choice(PRODUCTS),
            item=rng.choice(ITEMS),
            hobby=rng.choice(HOBBIES),
            amount=rng.choice([12, 25, 40, 60, 85, 120, 250, 400]),
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


@dataclass
class Loader:
    engine: Engine
    tenant_id: int
    pool: list[str]
    vectors: npt.NDArray[np.float32]
    model: str
    rng: np.random.Generator
    next_memory_id: int
    next_embedding_id: int
    noise: float = 0.3

    def user_rows(
        self, user_ids: list[str], counts: list[int], now: datetime
    ) -> list[dict[str, Any]]:
        return [
            {
                "user_id": uid,
                "tenant_id": self.tenant_id,
                "external_id": None,
                "name": NAMES[i % len(NAMES)],
                "summary": None,
                "total_memories": n,
                "last_interaction": now,
                "metadata": None,
                "tier": "trial",
                "is_guest": True,
                "memory_version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for i, (uid, n) in enumerate(zip(user_ids, counts, strict=True))
        ]

    def memories_for(
        self, assignments: list[tuple[str, int]], now: datetime
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows for ``count`` memories of each (user id, count)."""
        n = sum(c for _, c in assignments)
        picks = self.rng.integers(0, len(self.pool), size=n)
        dim = self.vectors.shape[1]
        vecs = self.vectors[picks] + self.rng.standard_normal((n, dim)).astype(np.float32) * (
            self.noise / np.sqrt(dim)
        )
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs.astype("<f4")
        sal = self.rng.uniform(0.3, 0.95, size=n)
        ages = self.rng.integers(0, 400 * 24, size=n)
        sectors = self.rng.integers(0, 4, size=n)
        mems: list[dict[str, Any]] = []
        embs: list[dict[str, Any]] = []
        j = 0
        for uid, count in assignments:
            for k in range(count):
                mid = self.next_memory_id
                self.next_memory_id += 1
                base = self.pool[int(picks[j])]
                detail = f" (ticket {100000 + (mid * 7919) % 900000})" if k % 2 else ""
                text = base + detail
                when = now - timedelta(hours=int(ages[j]))
                conv = f"conv_{uid[-8:]}_{k // 6:05d}"
                sector = SECTORS[int(sectors[j])]
                mems.append(
                    {
                        "id": mid,
                        "user_id": uid,
                        "content": text,
                        "content_hash": content_hash(text),
                        "sector_type": sector,
                        "salience": float(sal[j]),
                        "recency": when,
                        "decay_rate": 0.01,
                        "state": "active",
                        "source_conversation": conv,
                        "sources": [{"conversation_id": conv, "turns": [k % 6]}],
                        "metadata": None,
                        "valid_from": when,
                        "valid_to": None,
                        "superseded_by": None,
                        "reinforcement_count": 0,
                        "last_accessed_at": None,
                        "extractor": "local",
                        "created_at": when,
                        "updated_at": when,
                    }
                )
                embs.append(
                    {
                        "id": self.next_embedding_id,
                        "memory_id": mid,
                        "sector": sector,
                        "embedding": vecs[j].tobytes(),
                        "embedding_model": self.model,
                        "dimension": dim,
                        "created_at": when,
                    }
                )
                self.next_embedding_id += 1
                j += 1
        return mems, embs

    def load(self, assignments: list[tuple[str, int]], batch: int = 20_000) -> None:
        """Insert users and their memories; ~``batch`` memories per executemany, one
        transaction per 100k memories."""
        now = datetime.now(UTC)
        users = [uid for uid, _ in assignments]
        with self.engine.begin() as conn:
            for i in range(0, len(users), 5000):
                chunk = assignments[i : i + 5000]
                conn.execute(
                    insert(User.__table__),
                    self.user_rows([u for u, _ in chunk], [c for _, c in chunk], now),
                )
        # Split into groups of about `batch` memories (a big user is split across groups).
        groups: list[list[tuple[str, int]]] = [[]]
        size = 0
        for uid, count in assignments:
            left = count
            while left:
                take = min(left, batch - size)
                groups[-1].append((uid, take))
                size += take
                left -= take
                if size >= batch:
                    groups.append([])
                    size = 0
        per_tx = max(1, 100_000 // batch)
        for g in range(0, len(groups), per_tx):
            with self.engine.begin() as conn:
                for group in groups[g : g + per_tx]:
                    if not group:
                        continue
                    mems, embs = self.memories_for(group, now)
                    conn.execute(insert(Memory.__table__), mems)
                    conn.execute(insert(MemoryEmbedding.__table__), embs)


def settings_for(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{data_dir / 'voxmem.db'}",
        data_dir=data_dir,
        environment="test",
        log_level="WARNING",
    )


def ensure_deployment(root: Path) -> Path:
    """``voxmem migrate`` into ``root``/data (idempotent: an existing database is brought to the
    current schema head, as a deploy would); returns the data dir."""
    from bench.harness import deploy

    root.mkdir(parents=True, exist_ok=True)
    deploy(root)
    return root / "data"


def load(
    root: Path,
    *,
    total: int,
    users: int,
    sizes: list[int],
    pool: int,
    seed: int = 5,
    log: bool = True,
) -> dict[str, Any]:
    """Bring the database under ``root`` up to ``total`` memories; returns the manifest."""
    previous = root / "data" / "manifest.json"
    if previous.exists():
        model = json.loads(previous.read_text()).get("model")
        if model and model != get_embedder(settings_for(root / "data")).name:
            # Vectors of another model are never searched (nor mixed): start over.
            shutil.rmtree(root)
    data_dir = ensure_deployment(root)
    manifest_path = data_dir / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text())
        if manifest_path.exists()
        else {"probes": {}, "filler_users": 0, "total": 0, "load_seconds": []}
    )
    settings = settings_for(data_dir)
    crypto.configure(crypto.load_keyring(settings))
    engine = create_engine(settings.database_url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("PRAGMA cache_size=-200000")
        cur.close()

    started = time.perf_counter()
    with engine.connect() as conn:
        tenant_id = conn.execute(
            select(Tenant.__table__.c.id).where(Tenant.__table__.c.name == DEFAULT_TENANT)
        ).scalar_one()
        max_mem = conn.execute(select(func.max(Memory.__table__.c.id))).scalar() or 0
        max_emb = conn.execute(select(func.max(MemoryEmbedding.__table__.c.id))).scalar() or 0
        have = conn.execute(select(func.count()).select_from(Memory.__table__)).scalar() or 0
    plan: list[tuple[str, int]] = []
    for size in sizes:
        key = str(size)
        if key not in manifest["probes"] and have + sum(c for _, c in plan) + size <= total:
            uid = f"usr_probe{size:09d}"
            plan.append((uid, size))
            manifest["probes"][key] = uid
    room = total - have - sum(c for _, c in plan)
    rng = random.Random(seed + int(have))
    start_idx = int(manifest["filler_users"])
    filler: list[tuple[str, int]] = []
    if room > 0:
        per_user = max(1, room // max(1, users))
        i = 0
        while room > 0 and i < users * 4:
            n = min(room, max(1, int(rng.uniform(0.5, 1.5) * per_user)))
            filler.append((f"usr_fill{start_idx + i:09d}", n))
            room -= n
            i += 1
        manifest["filler_users"] = start_idx + len(filler)
    if not plan and not filler:
        engine.dispose()
        return manifest  # already loaded to this size: nothing to embed or insert
    embedder = get_embedder(settings)
    texts = pool_texts(pool)
    t = time.perf_counter()
    vecs = np.vstack([embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)])
    embed_s = time.perf_counter() - t
    loader = Loader(
        engine=engine,
        tenant_id=int(tenant_id),
        pool=texts,
        vectors=vecs.astype(np.float32),
        model=embedder.name,
        rng=np.random.default_rng(seed + int(have)),
        next_memory_id=int(max_mem) + 1,
        next_embedding_id=int(max_emb) + 1,
    )
    loader.load(plan + filler)
    with engine.connect() as conn:
        manifest["total"] = conn.execute(
            select(func.count()).select_from(Memory.__table__)
        ).scalar()
        manifest["users"] = conn.execute(select(func.count()).select_from(User.__table__)).scalar()
    elapsed = time.perf_counter() - started
    manifest["load_seconds"].append(
        {
            "to_total": manifest["total"],
            "seconds": round(elapsed, 1),
            "pool_embed_s": round(embed_s, 1),
            "pool": len(texts),
        }
    )
    manifest["model"] = embedder.name
    manifest_path.write_text(json.dumps(manifest, indent=1))
    engine.dispose()
    if log:
        print(
            f"loaded to {manifest['total']} memories / {manifest['users']} users in "
            f"{elapsed:.1f}s (pool of {len(texts)} texts embedded in {embed_s:.1f}s)",
            file=sys.stderr,
        )
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO / "data" / "bench-scale")
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--pool", type=int, default=3000)
    args = ap.parse_args()
    manifest = load(
        args.root,
        total=args.total,
        users=args.users,
        sizes=[int(s) for s in args.sizes.split(",") if s],
        pool=args.pool,
    )
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
