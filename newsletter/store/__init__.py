"""Persistence through SQLAlchemy Core.

`open_store(settings)` gives an `Engine` whose schema is created or upgraded.
The SQLite-specific bits (WAL, foreign keys, busy timeout) live in
`_sqlite_pragmas` and nowhere else, so PostgreSQL can follow.

The bottom of the pipeline: it may import only `newsletter.config` and
`newsletter.errors`.  Modules: `schema` (the tables), `mailings` (mailings,
deliveries, claims), `leases` (lease owners, the daemon lock, state).  The
queries on subscribers, lists and memberships live with their stage, in
`newsletter.audience.members`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings
from newsletter.errors import StoreError
from newsletter.store.schema import SCHEMA_VERSION, metadata, schema_version

__all__ = ["now", "open_store", "open_url", "reading"]


def now() -> datetime:
    return datetime.now(UTC)


def open_store(settings: Settings) -> Engine:
    """The configured database, created on first use and upgraded to this version."""
    url = settings.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # Relative SQLite paths are relative to the configuration file, not the cwd.
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            url = "sqlite:///" + str((settings.base_dir / rel).resolve())
    return open_url(url)


def open_url(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, future=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        upgrade(engine)
        return engine
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"cannot open database {url}: {exc}") from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The one SQLite-only place: WAL lets readers (preview, status) run beside a
    # sending process; the busy timeout makes concurrent writers wait, not fail.
    dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take over
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(conn: Connection) -> None:
    # pysqlite's own transaction handling is off (isolation_level=None above);
    # BEGIN IMMEDIATE takes the write lock up front so that two processes
    # claiming work never deadlock on a read-to-write upgrade.  Connections
    # from `reading()` only read, so they take a plain (deferred) BEGIN and
    # never wait for, or block, a writer: WAL gives them a consistent snapshot.
    if conn.dialect.name == "sqlite":
        readonly = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


READ_ONLY = "newsletter_read_only"


def reading(engine: Engine) -> Connection:
    """A connection for reads only (status, listings, the web app).

    Use it as a context manager.  It does not take SQLite's write lock, so a
    long import or a sending process never makes it wait; a write through it
    is refused by SQLite with "attempt to write a readonly database"-style
    errors only if another writer holds the lock, so do not write with it.
    """
    return engine.connect().execution_options(**{READ_ONLY: True})


# Each step upgrades the schema from version N-1 to N.  Version 1 is the
# initial schema created by metadata.create_all.
UPGRADES: dict[int, Callable[[Connection], None]] = {}


def upgrade(engine: Engine) -> int:
    """Create missing tables and run pending upgrade steps; returns the version."""
    with engine.begin() as conn:
        fresh = not inspect(conn).has_table("schema_version")
        metadata.create_all(conn)
        current = conn.scalar(
            select(schema_version.c.version).order_by(schema_version.c.version.desc()).limit(1)
        )
        if current is None:
            current = SCHEMA_VERSION if fresh else 1
            conn.execute(schema_version.insert().values(version=current, applied_at=now()))
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database is at schema version {current}, newer than this "
                f"newsletter ({SCHEMA_VERSION}); upgrade newsletter"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            UPGRADES[version](conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=now()))
        return SCHEMA_VERSION
