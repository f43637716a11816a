"""`voxmem tenants create|list`."""

from __future__ import annotations

import typer
from sqlalchemy import select

from api.commands._runtime import database
from db.models import Tenant
from db.tenancy import TenancyError, create_tenant

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
