"""`voxmem demo` against a real API process and a real worker process (issue 7 §8)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import REPO, LiveServer, settings_env, voxmem_cmd


@pytest.fixture
def worker(live_server: LiveServer) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        voxmem_cmd("worker", "--processes", "1"),
        env=settings_env(live_server.deployment.settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def demo_cmd(live_server: LiveServer, *extra: str) -> list[str]:
    d = live_server.deployment
    return voxmem_cmd(
        "demo",
        "--url",
        live_server.base_url,
        "--secret",
        d.webhook_secret,
        "--init-token",
        d.tokens["init"],
        "--tool-token",
        d.tokens["tool"],
        *extra,
    )


def test_demo_plays_the_story_with_continuity_and_preferences(
    live_server: LiveServer, worker: subprocess.Popen[bytes]
) -> None:
    env = settings_env(live_server.deployment.settings)
    out = subprocess.run(
        demo_cmd(live_server, "--admin-token", live_server.deployment.tokens["admin"], "--json"),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    first, second, third = result["calls"]
    assert all(c["webhook"] == "accepted" for c in result["calls"])
    assert first["dynamic_variables"]["caller_status"] == "new"
    # Call 2 knows about call 1: the session context and the fix that worked.
    v2 = second["dynamic_variables"]
    assert v2["caller_status"] == "returning"
    assert "Login problem" in v2["memory_context"] and "invalid password" in v2["memory_context"]
    assert any("fixed by" in m["content"] for m in second["tool"]["memories"])
    # Call 3 starts with learned preferences (seed 004: formal, topics login).
    v3 = third["dynamic_variables"]
    assert v3["communication_style"] == "formal" and v3["common_topics"] == "login"
    # After call 3 the profile is enriched (third call) and the graph has the company.
    assert result["profile"]["company_name"] == "Brightside Dental"
    assert set(result["after"]["common_topics"].split(", ")) == {"login", "billing"}
    assert "Brightside Dental" in {e["name"] for e in result["graph"]["entities"]}


def test_demo_reads_credentials_file_and_prints(
    live_server: LiveServer, worker: subprocess.Popen[bytes]
) -> None:
    settings = live_server.deployment.settings
    d = live_server.deployment
    (settings.data_dir / "credentials.txt").write_text(
        "# voxmem first-run credentials\n"
        f"webhook_secret (ElevenLabs post-call HMAC) = {d.webhook_secret}\n"
        f"init_token = {d.tokens['init']}\ntool_token = {d.tokens['tool']}\n"
    )
    out = subprocess.run(
        voxmem_cmd("demo", "--url", live_server.base_url),
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert "Call 2 (day 2): follow-up" in out.stdout
    assert "communication_style   formal" in out.stdout
    # Without credentials it fails with a one-line reason.
    bad = subprocess.run(
        voxmem_cmd("demo", "--url", live_server.base_url, "--secret", "wrong"),
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "401" in bad.stderr
