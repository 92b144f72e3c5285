"""A long import without a long write lock: stage everything, then merge quickly.

SQLite has one writer at a time.  An import that parsed, validated and wrote
200,000 rows inside one write transaction held that lock for the whole run
(39 s under load), so the daemon could not even write its heartbeat.  Here an
import is two phases on one connection:

1. **Stage** (no write lock on the main database): rows are parsed and
   validated and streamed into a TEMP table (one executemany; COPY on
   PostgreSQL).  The rest is set-based, against the store's snapshot:
   addresses the file repeats are merged (only those rows come back to
   Python, `importer`'s rules); rows that may change a stored subscriber or
   membership are planned in Python (`importer._apply`, one IN query per
   5,000) into TEMP tables; what is left is new or changes nothing, and is
   counted by one statement.  On SQLite a TEMP table lives in its own file:
   writing it takes no lock other processes wait for.
2. **Merge** (one short write transaction): a handful of set-based
   statements (`INSERT … SELECT`, `UPDATE … FROM`) copy the new addresses
   and the plan into the real tables, inside the database engine, with no
   Python per row.

All or nothing still holds: nothing reaches the real tables before phase 2,
which commits at once or not at all.  What phase 1 read may have changed by
phase 2 (a signup, an unsubscribe, an `add` during the import): every staged
write carries the state it was planned against and phase 2 checks it; on any
difference it rolls back and the caller re-runs the import the classic way
(one transaction), so a concurrent change is never overwritten.

PostgreSQL takes the same two phases (there a long transaction blocks no
other writer, but executemany paid a round trip per batch and SQLAlchemy's
per-row work: 100k rows took 3.4x SQLite's time): every row goes into the TEMP
tables with `COPY … FROM STDIN` (psycopg 3's `cursor.copy`, `write_row`),
read-backs use server-side cursors, and the statements are the same portable
set-based ones.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Dialect,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import UserDefinedType

from newsletter.audience.addresses import normalised
from newsletter.audience.importer import (
    _MAILABLE_WISH,
    CHUNK_ROWS,
    ImportCounts,
    ImportRun,
    _apply,
    _Incoming,
    _Raw,
    _Writes,
)
from newsletter.audience.members import ACTIVE, PENDING, SUPPRESSED
from newsletter.audience.serviceformats import SourceRow
from newsletter.errors import Problem, SubscriberError
from newsletter.store import bulk_writes
from newsletter.store.schema import UtcDateTime, consent_events, lists, memberships, subscribers

log = logging.getLogger(__name__)


T = TypeVar("T")


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
    Column("attributes", Text),  # JSON as the column's serializer writes it, or NULL for none
    Column("since", _TIME),  # as the driver takes it, or NULL
    Column("uid", Text, nullable=False),  # used only if the address is new
)
_rest = _table("import_rest", Column("seq", Integer, primary_key=True))
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


def stage_and_plan(run: ImportRun, source: Iterable[SourceRow | Problem]) -> None:
    """Phase 1 on `run.conn` (a read-only connection): validate, stage, merge, plan.

    Only rows that may change a stored subscriber travel back through Python
    (`importer`'s rules); new addresses and rows that change nothing are
    classified and counted by set-based statements.
    """
    conn = run.conn
    for table in TABLES:
        table.drop(conn, checkfirst=True)
        table.create(conn)
    rows_from_file(conn, source, run.counts)
    # Built after the load (one sort, not 1M random inserts); dropped with the table.
    conn.exec_driver_sql("CREATE INDEX import_rows_key ON import_rows (key, seq)")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE import_rows")  # temp tables get no autovacuum
    _merge_duplicates(run)
    _plan_changes(run)
    _count_the_rest(run)


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
        before = conn.scalar(select(func.max(subscribers.c.id)))
        added = _insert_staged_new(conn, raw_stamp)
        _check(conn, added, run.staged_new, "a new address appeared")
        _insert_staged_memberships(conn, run, raw_stamp, before, added)
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


# --------------------------------------------------------------------------- phase 1


def rows_from_file(
    conn: Connection, source: Iterable[SourceRow | Problem], counts: ImportCounts
) -> None:
    """Every valid row into the TEMP table, through the driver in one stream
    (SQLAlchemy's per-row parameter handling cost more than SQLite's own work)."""
    names = [c.name for c in _rows.columns]
    _write_rows(conn, _rows, names, _staged(source, counts, _Raw(conn.dialect)))


def _staged(
    source: Iterable[SourceRow | Problem], counts: ImportCounts, raw: _Raw
) -> Iterator[tuple[Any, ...]]:
    """`importer`'s validation, one tuple per valid row in `_rows`' column order.

    The hot loop of an import: no object per row beyond the tuple itself."""
    report, dumps, uids = counts.report, raw.json_text, _uids()
    seq = 0
    for item in source:
        counts.rows += 1
        if isinstance(item, Problem):
            report(item)
            continue
        for warning in item.warnings:
            report(Problem(warning, item.path, item.line, "warning"))
        if not item.email:
            report(Problem("no email address", item.path, item.line))
            continue
        try:
            email, key = normalised(item.email)
        except SubscriberError as exc:
            report(Problem(exc.message, item.path, item.line))
            continue
        seq += 1
        attributes, since = item.attributes, item.subscribed_at
        yield (seq, key, email, item.line, item.name, item.status, item.reason,
               dumps(attributes) if attributes else None,
               raw.time(since) if since else None, next(uids))  # fmt: skip


def _uids(batch: int = 4096) -> Iterator[str]:
    """`new_uid()`'s values (16 random bytes as hex), drawn from the OS in batches."""
    while True:
        pool = os.urandom(16 * batch).hex()
        for start in range(0, 32 * batch, 32):
            yield pool[start : start + 32]


def _insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows whose values are already the driver's into a TEMP table."""
    names = list(rows[0])
    _write_rows(conn, table, names, (tuple(r[n] for n in names) for r in rows))


def _write_rows(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """COPY on PostgreSQL, one streamed executemany on SQLite."""
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


_FIELDS = (_rows.c.email, _rows.c.key, _rows.c.line, _rows.c.name, _rows.c.status,
           _rows.c.reason, _rows.c.attributes, _rows.c.since)  # fmt: skip


def _streamed(conn: Connection, query: Select[Any]) -> Iterator[Row[Any]]:
    """The rows of `query` in batches (PostgreSQL: a server-side cursor, or
    psycopg would fetch every row at once)."""
    options = {"stream_results": True, "max_row_buffer": CHUNK_ROWS}
    result = conn.execute(query, execution_options=options)
    with result:
        yield from result


def _incoming(row: Sequence[Any], since: Callable[[Any], Any]) -> _Incoming:
    """A staged row as `importer` plans it (`since`: the time column's result processor)."""
    email, key, line, name, status, reason, attributes, when = row
    return _Incoming(email, key, line, name, status, reason,
                     json.loads(attributes) if attributes else {},
                     since(when) if when is not None else None)  # fmt: skip


def _merge_duplicates(run: ImportRun) -> None:
    """Rows of the same address anywhere in the file merge into the first (file order)."""
    conn, raw = run.conn, run.raw
    repeated = select(_rows.c.key).group_by(_rows.c.key).having(func.count() > 1)
    query = (
        select(_rows.c.seq, *_FIELDS)
        .where(_rows.c.key.in_(repeated))
        .order_by(_rows.c.key, _rows.c.seq)
    )
    since = _time_reader(conn.dialect)

    def merged() -> Iterator[tuple[Any, ...]]:
        current: _Incoming | None = None
        first = 0
        fields: Sequence[Any]
        for seq, *fields in _streamed(conn, query):
            row = _incoming(fields, since)
            if current is not None and current.key == row.key:
                current.merge(row)
                run.counts.duplicates += 1
                yield (seq, 0, None, None, None, None, None)
                continue
            if current is not None:
                yield _kept(first, current, raw)
            current, first = row, seq
        if current is not None:
            yield _kept(first, current, raw)

    names = [c.name for c in _merged.columns]
    # In lists: PostgreSQL cannot fetch from the cursor while a COPY is open.
    for batch in _chunks(merged()):
        _write_rows(conn, _merged, names, batch)
    m = _merged.c
    conn.execute(
        update(_rows)
        .where(_rows.c.seq == m.seq, m.keep == 1)
        .values(name=m.name, status=m.status, reason=m.reason, attributes=m.attributes,
                since=m.since)
    )  # fmt: skip
    conn.execute(_rows.delete().where(_rows.c.seq.in_(select(m.seq).where(m.keep == 0))))


def _kept(seq: int, row: _Incoming, raw: _Raw) -> tuple[Any, ...]:
    attributes = raw.json_text(row.attributes) if row.attributes else None
    since = raw.time(row.subscribed_at) if row.subscribed_at else None
    return (seq, 1, row.name, row.status, row.reason, attributes, since)


def _plan_changes(run: ImportRun) -> None:
    """Rows that may change a stored subscriber or membership go through
    `importer`'s rules in Python; the rest stays for the set-based merge."""
    conn = run.conn
    joined, noop = _against_store(run)
    conn.execute(
        insert(_rest).from_select(
            ["seq"],
            select(_rows.c.seq).select_from(joined).where(subscribers.c.id.is_not(None), ~noop),
        )
    )
    query = select(*_FIELDS).join(_rest, _rest.c.seq == _rows.c.seq).order_by(_rows.c.seq)
    since = _time_reader(conn.dialect)
    rows = (_incoming(row, since) for row in _streamed(conn, query))
    writer = _StageWriter(run)
    for chunk in _chunks(rows):
        _apply(run, chunk, writer.write)
    conn.execute(_rows.delete().where(_rows.c.seq.in_(select(_rest.c.seq))))


def _count_the_rest(run: ImportRun) -> None:
    """What is left is new or changes nothing: count both, as `importer` would."""
    joined, _noop = _against_store(run)
    s, m, r = subscribers.c, memberships.c, _rows.c
    kept = (
        and_(
            s.id.is_not(None),
            r.status.in_(_MAILABLE_WISH),
            or_(s.status.in_(SUPPRESSED), m.unsubscribed_at.is_not(None)),
        )
        if not run.resubscribe
        else literal(False)
    )
    total, new, kept_count = run.conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((s.id.is_(None), 1), else_=0)), 0),
            func.coalesce(func.sum(case((kept, 1), else_=0)), 0),
        ).select_from(joined)
    ).one()
    run.staged_new = int(new)
    run.counts.new += int(new)
    run.counts.kept_suppressed += int(kept_count)
    run.counts.unchanged += int(total) - int(new) - int(kept_count)


