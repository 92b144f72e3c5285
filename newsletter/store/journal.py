"""The outcome journal: a SQLite sender's outcomes, appended to a file first.

Invariant 2 wants each outcome on disk before the connection's next final
dot.  On SQLite a commit of one outcome cost ~45 µs of CPU (BEGIN
IMMEDIATE, six `fcntl` locks, ~6 WAL frames of four B-trees, COMMIT), the
largest share of what a one-connection pass spends beyond smtplib's own
sending; the same UPDATE in groups of 200 costs ~7 µs a row.  So a pass on
a SQLite file appends each outcome as one line to a journal of its own
(one `write`, as durable against a crash as a WAL commit with
`synchronous=NORMAL`: both survive kill -9, neither a power cut) and folds
the lines into the ledger in groups: before each claim, before its leases
are released, whenever the pass reads what outcomes it recorded, and at
its end.  The fold is the fenced UPDATE of `store.outcomes`, so folding a
line twice changes nothing (the first fold cleared the lease).

Files, beside the database (`<database>-outcomes/`, private):

* `<owner>.lock`: held (`flock`) by the live pass for its whole life, so
  another process can tell a dead owner's journal from a live one's;
* `<owner>.<n>.log`: the lines; a fold starts the next file, folds the
  previous one's lines and then deletes it.

A dead owner's files (kill -9, a lost worker process) are folded by
whoever frees dead leases (`recover`), before its leases are freed, so its
journaled rows are not sent again.  A live owner whose leases lapsed
(stalled past its lease) has its lines folded, read-only, by a claim about
to take its rows (`fold_lapsed`).  PostgreSQL is not journaled: its
senders run on several hosts and only the database is shared.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import Connection, Engine, select

from newsletter.errors import StoreError
from newsletter.files import PRIVATE_FILE
from newsletter.store.outcomes import RECORD, Outcome, outcome_parameters
from newsletter.store.schema import deliveries

log = logging.getLogger(__name__)

SUFFIX = "-outcomes"
OUTCOMES = frozenset({"sent", "deferred", "failed", "skipped", "queued"})


@dataclass(frozen=True)
class Line:
    """One journaled outcome: the delivery, its new state, when it was reached."""

    delivery_id: int
    outcome: Outcome
    at: float  # time.time()

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)


def folder_of(engine: Engine) -> Path | None:
    """The journal folder of a SQLite file database; None otherwise (nothing journaled)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    resolved = Path(database).resolve()  # one folder for every name of the file
    return resolved.parent / f"{resolved.name}{SUFFIX}"


def file_name(owner: str) -> str:
    """An owner (host:pid:random, or anything in $NEWSLETTER_OWNER) as a file name."""
    return quote(owner, safe="")


def encode(line: Line) -> bytes:
    o = line.outcome
    code = "" if o.code is None else str(o.code)
    due = "" if o.next_attempt_at is None else repr(o.next_attempt_at.timestamp())
    text = json.dumps(o.text)
    # The newline comes first: a line cut short by a failed write (a full
    # disk) ends there, instead of running into the next one.
    return f"\n{line.delivery_id}\t{o.status}\t{o.attempts}\t{code}\t{due}\t{line.at!r}\t{text}".encode()


def decode(raw: bytes) -> Line | None:
    """One line back; None for a line cut short (a crash mid-write) or not ours."""
    try:
        ident, status, attempts, code, due, at, text = raw.decode().split("\t", 6)
        if status not in OUTCOMES:
            return None
        outcome = Outcome(
            status,
            int(attempts),
            int(code) if code else None,
            json.loads(text),
            datetime.fromtimestamp(float(due), UTC) if due else None,
        )
        return Line(int(ident), outcome, float(at))
    except (ValueError, UnicodeDecodeError):
        return None


class Journal:
    """The live pass's journal: `append` on the hot path, `take`/`folded` around a fold."""

    def __init__(self, folder: Path, owner: str) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        self.name = file_name(owner)
        self._lock_fd = _locked(folder / f"{self.name}.lock")  # ours until this process ends
        self._number = 0
        try:
            self._fd = self._open(0)
        except OSError:
            os.close(self._lock_fd)
            raise
        self._lines: list[Line] = []
        self._swap = threading.Lock()  # one file and one list per line, even across a take

    def _path(self, number: int) -> Path:
        return self.folder / f"{self.name}.{number}.log"

    def _open(self, number: int) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        return os.open(self._path(number), flags, PRIVATE_FILE)

    def append(self, line: Line) -> None:
        """On disk (in the page cache: a crash of the process keeps it) when this returns."""
        data = memoryview(encode(line))
        with self._swap:
            while data:  # a regular file may take part of it (a disk filling up)
                data = data[os.write(self._fd, data) :]
            self._lines.append(line)

    @property
    def lines(self) -> list[Line]:
        """The lines not folded yet (read only)."""
        return self._lines

    def pending(self) -> bool:
        return bool(self._lines)

    def take(self) -> tuple[list[Line], int]:
        """The lines not folded yet, and the file that holds them; new lines go to the next."""
        with self._swap:
            following = self._open(self._number + 1)  # raises with nothing changed
            lines, self._lines = self._lines, []
            old_fd, number = self._fd, self._number
            self._number, self._fd = number + 1, following
        os.close(old_fd)
        return lines, number

    def give_back(self, lines: list[Line]) -> None:
        """A fold that failed: its lines go first in the next one (their file stays)."""
        with self._swap:
            self._lines[:0] = lines

    def folded(self, number: int) -> None:
        """Every line up to file `number` is in the ledger: its files go."""
        for n, path in _logs(self.folder, self.name):
            if n <= number:
                path.unlink(missing_ok=True)

    def close(self, *, remove: bool) -> None:
        """`remove` after the last fold: no file of this owner is left.  Otherwise
        the files stay and the lock is let go, so `recover` folds them."""
        try:
            os.close(self._fd)
            if remove:
                self.folded(self._number)
                (self.folder / f"{self.name}.lock").unlink(missing_ok=True)
        finally:
            os.close(self._lock_fd)


