"""`voxmem users forget|export` (CONTRACT §2): the same domain code as the admin API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from api.commands._runtime import database
from db.models import DEFAULT_TENANT
from db.settings import get_settings
from db.tenancy import get_tenant
from memory import privacy

app = typer.Typer(help="Privacy: export or erase everything about a user.", no_args_is_help=True)

TenantOpt = Annotated[str, typer.Option(help="tenant slug")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command("forget")
def forget(user_id: str, tenant: TenantOpt = DEFAULT_TENANT) -> None:
    """Erase the user everywhere: memories, embeddings, links, calls, turns, queued payloads."""
    with database() as db:
        try:
            with db.write() as session:
                row = get_tenant(session, tenant)
                if row is None:
                    raise _fail(f"no tenant {tenant!r}")
                report = privacy.forget_user(
                    session,
                    row.id,
                    user_id,
                    tombstone_days=get_settings().forget_tombstone_days,
                )
        except privacy.UserNotFound as exc:
            raise _fail(f"no user {user_id!r} in tenant {tenant!r}") from exc
    removed = ", ".join(f"{table} {n}" for table, n in sorted(report.deleted.items()) if n)
    typer.echo(f"user {user_id} forgotten ({removed or 'nothing else stored'})")
    if report.tombstone_expires_at is not None:
        typer.echo(
            f"late deliveries of their calls are dropped until "
            f"{privacy.iso(report.tombstone_expires_at)} ({report.tombstone_keys} hashed keys)"
        )


@app.command("export")
def export(user_id: str, tenant: TenantOpt = DEFAULT_TENANT) -> None:
    """Print everything stored about the user as one JSON document (decrypted)."""
    with database() as db:
        try:
            with db.read() as session:
                row = get_tenant(session, tenant)
                if row is None:
                    raise _fail(f"no tenant {tenant!r}")
                data = privacy.export_user(session, row.id, user_id)
        except privacy.UserNotFound as exc:
            raise _fail(f"no user {user_id!r} in tenant {tenant!r}") from exc
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
