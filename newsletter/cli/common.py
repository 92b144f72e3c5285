"""What every command module shares: the click context object, error mapping, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from newsletter.config import Settings, load_settings
from newsletter.errors import NewsletterError

__all__ = ["AppContext", "emit_json", "handle_errors", "json_option", "settings_of"]

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
