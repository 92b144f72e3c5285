"""`python -m newsletter` and the `newsletter` console script.

SIGTERM is held first thing, before the second of imports the CLI needs
(see `newsletter.shutdown`).
"""

from newsletter import shutdown

shutdown.hold()

from newsletter.cli import main as _cli  # noqa: E402  (after hold(), on purpose)


def main() -> None:
    try:
        _cli(prog_name="newsletter")
    finally:
        shutdown.finish()


if __name__ == "__main__":
    main()
