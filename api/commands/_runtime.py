"""Shared set-up for CLI commands that touch the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from db import crypto
from db.engine import Database, open_database
from db.settings import get_settings


@contextmanager
def database() -> Iterator[Database]:
    settings = get_settings()
    try:
        crypto.configure(crypto.load_keyring(settings))
    except crypto.CryptoNotConfiguredError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    db = open_database(settings)
    try:
        yield db
    finally:
        db.dispose()
