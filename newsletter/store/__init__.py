"""Persistence through SQLAlchemy Core.

`open_store(settings)` gives an `Engine` whose schema is created or upgraded.
The SQLite-specific bits (WAL, foreign keys, busy timeout) live in
`_sqlite_pragmas` and nowhere else, so PostgreSQL can follow.

The bottom of the pipeline: it may import only `newsletter.config` and
`newsletter.errors`.  Modules: `schema` (the tables), `mailings` (mailings,
deliveries, claims), `leases` (lease owners, the daemon lock, state),
`bulk` (one big write transaction), `upgrades` (the schema's upgrade steps).
The queries on subscribers, lists and memberships live with their stage, in
`newsletter.audience.members`.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from newsletter.config import Settings
from newsletter.errors import StoreError, database_reason
from newsletter.files import private_file
from newsletter.logging_setup import quiet_library_logs
from newsletter.store import upgrades as steps
from newsletter.store.bulk import (
    bulk_writes,
    checkpoint_after,
    parented_bulk_transaction,
    snapshot_transaction,
)
from newsletter.store.holders import holder_alive
from newsletter.store.schema import (
    PG_UID_FUNCTION,
    SCHEMA_VERSION,
    UID_FUNCTION,
    derived_uid,
    metadata,
    schema_version,
    state,
    use_postgresql_conditions,
)

__all__ = [
    "bulk_writes",
    "checkpoint_after",
    "close_all",
    "failure_reason",
    "insert_or_ignore",
    "newer_schema",
    "now",
    "one_at_a_time",
    "open_store",
    "open_url",
    "outgrown_message",
    "parented_bulk_transaction",
    "reading",
    "safe_url",
    "shared_value",
    "snapshot_transaction",
]

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def open_store(settings: Settings, *, dry_run: bool = False) -> Engine:
    """The configured database, created on first use and upgraded to this version.

    `dry_run`: a SQLite file that does not exist yet is not created (nor its
    folder); the dry run reads an empty store of its own instead, which goes
    away with this process.  "Write nothing" includes the database."""
    url = settings.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # Relative SQLite paths are relative to the configuration file, not the cwd.
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            url = "sqlite:///" + str((settings.base_dir / rel).resolve())
    try:
        if dry_run and _missing_sqlite_file(url):
            url = _scratch_sqlite_url()
        return open_url(url)
    except _BadUrl as exc:
        raise _named(exc, settings) from exc.__cause__


def _missing_sqlite_file(url: str) -> bool:
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise _BadUrl(f"cannot open database {safe_url(url)}: {database_reason(exc)}") from exc
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return False
    return not Path(parsed.database).exists()


def _scratch_sqlite_url() -> str:
    """An empty SQLite store in a private temporary folder, removed at exit."""
    folder = tempfile.mkdtemp(prefix="newsletter-dry-run-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return "sqlite:///" + str(Path(folder) / "newsletter.db")


def _named(exc: StoreError, settings: Settings) -> StoreError:
    """A URL that cannot be read, with where it came from: the configuration's
    `database.url`, or the environment variable that overrides it."""
    env = settings.database.url_env
    given = os.environ.get(env, "").strip()  # unset or empty: the file's URL, blank or not
    from_env = bool(given) and given == settings.database.url
    message = exc.message + (f" (the URL is ${env})" if from_env else "")
    if re.match(r"postgres(\+\w+)?://", settings.database.url, re.IGNORECASE):
        message += "; write postgresql:// (SQLAlchemy no longer reads postgres://)"
    return StoreError(message, key="database.url")


class _BadUrl(StoreError):
    """The URL itself: unreadable, or a database that is not supported."""


def safe_url(url: str) -> str:
    """The URL for messages and logs: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<an unreadable database URL>"


_OPENED: weakref.WeakSet[Engine] = weakref.WeakSet()  # every engine made, for `close_all`


SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def open_url(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise _BadUrl(f"cannot open database {safe_url(url)}: {database_reason(exc)}") from exc
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise _BadUrl(
            f"cannot open database {safe_url(url)}: "
            "only sqlite:/// and postgresql:// databases are supported"
        )
    try:
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            # Made empty and 0600 before SQLite opens it (SQLite would use
            # 0644 & ~umask); its -wal and -shm files copy the database's mode.
            private_file(Path(parsed.database))
        engine = create_engine(url, future=True)
        quiet_library_logs()  # a lost connection's pool warning: one line, no traceback
        _OPENED.add(engine)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            use_postgresql_conditions()
        upgrade(engine)
        return engine
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"cannot open database {safe_url(url)}: {database_reason(exc)}") from exc
    except ImportError as exc:  # postgresql+<driver> whose driver is not installed
        raise StoreError(f"cannot open database {safe_url(url)}: {database_reason(exc)}") from exc


def close_all() -> None:
    """Close the pooled connections of every engine still open: the command
    line's exit leaves its objects to the system, not to the collector
    (`newsletter.__main__`), so SQLite still removes its -wal and -shm files."""
    for engine in list(_OPENED):
        engine.dispose()


