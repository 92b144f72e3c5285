"""Commands about mailings once planned: status (where each stands), cancel."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from newsletter.cli.common import emit_json, handle_errors, json_option, settings_of

# The library is imported inside each function, so `--help` stays cheap.
if TYPE_CHECKING:
    from newsletter.delivery.report import MailingSummary
    from newsletter.errors import ConfigError


# --------------------------------------------------------------------------- cancel


MAX_ID = 2**63 - 1  # a 64-bit integer column's largest value


class MailingId(click.ParamType):
    """A mailing's number as `status` shows it: `4` or `#4`."""

    name = "MAILING"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip().removeprefix("#")
        # ASCII digits only (str.isdigit takes "²"), and within a database
        # integer: a bigger number is no mailing, not an overflow traceback.
        if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID:
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
    post (of a digest: its id, as `status` shows it) and list sends the rest
    after all, each reader once; a cancelled digest's posts are not carried
    by the next digest.  With dedupe_across_lists, its members also on
    another list whose mailing of the post goes on get it from that list.
    """
    from newsletter.delivery.mailings import cancel_mailing
    from newsletter.store import open_store
    from newsletter.store.halts import handed_over_note

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
                "handed_over": [
                    {"mailing": h.mailing_id, "list": h.list_name, "recipients": h.recipients}
                    for h in found.handed_over
                ],
            }
        )
        return
    what = "cancelled" if found.changed else "was already cancelled"
    flight = (
        f", in flight {found.in_flight} (a sending process holds them: they may still go)"
        if found.in_flight
        else ""
    )
    handed = f"; {handed_over_note(found.handed_over)}" if found.handed_over else ""
    click.echo(
        f"mailing {mailing_id} {what}: {found.post_id} -> {found.list_name}: "
        f"sent {found.sent}, not sent {found.not_sent}{flight}{handed}"
    )
    if found.changed and found.not_sent:
        click.echo(
            f"(`newsletter send {found.post_id} --list {found.list_name}` sends the rest after all)"
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
    from newsletter.store.halts import is_halt_note

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
            # A withdrawn or postponed mailing's note says why, not an error; so
            # does a finished one's whose rest went to a later mailing.
            stopped = s.state in ("withdrawn", "postponed", "cancelled")
            label = "why" if stopped or is_halt_note(s.last_error) else "last error"
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
    for command in (status_cmd, cancel_cmd):
        group.add_command(command)
