"""Docker files cannot be run here (no engine); check what can be checked."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import REPO, voxmem_cmd


def test_compose_file_parses_and_names_the_services() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"migrate", "api", "worker"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "api", "worker"):
        assert "voxmem-data:/srv/voxmem/data" in services[name]["volumes"]


def _commands_in_dockerfile() -> list[list[str]]:
    text = (REPO / "Dockerfile").read_text()
    cmds = [re.findall(r'"([^"]+)"', m) for m in re.findall(r"^CMD (\[.*\])$", text, re.M)]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        if "command" in svc and isinstance(svc["command"], list) and svc["command"][0] == "voxmem":
            cmds.append(svc["command"])
    return cmds


def test_every_command_the_images_run_exists_in_the_cli() -> None:
    cmds = _commands_in_dockerfile()
    assert cmds, "no commands found"
    for cmd in cmds:
        assert cmd[0] == "voxmem"
        result = subprocess.run(
            voxmem_cmd(cmd[1], "--help"), capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert result.returncode == 0, (cmd, result.stderr)
        for flag in (a for a in cmd[2:] if a.startswith("--")):
            assert flag in result.stdout, (cmd, flag)


def test_dockerfile_runs_as_non_root_with_a_liveness_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER voxmem$", text, re.M)
    assert "/health/live" in text
    assert text.count("FROM ") >= 2  # multi-stage
