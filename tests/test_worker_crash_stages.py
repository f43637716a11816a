"""A real worker process SIGKILLed at every stage boundary of the pipeline, then its lease
expired (backdated in SQL, never slept out) and the event re-claimed by a fresh production
worker (`voxmem worker --processes 1`): the database ends exactly as if the event had been
processed once, with no crash.

The kill point is the pipeline's fault-injection hook (``worker.pipeline.BoundaryHook``; why a
hook and not a setting is explained there), set by ``tests/worker_harness.py --kill-at``, which
runs the real worker process body with every stage. The boundaries are derived from
``default_stages()`` at collection time, and the uncrashed reference run checks that the
pipeline really passes them in that order, so a new stage gets its crash cases automatically.

Two scenarios, each from a template data dir built once per module:

- ``call``: a returning caller (two calls already processed) whose third call is pending, so
  the crashed job reinforces and links existing memories, matches a known issue pattern and
  updates a profile, besides storing a conversation.
- ``reflection``: three processed calls and the user's queued reflection event made due.

Every case compares a snapshot of every table (decrypted values; timestamps and the queue's
own bookkeeping left out) with the same template processed once, uncrashed, in-process.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db import crypto
from db.bootstrap import bootstrap
from db.engine import Database, open_database
from db.models import (
    DEFAULT_TENANT,
    Base,
    Conversation,
    ConversationTurn,
    Memory,
    MemoryEmbedding,
    MemoryLink,
    User,
)
from db.settings import Settings
from db.tenancy import active_webhook_secrets, require_tenant
from db.types import UTCDateTime
from memory.reflection import REFLECTION_EVENT
from tests.conftest import Deployment, make_settings
from tests.insight_helpers import drain, now, signed_post_call
from tests.intake_helpers import start_worker, stop, wait_for
from worker.payload import TRANSCRIPTION
from worker.runner import make_process_next
from worker.stages import default_stages

NUMBER = "+14155550199"
# One reflection window for the whole module (the window id is derived from the clock; a
# boundary falling between the reference run and a crash run would queue a second event).
SLOW_REFLECTION = {"reflection_interval_secs": 10_000_000.0}
ENV = {"VOXMEM_REFLECTION_INTERVAL_SECS": str(SLOW_REFLECTION["reflection_interval_secs"])}

CALLS = [
    [
        ("agent", "Thanks for calling Acme support, who am I speaking with?"),
        ("user", "This is Maria Lopez from Northwind Traders. We use Salesforce as our CRM."),
        ("agent", "What can I help with?"),
        ("user", "The mobile app keeps crashing with a sync error when I open my calendar."),
        ("agent", "I'll escalate the sync error to engineering."),
    ],
    [
        ("agent", "Welcome back Maria."),
        ("user", "My phone app crashes with a sync error every time I open the calendar."),
        ("user", "I prefer email over phone calls for follow-ups, please."),
        ("agent", "Noted, email it is. I'll send the pricing PDF by Friday."),
    ],
    [
        ("agent", "Hi Maria, how can I help?"),
        ("user", "The app crashes with a sync error whenever I open my calendar view."),
        ("user", "We switched our CRM from Salesforce to HubSpot last month."),
        ("user", "My colleague Dana Reyes handles billing, please copy her on invoices."),
        ("agent", "I'll copy Dana on invoices and update the ticket."),
    ],
]

# The queue's own bookkeeping differs by design between a crashed and an uncrashed run
# (attempt counts, lease owners, heartbeats); it is checked separately in `queue_summary`.
BOOKKEEPING = {"webhook_events", "worker_heartbeats", "api_tokens"}


def boundaries(event_type: str) -> list[str]:
    """Every boundary `worker.pipeline.Pipeline` passes for one event, in order."""
    stages = [s for s in default_stages() if event_type in s.event_types]
    return [
        "claimed",
        *(f"prepared:{s.name}" for s in stages if s.prepare is not None),
        *(f"applied:{s.name}" for s in stages if s.apply is not None),
        "completed",
        "committed",
    ]


SCENARIOS = {"call": TRANSCRIPTION, "reflection": REFLECTION_EVENT}
CASES = [
    pytest.param(scenario, point, id=f"{scenario}-{point}")
    for scenario, event_type in SCENARIOS.items()
    for point in boundaries(event_type)
]


def sql(path: Path, statement: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        return list(conn.execute(statement, params).fetchall())
    finally:
        conn.close()


# Processing times inside JSON documents (e.g. a profile's "heuristic_at").
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")


def snapshot(db: Database) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every row of every domain table, decrypted, without timestamps (they record when a
    worker got round to the event, which a crash legitimately moves)."""
    out: dict[str, Counter[tuple[Any, ...]]] = {}
    with db.read() as session:
        for table in Base.metadata.sorted_tables:
            if table.name in BOOKKEEPING:
                continue
            columns = [c for c in table.columns if not isinstance(c.type, UTCDateTime)]
            out[table.name] = Counter(
                tuple(ISO_TIME.sub("<time>", repr(v)) for v in row)
                for row in session.execute(select(*columns))
            )
    return out


