"""Helpers shared by the intake, pipeline and crash tests."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from api.security.signatures import sign
from tests.conftest import (
    FIXTURES,
    REPO,
    Deployment,
    free_port,
    settings_env,
    voxmem_cmd,
    wait_ready,
)

FULL = (FIXTURES / "post_call_transcription.json").read_bytes()
FULL_ID = b"conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"


def fixture_body(
    name: str = "post_call_transcription.json", conversation_id: str | None = None
) -> bytes:
    """A fixture's exact bytes, optionally with its conversation id swapped (bytes kept raw)."""
    body = (FIXTURES / name).read_bytes()
    if conversation_id is not None:
        original = json.loads(body)["data"]["conversation_id"].encode()
        body = body.replace(original, conversation_id.encode())
    return body


def edited_body(
    mutate: Callable[[dict[str, Any]], None], name: str = "post_call_transcription.json"
) -> bytes:
    doc = json.loads((FIXTURES / name).read_bytes())
    mutate(doc)
    return json.dumps(doc).encode()


def signed(secret: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    return {
        "ElevenLabs-Signature": sign(secret, body, ts if ts is not None else int(time.time())),
        "Content-Type": "application/json",
    }


def start_api(deployment: Deployment, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full_env = settings_env(deployment.settings)
    full_env.update(env)
    proc = subprocess.Popen(
        voxmem_cmd("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=full_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc=proc)
    return proc, base


def start_worker(
    deployment: Deployment, *args: str, harness: bool = False, log: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    full_env = settings_env(deployment.settings)
    full_env.update(env)
    import sys

    cmd = (
        [sys.executable, "-m", "tests.worker_harness", *args]
        if harness
        else voxmem_cmd("worker", *args)
    )
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def post(base: str, secret: str, body: bytes, path: str = "/webhook/post-call") -> httpx.Response:
    return httpx.post(base + path, content=body, headers=signed(secret, body), timeout=30)
