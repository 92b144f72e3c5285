"""Commands about delivery: send, status."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from newsletter import shutdown
from newsletter.cli.common import emit_json, handle_errors, json_option, settings_of

# The library is imported inside each function, so `--help` stays cheap.
if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.delivery.report import DeliveryReport, MailingSummary, Progress
    from newsletter.errors import ConfigError
    from newsletter.posts.collection import Post


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
    --test addresses.
    """
    from newsletter.posts.collection import load_posts
    from newsletter.posts.lookup import require_published

    stop = shutdown.stop_event()  # set by a SIGTERM from start-up on
    settings = settings_of(ctx)
    settings.get_list(list_name)
    posts = load_posts(settings, bodies="lazy")  # HTML only for the posts sent
    post = posts.find(post_ref)
    if stop.is_set():
        click.echo("stopped before sending anything", err=True)
        return
    if tests:
        _send_tests(settings, post, list_name, tests, as_json)
        return
    require_published(post)  # a draft goes to --test addresses only, never to a list
    if dry_run:
        _dry_run(settings, post, list_name, resend, verbose, as_json)
    else:
        _send(settings, post, posts, list_name, resend, wait, as_json, stop)


def _send_tests(
    settings: Settings, post: Post, list_name: str, addresses: tuple[str, ...], as_json: bool
) -> None:
    from newsletter.delivery.mailings import send_test

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
    settings: Settings, post: Post, list_name: str, resend: bool, verbose: bool, as_json: bool
) -> None:
    from newsletter.audience import members as subs
    from newsletter.store import open_store, reading
    from newsletter.store.mailings import latest_mailing, open_recipients

    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    with reading(engine) as conn:
        existing = latest_mailing(conn, post.post_id, list_name)
        if existing is not None and not resend:
            who = list(open_recipients(conn, existing.id))
        else:
            who = [m.email for m in subs.mailable_members(conn, list_name)]
    if as_json:
        emit_json({"post": post.post_id, "list": list_name, "count": len(who), "recipients": who})
        return
    click.echo(f"would send {post.post_id!r} to {len(who)} subscriber(s) of list {list_name!r}")
    if verbose:
        for email in who:
            click.echo(f"  {email}")


def _send(
    settings: Settings,
    post: Post,
    posts: Any,
    list_name: str,
    resend: bool,
    wait: float,
    as_json: bool,
    stop: threading.Event,
) -> None:
    from newsletter.delivery.mailings import deliver_mailing, plan_mailing
    from newsletter.email.tokens import checked_secret
    from newsletter.store import open_store, reading
    from newsletter.store.mailings import latest_mailing

    engine = open_store(settings)
    with reading(engine) as conn:
        existing = latest_mailing(conn, post.post_id, list_name)
    if existing is not None and existing.state == "done" and not resend:
        when = existing.finished_at.isoformat(timespec="seconds") if existing.finished_at else ""
        message = f"{post.post_id!r} was already sent to list {list_name!r} {when}".rstrip()
        if as_json:
            emit_json({"already_sent": True, "mailing": existing.id, "message": message})
        else:
            click.echo(f"{message}; nothing sent (use --resend to send it again)")
        return
    checked_secret(settings, engine)  # before planning: refuse with nothing changed
    # The owner's mailing from now on: one the daemon planned and withdrew or
    # postponed goes on, and is never halted again (store.halts.take_over).
    mailing_id = plan_mailing(
        engine, settings, post.post_id, list_name, subject=post.title, resend=resend
    )
    with _stop_on_signals(stop), _progress(enabled=sys.stdout.isatty() and not as_json) as bar:
        report = deliver_mailing(
            engine, settings, mailing_id, posts, progress=bar, wait=wait, stop=stop
        )
    if as_json:
        emit_json({"mailing": mailing_id, **_report_dict(report)})
    else:
        click.echo(_summary_line(report))
    for line in report.errors:
        click.echo(f"failed: {line}", err=True)
    if _cancelled(engine, mailing_id):
        click.echo(
            f"stopped: mailing {mailing_id} was cancelled with `newsletter cancel`; "
            "the rest do not get it (`newsletter send` of it again sends it to them)",
            err=True,
        )
    elif stop.is_set():
        click.echo(
            "stopped: the messages in flight were finished; run the same command again "
            "to send the rest",
            err=True,
        )


def _cancelled(engine: Any, mailing_id: int) -> bool:
    from newsletter.store import reading
    from newsletter.store.mailings import get_mailing

    with reading(engine) as conn:
        found = get_mailing(conn, mailing_id)
    return found is not None and found.state == "cancelled"


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM: finish the messages in flight, then stop (a second one kills)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    return line


# --------------------------------------------------------------------------- cancel


class MailingId(click.ParamType):
    """A mailing's number as `status` shows it: `4` or `#4`."""

    name = "MAILING"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip().removeprefix("#")
        if text.isdigit() and int(text) > 0:
            return int(text)
        self.fail(f"{value!r} is not a mailing number (as `newsletter status` shows: 4 or #4)")


