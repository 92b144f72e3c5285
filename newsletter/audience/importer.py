"""Import subscriber rows into a list: batched, one transaction, suppression wins.

The rows come from `newsletter.audience.csvformats.read_source`.  They are validated,
merged in chunks (duplicates inside a chunk merge in memory; a duplicate of an
earlier chunk finds the row that chunk wrote), and written with a handful of
statements per chunk: one IN query for the addresses already known, one for
their memberships, then executemany inserts and updates.  No per-row SELECTs,
so a million rows take seconds, not hours, and memory stays flat.

Merging rules (invariant 3):

* statuses rank active = pending < unsubscribed < bounced < complained; the
  stronger one wins, so an unsubscribe anywhere in the file, or already in the
  store, is never turned back into active;
* only `resubscribe=True` lets an active row reactivate a suppressed address
  (and clear that list's per-list unsubscribe);
* a non-empty name replaces the stored one; attributes are merged, the file's
  values winning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, type_coerce

from newsletter.audience import consent
from newsletter.audience.addresses import normalise_email
from newsletter.audience.importcounts import ImportCounts
from newsletter.audience.importwrites import _PreBound, _Raw, _write
from newsletter.audience.members import ACTIVE, PENDING, SUPPRESSED
from newsletter.audience.serviceformats import SourceRow
from newsletter.errors import Problem, SubscriberError
from newsletter.store import now
from newsletter.store.schema import memberships, new_uid, subscribers

CHUNK_ROWS = 5000
_RANK = {ACTIVE: 0, PENDING: 0, "unsubscribed": 1, "bounced": 2, "complained": 3}
_MAILABLE_WISH = (ACTIVE, PENDING)


@dataclass
class _Incoming:
    email: str
    key: str
    line: int
    name: str
    status: str
    reason: str | None
    attributes: dict[str, Any]
    subscribed_at: datetime | None

    def merge(self, other: _Incoming) -> None:
        if _RANK[other.status] > _RANK[self.status] or (
            self.status == PENDING and other.status == ACTIVE
        ):
            self.status, self.reason = other.status, other.reason
        self.name = self.name or other.name
        self.attributes = {**other.attributes, **self.attributes}
        if other.subscribed_at and (
            self.subscribed_at is None or other.subscribed_at < self.subscribed_at
        ):
            self.subscribed_at = other.subscribed_at


class _Touched:
    """Subscriber ids this import has written, as a bitmap (1M ids = 125 kB)."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, sid: int) -> None:
        byte = sid >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1 + (1 << 16)))
        self._bits[byte] |= 1 << (sid & 7)

    def __contains__(self, sid: int) -> bool:
        byte = sid >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (sid & 7)))


@dataclass
class ImportRun:
    """State of one import (or one file of a sync) inside a transaction."""

    conn: Connection
    list_id: int
    resubscribe: bool = False
    source: str = "import"  # the consent record's source: import | sync
    counts: ImportCounts = field(default_factory=ImportCounts)
    touched: _Touched = field(default_factory=_Touched)
    raw: _Raw = field(init=False)
    staged_new: int = 0  # a staged import: new addresses its merge must insert (the check)
    staged_only_new: bool = False  # a staged import: every staged row was new when planned
    staged_since: bool = True  # a staged import: whether any staged row gives a time
    staged_suppressed: bool = True  # ... and whether any gives unsubscribed, bounced, complained

    def __post_init__(self) -> None:
        self.raw = _Raw(self.conn.dialect)


def import_rows(run: ImportRun, source: Iterable[SourceRow | Problem]) -> ImportCounts:
    """Validate, merge and write every row of `source` through `run.conn`."""
    for chunk in _chunks(_validated(source, run.counts), CHUNK_ROWS):
        _apply(run, chunk)
    return run.counts


def _validated(source: Iterable[SourceRow | Problem], counts: ImportCounts) -> Iterator[_Incoming]:
    for item in source:
        if isinstance(item, Problem):
            counts.rows += 1
            counts.report(item)
            continue
        counts.rows += 1
        for warning in item.warnings:
            counts.report(Problem(warning, item.path, item.line, "warning"))
        if not item.email:
            counts.report(Problem("no email address", item.path, item.line))
            continue
        try:
            address = normalise_email(item.email)
        except SubscriberError as exc:
            counts.report(Problem(exc.message, item.path, item.line))
            continue
        yield _Incoming(
            address.email,
            address.key,
            item.line,
            item.name,
            item.status,
            item.reason,
            item.attributes,
            item.subscribed_at,
        )


def _chunks(rows: Iterator[_Incoming], size: int) -> Iterator[list[_Incoming]]:
    chunk: list[_Incoming] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class _Writes:
    new_subscribers: list[dict[str, Any]] = field(default_factory=list)
    new_members: list[tuple[str, datetime]] = field(default_factory=list)  # (key, since)
    members: list[dict[str, Any]] = field(default_factory=list)
    status_updates: list[dict[str, Any]] = field(default_factory=list)
    detail_updates: list[dict[str, Any]] = field(default_factory=list)
    unsuppress_members: list[dict[str, Any]] = field(default_factory=list)


Writer = Callable[["ImportRun", "_Writes", datetime], None]


def _apply(run: ImportRun, chunk: list[_Incoming], write: Writer | None = None) -> None:
    merged: dict[str, _Incoming] = {}
    for row in chunk:
        if row.key in merged:
            merged[row.key].merge(row)
            run.counts.duplicates += 1
        else:
            merged[row.key] = row
    existing = _existing(run.conn, list(merged))
    member_state = _membership_state(run.conn, run.list_id, [e["id"] for e in existing.values()])
    stamp = now()
    writes = _Writes()
    for key, row in merged.items():
        found = existing.get(key)
        if found is None:
            _plan_new(run, row, stamp, writes)
            run.counts.new += 1
        else:
            _plan_existing(run, row, found, member_state, stamp, writes)
    (write or _write)(run, writes, stamp)


