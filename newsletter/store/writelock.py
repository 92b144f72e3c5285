"""The write lock of one delivery pass, shared with its sibling processes on SQLite.

Within a process the pass's threads (claims, the lease keeper, the group
commit) already take turns at the ledger through one `threading.Lock`, so
they never meet in SQLite's own lock, whose busy handler polls: it sleeps
1, 2, 5, 10, 15, 20, 25 … ms between tries, however soon the holder
commits.  A mailing split between processes (`[delivery] processes`) on one
SQLite file met there at every other commit: strace counted ~1,400 of those
sleeps per 10,000 messages, each one stalling a process's event loop for at
least a millisecond.  So those processes also take an exclusive `flock` on
a file beside the database before each write transaction: a writer waiting
for it sleeps in the kernel and wakes the moment the holder lets go.

The lock is advisory, for the processes of one pass: every other writer
(the daemon, the CLI, an import) still meets this one in SQLite, whose busy
timeout keeps protecting both.  It is held only around a write transaction,
never while waiting on the network, and the system drops it when its holder
dies, even by kill -9 (flock belongs to the open file, closed at exit).
PostgreSQL needs none of this: its rows are locked one by one.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from sqlalchemy import Engine

from newsletter.files import private_file

__all__ = ["WriteLock", "shared_lock_path", "write_lock"]

SUFFIX = "-writers"  # beside SQLite's own -wal and -shm


class WriteLock:
    """A `threading.Lock` that, given a path, is also an flock shared between processes.

    The thread lock comes first, so the process's threads queue on it and
    at most one of them waits in flock (flock is per open file: two threads
    of one process on the same descriptor would not exclude each other).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._thread = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            private_file(path)  # 0600, like the database beside it
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    @property
    def shared(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._thread.acquire(blocking):
            return False
        if self._fd is None:
            return True
        try:
            # A blocked flock releases the GIL: the rest of the process goes on.
            fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread.release()
            return False
        except BaseException:
            self._thread.release()
            raise
        return True

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def close(self) -> None:
        """Close the file (which drops the flock, were it held)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def shared_lock_path(engine: Engine) -> Path | None:
    """The lock file of a pass split between processes: beside a SQLite file, else None."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if database in (None, "", ":memory:"):
        return None
    return Path(f"{database}{SUFFIX}")


def write_lock(engine: Engine, shared: bool) -> WriteLock:
    """The pass's write lock: shared between processes only when `shared` and SQLite."""
    return WriteLock(shared_lock_path(engine) if shared else None)
