"""The command line: a thin click layer over the library.

Each command loads settings, calls one library function and prints.  A
`NewsletterError` becomes one clear line on stderr and exit status 1; click's
usage errors exit with 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from newsletter import shutdown
from newsletter.config import Settings, load_settings
from newsletter.errors import NewsletterError

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """Carried in click's context: where the configuration is, loaded on demand."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


def handle_errors(func: F) -> F:
    """Map NewsletterError to one line on stderr and exit 1 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return cast(F, wrapper)


def settings_of(ctx: click.Context) -> Settings:
    return cast(AppContext, ctx.find_root().obj).settings


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


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
    # Imported here so each command module can import `main`'s helpers above.
    from newsletter.cli import daemon, delivery, posts, render, subscribers, web

    for module in (posts, render, subscribers, delivery, daemon, web):
        module.register(main)


_register()