@click.command("cancel")
@click.argument("mailing_id", metavar="MAILING", type=MailingId())
@json_option
@click.pass_context
@handle_errors
def cancel_cmd(ctx: click.Context, mailing_id: int, as_json: bool) -> None:
    """Cancel the rest of MAILING (its number in `newsletter status`).

    Nobody else gets it: every process sending it stops within seconds (the
    messages already on the wire finish), the daemon never resumes it, and
    `status` shows who got it.  `newsletter send POST --list L` of the same
    post and list sends the rest after all, each reader once.
    """
    from newsletter.delivery.mailings import cancel_mailing
    from newsletter.store import open_store

    found = cancel_mailing(open_store(settings_of(ctx)), mailing_id)
    if as_json:
        emit_json(
            {
                "mailing": mailing_id,
                "post": found.post_id,
                "list": found.list_name,
                "cancelled": found.changed,
                "was": found.was,
                "sent": found.sent,
                "not_sent": found.not_sent,
                "in_flight": found.in_flight,
            }
        )
        return
    what = "cancelled" if found.changed else "was already cancelled"
    flight = (
        f", in flight {found.in_flight} (a sending process holds them: they may still go)"
        if found.in_flight
        else ""
    )
    click.echo(
        f"mailing {mailing_id} {what}: {found.post_id} -> {found.list_name}: "
        f"sent {found.sent}, not sent {found.not_sent}{flight}"
    )


# --------------------------------------------------------------------------- status


@click.command("status")
@json_option
@click.pass_context
@handle_errors
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every mailing with its counts by status, its state and its last error,
    then the sends to come (post × list × time), soonest first."""
    from newsletter.cli.daemon import upcoming_json, upcoming_line
    from newsletter.config import utcnow
    from newsletter.daemon.planning import upcoming_sends
    from newsletter.delivery.bouncebox import bounce_counts_by_mailing
    from newsletter.delivery.mailings import mailing_summaries
    from newsletter.posts.collection import load_posts
    from newsletter.store import open_store

    settings = settings_of(ctx)
    engine = open_store(settings)
    summaries = mailing_summaries(engine)
    reports = bounce_counts_by_mailing(engine)
    posts = load_posts(settings, bodies=False)
    problems: list[ConfigError] = []  # a bad digest cron: the rest is still shown
    upcoming = upcoming_sends(settings, posts, engine, utcnow(), problems)
    if as_json:
        emit_json(
            {
                "mailings": [
                    {**_summary_dict(s), "reports": _reports(reports.get(s.mailing_id, {}))}
                    for s in summaries
                ],
                "upcoming": [upcoming_json(u) for u in upcoming],
                "problems": [str(p) for p in problems],
            }
        )
        _exit_on(problems)
        return
    if not summaries:
        click.echo("no mailings yet")
    for s in summaries:
        click.echo(_status_line(s) + _reports_text(reports.get(s.mailing_id, {})))
        if s.last_error:
            # A withdrawn or postponed mailing's note says why, not an error.
            label = "why" if s.state in ("withdrawn", "postponed", "cancelled") else "last error"
            click.echo(f"    {label}: {s.last_error}")
    if upcoming:
        click.echo("upcoming:")
        for item in upcoming:
            click.echo(f"  {upcoming_line(item)}")
    _exit_on(problems)


def _exit_on(problems: list[ConfigError]) -> None:
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)


def _state_text(s: MailingSummary) -> str:
    if s.state == "paused" and s.paused_until is not None:
        return f"paused until {s.paused_until.isoformat(timespec='seconds')}"
    if s.state == "waiting":
        return "waiting for the page"
    if s.state == "held":
        return "held (the page never went live)"
    if s.state == "withdrawn":
        return "withdrawn (its post was pulled)"
    if s.state == "cancelled":
        return "cancelled (by the owner)"
    if s.state == "postponed" and s.paused_until is not None:
        return f"postponed until {s.paused_until.isoformat(timespec='seconds')}"
    return s.state


def _status_line(s: MailingSummary) -> str:
    order = ("sent", "queued", "sending", "deferred", "failed", "skipped")
    counts = ", ".join(f"{k} {s.counts[k]}" for k in order if s.counts.get(k))
    kind = "" if s.kind == "post" else f" [{s.kind}]"
    return (
        f"#{s.mailing_id} {s.post_id} → {s.list_name}{kind}: {_state_text(s)}; "
        f"{s.total} recipient(s){': ' + counts if counts else ''}"
    )


def _reports(counts: dict[str, int]) -> dict[str, int]:
    """Bounce and complaint reports read back for a mailing (newsletter bounces)."""
    return {k: counts.get(k, 0) for k in ("hard", "soft", "complaint")}


def _reports_text(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    c = _reports(counts)
    return f"; bounces: {c['hard']} hard, {c['soft']} soft; complaints: {c['complaint']}"


def _summary_dict(s: MailingSummary) -> dict[str, Any]:
    return {
        "id": s.mailing_id,
        "post": s.post_id,
        "list": s.list_name,
        "kind": s.kind,
        "state": s.state,
        "planned_by": s.origin,
        "paused_until": s.paused_until.isoformat() if s.paused_until else None,
        "counts": dict(s.counts),
        "total": s.total,
        "last_error": s.last_error,
        "created_at": s.created_at.isoformat() if s.created_at else None,
        "finished_at": s.finished_at.isoformat() if s.finished_at else None,
    }


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    for command in (send_cmd, status_cmd, cancel_cmd):
        group.add_command(command)
