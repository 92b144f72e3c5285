"""Recording what became of claimed deliveries, fenced by the lease.

An outcome is written only while the row's lease is still ours
(``WHERE id = … AND lease_owner = …``): a sender that stalled past its lease
while another host took the row over must not overwrite that host's work.
Such a stale outcome is counted, logged and dropped, never an error.

The UPDATE names only what an outcome changes.  SQLite moves every index on
a column named in SET (and every partial index whose WHERE names one),
whatever the values, 10-20 µs each on a commit of ~50: so the Message-ID is
not written (it names its delivery, `delivery.messageids`, and needs
neither column nor index; rows from before keep theirs).  The lease is
still cleared, moving ix_deliveries_lease: a deferred row must be claimable
at once (the claims take a leased row only once the lease expired, and
never its own owner's), the index holds only the rows in flight because of
it, and `release`, `free_dead_leases` and `active_senders` read leases
whatever the status (a finished row's stale lease would be counted as a
live sender, and walked and rewritten by each of them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, null, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import StoreError, database_reason
from newsletter.store import now
from newsletter.store.schema import UtcDateTime, deliveries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The new state of one delivery after an attempt."""

    status: str  # sent | deferred | failed | skipped | queued
    attempts: int
    code: int | None = None
    text: str | None = None
    next_attempt_at: datetime | None = None


RECORD = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("_id"), deliveries.c.lease_owner == bindparam("_owner"))
    .values(
        status=bindparam("_status"),
        attempts=bindparam("_attempts"),
        last_code=bindparam("_code"),
        last_text=bindparam("_text"),
        next_attempt_at=bindparam("_next", type_=UtcDateTime),
        sent_at=func.coalesce(bindparam("_sent", type_=UtcDateTime), deliveries.c.sent_at),
        lease_owner=null(),
        lease_expires_at=null(),
        updated_at=bindparam("_at", type_=UtcDateTime),
    )
)


def record(engine: Engine, delivery_id: int, outcome: Outcome, owner: str) -> int:
    """Commit one delivery's new state and release its lease; 0 if the lease was lost."""
    return record_many(engine, [(delivery_id, outcome)], owner)


def record_many(bind: Engine | Connection, outcomes: list[tuple[int, Outcome]], owner: str) -> int:
    """Commit several outcomes in one transaction (group commit); returns how many held.

    An outcome whose row is no longer leased to `owner` is dropped (and logged).
    """
    if not outcomes:
        return 0
    try:
        if isinstance(bind, Connection):
            with bind.begin():
                written = bind.execute(RECORD, _params(outcomes, owner, now())).rowcount
        else:
            with bind.begin() as conn:
                written = conn.execute(RECORD, _params(outcomes, owner, now())).rowcount
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot record {len(outcomes)} deliveries: {database_reason(exc)}"
        ) from exc
    return _checked(written, outcomes, owner)


def _checked(written: int, outcomes: list[tuple[int, Outcome]], owner: str) -> int:
    if 0 <= written < len(outcomes):
        log.warning(
            "dropped %d of %d delivery outcomes of %s: their leases had expired and "
            "another sender may have taken the rows over (ids %s)",
            len(outcomes) - written,
            len(outcomes),
            owner,
            ", ".join(str(i) for i, _ in outcomes[:20]),
        )
    return written


def outcome_parameters(delivery_id: int, o: Outcome, owner: str, at: Any) -> dict[str, Any]:
    """RECORD's parameters for one outcome reached at `at`."""
    return {
        "_id": delivery_id,
        "_owner": owner,
        "_status": o.status,
        "_attempts": o.attempts,
        "_code": o.code,
        "_text": o.text,
        "_next": o.next_attempt_at,
        "_sent": at if o.status == "sent" else None,
        "_at": at,
    }


def _params(
    outcomes: list[tuple[int, Outcome]], owner: str, at: Any, times: list[Any] | None = None
) -> list[dict[str, Any]]:
    if times is not None:
        return [
            outcome_parameters(i, o, owner, t) for (i, o), t in zip(outcomes, times, strict=True)
        ]
    return [outcome_parameters(i, o, owner, at) for i, o in outcomes]


class LedgerWriter:
    """`record_many` for the recorder, on the driver's own connection.

    The ledger's hottest write: profiled, SQLAlchemy's transaction and per-row
    bind processing cost three times SQLite's own work (~73 µs of CPU per
    commit of two outcomes against ~24 µs here), all of it under the GIL that
    the sending threads need.  So the statement is compiled once for the
    dialect and run with driver-level parameters; datetimes are converted
    once per group.  The connection must be this writer's alone.
    """

    def __init__(self, conn: Connection, owner: str) -> None:
        dialect = conn.dialect
        compiled = RECORD.compile(dialect=dialect)
        self.owner = owner
        self.sql = compiled.string
        self.names = list(compiled.positiontup or ()) if compiled.positional else None
        process = UtcDateTime().bind_processor(dialect)
        self.stamp: Any = process if process is not None else (lambda value: value)
        self.driver: Any = conn.connection.driver_connection
        self.errors: Any = dialect.loaded_dbapi.Error
        # SQLite runs with the driver's own transaction handling off (see
        # store._sqlite_pragmas), so the write lock is taken explicitly, as
        # every other writer does; other drivers begin implicitly.
        self.begin = "BEGIN IMMEDIATE" if dialect.name == "sqlite" else None

    def write(
        self, outcomes: list[tuple[int, Outcome]], times: list[datetime] | None = None
    ) -> int:
        """Commit these outcomes in one transaction, or none of them; returns how many held.

        `times`: when each was reached (a journal's fold); otherwise now, for all.
        """
        cursor = self.driver.cursor()
        try:
            if self.begin is not None:
                cursor.execute(self.begin)
            try:
                cursor.executemany(self.sql, self._parameters(outcomes, times))
                written = cursor.rowcount
                if self.begin is not None:
                    cursor.execute("COMMIT")
                else:
                    self.driver.commit()
            except BaseException:
                self.driver.rollback() if self.begin is None else cursor.execute("ROLLBACK")
                raise
        except self.errors as exc:
            raise StoreError(f"cannot record {len(outcomes)} deliveries: {exc}") from exc
        finally:
            cursor.close()
        return _checked(written, outcomes, self.owner)

    def _parameters(
        self, outcomes: list[tuple[int, Outcome]], times: list[datetime] | None = None
    ) -> list[Any]:
        stamp = self.stamp
        stamped = None if times is None else [stamp(t) for t in times]
        rows = _params(outcomes, self.owner, stamp(now()) if stamped is None else None, stamped)
        for row in rows:
            if row["_next"] is not None:
                row["_next"] = stamp(row["_next"])
        if self.names is None:
            return rows
        names = self.names
        return [tuple(row[name] for name in names) for row in rows]
