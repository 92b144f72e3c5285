"""One big write transaction: a large SQLite page cache, the WAL checkpoint
after it rather than inside its COMMIT, and foreign-key checks off while
every row comes from a join on its parent rows (planning a mailing, an
import's merge).  PostgreSQL: plain transactions."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine

BULK_CACHE_KIB = 65536
# Planning appends in id order, so a smaller cache does nearly as well
# (1M rows: 5 % more CPU than with 64 MB), and the cache's pages stay in the
# process after it unless given back (`release_freed_memory`): with 64 MB a
# `send` of 200,000 peaked at 148 MB RSS, with 16 MB at 90 MB.
PLAN_CACHE_KIB = 16384
# Rows a big transaction must write before its cache is worth handing back
# (`release_freed_memory`): below this the default 2 MB cache holds the
# pages, nothing was freed, and a `send` to a few readers need not load ctypes.
GIVE_BACK_ROWS = 20_000


@contextmanager
def bulk_writes(conn: Connection, cache_kib: int = BULK_CACHE_KIB) -> Iterator[None]:
    """A large page cache for one big write transaction on this connection.

    SQLite's default cache is 2 MB: a merge inserting 200,000 rows into
    indexes keyed by random uids spills dirty pages to the WAL mid-transaction
    and thrashes, which on a busy machine multiplied the time the write lock
    was held.  Pages are allocated only as used; the default comes back after.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    # On the driver's cursor: through SQLAlchemy the PRAGMA would begin a transaction.
    cursor = conn.connection.cursor()
    try:
        previous = int(cursor.execute("PRAGMA cache_size").fetchone()[0])
        cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        try:
            yield
        finally:
            _set_back(conn, cursor, f"PRAGMA cache_size={previous}")
    finally:
        _close(conn, cursor)


@contextmanager
def checkpoint_after(conn: Connection) -> Iterator[None]:
    """SQLite: the WAL checkpoint of a big write transaction made by this
    connection runs after the block, not inside its COMMIT.

    When a COMMIT leaves more than 1,000 pages in the WAL, SQLite copies them
    into the database file inside that COMMIT call, but after the write lock
    is released (other writers commit meanwhile: measured).  A merge timed
    around its transaction then counted that copy as time the lock was held.
    The same PASSIVE checkpoint runs here after the block instead; nothing
    about durability changes (the WAL already holds the committed data).
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    # On the driver's cursor: through SQLAlchemy the PRAGMA would begin a transaction.
    cursor = conn.connection.cursor()
    try:
        previous = int(cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield
        finally:
            _set_back(conn, cursor, f"PRAGMA wal_autocheckpoint={previous}")
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")  # only after a block that ended well
    finally:
        _close(conn, cursor)


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction that inserts a mailing's whole snapshot (planning):
    a `parented_bulk_transaction` on a connection of its own."""
    with engine.connect() as conn, parented_bulk_transaction(conn, PLAN_CACHE_KIB):
        yield conn


@contextmanager
def parented_bulk_transaction(conn: Connection, cache_kib: int = BULK_CACHE_KIB) -> Iterator[None]:
    """One big write transaction on `conn` whose rows all come from joins on
    their parent rows inside it (planning a mailing, an import's merge).

    SQLite: foreign-key enforcement is off for this transaction only (the
    per-row checks were a quarter of the time of planning a million rows) and
    the page cache is large (`bulk_writes`; planning's `PLAN_CACHE_KIB`).
    The pragma only takes effect outside a transaction, so it is set before
    BEGIN and set back after the end; a connection that cannot be set back is
    discarded, never pooled with enforcement off.  PostgreSQL: a plain transaction.
    """
    if conn.dialect.name != "sqlite":
        with conn.begin():
            yield
        return
    # On the driver's cursor: through SQLAlchemy the PRAGMA would begin a transaction.
    cursor = conn.connection.cursor()
    written = _rows_written(conn)
    try:
        cursor.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin(), bulk_writes(conn, cache_kib):
                yield
        finally:
            try:
                _set_back(conn, cursor, "PRAGMA foreign_keys=ON")
            except Exception:
                conn.invalidate()
                raise
    finally:
        _close(conn, cursor)
        # The large cache's pages were freed when it shrank back after the
        # commit; without this the C allocator keeps them for the rest of the
        # process (a `send` of 1,000,000: its whole sending, ~15 MB).
        if _rows_written(conn) - written >= GIVE_BACK_ROWS:
            release_freed_memory()


def _set_back(conn: Connection, cursor: Any, pragma: str) -> None:
    """A pragma set back on the driver's connection, unless SQLAlchemy closed
    that connection meanwhile (`_still_open`): setting it there raised an
    error of sqlite3's own that hid why (a Ctrl-C's traceback, not "stopped")."""
    if _still_open(conn, cursor):
        cursor.execute(pragma)


def _close(conn: Connection, cursor: Any) -> None:
    """The driver's cursor closed, unless its connection is closed already."""
    if _still_open(conn, cursor):
        cursor.close()


def _still_open(conn: Connection, cursor: Any) -> bool:
    """Whether `cursor`'s driver connection is still the one `conn` holds.

    SQLAlchemy closes it (invalidates `conn`) when a statement is interrupted
    (a KeyboardInterrupt inside the driver's call: Ctrl-C), and `conn` opens a
    new one when it is used again."""
    if conn.closed or conn.invalidated:
        return False
    return conn.connection.driver_connection is cursor.connection


def _rows_written(conn: Connection) -> int:
    """Rows this SQLite connection has inserted, updated or deleted since it
    was opened (0 once it is closed or invalidated)."""
    if conn.invalidated:  # asking would open a new connection
        return 0
    try:
        return int(conn.connection.driver_connection.total_changes)  # type: ignore[union-attr]
    except Exception:  # closed, invalidated: nothing to compare
        return 0


def release_freed_memory() -> bool:
    """Hand the memory the C allocator holds free back to the operating system.

    SQLite allocates its page cache with malloc; glibc keeps freed chunks in
    the process (only the top of its heap is given back by itself), so a big
    transaction's cache would count in the RSS of everything after it.
    `malloc_trim(0)` returns every free page (~2 ms after planning 1M rows).
    False where there is no such call (not glibc): nothing is done.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # a Python built without _ctypes has none

        trim = ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim
