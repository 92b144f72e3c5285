"""The daemon lock: one `newsletter run` per SQLite database, any number on PostgreSQL.

`daemon_lock` chooses: `DaemonLock` (a row in ``state`` with a heartbeat) on
SQLite, `SharedLock` (nothing to hold) on PostgreSQL, where planning is
idempotent, claims share rows and the steps that must happen once per pass
take `store.one_at_a_time`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import utcnow
from newsletter.daemon.passes import Clock
from newsletter.errors import DeliveryError, StoreError, database_reason
from newsletter.store import DAEMON_LOCK_KEY, insert_or_ignore
from newsletter.store.holders import holder_alive, process_started
from newsletter.store.leases import owner_identity
from newsletter.store.schema import state

log = logging.getLogger("newsletter.daemon")

LOCK_KEY = DAEMON_LOCK_KEY  # the store reads it too: no upgrade under a running daemon
LOCK_TTL = 30.0  # seconds without a heartbeat before another daemon may take over


class DaemonBusyError(DeliveryError):
    """Another daemon holds the lock on this database."""


class DaemonLock:
    """One row in ``state``: the owner (host:pid:random) and a heartbeat expiry.

    A second daemon is refused while the row is fresh.  A holder that stopped
    heartbeating (hung, or killed with -9) is taken over after `ttl`; on the
    same host a dead pid is taken over at once, so a restart after a crash
    does not have to wait.
    """

    def __init__(
        self, engine: Engine, *, ttl: float = LOCK_TTL, clock: Clock = utcnow, db: str = ""
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.clock = clock
        self.db = db
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> None:
        """Insert the row if there is none, else take it over from a dead holder.

        Insert-or-ignore then re-read, and a takeover that names the holder it
        replaces: two daemons starting at the same instant get one lock and
        one "another daemon" refusal, never a unique violation.
        """
        at = self.clock()
        mine = {
            "value": self.owner,
            "updated_at": at,
            "expires_at": at + timedelta(seconds=self.ttl),
            "number": process_started(os.getpid()),
        }
        try:
            with self.engine.begin() as conn:
                if insert_or_ignore(conn, state, {"key": LOCK_KEY, **mine}, ("key",)):
                    return
                holder = self._holder(conn)
                alive = holder is not None and holder[0] != self.owner
                if alive and holder_alive(holder[0], holder[2], at, holder[3]):
                    raise self._busy(holder, at)
                taken = conn.execute(
                    update(state)
                    .where(state.c.key == LOCK_KEY, state.c.value == (holder or (None,))[0])
                    .values(**mine)
                ).rowcount
                if not taken:  # another daemon took it over (or released it) meanwhile
                    holder = self._holder(conn)
                    if holder is None:
                        raise StoreError("the daemon lock changed hands; try again")
                    raise self._busy(holder, at)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take the daemon lock: {database_reason(exc)}") from exc

    def _holder(self, conn: Connection) -> Any:
        return conn.execute(
            select(state.c.value, state.c.updated_at, state.c.expires_at, state.c.number).where(
                state.c.key == LOCK_KEY
            )
        ).first()

    def _busy(self, holder: Any, at: datetime) -> DaemonBusyError:
        age = max(0, round((at - holder[1]).total_seconds()))
        return DaemonBusyError(
            f"another newsletter daemon ({holder[0]}, last heartbeat {age} s ago) "
            f"is running on {self.db or 'this database'}; stop it first "
            f"(a crashed one is taken over after {self.ttl:g} s)",
            key="database.url",
        )

    def heartbeat(self) -> bool:
        """Extend the lock; False when another process has taken it from us."""
        at = self.clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(state)
                .where(state.c.key == LOCK_KEY, state.c.value == self.owner)
                .values(updated_at=at, expires_at=at + timedelta(seconds=self.ttl))
            )
            return bool(result.rowcount)

    def release(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(state).where(state.c.key == LOCK_KEY, state.c.value == self.owner)
                )
        except SQLAlchemyError as exc:  # the lock simply expires
            log.warning("could not release the daemon lock: %s", database_reason(exc))


class SharedLock:
    """The daemon "lock" on PostgreSQL: nothing to hold, any number may run.

    Planning there is idempotent (a unique mailing per post and list, planned
    with INSERT … ON CONFLICT), claims share rows (FOR UPDATE SKIP LOCKED) and
    a dead owner's leases are freed by its advisory lock, so every daemon
    plans and delivers; the steps that must not run twice at once take
    `store.one_at_a_time`.  One daemon dying never stops the others.
    """

    def __init__(self, *, db: str = "") -> None:
        self.db = db
        self.owner = owner_identity()  # for the logs: $NEWSLETTER_OWNER names it

    def acquire(self) -> None:
        """Nothing to take."""

    def heartbeat(self) -> bool:
        return True  # never lost: there is no single holder to lose it to

    def release(self) -> None:
        """Nothing to give back."""


def daemon_lock(engine: Engine, *, clock: Clock = utcnow, db: str = "") -> DaemonLock | SharedLock:
    """One daemon per SQLite database (`DaemonLock`); any number on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        return SharedLock(db=db)
    return DaemonLock(engine, clock=clock, db=db)
