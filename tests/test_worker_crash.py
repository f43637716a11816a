"""Real processes, real files: producers × workers, SIGKILL mid-job, poison events and the
queue CLI. Leases are expired by backdating them in SQL, never by sleeping them out."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import Conversation, ConversationTurn, ToolInvocation, WebhookEvent
from tests.conftest import FIXTURES, REPO, Deployment, settings_env, voxmem_cmd
from tests.intake_helpers import (
    fixture_body,
    signed,
    start_api,
    start_worker,
    stop,
    wait_for,
)

PATH = "/webhook/post-call"
CONV = "conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"


def sql(deployment: Deployment, statement: str, *params: object) -> list[tuple[object, ...]]:
    path = deployment.settings.sqlite_path
    assert path is not None
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        return list(conn.execute(statement, params).fetchall())
    finally:
        conn.close()


def event_state(deployment: Deployment) -> dict[str, tuple[str, int]]:
    return {
        str(cid): (str(status), int(str(attempts)))
        for cid, status, attempts in sql(
            deployment,
            "SELECT conversation_id, status, retry_count FROM webhook_events "
            "WHERE event_type = 'post_call_transcription'",
        )
    }


def effects(deployment: Deployment) -> tuple[int, int, int]:
    with deployment.db.read() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Conversation)) or 0),
            int(session.scalar(select(func.count()).select_from(ConversationTurn)) or 0),
            int(session.scalar(select(func.count()).select_from(ToolInvocation)) or 0),
        )


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voxmem_cmd(*args),
        env=settings_env(deployment.settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


PRODUCER = textwrap.dedent(
    """
    import sys, time, httpx
    sys.path.insert(0, {repo!r})
    from api.security.signatures import sign
    base, secret = sys.argv[1], sys.argv[2]
    first, last, dup = (int(a) for a in sys.argv[3:6])
    template = open({fixture!r}, "rb").read()
    with httpx.Client(timeout=30) as http:
        # Its own range, then a few ids of the next producer's range (cross-process redelivery).
        for i in [*range(first, last), *range(last, last + dup)]:
            body = (template.replace(b"{conv}", b"conv_load_%04d" % i)
                    .replace(b"user_123", b"user_load_%04d" % i)
                    .replace(b"+15551234567", b"+1555%07d" % i))
            r = http.post(base + "/webhook/post-call", content=body,
                          headers={{"ElevenLabs-Signature": sign(secret, body, int(time.time()))}})
            assert r.status_code == 200, r.text
            print(r.json()["status"])
    """
)


@pytest.mark.slow
@pytest.mark.chaos
def test_producers_and_workers_lose_nothing_and_double_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    producers, per_producer, dup = 3, 12, 3
    api, base = start_api(deployment)
    workers = start_worker(deployment, "--processes", "2", log=tmp_path / "workers.log")
    script = PRODUCER.format(
        repo=str(REPO),
        fixture=str(FIXTURES / "post_call_transcription.json"),
        conv=CONV,
    )
    try:
        # Both worker processes polling before the load starts, so each gets a share.
        wait_for(
            lambda: len(sql(deployment, "SELECT worker_id FROM worker_heartbeats")) >= 2,
            timeout=60,
            what="two workers registered",
        )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    script,
                    base,
                    deployment.webhook_secret,
                    str(k * per_producer),
                    str((k + 1) * per_producer),
                    str(dup),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for k in range(producers)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
        statuses = [line for out, _ in outputs for line in out.decode().split()]
        expected = {f"conv_load_{i:04d}" for i in range(producers * per_producer + dup)}
        assert statuses.count("accepted") == len(expected)
        # Only the last producer's extra ids are new; the others overlap the next range.
        assert statuses.count("duplicate") == (producers - 1) * dup

        def all_done() -> bool:
            state = event_state(deployment)
            return len(state) == len(expected) and all(s == "completed" for s, _ in state.values())

        wait_for(all_done, timeout=150, what="every event completed")
    finally:
        stop(workers, timeout=40)
        stop(api)
    state = event_state(deployment)
    assert set(state) == expected
    assert all(attempts == 1 for _, attempts in state.values())
    with deployment.db.read() as session:
        per_conversation = {
            row.conversation_id: row.n
            for row in session.execute(
                select(Conversation.conversation_id, func.count().label("n")).group_by(
                    Conversation.conversation_id
                )
            )
        }
        runners = set(
            session.scalars(
                select(WebhookEvent.locked_by).where(
                    WebhookEvent.event_type == "post_call_transcription"
                )
            )
        )
    assert per_conversation == dict.fromkeys(expected, 1)
    assert effects(deployment)[1:] == (8 * len(expected), len(expected))
    assert len(runners) == 2, runners  # no worker process sat idle
    assert not sql(deployment, "SELECT id FROM webhook_events WHERE status = 'dead_letter'")


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("where", ["prepare", "apply"])
def test_sigkill_mid_job_then_reclaim_gives_one_effect(
    client: TestClient, deployment: Deployment, tmp_path: Path, where: str
) -> None:
    body = fixture_body()
    assert client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body)).json()
    marker = tmp_path / "in-stage"
    victim = start_worker(
        deployment,
        "--block",
        where,
        "--marker",
        str(marker),
        harness=True,
        log=tmp_path / "victim.log",
    )
    try:
        wait_for(marker.exists, timeout=60, what=f"worker inside {where}")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        stop(victim)
    assert event_state(deployment) == {CONV: ("processing", 1)}
    assert effects(deployment) == (0, 0, 0)  # nothing committed by the killed worker
    # The lease would run out after queue_lease_secs; move it into the past instead.
    sql(deployment, "UPDATE webhook_events SET locked_until = '2000-01-01 00:00:00.000000'")
    rescuer = start_worker(deployment, harness=True, log=tmp_path / "rescuer.log")
    try:
        wait_for(
            lambda: event_state(deployment).get(CONV, ("", 0))[0] == "completed",
            timeout=60,
            what="re-claimed event completed",
        )
    finally:
        stop(rescuer)
    assert event_state(deployment) == {CONV: ("completed", 2)}
    assert effects(deployment) == (1, 8, 1)


@pytest.mark.slow
@pytest.mark.chaos
def test_poison_event_dead_letters_without_blocking_then_replays(
    deployment: Deployment, tmp_path: Path
) -> None:
    from api.app import create_app

    settings = deployment.settings.model_copy(update={"queue_max_attempts": 3})
    bodies = [fixture_body(conversation_id="conv_poison_1")] + [
        fixture_body(conversation_id=f"conv_good_{i}").replace(b"user_123", b"user_good_%d" % i)
        for i in range(3)
    ]
    with TestClient(create_app(settings)) as client:
        for body in bodies:
            r = client.post(PATH, content=body, headers=signed(deployment.webhook_secret, body))
            assert r.json() == {"status": "accepted"}
    fast_retry = {"VOXMEM_QUEUE_BACKOFF_BASE_SECS": "0.05", "VOXMEM_QUEUE_BACKOFF_CAP_SECS": "0.2"}
    worker = start_worker(
        deployment,
        "--fail-prefix",
        "conv_poison",
        harness=True,
        log=tmp_path / "w1.log",
        **fast_retry,
    )
    try:
        wait_for(
            lambda: (
                event_state(deployment).get("conv_poison_1", ("", 0))[0] == "dead_letter"
                and sum(s == "completed" for s, _ in event_state(deployment).values()) == 3
            ),
            timeout=60,
            what="poison dead-lettered, the rest completed",
        )
    finally:
        stop(worker)
    assert event_state(deployment)["conv_poison_1"] == ("dead_letter", 3)

    stats = cli(deployment, "queue", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    counts = json.loads(stats.stdout)
    # (Later stages may queue their own events, e.g. a reflection for later: not counted here.)
    assert counts["dead_letter"] == 1 and counts["processing"] == 0 and counts["completed"] >= 3
    assert set(counts) >= {"pending", "processing", "completed", "failed", "dead_letter"}
    listed = cli(deployment, "queue", "list", "--status", "dead_letter")
    assert listed.returncode == 0 and "conv_poison_1" in listed.stdout
    assert "RuntimeError: poison: conv_poison_1" in listed.stdout
    (good_id,) = sql(
        deployment, "SELECT id FROM webhook_events WHERE conversation_id = 'conv_good_0'"
    )[0]
    refused = cli(deployment, "queue", "retry", str(good_id))
    assert refused.returncode == 1 and "completed" in refused.stderr

    replayed = cli(deployment, "queue", "replay", "--dead-letter")
    assert replayed.returncode == 0 and replayed.stdout.startswith("1 ")
    healed = start_worker(deployment, harness=True, log=tmp_path / "w2.log")
    try:
        wait_for(
            lambda: event_state(deployment)["conv_poison_1"][0] == "completed",
            timeout=60,
            what="replayed event completed",
        )
    finally:
        stop(healed)
    assert effects(deployment) == (4, 32, 4)
    assert not sql(deployment, "SELECT id FROM webhook_events WHERE status = 'dead_letter'")