def queue_summary(path: Path) -> Counter[tuple[str, str]]:
    return Counter(
        (str(t), str(s)) for t, s in sql(path, "SELECT event_type, status FROM webhook_events")
    )


def counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Conversation, ConversationTurn, Memory, MemoryEmbedding, MemoryLink)
        }


def summaries(db: Database) -> list[str | None]:
    with db.read() as session:
        return list(session.scalars(select(User.summary).order_by(User.user_id)))


@dataclass
class Template:
    """A data dir with one due event, and the state after processing it once, uncrashed."""

    data_dir: Path
    event_id: int  # webhook_events.id of the due event
    reference: dict[str, Counter[tuple[Any, ...]]]
    reference_queue: Counter[tuple[str, str]]
    reference_counts: dict[str, int]
    reference_summaries: list[str | None]


def _settings(data_dir: Path) -> Settings:
    return make_settings(data_dir, **SLOW_REFLECTION)


def _open(data_dir: Path) -> Database:
    settings = _settings(data_dir)
    crypto.configure(crypto.load_keyring(settings))
    return open_database(settings)


def _checkpoint(data_dir: Path) -> None:
    sql(data_dir / "voxmem.db", "PRAGMA wal_checkpoint(TRUNCATE)")


def _build_template(root: Path, scenario: str) -> Template:
    data_dir = root / scenario / "template"
    settings = _settings(data_dir)
    bootstrap(settings, issue_tokens=False)
    db = _open(data_dir)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        secret = active_webhook_secrets(session, tenant.id)[0]
    deployment = Deployment(settings=settings, db=db, webhook_secret=secret, tokens={})
    from api.app import create_app

    start = now() - timedelta(days=21)
    processed = 2 if scenario == "call" else 3
    with TestClient(create_app(settings)) as client:
        for i, turns in enumerate(CALLS):
            if i == processed:
                break
            _post(client, deployment, i, turns, start + timedelta(days=7 * i))
            drain(deployment)
        if scenario == "call":
            _post(client, deployment, 2, CALLS[2], start + timedelta(days=14))
    if scenario == "reflection":
        (due,) = sql(
            data_dir / "voxmem.db",
            "UPDATE webhook_events SET run_after = '2000-01-01 00:00:00.000000' "
            "WHERE event_type = ? RETURNING id",
            REFLECTION_EVENT,
        )
        assert due
    db.dispose()
    _checkpoint(data_dir)
    ((event_id,),) = sql(
        data_dir / "voxmem.db",
        "SELECT id FROM webhook_events WHERE status = 'pending' AND run_after < ?",
        # run_after is stored naive UTC with microseconds (db.types)
        now().replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
    )

    # The reference: the same template processed once, in-process, recording the boundaries.
    ref_dir = root / scenario / "reference"
    shutil.copytree(data_dir, ref_dir)
    ref_db = _open(ref_dir)
    seen: list[str] = []
    process = make_process_next(
        _settings(ref_dir),
        ref_db,
        worker_id="reference",
        on_boundary=lambda name, _session: seen.append(name),
    )
    assert process(), "the template has no due event"
    assert not process(), "the template has more than one due event"
    assert seen == boundaries(SCENARIOS[scenario]), "the pipeline's boundaries moved"
    template = Template(
        data_dir=data_dir,
        event_id=event_id,
        reference=snapshot(ref_db),
        reference_queue=queue_summary(ref_dir / "voxmem.db"),
        reference_counts=counts(ref_db),
        reference_summaries=summaries(ref_db),
    )
    ref_db.dispose()
    return template