def _locked(path: Path) -> int:
    """An fd holding the flock of `path`, the file still under that name.

    Between our open and our flock, a `recover` elsewhere may have found the
    file free and deleted it: a lock on a deleted file guards nothing, so
    take a fresh one then.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _number_of(path: Path) -> int | None:
    try:
        return int(path.name.rsplit(".", 2)[1])
    except (IndexError, ValueError):
        return None


def _logs(folder: Path, name: str) -> list[tuple[int, Path]]:
    """An owner's journal files by number, oldest first."""
    return sorted((n, p) for p in folder.glob(f"{name}.*.log") if (n := _number_of(p)) is not None)


def read_lines(folder: Path, name: str) -> list[Line]:
    """Every complete line of an owner's files, oldest file first."""
    return _read([path for _, path in _logs(folder, name)])


def _read(paths: list[Path]) -> list[Line]:
    lines: list[Line] = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # folded and deleted meanwhile by its live owner
            continue
        lines.extend(line for chunk in raw.splitlines() if (line := decode(chunk)) is not None)
    return lines


def apply(conn: Connection, owner: str, lines: Iterable[Line]) -> int:
    """Fold an owner's lines in the caller's transaction (fenced); returns how many held."""
    rows = [outcome_parameters(line.delivery_id, line.outcome, owner, line.when) for line in lines]
    if not rows:
        return 0
    return int(conn.execute(RECORD, rows).rowcount)


def _owners(folder: Path) -> Iterator[tuple[str, str, Path]]:
    """(owner, its file name, its lock file) of every journal in the folder."""
    for lock in folder.glob("*.lock"):
        name = lock.name.removesuffix(".lock")
        yield unquote(name), name, lock


class Recovered:
    """Dead owners' journals folded in a transaction: deleted once it committed.

    Until then their locks stay held here, so no one else folds them too,
    and a rollback (or a crash before the commit) leaves them for the next
    `free_dead_leases`: folding a line twice changes nothing.
    """

    def __init__(self) -> None:
        self._held: list[tuple[int, Path, list[Path]]] = []

    def committed(self) -> None:
        for _, lock, logs in self._held:
            for path in logs:
                path.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        held, self._held = self._held, []
        for fd, _, _ in held:
            os.close(fd)


def recover(conn: Connection, folder: Path | None, recovered: Recovered) -> None:
    """Fold the journals of dead owners (no one holds their lock) in the caller's
    transaction, which frees the dead owners' leases next: their journaled rows
    keep their outcomes instead of going back to the queue.  The caller calls
    `recovered.committed()` after its commit, `recovered.close()` in any case.
    """
    if folder is None or not folder.is_dir():
        return
    for owner, name, lock in _owners(folder):
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # its owner closed it meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # alive
        logs = [path for _, path in _logs(folder, name)]
        recovered._held.append((fd, lock, logs))
        held = apply(conn, owner, _read(logs))
        log.info("folded %d journaled outcome(s) of dead sender %s", held, owner)


def fold_lapsed(conn: Connection, folder: Path | None, owners: Iterable[str]) -> int:
    """Fold, read-only, the journals of these live owners whose leases lapsed.

    A claim is about to take their rows: the lines on file are outcomes they
    reached, so those rows must not go out again.  The owner folds them
    later too, and its fenced UPDATE then changes nothing.
    """
    if folder is None or not folder.is_dir():
        return 0
    held = 0
    for owner in owners:
        held += apply(conn, owner, read_lines(folder, file_name(owner)))
    return held


def unfolded_lines(engine: Engine, since: datetime) -> dict[int, str]:
    """{delivery id: status} of the outcomes journaled since `since` by any pass
    on this database, read from the files only.  Read them before the
    database (`still_sending`): a fold in between then shows in the ledger."""
    folder = folder_of(engine)
    if folder is None or not folder.is_dir():
        return {}
    start = since.timestamp()
    latest: dict[int, str] = {}
    for _, name, _ in _owners(folder):
        for line in read_lines(folder, name):
            if line.at >= start:
                latest[line.delivery_id] = line.outcome.status
    return latest


def still_sending(
    conn: Connection, journaled: dict[int, str], mailing_id: int | None = None
) -> dict[str, int]:
    """{status: n} of those journaled outcomes whose rows the ledger still has as
    "sending" (not folded yet).  Read only: never waits for the write lock."""
    counts: dict[str, int] = {}
    ids = list(journaled)
    for first in range(0, len(ids), 500):
        query = select(deliveries.c.id).where(
            deliveries.c.id.in_(ids[first : first + 500]), deliveries.c.status == "sending"
        )
        if mailing_id is not None:
            query = query.where(deliveries.c.mailing_id == mailing_id)
        for ident in conn.execute(query).scalars():
            counts[journaled[ident]] = counts.get(journaled[ident], 0) + 1
    return counts


def journal_error(exc: OSError, count: int) -> StoreError:
    return StoreError(f"cannot journal {count} delivery outcome(s): {exc.strerror or exc}")
