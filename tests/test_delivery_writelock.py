"""The write lock shared by the processes of a split pass on SQLite (store/writelock.py).

Real processes (multiprocessing's spawn, as the workers), a real SQLite file.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from newsletter.store import open_url
from newsletter.store.writelock import WriteLock, shared_lock_path

WRITES = 150  # write transactions per process


def _writer(
    db: str, lock_path: str, ready: multiprocessing.Event, go: multiprocessing.Event
) -> None:
    """Count up in `db`, each write under the shared lock; SQLite's own wait is off."""
    lock = WriteLock(Path(lock_path))
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)  # "database is locked" at once
    ready.set()
    go.wait(30)
    for i in range(WRITES):
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE counter SET n = n + 1")
            if i % 10 == 0:
                time.sleep(0.002)  # a slow transaction now and then: the other must wait
            conn.execute("COMMIT")
    conn.close()
    lock.close()


def _holder(lock_path: str, held: multiprocessing.Event) -> None:
    lock = WriteLock(Path(lock_path))
    lock.acquire()
    held.set()
    time.sleep(60)  # killed long before


def sqlite_file(tmp_path: Path) -> tuple[str, Path]:
    db = tmp_path / "news.db"
    engine = open_url(f"sqlite:///{db}")
    path = shared_lock_path(engine)
    engine.dispose()
    assert path is not None
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    conn.execute("INSERT INTO counter VALUES (0)")
    conn.close()
    return str(db), path


def test_the_lock_serialises_two_processes_writers(tmp_path: Path) -> None:
    """With SQLite's busy timeout at 0 any overlap of two write transactions
    raises "database is locked"; under the shared lock none does, and every
    write of both processes is there."""
    db, path = sqlite_file(tmp_path)
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    readies = [context.Event() for _ in range(2)]
    procs = [context.Process(target=_writer, args=(db, str(path), ready, go)) for ready in readies]
    for proc in procs:
        proc.start()
    for ready in readies:
        assert ready.wait(60)
    go.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]  # an OperationalError exits 1
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT n FROM counter").fetchone() == (2 * WRITES,)
    conn.close()
    assert path.stat().st_mode & 0o777 == 0o600  # beside the database, as private


def test_a_holder_killed_with_9_does_not_hang_the_others(tmp_path: Path) -> None:
    _, path = sqlite_file(tmp_path)
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    proc = context.Process(target=_holder, args=(str(path), held))
    proc.start()
    try:
        assert held.wait(60)
        lock = WriteLock(path)
        assert not lock.acquire(blocking=False)  # really held by the other process
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        deadline = time.monotonic() + 10
        while not lock.acquire(blocking=False):
            assert time.monotonic() < deadline, "the dead holder's lock was never released"
            time.sleep(0.01)
        lock.release()
        with lock:  # and blocking works as well
            pass
        lock.close()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def test_the_threads_of_one_process_take_turns_too(tmp_path: Path) -> None:
    """flock alone would let two threads on one descriptor in together."""
    _, path = sqlite_file(tmp_path)
    lock = WriteLock(path)
    assert lock.acquire(blocking=False)
    assert not lock.acquire(blocking=False)
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()
    lock.close()


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "postgresql+psycopg://u@127.0.0.1:1/db"], ids=["memory", "pg"]
)
def test_no_shared_lock_without_a_sqlite_file(url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    assert shared_lock_path(engine) is None
    assert not WriteLock(None).shared
