"""What a daemon pass says: one line per mailing started, finished, failed or
withdrawn, a mail-server outage kept to one line per retry window, and an
unexpected failure's traceback to one record.

Split from `passes` (which re-exports `OutageLog` and `log_skipped`): the
pass decides, this module words it for the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import utcnow
from newsletter.delivery.report import DeliveryReport
from newsletter.errors import one_line
from newsletter.store import reading
from newsletter.store.schema import deliveries, lists, mailings

if TYPE_CHECKING:
    from newsletter.daemon.passes import PassReport

log = logging.getLogger("newsletter.daemon")


@dataclass
class OutageLog:
    """Keeps a mail-server outage to one log line per retry window.

    A connection failure defers every recipient with no SMTP code; with
    jittered back-off they come due one by one, and a line each would bury
    the log.  The first failure says what happened and when the round of
    retries ends; later ones inside that round go to DEBUG.
    """

    quiet_until: datetime | None = None
    down: bool = False

    def failed(self, at: datetime, round_ends: datetime | None) -> bool:
        """Record a failure; True when it deserves a log line."""
        loud = not self.down or self.quiet_until is None or at >= self.quiet_until
        self.down = True
        if loud:
            self.quiet_until = round_ends
        return loud

    def recovered(self) -> bool:
        """True once, on the first success after an outage."""
        was, self.down, self.quiet_until = self.down, False, None
        return was


@dataclass
class FaultLog:
    """Keeps an unexpected failure's traceback to one log record per process.

    A mailing whose render raises what no check foresaw (a library's own
    exception, a bug) meets it again each pass until a fix: the traceback,
    which a bug report needs, is logged the first time; the one-line problem
    is the pass's to report, as any other (`PassReport.problems`).
    """

    seen: set[str] = field(default_factory=set)

    def failed(self, mailing_id: int, exc: Exception) -> str:
        """Log `exc` (with its traceback the first time); the reason, on one line."""
        reason = one_line(f"unexpected {type(exc).__name__}: {exc}")
        first = f"{mailing_id}: {reason}" not in self.seen
        self.seen.add(f"{mailing_id}: {reason}")
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "mailing %d failed: %s; the other mailings go on",
            mailing_id,
            reason,
            exc_info=exc if first else None,
            extra={"event": "mailing-fault", "mailing_id": mailing_id, "text": reason},
        )
        return reason


@dataclass
class DatabaseOutage:
    """Keeps a database outage to one warning, and says when it is over.

    While the database is down every scan fails the same way (at the default
    scan_interval, a line a minute; at 1 s, a traceback a second buried the
    log); the next scan retries, so there is nothing more to say until it
    works again.  Only the daemon's pass thread uses it.
    """

    down: bool = False

    def failed(self, reason: str) -> None:
        level = logging.DEBUG if self.down else logging.WARNING
        self.down = True
        log.log(
            level,
            "database unavailable: %s; retrying at each scan",
            reason,
            extra={"event": "database-down", "text": reason},
        )

    def recovered(self) -> None:
        """After a pass that worked: one line if the database had been down."""
        if self.down:
            self.down = False
            log.info("database reachable again", extra={"event": "database-up"})

    def probe(self, engine: Engine) -> None:
        """Before a pass during an outage: say the database is back as soon as
        it answers, not once the pass's mailings are done (hours for a long one)."""
        if not self.down:
            return
        try:
            with reading(engine) as conn:
                conn.execute(select(1))
        except SQLAlchemyError:
            return  # still down: the pass fails quietly
        self.recovered()


def describe_mailing(engine: Engine, mailing_id: int) -> tuple[str, str, str, str]:
    query = (
        select(mailings.c.post_id, lists.c.name, mailings.c.kind, mailings.c.state)
        .join(lists, lists.c.id == mailings.c.list_id)
        .where(mailings.c.id == mailing_id)
    )
    with reading(engine) as conn:
        row = conn.execute(query).first()
    return (row[0], row[1], row[2], row[3]) if row is not None else ("?", "?", "?", "?")


