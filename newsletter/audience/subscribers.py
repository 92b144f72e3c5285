"""Subscriber lists from CSV: import, export, sync, and listing members.

The library the `newsletter subscribers …` commands are a thin layer over:

* `import_file`  – any supported export into one list, in one transaction;
  `dry_run=True` runs the very same work and rolls it back;
* `sync_directory` – every `subscribers/<name>.csv` defines list `<name>`;
* `export_list` – `email,name,status,subscribed_at,<attributes…>` with cells
  guarded against spreadsheet formula injection (OWASP "CSV injection");
  `export_file` writes it to a file that is replaced only once complete;
* `members` – a list's members with their effective status, streamed.

Reading files is `newsletter.audience.csvformats`, address rules `newsletter.audience.addresses`,
the batched writes `newsletter.audience.importer`, queries `newsletter.audience.members`.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter import shutdown
from newsletter.audience import stagereader, staging
from newsletter.audience.csvformats import read_source, source_size
from newsletter.audience.importer import ImportCounts, ImportRun, import_rows, remove_untouched
from newsletter.audience.members import (
    ACTIVE,
    PENDING,
    STATUSES,
    UNSUBSCRIBED,
    ensure_lists,
    list_id,
)
from newsletter.audience.serviceformats import (
    FORMULA_PREFIX,
    FORMULA_STARTS,
    INNER_FORMULA,
    KEY_QUOTE,
    NEWSLETTER_HEADER,
    SourceRow,
)
from newsletter.audience.stagereader import ValidatedRows
from newsletter.audience.storable import storable_name
from newsletter.config import Settings
from newsletter.errors import Problem, StoreError, SubscriberError, database_reason
from newsletter.files import replaced_when_done
from newsletter.store import READ_ONLY, now
from newsletter.store import reading as read_only
from newsletter.store.schema import lists, memberships, subscribers

log = logging.getLogger(__name__)

# Where an import stages first and merges quickly (newsletter.audience.staging): SQLite
# has one writer at a time, so a long import transaction would stop every
# other writer (the daemon's heartbeat, unsubscribes) for its whole run.
# PostgreSQL stages too: its rows go in with COPY, and the merge is set-based.
STAGED_DIALECTS: tuple[str, ...] = ("sqlite", "postgresql")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

# A test hook (tests/test_daemon_import.py): set to a folder, a staged import
# that has staged and planned (holding no lock) creates `staged` in it and
# waits, at most TEST_GATE_SECONDS, for `go` to appear there before it
# merges.  The test then runs `run --once` mid-import by construction, not
# by racing an import that gets faster.  Where the folder also holds
# `wait-merged`, the import creates `merged` once its merge committed and
# waits for `go-merged` (tests/test_import_ctrl_c.py: a Ctrl-C just after the
# commit).  Unset (always, outside tests): no effect.
TEST_GATE_ENV = "NEWSLETTER_TEST_IMPORT_GATE"
TEST_GATE_SECONDS = 120.0


@dataclass(frozen=True)
class MemberInfo:
    """One member of a list as `subscribers list` and `export` show it."""

    email: str
    name: str
    status: str  # effective on this list: a per-list unsubscribe reads "unsubscribed"
    subscribed_at: datetime
    attributes: dict[str, Any]


# --------------------------------------------------------------------------- import


def import_file(
    engine: Engine,
    settings: Settings,
    path: Path,
    list_name: str,
    *,
    fmt: str = "auto",
    dry_run: bool = False,
    resubscribe: bool = False,
    progress: Progress | None = None,
) -> ImportCounts:
    """Import one file (CSV or Mailchimp ZIP) into a list, all or nothing.

    Invalid rows are skipped and reported in `counts.problems`; everything
    else is written in one transaction, so an interrupted import (crash,
    Ctrl-C, kill) leaves the store exactly as it was.  The rows are staged
    and planned first (SQLite: without the write lock; PostgreSQL: with
    COPY), and that transaction is only the short merge
    (`newsletter.audience.staging`); if the store changed under the plan, the
    import runs again the classic way.
    """
    settings.get_list(list_name)  # a clear "unknown list" before touching anything
    _nameable(path)
    total = source_size(path) if path.exists() else 0
    tick = (lambda done: progress(done, total)) if progress else None
    if engine.dialect.name in STAGED_DIALECTS:
        try:
            return _staged_import(
                engine, settings, path, list_name, fmt, dry_run, resubscribe, tick
            )
        except staging.StaleSnapshot as exc:
            log.info("%s; importing %s again in one transaction", exc, path)
    with _all_or_nothing(engine, settings, dry_run, "import", path) as conn:
        run = ImportRun(conn, list_id(conn, list_name), resubscribe=resubscribe)
        import_rows(run, read_source(path, fmt, progress=tick, infos=run.counts.files))
    return run.counts


def _staged_import(
    engine: Engine,
    settings: Settings,
    path: Path,
    list_name: str,
    fmt: str,
    dry_run: bool,
    resubscribe: bool,
    tick: Callable[[int], None] | None,
) -> ImportCounts:
    """Stage and plan without the write lock, then merge in one short transaction
    (see `newsletter.audience.staging`); a dry run stops after planning."""
    try:
        with engine.connect() as conn:
            if not dry_run:
                with conn.begin():
                    ensure_lists(conn, settings)
            conn.execution_options(**{READ_ONLY: True})  # plain BEGIN: no write lock
            try:
                with conn.begin():
                    lid = conn.scalar(select(lists.c.id).where(lists.c.name == list_name))
                    run = ImportRun(conn, int(lid or 0), resubscribe=resubscribe)
                    staging.stage_and_plan(run, _source(conn, run, path, fmt, tick))
                if not dry_run:
                    _test_gate("staged")
                    conn.execution_options(**{READ_ONLY: False})  # BEGIN IMMEDIATE
                    held = staging.merge(run, now())
                    run.counts.write_lock_seconds, run.counts.write_lock_cpu_seconds = held
                    _test_gate("merged")
            finally:
                # Closing the driver's connection takes the TEMP tables with it
                # (for a million rows, quicker than dropping them): the pool
                # opens a fresh one next time.
                conn.invalidate()
    except SQLAlchemyError as exc:
        raise StoreError(
            f"import failed, nothing was written: {database_reason(exc)}", path=path
        ) from exc
    return run.counts


def _source(
    conn: Connection, run: ImportRun, path: Path, fmt: str, tick: Callable[[int], None] | None
) -> Iterable[SourceRow | Problem] | ValidatedRows:
    """A big file's rows are read and validated by a second process when a
    core is free (`newsletter.audience.stagereader`), else here."""
    if stagereader.worth_a_process(path):
        driver = conn.engine.url.drivername
        return ValidatedRows(path, fmt, driver, run.counts, tick)
    return read_source(path, fmt, progress=tick, infos=run.counts.files)


def _test_gate(point: str) -> None:
    """Wait at `point` (`staged`, `merged`) while a test says so (`TEST_GATE_ENV`)."""
    folder = os.environ.get(TEST_GATE_ENV)
    if not folder:
        return
    gate = Path(folder)
    if point != "staged" and not (gate / f"wait-{point}").exists():
        return
    (gate / point).touch()
    go = gate / ("go" if point == "staged" else f"go-{point}")
    deadline = time.monotonic() + TEST_GATE_SECONDS
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def _all_or_nothing(
    engine: Engine, settings: Settings, dry_run: bool, what: str, path: Path
) -> Iterator[Connection]:
    """One transaction for a whole import or sync: committed, or (dry run) rolled back."""
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            ensure_lists(conn, settings)  # inside: a dry run writes nothing at all
            yield conn
            if dry_run:
                transaction.rollback()
            else:
                shutdown.saving()  # a Ctrl-C from now on cannot stop it (`shutdown.until_saved`)
                transaction.commit()
    except SQLAlchemyError as exc:
        raise StoreError(
            f"{what} failed, nothing was written: {database_reason(exc)}", path=path
        ) from exc


@dataclass(frozen=True)
class SyncResult:
    list_name: str
    path: Path
    counts: ImportCounts


def _nameable(path: Path) -> None:
    """Refuse a path the system cannot even look up (a name over 255 bytes:
    `exists` and `is_file` raise that one OSError instead of answering)."""
    try:
        path.stat()
    except FileNotFoundError:
        return  # said later, in the reader's words
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise SubscriberError(f"cannot read the file: {exc.strerror}", path=path) from exc


def sync_directory(
    engine: Engine, settings: Settings, directory: Path, *, dry_run: bool = False
) -> tuple[list[SyncResult], list[Problem]]:
    """Make each list's membership mirror `directory/<list>.csv`, all in one transaction.

    Suppressions still win: a row for an unsubscribed address does not make it
    mailable, and a per-list unsubscribe stays recorded when its row goes.
    Files naming no declared list are reported and skipped.
    """
    try:
        is_dir = directory.is_dir()
    except OSError as exc:  # a name too long: is_dir lets that one through
        raise SubscriberError(f"cannot read the folder: {exc.strerror}", path=directory) from exc
    if not is_dir:
        raise SubscriberError("no such directory", path=directory)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    problems: list[Problem] = []
    known = ", ".join(sorted(settings.lists)) or "none declared"
    results: list[SyncResult] = []
    with _all_or_nothing(engine, settings, dry_run, "sync", directory) as conn:
        for path in files:
            if path.stem not in settings.lists:
                problems.append(
                    Problem(
                        f"no list {path.stem!r} in the configuration (declared: {known}); "
                        f"add [lists.{path.stem}] or rename the file",
                        path,
                    )
                )
                continue
            run = ImportRun(conn, list_id(conn, path.stem), source="sync")
            # A file that cannot be read (cut short, empty, no email column)
            # is one problem: its list stays as it was, the others still sync
            # (invariant 5).  The savepoint takes back what it wrote before the break.
            savepoint = conn.begin_nested()
            try:
                import_rows(run, read_source(path, "auto", infos=run.counts.files))
                if run.counts.invalid:  # a member's row may be among them: nobody leaves
                    problems.append(_kept_everyone(path, run.counts.invalid))
                else:
                    remove_untouched(run)
            except SubscriberError as exc:
                savepoint.rollback()
                problems.append(Problem.from_error(exc))
                continue
            savepoint.commit()
            results.append(SyncResult(path.stem, path, run.counts))
    return results, problems


def _kept_everyone(path: Path, invalid: int) -> Problem:
    rows = "1 row" if invalid == 1 else f"{invalid} rows"
    return Problem(
        f"nobody was taken off list {path.stem!r}: {rows} of the file could not be read "
        "(each is reported with its line), and a member's address may be in it; fix the "
        "file and sync again",
        path,
    )


# --------------------------------------------------------------------------- members


def members(
    engine: Engine, list_name: str, statuses: frozenset[str] | None = None
) -> Iterator[MemberInfo]:
    """Every member of a list (any status unless `statuses`), in address order, streamed."""
    for status in statuses or ():
        if status not in STATUSES:
            raise SubscriberError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    query = (
        select(
            subscribers.c.email,
            subscribers.c.name,
            subscribers.c.status,
            subscribers.c.attributes,
            memberships.c.created_at,
            memberships.c.unsubscribed_at,
        )
        .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
        .join(lists, lists.c.id == memberships.c.list_id)
        .where(lists.c.name == list_name)
        .order_by(subscribers.c.email_key)
        .execution_options(yield_per=1000)
    )
    try:
        with read_only(engine) as conn:
            list_id(conn, list_name)
            for row in conn.execute(query):
                status = row.status
                if row.unsubscribed_at is not None and status in (ACTIVE, PENDING):
                    status = UNSUBSCRIBED
                if statuses and status not in statuses:
                    continue
                yield MemberInfo(
                    row.email, row.name, status, row.created_at, dict(row.attributes or {})
                )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read list {list_name!r}: {database_reason(exc)}") from exc


# --------------------------------------------------------------------------- export


def export_file(
    engine: Engine, list_name: str, path: Path, statuses: frozenset[str] | None = None
) -> int:
    """`export_list` into `path`, which is replaced only once the export is
    complete: an export that fails half-way leaves yesterday's backup as it
    was, not its first rows (`files.replaced_when_done`; a new file is 0600)."""
    with replaced_when_done(path) as out:
        return export_list(engine, list_name, out, statuses)


def export_list(
    engine: Engine,
    list_name: str,
    out: IO[str],
    statuses: frozenset[str] | None = None,
) -> int:
    """Write a list as CSV; returns the number of members written.

    Columns: email, name, status, subscribed_at, then one per attribute key
    (sorted).  Two passes over the members (keys first, then rows) keep memory
    flat however long the list is.
    """
    keys: set[str] = set()
    for member in members(engine, list_name, statuses):
        keys.update(member.attributes)
    # Every key, even one named like a fixed column: import reads each column
    # after the fourth as an attribute.
    attribute_keys = sorted(keys)
    writable = _Writable(out)
    writer = csv.writer(writable, lineterminator="\r\n")  # RFC 4180 §2: CRLF
    header = [*NEWSLETTER_HEADER, *(escape_cell(encode_key(k)) for k in attribute_keys)]
    _write_row(writer, writable, header)
    count = 0
    for member in members(engine, list_name, statuses):
        values = member.attributes
        cells = [
            member.email,
            member.name,
            member.status,
            member.subscribed_at.isoformat(),
            # An empty cell: no such key (a null value is written `null`).
            *(encode_attribute(values[k]) if k in values else "" for k in attribute_keys),
        ]
        _write_row(writer, writable, [escape_cell(c) for c in cells])
        count += 1
    return count


class _Writable:
    """`out`, with each lone surrogate written as U+FFFD: a store may hold one
    in its attributes from before imports replaced them, and no encoding
    writes it (the export died on that member, with the rows before it)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(storable_name(text))


