"""What every command module shares: the click context object, error mapping, JSON output."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

# Only click at import time: `newsletter --help` must not pay for the library
# (issue 13, "start in 50 ms"); each command imports what it uses when it runs.
if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.errors import Problem

__all__ = [
    "AppContext",
    "LazyChoice",
    "emit_json",
    "handle_errors",
    "json_option",
    "list_option",
    "problem_json",
    "require_config_file",
    "settings_of",
    "shown",
]

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """Carried in click's context: where the configuration is, loaded on demand."""

    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from newsletter.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def stdout_is_tty() -> bool:
    """Whether standard output is a terminal; False when it was closed at start
    (`>&-`: sys.stdout is None, and `.isatty()` raised AttributeError)."""
    return sys.stdout is not None and sys.stdout.isatty()


def handle_errors(func: F) -> F:
    """Map NewsletterError to one line on stderr and exit 1 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from newsletter.errors import NewsletterError

        try:
            return func(*args, **kwargs)
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            # A full disk (standard output redirected to it, the outbox, the
            # state folder): the machine's trouble, not a bug; one line.
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror}{where}", err=True)
            sys.exit(1)
        except Exception as exc:
            reason = _database_failure(exc)
            if reason is None:
                raise  # a bug: its traceback is what finds it
            click.echo(f"error: database: {reason}", err=True)
            sys.exit(1)

    return cast(F, wrapper)


def _database_failure(exc: Exception) -> str | None:
    """The reason when `exc` is the database failing (an outage, a lock) that
    no step translated: the last boundary before a traceback (DESIGN: third-
    party errors never reach the user as one).  No SQLAlchemy loaded, no
    SQLAlchemy error: commands that never touch the store stay cheap."""
    if "sqlalchemy" not in sys.modules:
        return None
    from newsletter.store import failure_reason

    return failure_reason(exc)


def settings_of(ctx: click.Context) -> Settings:
    return cast(AppContext, ctx.find_root().obj).settings


def require_config_file(settings: Settings) -> None:
    """Serving readers or sending with the built-in defaults (no newsletter.toml
    found: a service or a cron job started in the wrong folder) would make a
    new database and secret there and refuse every unsubscribe link already
    sent, or send on a store that is not the blog's."""
    from newsletter.errors import ConfigError

    if settings.config_path is None:
        raise ConfigError(
            "no newsletter.toml in this folder: give --config FILE or set "
            "$NEWSLETTER_CONFIG (without it every unsubscribe link would be refused)"
        )


def emit_json(data: Any) -> None:
    click.echo(json_text(data, indent=2))


def json_text(data: Any, indent: int | None = None) -> str:
    """`data` as JSON that any reader takes and any output writes: a NaN or
    infinity a store holds from before imports refused them (SQLite kept
    them) is written as its text, not as Python's bare `NaN`, which is not
    JSON (RFC 8259 §6); a lone surrogate (likewise) as U+FFFD."""
    from newsletter.audience.storable import finite, storable_name

    try:
        text = json.dumps(data, indent=indent, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(finite(data), indent=indent, ensure_ascii=False, default=str)
    return storable_name(text)


def problem_json(problem: Problem) -> dict[str, Any]:
    """One reported problem (a post, a CSV row) as `--json` output shows it."""
    return {
        "severity": problem.severity,
        "path": str(problem.path) if problem.path else None,
        "line": problem.line,
        "key": problem.key,
        "message": problem.message,
    }


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
list_option = click.option("--list", "list_name", required=True, help="The list (see `lists`).")


def shown(text: str) -> str:
    """A name (anyone's text: the signup form takes any) on one line of a
    listing, its controls and tabs escaped, so it cannot forge a line or a
    column that scripts reading the listing would take for a member."""
    from newsletter.errors import one_line

    return one_line(text).replace("\t", "\\x09")


class LazyChoice(click.Choice):
    """A `click.Choice` whose values live in a library module, imported only
    when the choices are needed (parsing, or that command's own --help)."""

    def __init__(self, module: str, name: str, *extra: str) -> None:
        super().__init__(())
        self._where = (module, name)
        self._extra = extra
        self._loaded: tuple[str, ...] | None = None

    @property
    def choices(self) -> tuple[str, ...]:
        if self._loaded is None:
            import importlib

            module, name = self._where
            values = getattr(importlib.import_module(module), name)
            self._loaded = (*self._extra, *values)
        return self._loaded

    @choices.setter
    def choices(self, _value: object) -> None:
        """click's __init__ assigns the (empty) tuple; the property ignores it."""