def _post(
    client: TestClient, deployment: Deployment, i: int, turns: list[tuple[str, str]], at: datetime
) -> None:
    body, headers = signed_post_call(
        deployment.webhook_secret, f"conv_crash_{i}", NUMBER, turns, start=at, outcome="success"
    )
    r = client.post("/webhook/post-call", content=body, headers=headers)
    assert r.json() == {"status": "accepted"}, r.text


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Template]:
    root = tmp_path_factory.mktemp("crash-templates")
    return {scenario: _build_template(root, scenario) for scenario in SCENARIOS}


def _event(path: Path, event_id: int) -> tuple[str, int]:
    ((status, attempts),) = sql(
        path, "SELECT status, retry_count FROM webhook_events WHERE id = ?", event_id
    )
    return str(status), int(attempts)


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize(("scenario", "point"), CASES)
def test_sigkill_at_every_stage_boundary_gives_one_effect(
    templates: dict[str, Template], tmp_path: Path, scenario: str, point: str
) -> None:
    template = templates[scenario]
    data_dir = tmp_path / "data"
    shutil.copytree(template.data_dir, data_dir)
    path = data_dir / "voxmem.db"
    settings = _settings(data_dir)
    db = _open(data_dir)
    before = snapshot(db)
    deployment = Deployment(settings=settings, db=db, webhook_secret="", tokens={})

    marker = tmp_path / "at-boundary"
    victim = start_worker(
        deployment,
        "--kill-at",
        point,
        "--marker",
        str(marker),
        harness=True,
        log=tmp_path / "victim.log",
        **ENV,
    )
    try:
        wait_for(marker.exists, timeout=120, what=f"victim at {point}")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop(victim)

    if point == "committed":
        # Durable before the kill: done, once, and nothing left for anyone to redo.
        assert _event(path, template.event_id) == ("completed", 1)
        assert snapshot(db) == template.reference
    else:
        # Nothing the victim did is visible: the rows it flushed died with its transaction.
        assert _event(path, template.event_id) == ("processing", 1)
        assert snapshot(db) == before
        # The lease would run out after queue_lease_secs; move it into the past instead.
        sql(
            path,
            "UPDATE webhook_events SET locked_until = '2000-01-01 00:00:00.000000' "
            "WHERE status = 'processing'",
        )

    rescuer = start_worker(deployment, "--processes", "1", log=tmp_path / "rescuer.log", **ENV)
    try:
        if point == "committed":
            # Give the fresh worker its first polls: it must find nothing to do.
            wait_for(
                lambda: len(sql(path, "SELECT 1 FROM worker_heartbeats")) >= 2,
                timeout=60,
                what="rescuer registered",
            )
            time.sleep(1.0)  # its first poll follows registration within milliseconds
        else:
            wait_for(
                lambda: _event(path, template.event_id)[0] == "completed",
                timeout=120,
                what="re-claimed event completed",
            )
    finally:
        stop(rescuer, timeout=40)
    assert _event(path, template.event_id) == (
        ("completed", 1) if point == "committed" else ("completed", 2)
    )

    after = snapshot(db)
    differing = {
        t: (after[t] - template.reference[t], template.reference[t] - after[t])
        for t in after
        if after[t] != template.reference[t]
    }
    assert not differing, f"differs from one uncrashed run (extra, missing): {differing}"
    assert queue_summary(path) == template.reference_queue
    assert counts(db) == template.reference_counts
    assert counts(db)["conversations"] == 3
    assert summaries(db) == template.reference_summaries
    with db.read() as session:
        contents = Counter(
            (m.user_id, m.content)
            for m in session.scalars(select(Memory)).all()
            if m.state == "active"
        )
    assert all(n == 1 for n in contents.values()), "a memory was written twice"
    db.dispose()
