"""Phase 1 of a staged import after the rows are in: set-based planning.

Against the store's snapshot (`newsletter.audience.staging` says why): the
file's repeated addresses are merged (only those rows come back to Python,
`importer`'s rules); one pass against the store classifies each row of a
stored address (unchanged, kept suppressed, or to plan); those that may
change a stored subscriber or membership are planned in Python
(`importer._apply`) into TEMP tables; the others are counted from the
classification, and a row it does not hold is new.  An empty store (a first
import) needs no pass at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Dialect,
    Row,
    Select,
    Text,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)

from newsletter.audience.importer import (
    _MAILABLE_WISH,
    CHUNK_ROWS,
    ImportRun,
    _apply,
    _Incoming,
    _Raw,
    _Writes,
)
from newsletter.audience.members import ACTIVE, PENDING, SUPPRESSED
from newsletter.audience.stagetables import (
    _changes,
    _insert_many,
    _members,
    _merged,
    _new,
    _rest,
    _rows,
    _unsuppress,
    _write_rows,
)
from newsletter.store.schema import UtcDateTime, memberships, subscribers

T = TypeVar("T")


_FIELDS = (_rows.c.email, _rows.c.key, _rows.c.name, _rows.c.status, _rows.c.reason,
           _rows.c.attributes, _rows.c.since)  # fmt: skip


def _streamed(conn: Connection, query: Select[Any]) -> Iterator[Row[Any]]:
    """The rows of `query` in batches (PostgreSQL: a server-side cursor, or
    psycopg would fetch every row at once)."""
    options = {"stream_results": True, "max_row_buffer": CHUNK_ROWS}
    result = conn.execute(query, execution_options=options)
    with result:
        yield from result


def _incoming(row: Sequence[Any], since: Callable[[Any], Any]) -> _Incoming:
    """A staged row as `importer` plans it (`since`: the time column's result processor)."""
    email, key, name, status, reason, attributes, when = row
    # No line: its problems were reported while staging, and planning never reports one.
    return _Incoming(email, key, 0, name, status, reason,
                     json.loads(attributes) if attributes else {},
                     since(when) if when is not None else None)  # fmt: skip


def merge_duplicates(run: ImportRun) -> None:
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


# What the one pass of the stage against the store finds for a stored address.
_UNCHANGED, _KEPT, _PLAN = 1, 2, 3


def plan_changes(run: ImportRun) -> None:
    """One pass of the stage against the store, then the rows that may change
    something through `importer`'s rules in Python.

    Each row of a stored address goes into `import_rest` with what it is:
    unchanged, kept suppressed (the file wants mail, the store's suppression
    stays), or to plan; the counts come from there, and a row that is not
    there is new.  (Two passes, one to pick the rows to plan and one to count
    the others, took a re-import of a million rows 3.8 s; this one ~2.5 s.)
    Only the rows to plan travel through Python; the rest stays for the
    set-based merge."""
    conn = run.conn
    joined, noop, kept = _against_store(run)
    r, rest = _rows.c, _rest.c
    what = case((~noop, _PLAN), (kept, _KEPT), else_=_UNCHANGED)
    found = select(r.seq, what).select_from(joined).where(subscribers.c.id.is_not(None))
    conn.execute(insert(_rest).from_select(["seq", "what"], found))
    _count(run)
    query = select(*_FIELDS).join(_rest, rest.seq == r.seq).where(rest.what == _PLAN)
    since = _time_reader(conn.dialect)
    rows = (_incoming(row, since) for row in _streamed(conn, query.order_by(r.seq)))
    writer = _StageWriter(run)
    for chunk in _chunks(rows):
        _apply(run, chunk, writer.write)
    conn.execute(_rows.delete().where(r.seq.in_(select(rest.seq).where(rest.what == _PLAN))))


def _count(run: ImportRun) -> None:
    """The rows not planned in Python, counted as `importer` would count them."""
    conn, rest = run.conn, _rest.c
    total = int(conn.scalar(select(func.count()).select_from(_rows)) or 0)
    found, unchanged, kept = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((rest.what == _UNCHANGED, 1), else_=0)), 0),
            func.coalesce(func.sum(case((rest.what == _KEPT, 1), else_=0)), 0),
        )
    ).one()
    run.staged_new = total - int(found)
    run.staged_only_new = int(found) == 0
    run.counts.new += run.staged_new
    run.counts.kept_suppressed += int(kept)
    run.counts.unchanged += int(unchanged)


def count_all_new(run: ImportRun) -> None:
    """An empty store: every staged row is new.  What `plan_changes` would
    find, without its join of every staged row."""
    new = int(run.conn.scalar(select(func.count()).select_from(_rows)) or 0)
    run.staged_new = new
    run.staged_only_new = True
    run.counts.new += new


def _against_store(run: ImportRun) -> tuple[Any, Any, Any]:
    """Staged rows outer-joined to their subscriber and membership, the
    condition under which `importer._plan_existing` would write nothing, and
    the one under which it would count the row as kept suppressed."""
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
    kept = (
        and_(wants_mail, or_(s.status.in_(SUPPRESSED), m.unsubscribed_at.is_not(None)))
        if not run.resubscribe
        else literal(False)
    )
    return joined, noop, kept


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
                    {
                        "subscriber_id": m["subscriber_id"],
                        "since": raw.time(m["created_at"]),
                        "suppressed": int(m["suppressed"]),
                    }
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
