"""`voxmem queue stats [--json] | list [--status S] | retry ID | replay --dead-letter`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from api.commands._runtime import database
from db import queue as q
from db.models import QUEUE_STATUSES
from db.queue_stats import oldest_pending_age_secs, status_counts

app = typer.Typer(help="Operate the post-call event queue.", no_args_is_help=True)


@app.command("stats")
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Count events by status (pending, processing, completed, failed, dead_letter)."""
    with database() as db, db.read() as session:
        counts = status_counts(session)
        oldest = oldest_pending_age_secs(session)
    if as_json:
        typer.echo(json.dumps(counts))
        return
    for status in QUEUE_STATUSES:
        typer.echo(f"{status:<12}{counts[status]:>8}")
    typer.echo(f"oldest pending: {oldest:.0f}s")


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only events with this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="newest N events")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array on stdout")] = False,
) -> None:
    """Newest events first: id, status, type, attempts, conversation id, next run, last error."""
    if status is not None and status not in QUEUE_STATUSES:
        allowed = ", ".join(QUEUE_STATUSES)
        typer.echo(f"error: unknown status {status!r}; one of {allowed}", err=True)
        raise typer.Exit(2)
    with database() as db, db.read() as session:
        rows: list[dict[str, Any]] = [
            {
                "id": e.id,
                "tenant_id": e.tenant_id,
                "status": e.status,
                "type": e.event_type,
                "attempts": e.retry_count,
                "max_attempts": e.max_attempts,
                "conversation_id": e.conversation_id,
                "run_after": e.run_after.isoformat(),
                "created_at": e.created_at.isoformat(),
                "error": f"{e.error_class}: {e.error_message}" if e.error_message else None,
            }
            for e in q.list_events(session, status=status, limit=limit)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        error = f"\t{r['error'][:120]}" if r["error"] else ""
        typer.echo(
            f"{r['id']}\t{r['status']}\t{r['type']}\t{r['attempts']}/{r['max_attempts']}\t"
            f"{r['conversation_id'] or '-'}\t{r['run_after']}{error}"
        )


@app.command("retry")
def retry(event_id: int) -> None:
    """Requeue one failed or dead-lettered event now, with a fresh set of attempts."""
    with database() as db:
        try:
            with db.write() as session:
                q.retry(session, event_id)
        except q.QueueOperationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"event {event_id} requeued")


@app.command("replay")
def replay(
    dead_letter: Annotated[
        bool, typer.Option("--dead-letter", help="requeue every dead-lettered event")
    ] = False,
) -> None:
    """Requeue every dead-lettered event (errors are kept until they succeed)."""
    if not dead_letter:
        typer.echo("error: nothing selected; use --dead-letter", err=True)
        raise typer.Exit(2)
    with database() as db, db.write() as session:
        count = q.replay_dead_letters(session)
    typer.echo(f"{count} dead-lettered events requeued")
