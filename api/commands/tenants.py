"""`voxmem tenants create|list`."""

from __future__ import annotations

import typer
from sqlalchemy import select

from api.commands._runtime import database
from db.models import Tenant, WebhookSecret
from db.tenancy import (
    TenancyError,
    active_webhook_secrets,
    add_webhook_secret,
    create_tenant,
    get_tenant,
    require_tenant,
)
from db.types import utcnow

app = typer.Typer(help="Manage tenants.", no_args_is_help=True)


@app.command("create")
def create(slug: str) -> None:
    """Create a tenant; prints its webhook secret once, alone on the last line."""
    with database() as db:
        try:
            with db.write() as session:
                tenant, secret = create_tenant(session, slug)
        except TenancyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"tenant {tenant.slug} created; webhook secret (shown once):")
    typer.echo(secret)


@app.command("list")
def list_() -> None:
    with database() as db, db.read() as session:
        for tenant in session.scalars(select(Tenant).order_by(Tenant.id)):
            typer.echo(f"{tenant.slug}\t{tenant.created_at.isoformat()}")


@app.command("add-secret")
def add_secret(slug: str) -> None:
    """Rotation, step 1: add a second ElevenLabs webhook secret (both verify until the old one
    is revoked). Prints the new secret once, alone on the last line."""
    with database() as db:
        try:
            with db.write() as session:
                tenant = require_tenant(session, slug)
                secret = add_webhook_secret(session, tenant)
        except TenancyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"new webhook secret for tenant {slug} (shown once; the old ones still verify):")
    typer.echo(secret)


@app.command("secrets")
def secrets_(slug: str) -> None:
    """List a tenant's webhook secrets by id (never their values)."""
    with database() as db, db.read() as session:
        tenant = get_tenant(session, slug)
        if tenant is None:
            typer.echo(f"error: no tenant {slug!r}", err=True)
            raise typer.Exit(1)
        rows = session.scalars(
            select(WebhookSecret)
            .where(WebhookSecret.tenant_id == tenant.id)
            .order_by(WebhookSecret.id)
        )
        for row in rows:
            status = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
            typer.echo(f"{row.id}\tcreated {row.created_at.isoformat()}\t{status}")


@app.command("revoke-secret")
def revoke_secret(slug: str, secret_id: int) -> None:
    """Rotation, step 2: stop accepting an old webhook secret (refuses to revoke the last)."""
    with database() as db:
        with db.write() as session:
            tenant = get_tenant(session, slug)
            row = session.get(WebhookSecret, secret_id)
            if tenant is None or row is None or row.tenant_id != tenant.id or row.revoked_at:
                typer.echo(f"error: no active secret {secret_id} in tenant {slug!r}", err=True)
                raise typer.Exit(1)
            if len(active_webhook_secrets(session, tenant.id)) <= 1:
                typer.echo("error: refusing to revoke the tenant's last active secret", err=True)
                raise typer.Exit(1)
            row.revoked_at = utcnow()
    typer.echo(f"secret {secret_id} of tenant {slug} revoked")
