"""`python -m newsletter` and the `newsletter` console script.

SIGTERM is held first thing, before the second of imports the CLI needs
(see `newsletter.shutdown`).
"""

import contextlib
import gc
import sys

from newsletter import GC_THRESHOLDS, shutdown

shutdown.hold()
gc.set_threshold(*GC_THRESHOLDS)  # see GC_THRESHOLDS

from newsletter.cli import main as _cli  # noqa: E402  (after hold(), on purpose)


def main() -> None:
    try:
        _cli(prog_name="newsletter")
    finally:
        shutdown.finish()
        _leave_to_the_system()


def _leave_to_the_system() -> None:
    """Exit without the interpreter's last collection.

    At exit the interpreter collects every object the command made, and most
    of them are classes and functions of the modules it imported (in reference
    cycles, which only the collector frees): after SQLAlchemy is imported that
    final sweep cost 0.05-0.1 s of CPU, a fifth of a `run --once` with nothing
    to do (bench/cold.py).  Frozen, the objects are left to the operating
    system, which takes the whole memory back at once.  What the collector
    would have closed on the way is closed here first: the store's
    connections (`store.close_all`).  Files are closed by the code that opens
    them, standard streams are flushed by the interpreter, and atexit
    handlers (logging's) still run.
    """
    store = sys.modules.get("newsletter.store")  # loaded only by commands that use it
    if store is not None:
        # The command's outcome (its exit status, its traceback) stands: a
        # connection that fails to close is closed by the system at exit.
        with contextlib.suppress(Exception):
            store.close_all()
    gc.freeze()


if __name__ == "__main__":
    main()
