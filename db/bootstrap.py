"""`voxmem migrate`: schema, key files, default tenant and first-run credentials."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from db import crypto
from db.engine import open_database
from db.migrate import upgrade_to_head
from db.models import DEFAULT_TENANT, ApiToken
from db.settings import Settings
from db.tenancy import (
    active_webhook_secrets,
    add_webhook_secret,
    create_token,
    ensure_default_tenant,
)


@dataclass
class BootstrapResult:
    created_key_files: list[Path]
    credentials_file: Path | None


def credentials_path(settings: Settings) -> Path:
    return settings.data_dir / "credentials.txt"


def bootstrap(settings: Settings, *, issue_tokens: bool = True) -> BootstrapResult:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    created = crypto.ensure_key_files(settings)
    crypto.configure(crypto.load_keyring(settings))
    upgrade_to_head(settings)
    db = open_database(settings)
    lines: list[str] = []
    try:
        with db.write() as session:
            tenant, generated_secret = ensure_default_tenant(session, settings.webhook_secret_list)
            known = set(active_webhook_secrets(session, tenant.id))
            for secret in settings.webhook_secret_list:
                if secret not in known:
                    add_webhook_secret(session, tenant, secret)
            if generated_secret:
                lines.append(f"webhook_secret (ElevenLabs post-call HMAC) = {generated_secret}")
            has_tokens = session.scalar(
                select(func.count()).select_from(ApiToken).where(ApiToken.tenant_id == tenant.id)
            )
            if issue_tokens and not has_tokens:
                for scope in ("tool", "init", "admin"):
                    issued = create_token(session, DEFAULT_TENANT, scope, name=f"first-run {scope}")
                    lines.append(f"{scope}_token = {issued.token}")
    finally:
        db.dispose()
    cred_file = None
    if lines:
        cred_file = credentials_path(settings)
        fd = os.open(cred_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write("# voxmem first-run credentials (default tenant). ")
            fh.write("Keep secret; delete once stored.\n")
            fh.write("\n".join(lines) + "\n")
    return BootstrapResult(created_key_files=created, credentials_file=cred_file)
