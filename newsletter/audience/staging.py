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
   counted from one classifying pass.  On SQLite a TEMP table lives in its own file:
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
set-based ones, but one: the new subscribers, their memberships and consent
records go in with a single statement of data-modifying CTEs there
(`_insert_staged_new_pg`).

A big file is read and validated by a second process while this one stages
it, when a core is free (`newsletter.audience.stagereader`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from newsletter import shutdown
from newsletter.audience import consent
from newsletter.audience.importer import ImportCounts, ImportRun, _Raw
from newsletter.audience.serviceformats import SourceRow
from newsletter.audience.stageplan import (
    count_all_new,
    merge_duplicates,
    plan_changes,
)
from newsletter.audience.stagereader import ValidatedRows, staged_runs, validated_rows
from newsletter.audience.stagetables import (
    _RAW,
    TABLES,
    _changes,
    _members,
    _new,
    _rows,
    _unsuppress,
    _write_runs,
)
from newsletter.errors import Problem
from newsletter.store import checkpoint_after, parented_bulk_transaction
from newsletter.store.schema import consent_events, lists, memberships, subscribers
from newsletter.store.uids import ensure_nonce


class StaleSnapshot(Exception):
    """The store changed under a staged import; re-run it in one transaction."""


# SQLite: built after the load (one sort, not a million random inserts),
# dropped with the table.  It covers what the merge inserts, which then reads
# the rows in address order from the index alone instead of a million random
# lookups into the table; duplicates and the memberships' `since` use it too.
# (PostgreSQL hashes instead, and a long attributes value would not fit in a
# B-tree entry there.)
_ROWS_BY_KEY = (
    "CREATE INDEX import_rows_key ON import_rows "
    "(key, seq, email, name, status, reason, attributes)"
)
# PostgreSQL, for this session only (the connection is closed after an
# import): TEMP tables live in the backend's own buffers (8 MB by default,
# settable only before the first TEMP table is touched), and the sorts and
# hashes of a million rows would spill to disk at the default work_mem
# (at 64 MB they still did: the look-up of repeated addresses needed 131 MB
# and spilled in 5 batches, the merge's sort by address 130 MB on disk).
_PG_SESSION = (
    "SET temp_buffers = '256MB'",
    "SET work_mem = '256MB'",
    "SET maintenance_work_mem = '256MB'",
)


def stage_and_plan(run: ImportRun, source: Iterable[SourceRow | Problem] | ValidatedRows) -> None:
    """Phase 1 on `run.conn` (a read-only connection): validate, stage, merge, plan.

    Only rows that may change a stored subscriber travel back through Python
    (`importer`'s rules); new addresses and rows that change nothing are
    classified and counted by set-based statements.
    """
    conn = run.conn
    if conn.dialect.name == "postgresql":
        for setting in _PG_SESSION:
            conn.exec_driver_sql(setting)
    for table in TABLES:
        table.drop(conn, checkfirst=True)
        table.create(conn)
    all_plain = rows_from_file(conn, source, run.counts)
    if conn.dialect.name == "sqlite":
        _sort_with_threads(conn)
    else:
        # Temp tables get no autovacuum.  The row count (which every ANALYZE
        # sets) and the key's statistics are what the plans below need; the
        # other columns' cost a tenth of a second for nothing.
        conn.exec_driver_sql("ANALYZE import_rows (key)")
    merge_duplicates(run)
    if conn.scalar(select(subscribers.c.id).limit(1)) is None:
        count_all_new(run)  # an empty store (a first import): nothing to plan
    else:
        plan_changes(run)
    # Merging a file's repeated addresses keeps their values: rows that all
    # were plain stay plain, and the stage need not be scanned for it.
    run.staged_since, run.staged_suppressed = (False, False) if all_plain else _staged_flags(conn)


def _sort_with_threads(conn: Connection) -> None:
    """`_ROWS_BY_KEY`, SQLite's sorter helped by worker threads: the reader
    process has ended by now, and a second core took 0.15 s off the second
    this sort took for a million rows (+4 MB).  The connection is pooled:
    the setting goes back to SQLite's default after it."""
    driver = conn.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        cursor.execute(f"PRAGMA threads={SORT_THREADS}")
        conn.exec_driver_sql(_ROWS_BY_KEY)
    finally:
        cursor.execute("PRAGMA threads=0")
        cursor.close()


SORT_THREADS = 2


def _staged_flags(conn: Connection) -> tuple[bool, bool]:
    """Whether any staged row gives a time, and whether any gives a suppressed
    status: the merge skips a per-row lookup, or a per-row CASE, for a file
    without.  One scan of the stage when it has neither (most big files), out
    of the write lock (measured in the merge, a million rows: the CASE ~0.35 s,
    this scan ~0.1 s more than the check for times alone)."""
    r = _rows.c
    since, suppressed = r.since.is_not(None), r.status.in_(consent.STATUS_ACTIONS)

    def found(condition: Any) -> bool:
        return conn.scalar(select(r.seq).where(condition).limit(1)) is not None

    if not found(or_(since, suppressed)):
        return False, False
    return found(since), found(suppressed)


def merge(run: ImportRun, stamp: datetime) -> tuple[float, float]:
    """Phase 2: copy the plan into the real tables in one write transaction.

    Returns how long the write lock was held: (wall seconds, CPU seconds of
    this process, SQLite's work included); SQLite's checkpoint of the merge's
    WAL pages runs after that, holding no lock (`store.checkpoint_after`).
    Raises `StaleSnapshot` (after rolling back) when the store changed since
    the plan was made.

    Every row it writes takes its parents from inside the transaction (new
    subscribers from the insert just made, known ones from the snapshot, the
    list read by this import), and no subscriber or list is ever deleted:
    SQLite's per-row foreign-key checks are off for it
    (`store.parented_bulk_transaction`).
    """
    conn = run.conn
    raw_stamp = run.raw.time(stamp)
    # psycopg's rowcount is gone once SQLAlchemy closes a cursor without rows;
    # the checks below need it.
    conn = conn.execution_options(preserve_rowcount=True)
    with checkpoint_after(conn):
        started, cpu = time.perf_counter(), time.process_time()
        _merge_transaction(run, conn, raw_stamp)
        return time.perf_counter() - started, time.process_time() - cpu


def _merge_transaction(run: ImportRun, conn: Connection, raw_stamp: Any) -> None:
    with parented_bulk_transaction(conn):
        # Nothing new at planning time: nothing can be new now either (no
        # subscriber is ever deleted), so a re-import does not probe the store
        # once per staged row while it holds the lock.
        if run.staged_new:
            _insert_staged_new(conn, run, raw_stamp)
        # What planning sent through Python (often nothing): an empty plan
        # table costs no statement that would still scan a real table.
        planned_new = _count(conn, _new)
        if planned_new:
            _check(conn, _insert_new(conn), planned_new, "a new address appeared")
            _insert_memberships(conn, run.list_id)
        members = _insert_existing_members(conn, run.list_id)
        _check(conn, members, _count(conn, _members), "a membership appeared")
        _record_joins(conn, run, raw_stamp, with_new=planned_new > 0)
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
        _record_statuses(conn, run, raw_stamp)
        # The COMMIT follows: a Ctrl-C until here rolls the merge back (the
        # store as it was); from here it can no longer stop the import, which
        # then ends as if it had not come (`shutdown.until_saved`).
        shutdown.saving()


# --------------------------------------------------------------------------- phase 1: the rows


def rows_from_file(
    conn: Connection, source: Iterable[SourceRow | Problem] | ValidatedRows, counts: ImportCounts
) -> bool:
    """Every valid row into the TEMP table, through the driver in runs
    (SQLAlchemy's per-row parameter handling cost more than SQLite's own work);
    `ValidatedRows` were validated by another process (`stagereader`).  True
    when every row was plain (`stagereader.staged_runs`)."""
    raw = _Raw(conn.dialect)
    valid = (
        source.__iter__()
        if isinstance(source, ValidatedRows)
        else validated_rows(source, counts, raw.time)
    )
    runs = staged_runs(valid, raw)
    # Closed at once, also on an error: the reader process stops with it (not
    # whenever the traceback that holds the generator is collected).
    with closing(runs):
        return _write_runs(conn, runs)


# --------------------------------------------------------------------------- phase 2


def _count(conn: Connection, table: Table) -> int:
    return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def _check(conn: Connection, done: int, wanted: int, what: str) -> None:
    if done != wanted:
        raise StaleSnapshot(f"{what} during the import ({done} of {wanted} rows still fit)")


def _insert_staged_new(conn: Connection, run: ImportRun, raw_stamp: Any) -> int:
    """The new addresses, straight from the stage, in address order (the
    email_key index then grows at its end), with no stored uid (derived from
    the row id: `store.uids`, whose nonce this transaction makes if the store
    has none yet), and (SQLite) the memberships and consent records of the
    rows just added; PostgreSQL writes all three in one statement
    (`_insert_staged_new_pg`)."""
    ensure_nonce(conn)
    if conn.dialect.name == "postgresql":
        return _insert_staged_new_pg(conn, run, raw_stamp)
    r = _rows.c
    stamp = bindparam("stamp", raw_stamp, type_=_RAW)
    attributes = func.coalesce(r.attributes, "{}")
    query = select(r.email, r.key, null(), r.name, _as_json(conn, attributes),
                   r.status, r.reason, stamp, stamp, stamp).order_by(r.key)  # fmt: skip
    if not run.staged_only_new:
        query = query.where(~exists().where(subscribers.c.email_key == r.key))
    before = conn.scalar(select(func.max(subscribers.c.id)))
    with _taken_is_stale():
        added = int(conn.execute(insert(subscribers).from_select(_NEW_COLUMNS, query)).rowcount)
    _check(conn, added, run.staged_new, "a new address appeared")
    _insert_staged_memberships(conn, run, raw_stamp, before, added)
    return added


@contextmanager
def _taken_is_stale() -> Iterator[None]:
    """When every staged row was new at planning, the insert of new addresses
    does not probe the store for each (a million rows: a second of the write
    lock): an address that appeared since fails its unique index instead,
    which means what a failed check means (`StaleSnapshot`)."""
    try:
        yield
    except IntegrityError as exc:
        raise StaleSnapshot(f"a new address appeared during the import ({exc.orig})") from exc


_NEW_COLUMNS = ["email", "email_key", "uid", "name", "attributes", "status", "status_reason",
                "status_changed_at", "created_at", "updated_at"]  # fmt: skip


def _insert_staged_memberships(
    conn: Connection, run: ImportRun, raw_stamp: Any, before: int | None, added: int
) -> None:
    """SQLite: the memberships and consent records of the subscribers just added.

    This transaction holds the write lock (one writer), so they are the ids
    after the largest one before, and scanning them in id order (which is
    address order) beats probing an index row by row.  Checked: should any
    other row ever be among them, the merge rolls back and the import runs
    the classic way."""
    if not added:
        return
    r, s = _rows.c, subscribers.c
    stamp = bindparam("stamp", raw_stamp, type_=_RAW)
    after = s.id > (before or 0)
    # The ids after `before` are the `added` just inserted and nothing else
    # when the largest is `before + added` (one index probe; a count walked
    # a million ids).  SQLite gives each insert the next id.
    last = conn.scalar(select(func.max(s.id))) or 0
    _check(conn, last - (before or 0), added, "a subscriber appeared")
    # No row gave a time (most files): every membership starts now, and the
    # merge skips a lookup per row.
    since: Any = stamp
    if run.staged_since:
        given = select(r.since).where(r.key == s.email_key).limit(1).scalar_subquery()
        since = func.coalesce(given, stamp)
    joins = select(literal(run.list_id), s.id, since).where(after)
    conn.execute(insert(memberships).from_select(["list_id", "subscriber_id", "created_at"], joins))
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    first = (before or 0) + 1
    if not run.staged_suppressed:
        # One consent, one record: every row added joined this list from this
        # file, and their ids are consecutive (checked above).
        conn.execute(
            insert(consent_events).values(
                subscriber_id=first, last_subscriber_id=last, at=stamp, source=run.source,
                action="subscribe", list_name=name, detail=None,
            )
        )  # fmt: skip
        return
    # A status per row (`_staged_flags`): a record per row.
    record = _join_record(s.status, s.status_reason, name)
    events = select(s.id, stamp, literal(run.source), *record)
    conn.execute(insert(consent_events).from_select(_EVENT_COLUMNS, events.where(after)))


_EVENT_COLUMNS = ["subscriber_id", "at", "source", "action", "list_name", "detail"]


def _join_record(status: Any, reason: Any, list_name: str | None) -> tuple[Any, Any, Any]:
    """The consent record of a new address's join, per row, as (action,
    list_name, detail): `subscribe` to this list, or, where the file gave a
    suppressed status (a row that shows no consent), that status's event for
    every list with its reason as the detail (`consent.STATUS_ACTIONS`).  Still
    one statement, but it reads each row's status: used only where the
    stage or the plan may hold a suppressed status (`_staged_flags`)."""
    suppressions = consent.STATUS_ACTIONS
    action = case({s: literal(a) for s, a in suppressions.items()}, value=status,
                  else_=literal("subscribe"))  # fmt: skip
    to_list = case({s: null() for s in suppressions}, value=status, else_=literal(list_name))
    detail = case({s: reason for s in suppressions}, value=status, else_=null())
    return action, to_list, detail


# PostgreSQL: the insert hands its new ids straight to the memberships and the
# consent records (data-modifying CTEs), instead of two joins of a million
# staged rows with the subscribers table looking them up again (a third of
# the merge).  Other sessions draw ids from the sequence meanwhile, so "the
# ids after the largest one" would not do there.
_PG_NEW = """
WITH added AS (
    INSERT INTO subscribers ({columns})
    SELECT r.email, r.key, NULL, r.name, {attributes}, r.status, r.reason,
           %(stamp)s, %(stamp)s, %(stamp)s
    FROM import_rows AS r
    {where}
    ORDER BY r.key
    RETURNING id{returning}
), joined AS (  -- runs to completion whether or not the query below reads it
    INSERT INTO memberships (list_id, subscriber_id, created_at)
    SELECT %(list_id)s, added.id, {since} FROM added {join}
    RETURNING subscriber_id
){ranged}, recorded AS (
    INSERT INTO consent_events (subscriber_id, last_subscriber_id, at, action, list_name,
                                detail, source)
    {events}
)
SELECT count(*) FROM joined
"""
# The ids a sequence hands out in one statement have gaps only where another
# session drew one meanwhile: when they have none (the rule), one record for
# the range, as on SQLite; else one per row.
_PG_JOINS = """
SELECT lo, hi, %(stamp)s, 'subscribe', %(list_name)s, NULL, %(source)s FROM ranged
WHERE n > 0 AND hi - lo + 1 = n
UNION ALL
SELECT subscriber_id, NULL, %(stamp)s, 'subscribe', %(list_name)s, NULL, %(source)s
FROM joined, ranged WHERE hi - lo + 1 <> n
"""
# `_PG_JOINS`' figures, computed once for both of its branches.
_PG_RANGED = """, ranged AS (
    SELECT min(subscriber_id) AS lo, max(subscriber_id) AS hi, count(*) AS n FROM joined
)"""
# A file with a suppressed status: `_join_record`'s three columns, in
# PostgreSQL's SQL (the statuses are our constants), from each added row.
_PG_JOINS_OR_STATUSES = (
    "SELECT id, NULL, %(stamp)s, CASE status {actions} ELSE 'subscribe' END, "
    "CASE WHEN status IN ({suppressed}) THEN NULL ELSE %(list_name)s END, "
    "CASE WHEN status IN ({suppressed}) THEN status_reason END, %(source)s FROM added"
).format(
    actions=" ".join(f"WHEN '{s}' THEN '{a}'" for s, a in consent.STATUS_ACTIONS.items()),
    suppressed=", ".join(f"'{s}'" for s in consent.STATUS_ACTIONS),
)


def _insert_staged_new_pg(conn: Connection, run: ImportRun, raw_stamp: Any) -> int:
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    since, join = "%(stamp)s", ""
    if run.staged_since:  # only then is the staged row looked up again
        since, join = (
            "coalesce(t.since, %(stamp)s)",
            "JOIN import_rows AS t ON t.key = added.email_key",
        )
    taken = "WHERE NOT EXISTS (SELECT 1 FROM subscribers AS s WHERE s.email_key = r.key)"
    statement = _PG_NEW.format(
        where="" if run.staged_only_new else taken,
        columns=", ".join(_NEW_COLUMNS),
        attributes="CAST(coalesce(r.attributes, '{}') AS JSON)",
        since=since,
        join=join,
        # Only what the statements below read: a million rows of it are kept.
        returning=(", email_key" if run.staged_since else "")
        + (", status, status_reason" if run.staged_suppressed else ""),
        events=_PG_JOINS_OR_STATUSES if run.staged_suppressed else _PG_JOINS,
        ranged="" if run.staged_suppressed else _PG_RANGED,
    )
    params = {"stamp": raw_stamp, "list_id": run.list_id, "source": run.source, "list_name": name}
    with _taken_is_stale():
        added = int(conn.exec_driver_sql(statement, params).scalar_one())
    _check(conn, added, run.staged_new, "a new address appeared")
    return added


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


def _record_joins(conn: Connection, run: ImportRun, raw_stamp: Any, *, with_new: bool) -> None:
    """The consent record of each membership the merge added from the plan, as
    `importwrites` writes it (`with_new`: the plan held new subscribers): no
    `subscribe` where the file gave a suppressed status, and a new address's
    suppressed status instead (`_join_record`)."""
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    at, source = bindparam("at", raw_stamp, type_=_RAW), literal(run.source)
    if with_new:
        record = _join_record(_new.c.status, _new.c.status_reason, name)
        new = select(subscribers.c.id, at, source, *record)
        new = new.join(_new, subscribers.c.email_key == _new.c.email_key)
        conn.execute(insert(consent_events).from_select(_EVENT_COLUMNS, new))
    existing = select(_members.c.subscriber_id, at, source, literal("subscribe"), literal(name),
                      null()).where(_members.c.suppressed == 0)  # fmt: skip
    conn.execute(insert(consent_events).from_select(_EVENT_COLUMNS, existing))


def _record_statuses(conn: Connection, run: ImportRun, raw_stamp: Any) -> None:
    """The consent record of each status the merge changed that is one of
    consent, and of each unsubscribe from this list it lifted, as `importwrites`
    writes them (`consent.status_action`)."""
    c = _changes.c
    columns = ["subscriber_id", "at", "action", "source", "list_name", "detail"]
    at, source = bindparam("at", raw_stamp, type_=_RAW), literal(run.source)
    suppressions = consent.STATUS_ACTIONS
    action = case(
        *((c.status == status, literal(name)) for status, name in suppressions.items()),
        else_=literal("resubscribe"),
    )
    changed = select(c.id, at, action, source, null(), c.status_reason).where(
        c.with_status == 1,
        or_(c.status.in_(suppressions), c.status_reason == consent.RESUBSCRIBED_BY_IMPORT),
    )
    conn.execute(insert(consent_events).from_select(columns, changed))
    name = conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    lifted = select(_unsuppress.c.subscriber_id, at, literal("resubscribe"), source, literal(name),
                    null())  # fmt: skip
    conn.execute(insert(consent_events).from_select(columns, lifted))


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
