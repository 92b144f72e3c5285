"""The ledger's group commit of delivery outcomes, done by the workers themselves."""

from __future__ import annotations

import collections
import logging
import threading
import time

from sqlalchemy import Connection, Engine

from newsletter.errors import StoreError
from newsletter.store import failure_reason, journal
from newsletter.store import mailings as q

log = logging.getLogger(__name__)


class Pending:
    """One outcome waiting for a commit."""

    __slots__ = ("delivery_id", "done", "error", "outcome", "recorder")

    def __init__(self, recorder: Recorder, delivery_id: int, outcome: q.Outcome) -> None:
        self.recorder = recorder
        self.delivery_id = delivery_id
        self.outcome = outcome
        self.done = False
        self.error: BaseException | None = None

    def wait(self) -> None:
        """Until committed; re-raises the commit's error in the waiting worker."""
        if not self.done:
            self.recorder.flush(self)
        if self.error is not None:
            raise self.error


class Recorder:
    """Group commit without a thread of its own: whoever needs a commit does it.

    A worker hands over its outcome (`submit`) and, before it ends its next
    message (see `MailingPass._deliver`), waits for that outcome's commit, so
    at any moment each worker has at most one message whose fate the ledger
    does not know: after kill -9, at most `concurrency` messages can go twice
    (invariant 2).  The wait takes `write_lock` (every write of this process
    holds it, sparing SQLite's busy-wait sleeps) and, unless an earlier holder
    already committed this outcome, commits every outcome submitted so far in
    one transaction.  Profiled: a separate recorder thread cost a GIL hand-off
    to it and one back for every commit; here the worker that would have
    waited does the work itself.

    On a SQLite file the outcomes go to the pass's journal instead
    (`store.journal`): `submit` appends the line, so the outcome is safe at
    once and nobody waits; `fold` puts the journaled lines into the ledger
    in one transaction, and the pass calls it before it claims, reads its
    own outcomes or gives its leases back.
    """

    MAX_GROUP = 256

    def __init__(self, engine: Engine, write_lock: threading.Lock, owner: str) -> None:
        self.engine = engine
        self.owner = owner  # outcomes are written only where the lease is still this owner's
        self.write_lock = write_lock
        # deque.append / popleft are atomic: submit needs no lock.
        self._queue: collections.deque[Pending] = collections.deque()
        self._conn: Connection | None = None
        self._writer: q.LedgerWriter | None = None
        self._journal: journal.Journal | None = None
        self.owes = False  # journaled outcomes the ledger may not have (a failed last fold)
        self._broken: StoreError | None = None  # an outcome the journal could not take
        folder = journal.folder_of(engine)
        if folder is not None:
            try:
                self._journal = journal.Journal(folder, owner)
            except OSError as exc:
                raise StoreError(f"cannot open the outcome journal in {folder}: {exc}") from exc

    def submit(self, delivery_id: int, outcome: q.Outcome) -> Pending:
        pending = Pending(self, delivery_id, outcome)
        if self._journal is None:
            self._queue.append(pending)
            return pending
        try:
            self._journal.append(journal.Line(delivery_id, outcome, time.time()))
        except OSError as exc:
            # Raised by this outcome's wait and by every later flush or fold:
            # the rounds never wait on one outcome, they flush.
            pending.error = self._broken = journal.journal_error(exc, 1)
        pending.done = True
        return pending

    def fold(self) -> None:
        """Journaled outcomes into the ledger, in one transaction (none without a journal).

        Raises StoreError if they cannot be; they stay journaled, for the next fold.
        """
        if self._broken is not None:
            raise self._broken
        if self._journal is None or not self._journal.pending():
            return
        with self.write_lock:
            try:
                lines, number = self._journal.take()
            except OSError as exc:  # the next file could not be made: nothing moved
                raise journal.journal_error(exc, len(self._journal.lines)) from exc
            if not lines:
                self._journal.folded(number)
                return
            outcomes = [(line.delivery_id, line.outcome) for line in lines]
            times = [line.when for line in lines]
            try:
                self._ledger().write(outcomes, times)
            except BaseException:
                self._journal.give_back(lines)
                raise
            self._journal.folded(number)

    def record(self, delivery_id: int, outcome: q.Outcome) -> None:
        self.submit(delivery_id, outcome).wait()

    def flush(self, until: Pending | None = None) -> None:
        """Commit pending outcomes until `until` is done (None: all of them).

        Raises the error of a commit that failed here (it is also kept on each
        of that group's `Pending`, for their waiters).
        """
        if self._journal is not None:
            if until is None:
                self.fold()
            elif self._broken is not None:
                raise self._broken
            return
        with self.write_lock:
            while self._queue and (until is None or not until.done):
                group = self._take()
                self._commit(group)
                if group[0].error is not None:
                    raise group[0].error

    def secure(self) -> None:
        """Every outcome submitted so far is safe from a crash: journaled (then
        nothing to do but raise a failed append) or committed (`flush`)."""
        if self._journal is None:
            self.flush()
        elif self._broken is not None:
            raise self._broken

    def try_flush(self) -> bool:
        """`flush()` unless another thread holds the write lock (a claim): then False at once.

        With a journal nothing is owed: the outcomes are safe, the next claim folds them.
        """
        if self._journal is not None:
            return True
        if not self.write_lock.acquire(blocking=False):
            return False
        try:
            while self._queue:
                group = self._take()
                self._commit(group)
                if group[0].error is not None:
                    raise group[0].error
        finally:
            self.write_lock.release()
        return True

    def checkpoint(self) -> None:
        """SQLite: copy the WAL into the database now, on the caller's thread.

        Otherwise the commit that takes the WAL past 1,000 pages does it
        (SQLite's autocheckpoint), with two fsyncs, on the loop's thread and
        in the way of the next final dot.  A PASSIVE checkpoint waits for no
        one and blocks no writer, so no write lock is taken.
        """
        if self.engine.dialect.name != "sqlite":
            return
        raw = self.engine.raw_connection()  # outside any transaction, or SQLite refuses
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        finally:
            raw.close()

    def close(self) -> None:
        """Commit what is left; a failure stays on the `Pending`s (their waiters raise it)."""
        folded = False
        try:
            self.flush()
            folded = True
        except Exception as exc:
            self._close_failed(exc)
        finally:
            conn, self._conn, self._writer = self._conn, None, None
            if conn is not None:
                conn.close()
            journal_, self._journal = self._journal, None
            if journal_ is not None:
                # Unfolded lines stay on file, their lock free: the next
                # `free_dead_leases` (this process's or another's) folds them.
                self.owes = not folded
                journal_.close(remove=folded)

    def _close_failed(self, exc: Exception) -> None:
        """Say why the last outcomes could not be recorded, in one line; a bug
        (not the store failing) keeps its traceback."""
        if exc is self._broken:
            # The journal's own failure: raised to the pass already (by the
            # outcome's wait and every flush since), whose error line says it.
            log.debug("recording the last delivery outcomes failed: %s", exc)
            return
        reason = failure_reason(exc)
        if reason is None:
            log.warning("recording the last delivery outcomes failed", exc_info=exc)
        else:
            log.warning("recording the last delivery outcomes failed: %s", reason)

    def _take(self) -> list[Pending]:
        group: list[Pending] = []
        queue = self._queue
        while len(group) < self.MAX_GROUP:
            try:
                group.append(queue.popleft())
            except IndexError:
                break
        return group

    def _commit(self, group: list[Pending]) -> None:
        """Under write_lock: one transaction for the group; its error goes to every waiter."""
        error: BaseException | None = None
        try:
            self._ledger().write([(p.delivery_id, p.outcome) for p in group])
        except BaseException as exc:  # handed to every waiting worker
            error = exc
        for pending in group:
            pending.error = error
            pending.done = True

    def _ledger(self) -> q.LedgerWriter:
        """Under write_lock: used by one thread at a time, whichever it is."""
        if self._writer is None:
            self._conn = self.engine.connect()
            self._writer = q.LedgerWriter(self._conn, self.owner)
        return self._writer
