"""The voxmem CLI as an operator runs it: real subprocesses, real data dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from db.settings import Settings
from tests.conftest import REPO, free_port, settings_env, voxmem_cmd, wait_ready


def run(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        voxmem_cmd(*args),
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(
    "command",
    [[], ["migrate"], ["serve"], ["worker"], ["up"], ["tokens", "create"], ["tenants", "create"]],
)
def test_every_command_has_help(settings: Settings, command: list[str]) -> None:
    result = run(settings, *command, "--help")
    assert "Usage" in result.stdout


def test_migrate_is_idempotent_and_reports_credentials(settings: Settings) -> None:
    first = run(settings, "migrate")
    assert "credentials.txt" in first.stdout
    second = run(settings, "migrate")
    assert "schema at head" in second.stdout
    assert "credentials" not in second.stdout


def test_tokens_create_prints_the_token_alone_on_the_last_line(settings: Settings) -> None:
    run(settings, "migrate")
    out = run(settings, "tokens", "create", "--tenant", "default", "--scope", "tool", "--name", "x")
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("vxm_tool_") and " " not in last
    listing = run(settings, "tokens", "list").stdout
    assert last not in listing  # only the prefix is ever shown again
    assert last[:12] in listing


def test_errors_are_one_line_and_nonzero(settings: Settings) -> None:
    run(settings, "migrate")
    bad_scope = run(settings, "tokens", "create", "--scope", "root", check=False)
    assert bad_scope.returncode != 0
    assert bad_scope.stderr.strip().startswith("error: invalid scope")
    assert len(bad_scope.stderr.strip().splitlines()) == 1
    no_tenant = run(
        settings, "tokens", "create", "--scope", "tool", "--tenant", "nope", check=False
    )
    assert no_tenant.returncode != 0 and "no tenant" in no_tenant.stderr


def test_tenants_create_and_list(settings: Settings) -> None:
    run(settings, "migrate")
    created = run(settings, "tenants", "create", "acme")
    assert created.stdout.strip().splitlines()[-1].startswith("wsec_")
    assert "acme" in run(settings, "tenants", "list").stdout
    dup = run(settings, "tenants", "create", "acme", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr


@pytest.mark.slow
def test_up_serves_runs_workers_restarts_and_stops_on_sigterm(settings: Settings) -> None:
    port = free_port()
    proc = subprocess.Popen(
        voxmem_cmd("up", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
        env=settings_env(settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=60, proc=proc)
        deadline = time.monotonic() + 30
        workers: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            workers = httpx.get(f"{base}/health").json()["checks"]["workers"]["heartbeats"]
            if len(workers) == 2:
                break
            time.sleep(0.3)
        assert len(workers) == 2
        victim = int(str(workers[0]["pid"]))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while time.monotonic() < deadline:
            beats = httpx.get(f"{base}/health").json()["checks"]["workers"]["heartbeats"]
            pids = {int(b["pid"]) for b in beats}
            if len(pids) >= 2 and victim not in pids:
                break
            time.sleep(0.3)
        assert victim not in pids and len(pids) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0
    # every child went with it: nothing answers on the port any more
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health/live", timeout=1.0)
    # multiprocessing's resource tracker leaves a moment after its parent; allow it that.
    deadline = time.monotonic() + 10
    left = "?"
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        if not left.strip():
            break
        time.sleep(0.2)
    assert left.strip() == ""
