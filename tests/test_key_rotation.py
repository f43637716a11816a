"""`voxmem keys rotate`: encrypt under A, configure B,A, rotate (interrupted, then resumed),
drop A, and everything still decrypts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, text

from db import crypto
from db.bootstrap import bootstrap
from db.engine import Database, open_database
from db.models import DEFAULT_TENANT, Memory, User, WebhookEvent
from db.rotation import encrypted_columns
from db.settings import Settings
from db.tenancy import require_tenant
from tests.conftest import REPO, make_settings, settings_env, voxmem_cmd

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()


def keys_cli(settings: Settings, keys: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings)
    env["VOXMEM_ENCRYPTION_KEYS"] = keys
    return subprocess.run(
        voxmem_cmd("keys", *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def raw_values(db: Database) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with db.read() as session:
        for target in encrypted_columns():
            rows = session.execute(
                text(
                    f"SELECT {target.column.name} FROM {target.table.name} "  # noqa: S608
                    f"WHERE {target.column.name} IS NOT NULL"
                )
            ).scalars()
            out[target.name] = [str(v) for v in rows]
    return out


@pytest.fixture
def deployment_under_a(tmp_path: Path) -> tuple[Settings, Database]:
    settings = make_settings(tmp_path / "data", encryption_keys=KEY_A)
    bootstrap(settings, issue_tokens=False)
    crypto.configure(crypto.load_keyring(settings))
    db = open_database(settings)
    with db.write() as session:
        tenant = require_tenant(session, DEFAULT_TENANT)
        for i in range(7):
            user = User(user_id=f"usr_{i}", tenant_id=tenant.id, name=f"Caller {i}")
            session.add(user)
            session.flush()
            session.add(
                Memory(
                    user_id=user.user_id, content=f"likes tea number {i}", sector_type="semantic"
                )
            )
            session.add(
                WebhookEvent(
                    tenant_id=tenant.id,
                    event_id=f"post_call_transcription:c{i}",
                    event_type="post_call_transcription",
                    payload=f'{{"conversation": {i}}}',
                )
            )
    return settings, db


def test_rotate_resumable_then_old_key_dropped(
    deployment_under_a: tuple[Settings, Database],
) -> None:
    settings, db = deployment_under_a
    before = raw_values(db)
    assert sum(len(v) for v in before.values()) >= 22  # secret + 7 users, memories, events
    a = Fernet(KEY_A.encode())
    assert all(a.decrypt(v.encode()) for vs in before.values() for v in vs)

    # An interrupted run: a few small batches, then stop.
    partial = keys_cli(
        settings, f"{KEY_B},{KEY_A}", "rotate", "--batch-size", "2", "--max-batches", "3"
    )
    assert partial.returncode == 0, partial.stderr
    assert "run again to continue" in partial.stdout
    status = keys_cli(settings, f"{KEY_B},{KEY_A}", "status")
    left = int(status.stdout.strip().splitlines()[-1].split(";")[1].split()[0])
    assert 0 < left < sum(len(v) for v in before.values())

    # Dropping A now would lose data: the rows not yet rotated fail to decrypt under B alone.
    b = Fernet(KEY_B.encode())
    undecryptable = 0
    for values in raw_values(db).values():
        for value in values:
            try:
                b.decrypt(value.encode())
            except InvalidToken:
                undecryptable += 1
    assert undecryptable == left

    done = keys_cli(settings, f"{KEY_B},{KEY_A}", "rotate", "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted {left} values" in done.stdout
    assert "old keys can now be removed" in done.stdout
    again = keys_cli(settings, f"{KEY_B},{KEY_A}", "rotate")
    assert "re-encrypted 0 values" in again.stdout

    # Drop A: every stored value decrypts with B alone, to the same plaintext as before.
    after = raw_values(db)
    for name, values in before.items():
        assert sorted(a.decrypt(v.encode()) for v in values) == sorted(
            b.decrypt(v.encode()) for v in after[name]
        ), name
    only_b = make_settings(settings.data_dir, encryption_keys=KEY_B)
    crypto.configure(crypto.load_keyring(only_b))
    with db.read() as session:
        names = sorted(session.scalars(select(User.name)))
        contents = sorted(session.scalars(select(Memory.content)))
    assert names == [f"Caller {i}" for i in range(7)]
    assert contents == [f"likes tea number {i}" for i in range(7)]
    status = keys_cli(settings, KEY_B, "status")
    assert status.stdout.strip().endswith("1 keys configured; 0 values not under the primary key")


def test_values_no_key_can_read_are_reported_and_left_alone(
    deployment_under_a: tuple[Settings, Database],
) -> None:
    settings, db = deployment_under_a
    foreign = Fernet(KEY_C.encode()).encrypt(b"written under a lost key").decode()
    with db.write() as session:
        session.execute(text("UPDATE users SET name = :v WHERE user_id = 'usr_3'"), {"v": foreign})
    result = keys_cli(settings, f"{KEY_B},{KEY_A}", "rotate")
    assert result.returncode == 1
    assert "1 values cannot be decrypted" in result.stderr
    with db.read() as session:
        stored = session.execute(text("SELECT name FROM users WHERE user_id = 'usr_3'")).scalar()
    assert stored == foreign
