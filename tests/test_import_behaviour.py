"""Import semantics: dedupe, suppression always wins, dry run, atomicity, round trip, sync."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from test_subscribers_common import (
    FIXTURES,
    make_engine,
    make_settings,
    run_import,
    seen,
    statuses,
)

import newsletter.audience.importer as importer
import newsletter.audience.serviceformats as serviceformats
import newsletter.audience.stagereader as stagereader
import newsletter.audience.staging as staging
from newsletter.audience import consent
from newsletter.audience.members import (
    add_subscriber,
    ensure_lists,
    get_by_email,
    mark_bounced,
    mark_complained,
    unsubscribe,
)
from newsletter.audience.subscribers import (
    encode_attribute,
    escape_cell,
    export_list,
    sync_directory,
)
from newsletter.config import Settings
from newsletter.errors import ConfigError, SubscriberError
from newsletter.store import open_url
from newsletter.store.schema import lists, memberships, subscribers


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings("news", "weekly", base_dir=tmp_path)


@pytest.fixture
def engine(database_url: str, settings: Settings) -> Engine:
    """The import rules hold on both databases (SQLite and PostgreSQL)."""
    engine = open_url(database_url)
    ensure_lists(engine, settings)
    return engine


def sqlite_only(engine: Engine, why: str) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip(why)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def count_rows(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.scalar(select(func.count()).select_from(subscribers)) or 0,
            conn.scalar(select(func.count()).select_from(memberships)) or 0,
        )


# --------------------------------------------------------------------------- dedupe / conflicts


def test_duplicates_case_insensitive_and_unsubscribe_wins(
    engine: Engine, settings: Settings
) -> None:
    counts = run_import(engine, settings, FIXTURES / "conflict.csv")
    assert (counts.rows, counts.new, counts.duplicates) == (3, 1, 2)
    flip = seen(engine, "flip@example.com")
    # First spelling and first name kept; the unsubscribe in the middle wins.
    assert (flip.email, flip.name, flip.status, flip.mailable) == (
        "flip@example.com",
        "Flip",
        "unsubscribed",
        False,
    )


def test_duplicates_across_chunks_merge_the_same_way(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    path = write(
        tmp_path / "c.csv",
        """
        email,name,status
        x@example.com,First,active
        a@example.com,,active
        b@example.com,,active
        X@EXAMPLE.COM,Second,unsubscribed
        x@example.com,Third,active
        """,
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.duplicates, counts.updated) == (3, 2, 0)
    x = seen(engine, "x@example.com")
    assert (x.name, x.status) == ("First", "unsubscribed")
    again = run_import(engine, settings, path)
    # The file's rows for x merge first (unsubscribed wins), so x is unchanged,
    # exactly as when every row is in one chunk.
    assert (again.unchanged, again.updated, again.duplicates, again.kept_suppressed) == (3, 0, 2, 0)


def test_reimport_counts_new_updated_unchanged(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    first = write(tmp_path / "1.csv", "email,name\na@example.com,A\nb@example.com,B\n")
    run_import(engine, settings, first)
    second = write(
        tmp_path / "2.csv", "email,name\na@example.com,A\nb@example.com,Bee\nc@example.com,C\n"
    )
    counts = run_import(engine, settings, second)
    assert (counts.new, counts.updated, counts.unchanged) == (1, 1, 1)
    assert seen(engine, "b@example.com").name == "Bee"
    # Joining a second list is "new" on that list, not a new subscriber.
    other = run_import(engine, settings, second, "weekly")
    assert other.new == 3 and count_rows(engine) == (3, 6)


# --------------------------------------------------------------------------- invariant 3


@pytest.mark.parametrize(
    "suppress",
    [
        lambda e, sid: unsubscribe(e, sid, None, reason="link"),
        lambda e, sid: unsubscribe(e, sid, "news", reason="link"),
        lambda e, sid: mark_bounced(e, sid, reason="550 5.1.1"),
        lambda e, sid: mark_complained(e, sid, reason="fbl"),
    ],
    ids=["unsubscribed", "list-unsubscribed", "bounced", "complained"],
)
def test_import_never_resubscribes(
    engine: Engine, settings: Settings, tmp_path: Path, suppress: object
) -> None:
    row = add_subscriber(engine, "kept@example.com", "news")
    suppress(engine, row.id)  # type: ignore[operator]
    path = write(tmp_path / "in.csv", "email,name,status\nKEPT@example.com,Kept,active\n")
    counts = run_import(engine, settings, path)
    assert counts.kept_suppressed == 1
    assert not seen(engine, "kept@example.com").mailable
    # Only the explicit flag brings them back.
    counts = run_import(engine, settings, path, resubscribe=True)
    assert counts.updated == 1 and counts.kept_suppressed == 0
    back = seen(engine, "kept@example.com")
    assert back.mailable and back.status == "active"


def test_resubscribe_flag_does_not_override_unsubscribe_rows(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    path = write(tmp_path / "in.csv", "email,status\nu@example.com,unsubscribed\n")
    run_import(engine, settings, path, resubscribe=True)
    assert seen(engine, "u@example.com").status == "unsubscribed"


def test_resubscribe_never_undoes_a_suppression_the_file_gave_in_an_earlier_chunk(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-transaction path (sync, an import whose plan went stale) works
    in chunks: a later row of an address the file already suppressed meets
    that suppression in the store.  `--resubscribe` lifts the store's old
    suppressions, never the file's own: the strongest status in the file wins,
    as within one chunk and on the staged path."""
    import newsletter.audience.subscribers as subscribers_module

    add_subscriber(engine, "old@example.com", "news")
    monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
    monkeypatch.setattr(importer, "CHUNK_ROWS", 2)
    path = write(
        tmp_path / "in.csv",
        """
        email,status
        new@example.com,complained
        old@example.com,unsubscribed
        NEW@example.com,active
        OLD@example.com,active
        """,
    )
    counts = run_import(engine, settings, path, resubscribe=True)
    assert counts.write_lock_seconds is None  # the classic path ran
    assert seen(engine, "new@example.com").status == "complained"
    assert seen(engine, "old@example.com").status == "unsubscribed"
    assert counts.duplicates == 2


