"""Commands: `run` (the daemon, or one pass with --once)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from newsletter import shutdown
from newsletter.cli.common import (
    emit_json,
    handle_errors,
    json_option,
    require_config_file,
    settings_of,
    stdout_is_tty,
)

# The library is imported inside each function, so `--help` stays cheap.
if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Engine

    from newsletter.config import Settings
    from newsletter.daemon.passes import MailingProgress, PassReport
    from newsletter.daemon.planning import UpcomingSend


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(run)


@click.command("run")
@click.option(
    "--once", is_flag=True, help="One full pass (plan, deliver, retry deferred), then exit."
)
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of plain text.")
@click.option(
    "--no-watch",
    is_flag=True,
    help="Do not watch the posts folder; rely on [schedule] scan_interval alone.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Also serve the public endpoints (unsubscribe, archive) at [web] host:port.",
)
@click.option(
    "--sync",
    "sync_first",
    is_flag=True,
    help="First make each list mirror subscribers/<list>.csv (as `subscribers sync`).",
)
@json_option
@click.pass_context
@handle_errors
def run(
    ctx: click.Context,
    once: bool,
    log_json: bool,
    no_watch: bool,
    serve: bool,
    sync_first: bool,
    as_json: bool,
) -> None:
    """Send each new post to its lists when its date arrives.

    Without --once this runs in the foreground until SIGTERM or Ctrl-C: it
    scans the posts folder every [schedule] scan_interval (and at once when a
    file changes), sends a future-dated post at its exact date, sends digest
    lists on their cron, and retries deferred deliveries.  Logs go to stderr.

    With --once it does one pass and prints a summary: for cron or a systemd
    timer.  Posts dated before [schedule] since are never sent.
    """
    from newsletter.daemon.scheduler import Daemon, DaemonBusyError, run_once
    from newsletter.errors import StoreError, TransportError
    from newsletter.logging_setup import remove_logging, setup_logging
    from newsletter.store import now, open_store

    stop = shutdown.stop_event()  # set by a SIGTERM or Ctrl-C from start-up on
    settings = settings_of(ctx)
    # Without a configuration (cron's $HOME, a unit's wrong folder) it made a
    # database and a secret there, then failed on a posts folder it guessed.
    require_config_file(settings)
    handler = setup_logging(json_lines=log_json)
    try:
        engine = open_store(settings)
        if sync_first and not stop.is_set():
            _sync_lists(settings, engine, quiet=as_json)
        if not once:
            daemon = Daemon(settings, engine, watch=not no_watch, stop_event=stop)
            with _public_server(settings, enabled=serve and not stop.is_set()):
                daemon.serve_forever()
            if daemon.lost_lock:  # non-zero, so systemd's Restart=on-failure restarts it
                raise DaemonBusyError(
                    "stopped: another process took the daemon lock", key="database.url"
                )
            if daemon.outgrown is not None:
                raise StoreError(
                    f"stopped: a newer newsletter upgraded the database to schema version "
                    f"{daemon.outgrown}; upgrade newsletter here",
                    key="database.url",
                )
            return
        started = now()
        # The stop budget may end the pass while a message waits for its
        # reply: what was done so far is then printed from the database.
        shutdown.at_forced_exit(
            lambda: _print_forced(engine, started, as_json), status=shutdown.STOPPED
        )
        with _progress_bar(enabled=stdout_is_tty() and not as_json) as progress:
            report = run_once(settings, engine, progress=progress, stop=stop)
        stopped = stop.is_set()
        left, trouble = _left(engine)
        shutdown.at_forced_exit(None, status=shutdown.STOPPED if stopped else 0)  # printed below
        problems = (*report.problems, *trouble)
        _say_problems(problems, as_log=log_json)
    finally:
        remove_logging(handler)
    if as_json:
        emit_json(
            report_json(report) | {"stopped": stopped, "left": left, "problems": list(problems)}
        )
    else:
        for line in summary_lines(report):
            click.echo(line)
    if report.transport_error is not None:
        raise TransportError(
            f"transport unavailable: {report.transport_error}; the next run retries"
        )
    if problems and any(p.startswith("error:") or ": error:" in p for p in problems):
        sys.exit(1)
    if stopped:
        count = "" if left is None else f"{left} "
        click.echo(
            f"stopped: {count}deliveries left; the next run (or `run --once`) goes on", err=True
        )
        sys.exit(shutdown.STOPPED)


def _left(engine: Engine) -> tuple[int | None, tuple[str, ...]]:
    """The deliveries still open, or None and why the database could not say:
    the pass's summary is printed either way (the database may have gone
    away mid-pass, which the pass already reported per mailing)."""
    from sqlalchemy.exc import SQLAlchemyError

    from newsletter.errors import database_reason
    from newsletter.store import reading
    from newsletter.store.mailings import open_in_active

    try:
        with reading(engine) as conn:
            return open_in_active(conn), ()
    except SQLAlchemyError as exc:
        return None, (f"error: database: cannot count the deliveries left: {database_reason(exc)}",)


def _print_forced(engine: Engine, started: datetime, as_json: bool) -> None:
    """The summary when the stop budget ends `run --once` (from its thread):
    the deliveries claimed or recorded since the pass began, as the database
    has them; in flight counts as left."""
    from newsletter.store import reading
    from newsletter.store.journal import unfolded_lines
    from newsletter.store.mailings import open_in_active
    from newsletter.store.tallies import changed_since, with_journaled

    journaled = unfolded_lines(engine, started)  # before the database: see there
    with reading(engine) as conn:
        done, finished = with_journaled(conn, changed_since(conn, started), journaled)
        left = max(0, open_in_active(conn) - finished)
    counts = {status: done.get(status, 0) for status in ("sent", "deferred", "failed", "skipped")}
    if as_json:
        emit_json(counts | {"stopped": True, "left": left})
    else:
        listed = ", ".join(f"{status} {n}" for status, n in counts.items())
        click.echo(f"{listed.capitalize()}; {left} left.")  # as `summary_lines` words it


def _say_problems(problems: tuple[str, ...], *, as_log: bool) -> None:
    """One line each on stderr; with --log-json, log events like every other
    line there (a plain line in a JSON stream broke its readers)."""
    for problem in problems:
        if not as_log:
            click.echo(problem, err=True)
            continue
        error = problem.startswith("error:") or ": error:" in problem
        logging.getLogger("newsletter.daemon").log(
            logging.ERROR if error else logging.WARNING,
            "%s",
            problem,
            extra={"event": "problem"},
        )


def _sync_lists(settings: Settings, engine: Engine, *, quiet: bool) -> None:
    """`run --sync`: the list files first, so a fresh checkout has members."""
    from newsletter.audience.subscribers import sync_directory

    results, problems = sync_directory(engine, settings, settings.base_dir / "subscribers")
    for problem in problems + [p for r in results for p in r.counts.problems]:
        click.echo(problem, err=True)
    if quiet:
        return
    try:
        for r in results:
            counts = r.counts.as_dict()
            click.echo(
                f"synced list {r.list_name} from {r.path.name}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int) and v)
            )
    except OSError:
        # Standard output unwritable (a cron job's log on a full disk, a
        # closed pipe): the sync is saved and the pass must still send; the
        # pass's own summary meets the same error at the end and says it.
        pass


@contextmanager
def _public_server(settings: Settings, *, enabled: bool) -> Iterator[None]:
    """`run --serve`: the public app beside the daemon, stopped with it."""
    if not enabled:
        yield
        return
    from newsletter.web.server import serve_in_thread

    running = serve_in_thread(settings)
    click.echo(f"serving unsubscribe and archive at {running.url}", err=True)
    try:
        yield
    finally:
        running.stop()


def summary_lines(report: PassReport) -> list[str]:
    """What `run --once` prints: skipped, planned, delivered, coming next."""
    lines: list[str] = []
    if report.before_since and report.since is not None:
        count = len(report.before_since)
        verb = "were" if count != 1 else "was"
        lines.append(
            f"{count} post{'s' if count != 1 else ''} before since="
            f"{report.since.isoformat()} {verb} skipped."
        )
    posts = len(report.planned)
    digests = len(report.digests)
    lines.append(
        f"Planned {posts} mailing{'s' if posts != 1 else ''}"
        f" and {digests} digest{'s' if digests != 1 else ''}."
    )
    d = report.delivery
    lines.append(f"Sent {d.sent}, deferred {d.deferred}, failed {d.failed}, skipped {d.skipped}.")
    if d.deferral_reason:
        lines.append(f"Last error: {d.deferral_reason}")
    if d.paused:
        lines.append("Paused by a sending cap; the next run resumes.")
    for c in report.halts:
        lines.append(
            f"{c.change.capitalize()}: mailing {c.mailing_id}, {c.post_id} -> {c.list_name}: "
            f"{c.why}; sent {c.sent}, not sent {c.not_sent}."
        )
    for post in report.future[:5]:
        lines.append(f"Next: {post.post_id} at {post.date.isoformat()}.")
    return lines


def report_json(report: PassReport) -> dict[str, Any]:
    d = report.delivery
    return {
        "since": report.since.isoformat() if report.since else None,
        "skipped_before_since": [p.post_id for p in report.before_since],
        "planned": list(report.planned),
        "digests": list(report.digests),
        "sent": d.sent,
        "deferred": d.deferred,
        "failed": d.failed,
        "skipped": d.skipped,
        "paused": d.paused,
        "errors": list(d.errors),
        "last_error": d.last_error,
        "future": [{"post_id": p.post_id, "date": p.date.isoformat()} for p in report.future],
        "problems": list(report.problems),
        "transport_error": report.transport_error,
        "halts": [
            {
                "mailing": c.mailing_id,
                "post": c.post_id,
                "list": c.list_name,
                "change": c.change,
                "why": c.why,
                "sent": c.sent,
                "not_sent": c.not_sent,
            }
            for c in report.halts
        ],
    }


@contextmanager
def _progress_bar(*, enabled: bool) -> Iterator[MailingProgress | None]:
    """A rich bar per mailing, only on a terminal (logs and pipes stay clean)."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        tasks: dict[int, Any] = {}

        def update(mailing_id: int, done: int, total: int) -> None:
            if mailing_id not in tasks:
                tasks[mailing_id] = bar.add_task(f"mailing {mailing_id}", total=total)
            bar.update(tasks[mailing_id], completed=done, total=total)

        yield update


# --------------------------------------------------------------------------- status helpers
# `newsletter status` (cli/mailings.py) shows upcoming sends with these:
#     upcoming = planning.upcoming_sends(settings, load_posts(settings), engine, utcnow())
#     for u in upcoming: click.echo(upcoming_line(u))   /   [upcoming_json(u) ...]


def upcoming_line(item: UpcomingSend) -> str:
    """`2031-03-09T07:00:00+00:00  a-letter-from-the-future → sample`."""
    kind = "" if item.kind == "post" else f" [digest of {len(item.post_ids)}]"
    return f"{item.at.isoformat(timespec='seconds')}  {item.post_id} → {item.list_name}{kind}"


def upcoming_json(item: UpcomingSend) -> dict[str, Any]:
    return {
        "post": item.post_id,
        "title": item.title,
        "list": item.list_name,
        "at": item.at.isoformat(),
        "kind": item.kind,
        "post_ids": list(item.post_ids),
    }
