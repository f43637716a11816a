"""The `voxmem` command line (CONTRACT §2). It is the composition root: it may start API and
worker processes, so it is the one module allowed to reach both."""

from __future__ import annotations

import os

# Before numpy loads anywhere: one BLAS thread. On a shared 2-core host numpy's default pool
# made a 10k-memory search 8 ms p50 instead of 1 ms; children inherit the variables.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Annotated

import typer

from api.commands import backup, keys, migrate_data, reembed, tenants, tokens, users
from api.commands import queue as queue_commands
from api.commands.demo import demo as demo_command
from db.settings import Settings, get_settings

app = typer.Typer(
    name="voxmem",
    help="Long-term memory gateway for ElevenLabs voice agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(tenants.app, name="tenants")
app.add_typer(tokens.app, name="tokens")
app.add_typer(queue_commands.app, name="queue")
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)
app.command("demo")(demo_command)  # issue 7: seed 004's three-call story against a live service
app.add_typer(keys.app, name="keys")
app.add_typer(users.app, name="users")
app.command("migrate-data")(migrate_data.migrate_data)
app.command("reembed")(reembed.reembed)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def migrate() -> None:
    """Bring the schema to head; create the data dir, key files and the default tenant."""
    from db.bootstrap import bootstrap

    settings = get_settings()
    try:
        result = bootstrap(settings)
    except Exception as exc:
        raise fail(f"migration failed: {exc}") from exc
    for path in result.created_key_files:
        typer.echo(f"created key file {path} (mode 0600)")
    if result.credentials_file is not None:
        typer.echo(f"first-run webhook secret and tokens written to {result.credentials_file}")
    typer.echo("schema at head")
    _hint_reembed(settings)


def _hint_reembed(settings: Settings) -> None:
    """After an upgrade that changed the embedding model, memories without a vector of the new
    model are invisible to retrieval until `voxmem reembed` runs: say so at deploy time."""
    from db.engine import open_database
    from memory.embedders import get_embedder
    from memory.store import users_missing_embeddings

    model = get_embedder(settings).name
    db = open_database(settings)
    try:
        with db.read() as session:
            users = users_missing_embeddings(session, model)
    finally:
        db.dispose()
    if users:
        typer.echo(
            f"note: {len(users)} users have memories without a {model} "
            "vector (an embedding model change); they are not retrievable until "
            "`voxmem reembed` has run"
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
    workers: Annotated[int, typer.Option(help="API processes")] = 1,
) -> None:
    """Run the HTTP API only."""
    import uvicorn

    from db.metrics import prepare_multiproc_dir

    settings = get_settings()
    # Shared with the workers' samples; not wiped: the workers may already be writing there.
    prepare_multiproc_dir(settings, wipe=False)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        # Idle keep-alive connections close after 5 s (uvicorn's only timer: it covers the gap
        # between requests, not a slow head or body).
        timeout_keep_alive=5,
        # Slow loris: httptools with a deadline on each request's head (and a new connection's
        # first byte); bodies get theirs in api/security/deadline.py.
        http="api.security.head_deadline:HeadDeadlineProtocol",
    )


@app.command()
def worker(
    processes: Annotated[int, typer.Option(help="worker processes")] = 2,
) -> None:
    """Run queue worker processes only."""
    from db.metrics import prepare_multiproc_dir
    from worker.main import run_worker_process, supervise_workers

    prepare_multiproc_dir(get_settings(), wipe=False)
    if processes < 1:
        raise fail("--processes must be at least 1")
    if processes == 1:
        run_worker_process()
        return
    raise typer.Exit(supervise_workers(processes))


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Migrate, then run the API and the workers under one supervisor (Ctrl-C stops all)."""
    from db.metrics import prepare_multiproc_dir

    settings = get_settings()
    migrate()
    # This supervisor owns the whole process tree, so last run's samples go (children inherit
    # PROMETHEUS_MULTIPROC_DIR from our environment).
    prepare_multiproc_dir(settings, wipe=True)
    n_workers = workers if workers is not None else settings.workers
    exe = [sys.executable, "-m", "api.cli"]
    api_cmd = [*exe, "serve", "--host", host or settings.host, "--port", str(port or settings.port)]
    worker_cmd = [*exe, "worker", "--processes", str(n_workers)]
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    commands = {"api": api_cmd, "workers": worker_cmd}
    restarts = dict.fromkeys(commands, 0)
    for name, cmd in commands.items():
        procs[name] = subprocess.Popen(cmd)
    typer.echo(
        f"voxmem up: API on http://{host or settings.host}:{port or settings.port}, "
        f"{n_workers} worker processes (Ctrl-C to stop)"
    )
    while not stopping:
        time.sleep(0.5)
        for name, proc in list(procs.items()):
            if proc.poll() is not None and not stopping:
                restarts[name] += 1
                typer.echo(f"{name} exited with {proc.returncode}; restarting", err=True)
                time.sleep(min(30.0, 0.5 * 2 ** min(restarts[name], 6)))
                procs[name] = subprocess.Popen(commands[name])
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    typer.echo("voxmem stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
