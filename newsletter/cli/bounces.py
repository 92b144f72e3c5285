"""`newsletter bounces`: read the bounce mailbox once and act on it."""

from __future__ import annotations

import sys

import click

from newsletter.cli.common import emit_json, handle_errors, json_option, settings_of


@click.command("bounces")
@json_option
@click.pass_context
@handle_errors
def bounces_cmd(ctx: click.Context, as_json: bool) -> None:
    """Read bounces and complaints from [bounces] maildir or IMAP, once.

    A hard bounce (5.x.x) suppresses the address as `bounced`; soft bounces
    (4.x.x) do after [bounces] soft_limit within soft_days; a complaint
    (ARF) suppresses it as `complained` on every list.  Each message read is
    moved to the processed folder; one that is not understood is moved to
    the unparsed folder, kept, and reported here (exit 1).  A report whose
    VERP token fails its check (forged, or signed with another secret)
    changes nothing and is listed as unverified.
    """
    from newsletter.delivery.bouncebox import process_bounces
    from newsletter.store import open_store

    settings = settings_of(ctx)
    run = process_bounces(open_store(settings), settings)
    if as_json:
        emit_json(
            {
                "read": run.read,
                "hard": run.hard,
                "soft": run.soft,
                "complaints": run.complaints,
                "delays": run.delays,
                "suppressed": run.suppressed,
                "unknown": run.unknown,
                "unparsed": [{"message": p.message, "ref": p.key} for p in run.unparsed],
                "unverified": run.unverified,
            }
        )
    else:
        for address in run.suppressed:
            click.echo(f"suppressed {address}")
        for address in run.unknown:
            click.echo(f"not a subscriber: {address}")
        for line in run.unverified:
            click.echo(f"unverified: {line}")
        for problem in run.unparsed:
            click.echo(f"unparsed: {problem.key}: {problem.message}", err=True)
        unverified = f", {len(run.unverified)} unverified" if run.unverified else ""
        click.echo(
            f"{run.read} message(s) read: {run.hard} hard bounce(s), {run.soft} soft, "
            f"{run.complaints} complaint(s), {run.delays} delay warning(s), "
            f"{len(run.unparsed)} not understood{unverified}"
        )
    if run.unparsed:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(bounces_cmd)
