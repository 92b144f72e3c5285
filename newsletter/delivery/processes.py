"""Worker processes for one big mailing (`[delivery] processes`).

One Python process drives its connections from one core (the event loop of
streams.py); on a machine with more, a big mailing is split between worker
processes instead.  Each worker is a mailing pass of its own: its own owner
identity, its own claims and leases, its own ledger connection, its share of
the `concurrency` connections (the total the SMTP server sees stays
`concurrency`).  The claim/lease/fencing code already makes several processes
safe on one mailing, on SQLite and on PostgreSQL, so the workers need no
coordination beyond the database.

The parent (the process that was asked to send) runs a share itself, starts
the others with `multiprocessing`'s "spawn" (never fork: the daemon and the
web server have threads), hands them the rendered template (nothing is
rendered twice), folds their progress into its own and their counts and
errors into its report.  A worker that dies leaves its rows leased to a dead
owner; the parent frees them and sends them itself once the others are done.
A stop (SIGTERM, Ctrl-C) reaches every worker through its pipe; a worker whose
parent dies sees the pipe close and stops too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from newsletter import GC_THRESHOLDS
from newsletter.config import Settings
from newsletter.delivery.strategy import Tally
from newsletter.email.message import MessageTemplate
from newsletter.errors import DeliveryError, NewsletterError
from newsletter.logging_setup import current_logging, setup_logging

# multiprocessing (~3 ms to import) only once a pass splits: with
# `processes = "auto"` every SMTP pass asks `process_count` first.
if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = [
    "Job",
    "Workers",
    "process_count",
    "shares",
    "usable_cores",
    "uses_threads",
    "worker_end",
    "worker_start",
]

log = logging.getLogger(__name__)

# Below this many open rows per process a worker's start-up (a fresh
# interpreter and its imports, ~0.5 s of CPU) costs more than it saves.
MIN_ROWS_PER_PROCESS = 2000
# `processes = "auto"` splits a mailing with at least this many open rows
# (measured: docs/delivery.md, "A second sending process").
AUTO_MIN_ROWS = 10_000
REPORT_EVERY = 0.2  # seconds between a worker's progress messages
JOIN_GRACE = 30.0  # seconds a stopped worker gets to finish its messages in flight


def process_count(
    settings: Settings,
    open_rows: int,
    cores: int | None = None,
    threads: Callable[[], bool] | None = None,
) -> int:
    """How many processes (this one included) should send a mailing of `open_rows`.

    "auto" splits only where a second process was measured to pay: a big
    mailing, several connections, two cores, and the threaded strategy
    (`strategy = "threaded"`: "auto" takes the streams for several
    connections).  With PIPELINING one process's event loop
    already sends as fast as two processes on one SQLite file, for about two
    thirds of their CPU (docs/delivery.md, "A second sending process").  `cores` (the cores
    this process may run on) and `threads` (whether the pass will use the
    threaded strategy: it may probe the server, so it is asked last) are
    given by tests.
    """
    d = settings.delivery
    wanted = d.processes
    if wanted == "auto":
        cores = usable_cores() if cores is None else cores
        if cores < 2 or d.concurrency < 2 or open_rows < AUTO_MIN_ROWS:
            return 1
        if not (threads() if threads is not None else uses_threads(settings)):
            return 1
        wanted = 2  # the split measured (on two cores)
    return max(1, min(wanted, d.concurrency, open_rows // MIN_ROWS_PER_PROCESS))


def uses_threads(settings: Settings) -> bool:
    """Whether an SMTP pass drives its connections with threads (`delivery.choosing`).

    "auto" takes the streams at two connections or more, with or without
    PIPELINING, and a thread only for one connection to a server without
    it; so a split is asked for "threaded" alone (two processes' streams
    without PIPELINING, 0.90 of smtplib at C = 4, lost to one process's
    1.12: docs/delivery.md).
    """
    d = settings.delivery
    if d.strategy == "auto":
        if d.concurrency > 1:
            return False  # the streams, no probe needed
        from newsletter.delivery.choosing import server_pipelines

        return not server_pipelines(settings)  # one probe connection
    return d.strategy == "threaded"


def usable_cores() -> int:
    """The cores this process may run on: its affinity (a container's or taskset's
    limit), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shares(total: int, parts: int) -> list[int]:
    """`total` connections split as evenly as possible, the larger shares first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass(frozen=True)
class Job:
    """What a worker needs: everything else it reads from the database."""

    url: str  # the database, with its password (never logged)
    settings: Settings  # with this worker's concurrency and processes = 1
    mailing_id: int
    template: MessageTemplate
    wait: float
    batch: int  # rows per claim: a small mailing is shared, not taken by the first claim
    log: tuple[bool, int] | None = None  # the parent's logging (`current_logging`)


class Workers:
    """The parent's side: start the workers, forward a stop, fold their results in."""

    def __init__(
        self,
        target: Callable[[Job, Connection], None],
        url: str,
        settings: Settings,
        mailing_id: int,
        template: MessageTemplate,
        wait: float,
        batch: int,
    ) -> None:
        self.target = target  # the worker's main (mailing_pass.run_worker)
        self.url, self.settings, self.mailing_id = url, settings, mailing_id
        self.template, self.wait, self.batch = template, wait, batch
        self.procs: list[Any] = []
        self.pipes: dict[Connection, Any] = {}
        self.finished: set[Any] = set()  # workers that reported their end
        self.paused = False
        self.fatal: NewsletterError | None = None
        self.lost = 0  # workers that died without reporting
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, concurrencies: list[int], tally: Tally, stop: threading.Event) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        for concurrency in concurrencies:
            delivery = dataclasses.replace(
                self.settings.delivery, concurrency=concurrency, processes=1
            )
            job = Job(
                self.url,
                dataclasses.replace(self.settings, delivery=delivery),
                self.mailing_id,
                self.template,
                self.wait,
                self.batch,
                current_logging(),
            )
            ours, theirs = context.Pipe()
            proc = context.Process(target=self.target, args=(job, theirs), name="newsletter-sender")
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.pipes[ours] = proc
        self._reader = threading.Thread(
            target=self._read, args=(tally, stop), name="workers", daemon=True
        )
        self._reader.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self) -> None:
        """Until every worker ended; after a stop, those still running after a grace are killed."""
        deadline: float | None = None
        for proc in self.procs:
            while proc.is_alive():
                if self._stopping.is_set() and deadline is None:
                    deadline = time.monotonic() + JOIN_GRACE
                proc.join(0.1 if deadline is None else max(0.0, deadline - time.monotonic()))
                if deadline is not None and time.monotonic() >= deadline and proc.is_alive():
                    log.warning("worker process %s did not stop; killing it", proc.pid)
                    proc.kill()
                    proc.join()
        if self._reader is not None:
            self._reader.join()
        self.lost = sum(1 for proc in self.procs if proc not in self.finished)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is not None:
            self.stop()  # the parent failed: the workers finish what is in flight
        self.join()

    # ------------------------------------------------------------------ the reader thread

    def _read(self, tally: Tally, stop: threading.Event) -> None:
        from multiprocessing.connection import Connection, wait

        told = False
        open_pipes = list(self.pipes)
        while open_pipes:
            if not told and (stop.is_set() or self._stopping.is_set()):
                told = True
                for pipe in open_pipes:
                    with contextlib.suppress(OSError):
                        pipe.send(("stop",))
            for ready in wait(open_pipes, timeout=0.1):
                assert isinstance(ready, Connection)
                pipe = ready
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    open_pipes.remove(pipe)
                    pipe.close()
                    continue
                self._take(message, self.pipes[pipe], tally)

    def _take(self, message: tuple[Any, ...], proc: Any, tally: Tally) -> None:
        kind = message[0]
        if kind == "progress":
            _, done, counts = message
            tally.merge(counts, [], None)
            tally.advance(done)
        elif kind == "done":
            _, errors, last_error, paused = message
            tally.merge({}, errors, last_error)
            self.paused = self.paused or paused
            self.finished.add(proc)
        elif kind == "failed":
            _, errors, last_error, text = message
            tally.merge({}, errors, last_error)
            self.finished.add(proc)
            if self.fatal is None:
                self.fatal = DeliveryError(f"worker process {proc.pid}: {text}")