SQLITE_PAGE_SIZE = 4096


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The one SQLite-only place: WAL lets readers (preview, status) run beside a
    # sending process; the busy timeout makes concurrent writers wait, not fail.
    dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take over
    cur = dbapi_conn.cursor()
    # Taken only by a database not created yet (this precedes WAL mode, after
    # which no page size changes): an existing file keeps its own.  SQLite's
    # default, on purpose (issue 13): 8 or 16 kB pages took a third off an
    # import merge's write lock under heavy load, but no end-to-end import
    # got faster in interleaved rounds, while every group commit of delivery
    # outcomes writes whole pages to the WAL (+0.008 s of CPU per 1,000
    # messages at 8 kB, +0.016 s at 16 kB).  docs/subscribers.md, Performance.
    cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    # Derived uids are read in SQL (`store.uids`); SQLite has no digest of its own.
    dbapi_conn.create_function(UID_FUNCTION, 2, derived_uid, deterministic=True)


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


def insert_or_ignore(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    conflict: Sequence[str],
    *,
    any_unique: bool = False,
) -> bool:
    """INSERT … ON CONFLICT (conflict) DO NOTHING; True when the row was inserted.

    Creation that several processes may attempt at once (a list, a
    subscriber, a mailing, a state row): the loser finds the winner's row
    instead of failing with a unique violation, on PostgreSQL and SQLite alike.
    `any_unique`: a conflict on any unique index counts (no arbiter), for a
    table with a second unique index that `conflict` implies (a racing
    insert can reach that one first, and an arbiter covers only its own).
    """
    insert: Any
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = (
        insert(table)
        .values(values)
        .on_conflict_do_nothing(index_elements=None if any_unique else conflict)
        # rowcount is not reliable here (psycopg with SQLAlchemy's implicit RETURNING)
        .returning(*(table.c[name] for name in conflict))
    )
    return conn.execute(statement).first() is not None


