"""SIGTERM and Ctrl-C from the very first moment of a command, not only once it is running.

Importing the CLI takes about a second (SQLAlchemy, Liquid, Markdown ...), and
until `run` or `send` installed their own handlers a SIGTERM (systemd stopping
a unit that had just started) killed the process with -15, and a Ctrl-C
printed a traceback or click's "Aborted!".  So the entry point calls `hold()`
before importing anything else: SIGTERM and SIGINT are then only *noted*.
Once click knows the command, `settle()` decides what the note means:

* `run` and `send` stop cleanly: they take `stop_event()` as their own stop
  flag, so a signal noted during start-up makes them stop before (or as soon
  as) they begin: the daemon with exit status 0, `send` and `run --once`
  with `STOPPED` (cut short: running them again finishes the work).  The
  same handler stays theirs to the end, for both signals: one path for a
  stop whatever the command (the daemon, once serving, logs it too); a
  second signal while they stop ends them at once;
* any other command gets the default dispositions back: a SIGTERM noted
  meanwhile is delivered again, so it dies by the signal exactly as before,
  and a Ctrl-C is raised (KeyboardInterrupt) where click reports it.

A command whose work is one transaction (`subscribers import`, `sync`) takes
Ctrl-C as a stop until that transaction commits, and no longer after
(`until_saved`, `saving`); from its very start: its group keeps a Ctrl-C noted
(`settle(ctrl_c_later=True)`) until the command's `until_saved` takes it over.

A stop has a budget as a whole: `STOP_BUDGET` seconds after the first
SIGTERM (or Ctrl-C) the process is gone, whatever it was waiting for.  The
orderly stop (the messages in flight finish, leases and the daemon lock are
released) fits in it; a mail server that does not answer the last message
within it (an SMTP timeout is 30 s by default) no longer holds the exit: that
message is left as after a crash, retried by the next run (it may arrive
twice, invariant 2), and the process exits at the deadline (`stopping()`):
the daemon with 0, `send` and `run --once` with `STOPPED` after printing
their summary of what was done (`at_forced_exit`).

Stdlib only, so that importing it costs nothing.  A signal that arrives while
the interpreter itself is still starting (before Python runs this module,
~0.1 s after exec here) cannot be caught by any Python code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# SIGTERM → gone within this many seconds (docs/daemon.md; systemd's
# TimeoutStopSec there is 15), whatever is stuck: one deadline for every wait.
STOP_BUDGET = 10.0

# The exit status of a `send` or `run --once` that a SIGTERM or Ctrl-C (or the
# stop budget) ended before it was done, and of an import that Ctrl-C stopped
# before it was saved: running it again finishes the work.
# 0, 1 and 2 keep their meanings (success, a problem to fix, a usage error).
STOPPED = 3

# What the entry point holds (Ctrl-C first: whoever sees SIGTERM caught knows
# that SIGINT is too).
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_EVENT = threading.Event()
_held = False
_graceful = False
_cli = False  # this process is the command line's own (`hold()` ran in it)
_noted: set[int] = set()  # which signals came while held
# SIGINT as the process started: a shell starts a background job with it
# ignored, and that stays so.
_int_at_start: Callable[[int, FrameType | None], Any] | int | None = signal.default_int_handler
# Ctrl-C in a command whose work is one transaction (`until_saved`): whether
# one came, and whether that transaction is committing (None: no such command).
_ctrl_c = False
_saving: bool | None = None
_deadline: float | None = None
# The daemon's log handler (`logging_setup.setup_logging`), kept after the
# command removed it: the forced exit comes after `run` returned and took its
# handler off, while the interpreter waits for a sending thread, and its line
# must still be written as every other one (a JSON line under --log-json).
_log_handler: logging.Handler | None = None
# What the forced exit does for the command that registered it
# (`at_forced_exit`): its summary of what was done, and its exit status.
_report: Callable[[], None] | None = None
_status = 0
# The summary reads the database: a server that does not answer either must
# not hold the exit past the budget by more than this.
REPORT_SECONDS = 2.0


def _note(signum: int, _frame: FrameType | None) -> None:
    if _graceful and _EVENT.is_set():  # a second signal while stopping: die of it now
        insist(signum)
        return
    _noted.add(signum)
    _EVENT.set()
    if _graceful:
        stopping()


def insist(signum: int) -> None:
    """A second signal while the command stops: it dies of that signal now,
    the message in flight left as after a crash (retried by the next run).
    Only in the command line's own process: the library used in-process
    (tests) is never killed from under."""
    if not _cli:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stopping() -> None:
    """A stop began (the first signal): exit at `STOP_BUDGET` from now if the
    command has not ended by then (see `at_forced_exit`).  Only in the real command (held by the entry
    point): the library used in-process (tests) is never exited from under."""
    global _deadline
    if not _held or _deadline is not None:
        return
    _deadline = time.monotonic() + STOP_BUDGET
    threading.Thread(target=_give_up, args=(_deadline,), name="stop-budget", daemon=True).start()


def _give_up(deadline: float) -> None:
    # A daemon thread: it runs on while the interpreter, at exit, joins a
    # sending thread still blocked on a silent server, and ends that wait.
    time.sleep(max(0.0, deadline - time.monotonic()))
    message = (
        f"stopped: {STOP_BUDGET:g} s after the signal a message still had no answer from "
        "the mail server; exiting without it: the next run retries it (it may arrive twice)"
    )
    logger = logging.getLogger("newsletter")
    handlers = list(logger.handlers) or ([_log_handler] if _log_handler is not None else [])
    if handlers:
        record = logger.makeRecord(
            "newsletter",
            logging.WARNING,
            __file__,
            0,
            message,
            (),
            None,
            extra={"event": "stop-budget"},
        )
        for handler in handlers:
            handler.handle(record)
            handler.flush()
    else:
        sys.stderr.write(message + "\n")
    if _report is not None:
        # A daemon thread too: the exit below ends it if the database hangs.
        summary = threading.Thread(target=_report, name="stop-report", daemon=True)
        summary.start()
        summary.join(REPORT_SECONDS)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, a broken pipe
            stream.flush()
    os._exit(_status)


def at_forced_exit(report: Callable[[], None] | None, *, status: int = 0) -> None:
    """Before the forced exit: `report()` prints what the command did (given at
    most `REPORT_SECONDS`), then the process exits with `status`.  `send` and
    `run --once` print their summary and exit `STOPPED`; the daemon, whose
    normal end is a SIGTERM, keeps 0 (the default)."""
    global _report, _status
    _report, _status = report, status


def log_to(handler: logging.Handler) -> None:
    """The handler the forced exit's line goes to when the command has removed
    its own by then (see `_log_handler`)."""
    global _log_handler
    _log_handler = handler


def hold() -> None:
    """Note SIGTERM and Ctrl-C instead of dying of them, until `settle()` (entry point only)."""
    global _held, _cli, _int_at_start
    if _held or threading.current_thread() is not threading.main_thread():
        return  # held already: SIGINT's disposition at the start was taken then
    _int_at_start = signal.getsignal(signal.SIGINT)
    for sig in _SIGNALS:
        if sig != signal.SIGINT or _int_at_start is not signal.SIG_IGN:
            signal.signal(sig, _note)
    _held = _cli = True


def settle(*, graceful: bool, ctrl_c_later: bool = False) -> None:
    """Keep noting both signals for a graceful command; else restore them (and
    deliver again what was noted).  `ctrl_c_later`: the command is not known
    yet (a group's subcommand): Ctrl-C stays noted until `release_ctrl_c()`
    or `until_saved()` takes it over."""
    global _held, _graceful
    if _held and graceful:
        _graceful = True
        if _EVENT.is_set():  # noted during start-up: the stop began then
            stopping()
    if not _held or graceful:
        return
    _held = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.SIGTERM in _noted:
        os.kill(os.getpid(), signal.SIGTERM)
    if not ctrl_c_later:
        release_ctrl_c()


def release_ctrl_c() -> None:
    """Ctrl-C's own disposition back, a Ctrl-C noted meanwhile raised
    (KeyboardInterrupt: click reports it, "Aborted!"); nothing if not held."""
    if signal.getsignal(signal.SIGINT) is not _note:
        return
    signal.signal(signal.SIGINT, _int_at_start)
    if signal.SIGINT in _noted:
        raise KeyboardInterrupt


def finish() -> None:
    """A graceful command is returning: a SIGTERM or Ctrl-C from now on changes nothing.

    Interpreter shutdown puts Python-level handlers back to the default, so a
    SIGTERM in the last milliseconds of a `send` that had finished its work
    killed it with -15.  An ignored signal stays ignored through shutdown.
    """
    if _held and threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def stop_event() -> threading.Event:
    """The event a SIGTERM or Ctrl-C sets from start-up on; a fresh one when
    nothing was held (the library used in-process, e.g. from tests, never
    shares a stop flag)."""
    return _EVENT if _held else threading.Event()


def requested() -> bool:
    """True when a SIGTERM or Ctrl-C arrived while held."""
    return _held and _EVENT.is_set()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    global _ctrl_c
    _ctrl_c = True
    if not _saving:
        raise KeyboardInterrupt


@contextmanager
def until_saved() -> Iterator[Callable[[], bool]]:
    """Ctrl-C stops the block (KeyboardInterrupt, as Python raises it) until
    `saving()` says the work's transaction commits; from then on it is only noted.

    For a command whose work is one transaction (`subscribers import`): a
    Ctrl-C that came once the COMMIT began can neither cut the commit from
    what the command then says about it nor turn a saved import into a
    failure: the work is done, the command ends as if it had not come.
    Yields whether a Ctrl-C came: a driver may turn one into an error of its
    own (sqlite3 does, inside a Python function a statement calls), and one
    that came while the command was starting (held since, `settle`) is
    already there when the block begins: the caller stops at once.  Ctrl-C
    stays ignored after a saved block in the command line's own process
    (its exit is all that is left, as `finish()` does for `run` and `send`);
    elsewhere the previous handler comes back.  Main thread only: signals
    reach no other.
    """
    global _ctrl_c, _saving
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, _interrupt)
    _ctrl_c, _saving = False, False
    if previous is _note:  # held since start-up (`settle(ctrl_c_later=True)`)
        # A Ctrl-C while the command was starting is this block's to act on.
        _ctrl_c, previous = signal.SIGINT in _noted, _int_at_start
    try:
        yield lambda: _ctrl_c
    finally:
        saved, _saving = _saving, None
        signal.signal(signal.SIGINT, signal.SIG_IGN if saved and _cli else previous)


def handled_interrupt() -> None:
    """A KeyboardInterrupt was caught and handled: the process must not die of
    it at exit after all.

    CPython (3.11, 3.12) notes "a KeyboardInterrupt left the code" in a
    global when one leaves code that `exec` ran from a string, and it does
    not forget that note when the caller catches the exception.  Under
    `python -m newsletter`, the interpreter reads the note at exit and
    kills itself with SIGINT: a Ctrl-C that landed inside a dataclass's
    generated `__init__` being compiled (a module imported lazily while the
    import started) turned the import's `STOPPED` into -2.  Running code
    from a string again clears the note; the next KeyboardInterrupt that
    really goes unhandled sets it again."""
    exec("")  # an empty string: see above


def saving() -> None:
    """The work's COMMIT follows: a Ctrl-C from now on, to the end of
    `until_saved`, is only noted.  Call it last inside the transaction, after
    its last statement; outside `until_saved` it does nothing."""
    global _saving
    if _saving is not None:
        _saving = True
