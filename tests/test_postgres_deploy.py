"""The compose `postgres` profile: official pgvector image, api/worker pointed at it, and the
default SQLite services untouched."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import REPO


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return services


def test_postgres_profile_runs_the_same_image_against_pgvector() -> None:
    services = _services()
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg")
    for name in ("postgres", "migrate-pg", "api-pg", "worker-pg"):
        assert services[name]["profiles"] == ["postgres"], name
    for name in ("migrate-pg", "api-pg", "worker-pg"):
        env = services[name]["environment"]
        assert env["VOXMEM_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["VOXMEM_DATABASE_URL"].endswith("@postgres:5432/voxmem"), name
    assert services["migrate-pg"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api-pg", "worker-pg"):
        cond = services[name]["depends_on"]["migrate-pg"]["condition"]
        assert cond == "service_completed_successfully"


def test_default_services_stay_on_sqlite() -> None:
    services = _services()
    for name in ("migrate", "api", "worker"):
        assert "profiles" not in services[name]
        assert services[name]["environment"]["VOXMEM_DATABASE_URL"].startswith("sqlite:")
