"""SIGTERM from the very first moment of a command, not only once it is running.

Importing the CLI takes about a second (SQLAlchemy, Liquid, Markdown ...), and
until `run` or `send` installed their own handlers a SIGTERM (systemd stopping
a unit that had just started) killed the process with -15.  So the entry point
calls `hold()` before importing anything else: a SIGTERM is then only *noted*.
Once click knows the command, `settle()` decides what the note means:

* `run` and `send` stop cleanly: they take `stop_event()` as their own stop
  flag, so a signal noted during start-up makes them stop before (or as soon
  as) they begin, with exit status 0;
* any other command gets the default disposition back, and a SIGTERM noted
  meanwhile is delivered again, so it dies by the signal exactly as before.

Stdlib only, so that importing it costs nothing.  A signal that arrives while
the interpreter itself is still starting (before Python runs this module,
~0.1 s after exec here) cannot be caught by any Python code.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

_EVENT = threading.Event()
_held = False


def _note(_signum: int, _frame: FrameType | None) -> None:
    _EVENT.set()


def hold() -> None:
    """Note SIGTERM instead of dying of it, until `settle()` (entry point only)."""
    global _held
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _note)
        _held = True


def settle(*, graceful: bool) -> None:
    """Keep noting SIGTERM for a graceful command; else restore (and re-deliver) it."""
    global _held
    if not _held or graceful:
        return
    _held = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _EVENT.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def finish() -> None:
    """A graceful command is returning: a SIGTERM from now on changes nothing.

    Interpreter shutdown puts Python-level handlers back to the default, so a
    SIGTERM in the last milliseconds of a `send` that had finished its work
    killed it with -15.  An ignored signal stays ignored through shutdown.
    """
    if _held and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_event() -> threading.Event:
    """The event a SIGTERM sets from start-up on; a fresh one when nothing was held
    (the library used in-process, e.g. from tests, never shares a stop flag)."""
    return _EVENT if _held else threading.Event()


def requested() -> bool:
    """True when a SIGTERM arrived while held."""
    return _held and _EVENT.is_set()
