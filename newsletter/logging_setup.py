"""Logging for the daemon: plain lines by default, JSON lines with --log-json.

Structured fields travel in ``extra=`` (``event``, ``mailing_id``, ``post_id``,
``list``, ``recipient``, ``code``, ...).  The plain format shows the message
only (it already says everything a person needs); the JSON format adds every
field so a log shipper can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from newsletter import shutdown

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def make_handler(*, json_lines: bool, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.set_name("newsletter-daemon")
    return handler


# Loggers of the libraries under the store whose WARNING and ERROR lines an
# operator should see (a connection lost, a pool reset that failed), one line
# each: `DatabaseLines` on whichever handler writes them.
DATABASE_LOGGERS = ("sqlalchemy.pool", "psycopg")


class DatabaseLines(logging.Filter):
    """A library's error with a traceback (SQLAlchemy's pool logs one when a
    connection it resets is already gone) as one line with the driver's reason:
    the log stays one event per line, and the traceback says nothing an
    operator can act on.  Other loggers' records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and record.name.startswith(DATABASE_LOGGERS):
            from newsletter.errors import database_reason

            record.msg = f"database: {record.getMessage()}: {database_reason(exc)}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class OverlappingScans(logging.Filter):
    """Drop APScheduler's warning that the scan job was skipped because the
    previous pass is still running: a long (paced) mailing spans many scan
    intervals by design, and the next pass starts when it ends."""

    def filter(self, record: logging.LogRecord) -> bool:
        skipped = "maximum number of running instances" in str(record.msg)
        return not (skipped and "_pass" in record.getMessage())


class StderrLines(logging.StreamHandler):
    """`warning: <message>` on whatever `sys.stderr` is when a record comes
    (click's test runner swaps it), for the database libraries' lines in a
    command without the daemon's handler (where Python's last-resort handler
    would print their tracebacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.addFilter(DatabaseLines())
        self.set_name("newsletter-library")

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def quiet_library_logs() -> None:
    """Library lines one line each, once per process (idempotent): every store open calls it."""
    for name in DATABASE_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(StderrLines())
    scheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, OverlappingScans) for f in scheduler.filters):
        scheduler.addFilter(OverlappingScans())


def setup_logging(
    *, json_lines: bool = False, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Route the `newsletter` loggers to one handler (replacing an earlier one).

    APScheduler's own INFO chatter ("Added job", "Running job") is kept at
    WARNING: the daemon logs what it does in its own words.
    """
    handler = make_handler(json_lines=json_lines, stream=stream)
    handler.addFilter(DatabaseLines())
    quiet_library_logs()
    for name in ("newsletter", "apscheduler", *DATABASE_LOGGERS):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if old.get_name() in ("newsletter-daemon", "newsletter-library"):
                logger.removeHandler(old)
        logger.addHandler(handler)
    logging.getLogger("newsletter").setLevel(level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    shutdown.log_to(handler)  # the stop budget's last line, after the command removed it
    return handler


def current_logging() -> tuple[bool, int] | None:
    """(JSON lines?, level) of `setup_logging`'s handler in this process; None without one.

    What a spawned worker process needs to log as its parent does: it starts
    a fresh interpreter with no handler, where INFO lines would vanish.
    """
    logger = logging.getLogger("newsletter")
    for handler in logger.handlers:
        if handler.get_name() == "newsletter-daemon":
            return isinstance(handler.formatter, JsonFormatter), logger.level
    return None


def remove_logging(handler: logging.Handler) -> None:
    """Undo `setup_logging` (the CLI does this on exit so tests stay isolated)."""
    for name in ("newsletter", "apscheduler", *DATABASE_LOGGERS):
        logging.getLogger(name).removeHandler(handler)
    quiet_library_logs()  # the database libraries' lines go back to plain stderr
