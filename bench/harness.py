"""Shared plumbing for the benchmark suite: a migrated deployment in a temp dir, the real API and
worker processes on loopback, signed webhooks, queue state, percentiles and peak RSS.

Everything here drives the service the way a deployment runs it (``voxmem migrate``, ``voxmem
serve``, ``voxmem worker``), so the figures include the real auth, middleware, database and
engine. Every loop is bounded in count and time.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from api.commands.demo import post_call_payload, read_credentials, signed_headers

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


_SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")


def server_ms(resp: httpx.Response) -> float:
    """The server's own time to the response head (api/middleware.py's Server-Timing)."""
    match = _SERVER_TIMING.search(resp.headers.get("server-timing", ""))
    if match is None:
        raise RuntimeError("response has no Server-Timing app;dur=... header")
    return float(match.group(1))


# The 16 questions the scale figures (query, ann) ask of the generated memories.
SCALE_QUERIES = [
    "what did we promise to send",
    "allergies in the family",
    "how does the caller like to be contacted",
    "which CRM does the company use",
    "problems with the router",
    "refund request amount",
    "travel plans",
    "delayed order delivery",
    "who handles the account",
    "billing address change",
    "music lessons for the kids",
    "discount promised",
    "frustrated about the double charge",
    "callback on Friday",
    "vegetarian food preferences",
    "team size evaluating the plan",
]

_QUERY_SERIAL = itertools.count()


def unique_query(queries: Sequence[str], i: int) -> str:
    """Request i's query, never repeated anywhere in this benchmark process: the API caches
    query embeddings (memory/embedders/query_cache.py), and a benchmark must pay for every
    one. The serial is process-wide, so two users (or two sizes) never share a query text."""
    return f"{queries[i % len(queries)]} #{next(_QUERY_SERIAL)}"


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process in MiB; psutil's rss as a fallback."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:
        return float("nan")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]
    secret: str
    init_token: str
    tool_token: str
    admin_token: str
    db_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    base_url: str = ""
    api_pid: int = 0
    worker_pid: int = 0

    # --- processes --------------------------------------------------------------------------
    def start_api(self, timeout: float = 60.0) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "api.log", "ab"),
        )
        self.procs.append(proc)
        self.api_pid = proc.pid
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"API exited with {proc.returncode}; see {self.root}/api.log")
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=1.0).status_code == 200:
                    return self.base_url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        proc.terminate()
        proc.wait(timeout=20)
        self.procs.remove(proc)
        raise TimeoutError(f"API not ready in {timeout}s; see {self.root}/api.log")

    def start_workers(self, processes: int, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker", "--processes", str(processes)],
            cwd=REPO,
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "worker.log", "ab"),
        )
        self.procs.append(proc)
        self.worker_pid = proc.pid
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)

    # --- traffic ----------------------------------------------------------------------------
    def post_call(
        self,
        client: httpx.Client,
        *,
        conversation_id: str,
        number: str,
        turns: Sequence[tuple[str, str]],
        start: datetime,
    ) -> float:
        """Sign and post one post_call_transcription; returns the ack latency in ms."""
        payload = post_call_payload(
            conversation_id=conversation_id,
            agent_id="agent_bench",
            number=number,
            turns=turns,
            start=start,
            duration_secs=max(10, 5 * len(turns)),
            outcome="success",
        )
        body = json.dumps(payload, separators=(",", ":")).encode()
        t = time.perf_counter()
        resp = client.post(
            f"{self.base_url}/webhook/post-call",
            content=body,
            headers=signed_headers(self.secret, body),
        )
        ms = (time.perf_counter() - t) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"post-call answered {resp.status_code}: {resp.text[:200]}")
        return ms

    def memory_query(
        self, client: httpx.Client, body: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        ms, _server, data = self.memory_query_timed(client, body)
        return ms, data

    def memory_query_timed(
        self, client: httpx.Client, body: dict[str, Any]
    ) -> tuple[float, float, dict[str, Any]]:
        """(client ms, server ms from the Server-Timing header, body)."""
        t = time.perf_counter()
        resp = client.post(
            f"{self.base_url}/tools/memory-query",
            json=body,
            headers={"Authorization": f"Bearer {self.tool_token}"},
        )
        ms = (time.perf_counter() - t) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"memory-query answered {resp.status_code}: {resp.text[:200]}")
        return ms, server_ms(resp), resp.json()

    def queue_counts(self, event_type: str = "post_call_transcription") -> dict[str, int]:
        """Status counts of one event type (post-call jobs schedule deferred reflection events,
        which are not part of making a call queryable)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM webhook_events WHERE event_type = ? GROUP BY status",
                (event_type,),
            )
            return {str(s): int(n) for s, n in rows}

    def wait_drained(self, expected: int, timeout: float) -> float:
        """Seconds until ``expected`` post-call events are completed (or dead-lettered)."""
        t = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.queue_counts()
            if counts.get("completed", 0) + counts.get("dead_letter", 0) >= expected:
                return time.perf_counter() - t
            time.sleep(0.05)
        raise TimeoutError(f"queue not drained in {timeout}s: {self.queue_counts()}")


def deploy(root: Path, **env_overrides: str) -> Deployment:
    """A fresh migrated SQLite deployment under ``root`` (WAL, synchronous=FULL defaults)."""
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMEM_")}
    env.update(
        VOXMEM_DATABASE_URL=f"sqlite:///{data / 'voxmem.db'}",
        VOXMEM_DATA_DIR=str(data),
        VOXMEM_ENVIRONMENT="test",
        VOXMEM_LOG_LEVEL="WARNING",
        VOXMEM_LOG_FORMAT="json",
        # A bench sends far more tool calls per token than an agent does.
        VOXMEM_TOOL_RATE_LIMIT="1000000/minute",
        PYTHONUNBUFFERED="1",
    )
    env.update(env_overrides)
    subprocess.run(
        [sys.executable, "-m", "api.cli", "migrate"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    creds = read_credentials(data / "credentials.txt")
    if not (creds.secret and creds.init_token and creds.tool_token):
        raise RuntimeError(f"migrate wrote no credentials under {data}")
    return Deployment(
        root=root,
        env=env,
        secret=creds.secret,
        init_token=creds.init_token,
        tool_token=creds.tool_token,
        admin_token=creds.admin_token or "",
        db_path=data / "voxmem.db",
    )


def six_turns(i: int, fact: str) -> list[tuple[str, str]]:
    """A six-turn support call whose caller states ``fact``."""
    return [
        ("agent", "Thanks for calling Acme support, how can I help today?"),
        ("user", f"Hi, this is call {i}. {fact}"),
        ("agent", f"Understood. I'll open ticket {1000 + i} and escalate it today."),
        ("user", "Please text me the update, I'm usually in meetings in the morning."),
        ("agent", "Noted, we'll text you. I'll also send the troubleshooting guide by Friday."),
        ("user", "Great, thanks. That's all!"),
    ]
