"""Commands: `subscribers import|export|list|sync`, `lists`; the group adds
`subscribers add|remove|unsubscribe|resubscribe|show` from `cli.members`.

Exit status: 0 when everything was done; 1 when the user must fix something
(an unknown list or address, an unreadable file, and for import/sync any row
that was skipped as invalid, although every valid row was still imported);
2 for usage errors; 3 (`shutdown.STOPPED`) for an import or sync that Ctrl-C
stopped before it was saved (nothing was written: run it again).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter import shutdown
from newsletter.cli.common import (
    LazyChoice,
    emit_json,
    handle_errors,
    json_option,
    json_text,
    list_option,
    problem_json,
    settings_of,
    shown,
    stdout_is_tty,
)
from newsletter.cli.members import MEMBER_COMMANDS

# The library (SQLAlchemy, rich) is imported inside each command, so `--help` stays cheap.
if TYPE_CHECKING:
    from rich.table import Table

    from newsletter.audience.importer import ImportCounts
    from newsletter.audience.memberreads import ListCounts
    from newsletter.audience.subscribers import Progress as ProgressFn
    from newsletter.config import Settings
    from newsletter.errors import Problem

PROGRESS_MIN_BYTES = 1 << 20  # a bar for files over 1 MB, when stdout is a terminal
SHOW_PROBLEMS = 100

status_option = click.option(
    "--status",
    "statuses",
    multiple=True,
    type=LazyChoice("newsletter.audience.members", "STATUSES"),
    help="Only members with this status (repeatable).",
)


# The one-address commands (add, remove, ...) live in cli.members.
@click.group("subscribers", commands=MEMBER_COMMANDS)
@click.pass_context
def subscribers_group(ctx: click.Context) -> None:
    """Manage subscriber lists: import, export, list, sync, add, remove, unsubscribe,
    resubscribe, show.

    Subscriber files hold personal data: never commit real ones to a public
    repository (.gitignore keeps subscribers/*.csv out, except the sample).
    """
    # A Ctrl-C noted since start-up stops import and sync as one during their
    # work does (`_ctrl_c_stops`); every other command gets click's default.
    if ctx.invoked_subcommand not in ONE_TRANSACTION:
        shutdown.release_ctrl_c()


# Whose work is one transaction: Ctrl-C before it commits leaves the store as it was.
ONE_TRANSACTION = ("import", "sync")


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
    imported in one transaction. Exit status 1 if any row was skipped; 3 if
    Ctrl-C stopped it before it was saved (the store is then as it was).
    """
    with _ctrl_c_stops("import", "import the file"):
        from newsletter.audience.subscribers import import_file
        from newsletter.store import open_store

        settings = settings_of(ctx)
        engine = open_store(settings, dry_run=dry_run)
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
def _ctrl_c_stops(what: str, again: str) -> Iterator[None]:
    """Ctrl-C before the work's one transaction commits: the store as it was,
    one line that says so, exit status `STOPPED`.  Once it commits, the
    command ends as if none had come: its summary, its status
    (`shutdown.until_saved`).  Never click's "Aborted!", never a traceback."""
    from newsletter.errors import NewsletterError

    with shutdown.until_saved() as interrupted:
        try:
            if interrupted():  # a Ctrl-C while the command was starting
                raise KeyboardInterrupt
            yield
            return
        except KeyboardInterrupt:
            pass
        except NewsletterError:
            if not interrupted():
                raise
            # The Ctrl-C became the driver's own error ("import failed,
            # nothing was written: user-defined function raised exception").
    shutdown.handled_interrupt()
    click.echo(
        f"stopped: Ctrl-C before the {what} was saved; the store is as it was "
        f"(run the same command again to {again})",
        err=True,
    )
    sys.exit(shutdown.STOPPED)


@contextmanager
def _progress(file: Path) -> Iterator[ProgressFn | None]:
    """A rich progress bar over the file's bytes, only on a terminal."""
    try:
        big = file.is_file() and file.stat().st_size >= PROGRESS_MIN_BYTES
    except OSError:  # a name too long, say: the import says so in its own words
        big = False
    if not (big and stdout_is_tty()):
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
    from rich.table import Table

    title = f"{'Dry run (nothing written)' if dry_run else 'Imported'}: list {list_name}"
    table = Table(title=title)
    table.add_column("result")
    table.add_column("count", justify="right")
    for key, value in counts.as_dict().items():
        table.add_row(key.replace("_", " "), str(value))
    _print_table(table)
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

    Cells a spreadsheet would run as a formula get a ' before it, also after a
    ; TAB or line break inside the cell (import removes each). With -o, FILE is
    replaced only once the export is complete (a new file is private: 0600).
    """
    from newsletter.audience.members import ensure_lists
    from newsletter.audience.subscribers import export_file, export_list
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
        count = export_file(engine, list_name, output, wanted)
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
                click.echo(f"{m.email}\t{m.status}\t{shown(m.name)}".rstrip("\t"))
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
            click.echo(("," if i else "") + "\n  " + json_text(item), nl=False)
        click.echo("\n]")


def _print_table(table: Table) -> None:
    """A rich table on a terminal's width; piped, as wide as it needs (rich's
    80 columns cut headers and wrapped titles over lines a script then split)."""
    from rich.console import Console

    Console(soft_wrap=True, width=None if stdout_is_tty() else PIPED_WIDTH).print(table)


PIPED_WIDTH = 1000  # a table takes only the columns it needs


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
    that list; try --dry-run first.  All lists in one transaction: Ctrl-C
    before it is saved leaves the store as it was (exit status 3).
    """
    with _ctrl_c_stops("sync", "sync the lists"):
        _sync(settings_of(ctx), directory, dry_run, as_json)


def _sync(settings: Settings, directory: Path | None, dry_run: bool, as_json: bool) -> None:
    from newsletter.audience.members import list_counts
    from newsletter.audience.subscribers import sync_directory
    from newsletter.store import open_store

    folder = directory if directory is not None else settings.base_dir / "subscribers"
    engine = open_store(settings, dry_run=dry_run)
    results, problems = sync_directory(engine, settings, folder, dry_run=dry_run)
    _warn_unconfigured(list_counts(engine), settings)
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
    from rich.table import Table
    from rich.text import Text

    from newsletter.audience.members import STATUSES, ensure_lists, list_counts
    from newsletter.delivery.bouncebox import bounce_counts_by_list
    from newsletter.store import open_store

    settings = settings_of(ctx)
    engine = open_store(settings)
    ensure_lists(engine, settings)
    counted = list_counts(engine)
    found = [c for c in counted if c.name in settings.lists]
    _warn_unconfigured(counted, settings)
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
        # Text, not markup: a title "Notes [weekly]" lost its word, "[/]" raised.
        table.add_row(Text(c.name), Text(c.title), *(str(c.counts.get(s, 0)) for s in STATUSES))
    _print_table(table)
    for c in found:
        got = reports.get(c.name)
        if got:
            counts = ", ".join(f"{got.get(k, 0)} {label}" for k, label in kinds.items())
            click.echo(f"{c.name}: reports read back: {counts}")


def _warn_unconfigured(counted: list[ListCounts], settings: Settings) -> None:
    """A list the store holds members of that the configuration no longer
    names (renamed, removed): its members and their unsubscribes stay with
    it, and a list under a new name starts empty, so say so."""
    for c in counted:
        members = sum(c.counts.values())
        if c.name not in settings.lists and members:
            click.echo(
                f"warning: list {c.name!r} ({members} member{'' if members == 1 else 's'} in "
                "the store) is not in newsletter.toml: renamed or removed? Its members and "
                "their unsubscribes stay with it; a list under another name starts without "
                f"them (name it [lists.{c.name}] again to keep them)",
                err=True,
            )


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(subscribers_group)
    group.add_command(lists_command)
