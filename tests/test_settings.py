"""One settings object; production refuses placeholder secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from db.settings import Settings


def test_defaults_match_the_contract() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.database_url == "sqlite:///data/voxmem.db"
    assert s.embedder == "local"
    assert s.extractor == "local"
    assert s.llm_model == "gpt-4o-mini"
    assert s.embedding_model == "text-embedding-3-small"
    assert s.log_format == "json"
    assert s.sqlite_path == Path("data/voxmem.db")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXMEM_WEBHOOK_SECRETS", "a, b ,,c")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.webhook_secret_list == ["a", "b", "c"]
    assert s.openai_api_key == "sk-test"
    assert s.openai_base_url == "http://127.0.0.1:1/v1"


def test_dotenv_file_is_supported(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("VOXMEM_EXTRACTOR=llm\nVOXMEM_PORT=9001\n")
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.extractor == "llm"
    assert s.port == 9001


@pytest.mark.parametrize(
    ("keys", "secrets", "lookup"),
    [
        ("", "wsec_real_value_1234", "lk_real_value_123456"),
        (Fernet.generate_key().decode(), "changeme", "lk_real_value_123456"),
        (Fernet.generate_key().decode(), "wsec_real_value_1234", ""),
    ],
)
def test_production_refuses_missing_or_placeholder_secrets(
    keys: str, secrets: str, lookup: str
) -> None:
    with pytest.raises(ValidationError, match="refusing to start in production"):
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            environment="production",
            encryption_keys=keys,
            webhook_secrets=secrets,
            lookup_key=lookup,
        )


def test_production_starts_with_real_secrets() -> None:
    s = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="production",
        encryption_keys=Fernet.generate_key().decode(),
        webhook_secrets="wsec_real_value_1234",
        lookup_key="lk_real_value_123456",
    )
    assert s.environment == "production"


def test_no_module_reads_the_environment_directly() -> None:
    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for package in ("api", "worker", "memory", "db"):
        for path in (repo / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                code = line.split("#", 1)[0]
                # Exporting a variable to child processes and libraries is allowed; reading is not.
                writes = re.search(r"os\.environ(\[[^]]+\]\s*=[^=]|\.setdefault\()", code)
                if ("os.environ" in code or "os.getenv" in code) and not writes:
                    offenders.append(f"{path.relative_to(repo)}: {line.strip()}")
    assert offenders == [], offenders
