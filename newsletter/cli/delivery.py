"""Command about delivery: send (`status` and `cancel` are in cli/mailings.py)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from newsletter import shutdown
from newsletter.cli.common import emit_json, handle_errors, json_option, settings_of, stdout_is_tty

# The library is imported inside each function, so `--help` stays cheap.
if TYPE_CHECKING:
    from datetime import datetime

    from newsletter.config import Settings
    from newsletter.delivery.report import DeliveryReport, Progress
    from newsletter.posts.collection import Post
    from newsletter.store.mailings import MailingRow


@click.command("send")
@click.argument("post_ref", metavar="POST")
@click.option("--list", "list_name", required=True, help="The list to send to.")
@click.option(
    "--test",
    "tests",
    multiple=True,
    metavar="ADDR",
    help='Send a "[TEST] " copy to ADDR instead (repeatable; nothing is recorded).',
)
@click.option("--dry-run", is_flag=True, help="Say how many would receive it; send nothing.")
@click.option("--resend", is_flag=True, help="Send again to everyone (a new mailing).")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to keep retrying deferred recipients before returning.",
)
@click.option("-v", "--verbose", is_flag=True, help="With --dry-run: list every recipient.")
@json_option
@click.pass_context
@handle_errors
def send_cmd(
    ctx: click.Context,
    post_ref: str,
    list_name: str,
    tests: tuple[str, ...],
    dry_run: bool,
    resend: bool,
    wait: float,
    verbose: bool,
    as_json: bool,
) -> None:
    """Send POST to the subscribers of a list (plan it first if needed).

    Safe to interrupt or kill: running it again finishes the mailing without
    sending twice. Once a mailing is done, sending again needs --resend.
    POST is a post id or a path; an unpublished post (a draft) goes only to
    --test addresses.  A digest the daemon planned (its id as `status` shows
    it, `digest:LIST:SLOT`) is sent on, e.g. after `newsletter cancel`.
    """
    from newsletter.posts.collection import find_post_or_draft, load_posts
    from newsletter.posts.lookup import require_published

    _refuse_ignored(tests, resend, verbose, dry_run)
    stop = shutdown.stop_event()  # set by a SIGTERM or Ctrl-C from start-up on
    settings = settings_of(ctx)
    settings.get_list(list_name)
    posts = load_posts(settings, bodies="lazy")  # HTML only for the posts sent
    post: Post | None = None
    if _is_digest(post_ref):
        _digest_exists(settings, post_ref, list_name, tests or resend)
    else:
        post = find_post_or_draft(posts, post_ref, settings)  # a draft: --test only
    if stop.is_set():
        _stopped_before_sending(as_json)
    post_id, title = post_ref, ""
    if post is not None:
        if tests:
            _send_tests(settings, post, list_name, tests, as_json, dry_run)
            return
        require_published(post)  # a draft goes to --test addresses only, never to a list
        posts.require_own_id(post)  # its mailing is recorded by id: the id must be its alone
        post_id, title = post.post_id, post.title
    if dry_run:
        _dry_run(settings, post_id, list_name, resend, verbose, as_json)
    else:
        _send(settings, post_id, title, posts, list_name, resend, wait, as_json, stop)


def _refuse_ignored(tests: tuple[str, ...], resend: bool, verbose: bool, dry_run: bool) -> None:
    """A combination whose one half would be silently ignored is a usage error."""
    if tests and resend:
        raise click.UsageError(
            "--resend sends the post to the whole list again and --test sends copies "
            "to ADDR only: give one of them"
        )
    if verbose and not dry_run:
        raise click.UsageError("--verbose lists the recipients of a --dry-run: add --dry-run")


def _is_digest(post_ref: str) -> bool:
    from newsletter.daemon.planning import DIGEST_PREFIX

    return post_ref.startswith(DIGEST_PREFIX)


def _digest_exists(settings: Settings, digest_id: str, list_name: str, again: object) -> None:
    """A digest is only ever planned by the daemon: `send` goes on with one
    (`again`: --test or --resend was given, which take a post)."""
    from newsletter.errors import DeliveryError
    from newsletter.store import open_store, reading
    from newsletter.store.mailings import latest_mailing

    if again:
        raise DeliveryError(
            f"{digest_id!r}: a digest is not sent again or as a test; "
            "--test and --resend take a post"
        )
    with reading(open_store(settings)) as conn:
        found = latest_mailing(conn, digest_id, list_name)
    if found is None or found.kind != "digest":
        raise DeliveryError(
            f"no digest {digest_id!r} of list {list_name!r} (`newsletter status` lists them)"
        )


def _send_tests(
    settings: Settings,
    post: Post,
    list_name: str,
    addresses: tuple[str, ...],
    as_json: bool,
    dry_run: bool,
) -> None:
    from newsletter.delivery.mailings import send_test
    from newsletter.delivery.outgoing import test_recipients

    if dry_run:  # checked as they would be, sent to none
        to = test_recipients(addresses)
        if as_json:
            emit_json({"test": True, "dry_run": True, "post": post.post_id, "to": list(to)})
        else:
            click.echo(f"would send a test message of {post.post_id!r} to {', '.join(to)}")
        return
    report = send_test(settings, post, list_name, addresses)
    if as_json:
        emit_json({"test": True, **_report_dict(report)})
    else:
        click.echo(f"sent {report.sent} test message(s) of {post.post_id!r}")
    for line in report.errors:
        click.echo(f"error: {line}", err=True)
    if report.failed:
        sys.exit(1)


def _dry_run(
    settings: Settings, post_id: str, list_name: str, resend: bool, verbose: bool, as_json: bool
) -> None:
    from newsletter.audience import members as subs
    from newsletter.store import open_store, reading
    from newsletter.store.mailings import latest_mailing, open_recipients
    from newsletter.store.snapshots import first_time_readers

    engine = open_store(settings, dry_run=True)
    subs.ensure_lists(engine, settings)
    with reading(engine) as conn:
        existing = latest_mailing(conn, post_id, list_name)
        if existing is not None and not resend:
            who = list(open_recipients(conn, existing.id))
        elif not resend and settings.email.dedupe_across_lists:
            # As the send would plan it: not to whoever has it from another list.
            who = first_time_readers(conn, subs.list_id(conn, list_name), post_id)
        else:
            who = [m.email for m in subs.mailable_members(conn, list_name)]
    going_on = existing if existing is not None and not resend else None
    if going_on is not None and going_on.state == "done":  # as `send` would say
        _already_sent(going_on, post_id, list_name, as_json, "would be")
        return
    if as_json:
        emit_json(
            {
                "post": post_id,
                "list": list_name,
                "count": len(who),
                "recipients": who,
                "mailing": going_on.id if going_on else None,
            }
        )
        return
    rest = f" (the rest of mailing {going_on.id}, {going_on.state})" if going_on else ""
    click.echo(f"would send {post_id!r} to {len(who)} subscriber(s) of list {list_name!r}{rest}")
    if verbose:
        for email in who:
            click.echo(f"  {email}")


def _send(
    settings: Settings,
    post_id: str,
    title: str,
    posts: Any,
    list_name: str,
    resend: bool,
    wait: float,
    as_json: bool,
    stop: threading.Event,
) -> None:
    from newsletter.delivery.mailings import deliver_mailing, plan_mailing
    from newsletter.email.tokens import checked_secret
    from newsletter.store import now, open_store, reading
    from newsletter.store.mailings import latest_mailing

    engine = open_store(settings)
    with reading(engine) as conn:
        existing = latest_mailing(conn, post_id, list_name)
    if existing is not None and existing.state == "done" and not resend:
        _already_sent(existing, post_id, list_name, as_json, "")
        return
    checked_secret(settings, engine)  # before planning: refuse with nothing changed
    # The owner's mailing from now on: one the daemon planned and withdrew or
    # postponed goes on, and is never halted again (store.halts.take_over).
    mailing_id = plan_mailing(engine, settings, post_id, list_name, subject=title, resend=resend)
    started = now()
    # The stop budget may end the process while a message waits for its
    # reply: what was done so far is then printed from the database.
    shutdown.at_forced_exit(
        lambda: _print_forced(engine, mailing_id, started, as_json), status=shutdown.STOPPED
    )
    # SIGTERM or Ctrl-C sets `stop` (`shutdown`, since start-up): the messages in
    # flight finish, then the pass stops; a second signal ends the process at once.
    with _progress(enabled=stdout_is_tty() and not as_json) as bar:
        report = deliver_mailing(
            engine, settings, mailing_id, posts, progress=bar, wait=wait, stop=stop
        )
    left = _left(engine, mailing_id)
    # A stop that came once every delivery had its outcome cut nothing short.
    stopped = stop.is_set() and left > 0
    # Printed now: a forced exit after this (the interpreter waiting for a
    # sending thread) only sets the exit status.
    shutdown.at_forced_exit(None, status=shutdown.STOPPED if stopped else 0)
    retry = None if stopped or not left else _next_retry(engine, mailing_id)
    cancelled = _cancelled(engine, mailing_id)
    if as_json:
        emit_json(
            {
                "mailing": mailing_id,
                **_report_dict(report),
                "stopped": stopped,
                "left": left,
                "next_retry": retry.isoformat() if retry else None,
            }
        )
    else:
        click.echo(_summary_line(report))
        waiting = not (report.deferred or report.paused or cancelled)
        if retry is not None and retry > now() and waiting:
            # Only rows deferred by an earlier run are left, not yet due: say so,
            # or a second `send` said "sent 0 ..." as if nobody were waiting.
            when = retry.astimezone(settings.site.tz).strftime("%Y-%m-%d %H:%M %Z")
            click.echo(
                f"{left} recipient(s) wait for their retry, the first at {when}: "
                "`newsletter run` sends them then (or this command after that time)"
            )
    for line in report.errors:
        click.echo(f"failed: {line}", err=True)
    if cancelled:
        click.echo(
            f"stopped: mailing {mailing_id} was cancelled with `newsletter cancel`; "
            f"the rest do not get it (`newsletter send {post_id} --list {list_name}` "
            "again sends it to them)",
            err=True,
        )
    elif stopped:
        click.echo(
            "stopped: the messages in flight were finished; run the same command again "
            "to send the rest",
            err=True,
        )
    if stopped:
        sys.exit(shutdown.STOPPED)


def _stopped_before_sending(as_json: bool) -> None:
    """A SIGTERM noted while the command was starting: nothing was planned or sent."""
    if as_json:
        from newsletter.delivery.report import DeliveryReport

        nothing = _report_dict(DeliveryReport())
        emit_json({"mailing": None, **nothing, "stopped": True, "left": None})
    click.echo("stopped before sending anything", err=True)
    sys.exit(shutdown.STOPPED)


def _left(engine: Any, mailing_id: int) -> int:
    """The mailing's deliveries not yet sent, failed or skipped (queued, deferred, in flight)."""
    from newsletter.store import reading
    from newsletter.store.tallies import open_count

    with reading(engine) as conn:
        return open_count(conn, mailing_id, up_to=2**62)