@contextmanager
def one_at_a_time(engine: Engine, step: str) -> Iterator[bool]:
    """True when this process may do `step` now; False when another does it.

    For the daemon's steps that must not run twice at once across several
    daemons on one PostgreSQL (reading the bounce mailbox, a digest's cron
    state): a transaction-level advisory lock, tried, never waited for, and
    released when the block ends (or the process dies).  SQLite has one
    daemon (the daemon lock), so the answer there is always True.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = int.from_bytes(hashlib.sha256(f"step:{step}".encode()).digest()[:8], "big", signed=True)
    try:
        conn = engine.connect()
        transaction = conn.begin()
        won = bool(conn.scalar(select(func.pg_try_advisory_xact_lock(key))))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot take the lock for {step}: {database_reason(exc)}") from exc
    try:
        yield won
    finally:
        try:
            transaction.rollback()  # nothing was written on it: this only unlocks
        finally:
            conn.close()


def failure_reason(exc: BaseException) -> str | None:
    """What went wrong, on one line, when `exc` is the store failing at its
    work (the server gone, a lock held, a full disk), else None.

    Such a failure is the operator's to fix or to wait out, and its text is
    enough; anything else from SQLAlchemy (a statement the database cannot
    compile, a constraint a bug broke) is a bug and keeps its traceback."""
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        return database_reason(exc)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return database_reason(exc)
    return None


def reading(engine: Engine) -> Connection:
    """A connection for reads only (status, listings, the web app).

    Use it as a context manager.  It does not take SQLite's write lock, so a
    long import or a sending process never makes it wait; a write through it
    is refused by SQLite with "attempt to write a readonly database"-style
    errors only if another writer holds the lock, so do not write with it.
    """
    return engine.connect().execution_options(**{READ_ONLY: True})


def shared_value(engine: Engine, key: str, candidate: str) -> str:
    """The state row `key`, created with `candidate` by whoever comes first.

    One value for the whole deployment (the unsubscribe secret): processes
    starting together on several hosts all get the winner's value.  Once it
    exists it is only read: no write lock for what every command asks.
    """
    from newsletter.store.schema import state

    try:
        with reading(engine) as conn:
            found = conn.scalar(select(state.c.value).where(state.c.key == key))
        if found is not None:
            return str(found)
        with engine.begin() as conn:
            row = {"key": key, "value": candidate, "updated_at": now()}
            if insert_or_ignore(conn, state, row, ("key",)):
                return candidate
            return str(conn.execute(select(state.c.value).where(state.c.key == key)).scalar_one())
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot read or create the shared value {key!r}: {database_reason(exc)}"
        ) from exc


# Each step upgrades the schema from version N-1 to N (`store.upgrades`).
# Version 1 is the initial schema created by metadata.create_all.
UPGRADES: dict[int, Callable[[Connection], None]] = {
    2: steps.upgrade_to_2,
    3: steps.upgrade_to_3,
    4: steps.upgrade_to_4,
    5: steps.upgrade_to_5,
    6: steps.upgrade_to_6,
    7: steps.upgrade_to_7,
    8: steps.upgrade_to_8,
    9: steps.upgrade_to_9,
    10: steps.upgrade_to_10,
    11: steps.upgrade_to_11,
}

# Any constant will do: it only has to be the same in every newsletter process.
SCHEMA_LOCK = 0x6E6C_7363_6865_6D61  # "nlschema"


def upgrade(engine: Engine) -> int:
    """Create missing tables and run pending upgrade steps; returns the version.

    On PostgreSQL, processes starting together on an empty database would
    race to create the same tables; a transaction-level advisory lock makes
    them take turns (DDL is transactional there: the second sees the tables).
    SQLite's BEGIN IMMEDIATE already serialises them.  Both are taken only
    when `_up_to_date` finds something to do: every command opens the store.
    """
    if _up_to_date(engine):
        return SCHEMA_VERSION
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
        fresh = not inspect(conn).has_table("schema_version")
        metadata.create_all(conn)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(PG_UID_FUNCTION)  # what `store.uids` calls (schema 11)
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
        if current < SCHEMA_VERSION:
            _no_older_daemon(conn)
            _run_upgrades(conn, current)
        return SCHEMA_VERSION


# The daemon lock's row in `state` (newsletter.daemon.lock, unchanged since version 1).
DAEMON_LOCK_KEY = "daemon.lock"


def _no_older_daemon(conn: Connection) -> None:
    """Refuse to upgrade under a running daemon: it is an older newsletter's
    (a current one would have upgraded), it never checks the version again,
    and it would go on writing the old way into the new schema.  Its lock
    row names it while it lives (its pid on this host, else a fresh
    heartbeat: `holders.holder_alive`; SQLite: on PostgreSQL daemons hold
    no such row)."""
    lock = conn.execute(
        select(state.c.value, state.c.expires_at, state.c.number).where(
            state.c.key == DAEMON_LOCK_KEY
        )
    ).first()
    if lock is None or not holder_alive(lock.value, lock.expires_at, now(), lock.number):
        return
    raise StoreError(
        f"a newsletter daemon ({lock.value}) is running on this database, from an older "
        "newsletter: stop it, then run this again (the database must be upgraded to "
        f"schema version {SCHEMA_VERSION} first, and that daemon would not know it)"
    )


def _run_upgrades(conn: Connection, current: int) -> None:
    # Said before and after: a step can rewrite a big table in one statement
    # (version 7 on PostgreSQL: the whole ledger), which shows no progress.
    log.info(
        "upgrading the database from schema version %d to %d (one transaction; "
        "a big ledger can take a while)",
        current,
        SCHEMA_VERSION,
    )
    started = time.monotonic()
    for version in range(current + 1, SCHEMA_VERSION + 1):
        UPGRADES[version](conn)
        conn.execute(schema_version.insert().values(version=version, applied_at=now()))
    log.info(
        "upgraded the database to schema version %d in %.1f s",
        SCHEMA_VERSION,
        time.monotonic() - started,
    )


def newer_schema(engine: Engine) -> int | None:
    """The database's schema version when a newer newsletter has moved it past
    this one's, else None (a failed read too: outages are the caller's to see).

    What a long-running process asks now and then: on PostgreSQL, where any
    number of daemons share the store and hold no lock row, a newer binary
    started beside them upgrades the schema under them (`upgrade` refuses
    only under a SQLite daemon's row), and they must stop rather than go on
    writing the old way."""
    try:
        with reading(engine) as conn:
            current = conn.scalar(select(func.max(schema_version.c.version)))
    except SQLAlchemyError:
        return None
    return int(current) if current is not None and current > SCHEMA_VERSION else None


def outgrown_message(version: int) -> str:
    """What a long-running process says as it stops for `newer_schema`."""
    return (
        f"the database was upgraded to schema version {version} by a newer newsletter "
        f"(this one knows {SCHEMA_VERSION}); stopping: upgrade newsletter here, "
        "then start it again"
    )


def _up_to_date(engine: Engine) -> bool:
    """True when the database is at this version with every table there, read
    without the write lock (SQLite) or the advisory lock (PostgreSQL).

    That is all `upgrade` could change: create_all adds only missing tables
    (with their indexes), the steps only move the version on, and on
    PostgreSQL the uid function is made as `PG_UID_FUNCTION` says (a store of
    an earlier build of version 11 had none, or an IMMUTABLE one).  Anything
    else, a failed read included, takes the locked path, which decides and
    reports.
    """
    try:
        with reading(engine) as conn:
            if not set(metadata.tables) <= set(inspect(conn).get_table_names()):
                return False
            current = conn.scalar(select(func.max(schema_version.c.version)))
            if conn.dialect.name == "postgresql" and not _uid_function_made(conn):
                return False
    except SQLAlchemyError:
        return False
    return current == SCHEMA_VERSION


def _uid_function_made(conn: Connection) -> bool:
    """Whether PostgreSQL has `PG_UID_FUNCTION` as this version makes it (STABLE)."""
    volatility = conn.exec_driver_sql(
        "SELECT provolatile FROM pg_proc WHERE oid = "
        f"to_regprocedure('{UID_FUNCTION}(bigint, text)')"
    ).scalar()
    return volatility == "s"
