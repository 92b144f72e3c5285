"""A big file is read and validated in a second process while this one stages it.

Reading, mapping and validating a row costs Python more than SQLite spends
storing it in the stage, and one process did both in turn.  Here a child
process (spawned: nothing of this process's connections or threads is
inherited) runs `read_source` in batches, and for most of them
`validated_rows` too, sending the valid rows back (marshal); the other
batches (`SHARE_OF`) come as they were read and this process validates them
with the same code.  Meanwhile this process makes the stage's tuples
(`staged_runs`: attributes as JSON text, rows by shape) and writes them into
the TEMP table: the split that keeps both processes about equally busy.  The
pipe holds a few batches (`PIPE_BYTES`), so the child is never far ahead:
memory stays flat.

What the child learned comes back with the rows: the problems each batch met
(reported here in file order among this process's own: file, line, reason;
the first `MAX_PROBLEMS`, the rest counted), and at the end every counted
row and the sniffed file facts; the progress in bytes with every batch; an
error that stops the file (`SubscriberError`: empty file, undecodable bytes,
unknown format) is raised here with its own message and location.  A small
file is read in this process: starting a Python costs more than it saves
(`PARALLEL_MIN_BYTES`); so is any file when no core is free (`worth_a_process`).
The child imports no SQLAlchemy (`driver_time`): it starts in a fifth of a
second, which this process spends waiting for its first rows."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import marshal
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import newsletter
from newsletter import GC_THRESHOLDS
from newsletter.audience.addresses import normalised
from newsletter.audience.importcounts import ImportCounts
from newsletter.audience.serviceformats import SourceRow
from newsletter.errors import Problem, SubscriberError

if TYPE_CHECKING:
    from newsletter.audience.importwrites import _Raw

PARALLEL_MIN_BYTES = 8 << 20  # ~140,000 rows of a typical export
BATCH_ROWS = 1000  # ~140 kB a batch: several fit the pipe
PIPE_BYTES = 1 << 20  # Linux's default limit for a pipe (/proc/sys/fs/pipe-max-size)
_HEAD = 8  # bytes of a frame's length

Tick = Callable[[int], None]


def worth_a_process(path: Path) -> bool:
    """Whether `path` is big enough to pay for starting a Python, with a core to run it.

    On a machine whose cores are all busy a second process only splits this
    import's share of them, and the pipe between the two adds work: measured
    slower there (200,000 rows, load 5 on 2 cores: 10.5–10.7 s against 6.1–8.2 s;
    1,000,000 rows, load 4: 17–22 s against 14 s)."""
    if not path.is_file() or path.stat().st_size < PARALLEL_MIN_BYTES:
        return False
    return _spare_core()


def _spare_core() -> bool:
    """Whether the other processes leave a core free for the reader (and one for us).

    Measured now, over `IDLE_WINDOW` seconds (Linux's /proc/stat), where the
    system has it: the load average trails by a minute, so on a quiet machine
    an import that followed another busy one (a script, a benchmark) still
    saw the load of the one before and read the file alone.  Elsewhere, the
    one-minute load average."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return False
    idle = _idle_cores(cores)
    if idle is not None:
        return idle >= SPARE_IDLE_CORES
    return os.getloadavg()[0] <= cores - 1


IDLE_WINDOW = 0.1  # seconds: 10 clock ticks per core; a file this big takes seconds
# Our own process and the reader each need most of a core: with more than
# half a core taken by others on a 2-core machine, the two only split what
# is left and the pipe's work comes on top.
SPARE_IDLE_CORES = 1.5


def _idle_cores(cores: int) -> float | None:
    """How many cores stood idle over the next `IDLE_WINDOW` seconds, or None
    where /proc/stat cannot say.  This process sleeps meanwhile: the figure is
    what every other process leaves."""
    before = _cpu_ticks()
    if before is None:
        return None
    time.sleep(IDLE_WINDOW)
    after = _cpu_ticks()
    if after is None or after[1] <= before[1]:
        return None
    return cores * (after[0] - before[0]) / (after[1] - before[1])


def _cpu_ticks() -> tuple[int, int] | None:
    """(idle, all) clock ticks of every core since boot: /proc/stat's first line
    (user nice system idle iowait irq softirq steal; idle counts iowait, and a
    virtual machine's stolen ticks are busy)."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    try:
        ticks = [int(f) for f in fields[1:9]]
    except ValueError:
        return None
    return ticks[3] + ticks[4], sum(ticks)


@dataclass(frozen=True)
class ValidatedRows:
    """`validated_rows`' tuples of one file, from a child process; iterating
    runs the child and fills `counts` (rows, problems, files) as `validated_rows` would."""

    path: Path
    fmt: str
    driver: str  # the URL's drivername: the child builds the same dialect
    counts: ImportCounts
    progress: Tick | None = None

    def __iter__(self) -> Generator[tuple[Any, ...], None, None]:
        # A plain `python -m` child, not multiprocessing: spawning re-runs the
        # caller's main script in the child, which a script without a
        # `__main__` guard does not survive.  The child imports `newsletter`
        # from where this process did.
        root = str(Path(newsletter.__file__).resolve().parent.parent)
        path_var = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        # In a process group of its own: a terminal's Ctrl-C goes to the
        # foreground group, and reached the child while Python was still
        # starting there (before it could ignore it), which printed a
        # traceback of its own ("Fatal Python error ... KeyboardInterrupt").
        # This process stops the import, and the child with it (below).
        child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(self.path), self.fmt, self.driver],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path_var},
            process_group=0,
        )
        assert child.stdout is not None
        _widen(child.stdout.fileno())
        finished = False
        try:
            yield from self._receive(child.stdout)
            finished = True
        finally:
            if not finished:  # an error, here or there: the child must not linger
                child.kill()
            child.wait()
            child.stdout.close()

    def _receive(self, stream: IO[bytes]) -> Iterator[tuple[Any, ...]]:
        report = self.counts.report
        while frame := _read_frame(stream):
            kind, payload, done = _decode(frame)
            if self.progress is not None and done:
                self.progress(done)
            if kind == "rows":  # validated there, with the problems they met
                rows, problems = payload
                for problem in problems:
                    report(_problem(problem))
                yield from rows
            elif kind == "items":  # this process's share (`SHARE_OF`): validated here
                items, clean = payload
                here = _PathsBack(self.counts)
                yield from validated_rows(items if clean else _unwired(items), here, _same)
                self.counts.rows += here.rows
            elif kind == "end":
                _add_counts(self.counts, payload)
                return
            else:
                message, path, line = payload
                raise SubscriberError(message, path=path, line=line)
        raise SubscriberError("the process reading the file stopped unexpectedly", path=self.path)


def _widen(fd: int) -> None:
    """Let the pipe hold `PIPE_BYTES` (Linux; elsewhere it keeps its size), so
    that the child runs several batches ahead while this process stages.

    Not a thread draining the pipe into a queue, as before: while this
    process's main thread releases and retakes the GIL around every row
    SQLite stores, such a thread got the GIL back only after the 5 ms switch
    interval, so the child waited on a full pipe and the two mostly took
    turns (1M rows, quiet machine: 10.8 s to stage them, 5.6 s and 5.5 s of
    CPU in the two processes)."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with contextlib.suppress(OSError):  # above the system's limit: as it is
            fcntl.fcntl(fd, setsize, PIPE_BYTES)


def _read_frame(stream: IO[bytes]) -> bytes:
    """One length-prefixed frame; b"" at the end of the stream, or where it
    ends inside a frame (a child killed mid-write): cut short, it is no frame."""
    head = stream.read(_HEAD)
    if len(head) < _HEAD:
        return b""
    size = int.from_bytes(head, "big")
    frame = stream.read(size)
    return frame if len(frame) == size else b""


def _encode(message: tuple[str, Any, int]) -> bytes:
    """A frame: marshal for batches of plain rows (str, int, None: this
    process's bottleneck, and marshal writes them ~4x quicker than pickle),
    pickle for anything else (counts, problems, PostgreSQL's staged times)."""
    try:
        return b"m" + marshal.dumps(message)
    except ValueError:  # "unmarshallable object"
        return b"p" + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def _decode(frame: bytes) -> Any:
    """What `_encode` made (our own child's output, the same Python)."""
    body = memoryview(frame)[1:]
    return marshal.loads(body) if frame[:1] == b"m" else pickle.loads(body)


def _add_counts(counts: ImportCounts, child: ImportCounts) -> None:
    """What the child counted (its problems were reported batch by batch)."""
    counts.rows += child.rows
    counts.files.extend(child.files)


# Of every `n` batches of the file, the first `k` are validated by the
# importing process instead (`SHARE_OF[database]`: (k, n)): reading, mapping
# and validating cost the child more than storing everything costs that
# process (SQLite, 1M rows: ~4.5 s of CPU against ~2.9 s), and the stage
# waited for the child.  Handing it the validation (a third of the child's
# work per row) of one batch in two leaves both about equally busy (~3.9 s
# each; with two in five the child still had ~0.3 s more).  On PostgreSQL
# the server's COPY needs a core too: the stage was quickest with the
# child validating everything (4.9 s, against 5.1 s with one in two).
SHARE_OF = {"sqlite": (1, 2), "postgresql": (0, 1)}


def main(path: Path, fmt: str, driver: str, out: IO[bytes]) -> None:
    """The child: `read_source` in batches of `BATCH_ROWS` records onto `out`
    (`_encode`), most of them through `validated_rows` ("rows", with the
    problems they met), the importing process's share as they were read
    ("items", `_wired`)."""
    # Imported here: the parent needs none of this to start the child.
    from newsletter.audience.csvformats import read_source

    done = 0

    def note(position: int) -> None:
        nonlocal done
        done = position

    def send(message: tuple[str, Any, int]) -> None:
        frame = _encode(message)
        out.write(len(frame).to_bytes(_HEAD, "big") + frame)
        out.flush()

    counts = _Shipped()
    as_driver_time = driver_time(driver)
    mine, every = SHARE_OF.get(driver.split("+")[0], (0, 1))
    try:
        source = iter(read_source(path, fmt, progress=note, infos=counts.files))
        for number in itertools.count():
            batch = list(islice(source, BATCH_ROWS))
            if not batch:
                break
            if number % every < mine:
                items = [_wired(item, as_driver_time) for item in batch]
                clean = not any(isinstance(item, Problem) for item in batch)
                send(("items", (items, clean), done))
                continue
            rows = list(validated_rows(batch, counts, as_driver_time))
            send(("rows", (rows, counts.take()), done))
        # A plain ImportCounts: this module runs as __main__ here, whose
        # classes the importing process could not unpickle.
        ended = ImportCounts(rows=counts.rows, files=counts.files)
        message: tuple[str, Any, int] = ("end", ended, done)
    except SubscriberError as exc:
        message = ("error", (exc.message, exc.path, exc.line), done)
    except BrokenPipeError:
        return  # the parent stopped reading (it failed): nothing to tell
    except Exception as exc:  # a bug: its traceback, not a silent EOF
        text = "".join(traceback.format_exception(exc))
        message = ("error", (f"reading the file failed:\n{text}", path, None), done)
    with contextlib.suppress(BrokenPipeError):
        send(message)


class _Shipped(ImportCounts):
    """The child's counts: its problems go with the batch that met them
    (`take`), and the importing process reports them in file order among
    those of the batches it validates itself; rows and files come at the end."""

    def __init__(self) -> None:
        super().__init__()
        self._met: list[tuple[Any, ...]] = []

    def report(self, problem: Problem) -> None:
        self._met.append(_wired_problem(problem))

    def take(self) -> list[tuple[Any, ...]]:
        met, self._met = self._met, []
        return met


# A record as it crosses the pipe (marshal: no Path, no datetime, no named
# tuple): a problem as its fields (`_WIRED_PROBLEM` of them), a row as the
# `SourceRow` fields with the path as text and the time as the driver takes
# it, which `validated_rows` reads as they are (no tuple made again per row).
_WIRED_PROBLEM = 5


def _wired_problem(problem: Problem) -> tuple[Any, ...]:
    path = None if problem.path is None else str(problem.path)
    return (problem.message, path, problem.line, problem.severity, problem.key)


def _problem(wired: Sequence[Any]) -> Problem:
    message, path, line, severity, key = wired
    return Problem(message, None if path is None else Path(path), line, severity, key)


def _wired(item: SourceRow | Problem, as_driver_time: Callable[[datetime], Any]) -> tuple[Any, ...]:
    if isinstance(item, Problem):
        return _wired_problem(item)
    path, line, raw_email, name, status, reason, attributes, since, warnings = item
    since = as_driver_time(since) if since else None
    return (str(path), line, raw_email, name, status, reason, attributes, since, warnings)


def _unwired(items: list[tuple[Any, ...]]) -> Iterator[Any]:
    """`_wired` items as `validated_rows` takes them: its problems as `Problem`s."""
    for item in items:
        yield _problem(item) if len(item) == _WIRED_PROBLEM else item


class _PathsBack(ImportCounts):
    """Counts for `validated_rows` over `_wired` rows, whose path is text: a
    problem it reports names the file as a `Path` again, in `counts`."""

    def __init__(self, counts: ImportCounts) -> None:
        super().__init__()
        self._counts = counts

    def report(self, problem: Problem) -> None:
        if isinstance(problem.path, str):
            problem = replace(problem, path=Path(problem.path))
        self._counts.report(problem)


def _same(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- the rows


def validated_rows(
    source: Iterable[SourceRow | Problem],
    counts: ImportCounts,
    as_driver_time: Callable[[datetime], Any],
) -> Generator[tuple[Any, ...], None, None]:
    """`importer`'s validation: one (key, email, name, status, reason,
    attributes or None, since as the driver takes it or None) per valid row;
    every problem reported, every row counted.

    The first half of an import's hot loop, and what a reader process runs:
    the rest (`staged_runs`) stays with the process that stages, which else
    waited for a child doing all of it (1M rows: the child ~7 s of CPU, this
    process ~3 s)."""
    report = counts.report
    rows = 0
    try:
        for item in source:
            rows += 1
            if isinstance(item, Problem):
                report(item)
                continue
            # One unpacking: a NamedTuple's fields are properties, one call each.
            path, line, raw_email, name, status, reason, attributes, since, warnings = item
            if warnings:  # rare: no loop to set up for every row
                for warning in warnings:
                    report(Problem(warning, path, line, "warning"))
            if not raw_email:
                report(Problem("no email address", path, line))
                continue
            try:
                email, key = normalised(raw_email)
            except SubscriberError as exc:
                report(Problem(exc.message, path, line))
                continue
            yield (key, email, name, status, reason, attributes or None,
                   as_driver_time(since) if since else None)  # fmt: skip
    finally:
        counts.rows += rows


RUN_ROWS = 1000


def driver_time(driver: str) -> Callable[[datetime], Any]:
    """A time as the store's driver takes it, exactly what `importwrites._Raw.time`
    gives for that database (tests/test_import_reader.py compares them), made
    here without SQLAlchemy: importing it was most of this process's start,
    which the importing process spent waiting for its first rows."""
    if driver.split("+")[0] != "sqlite":
        return _aware  # PostgreSQL's driver takes the aware datetime itself

    def sqlite(value: datetime) -> str:
        # SQLAlchemy's SQLite DATETIME text, of the UTC time (schema.UtcDateTime).
        utc = _aware(value).astimezone(UTC)
        return (
            f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
            f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}"
        )

    return sqlite


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:  # as schema.UtcDateTime refuses one
        raise ValueError("naive datetime given to the store")
    return value


def staged_runs(
    rows: Iterator[tuple[Any, ...]], raw: _Raw
) -> Generator[tuple[bool, list[tuple[Any, ...]]], None, None]:
    """`validated_rows`' tuples as the stage's, in file order: runs of up to
    `RUN_ROWS` rows of one shape, (True, rows in `stagetables.PLAIN_COLUMNS`) or
    (False, rows in `STAGED_COLUMNS`), the attributes as the JSON column's own text.
    A plain row binds four values instead of seven, which was half of what
    SQLite spent storing a million rows (each bound value costs, a None more
    than a string: sqlite3 looks for an adapter for it; a default costs
    nothing).  A new subscriber's uid is derived from its row id
    (`newsletter.store.uids`): nothing to draw per row.

    Closing this closes `rows` at once (a reader process stops with it)."""
    dumps = raw.json_text
    shape: bool | None = None  # the current run's: True plain, False full
    run: list[tuple[Any, ...]] = []
    try:
        for key, email, name, status, reason, attributes, since in rows:
            text = dumps(attributes) if attributes else None
            plain = status == "active" and reason is None and since is None
            if run and (plain is not shape or len(run) == RUN_ROWS):
                yield bool(shape), run
                run = []
            shape = plain
            run.append((key, email, name, text) if plain else
                       (key, email, name, status, reason, text, since))  # fmt: skip
        if run:
            yield bool(shape), run
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    # Ctrl-C is the parent's to handle: it stops the import, and this with it
    # (a group of its own keeps a terminal's away; a signal sent to this
    # process by hand is ignored as well).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The CLI's thresholds, as every newsletter process (`newsletter.GC_THRESHOLDS`):
    # at the default one the collector walked each batch on its way to the
    # pipe (callgrind, 200,000 rows: 1.5 % of this process's instructions).
    gc.set_threshold(*GC_THRESHOLDS)
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.stdout.buffer)
