"""`voxmem reembed` (CONTRACT §2): recompute memory embeddings with the configured embedder.

Run after changing the embedder or its model: vectors of two models are never compared, so
until then a memory without a vector of the current model is invisible to retrieval. One
transaction per user, so an interrupted run keeps what it finished and a re-run resumes with the
users still missing vectors. Vectors of other models stay (a deployment may switch back).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from sqlalchemy import func, select

from api.commands._runtime import database
from db.models import Memory
from db.settings import get_settings
from memory.embedders import get_embedder
from memory.store import reembed_user, users_missing_embeddings


def reembed(
    user: Annotated[str | None, typer.Option(help="only this user id")] = None,
    every_user: Annotated[
        bool, typer.Option("--all", help="every user, not only those missing vectors")
    ] = False,
) -> None:
    """Recompute memory embeddings with the configured embedder (after a model change)."""
    settings = get_settings()
    embedder = get_embedder(settings)
    started = time.monotonic()
    with database() as db:
        with db.read() as session:
            if user is not None:
                users = [user]
            elif every_user:
                users = list(
                    session.scalars(
                        select(Memory.user_id).group_by(Memory.user_id).order_by(Memory.user_id)
                    )
                )
            else:
                users = users_missing_embeddings(session, embedder.name)
        if not users:
            typer.echo(f"every memory has a {embedder.name} vector; nothing to do")
            return
        total = 0
        for i, user_id in enumerate(users, 1):
            with db.write() as session:
                done = reembed_user(session, user_id, embedder)
            total += done
            typer.echo(f"[{i}/{len(users)}] {user_id}: {done} memories")
        with db.read() as session:
            left = len(users_missing_embeddings(session, embedder.name))
            memories = session.scalar(select(func.count()).select_from(Memory)) or 0
    typer.echo(
        f"re-embedded {total} memories of {len(users)} users with {embedder.name} in "
        f"{time.monotonic() - started:.1f}s; {memories} memories in the database, "
        f"{left} users still missing vectors"
    )
    if left:
        raise typer.Exit(1)
