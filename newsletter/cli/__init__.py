"""The command line: a thin click layer over the library.

Each command loads settings, calls one library function and prints.  A
`NewsletterError` becomes one clear line on stderr and exit status 1; click's
usage errors exit with 2.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

import newsletter
from newsletter import shutdown
from newsletter.cli.common import AppContext

__all__ = ["main"]


# Which module defines each command: a command's module is imported when the
# command runs (or `--help` lists it), so `run --once` loads `cli.daemon` alone.
# tests/test_cli_basics.py checks this against what the modules register.
COMMAND_MODULES = {
    "init": "posts",
    "check": "posts",
    "posts": "posts",
    "render": "render",
    "subscribers": "subscribers",
    "lists": "subscribers",
    "send": "delivery",
    "status": "mailings",
    "cancel": "mailings",
    "bounces": "bounces",
    "run": "daemon",
    "preview": "web",
    "serve": "web",
    "snippet": "web",
}


class LazyGroup(click.Group):
    """A group whose commands are registered by their module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"newsletter.cli.{COMMAND_MODULES[cmd_name]}")
            module.register(self)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="NEWSLETTER_CONFIG",
    help="Configuration file (default: ./newsletter.toml, or $NEWSLETTER_CONFIG).",
)
# The version from the package itself: asking importlib.metadata costs ~50 ms.
@click.version_option(newsletter.__version__, package_name="newsletter")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Turn a Jekyll blog's Markdown posts into email and send them to subscribers.

    Quick start: `newsletter check`, `newsletter posts`, `newsletter render POST`,
    `newsletter subscribers import FILE --list L`, `newsletter run --once`.
    """
    ctx.obj = AppContext(config)
    # `run` and `send` stop cleanly on a SIGTERM noted since start-up; every
    # other command dies of it, as it would have without the entry point's hold.
    # `subscribers` decides Ctrl-C's meaning once it knows its own subcommand.
    shutdown.settle(
        graceful=ctx.invoked_subcommand in GRACEFUL_COMMANDS,
        ctrl_c_later=ctx.invoked_subcommand == "subscribers",
    )


GRACEFUL_COMMANDS = ("run", "send")
