"""How an import's planned writes reach the database, fast.

`importer` decides, per chunk, what to insert and update (`_Writes`);
`_write` sends it: statements built once, executemany, and values converted
once per chunk by the column types' own processors (`_Raw`, also used by the
staged import).  New subscribers come back with their ids in the same round
trip where the database can (INSERT … RETURNING).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Dialect, bindparam, insert, select, update
from sqlalchemy.types import TypeEngine, UserDefinedType

from newsletter.audience import consent
from newsletter.store.schema import UtcDateTime, lists, memberships, subscribers

if TYPE_CHECKING:
    from newsletter.audience.importer import ImportRun, _Writes


_STATUS_UPDATE = (
    update(subscribers)
    .where(subscribers.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        status_reason=bindparam("b_reason"),
        status_changed_at=bindparam("b_stamp"),
        name=bindparam("b_name"),
        attributes=bindparam("b_attributes"),
        updated_at=bindparam("b_stamp"),
    )
)
_DETAIL_UPDATE = (
    update(subscribers)
    .where(subscribers.c.id == bindparam("b_id"))
    .values(
        name=bindparam("b_name"),
        attributes=bindparam("b_attributes"),
        updated_at=bindparam("b_stamp"),
    )
)


class _Raw:
    """Values converted once by the column type's own bind processor.

    SQLAlchemy runs every bound value of every row through its type's
    processor; for a million rows of four timestamps and a JSON column that was
    a quarter of the import time.  The timestamp is the same for a whole chunk,
    so it is converted once here (with the dialect's real processor: the
    result is exactly what SQLAlchemy would have sent) and bound untyped.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._time = _processor(UtcDateTime(), dialect)
        self._json = _processor(subscribers.c.attributes.type, dialect)
        self._empty_json = self._json({})
        # The text the column's serializer writes (for staged, set-based writes).
        self.json_text = _json_text(dialect)
        self._last: tuple[datetime, Any] | None = None

    def time(self, value: datetime) -> Any:
        if self._last is None or self._last[0] is not value:
            self._last = (value, self._time(value))
        return self._last[1]

    def json(self, value: dict[str, Any]) -> Any:
        return self._json(value) if value else self._empty_json


def _json_text(dialect: Dialect) -> Callable[[Any], str]:
    """`json.dumps` as the JSON column calls it, made once.

    `json.dumps(value)` builds a new C encoder per call, which for a small
    dict is most of its cost (a million rows: seconds).  This is that same C
    encoder with `json.dumps`'s defaults, built once; without the circular
    check, which attributes parsed from a file never need.  The text is
    identical (tests/test_import_behaviour.py checks it).
    """
    serializer = getattr(dialect, "_json_serializer", None)
    make = getattr(json.encoder, "c_make_encoder", None)
    if serializer is not None or make is None:
        return cast(Callable[[Any], str], serializer or json.dumps)
    defaults = json.JSONEncoder()
    encode = make(None, defaults.default, json.encoder.encode_basestring_ascii, None,
                  defaults.key_separator, defaults.item_separator, False, False, True)  # fmt: skip

    def text(value: Any) -> str:
        return "".join(encode(value, 0))

    return text


def _processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    return type_.dialect_impl(dialect).bind_processor(dialect) or _same


def _same(value: Any) -> Any:
    return value


class _PreBound(UserDefinedType[Any]):
    """A bound value already converted by `_Raw`: passed to the driver as it is.

    (A NullType bindparam would be given the column's type back by insert().)
    """

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:  # never used for DDL
        return "NULL"


_UNTYPED = _PreBound()
_INSERT_SUBSCRIBER = insert(subscribers).values(
    attributes=bindparam("r_attributes", type_=_UNTYPED),
    created_at=bindparam("r_stamp", type_=_UNTYPED),
    updated_at=bindparam("r_stamp", type_=_UNTYPED),
    status_changed_at=bindparam("r_stamp", type_=_UNTYPED),
)
_INSERT_MEMBERSHIP = insert(memberships).values(created_at=bindparam("r_since", type_=_UNTYPED))