def _against_store(run: ImportRun) -> tuple[Any, Any]:
    """Staged rows outer-joined to their subscriber and membership, and the
    condition under which `importer._plan_existing` would write nothing."""
    r, s, m = _rows.c, subscribers.c, memberships.c
    joined = _rows.outerjoin(subscribers, s.email_key == r.key).outerjoin(
        memberships, and_(m.list_id == run.list_id, m.subscriber_id == s.id)
    )
    wants_mail = r.status.in_(_MAILABLE_WISH)
    status_stays = ~or_(
        _rank(r.status) > _rank(s.status), and_(s.status == PENDING, r.status == ACTIVE)
    )
    if run.resubscribe:
        status_stays = and_(status_stays, ~and_(wants_mail, s.status.in_(SUPPRESSED)))
    stored = s.attributes if run.conn.dialect.name == "sqlite" else cast(s.attributes, Text)
    noop = and_(
        s.id.is_not(None),
        m.subscriber_id.is_not(None),  # already on the list
        status_stays,
        or_(r.name == "", r.name == s.name),
        # The serializer's own text: equal text, equal attributes (else Python decides).
        or_(r.attributes.is_(None), r.attributes == type_coerce(stored, Text)),
    )
    if run.resubscribe:
        noop = and_(noop, ~and_(wants_mail, m.unsubscribed_at.is_not(None)))
    return joined, noop


