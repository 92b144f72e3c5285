"""Commands: `subscribers add|remove|unsubscribe|resubscribe|show`, one address at a time.

The `subscribers` group itself, and its commands over a whole list or file
(import, export, list, sync), are in `cli.subscribers`, which adds these.
Exit status: 0 when done; 1 for an unknown list or address; 2 for usage errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from newsletter.cli.common import (
    emit_json,
    handle_errors,
    json_option,
    list_option,
    settings_of,
    shown,
)

# The library (SQLAlchemy) is imported inside each command, so `--help` stays cheap.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from newsletter.audience.members import SubscriberRow
    from newsletter.config import Settings


def _engine_for(ctx: click.Context, list_name: str | None) -> tuple[Settings, Engine]:
    from newsletter.audience.members import ensure_lists
    from newsletter.store import open_store

    settings = settings_of(ctx)
    if list_name is not None:
        settings.get_list(list_name)
    engine = open_store(settings)
    ensure_lists(engine, settings)
    return settings, engine


def _require(engine: Engine, email: str) -> SubscriberRow:
    from newsletter.audience.addresses import normalise_email
    from newsletter.audience.members import get_by_email
    from newsletter.errors import SubscriberError

    row = get_by_email(engine, email)
    if row is None:
        normalise_email(email)  # no address at all: say that, not "no subscriber"
        raise SubscriberError(f"no subscriber with address {email.strip()!r}", recipient=email)
    return row


@click.command("add")
@click.argument("email")
@list_option
@click.option("--name", default="", help="The subscriber's name.")
@click.pass_context
@handle_errors
def add_command(ctx: click.Context, email: str, list_name: str, name: str) -> None:
    """Add EMAIL to a list (an unsubscribed address stays unsubscribed)."""
    from newsletter.audience.members import add_subscriber, clean_name

    _, engine = _engine_for(ctx, list_name)
    # One line, as a signup's: a pasted line break would start a paragraph of its own in emails.
    row = add_subscriber(engine, email, list_name, name=clean_name(name), source="cli")
    click.echo(f"added {row.email} to {list_name}{_suppressed_note(engine, row, list_name)}")


def _suppressed_note(engine: Engine, row: SubscriberRow, list_name: str) -> str:
    """Why an added address still gets no mail, and the one way to lift that."""
    from newsletter.audience.members import membership_lists

    if row.status == "pending":
        return (
            f", but it stays pending ({shown(row.status_reason or 'no reason recorded')}) "
            "and gets no mail until it confirms its signup (its confirmation link)"
        )
    if row.status != "active":
        return (
            f", but it stays {row.status} ({shown(row.status_reason or 'no reason recorded')}) "
            f"and gets no mail; only with their consent, lift it with "
            f"`newsletter subscribers resubscribe {row.email}`"
        )
    if membership_lists(engine, row.id).get(list_name) is not None:
        return (
            f", but it stays unsubscribed from {list_name} and gets no mail from it; "
            f"only with their consent, lift it with "
            f"`newsletter subscribers resubscribe {row.email} --list {list_name}`"
        )
    return ""


@click.command("remove")
@click.argument("email")
@list_option
@click.pass_context
@handle_errors
def remove_command(ctx: click.Context, email: str, list_name: str) -> None:
    """Take EMAIL off a list (no unsubscribe is recorded; see `unsubscribe`)."""
    from newsletter.audience.members import membership_lists, remove_member

    _, engine = _engine_for(ctx, list_name)
    row = _require(engine, email)
    if remove_member(engine, row.id, list_name):
        click.echo(f"removed {row.email} from {list_name}")
    elif list_name in membership_lists(engine, row.id):  # kept: it is a per-list unsubscribe
        click.echo(
            f"{row.email} stays recorded as unsubscribed from {list_name}, "
            "so that no import or sync adds it back"
        )
    else:
        click.echo(f"{row.email} is not on {list_name}")


@click.command("unsubscribe")
@click.argument("email")
@click.option("--list", "list_name", default=None, help="Only this list (default: every list).")
@click.pass_context
@handle_errors
def unsubscribe_command(ctx: click.Context, email: str, list_name: str | None) -> None:
    """Unsubscribe EMAIL from one list, or from every list.

    An address not known yet is recorded as unsubscribed, so that no later
    import or sync adds it.
    """
    from newsletter.audience.members import unsubscribe_address

    _, engine = _engine_for(ctx, list_name)
    row, created, changed = unsubscribe_address(
        engine, email, list_name, reason="cli", source="cli"
    )
    scope = list_name or "every list"
    if created:
        click.echo(
            f"{row.email} is not a subscriber yet: recorded as unsubscribed from {scope}; "
            f"an import will not add it{' to ' + list_name if list_name else ''}"
        )
    elif changed:
        click.echo(f"unsubscribed {row.email} from {scope}")
    elif list_name is None and row.status in ("bounced", "complained"):
        reason = shown(row.status_reason or "no reason recorded")
        click.echo(
            f"{row.email} is already {row.status} ({reason}), which stops all its mail; "
            "nothing changed"
        )
    else:
        click.echo(f"{row.email} was already unsubscribed from {scope}")


@click.command("resubscribe")
@click.argument("email")
@click.option("--list", "list_name", default=None, help="Only this list (default: every list).")
@click.pass_context
@handle_errors
def resubscribe_command(ctx: click.Context, email: str, list_name: str | None) -> None:
    """Undo an unsubscribe, bounce or complaint for EMAIL (only with their consent).

    Without --list, lists EMAIL was unsubscribed from without ever joining
    them stay so.
    """
    from newsletter.audience.members import membership_lists, never_joined, resubscribe
    from newsletter.errors import SubscriberError

    _, engine = _engine_for(ctx, list_name)
    row = _require(engine, email)
    if row.status == "pending":  # no suppression to undo: a consent never given
        raise SubscriberError(
            f"{row.email} is pending: it has not confirmed its signup, and only its "
            "confirmation link makes it active (resubscribe undoes an unsubscribe, "
            "bounce or complaint)"
        )
    scope = list_name or "every list"
    if resubscribe(engine, row.id, list_name, source="cli"):
        done = f"resubscribed {row.email} to {scope}"
    else:
        done = f"{row.email} was not unsubscribed from {scope}; nothing changed"
    if list_name is not None:
        left = [n for n, at in membership_lists(engine, row.id).items() if at and n != list_name]
        if left:  # a global suppression lifted for this list only
            done += f"; it stays unsubscribed from {', '.join(sorted(left))}"
    kept = never_joined(engine, row.id) if list_name is None else []
    for name in kept:  # a per-list unsubscribe of a non-member: only --list lifts it
        done += (
            f"; it stays unsubscribed from {name}, which it never joined "
            f"(`newsletter subscribers resubscribe {row.email} --list {name}` adds it)"
        )
    click.echo(done)


@click.command("show")
@click.argument("email")
@json_option
@click.pass_context
@handle_errors
def show_command(ctx: click.Context, email: str, as_json: bool) -> None:
    """Show EMAIL's status, lists and consent history (every signup,
    confirmation, unsubscribe and preference change, with time and source)."""
    from newsletter.audience.consent import history
    from newsletter.audience.members import membership_lists

    _, engine = _engine_for(ctx, None)
    row = _require(engine, email)
    joined = membership_lists(engine, row.id)
    events = history(engine, row.id)
    if as_json:
        emit_json(
            {
                "email": row.email,
                "name": row.name,
                "status": row.status,
                "status_reason": row.status_reason,
                "lists": {n: ("unsubscribed" if at else "subscribed") for n, at in joined.items()},
                "history": [
                    {"at": e.at.isoformat(), "action": e.action, "source": e.source,
                     "list": e.list_name, "detail": e.detail}
                    for e in events
                ],
            }
        )  # fmt: skip
        return
    reason = f" ({shown(row.status_reason)})" if row.status_reason else ""
    name = f" · {shown(row.name)}" if row.name else ""
    click.echo(f"{row.email}{name}: {row.status}{reason}")
    for name, at in joined.items():
        click.echo(
            f"  {name}: {'unsubscribed ' + at.isoformat(timespec='seconds') if at else 'subscribed'}"
        )
    click.echo("history:" if events else "history: nothing recorded")
    for e in events:
        scope = e.list_name or "every list"
        detail = f" — {shown(e.detail)}" if e.detail else ""
        click.echo(
            f"  {e.at.isoformat(timespec='seconds')}  {e.action:<12} {scope:<16} via {e.source}{detail}"
        )


# Added to the `subscribers` group by cli.subscribers.
MEMBER_COMMANDS = [
    add_command,
    remove_command,
    unsubscribe_command,
    resubscribe_command,
    show_command,
]
