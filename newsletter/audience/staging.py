"""A long import without a long write lock: stage everything, then merge quickly.

SQLite has one writer at a time.  An import that parsed, validated and wrote
200,000 rows inside one write transaction held that lock for the whole run
(39 s under load), so the daemon could not even write its heartbeat.  Here an
import is two phases on one connection:

1. **Stage** (no write lock on the main database): rows are parsed and
   validated, stored in a TEMP table, read back sorted by address so that
   duplicates anywhere in the file meet and merge, and planned against the
   store (one IN query per 5,000 addresses, as `importer` does).  The planned
   writes go to TEMP tables too.  On SQLite a TEMP table lives in its own
   file: writing it takes no lock other processes wait for.
2. **Merge** (one short write transaction): a handful of set-based
   statements (`INSERT … SELECT`, `UPDATE … FROM`) copy the plan into the
   real tables, inside the database engine, with no Python per row.

All or nothing still holds: nothing reaches the real tables before phase 2,
which commits at once or not at all.  What phase 1 read may have changed by
phase 2 (a signup, an unsubscribe, an `add` during the import): every staged
write carries the state it was planned against and phase 2 checks it; on any
difference it rolls back and the caller re-runs the import the classic way
(one transaction), so a concurrent change is never overwritten.

PostgreSQL takes the same two phases (there a long transaction blocks no
other writer, but executemany paid a round trip per batch and SQLAlchemy's
per-row work: 100k rows took 3.4x SQLite's time): every row goes into the TEMP
tables with `COPY … FROM STDIN` (psycopg 3's `cursor.copy`, `write_row`), the
sorted read-back uses a server-side cursor, and the merge statements are the
same portable set-based ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import UserDefinedType

from newsletter.audience.importer import (
    CHUNK_ROWS,
    ImportRun,
    _apply,
    _Incoming,
    _validated,
    _Writes,
)
from newsletter.audience.serviceformats import SourceRow
from newsletter.errors import Problem
from newsletter.store import bulk_writes
from newsletter.store.schema import consent_events, lists, memberships, subscribers

log = logging.getLogger(__name__)


class StaleSnapshot(Exception):
    """The store changed under a staged import; re-run it in one transaction."""


_temp = MetaData()


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
    Column("seq", Integer, primary_key=True),
    Column("key", Text, nullable=False),
    Column("email", Text, nullable=False),
    Column("line", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("attributes", Text),  # JSON, or NULL for none
    Column("since", Text),  # ISO 8601, or NULL
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
TABLES = (_rows, _new, _members, _changes, _unsuppress)


def stage_and_plan(run: ImportRun, source: Iterable[SourceRow | Problem]) -> None:
    """Phase 1 on `run.conn` (a read-only connection): validate, stage, merge, plan."""
    conn = run.conn
    for table in TABLES:
        table.drop(conn, checkfirst=True)
        table.create(conn)
    _stage_rows(conn, _validated(source, run.counts))
    writer = _StageWriter(run)
    for chunk in _chunks(_merged(conn, run)):
        _apply(run, chunk, writer.write)


def merge(run: ImportRun, stamp: datetime) -> tuple[float, float]:
    """Phase 2: copy the plan into the real tables in one write transaction.

    Returns how long the write lock was held: (wall seconds, CPU seconds of
    this process, SQLite's work included).  Raises `StaleSnapshot` (after
    rolling back) when the store changed since the plan was made.
    """
    conn = run.conn
    raw_stamp = run.raw.time(stamp)
    # psycopg's rowcount is gone once SQLAlchemy closes a cursor without rows;
    # the checks below need it.
    conn = conn.execution_options(preserve_rowcount=True)
    started, cpu = time.perf_counter(), time.process_time()
    with bulk_writes(conn), conn.begin():
        _check(conn, _insert_new(conn), _count(conn, _new), "a new address appeared")
        _insert_memberships(conn, run.list_id)
        members = _insert_existing_members(conn, run.list_id)
        _check(conn, members, _count(conn, _members), "a membership appeared")
        _record_joins(conn, run, raw_stamp)
        changed = _apply_changes(conn, raw_stamp)
        _check(conn, changed, _count(conn, _changes), "a subscriber changed")
        conn.execute(
            update(memberships)
            .where(
                memberships.c.list_id == run.list_id,
                memberships.c.subscriber_id.in_(select(_unsuppress.c.subscriber_id)),
            )
            .values(unsubscribed_at=None)
        )
    return time.perf_counter() - started, time.process_time() - cpu


def drop(conn: Connection) -> None:
    for table in TABLES:
        table.drop(conn, checkfirst=True)


# --------------------------------------------------------------------------- phase 1


def _stage_rows(conn: Connection, rows: Iterator[_Incoming]) -> None:
    """Every validated row into the TEMP table, through the driver (SQLAlchemy's
    per-row parameter handling cost more than SQLite's own work here)."""
    names = [c.name for c in _rows.columns]
    staged = (
        (seq, row.key, row.email, row.line, row.name, row.status, row.reason,
         json.dumps(row.attributes) if row.attributes else None,
         row.subscribed_at.isoformat() if row.subscribed_at else None)
        for seq, row in enumerate(rows)
    )  # fmt: skip
    _write_rows(conn, _rows, names, staged)


def _insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows whose values are already the driver's into a TEMP table."""
    names = list(rows[0])
    _write_rows(conn, table, names, (tuple(r[n] for n in names) for r in rows))


def _write_rows(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """COPY on PostgreSQL, executemany in batches elsewhere."""
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, names, rows)
        return
    statement = insert(table).compile(dialect=conn.dialect, column_keys=names)
    order = [names.index(n) for n in statement.positiontup or ()]
    cursor = conn.connection.cursor()
    try:
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(tuple(row[i] for i in order))
            if len(batch) >= CHUNK_ROWS:
                cursor.executemany(statement.string, batch)
                batch = []
        if batch:
            cursor.executemany(statement.string, batch)
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


def _merged(conn: Connection, run: ImportRun) -> Iterator[_Incoming]:
    """One row per address, in address order: a file's duplicates merged in file order."""
    columns = (_rows.c.email, _rows.c.key, _rows.c.line, _rows.c.name, _rows.c.status,
               _rows.c.reason, _rows.c.attributes, _rows.c.since)  # fmt: skip
    postgres = conn.dialect.name == "postgresql"
    # Only equal keys must meet: byte order sorts faster than a locale's.
    key = _rows.c.key.collate("C") if postgres else _rows.c.key
    query = select(*columns).order_by(key, _rows.c.seq).compile(dialect=conn.dialect)
    # PostgreSQL: a server-side cursor, or psycopg would fetch every row at once.
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor("import_merged") if postgres else conn.connection.cursor()
    current: _Incoming | None = None
    try:
        cursor.execute(query.string)
        while batch := cursor.fetchmany(CHUNK_ROWS):
            for email, key, line, name, status, reason, attributes, since in batch:
                row = _Incoming(
                    email,
                    key,
                    line,
                    name,
                    status,
                    reason,
                    json.loads(attributes) if attributes else {},
                    datetime.fromisoformat(since) if since else None,
                )
                if current is not None and current.key == key:
                    current.merge(row)
                    run.counts.duplicates += 1
                    continue
                if current is not None:
                    yield current
                current = row
    finally:
        cursor.close()
    if current is not None:
        yield current


def _chunks(rows: Iterator[_Incoming]) -> Iterator[list[_Incoming]]:
    chunk: list[_Incoming] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _StageWriter:
    """`importer._write`'s counterpart: the planned writes go to the TEMP tables
    (COPY on PostgreSQL, see `_write_rows`)."""

    def __init__(self, run: ImportRun) -> None:
        self.run = run

    def write(self, run: ImportRun, writes: _Writes, stamp: datetime) -> None:
        conn, raw = run.conn, run.raw
        if writes.new_subscribers:
            since = dict(writes.new_members)
            _insert_many(
                conn,
                _new,
                [
                    {
                        "email_key": n["email_key"],
                        "email": n["email"],
                        "uid": n["uid"],
                        "name": n["name"],
                        "attributes": n["r_attributes"],
                        "status": n["status"],
                        "status_reason": n["status_reason"],
                        "stamp": n["r_stamp"],
                        "since": raw.time(since[n["email_key"]]),
                    }
                    for n in writes.new_subscribers
                ],
            )
        if writes.members:
            _insert_many(
                conn,
                _members,
                [
                    {"subscriber_id": m["subscriber_id"], "since": raw.time(m["created_at"])}
                    for m in writes.members
                ],
            )
        changes = [(u, 1) for u in writes.status_updates]
        changes += [(u, 0) for u in writes.detail_updates]
        if changes:
            _insert_many(
                conn,
                _changes,
                [
                    {
                        "id": u["b_id"],
                        "seen": u["b_seen"],
                        "with_status": flag,
                        "status": u.get("b_status"),
                        "status_reason": u.get("b_reason"),
                        "name": u["b_name"],
                        "attributes": raw.json(u["b_attributes"]),
                    }
                    for u, flag in changes
                ],
            )
        if writes.unsuppress_members:
            conn.execute(
                insert(_unsuppress),
                [{"subscriber_id": u["b_sid"]} for u in writes.unsuppress_members],
            )


# --------------------------------------------------------------------------- phase 2


def _count(conn: Connection, table: Table) -> int:
    return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def _check(conn: Connection, done: int, wanted: int, what: str) -> None:
    if done != wanted:
        raise StaleSnapshot(f"{what} during the import ({done} of {wanted} rows still fit)")


def _insert_new(conn: Connection) -> int:
    taken = exists().where(subscribers.c.email_key == _new.c.email_key)
    columns = ["email", "email_key", "uid", "name", "attributes", "status", "status_reason",
               "status_changed_at", "created_at", "updated_at"]  # fmt: skip
    query = select(
        _new.c.email,
        _new.c.email_key,
        _new.c.uid,
        _new.c.name,
        _new.c.attributes,
        _new.c.status,
        _new.c.status_reason,
        _new.c.stamp,
        _new.c.stamp,
        _new.c.stamp,
    ).where(~taken)
    return conn.execute(insert(subscribers).from_select(columns, query)).rowcount


def _insert_memberships(conn: Connection, list_id: int) -> None:
    query = select(literal(list_id), subscribers.c.id, _new.c.since).join(
        subscribers, subscribers.c.email_key == _new.c.email_key
    )
    conn.execute(insert(memberships).from_select(["list_id", "subscriber_id", "created_at"], query))


def _insert_existing_members(conn: Connection, list_id: int) -> int:
    taken = exists().where(
        memberships.c.list_id == list_id, memberships.c.subscriber_id == _members.c.subscriber_id
    )
    query = select(literal(list_id), _members.c.subscriber_id, _members.c.since).where(~taken)
    statement = insert(memberships).from_select(["list_id", "subscriber_id", "created_at"], query)
    return conn.execute(statement).rowcount


def _record_joins(conn: Connection, run: ImportRun, raw_stamp: Any) -> None:
    """The consent record of each membership the merge added, as `importer` writes it."""
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    columns = ["subscriber_id", "at", "action", "source", "list_name"]
    fixed = (
        bindparam("at", raw_stamp, type_=_RAW),
        literal("subscribe"),
        literal(run.source),
        literal(name),
    )
    new = select(subscribers.c.id, *fixed).join(_new, subscribers.c.email_key == _new.c.email_key)
    existing = select(_members.c.subscriber_id, *fixed)
    for query in (new, existing):
        conn.execute(insert(consent_events).from_select(columns, query))


def _apply_changes(conn: Connection, raw_stamp: Any) -> int:
    stamp = bindparam("stamp", raw_stamp, type_=_RAW)
    fits = and_(subscribers.c.id == _changes.c.id, subscribers.c.updated_at == _changes.c.seen)
    with_status = conn.execute(
        update(subscribers)
        .where(fits, _changes.c.with_status == 1)
        .values(
            status=_changes.c.status,
            status_reason=_changes.c.status_reason,
            status_changed_at=stamp,
            name=_changes.c.name,
            attributes=_changes.c.attributes,
            updated_at=stamp,
        )
    ).rowcount
    details = conn.execute(
        update(subscribers)
        .where(fits, _changes.c.with_status == 0)
        .values(name=_changes.c.name, attributes=_changes.c.attributes, updated_at=stamp)
    ).rowcount
    return int(with_status) + int(details)