def _write(run: ImportRun, writes: _Writes, stamp: datetime) -> None:
    conn = run.conn
    statuses = [(u["b_id"], u["b_status"], u["b_reason"]) for u in writes.status_updates]
    if writes.new_subscribers:
        statuses += _insert_new(run, writes)
    if writes.members:
        rows = [
            {"list_id": m["list_id"], "subscriber_id": m["subscriber_id"],
             "r_since": run.raw.time(m["created_at"])}
            for m in writes.members
        ]  # fmt: skip
        conn.execute(_INSERT_MEMBERSHIP, rows)
        _record_joins(run, writes.members, stamp)
    for batch, statement in (
        (writes.status_updates, _STATUS_UPDATE),
        (writes.detail_updates, _DETAIL_UPDATE),
    ):
        if batch:
            conn.execute(statement, [{**b, "b_stamp": stamp} for b in batch])
    _record_statuses(run, statuses, stamp)
    if writes.unsuppress_members:
        conn.execute(
            update(memberships)
            .where(
                memberships.c.list_id == run.list_id,
                memberships.c.subscriber_id == bindparam("b_sid"),
            )
            .values(unsubscribed_at=None),
            writes.unsuppress_members,
        )
        lifted = [m["b_sid"] for m in writes.unsuppress_members]
        _record(run, lifted, "resubscribe", stamp)


def _insert_new(run: ImportRun, writes: _Writes) -> list[tuple[int, str, str | None]]:
    """Insert the new subscribers and queue their memberships.

    Returns (id, status, reason) of those that arrived unsubscribed, bounced
    or complained: that status is their consent record, not a `subscribe`
    (`_record_joins`)."""
    ids = _insert_subscribers(run.conn, writes.new_subscribers)
    arrived = [(ids[n["email_key"]], n["status"], n["status_reason"])
               for n in writes.new_subscribers if n["status"] in consent.STATUS_ACTIONS]  # fmt: skip
    unconsented = {sid for sid, _, _ in arrived}
    for key, since in writes.new_members:
        sid = ids[key]
        run.touched.add(sid)
        writes.members.append({"list_id": run.list_id, "subscriber_id": sid, "created_at": since,
                               "suppressed": sid in unconsented})  # fmt: skip
    return arrived


def _record_joins(run: ImportRun, members: list[dict[str, Any]], stamp: datetime) -> None:
    """The consent record of each new membership (`subscribers show`): a
    `subscribe`, but not where the file gave the address a suppressed status
    (`suppressed`): such a row shows no consent, and its status is recorded
    instead (`_record_statuses`)."""
    joined = [m["subscriber_id"] for m in members if not m["suppressed"]]
    _record(run, joined, "subscribe", stamp)


def _record(run: ImportRun, subscriber_ids: list[int], action: str, stamp: datetime) -> None:
    """One `action` on this import's list per subscriber, in the consent record."""
    name = run.conn.scalar(select(lists.c.name).where(lists.c.id == run.list_id))
    consent.record_many(
        run.conn,
        (
            {"subscriber_id": sid, "action": action, "source": run.source,
             "list_name": name, "at": stamp}
            for sid in subscriber_ids
        ),
    )  # fmt: skip


def _record_statuses(
    run: ImportRun, statuses: list[tuple[int, str, str | None]], stamp: datetime
) -> None:
    """The consent record of each status the import set that is one of
    consent, as (subscriber id, status, reason): a suppression the file gave
    (a new address's too), one `--resubscribe` lifted (every list: a status
    is the subscriber's own)."""
    events = []
    for sid, status, reason in statuses:
        action = consent.status_action(status, reason)
        if action is not None:
            events.append({"subscriber_id": sid, "action": action, "source": run.source,
                           "detail": reason, "at": stamp})  # fmt: skip
    consent.record_many(run.conn, events)


def _insert_subscribers(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert new subscribers; email_key → new id."""
    if conn.dialect.insert_executemany_returning:
        # "insertmanyvalues": batched multi-row INSERT … RETURNING (SQLite ≥ 3.35,
        # PostgreSQL), one round trip per batch instead of an extra SELECT.
        statement = _INSERT_SUBSCRIBER.returning(subscribers.c.email_key, subscribers.c.id)
        return {key: int(sid) for key, sid in conn.execute(statement, rows)}
    conn.execute(_INSERT_SUBSCRIBER, rows)
    query = select(subscribers.c.email_key, subscribers.c.id).where(
        subscribers.c.email_key.in_([r["email_key"] for r in rows])
    )
    return {key: int(sid) for key, sid in conn.execute(query)}
