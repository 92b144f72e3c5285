"""`python -m newsletter` and the `newsletter` console script.

SIGTERM is held first thing, before the second of imports the CLI needs
(see `newsletter.shutdown`).
"""

import gc

from newsletter import shutdown

shutdown.hold()
# Start-up creates ~300k long-lived objects (SQLAlchemy, click, the posts);
# at the default threshold (700) the collector ran ~140 times over them, 13 %
# of a `run --once` (profiled).  A larger first generation still collects
# cycles, ~140x less often; memory cost: at most that many young objects.
# At 50,000 every command still paid one collection (15-25 ms of CPU, its
# objects scattered over memory) finding a few hundred cycles; the commands
# people run most (`run --once`, `send`, `render`, `posts`) hold 60-80k
# objects when they end, so at 100,000 they exit before any.
gc.set_threshold(100_000, 10, 10)

from newsletter.cli import main as _cli  # noqa: E402  (after hold(), on purpose)


def main() -> None:
    try:
        _cli(prog_name="newsletter")
    finally:
        shutdown.finish()


if __name__ == "__main__":
    main()
