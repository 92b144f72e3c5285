"""Commands: `subscribers import|export|add|remove|unsubscribe|resubscribe|list|sync|show`, `lists`.

Exit status: 0 when everything was done; 1 when the user must fix something
(an unknown list or address, an unreadable file, and for import/sync any row
that was skipped as invalid, although every valid row was still imported);
2 for usage errors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.common import (
    LazyChoice,
    emit_json,
    handle_errors,
    json_option,
    problem_json,
    settings_of,
)

# The library (SQLAlchemy, rich) is imported inside each command, so `--help` stays cheap.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from newsletter.audience.importer import ImportCounts
    from newsletter.audience.members import SubscriberRow
    from newsletter.audience.subscribers import Progress as ProgressFn
    from newsletter.config import Settings
    from newsletter.errors import Problem

PROGRESS_MIN_BYTES = 1 << 20  # a bar for files over 1 MB, when stdout is a terminal
SHOW_PROBLEMS = 100

list_option = click.option("--list", "list_name", required=True, help="The list (see `lists`).")
status_option = click.option(
    "--status",
    "statuses",
    multiple=True,
    type=LazyChoice("newsletter.audience.members", "STATUSES"),
    help="Only members with this status (repeatable).",
)


@click.group("subscribers")
def subscribers_group() -> None:
    """Manage subscriber lists: import, export, add, remove, unsubscribe, sync.

    Subscriber files hold personal data: never commit real ones to a public
    repository (.gitignore keeps subscribers/*.csv out, except the sample).
    """


# --------------------------------------------------------------------------- import


@subscribers_group.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@list_option
@click.option(
    "--format",
    "fmt",
    type=LazyChoice("newsletter.audience.serviceformats", "FORMATS", "auto"),
    default="auto",
    show_default=True,
    help="The service that exported FILE; auto recognises it by the header.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option(
    "--resubscribe",
    is_flag=True,
    help="Let active rows reactivate unsubscribed, bounced or complained addresses.",
)
@json_option
@click.pass_context
@handle_errors
def import_command(
    ctx: click.Context,
    file: Path,
    list_name: str,
    fmt: str,
    dry_run: bool,
    resubscribe: bool,
    as_json: bool,
) -> None:
    """Import FILE (a CSV or a Mailchimp export ZIP) into a list.

    Invalid rows are reported with their line number and skipped; the rest is
    imported in one transaction. Exit status 1 if any row was skipped.
    """
    from newsletter.audience.subscribers import import_file
    from newsletter.store import open_store

    settings = settings_of(ctx)
    engine = open_store(settings)
    with _progress(file) as tick:
        counts = import_file(
            engine,
            settings,
            file,
            list_name,
            fmt=fmt,
            dry_run=dry_run,
            resubscribe=resubscribe,
            progress=tick,
        )
    _finish(counts, list_name, dry_run, as_json)


@contextmanager
def _progress(file: Path) -> Iterator[ProgressFn | None]:
    """A rich progress bar over the file's bytes, only on a terminal."""
    big = file.is_file() and file.stat().st_size >= PROGRESS_MIN_BYTES
    if not (big and sys.stdout.isatty()):
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    columns = (BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("import", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


def _finish(counts: ImportCounts, list_name: str, dry_run: bool, as_json: bool) -> None:
    _report_problems(counts.problems, counts.invalid + counts.warnings)
    files = [
        {"file": f.name, "format": f.format, "detected": f.detected,
         "encoding": f.encoding, "delimiter": f.delimiter}
        for f in counts.files
    ]  # fmt: skip
    if as_json:
        formats = sorted({f.format for f in counts.files})
        emit_json(
            {
                "list": list_name,
                "dry_run": dry_run,
                "format": formats[0] if len(formats) == 1 else formats,
                "files": files,
                **counts.as_dict(),
                # The first MAX_PROBLEMS (each with file, line, reason); the rest only counted.
                "problems": [problem_json(p) for p in counts.problems],
                "problems_not_listed": counts.invalid + counts.warnings - len(counts.problems),
            }
        )
    else:
        for f in counts.files:  # so a wrong guess is seen before it matters
            how = "detected from its header" if f.detected else "as given by --format"
            click.echo(f"{f.name}: read as {f.format} ({how}; {f.encoding}, {f.delimiter!r})")
        _summary_table(counts, list_name, dry_run)
    if counts.invalid:
        sys.exit(1)


def _report_problems(problems: list[Problem], total: int) -> None:
    for problem in problems[:SHOW_PROBLEMS]:
        click.echo(str(problem), err=True)
    if total > SHOW_PROBLEMS:
        click.echo(f"... and {total - SHOW_PROBLEMS} more problems", err=True)


def _summary_table(counts: ImportCounts, list_name: str, dry_run: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{'Dry run (nothing written)' if dry_run else 'Imported'}: list {list_name}"
    table = Table(title=title)
    table.add_column("result")
    table.add_column("count", justify="right")
    for key, value in counts.as_dict().items():
        table.add_row(key.replace("_", " "), str(value))
    Console(soft_wrap=True).print(table)
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{list_name}: {verb} {counts.rows} rows: {counts.new} new, {counts.updated} updated, "
        f"{counts.unchanged} unchanged, {counts.kept_suppressed} kept suppressed, "
        f"{counts.invalid} invalid, {counts.duplicates} duplicates merged"
        + (f", {counts.removed} removed" if counts.removed else "")
    )


# --------------------------------------------------------------------------- export / list


@subscribers_group.command("export")
@list_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File (default: stdout).",
)
@status_option
@click.pass_context
@handle_errors
def export_command(
    ctx: click.Context, list_name: str, output: Path | None, statuses: tuple[str, ...]
) -> None:
    """Write a list as CSV: email,name,status,subscribed_at, then attributes.

    Cells a spreadsheet would run as a formula get a leading ' (import removes it).
    """
    from newsletter.audience.members import ensure_lists
    from newsletter.audience.subscribers import export_list
    from newsletter.errors import SubscriberError
    from newsletter.store import open_store

    settings = settings_of(ctx)
    settings.get_list(list_name)
    engine = open_store(settings)
    ensure_lists(engine, settings)
    wanted = frozenset(statuses) or None
    if output is None:
        with _writing_stdout():
            export_list(engine, list_name, sys.stdout, wanted)
        return
    try:
        with output.open("w", encoding="utf-8", newline="") as fh:
            count = export_list(engine, list_name, fh, wanted)
    except OSError as exc:
        raise SubscriberError(f"cannot write: {exc.strerror}", path=output) from exc
    click.echo(f"exported {count} members of {list_name} to {output}", err=True)


@subscribers_group.command("list")
@list_option
@status_option
@json_option
@click.pass_context
@handle_errors
def list_command(
    ctx: click.Context, list_name: str, statuses: tuple[str, ...], as_json: bool
) -> None:
    """Show a list's members (email, status, name), one per line."""
    from newsletter.audience.members import ensure_lists
    from newsletter.audience.subscribers import members
    from newsletter.store import open_store

    settings = settings_of(ctx)
    settings.get_list(list_name)
    engine = open_store(settings)
    ensure_lists(engine, settings)
    rows = members(engine, list_name, frozenset(statuses) or None)
    with _writing_stdout():
        if not as_json:
            for m in rows:
                click.echo(f"{m.email}\t{m.status}\t{_shown(m.name)}".rstrip("\t"))
            return
        # Streamed by hand: a long list must not be built in memory first.
        click.echo("[", nl=False)
        for i, m in enumerate(rows):
            item = {
                "email": m.email,
                "name": m.name,
                "status": m.status,
                "subscribed_at": m.subscribed_at.isoformat(),
                "attributes": m.attributes,
            }
            click.echo(("," if i else "") + "\n  " + json.dumps(item, ensure_ascii=False), nl=False)
        click.echo("\n]")


@contextmanager
def _writing_stdout() -> Iterator[None]:
    """`export > backup.csv` on a full disk: one line, not an OSError traceback
    (a closed pipe, `| head`, stays quiet as before)."""
    from newsletter.errors import SubscriberError

    try:
        yield
        sys.stdout.flush()  # what is still buffered fails here, not at exit
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise SubscriberError(f"cannot write to standard output: {exc.strerror}") from exc


def _shown(text: str) -> str:
    """A name (anyone's text: the signup form takes any) on one line of a
    listing, its controls and tabs escaped, so it cannot forge a line or a
    column that scripts reading the listing would take for a member."""
    from newsletter.errors import one_line

    return one_line(text).replace("\t", "\\x09")


# --------------------------------------------------------------------------- single addresses


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
    from newsletter.audience.members import get_by_email
    from newsletter.errors import SubscriberError

    row = get_by_email(engine, email)
    if row is None:
        raise SubscriberError(f"no subscriber with address {email.strip()!r}", recipient=email)
    return row


@subscribers_group.command("add")
@click.argument("email")
@list_option
@click.option("--name", default="", help="The subscriber's name.")
@click.pass_context
@handle_errors
def add_command(ctx: click.Context, email: str, list_name: str, name: str) -> None:
    """Add EMAIL to a list (an unsubscribed address stays unsubscribed)."""
    from newsletter.audience.members import add_subscriber

    _, engine = _engine_for(ctx, list_name)
    row = add_subscriber(engine, email, list_name, name=name, source="cli")
    click.echo(f"added {row.email} to {list_name}{_suppressed_note(engine, row, list_name)}")


def _suppressed_note(engine: Engine, row: SubscriberRow, list_name: str) -> str:
    """Why an added address still gets no mail, and the one way to lift that."""
    from newsletter.audience.members import membership_lists

    if row.status != "active":
        return (
            f", but it stays {row.status} ({_shown(row.status_reason or 'no reason recorded')}) "
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


@subscribers_group.command("remove")
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


@subscribers_group.command("unsubscribe")
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
        reason = _shown(row.status_reason or "no reason recorded")
        click.echo(
            f"{row.email} is already {row.status} ({reason}), which stops all its mail; "
            "nothing changed"
        )
    else:
        click.echo(f"{row.email} was already unsubscribed from {scope}")


@subscribers_group.command("resubscribe")
@click.argument("email")
@click.option("--list", "list_name", default=None, help="Only this list (default: every list).")
@click.pass_context
@handle_errors
def resubscribe_command(ctx: click.Context, email: str, list_name: str | None) -> None:
    """Undo an unsubscribe, bounce or complaint for EMAIL (only with their consent).

    Without --list, lists EMAIL was unsubscribed from without ever joining
    them stay so.
    """
    from newsletter.audience.members import never_joined, resubscribe

    _, engine = _engine_for(ctx, list_name)
    row = _require(engine, email)
    scope = list_name or "every list"
    if resubscribe(engine, row.id, list_name, source="cli"):
        done = f"resubscribed {row.email} to {scope}"
    else:
        done = f"{row.email} was not unsubscribed from {scope}; nothing changed"
    kept = never_joined(engine, row.id) if list_name is None else []
    for name in kept:  # a per-list unsubscribe of a non-member: only --list lifts it
        done += (
            f"; it stays unsubscribed from {name}, which it never joined "
            f"(`newsletter subscribers resubscribe {row.email} --list {name}` adds it)"
        )
    click.echo(done)


@subscribers_group.command("show")
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
    reason = f" ({_shown(row.status_reason)})" if row.status_reason else ""
    name = f" · {_shown(row.name)}" if row.name else ""
    click.echo(f"{row.email}{name}: {row.status}{reason}")
    for name, at in joined.items():
        click.echo(
            f"  {name}: {'unsubscribed ' + at.isoformat(timespec='seconds') if at else 'subscribed'}"
        )
    click.echo("history:" if events else "history: nothing recorded")
    for e in events:
        scope = e.list_name or "every list"
        detail = f" — {_shown(e.detail)}" if e.detail else ""
        click.echo(
            f"  {e.at.isoformat(timespec='seconds')}  {e.action:<12} {scope:<16} via {e.source}{detail}"
        )


# --------------------------------------------------------------------------- sync / lists


@subscribers_group.command("sync")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of <list>.csv files (default: subscribers/ beside the configuration).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@json_option
@click.pass_context
@handle_errors
def sync_command(ctx: click.Context, directory: Path | None, dry_run: bool, as_json: bool) -> None:
    """Make every list mirror subscribers/<list>.csv (unsubscribes still win).

    Members whose address is no longer in their list's file are taken off
    that list; try --dry-run first.
    """
    from newsletter.audience.subscribers import sync_directory
    from newsletter.store import open_store

    settings = settings_of(ctx)
    folder = directory if directory is not None else settings.base_dir / "subscribers"
    engine = open_store(settings)
    results, problems = sync_directory(engine, settings, folder, dry_run=dry_run)
    all_problems = problems + [p for r in results for p in r.counts.problems]
    _report_problems(all_problems, len(all_problems))
    if as_json:
        emit_json(
            [{"list": r.list_name, "file": str(r.path), **r.counts.as_dict()} for r in results]
        )
    else:
        for r in results:
            _summary_table(r.counts, r.list_name, dry_run)
        if not results:
            click.echo(f"no list files in {folder}")
    if problems or any(r.counts.invalid for r in results):
        sys.exit(1)


@click.command("lists")
@json_option
@click.pass_context
@handle_errors
def lists_command(ctx: click.Context, as_json: bool) -> None:
    """Show each list with its title, members counted by status, and the
    bounce and complaint reports read back for its mailings."""
    from rich.console import Console
    from rich.table import Table

    from newsletter.audience.members import STATUSES, ensure_lists, list_counts
    from newsletter.delivery.bouncebox import bounce_counts_by_list
    from newsletter.store import open_store

    settings = settings_of(ctx)
    engine = open_store(settings)
    ensure_lists(engine, settings)
    found = [c for c in list_counts(engine) if c.name in settings.lists]
    # Reports read back by `newsletter bounces`, over the list's mailings.
    reports = bounce_counts_by_list(engine)
    kinds = {"hard": "hard bounces", "soft": "soft bounces", "complaint": "complaints"}
    if as_json:
        emit_json(
            [
                {
                    "name": c.name,
                    "title": c.title,
                    "counts": {s: c.counts.get(s, 0) for s in STATUSES},
                    "reports": {k: reports.get(c.name, {}).get(k, 0) for k in kinds},
                }
                for c in found
            ]
        )
        return
    table = Table(title="Lists")
    for column in ("list", "title", *STATUSES):
        table.add_column(column, justify="right" if column in STATUSES else "left")
    for c in found:
        table.add_row(c.name, c.title, *(str(c.counts.get(s, 0)) for s in STATUSES))
    Console(soft_wrap=True).print(table)
    for c in found:
        got = reports.get(c.name)
        if got:
            counts = ", ".join(f"{got.get(k, 0)} {label}" for k, label in kinds.items())
            click.echo(f"{c.name}: reports read back: {counts}")


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(subscribers_group)
    group.add_command(lists_command)