def escape_cell(value: str) -> str:
    """Prefix `'` to a cell a spreadsheet would run as a formula.

    A leading `'` is escaped too, so that import can always remove exactly
    one and get the original back.  So is a formula character right after a
    `;`, TAB or line break inside the cell (`serviceformats.INNER_FORMULA`):
    Excel in a `;` locale splits `Bob;=1+2` into two cells, the second a
    formula, whatever the first character of ours was.
    """
    if (";" in value or "\t" in value or "\n" in value or "\r" in value) and (
        INNER_FORMULA.search(value) is not None
    ):
        value = INNER_FORMULA.sub(FORMULA_PREFIX, value)
    return FORMULA_PREFIX + value if value.startswith(FORMULA_STARTS) else value


# A `;` or TAB the guard wrote a ' after: such a cell is quoted as well, as
# OWASP's advice on CSV injection has it (a line break already is).
_GUARDED_SPLIT = re.compile("[;\t]'")


def _write_row(writer: Any, out: _Writable, cells: list[str]) -> None:
    """One row of escaped cells: through the csv writer, or, where a cell
    holds a guarded `;` or TAB (rare), with that cell quoted, which the csv
    module does only for commas, quotes and line breaks."""
    forced = [FORMULA_PREFIX in c and _GUARDED_SPLIT.search(c) is not None for c in cells]
    if not any(forced):
        writer.writerow(cells)
        return
    out.write(",".join(_quoted(c) if f or _CSV_SPECIAL.search(c) else c
                       for c, f in zip(cells, forced, strict=True)) + "\r\n")  # fmt: skip


# What makes the csv module quote a cell (QUOTE_MINIMAL, the default dialect).
_CSV_SPECIAL = re.compile('[,"\r\n]')


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def encode_key(key: str) -> str:
    """An attribute's name as its column's header cell: as it is, but
    JSON-quoted where import would read it otherwise (`KEY_QUOTE`): outer
    whitespace (import trims header names; `" a"` came back as `a`, over a
    real `a`) or a leading `"` (which import reads as such a quote)."""
    if key.startswith(KEY_QUOTE) or key != key.strip().strip("\ufeff").strip():
        return json.dumps(key, ensure_ascii=False)
    return key


def encode_attribute(value: Any) -> str:
    """An attribute as one cell: plain strings as they are, everything else as JSON.

    A string that would itself read as JSON (`"42"`, `"true"`, `""`), or that
    starts or ends with whitespace (which import trims from a bare cell), is
    written JSON-quoted, so import restores strings as strings and numbers as
    numbers.  None is `null` (an empty cell is a member without the key).
    """
    if isinstance(value, str):
        if value and value == value.strip() and not _is_json(value):
            return value
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