def _next_retry(engine: Any, mailing_id: int) -> datetime | None:
    """When the mailing's first open delivery comes due (a deferred one's retry time)."""
    from newsletter.store import reading
    from newsletter.store.mailings import next_due

    with reading(engine) as conn:
        return next_due(conn, mailing_id)


def _print_forced(engine: Any, mailing_id: int, started: datetime, as_json: bool) -> None:
    """The summary when the stop budget ends `send` (from the stop-budget thread):
    this run's outcomes as the database has them; in flight counts as left."""
    from newsletter.delivery.report import DeliveryReport
    from newsletter.store import reading
    from newsletter.store.journal import unfolded_lines
    from newsletter.store.tallies import changed_since, open_count, with_journaled

    journaled = unfolded_lines(engine, started)  # before the database: see there
    with reading(engine) as conn:
        done = changed_since(conn, started, mailing_id)
        done, finished = with_journaled(conn, done, journaled, mailing_id)
        left = max(0, open_count(conn, mailing_id, up_to=2**62) - finished)
    report = DeliveryReport(
        sent=done.get("sent", 0),
        deferred=done.get("deferred", 0),
        failed=done.get("failed", 0),
        skipped=done.get("skipped", 0),
    )
    if as_json:
        emit_json({"mailing": mailing_id, **_report_dict(report), "stopped": True, "left": left})
    else:
        click.echo(f"{_summary_line(report)}; {left} left")


