"""Cells one database stores and the other refuses, imported the same on both.

PostgreSQL refuses a NUL in text, a name longer than its column, and NaN or
Infinity in JSON; SQLite takes them all.  One such cell aborted a whole
import or sync on PostgreSQL (a raw driver traceback for a NUL), and a
SQLite store's export could not be imported into PostgreSQL.  Each is now
cleaned or refused as the file is read, so both databases keep the same.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from test_subscribers_common import make_settings, run_import, seen, statuses

import newsletter.audience.serviceformats as serviceformats
import newsletter.audience.subscribers as subscribers_module
from newsletter.audience.members import MAX_NAME, ensure_lists
from newsletter.audience.subscribers import export_list, sync_directory
from newsletter.config import Settings
from newsletter.errors import StoreError
from newsletter.store import open_url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings("news", "weekly", base_dir=tmp_path)


@pytest.fixture(params=["staged", "classic"])
def engine(
    request: pytest.FixtureRequest,
    database_url: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Engine:
    """Both databases, and both ways an import writes (staged; one transaction,
    the path it falls back to when the store changed under the plan)."""
    if request.param == "classic":
        monkeypatch.setattr(subscribers_module, "STAGED_DIALECTS", ())
    engine = open_url(database_url)
    ensure_lists(engine, settings)
    return engine


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_a_nul_in_a_name_is_a_space_and_every_row_imports(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """As a name from a form (`members.clean_name`): PostgreSQL refuses NUL
    in text, and the COPY's driver error escaped as a traceback."""
    path = _file(
        tmp_path / "nul.csv",
        'email,name\r\nok1@example.com,Ok\r\nnul@example.com,"Bad\x00Name"\r\n'
        "ok2@example.com,Ok2\r\n",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (3, 0)
    assert seen(engine, "nul@example.com").name == "Bad Name"


def test_a_name_longer_than_the_column_is_cut_with_a_warning(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    path = _file(
        tmp_path / "long.csv",
        f"email,first name,last name\r\nlong@example.com,{'x' * 150},{'y' * 150}\r\n"
        "ok@example.com,Ok,\r\n",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.warnings) == (2, 0, 1)
    assert seen(engine, "long@example.com").name == "x" * 150 + " " + "y" * (MAX_NAME - 151)
    assert [(p.line, p.message) for p in counts.problems] == [
        (2, f"name longer than {MAX_NAME} characters; imported cut to its first {MAX_NAME}")
    ]


def test_a_nul_in_a_status_word_is_stored_in_its_reason(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    # An unknown status is kept as the reason (`import: …`): text, as a name.
    path = _file(tmp_path / "s.csv", 'email,status\r\nodd@example.com,"v\x00ip"\r\n')
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (1, 0)
    assert seen(engine, "odd@example.com").status == "pending"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1E999"])
def test_listmonk_attributes_with_a_number_json_has_not_are_dropped_with_a_warning(
    engine: Engine, settings: Settings, tmp_path: Path, number: str
) -> None:
    """Python reads `NaN`, `Infinity` (and, as infinity, `1e400`), which JSON
    has not: SQLite stored them, PostgreSQL failed the whole import.  They are
    attributes that are not valid JSON, as listmonk's were already handled."""
    path = _file(
        tmp_path / "listmonk.csv",
        'email,name,attributes\r\nok@example.com,Ok,"{""a"": 1}"\r\n'
        f'bad@example.com,Bad,"{{""score"": {number}, ""city"": ""Nice""}}"\r\n',
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.warnings) == (2, 0, 1)
    assert seen(engine, "bad@example.com").attributes == {}
    assert seen(engine, "ok@example.com").attributes == {"a": 1}
    message = counts.problems[0].message
    assert (
        message.startswith("attributes are not a JSON object (") and "imported without" in message
    )


def test_our_exports_nan_cell_from_sqlite_is_imported_as_text(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A SQLite store's export (written before this was refused) holds `NaN`
    and a NUL in a name: it imports into either database, `NaN` as the text."""
    path = _file(
        tmp_path / "from_sqlite.csv",
        "email,name,status,subscribed_at,score,big\r\n"
        "nan@example.com,N,active,2024-01-01T00:00:00+00:00,NaN,1e400\r\n"
        'nul@example.com,"Bad\x00Name",active,2024-01-01T00:00:00+00:00,1.5,2\r\n',
    )
    counts = run_import(engine, settings, path)
    assert (counts.files[0].format, counts.new, counts.invalid) == ("newsletter", 2, 0)
    assert seen(engine, "nan@example.com").attributes == {"score": "NaN", "big": "1e400"}
    assert seen(engine, "nul@example.com").name == "Bad Name"
    assert seen(engine, "nul@example.com").attributes == {"score": 1.5, "big": 2}


def test_a_nul_in_an_attribute_is_stored_alike_and_round_trips(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Inside JSON a NUL is the escape `\\u0000`, which both databases keep:
    in a value and in a key, from a plain column or from listmonk's JSON."""
    path = _file(
        tmp_path / "listmonk.csv",
        'email,name,attributes\r\nj@example.com,J,"{""k\\u0000"": ""v\\u0000w""}"\r\n',
    )
    assert run_import(engine, settings, path).invalid == 0
    plain = _file(tmp_path / "plain.csv", 'email,"no\x00te"\r\np@example.com,"a\x00b"\r\n')
    assert run_import(engine, settings, plain).invalid == 0
    assert seen(engine, "j@example.com").attributes == {"k\x00": "v\x00w"}
    assert seen(engine, "p@example.com").attributes == {"no\x00te": "a\x00b"}
    first = io.StringIO()
    export_list(engine, "news", first)
    exported = _file(tmp_path / "export.csv", first.getvalue())
    counts = run_import(engine, settings, exported, "weekly")
    assert (counts.invalid, counts.warnings) == (0, 0)
    second = io.StringIO()
    export_list(engine, "weekly", second)
    assert second.getvalue() == first.getvalue()


def test_sync_with_a_nul_in_one_file_syncs_every_list(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    _file(folder / "news.csv", 'email,name\r\nok@example.com,Ok\r\nnul@example.com,"B\x00d"\r\n')
    _file(folder / "weekly.csv", "email\r\nw@example.com\r\n")
    results, problems = sync_directory(engine, settings, folder)
    assert problems == [] and [r.counts.invalid for r in results] == [0, 0]
    assert set(statuses(engine, "news")) == {"ok@example.com", "nul@example.com"}
    assert set(statuses(engine, "weekly")) == {"w@example.com"}
    assert seen(engine, "nul@example.com").name == "B d"


def test_a_value_postgresql_refuses_in_a_copy_is_one_line_not_a_traceback(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a cell the store refuses still reach it, the staged import's
    COPY (the driver's own call, outside SQLAlchemy) raised psycopg's error
    as a traceback; it is the import's one-line error, like any other."""
    if engine.dialect.name != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    monkeypatch.setattr(serviceformats, "one_line", lambda value: value)  # no cleaning
    path = _file(tmp_path / "nul.csv", 'email,name\r\nnul@example.com,"Bad\x00Name"\r\n')
    with pytest.raises(StoreError) as caught:
        run_import(engine, settings, path)
    assert str(caught.value) == (
        f"{path}: import failed, nothing was written: "
        "PostgreSQL text fields cannot contain NUL (0x00) bytes"
    )
    assert statuses(engine) == {}


def test_list_json_is_valid_json_for_a_nan_a_sqlite_store_already_holds(
    sample_site: Path,
) -> None:
    """Imported before NaN was refused: SQLite kept it, and `list --json`
    printed a bare NaN, which no JSON reader takes."""
    from click.testing import CliRunner

    from newsletter.audience.members import get_by_email
    from newsletter.cli import main
    from newsletter.store.schema import subscribers

    runner = CliRunner()
    added = runner.invoke(main, ["subscribers", "add", "n@example.com", "--list", "sample"])
    assert added.exit_code == 0, added.output
    engine = open_url(f"sqlite:///{sample_site / '.newsletter' / 'newsletter.db'}")
    row = get_by_email(engine, "n@example.com")
    assert row is not None
    with engine.begin() as conn:
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == row.id)
            .values(attributes={"score": float("nan"), "list": [float("inf")]})
        )
    engine.dispose()
    result = runner.invoke(main, ["subscribers", "list", "--list", "sample", "--json"])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data[0]["attributes"] == {"score": "NaN", "list": ["Infinity"]}


# --------------------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_listmonk_attributes_is_a_replacement_character(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Half an emoji (`\\ud83d`) decodes from JSON to a lone surrogate, which
    no encoding writes: it was stored, and then `export` died half-way and
    `list --json` with it.  It becomes U+FFFD, as in a name; a whole pair
    is the character it encodes."""
    attributes = '{"nick": "Jo \\ud83d", "\\udc00k": ["x\\ud800", "\\ud83d\\ude00"]}'
    path = _file(
        tmp_path / "listmonk.csv",
        "email,name,attributes\r\na@example.com,A,{}\r\n"
        f'emoji@example.com,E,"{attributes.replace(chr(34), chr(34) * 2)}"\r\n'
        "z@example.com,Z,{}\r\n",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.warnings) == (3, 0, 0)
    assert seen(engine, "emoji@example.com").attributes == {
        "nick": "Jo \ufffd",
        "\ufffdk": ["x\ufffd", "\U0001f600"],
    }
    first = io.StringIO()
    assert export_list(engine, "news", first) == 3
    first.getvalue().encode("utf-8")  # writable: no lone surrogate left
    exported = _file(tmp_path / "export.csv", first.getvalue())
    assert run_import(engine, settings, exported, "weekly").invalid == 0
    second = io.StringIO()
    export_list(engine, "weekly", second)
    assert second.getvalue() == first.getvalue()


def test_a_lone_surrogate_in_our_exports_cells_and_headers_is_a_replacement_character(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Our export's attribute cells and JSON-quoted headers are decoded as
    JSON too (`serviceformats._decode_json`, `_exact_name`)."""
    path = _file(
        tmp_path / "ours.csv",
        'email,name,status,subscribed_at,nick,"""\\udc00 k """\r\n'
        'o@example.com,O,active,2024-01-01T00:00:00+00:00,"""Jo \\ud83d""",1\r\n',
    )
    counts = run_import(engine, settings, path)
    assert (counts.files[0].format, counts.new, counts.invalid) == ("newsletter", 1, 0)
    assert seen(engine, "o@example.com").attributes == {"nick": "Jo \ufffd", "\ufffd k ": 1}
