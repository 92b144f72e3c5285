"""`python -m newsletter` and the `newsletter` console script.

SIGTERM is held first thing, before the second of imports the CLI needs
(see `newsletter.shutdown`).
"""

import gc

from newsletter import GC_THRESHOLDS, shutdown

shutdown.hold()
gc.set_threshold(*GC_THRESHOLDS)  # see GC_THRESHOLDS

from newsletter.cli import main as _cli  # noqa: E402  (after hold(), on purpose)


def main() -> None:
    try:
        _cli(prog_name="newsletter")
    finally:
        shutdown.finish()


if __name__ == "__main__":
    main()