def _already_sent(
    existing: MailingRow, post_id: str, list_name: str, as_json: bool, would: str
) -> None:
    when = existing.finished_at.isoformat(timespec="seconds") if existing.finished_at else ""
    message = f"{post_id!r} was already sent to list {list_name!r} {when}".rstrip()
    if as_json:
        emit_json({"already_sent": True, "mailing": existing.id, "message": message})
    else:
        nothing = f"nothing {would} sent" if would else "nothing sent"
        click.echo(f"{message}; {nothing} (use --resend to send it again)")


def _cancelled(engine: Any, mailing_id: int) -> bool:
    from newsletter.store import reading
    from newsletter.store.mailings import get_mailing

    with reading(engine) as conn:
        found = get_mailing(conn, mailing_id)
    return found is not None and found.state == "cancelled"


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar with rate and ETA, only on a terminal."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with bar:
        task = bar.add_task("send", total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            rate = f"{speed:,.0f} msg/s" if speed else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update


def _report_dict(report: DeliveryReport) -> dict[str, Any]:
    return {
        "sent": report.sent,
        "deferred": report.deferred,
        "failed": report.failed,
        "skipped": report.skipped,
        "paused": report.paused,
        "errors": list(report.errors),
        "last_error": report.last_error,
    }


def _summary_line(report: DeliveryReport) -> str:
    line = (
        f"sent {report.sent}, deferred {report.deferred}, "
        f"failed {report.failed}, skipped {report.skipped}"
    )
    if report.paused:
        line += " (paused: sending cap reached; `newsletter run` resumes it later)"
    elif report.deferred:
        line += " (deferred ones are retried by `newsletter run` or by sending again)"
    # Why, once (a server that could not be reached, say): else only `status` told.
    reason = report.deferral_reason
    return line + (f"; last error: {reason}" if reason else "")


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(send_cmd)
