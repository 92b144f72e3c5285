"""The command line: a thin click layer over the library.

Each command loads settings, calls one library function and prints.  A
`NewsletterError` becomes one clear line on stderr and exit status 1; click's
usage errors exit with 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from newsletter import shutdown
from newsletter.cli.common import AppContext

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="NEWSLETTER_CONFIG",
    help="Configuration file (default: ./newsletter.toml, or $NEWSLETTER_CONFIG).",
)
@click.version_option(package_name="newsletter")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Turn a Jekyll blog's Markdown posts into email and send them to subscribers.

    Quick start: `newsletter check`, `newsletter posts`, `newsletter render POST`,
    `newsletter subscribers import FILE --list L`, `newsletter run --once`.
    """
    ctx.obj = AppContext(config)
    # `run` and `send` stop cleanly on a SIGTERM noted since start-up; every
    # other command dies of it, as it would have without the entry point's hold.
    shutdown.settle(graceful=ctx.invoked_subcommand in GRACEFUL_COMMANDS)


GRACEFUL_COMMANDS = ("run", "send")


def _register() -> None:
    # Each command module adds its commands to the group.
    from newsletter.cli import bounces, daemon, delivery, posts, render, subscribers, web

    for module in (posts, render, subscribers, delivery, bounces, daemon, web):
        module.register(main)


_register()