def _rank(status: Any) -> Any:
    return case({"unsubscribed": 1, "bounced": 2, "complained": 3}, value=status, else_=0)


def _time_reader(dialect: Dialect) -> Callable[[Any], Any]:
    """The store's own conversion of a staged time back to an aware datetime."""
    typ = UtcDateTime().dialect_impl(dialect)
    process = typ.result_processor(dialect, None)
    return process or _same_time


def _same_time(value: Any) -> Any:
    return value


def _chunks(rows: Iterator[T]) -> Iterator[list[T]]:
    chunk: list[T] = []
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


def _insert_staged_new(conn: Connection, raw_stamp: Any) -> int:
    """The new addresses, straight from the stage, in address order (the
    email and email_key indexes then grow at their ends)."""
    r = _rows.c
    stamp = bindparam("stamp", raw_stamp, type_=_RAW)
    attributes = func.coalesce(r.attributes, "{}")
    taken = exists().where(subscribers.c.email_key == r.key)
    columns = ["email", "email_key", "uid", "name", "attributes", "status", "status_reason",
               "status_changed_at", "created_at", "updated_at"]  # fmt: skip
    query = (
        select(r.email, r.key, r.uid, r.name, _as_json(conn, attributes), r.status, r.reason,
               stamp, stamp, stamp)
        .where(~taken)
        .order_by(r.key)
    )  # fmt: skip
    return int(conn.execute(insert(subscribers).from_select(columns, query)).rowcount)


def _insert_staged_memberships(
    conn: Connection, run: ImportRun, raw_stamp: Any, before: int | None, added: int
) -> None:
    """Memberships and consent records of the subscribers `_insert_staged_new` added.

    SQLite (one writer; this transaction holds the lock): they are the ids
    after the largest one before, if that is exactly `added` rows, and
    scanning them in id order (which is address order) beats probing the uid
    index row by row.  Otherwise (PostgreSQL: other sessions draw from the
    sequence too) they are found by the staged uid: random, so carried only by
    the rows just inserted (a hash join there)."""
    r, s = _rows.c, subscribers.c
    stamp = bindparam("stamp", raw_stamp, type_=_RAW)
    after = s.id > (before or 0)
    if conn.dialect.name == "sqlite" and conn.scalar(select(func.count()).where(after)) == added:
        since = select(r.since).where(r.key == s.email_key).limit(1).scalar_subquery()
        joins = select(literal(run.list_id), s.id, func.coalesce(since, stamp)).where(after)
        events = select(s.id).where(after)
    else:
        new = _rows.join(subscribers, s.uid == r.uid)
        joins = select(literal(run.list_id), s.id, func.coalesce(r.since, stamp)).select_from(new)
        events = select(s.id).select_from(new)
    conn.execute(insert(memberships).from_select(["list_id", "subscriber_id", "created_at"], joins))
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    events = events.add_columns(stamp, literal("subscribe"), literal(run.source), literal(name))
    columns = ["subscriber_id", "at", "action", "source", "list_name"]
    conn.execute(insert(consent_events).from_select(columns, events))


def _as_json(conn: Connection, text: Any) -> Any:
    # SQLite: JSON is text already (a CAST would apply NUMERIC affinity).
    return text if conn.dialect.name == "sqlite" else cast(text, JSON)


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
