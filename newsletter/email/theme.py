"""The templates: Jinja2 environments over the user's folder and the default
theme, the filters the templates use, and template errors at their line.

Templates come from `[email] templates_dir` when set, file by file falling
back to the default theme shipped as the package `newsletter.templates`
(the repository's top-level `templates/`).
"""

from __future__ import annotations

import functools
import importlib.resources
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from newsletter.email import inlinecache
from newsletter.errors import NewsletterError, TemplateError
from newsletter.posts import textwidth

_MONTHS = (
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
)


class ThemeLoader(jinja2.BaseLoader):
    """Loads the default theme from the installed package `newsletter.templates`."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        resource = _theme_files().joinpath(template)
        if "/" in template or "\\" in template or not resource.is_file():
            raise jinja2.TemplateNotFound(template)
        source = resource.read_text(encoding="utf-8")
        if not isinstance(resource, Path):  # inside a zip: cannot change
            return source, str(resource), lambda: True
        # On disk (an editable install): let the preview pick up theme edits.
        mtime = resource.stat().st_mtime

        def uptodate() -> bool:
            try:
                return resource.stat().st_mtime == mtime
            except OSError:
                return False

        return source, str(resource), uptodate


@functools.lru_cache(maxsize=1)
def _theme_files() -> Any:
    """The default theme: the `templates/` beside this package in a source
    checkout (so each git worktree renders with its own theme even when the
    editable install points at another checkout), else the installed
    package `newsletter.templates`."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (
        checkout / "templates" / "_layout.html.j2"
    ).is_file():
        return checkout / "templates"
    return importlib.resources.files("newsletter.templates")


@functools.lru_cache(maxsize=8)
def template_environment(
    templates_dir: Path | None, compiled: Path | None = None
) -> jinja2.Environment:
    """One cached Jinja2 environment per templates folder (templates compile
    once per process; once per change of their source with `compiled`, the
    folder where the compiled code is kept)."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        if not templates_dir.is_dir():
            raise TemplateError(
                "templates folder not found", path=templates_dir, key="email.templates_dir"
            )
        loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
    loaders.append(ThemeLoader())
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        # HTML templates escape by default; the text ones must not (& stays &).
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        bytecode_cache=inlinecache.compiled_templates(compiled) if compiled else None,
    )
    env.filters["long_date"] = long_date
    env.filters["text_heading"] = text_heading
    return env


def subject_environment(env: jinja2.Environment) -> jinja2.Environment:
    """The subject is plain text: same filters, no HTML escaping, and a None
    (a post without `description:`) is no text, as Liquid's nil is, never
    the word "None" in a reader's inbox."""
    return env.overlay(autoescape=False, finalize=_none_is_nothing)


def _none_is_nothing(value: object) -> object:
    return "" if value is None else value


def month_name(month: int) -> str:
    """The English name of a month (1-12), whatever the machine's locale."""
    return _MONTHS[month - 1]


def long_date(value: datetime) -> str:
    """`4 November 2024`, independent of the machine's locale."""
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def text_heading(title: str, rule: str = "=") -> str:
    """A plain-text heading: the title wrapped at 72 columns, underlined as
    wide as its longest line (a wide CJK character takes two columns)."""
    return textwidth.underlined(title, rule)


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"template syntax error: {exc.message}", path=exc.filename or name, line=exc.lineno
        ) from exc
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template not found: {exc.name}", key="email.templates_dir") from exc
    except jinja2.TemplateError as exc:
        path, line = _failing_line(exc, _template_path(env, name))
        raise TemplateError(jinja_message(exc), path=path, line=line) from exc
    except NewsletterError:
        raise
    except Exception as exc:
        # An expression of the template failed ({{ post.title + 1 }}: a
        # TypeError; an include of itself: a RecursionError): the template's
        # error, at its line, rather than a traceback out of the command.
        path, line = _failing_line(exc, _template_path(env, name))
        raise TemplateError(f"{type(exc).__name__}: {exc}", path=path, line=line) from exc


def _failing_line(exc: BaseException, fallback: str) -> tuple[str, int | None]:
    """The template file and line where `exc` was raised, from Jinja's rewritten traceback.

    Jinja gives each template's frames the template's file name and line
    numbers; the innermost one is where the expression failed (in an included
    template, that one).
    """
    found: tuple[str, int | None] = (fallback, None)
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if _JINJA_FRAME.intersection(frame.f_globals):
            found = (frame.f_code.co_filename, line)
    return found


# Globals Jinja puts in a template's frames: its rewritten ones (jinja2.debug)
# and those of the compiled template code.
_JINJA_FRAME = frozenset(("__jinja_exception__", "__jinja_template__"))


def _template_path(env: jinja2.Environment, name: str) -> str:
    try:
        return env.get_template(name).filename or name
    except jinja2.TemplateError:
        return name


def jinja_message(exc: jinja2.TemplateError) -> str:
    return str(exc.message or exc.__class__.__name__)
