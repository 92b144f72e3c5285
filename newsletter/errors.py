"""One exception tree for everything `newsletter` reports to a user.

    NewsletterError                 base; carries path / line / key / recipient / code
    ├── ConfigError                 newsletter.toml, environment, _config.yml
    ├── PostError                   a post that cannot be read (YAML, date, encoding)
    ├── TemplateError               a Jinja2 template that cannot be loaded or rendered
    ├── RenderError                 Markdown / premailer / message assembly
    ├── SubscriberError             a CSV file or an address
    ├── StoreError                  the database (SQLAlchemy errors are translated here)
    ├── DeliveryError               planning or sending a mailing
    │   └── TransportError          a transport failed as a whole (SMTP connect, TLS, auth)
    └── WebError                    the preview or public web app

Third-party errors are translated at the boundary with ``raise ... from exc`` so
that none reaches the user as a traceback.  Partial failure (one bad post, one
refused recipient) is data: a :class:`Problem`, not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class NewsletterError(Exception):
    """Base of every error `newsletter` raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
        recipient: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        self.key = key
        self.recipient = recipient
        self.code = code

    def __str__(self) -> str:
        return format_location(self.path, self.line, self.key) + one_line(self.message)


class ConfigError(NewsletterError):
    """The configuration is missing, malformed or inconsistent."""


class PostError(NewsletterError):
    """A post cannot be read or parsed."""


class TemplateError(NewsletterError):
    """A template cannot be found, parsed or rendered."""


class RenderError(NewsletterError):
    """A post could not be turned into an email."""


class SubscriberError(NewsletterError):
    """A subscriber file, row or address is unusable."""


class StoreError(NewsletterError):
    """The database refused or failed an operation."""


class DeliveryError(NewsletterError):
    """A mailing cannot be planned or delivered."""


class TransportError(DeliveryError):
    """A transport failed as a whole (cannot connect, TLS refused, bad login)."""


class WebError(NewsletterError):
    """The web app cannot start or serve."""


def format_location(path: Path | str | None, line: int | None, key: str | None = None) -> str:
    """`path:line: ` / `path: key: ` prefix used in every one-line report."""
    parts: list[str] = []
    if path is not None:
        parts.append(f"{path}:{line}" if line is not None else str(path))
    if key is not None:
        parts.append(key)
    return "".join(f"{p}: " for p in parts)


# Every character `str.splitlines` breaks on, and the other C0/C1 controls
# (a terminal escape in a CSV cell must not reach the operator's terminal).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x09}
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` with control and line-breaking characters escaped: a report stays one line."""
    return text.translate(_CONTROLS)


def database_reason(exc: BaseException) -> str:
    """A database error in the driver's own words, on one line.

    SQLAlchemy's text of an error repeats the statement and its parameters
    (subscribers' addresses among them: not for a log) and ends with a link
    to its documentation; the driver's message (`exc.orig`) is what tells an
    operator what happened ("database is locked", "connection refused",
    "terminating connection due to administrator command").  Duck-typed, so
    this module needs no SQLAlchemy import.
    """
    orig = getattr(exc, "orig", None)
    text = str(orig) if isinstance(orig, BaseException) else str(exc)
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("(Background on this error", "[SQL:"))
    ]
    reason = "; ".join(lines) or type(orig or exc).__name__
    if getattr(exc, "connection_invalidated", False):
        reason = f"connection lost: {reason}"
    return reason


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One reported problem in a batch (a post, a CSV row, a recipient)."""

    message: str
    path: Path | None = None
    line: int | None = None
    severity: Severity = "error"
    key: str | None = None

    def __str__(self) -> str:
        location = format_location(self.path, self.line, self.key)
        return f"{location}{self.severity}: {one_line(self.message)}"

    @classmethod
    def from_error(cls, exc: NewsletterError, severity: Severity = "error") -> Problem:
        return cls(exc.message, exc.path, exc.line, severity, exc.key)