def log_start(engine: Engine, mailing_id: int, due: int) -> None:
    post_id, list_name, kind, _state = describe_mailing(engine, mailing_id)
    log.info(
        "mailing %d start: %s -> %s, %d recipient%s due",
        mailing_id,
        post_id,
        list_name,
        due,
        "s" if due != 1 else "",
        extra={
            "event": "mailing-start",
            "mailing_id": mailing_id,
            "post_id": post_id,
            "list": list_name,
            "kind": kind,
            "due": due,
        },
    )


def log_finish(
    engine: Engine, mailing_id: int, report: DeliveryReport, started: datetime, outage: OutageLog
) -> None:
    """One line per mailing (counts) and one per failure, grouped: when the
    server is down every recipient fails the same way, and that is one line."""
    post_id, list_name, kind, state_ = describe_mailing(engine, mailing_id)
    with reading(engine) as conn:
        failures = conn.execute(
            select(
                deliveries.c.email,
                deliveries.c.status,
                deliveries.c.last_code,
                deliveries.c.last_text,
                deliveries.c.next_attempt_at,
            ).where(
                deliveries.c.mailing_id == mailing_id,
                deliveries.c.updated_at >= started,
                deliveries.c.status.in_(("deferred", "failed")),
            )
        ).all()
    if report.sent and outage.recovered():
        log.info("mail server reachable again; delivering", extra={"event": "transport-up"})
    groups: dict[tuple[str, int | None, str], list[Any]] = {}
    for email, status, code, text, retry in failures:
        groups.setdefault((status, code, text or ""), []).append((email, retry))
    for (status, code, text), items in groups.items():
        _log_failure(mailing_id, status, code, text, items, outage)
    log.info(
        "mailing %d %s: %s -> %s: sent %d, deferred %d, failed %d, skipped %d",
        mailing_id,
        "finished" if state_ == "done" else state_,
        post_id,
        list_name,
        report.sent,
        report.deferred,
        report.failed,
        report.skipped,
        extra={
            "event": "mailing-finish",
            "mailing_id": mailing_id,
            "post_id": post_id,
            "list": list_name,
            "kind": kind,
            "state": state_,
            "sent": report.sent,
            "deferred": report.deferred,
            "failed": report.failed,
            "skipped": report.skipped,
        },
    )


def _log_failure(
    mailing_id: int,
    status: str,
    code: int | None,
    text: str,
    items: list[Any],
    outage: OutageLog,
) -> None:
    emails = [e for e, _ in items]
    retries = [r for _, r in items if r is not None]
    who = emails[0] if len(emails) == 1 else f"{len(emails)} recipients ({emails[0]}, ...)"
    fields = {
        "mailing_id": mailing_id,
        "recipient": emails[0],
        "recipients": len(emails),
        "code": code,
        "text": text,
    }
    if status == "deferred" and code is None:  # no SMTP reply at all: the server is down
        level = (
            logging.WARNING
            if outage.failed(utcnow(), max(retries, default=None))
            else logging.DEBUG
        )
        when = f"; retrying from {min(retries).isoformat(timespec='seconds')}" if retries else ""
        log.log(
            level,
            "mail server unavailable: %s; %s deferred%s",
            text,
            who,
            when,
            extra={"event": "transport-down", **fields},
        )
        return
    when = f"; retry at {min(retries).isoformat(timespec='seconds')}" if retries else ""
    code_text = str(code) if code is not None else "-"
    log.warning(
        "mailing %d: %s %s: %s %s%s",
        mailing_id,
        who,
        status,
        code_text,
        text,
        when,
        extra={"event": status, **fields},
    )


def log_skipped(report: PassReport) -> None:
    """The first run on an old blog says what `since` held back (invariant 4)."""
    if report.before_since and report.since is not None:
        count = len(report.before_since)
        log.info(
            "%d post%s before since=%s %s skipped",
            count,
            "s" if count != 1 else "",
            report.since.isoformat(),
            "were" if count != 1 else "was",
            extra={"event": "skipped", "count": count},
        )
