"""`voxmem tokens create|list|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from api.commands._runtime import database
from db.models import DEFAULT_TENANT
from db.tenancy import TenancyError, create_token, list_tokens, revoke_token

app = typer.Typer(help="Manage bearer tokens (stored hashed, shown once).", no_args_is_help=True)


@app.command("create")
def create(
    scope: Annotated[str, typer.Option(help="tool | init | admin")],
    tenant: Annotated[str, typer.Option(help="tenant slug")] = DEFAULT_TENANT,
    name: Annotated[str | None, typer.Option(help="a label for operators")] = None,
) -> None:
    """Print a new bearer token once, alone on the last line of stdout."""
    with database() as db:
        try:
            with db.write() as session:
                issued = create_token(session, tenant, scope, name)
        except TenancyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"token {issued.id} for tenant {issued.tenant}, scope {issued.scope} (shown once):")
    typer.echo(issued.token)


@app.command("list")
def list_(tenant: Annotated[str | None, typer.Option(help="tenant slug")] = None) -> None:
    with database() as db, db.read() as session:
        for tok, slug in list_tokens(session, tenant):
            status = "revoked" if tok.revoked_at else "active"
            used = tok.last_used_at.isoformat() if tok.last_used_at else "never"
            fields = [str(tok.id), slug, tok.scope, f"{tok.prefix}…", status, f"last used {used}"]
            typer.echo("\t".join([*fields, tok.name or ""]))


@app.command("revoke")
def revoke(token_id: int) -> None:
    with database() as db, db.write() as session:
        if not revoke_token(session, token_id):
            typer.echo(f"error: no active token {token_id}", err=True)
            raise typer.Exit(1)
    typer.echo(f"token {token_id} revoked")