# ---------------------------------------------------------------------- the worker's side


class _Reporter:
    """A worker's progress and counts, sent to the parent every REPORT_EVERY seconds.

    Counts go with the progress, not only at the end: a worker killed
    mid-mailing has its work up to its last report in the parent's report.
    It counts calls, never reads (done, total): its pass need not count the
    mailing's rows for a total (`wants_total`, see `MailingPass.run`).
    """

    wants_total = False

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.sent = 0
        self.done = 0
        self.at = time.monotonic()
        self.source: Any = None  # the MailingPass; its tally once it runs
        self.lock = threading.Lock()  # the threaded strategy reports from every thread
        self.counted: dict[str, int] = {}

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            self.done += 1
            if (moment := time.monotonic()) - self.at >= REPORT_EVERY:
                self._flush()
                self.at = moment

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        tally: Tally | None = getattr(self.source, "tally", None)
        if tally is None:
            return
        with tally.lock:
            counts = dict(tally.by_status)
        # A row deferred, then sent, changes the counts without progress (`Tally`).
        if self.done == self.sent and counts == self.counted:
            return
        delta = {k: n - self.counted.get(k, 0) for k, n in counts.items()}
        self.pipe.send(("progress", self.done - self.sent, delta))
        self.sent, self.counted = self.done, counts


def _listen(pipe: Connection, stop: threading.Event) -> None:
    """A "stop" from the parent, or its end (the pipe closes), stops this worker."""
    try:
        while pipe.recv()[0] != "stop":
            pass
    except (EOFError, OSError):
        pass
    stop.set()


def worker_start(
    pipe: Connection, log: tuple[bool, int] | None = None
) -> tuple[threading.Event, _Reporter]:
    """In a worker process, before its pass: the stop event and the progress reporter.

    A spawned worker starts afresh: it takes the CLI's GC thresholds and, when
    the parent logs through `setup_logging` (`log`), the same log lines, on
    the standard error it shares with the parent.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    if log is not None:
        setup_logging(json_lines=log[0], level=log[1])
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the parent decides and says "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_listen, args=(pipe, stop), daemon=True).start()
    return stop, _Reporter(pipe)


def worker_end(
    pipe: Connection, reporter: _Reporter, report: Any, error: BaseException | None
) -> None:
    """In a worker process, after its pass: the last counts, then "done" or "failed"."""
    try:
        reporter.flush()
        tally: Tally | None = getattr(reporter.source, "tally", None)
        errors = list(tally.errors) if tally is not None else []
        last = tally.last_error if tally is not None else None
        if error is None:
            pipe.send(("done", list(report.errors), last, report.paused))
        else:
            text = (
                str(error)
                if isinstance(error, NewsletterError)
                else f"{type(error).__name__}: {error}"
            )
            pipe.send(("failed", errors, last, text))
    finally:
        pipe.close()
