"""The ledger's one writer thread: group commits of delivery outcomes."""

from __future__ import annotations

import queue
import threading

from sqlalchemy import Engine

from newsletter.store import mailings as q


class Pending:
    """One outcome waiting for the recorder's commit."""

    __slots__ = ("_done", "delivery_id", "error", "outcome")

    def __init__(self, delivery_id: int, outcome: q.Outcome) -> None:
        self.delivery_id = delivery_id
        self.outcome = outcome
        # A plain lock, held until the commit: C-level acquire/release, where a
        # threading.Event costs a Condition and its Python-level waiter list
        # (profiled: Event.set was a third of the recorder thread's GIL time).
        self._done = threading.Lock()
        self._done.acquire()
        self.error: BaseException | None = None

    def set_done(self, error: BaseException | None = None) -> None:
        """Called once by the recorder after the commit (or its failure)."""
        self.error = error
        self._done.release()

    def wait(self) -> None:
        """Until committed; re-raises the commit's error in the waiting worker."""
        if self._done.locked():
            self._done.acquire()
            self._done.release()  # a second wait() returns at once
        if self.error is not None:
            raise self.error


class Recorder:
    """The one thread that commits outcomes, several per transaction (group commit).

    A worker hands over its outcome and waits for the commit before it ends
    another message (see `MailingPass._deliver`), so at any moment each worker has at most one message
    whose fate the ledger does not know: after kill -9, at most `concurrency`
    messages can go twice (invariant 2).  Grouping the commits, and taking
    `write_lock` for every write of this process, spares SQLite's busy-wait
    sleeps when several threads would otherwise fight for its write lock.
    """

    MAX_GROUP = 256

    def __init__(self, engine: Engine, write_lock: threading.Lock) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def submit(self, delivery_id: int, outcome: q.Outcome) -> Pending:
        pending = Pending(delivery_id, outcome)
        self._queue.put(pending)
        return pending

    def record(self, delivery_id: int, outcome: q.Outcome) -> None:
        self.submit(delivery_id, outcome).wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            self._loop(q.LedgerWriter(conn))

    def _loop(self, writer: q.LedgerWriter) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            self._commit(writer, group)

    def _commit(self, writer: q.LedgerWriter, group: list[Pending]) -> None:
        error: BaseException | None = None
        try:
            with self.write_lock:
                writer.write([(p.delivery_id, p.outcome) for p in group])
        except BaseException as exc:  # handed to every waiting worker
            error = exc
        for pending in group:
            pending.set_done(error)
