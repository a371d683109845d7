"""Engine and sessions: one engine per process, created from the configured URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from miemss_node.errors import MiemssError
from miemss_node.queue.migrate import head_revision, upgrade


class DatabaseNotReady(MiemssError):
    """The database does not exist yet, or its schema is older than this version: start `miemss-node serve`
    (or `worker`) once; it creates and migrates the schema."""


def create_database_engine(url: str) -> Engine:
    """Create the engine and bring the schema up to date (Alembic migrations).

    SQLite runs in WAL mode with ``synchronous=FULL`` so a commit survives a power cut, and waits
    up to 30 s for a lock because receiver, settler, workers and sender write from several threads.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    upgrade(engine)
    return engine


def open_database_read_only(url: str) -> Engine:
    """An engine for commands that only read (``jobs``): nothing is created and nothing migrated.

    A SQLite file is opened read-only, so a typo in the path cannot leave an empty database behind.

    Raises
    ------
    DatabaseNotReady
        When the database does not exist, cannot be read, or its schema is not this version's.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            raise DatabaseNotReady(
                f"no database at {path}: the node has not run with this config yet (`miemss-node serve` creates it)"
            )
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 30})
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            from alembic.migration import MigrationContext

            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseNotReady(f"the database did not answer ({type(exc).__name__})") from exc
    if current != head_revision():
        engine.dispose()
        raise DatabaseNotReady(
            f"the database schema is at revision {current or 'none'}, this version needs {head_revision()}: "
            "start `miemss-node serve` once to migrate it"
        )
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (the callers read them afterwards)."""
    return sessionmaker(engine, expire_on_commit=False)