def _existing(conn: Connection, keys: list[str]) -> dict[str, dict[str, Any]]:
    query = select(
        subscribers.c.id,
        subscribers.c.email_key,
        subscribers.c.name,
        subscribers.c.status,
        subscribers.c.attributes,
        # As stored, unconverted: a staged import's optimistic check compares it.
        type_coerce(subscribers.c.updated_at, _PreBound()).label("seen"),
    ).where(subscribers.c.email_key.in_(keys))
    return {row.email_key: dict(row._mapping) for row in conn.execute(query)}


def _membership_state(conn: Connection, list_id: int, ids: list[int]) -> dict[int, datetime | None]:
    """subscriber id → unsubscribed_at, for those already on the list."""
    if not ids:
        return {}
    query = select(memberships.c.subscriber_id, memberships.c.unsubscribed_at).where(
        memberships.c.list_id == list_id, memberships.c.subscriber_id.in_(ids)
    )
    return {sid: at for sid, at in conn.execute(query)}


def _plan_new(run: ImportRun, row: _Incoming, stamp: datetime, writes: _Writes) -> None:
    raw = run.raw
    writes.new_subscribers.append(
        {
            "email": row.email,
            "email_key": row.key,
            "uid": new_uid(),
            "name": row.name,
            "r_attributes": raw.json(row.attributes),
            "status": row.status,
            "status_reason": row.reason,
            "r_stamp": raw.time(stamp),
        }
    )
    writes.new_members.append((row.key, row.subscribed_at or stamp))


def _plan_existing(
    run: ImportRun,
    row: _Incoming,
    found: dict[str, Any],
    member_state: dict[int, datetime | None],
    stamp: datetime,
    writes: _Writes,
) -> None:
    sid = int(found["id"])
    duplicate = sid in run.touched
    run.touched.add(sid)
    # An earlier row of this file (an earlier chunk) already wrote this
    # subscriber: a suppression there is the file's own, which --resubscribe
    # never lifts (the strongest status in the file wins, as within a chunk).
    resubscribe = run.resubscribe and not duplicate
    on_list = sid in member_state
    list_unsubscribed = member_state.get(sid) is not None
    wants_mail = row.status in _MAILABLE_WISH
    status = _merged_status(found["status"], row.status, resubscribe)
    kept = (
        wants_mail and not run.resubscribe and (found["status"] in SUPPRESSED or list_unsubscribed)
    )
    stored_attributes = found["attributes"] or {}
    if duplicate:  # an earlier row of this file already spoke: it wins, as within a chunk
        name = found["name"] or row.name
        attributes = {**row.attributes, **stored_attributes}
    else:
        name = row.name or found["name"]
        attributes = {**stored_attributes, **row.attributes}
    changed = name != found["name"] or attributes != stored_attributes
    if status != found["status"]:
        reason = _reason(found["status"], status, row.reason)
        writes.status_updates.append(
            {
                "b_id": sid,
                "b_status": status,
                "b_reason": reason,
                "b_name": name,
                "b_attributes": attributes,
                "b_seen": found["seen"],
            }
        )
        changed = True
    elif changed:
        writes.detail_updates.append(
            {"b_id": sid, "b_name": name, "b_attributes": attributes, "b_seen": found["seen"]}
        )
    if not on_list:
        # A row the file gives as unsubscribed (bounced, complained) shows no
        # consent to this list: its join gets no `subscribe` record.
        writes.members.append(
            {"list_id": run.list_id, "subscriber_id": sid, "created_at": row.subscribed_at or stamp,
             "suppressed": row.status in SUPPRESSED}
        )  # fmt: skip
    elif list_unsubscribed and resubscribe and wants_mail:
        writes.unsuppress_members.append({"b_sid": sid})
        changed = True
    if duplicate:
        run.counts.duplicates += 1
    elif kept:
        run.counts.kept_suppressed += 1
    elif not on_list:
        run.counts.new += 1
    elif changed:
        run.counts.updated += 1
    else:
        run.counts.unchanged += 1


def _reason(stored: str, status: str, given: str | None) -> str | None:
    if status in SUPPRESSED:
        return given or "imported"
    return consent.RESUBSCRIBED_BY_IMPORT if stored in SUPPRESSED else None


def _merged_status(stored: str, incoming: str, resubscribe: bool) -> str:
    if resubscribe and incoming in _MAILABLE_WISH and stored in SUPPRESSED:
        return incoming
    if _RANK[incoming] > _RANK[stored] or (stored == PENDING and incoming == ACTIVE):
        return incoming
    return stored


def remove_untouched(run: ImportRun) -> int:
    """Sync: take everyone the file no longer lists off the list.

    A per-list unsubscribe is kept (the record of it is what stops a later
    import from adding them back), and the subscriber row itself stays.
    """
    query = select(memberships.c.subscriber_id).where(
        memberships.c.list_id == run.list_id, memberships.c.unsubscribed_at.is_(None)
    )
    gone = [sid for sid in run.conn.scalars(query) if sid not in run.touched]
    for start in range(0, len(gone), CHUNK_ROWS):
        run.conn.execute(
            memberships.delete().where(
                memberships.c.list_id == run.list_id,
                memberships.c.subscriber_id.in_(gone[start : start + CHUNK_ROWS]),
            )
        )
    run.counts.removed += len(gone)
    return len(gone)
