"""Shared fixtures: a real SQLite file per test, real keys, the real app, real processes."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import hypothesis
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from db import crypto, tracing
from db.bootstrap import bootstrap
from db.engine import Database, open_database
from db.models import DEFAULT_TENANT
from db.settings import Settings
from db.tenancy import active_webhook_secrets, create_token, require_tenant

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
# The real ElevenLabs payloads (SPEC §1-§3), vendored so a bare clone tests on its own;
# tests/test_fixture_copies.py keeps them byte-identical to ../shared when it is present.
FIXTURES = REPO / "tests" / "fixtures" / "elevenlabs"

# The local embedder derives its model once (memory/embedders/quantized.py, ~2 s); every test
# deployment and subprocess shares this copy instead of deriving into each data dir.
MODEL_CACHE = REPO / ".cache" / "models"
os.environ["VOXMEM_MODEL_CACHE_DIR"] = str(MODEL_CACHE)

# The embedded PostgreSQL server and the sqlite/postgres parametrised fixtures (tests/pg.py).
pytest_plugins = ["tests.pg"]

# The long fuzzing run: `pytest -k fuzz --hypothesis-profile=long` raises
# every fuzz test's example budget (tests/test_fuzz_*.py read it through `fuzz_examples`).
hypothesis.settings.register_profile("long", max_examples=20_000, deadline=None)


def fuzz_examples(ci_budget: int) -> int:
    """The CI budget, or the active hypothesis profile's max_examples when that is larger."""
    return max(ci_budget, hypothesis.settings.default.max_examples)


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{data_dir / 'voxmem.db'}",
        "data_dir": data_dir,
        "environment": "test",
        "log_format": "console",
        "log_level": "WARNING",
        "worker_heartbeat_secs": 1.0,
        "queue_poll_max_secs": 0.2,
        "model_cache_dir": MODEL_CACHE,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess that must see the same deployment as `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMEM_")}
    env.update(
        VOXMEM_DATABASE_URL=settings.database_url,
        VOXMEM_DATA_DIR=str(settings.data_dir),
        VOXMEM_ENVIRONMENT=settings.environment,
        VOXMEM_LOG_FORMAT="json",
        VOXMEM_LOG_LEVEL=settings.log_level,
        VOXMEM_WORKER_HEARTBEAT_SECS=str(settings.worker_heartbeat_secs),
        VOXMEM_QUEUE_POLL_MAX_SECS=str(settings.queue_poll_max_secs),
        VOXMEM_QUEUE_LEASE_SECS=str(settings.queue_lease_secs),
        VOXMEM_MODEL_CACHE_DIR=str(settings.model_cache_path),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Deployment:
    """A migrated voxmem data dir with the default tenant's secret and one token per scope."""

    settings: Settings
    db: Database
    webhook_secret: str
    tokens: dict[str, str]

    def auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def deployment(settings: Settings) -> Iterator[Deployment]:
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        secret = active_webhook_secrets(session, tenant.id)[0]
        tokens = {
            scope: create_token(session, DEFAULT_TENANT, scope, name=f"test {scope}").token
            for scope in ("tool", "init", "admin")
        }
    yield Deployment(settings=settings, db=db, webhook_secret=secret, tokens=tokens)
    db.dispose()


@pytest.fixture
def client(deployment: Deployment) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(deployment.settings)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    base_url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready within {timeout}s")


def voxmem_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


@dataclass
class LiveServer:
    base_url: str
    proc: subprocess.Popen[bytes]
    deployment: Deployment


@pytest.fixture
def live_server(deployment: Deployment) -> Iterator[LiveServer]:
    """The real API in its own process, on loopback."""
    port = free_port()
    proc = subprocess.Popen(
        voxmem_cmd("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=settings_env(deployment.settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc=proc)
        yield LiveServer(base_url=base, proc=proc, deployment=deployment)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def exporter(deployment: Deployment) -> Iterator[InMemorySpanExporter]:
    """Spans of this process, collected in memory (tracing on for the test's duration)."""
    memory = InMemorySpanExporter()
    assert tracing.init_tracing(deployment.settings, "voxmem-test", exporter=memory)
    try:
        yield memory
    finally:
        tracing.shutdown_tracing()


@dataclass
class HeldWriteLock:
    pauses: list[float] = field(default_factory=list)  # time.sleep calls of the tested thread
    released: threading.Event = field(default_factory=threading.Event)


@contextmanager
def write_lock_held(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, release_after: int, statement: str = ""
) -> Iterator[HeldWriteLock]:
    """Another connection holds SQLite's write lock (after running ``statement``) until the
    calling thread has slept ``release_after`` times waiting for it, then commits. After 10 s
    it commits anyway, so code that never retries fails its test instead of hanging it."""
    held = HeldWriteLock()
    real_sleep = time.sleep
    tested = threading.get_ident()

    def recording_sleep(secs: float) -> None:
        if threading.get_ident() == tested:
            held.pauses.append(secs)
        real_sleep(secs)

    monkeypatch.setattr(time, "sleep", recording_sleep)
    holder = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    if statement:
        holder.execute(statement)

    def commit_once_waited_on() -> None:
        deadline = time.monotonic() + 10
        while len(held.pauses) < release_after and time.monotonic() < deadline:
            real_sleep(0.001)
        holder.execute("COMMIT")
        held.released.set()

    thread = threading.Thread(target=commit_once_waited_on)
    thread.start()
    try:
        yield held
    finally:
        thread.join()
        holder.close()