def test_import_upgrades_suppression_but_never_downgrades(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    row = add_subscriber(engine, "s@example.com", "news")
    mark_bounced(engine, row.id, reason="550")
    path = write(tmp_path / "in.csv", "email,status\ns@example.com,unsubscribed\n")
    run_import(engine, settings, path)
    assert seen(engine, "s@example.com").status == "bounced"
    path = write(tmp_path / "in.csv", "email,status\ns@example.com,complained\n")
    run_import(engine, settings, path)
    after = get_by_email(engine, "s@example.com")
    assert after is not None and (after.status, after.status_reason) == (
        "complained",
        "import: complained",
    )


# --------------------------------------------------------------------------- dry run / atomicity


def test_dry_run_counts_and_writes_nothing(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    row = add_subscriber(engine, "old@example.com", "news")
    unsubscribe(engine, row.id, None, reason="x")
    before = count_rows(engine)
    counts = run_import(engine, settings, FIXTURES / "bad_rows.csv", dry_run=True)
    assert (counts.new, counts.invalid) == (5, 6)
    path = write(tmp_path / "in.csv", "email\nold@example.com\nnew@example.com\n")
    counts = run_import(engine, settings, path, dry_run=True)
    assert (counts.new, counts.kept_suppressed) == (1, 1)
    assert count_rows(engine) == before
    assert get_by_email(engine, "new@example.com") is None


def test_unknown_list_touches_nothing(engine: Engine, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="unknown list 'nope'"):
        run_import(engine, settings, FIXTURES / "utf8_tab.tsv", "nope")
    assert count_rows(engine) == (0, 0)


def test_error_mid_file_rolls_back_everything(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection, classic path (sync, and an import whose plan went stale):
    the third chunk's write fails; the first two must vanish."""
    monkeypatch.setattr(importer, "CHUNK_ROWS", 10)
    path = write(
        tmp_path / "big.csv", "email\n" + "".join(f"u{i}@example.com\n" for i in range(50))
    )
    real_write = importer._write
    calls = {"n": 0}

    def failing_write(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise SubscriberError("disk on fire")
        real_write(*args)  # type: ignore[arg-type]

    def stale(*_args: object) -> None:
        raise staging.StaleSnapshot("forced")

    monkeypatch.setattr(importer, "_write", failing_write)
    monkeypatch.setattr(staging, "stage_and_plan", stale)
    with pytest.raises(SubscriberError, match="disk on fire"):
        run_import(engine, settings, path)
    assert count_rows(engine) == (0, 0)


def test_error_mid_merge_rolls_back_everything(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection, staged path: the merge fails after the new subscribers
    were inserted; neither they nor their memberships may remain."""
    add_subscriber(engine, "before@example.com", "news", name="Before")
    path = write(
        tmp_path / "big.csv",
        "email,name\nbefore@example.com,Renamed\n"
        + "".join(f"u{i}@example.com,U\n" for i in range(50)),
    )

    def failing(*_args: object) -> int:
        raise SubscriberError("disk on fire")

    monkeypatch.setattr(staging, "_apply_changes", failing)
    with pytest.raises(SubscriberError, match="disk on fire"):
        run_import(engine, settings, path)
    assert count_rows(engine) == (1, 1)
    assert seen(engine, "before@example.com").name == "Before"


KILL_CHILD = """
import os, sys, time
from pathlib import Path
from newsletter.config import ListSettings, Settings
from newsletter.store import open_url
from newsletter.audience.subscribers import import_file
import newsletter.audience.stagereader as stagereader
import newsletter.audience.staging as staging

settings = Settings(lists={"news": ListSettings("news", "News")})
engine = open_url(sys.argv[1])
phase = sys.argv[3]
def stalled_changes(conn, stamp):
    # Inside the merge transaction, after the new subscribers went in.
    print("mid-import merge", flush=True)
    time.sleep(60)

if phase == "merge":
    staging._apply_changes = stalled_changes

def progress(done, total):
    # Progress comes as the file is read (and its rows staged): stop halfway.
    if phase == "stage" and done > total // 2:
        print("mid-import stage", flush=True)
        time.sleep(60)

import_file(engine, settings, Path(sys.argv[2]), "news", progress=progress)
print("finished", flush=True)
"""


@pytest.mark.parametrize("phase", ["stage", "merge"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_killed_import_leaves_store_as_it_was(
    engine: Engine, tmp_path: Path, sig: signal.Signals, phase: str
) -> None:
    add_subscriber(engine, "before@example.com", "news")
    path = tmp_path / "big.csv"
    path.write_text(
        "email,name\n" + "".join(f"user{i}@example.com,User {i}\n" for i in range(80_000)),
        encoding="utf-8",
    )
    url = str(engine.url)
    engine.dispose()
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, url, str(path), phase],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        said, where = child.stdout.readline().split()
        assert (said, where) == ("mid-import", phase)
        child.send_signal(sig)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0
    reopened = open_url(url)
    assert count_rows(reopened) == (1, 1)
    assert statuses(reopened) == {"before@example.com": "active"}


# --------------------------------------------------------------------------- export


def test_escape_cell_and_attribute_encoding() -> None:
    assert [escape_cell(v) for v in ("=SUM(A1)", "+1", "-1", "@x", "\tx", "\rx", "'q", "ok")] == [
        "'=SUM(A1)",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "'\rx",
        "''q",
        "ok",
    ]
    assert encode_attribute("plain") == "plain"
    assert encode_attribute("42") == '"42"'
    assert encode_attribute("") == '""'
    assert encode_attribute(42) == "42"
    assert encode_attribute(["a", "b"]) == '["a", "b"]'
    assert encode_attribute(None) == "null"  # an empty cell is "no such key"


# Where a spreadsheet may start a new cell inside one of ours: Excel in the
# de/fr/nl/it/es locales splits a double-clicked .csv on `;`; TAB; and such a
# reader ends the row at a line break even inside quotes.
_SPLITS = "[;\t\r\n]"


def _cells_as_a_semicolon_locale_sees_them(text: str) -> list[str]:
    return [cell for line in re.split("[\r\n]", text) for cell in re.split(_SPLITS, line)]


_INNER_FORMULAS = {
    "Bob;=1+2;": "bob@example.com",
    "Eve;=cmd|' /C calc'!A0;x": "eve@example.com",
    "t;+1;-2;@x": "signs@example.com",
    'q;"=1+2";\'kept': "quote@example.com",
}


def test_a_formula_after_a_semicolon_tab_or_line_break_is_neutralised_and_round_trips(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """The formula guard looked at a cell's first character only: `Bob;=1+2;`
    was written bare, and a spreadsheet that splits on `;` opened `=1+2` as a
    formula.  A formula character after `;`, TAB or a line break gets a `'`
    too, such a cell is quoted, and import takes exactly those `'` away."""
    for name, email in _INNER_FORMULAS.items():
        add_subscriber(engine, email, "news", name=name)
    note = 'first line\n=HYPERLINK("http://example.com")\r\n;x\t+1'
    source = io.StringIO()
    csv.writer(source).writerows([["email", "note", "a;=b"], ["note@example.com", note, "1"]])
    path = tmp_path / "notes.csv"
    path.write_text(source.getvalue(), encoding="utf-8", newline="")
    run_import(engine, settings, path)
    first = io.StringIO()
    export_list(engine, "news", first)
    text = first.getvalue()
    formulas = [c for c in _cells_as_a_semicolon_locale_sees_them(text)
                if c.lstrip('"').startswith(("=", "+", "-", "@"))]  # fmt: skip
    assert formulas == []
    assert 'bob@example.com,"Bob;\'=1+2;",active,' in text  # quoted as well
    assert text.splitlines()[0].endswith(',"a;\'=b",note')  # a column name is a cell too
    exported = tmp_path / "export.csv"
    exported.write_text(text, encoding="utf-8", newline="")
    counts = run_import(engine, settings, exported, "weekly")
    assert (counts.files[0].format, counts.invalid, counts.warnings) == ("newsletter", 0, 0)
    for name, email in _INNER_FORMULAS.items():
        assert seen(engine, email, "weekly").name == name
    assert seen(engine, "note@example.com", "weekly").attributes == {"note": note, "a;=b": "1"}
    second = io.StringIO()
    export_list(engine, "weekly", second)
    assert second.getvalue() == text


@hypothesis_settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=";\t\r\n'\"=+-@a ,", max_size=12) | st.text(max_size=8))
def test_import_undoes_exactly_what_the_formula_guard_added(value: str) -> None:
    escaped = escape_cell(value)
    assert serviceformats._unescape(escaped) == value
    first, *rest = re.split(_SPLITS, escaped)
    assert not first.startswith(("=", "+", "-", "@"))
    assert not any(cell.startswith(("=", "+", "-", "@", '"')) for cell in rest), escaped


def test_round_trip_export_import_export_is_identical(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    run_import(engine, settings, FIXTURES / "ghost_members.csv")
    run_import(engine, settings, FIXTURES / "listmonk_export.csv")
    run_import(engine, settings, FIXTURES / "buttondown.csv")
    tricky = write(
        tmp_path / "tricky.csv",
        """
        email,name,formula,number_text,quote,=cmd
        -dash@example.com,=HYPERLINK("http://example.com"),=1+2,007,"'quoted",x
        at@example.com,@home,+cmd,true,"a ""b"", c",
        """,
    )
    run_import(engine, settings, tricky)
    row = get_by_email(engine, "on@example.com")
    assert row is not None
    unsubscribe(engine, row.id, "news", reason="per-list")
    first = io.StringIO()
    written = export_list(engine, "news", first)
    assert written == 14
    text = first.getvalue()
    assert text.startswith("email,name,status,subscribed_at,")
    assert "'=HYPERLINK" in text and "'-dash@example.com" in text and "'@home" in text
    assert "'=cmd" in text.splitlines()[0]  # a column name is a cell too

    exported = tmp_path / "export.csv"
    exported.write_text(text, encoding="utf-8", newline="")
    other_settings = make_settings("copy")
    (tmp_path / "other").mkdir()
    other = make_engine(tmp_path / "other", other_settings)
    counts = run_import(other, other_settings, exported, "copy")
    assert counts.files[0].format == "newsletter" and counts.invalid == 0
    second = io.StringIO()
    export_list(other, "copy", second)
    assert second.getvalue() == text
    dash = seen(other, "-dash@example.com", "copy")
    assert dash.name == '=HYPERLINK("http://example.com")'
    assert dash.attributes == {
        "formula": "=1+2",
        "number_text": "007",
        "quote": "'quoted",
        "=cmd": "x",
    }
    assert seen(other, "member@example.com", "copy").attributes["labels"] == ["vip", "early"]
    assert seen(other, "on@example.com", "copy").status == "unsubscribed"


def test_round_trip_keeps_attributes_named_like_the_fixed_columns(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Attributes can carry any key (listmonk's JSON, a spreadsheet's
    `subscribed_at` column): export wrote none named like its own first four
    columns, and import read a later `Name` or `First Name` column as the
    name (or dropped it).  In our own export every column after the fourth is
    an attribute, whatever its name; a value's outer whitespace, which import
    trims from a bare cell, survives JSON-quoted."""
    attributes = {
        "Name": "Nick", "first_name": "F", "email": "other@example.org", "status": "vip",
        "subscribed_at": "2019", "K": 1, "k": 2, "": "blank", "name 2": "n2",
        "padded": " x ", "tab": "\tx", "space": " ",
    }  # fmt: skip
    source = io.StringIO()
    csv_writer = __import__("csv").writer(source)
    csv_writer.writerow(["email", "name", "attributes"])
    csv_writer.writerow(["a@example.com", "Ann", json.dumps(attributes)])
    csv_writer.writerow(["b@example.com", "", json.dumps({"First Name": "Bob"})])
    path = tmp_path / "listmonk.csv"
    path.write_text(source.getvalue(), encoding="utf-8")
    run_import(engine, settings, path)
    assert seen(engine, "a@example.com").attributes == attributes
    first = io.StringIO()
    export_list(engine, "news", first)
    exported = tmp_path / "export.csv"
    exported.write_text(first.getvalue(), encoding="utf-8", newline="")
    other_settings = make_settings("copy")
    (tmp_path / "other").mkdir()
    other = make_engine(tmp_path / "other", other_settings)
    counts = run_import(other, other_settings, exported, "copy")
    assert (counts.files[0].format, counts.invalid, counts.warnings) == ("newsletter", 0, 0)
    ann, bob = seen(other, "a@example.com", "copy"), seen(other, "b@example.com", "copy")
    assert (ann.name, ann.attributes) == ("Ann", attributes)
    assert (bob.name, bob.attributes) == ("", {"First Name": "Bob"})
    second = io.StringIO()
    export_list(other, "copy", second)
    assert second.getvalue() == first.getvalue()


def test_round_trip_keeps_keys_with_outer_spaces_and_null_values(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A key's outer whitespace was written bare, and import trims header
    names: `" a"` came back as `a` and overwrote the real `a`, a lone
    `" lead"` came back as `lead`.  A null value was written as an empty
    cell, which import skips: the key was gone.  Both survive now, and a
    key or a value that merely looks like their encoding stays as it is."""
    attributes = {"a": "A1", " a": "A2", "nul": None, '"q"': "quoted key", "n": "null"}
    path = tmp_path / "listmonk.csv"
    path.write_text(
        "email,name,attributes\n"
        + "k@example.com,K,"
        + '"'
        + json.dumps(attributes).replace('"', '""')
        + '"\n'
        + 'l@example.com,L,"{"" lead "": ""L""}"\n',
        encoding="utf-8",
    )
    run_import(engine, settings, path)
    assert seen(engine, "k@example.com").attributes == attributes
    first = io.StringIO()
    export_list(engine, "news", first)
    exported = tmp_path / "export.csv"
    exported.write_text(first.getvalue(), encoding="utf-8", newline="")
    other_settings = make_settings("copy")
    (tmp_path / "other").mkdir()
    other = make_engine(tmp_path / "other", other_settings)
    counts = run_import(other, other_settings, exported, "copy")
    assert (counts.files[0].format, counts.invalid, counts.warnings) == ("newsletter", 0, 0)
    assert seen(other, "k@example.com", "copy").attributes == attributes
    assert seen(other, "l@example.com", "copy").attributes == {" lead ": "L"}
    second = io.StringIO()
    export_list(other, "copy", second)
    assert second.getvalue() == first.getvalue()


def test_our_exports_repeated_header_names_do_not_overwrite_each_other(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A hand-edited export (two `a` columns) kept only the last cell; a
    header that starts with `"` but is no JSON string is taken as it is."""
    path = tmp_path / "e.csv"
    path.write_text(
        'email,name,status,subscribed_at,a,a,"""x"\n'
        "r@example.com,R,active,2024-01-01T00:00:00+00:00,1,2,3\n",
        encoding="utf-8",
    )
    run_import(engine, settings, path)
    assert seen(engine, "r@example.com").attributes == {"a": 1, "a 2": 2, '"x': 3}


def test_export_status_filter(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "kit.csv")
    out = io.StringIO()
    assert export_list(engine, "news", out, frozenset({"bounced", "complained"})) == 2
    assert out.getvalue().splitlines()[1].startswith("bounce@example.com,Bounce,bounced,")


# --------------------------------------------------------------------------- sync


def test_sync_mirrors_files_and_is_idempotent(engine: Engine, settings: Settings) -> None:
    folder = settings.base_dir / "subscribers"
    folder.mkdir()
    write(folder / "news.csv", "email,name\na@example.com,A\nb@example.com,B\nc@example.com,C\n")
    write(folder / "weekly.csv", "email\nb@example.com\n")
    results, problems = sync_directory(engine, settings, folder)
    assert problems == []
    assert {r.list_name: r.counts.new for r in results} == {"news": 3, "weekly": 1}
    results, _ = sync_directory(engine, settings, folder)
    assert [(r.counts.unchanged, r.counts.new, r.counts.removed) for r in results] == [
        (3, 0, 0),
        (1, 0, 0),
    ]
    # A row removed from the file leaves the list (the subscriber row stays).
    b = get_by_email(engine, "b@example.com")
    assert b is not None
    unsubscribe(engine, b.id, "news", reason="link")
    write(folder / "news.csv", "email,name\na@example.com,A\n")
    results, _ = sync_directory(engine, settings, folder)
    assert results[0].counts.removed == 1  # c; b's unsubscribe stays recorded
    assert statuses(engine, "news") == {"a@example.com": "active", "b@example.com": "unsubscribed"}
    # Putting b back in the file does not resubscribe them.
    write(folder / "news.csv", "email,name\na@example.com,A\nb@example.com,B\nc@example.com,C\n")
    results, _ = sync_directory(engine, settings, folder)
    assert results[0].counts.kept_suppressed == 1
    assert statuses(engine, "news")["b@example.com"] == "unsubscribed"
    assert statuses(engine, "news")["c@example.com"] == "active"


def test_sync_takes_nobody_off_a_list_whose_file_has_unreadable_rows(
    engine: Engine, settings: Settings
) -> None:
    """A row that cannot be read may be a member's: sync took everyone whose
    row failed off the list, and a file whose every row failed (an empty
    `Email` column beside the real `Email Address`) emptied the list.  Now
    the valid rows still join and update, nobody leaves, and a problem
    says why."""
    folder = settings.base_dir / "subscribers"
    folder.mkdir()
    write(folder / "news.csv", "email\na@example.com\nb@example.com\nc@example.com\n")
    sync_directory(engine, settings, folder)
    write(folder / "news.csv", "email,name\na@example.com,A\nb@example,B\nd@example.com,D\n")
    results, problems = sync_directory(engine, settings, folder)
    counts = results[0].counts
    assert (counts.new, counts.invalid, counts.removed) == (1, 1, 0)
    assert [str(p) for p in problems] == [
        f"{folder / 'news.csv'}: error: nobody was taken off list 'news': 1 row of the file "
        "could not be read (each is reported with its line), and a member's address may be "
        "in it; fix the file and sync again"
    ]
    assert sorted(statuses(engine, "news")) == [
        "a@example.com", "b@example.com", "c@example.com", "d@example.com",
    ]  # fmt: skip
    write(folder / "news.csv", "Email,Email Address\n,a@example.com\n,d@example.com\n")
    results, problems = sync_directory(engine, settings, folder)
    assert results[0].counts.invalid == 2 and len(statuses(engine, "news")) == 4
    write(folder / "news.csv", "email\na@example.com\n")  # all readable: it mirrors again
    results, problems = sync_directory(engine, settings, folder)
    assert (results[0].counts.removed, problems) == (3, [])
    assert statuses(engine, "news") == {"a@example.com": "active"}


def test_sync_unknown_list_file_is_reported(engine: Engine, settings: Settings) -> None:
    folder = settings.base_dir / "subscribers"
    folder.mkdir()
    write(folder / "news.csv", "email\na@example.com\n")
    write(folder / "typo.csv", "email\nb@example.com\n")
    results, problems = sync_directory(engine, settings, folder)
    assert [r.list_name for r in results] == ["news"]
    assert [str(p) for p in problems] == [
        f"{folder / 'typo.csv'}: error: no list 'typo' in the configuration "
        "(declared: news, weekly); add [lists.typo] or rename the file"
    ]
    assert get_by_email(engine, "b@example.com") is None


def test_a_broken_sync_file_is_reported_and_the_other_lists_still_sync(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 5: a list file that cannot be read (cut short mid-file, or
    empty) is one reported problem; its list stays as it was, even the rows
    read before the break, and every other file still syncs.  It stopped the
    whole sync, and with it `run --sync`'s sending."""
    add_subscriber(engine, "old@example.com", "news")
    folder = settings.base_dir / "subscribers"
    folder.mkdir()
    # UTF-16 cut in the middle of a character: the decoder stops at the end,
    # after the rows before it were written (one row per chunk here).
    text = "email\na@example.com\nb@example.com\n".encode("utf-16")
    (folder / "news.csv").write_bytes(text + b"\x00")
    write(folder / "weekly.csv", "email\nw@example.com\n")
    monkeypatch.setattr(importer, "CHUNK_ROWS", 1)
    results, problems = sync_directory(engine, settings, folder)
    assert [r.list_name for r in results] == ["weekly"]
    assert len(problems) == 1 and str(problems[0]).startswith(
        f"{folder / 'news.csv'}:4: error: cannot decode the file"
    )
    assert statuses(engine, "weekly") == {"w@example.com": "active"}
    assert statuses(engine, "news") == {"old@example.com": "active"}
    assert get_by_email(engine, "a@example.com") is None
    (folder / "news.csv").write_bytes(b"")
    results, problems = sync_directory(engine, settings, folder)
    assert [str(p) for p in problems] == [
        f"{folder / 'news.csv'}: error: the file is empty (no header line)"
    ]
    assert [r.list_name for r in results] == ["weekly"]
    assert statuses(engine, "news") == {"old@example.com": "active"}


def test_sync_dry_run(engine: Engine, settings: Settings) -> None:
    folder = settings.base_dir / "subscribers"
    folder.mkdir()
    write(folder / "news.csv", "email\na@example.com\n")
    results, _ = sync_directory(engine, settings, folder, dry_run=True)
    assert results[0].counts.new == 1
    assert count_rows(engine) == (0, 0)


def test_dry_run_on_a_fresh_store_creates_nothing(tmp_path: Path, settings: Settings) -> None:
    engine = open_url(f"sqlite:///{tmp_path / 'fresh.db'}")
    counts = run_import(engine, settings, FIXTURES / "utf8_tab.tsv", dry_run=True)
    assert counts.new == 1
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(lists)) == 0


def test_resubscribe_flag_never_downgrades_active_to_pending(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_subscriber(engine, "a@example.com", "news")
    path = write(tmp_path / "in.csv", "email,status\na@example.com,pending\n")
    counts = run_import(engine, settings, path, resubscribe=True)
    assert counts.unchanged == 1
    assert seen(engine, "a@example.com").status == "active"


def test_touched_bitmap() -> None:
    touched = importer._Touched()
    for sid in (1, 7, 8, 1_000_003):
        touched.add(sid)
    assert all(s in touched for s in (1, 7, 8, 1_000_003))
    assert not any(s in touched for s in (0, 2, 9, 1_000_002, 5_000_000))


# --------------------------------------------------------------------------- staged import


def test_a_staged_import_holds_the_write_lock_only_to_merge(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While rows are staged and planned, another process may write."""
    sqlite_only(engine, "SQLite's single write lock")
    path = write(tmp_path / "f.csv", "email\n" + "".join(f"u{i}@example.com\n" for i in range(30)))
    real_plan = staging.stage_and_plan
    other_wrote: list[str] = []

    def plan_then_let_another_write(run: importer.ImportRun, source: object) -> None:
        real_plan(run, source)  # type: ignore[arg-type]
        # Still inside phase 1's transaction: a writer that must not wait for it
        # (timeout=0: "database is locked" at once if the import held the lock).
        contender = sqlite3.connect(str(engine.url.database), timeout=0, isolation_level=None)
        contender.execute("BEGIN IMMEDIATE")
        contender.execute("UPDATE lists SET title = 'Renamed meanwhile' WHERE name = 'news'")
        contender.execute("COMMIT")
        contender.close()
        other_wrote.append("yes")

    monkeypatch.setattr(staging, "stage_and_plan", plan_then_let_another_write)
    counts = run_import(engine, settings, path)
    assert other_wrote == ["yes"] and counts.new == 30
    assert counts.write_lock_seconds is not None
    assert count_rows(engine) == (30, 30)


def test_a_change_made_during_the_import_is_never_overwritten(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan went stale (an unsubscribe and a signup while it was made): the
    merge rolls back and the import runs again in one transaction."""
    add_subscriber(engine, "old@example.com", "news", name="Old")
    path = write(tmp_path / "f.csv", "email,name\nold@example.com,Renamed\nnew@example.com,New\n")
    real_merge = staging.merge
    stale: list[int] = []

    def racing_merge(run: importer.ImportRun, stamp: object) -> tuple[float, float]:
        old = get_by_email(engine, "old@example.com")
        assert old is not None
        unsubscribe(engine, old.id, None, reason="web")
        add_subscriber(engine, "new@example.com", "news", name="Signed Up")
        try:
            return real_merge(run, stamp)  # type: ignore[arg-type]
        except staging.StaleSnapshot:
            stale.append(1)
            raise

    monkeypatch.setattr(staging, "merge", racing_merge)
    counts = run_import(engine, settings, path)
    assert stale == [1] and counts.write_lock_seconds is None  # the classic path ran
    assert seen(engine, "old@example.com").status == "unsubscribed"  # not undone
    assert counts.kept_suppressed == 1 and count_rows(engine) == (2, 2)


def test_an_address_added_during_an_import_of_only_new_ones_is_never_overwritten(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every staged row was new at planning, so the merge inserts them without
    probing the store row by row: a signup of one of them meanwhile fails the
    unique index, and the import runs again in one transaction instead of
    failing or overwriting the signup."""
    path = write(
        tmp_path / "f.csv", "email,name\n" + "".join(f"u{i}@example.com,U\n" for i in range(30))
    )
    real_merge = staging.merge
    stale: list[str] = []

    def racing_merge(run: importer.ImportRun, stamp: object) -> tuple[float, float]:
        assert run.staged_only_new and run.staged_new == 30
        add_subscriber(engine, "U7@example.com", "weekly", name="Signed Up")
        signed_up = get_by_email(engine, "u7@example.com")
        assert signed_up is not None
        unsubscribe(engine, signed_up.id, None, reason="web")
        try:
            return real_merge(run, stamp)  # type: ignore[arg-type]
        except staging.StaleSnapshot as exc:
            stale.append(str(exc))
            raise

    monkeypatch.setattr(staging, "merge", racing_merge)
    counts = run_import(engine, settings, path)
    assert len(stale) == 1 and "a new address appeared" in stale[0]
    assert counts.write_lock_seconds is None  # the classic path ran
    assert (counts.new, counts.kept_suppressed) == (29, 1)
    assert seen(engine, "u7@example.com").status == "unsubscribed"  # not undone
    assert count_rows(engine) == (30, 31)  # u7 is on both lists, the others on one


def test_a_reimport_with_nothing_new_inserts_nothing_under_the_lock(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Nothing new at planning time: the merge skips the insert of new
    addresses (it would probe the store once per staged row, lock held)."""
    from sqlalchemy import event

    path = write(tmp_path / "f.csv", "email,name\na@example.com,A\nb@example.com,B\n")
    assert run_import(engine, settings, path).new == 2
    statements: list[str] = []

    def listen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        counts = run_import(engine, settings, path)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert counts.unchanged == 2 and counts.write_lock_seconds is not None
    # Nor from the plan, which holds no new subscriber either.
    assert [s for s in statements if s.startswith("INSERT INTO subscribers")] == []
    assert count_rows(engine) == (2, 2)


# --------------------------------------------------------------------------- PostgreSQL: COPY


def test_postgresql_stages_every_row_with_copy(
    engine: Engine, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    add_subscriber(engine, "old@example.com", "weekly", name="Old")
    path = write(
        tmp_path / "f.csv",
        "email,name\nold@example.com,Renamed\n"
        + "".join(f"u{i}@example.com,U\n" for i in range(30)),
    )
    caplog.set_level(logging.DEBUG, logger="newsletter.audience.stagetables")
    counts = run_import(engine, settings, path)
    copied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("COPY")]
    # Every file row, then the plan of the one row that changes a stored
    # subscriber (1 existing member, 1 change); the 30 new addresses go from
    # import_rows to the real tables in the merge, with no trip through Python.
    assert copied == [
        "COPY 31 rows into import_rows",
        "COPY 1 rows into import_members",
        "COPY 1 rows into import_changes",
    ]
    assert counts.write_lock_seconds is not None  # the staged merge ran, not the classic path
    assert (counts.new, counts.updated) == (31, 0) and count_rows(engine) == (31, 32)
    assert seen(engine, "old@example.com").name == "Renamed"


def test_a_bad_row_mid_file_leaves_the_store_unchanged(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows before it are already streamed into the stage (COPY on PostgreSQL);
    the failure must leave the real tables, and the connection, as they were."""
    add_subscriber(engine, "before@example.com", "news", name="Before")
    path = write(
        tmp_path / "f.csv",
        "email,name\nbefore@example.com,Renamed\n"
        + "".join(f"u{i}@example.com,U\n" for i in range(6000)),
    )
    real = stagereader.normalised  # the staged path's validation, row by row as it streams

    def breaks_on_row_4000(email: str) -> object:
        if email == "u4000@example.com":
            raise RuntimeError("disk on fire")
        return real(email)

    monkeypatch.setattr(stagereader, "normalised", breaks_on_row_4000)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_import(engine, settings, path)
    assert count_rows(engine) == (1, 1)
    assert seen(engine, "before@example.com").name == "Before"
    monkeypatch.setattr(stagereader, "normalised", real)
    assert run_import(engine, settings, path).new == 6000  # no stage left behind


def test_each_join_gets_its_consent_record(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Staged or classic, an import records one `subscribe` per membership it adds."""
    old = add_subscriber(engine, "old@example.com", "weekly")
    path = write(tmp_path / "f.csv", "email\nold@example.com\nnew@example.com\n")
    run_import(engine, settings, path)
    new = get_by_email(engine, "new@example.com")
    assert new is not None
    for sid in (old.id, new.id):
        joins = [(e.action, e.source, e.list_name) for e in consent.history(engine, sid)]
        assert joins[-1] == ("subscribe", "import", "news")
    assert [e.source for e in consent.history(engine, old.id)].count("import") == 1
    run_import(engine, settings, path)  # nobody joins: nothing recorded
    assert [e.source for e in consent.history(engine, old.id)].count("import") == 1


@pytest.mark.parametrize("path_kind", ["staged", "classic"])
def test_each_status_an_import_changes_is_in_the_consent_record(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path_kind: str,
) -> None:
    """`--resubscribe` lifting an unsubscribe (everywhere or from this list)
    and a file's own unsubscribe, bounce or complaint: one event each, as
    `subscribers resubscribe` and `unsubscribe` record theirs; before, the
    history of someone an import brought back still ended in "unsubscribe"."""
    import newsletter.audience.subscribers as subscribers_module

    if path_kind == "classic":
        monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
    gone = add_subscriber(engine, "gone@example.com", "news")
    unsubscribe(engine, gone.id, None, reason="link")
    left = add_subscriber(engine, "left@example.com", "news")
    unsubscribe(engine, left.id, "news", reason="link")
    for name in ("quits", "bounces", "complains", "stays"):
        add_subscriber(engine, f"{name}@example.com", "news")
    path = write(
        tmp_path / "f.csv",
        """
        email,status
        gone@example.com,active
        left@example.com,active
        quits@example.com,unsubscribed
        bounces@example.com,bounced
        complains@example.com,complained
        stays@example.com,active
        """,
    )

    def events(address: str) -> list[tuple[str, str, str | None]]:
        found = get_by_email(engine, address)
        assert found is not None
        return [(e.action, e.source, e.list_name) for e in consent.history(engine, found.id)]

    names = ("gone", "left", "quits", "bounces", "complains", "stays")
    before = {name: len(events(f"{name}@example.com")) for name in names}
    counts = run_import(engine, settings, path, resubscribe=True)
    assert (counts.write_lock_seconds is None) == (path_kind == "classic")
    assert events("gone@example.com")[-1:] == [("resubscribe", "import", None)]
    assert events("left@example.com")[-1:] == [("resubscribe", "import", "news")]
    assert events("quits@example.com")[-1:] == [("unsubscribe", "import", None)]
    assert events("bounces@example.com")[-1:] == [("bounce", "import", None)]
    assert events("complains@example.com")[-1:] == [("complaint", "import", None)]
    after = {name: len(events(f"{name}@example.com")) for name in names}
    assert after == {**{name: n + 1 for name, n in before.items()}, "stays": before["stays"]}
    run_import(engine, settings, path, resubscribe=True)  # nothing changes: nothing recorded
    assert {name: len(events(f"{name}@example.com")) for name in names} == after


def _history(engine: Engine, address: str) -> list[tuple[str, str, str | None, str | None]]:
    found = get_by_email(engine, address)
    assert found is not None, address
    return [(e.action, e.source, e.list_name, e.detail) for e in consent.history(engine, found.id)]


@pytest.mark.parametrize("store", ["empty", "not empty"])
@pytest.mark.parametrize("path_kind", ["staged", "classic"])
def test_a_suppressed_status_a_file_gives_is_recorded_not_a_subscribe(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path_kind: str,
    store: str,
) -> None:
    """A new address the file gives as unsubscribed, bounced or complained
    got a `subscribe` record and nothing else: the history claimed a consent
    the file does not show and hid the suppression.  Such a row now records
    the suppression (every list, its reason as the detail) and no
    `subscribe`, a new address as one already stored (on another list)."""
    import newsletter.audience.subscribers as subscribers_module

    if path_kind == "classic":
        monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
    if store == "not empty":
        add_subscriber(engine, "known@example.com", "weekly")
    path = write(
        tmp_path / "f.csv",
        """
        email,status
        quits@example.com,unsubscribed
        bounces@example.com,bounced
        complains@example.com,complained
        joins@example.com,active
        waits@example.com,pending
        known@example.com,unsubscribed
        """,
    )
    counts = run_import(engine, settings, path)
    assert (counts.write_lock_seconds is None) == (path_kind == "classic")
    assert _history(engine, "quits@example.com") == [
        ("unsubscribe", "import", None, "import: unsubscribed")
    ]
    assert _history(engine, "bounces@example.com") == [
        ("bounce", "import", None, "import: bounced")
    ]
    assert _history(engine, "complains@example.com") == [
        ("complaint", "import", None, "import: complained")
    ]
    assert _history(engine, "joins@example.com") == [("subscribe", "import", "news", None)]
    assert _history(engine, "waits@example.com") == [("subscribe", "import", "news", None)]
    assert _history(engine, "known@example.com")[-1:] == [
        ("unsubscribe", "import", None, "import: unsubscribed")
    ]
    assert statuses(engine)["bounces@example.com"] == "bounced"  # still on the list
    recorded = {a: _history(engine, a) for a in ("quits@example.com", "known@example.com")}
    run_import(engine, settings, path)  # nothing changes: nothing recorded
    assert {a: _history(engine, a) for a in recorded} == recorded


@pytest.mark.parametrize("path_kind", ["staged", "classic"])
def test_a_mailchimp_unsubscribed_export_records_the_unsubscribes(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path_kind: str,
) -> None:
    """The same through a Mailchimp export (its OPTIN_TIME: the staged merge's
    other branch, which looks each staged row up again)."""
    import newsletter.audience.subscribers as subscribers_module

    if path_kind == "classic":
        monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
    path = tmp_path / "unsubscribed_members_export_abc.csv"
    path.write_bytes((FIXTURES / "mailchimp/unsubscribed_members_export_3f2a.csv").read_bytes())
    run_import(engine, settings, path)
    assert _history(engine, "gone@example.com") == [
        ("unsubscribe", "import", None, "mailchimp: unsubscribed")
    ]


def test_sync_records_a_suppressed_status_of_a_new_address(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    write(folder / "weekly.csv", "email,status\nsy1@example.com,unsubscribed\n")
    _, problems = sync_directory(engine, settings, folder)
    assert problems == []
    assert _history(engine, "sy1@example.com") == [
        ("unsubscribe", "sync", None, "import: unsubscribed")
    ]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_staged_attributes_are_the_json_columns_own_text(attributes: dict[str, object]) -> None:
    """The staged import writes attributes as text, with json.dumps's C encoder
    built once: the text must be exactly what the JSON column would write."""
    for dialect in (sqlite_dialect.dialect(), postgresql_dialect.dialect()):
        assert importer._Raw(dialect).json_text(attributes) == json.dumps(attributes)


STORE_STATES = """\
email,name,status,city
same@example.com,Same,active,Paris
renamed@example.com,Old Name,active,Paris
moved@example.com,Moved,active,Paris
pending@example.com,Pend,pending,
gone@example.com,Gone,unsubscribed,
bounced@example.com,Bounce,bounced,
"""
FILE_ROWS = """\
email,name,status,city
same@example.com,,active,Paris
SAME@example.com,Same,,
renamed@example.com,New Name,active,Paris
moved@example.com,Moved,active,Lyon
pending@example.com,,active,
gone@example.com,Gone,active,
bounced@example.com,,unsubscribed,
listgone@example.com,,active,
elsewhere@example.com,Else,active,
new@example.com,New,pending,Nice
new@example.com,,complained,
fresh@example.com,Fresh,,
"""


def _snapshot(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        subs = conn.execute(
            select(subscribers.c.email, subscribers.c.name, subscribers.c.status,
                   subscribers.c.status_reason, subscribers.c.attributes)
            .order_by(subscribers.c.email)
        ).all()  # fmt: skip
        members = conn.execute(
            select(subscribers.c.email, lists.c.name, memberships.c.unsubscribed_at.is_(None))
            .join(memberships, memberships.c.subscriber_id == subscribers.c.id)
            .join(lists, lists.c.id == memberships.c.list_id)
            .order_by(subscribers.c.email, lists.c.name)
        ).all()  # fmt: skip
    return [tuple(r) for r in subs] + [tuple(r) for r in members]


@pytest.mark.parametrize("resubscribe", [False, True])
def test_the_set_based_plan_agrees_with_the_classic_path(
    database_url: str,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    resubscribe: bool,
) -> None:
    """Every kind of row (unchanged, renamed, new attributes, status up or
    kept, per-list unsubscribed, on another list only, new, repeated): the
    staged import's SQL classification and counts give the store and the
    counts the one-transaction path gives."""
    import newsletter.audience.subscribers as subscribers_module

    outcomes = []
    for staged in (True, False):
        engine = open_url(database_url)
        ensure_lists(engine, settings)
        with engine.begin() as conn:  # a fresh store for each path
            for table in (memberships, subscribers):
                conn.execute(table.delete())
        run_import(engine, settings, write(tmp_path / "store.csv", STORE_STATES))
        listgone = add_subscriber(engine, "listgone@example.com", "news")
        unsubscribe(engine, listgone.id, "news", reason="link")
        add_subscriber(engine, "elsewhere@example.com", "weekly", name="Else")
        if not staged:
            monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
        counts = run_import(
            engine, settings, write(tmp_path / "file.csv", FILE_ROWS), resubscribe=resubscribe
        )
        monkeypatch.undo()
        assert (counts.write_lock_seconds is not None) == staged
        outcomes.append((counts.as_dict(), _snapshot(engine)))
        engine.dispose()
    assert outcomes[0] == outcomes[1]
    staged_counts = outcomes[0][0]
    assert staged_counts["duplicates"] == 2 and staged_counts["unchanged"] >= 1


def test_a_first_import_into_an_empty_store_agrees_with_the_classic_path(
    database_url: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty store: every staged row is new, counted without joining the
    stage to the store (nothing to plan), and the store and counts are the
    one-transaction path's, repeated addresses and statuses included."""
    from sqlalchemy import event

    import newsletter.audience.subscribers as subscribers_module

    outcomes = []
    for staged in (True, False):
        engine = open_url(database_url)
        ensure_lists(engine, settings)
        with engine.begin() as conn:
            for table in (memberships, subscribers):
                conn.execute(table.delete())
        if not staged:
            monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
        statements: list[str] = []

        def listen(
            _conn: object, _cursor: object, statement: str, *_: object, into: list[str] = statements
        ) -> None:
            into.append(" ".join(statement.split()))

        event.listen(engine, "before_cursor_execute", listen)
        counts = run_import(engine, settings, write(tmp_path / "file.csv", FILE_ROWS))
        event.remove(engine, "before_cursor_execute", listen)
        monkeypatch.undo()
        assert (counts.write_lock_seconds is not None) == staged
        if staged:
            joins = [s for s in statements if "FROM import_rows LEFT OUTER JOIN subscribers" in s]
            assert joins == []
        outcomes.append((counts.as_dict(), _snapshot(engine)))
        engine.dispose()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]["new"] == 10 and outcomes[0][0]["duplicates"] == 2


def test_a_membership_starts_when_the_file_says_and_otherwise_now(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """The merge looks a staged time up only when some row gave one; both
    kinds of file keep their times (and SQLite's foreign keys all hold)."""
    from datetime import UTC, datetime, timedelta

    from newsletter.store import now

    given = "email,name,status,subscribed_at\ntimed@example.com,T,active,2020-05-01T10:00:00Z\n"
    untimed = "email,name,status,subscribed_at\nplain@example.com,P,active,\n"
    started = now()
    run_import(engine, settings, write(tmp_path / "timed.csv", given + "loose@example.com,L,,\n"))
    run_import(engine, settings, write(tmp_path / "untimed.csv", untimed))
    with engine.connect() as conn:
        since = dict(
            conn.execute(
                select(subscribers.c.email, memberships.c.created_at).join(
                    memberships, memberships.c.subscriber_id == subscribers.c.id
                )
            ).all()
        )
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    assert since["timed@example.com"] == datetime(2020, 5, 1, 10, tzinfo=UTC)
    for email in ("loose@example.com", "plain@example.com"):
        assert started - timedelta(seconds=1) <= since[email] <= now()
