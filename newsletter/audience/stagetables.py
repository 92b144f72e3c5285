"""The TEMP tables of a staged import (`newsletter.audience.staging`) and how
rows get into them: one streamed executemany on SQLite, `COPY … FROM STDIN` on
PostgreSQL (psycopg 3's `cursor.copy`, `write_row`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import UserDefinedType

log = logging.getLogger(__name__)

_temp = MetaData()

# The stage's columns after its number, in full and for a plain row
# (`newsletter.audience.stagereader.staged_runs`).
STAGED_COLUMNS = ["key", "email", "name", "status", "reason", "attributes", "since"]
PLAIN_COLUMNS = ["key", "email", "name", "attributes"]


class _Untouched(UserDefinedType[Any]):
    """Values already converted for the driver (see importer._Raw), kept as they are.

    On SQLite a declared BLOB column has no affinity: stored exactly as bound.
    PostgreSQL gets the real column type (`_RawTime`, `_RawJson`), so the merge
    copies and compares like with like."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "BLOB"


class _RawTime(_Untouched):
    """A timestamp as the driver takes it."""

    cache_ok = True


class _RawJson(_Untouched):
    """A JSON document as the driver takes it."""

    cache_ok = True


@compiles(_RawTime, "postgresql")
def _pg_time(_type: Any, _compiler: Any, **_kw: Any) -> str:
    return "TIMESTAMP WITH TIME ZONE"


@compiles(_RawJson, "postgresql")
def _pg_json(_type: Any, _compiler: Any, **_kw: Any) -> str:
    return "JSON"


_RAW = _Untouched()
_TIME = _RawTime()
_JSON = _RawJson()


def _table(name: str, *columns: Column[Any]) -> Table:
    return Table(name, _temp, *columns, prefixes=["TEMPORARY"])


_rows = _table(
    "import_rows",
    # File order: numbered as the rows come (SQLite's next rowid, PostgreSQL's sequence).
    Column("seq", Integer, primary_key=True),
    Column("key", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("name", Text, nullable=False),
    # A plain row's (`stagereader.PLAIN_COLUMNS`): its status is left to this.
    Column("status", String(16), nullable=False, server_default="active"),
    Column("reason", Text),
    Column("attributes", Text),  # JSON as the column's serializer writes it, or NULL for none
    Column("since", _TIME),  # as the driver takes it, or NULL
)
_rest = _table(  # staged rows of stored addresses, and what they are (`stageplan.plan_changes`)
    "import_rest", Column("seq", Integer, primary_key=True), Column("what", Integer, nullable=False)
)
_merged = _table(  # a file's repeated addresses: keep 1 (merged values) or 0 (drop the row)
    "import_merged",
    Column("seq", Integer, primary_key=True),
    Column("keep", Integer, nullable=False),
    Column("name", Text),
    Column("status", Text),
    Column("reason", Text),
    Column("attributes", Text),
    Column("since", _TIME),
)
_new = _table(
    "import_new",
    Column("email_key", Text, primary_key=True),
    Column("email", Text),
    Column("uid", Text),
    Column("name", Text),
    Column("attributes", _JSON),
    Column("status", Text),
    Column("status_reason", Text),
    Column("stamp", _TIME),
    Column("since", _TIME),
)
_members = _table(
    "import_members",
    Column("subscriber_id", Integer, primary_key=True),
    Column("since", _TIME),
    Column("suppressed", Integer),  # 1: the file gave a suppressed status (no `subscribe`)
)
_changes = _table(
    "import_changes",
    Column("id", Integer, primary_key=True),
    Column("seen", _TIME),  # updated_at as planned against: the optimistic check
    Column("with_status", Integer),  # 1: status, reason and status_changed_at too
    Column("status", Text),
    Column("status_reason", Text),
    Column("name", Text),
    Column("attributes", _JSON),
)
_unsuppress = _table("import_unsuppress", Column("subscriber_id", Integer, primary_key=True))
TABLES = (_rows, _rest, _merged, _new, _members, _changes, _unsuppress)


def _insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows whose values are already the driver's into a TEMP table."""
    names = list(rows[0])
    _write_rows(conn, table, names, (tuple(r[n] for n in names) for r in rows))


def _write_runs(conn: Connection, runs: Iterable[tuple[bool, list[tuple[Any, ...]]]]) -> bool:
    """`stagereader.staged_runs` into `_rows`: each run with its own columns
    (SQLite); PostgreSQL's one COPY takes every row in full.  True when every
    row was plain (no status, reason or time of its own)."""
    shapes: list[bool] = []
    if conn.dialect.name == "postgresql":
        _write_rows(conn, _rows, STAGED_COLUMNS, _in_full(runs, shapes))
        return all(shapes)
    for plain, rows in runs:
        shapes.append(plain)
        _write_rows(conn, _rows, PLAIN_COLUMNS if plain else STAGED_COLUMNS, rows)
    return all(shapes)


def _in_full(
    runs: Iterable[tuple[bool, list[tuple[Any, ...]]]], shapes: list[bool]
) -> Iterator[tuple[Any, ...]]:
    for plain, rows in runs:
        shapes.append(plain)
        if not plain:
            yield from rows
            continue
        for key, email, name, attributes in rows:
            yield key, email, name, "active", None, attributes, None


def _write_rows(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """COPY on PostgreSQL, one streamed executemany on SQLite.

    Both are the driver's own calls, outside SQLAlchemy: a value the database
    refuses raised the driver's error (psycopg's DataError for a NUL), which
    the import, catching SQLAlchemy's, let out as a traceback.  It is raised
    as SQLAlchemy's, with the driver's message, like any other statement's."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        _driver_writes(conn, table, names, rows)
    except dbapi_error as exc:
        raise DBAPIError.instance(
            f'writing "{table.name}"', None, exc, dbapi_error, dialect=conn.dialect
        ) from exc


def _driver_writes(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, names, rows)
        return
    columns = ", ".join(f'"{n}"' for n in names)
    marks = ", ".join("?" for _ in names)
    cursor = conn.connection.cursor()
    try:
        statement = f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})'
        cursor.executemany(statement, rows)  # type: ignore[arg-type]  # sqlite3 takes any iterable
    finally:
        cursor.close()


def _copy_rows(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """`COPY table (names) FROM STDIN`, streamed row by row (psycopg 3 buffers)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    columns = ", ".join(f'"{n}"' for n in names)
    written = 0
    statement = f'COPY "{table.name}" ({columns}) FROM STDIN'
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            written += 1
    log.debug("COPY %d rows into %s", written, table.name)
