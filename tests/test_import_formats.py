"""Every supported export and every kind of messy file, imported for real."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from sqlalchemy import Engine
from test_subscribers_common import (
    FIXTURES,
    make_engine,
    make_settings,
    run_import,
    seen,
    statuses,
)

from newsletter.audience.csvformats import read_source, sniff_delimiter
from newsletter.audience.serviceformats import SourceRow, detect_format
from newsletter.config import Settings
from newsletter.errors import Problem, SubscriberError


@pytest.fixture
def settings() -> Settings:
    return make_settings("news")


@pytest.fixture
def engine(tmp_path: Path, settings: Settings) -> Engine:
    return make_engine(tmp_path, settings)


def rows_of(path: Path, fmt: str = "auto") -> list[SourceRow]:
    items = list(read_source(path, fmt))
    assert all(isinstance(i, SourceRow) for i in items)
    return [i for i in items if isinstance(i, SourceRow)]


# --------------------------------------------------------------------------- files


def test_cp1252_semicolon_excel_file(engine: Engine, settings: Settings) -> None:
    path = FIXTURES / "excel_cp1252_semicolon.csv"
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (2, 0)
    info = counts.files[0]
    assert (info.encoding, info.delimiter, info.format) == ("cp1252", ";", "generic")
    zoe = seen(engine, "zoe@example.com")
    assert zoe.name == "Zoë Müller" and zoe.attributes == {"Stadt": "Köln"}
    # Stray spaces trimmed and the domain lower-cased, the local part kept.
    assert seen(engine, "francois@example.org").email == "francois@example.org"
    assert seen(engine, "francois@example.org").name == "François Dœuf"


def test_utf16_tab_separated_unicode_text(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "excel_unicode_text.txt")
    assert counts.files[0].encoding == "utf-16" and counts.files[0].delimiter == "\t"
    assert seen(engine, "yuki@example.com").name == "雪 山田"
    assert seen(engine, "omar@example.org").mailable


def test_utf8_bom_quotes_newlines_blank_lines(engine: Engine, settings: Settings) -> None:
    path = FIXTURES / "utf8_bom_messy.csv"
    rows = rows_of(path)
    # Blank lines and a line of bare delimiters are not records; line numbers
    # are physical lines: ada spans lines 3-4, then a blank line and ",,".
    assert [(r.email, r.line) for r in rows] == [("ada@example.com", 3), ("grace@example.com", 7)]
    assert rows[0].name == "Lovelace, Ada"
    assert rows[0].attributes == {"note": "first line\r\nsecond line"}
    counts = run_import(engine, settings, path)
    assert counts.files[0].encoding == "utf-8-sig"
    assert (counts.rows, counts.new, counts.invalid) == (2, 2, 0)


def test_utf8_without_bom_tab_lf(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "utf8_tab.tsv")
    assert (counts.files[0].encoding, counts.files[0].delimiter) == ("utf-8", "\t")
    assert seen(engine, "linus@example.com").name == "Linus Tørvalds"


def test_late_non_utf8_byte_still_detected(tmp_path: Path) -> None:
    """A cp1252 byte after the first megabyte must not crash the UTF-8 reading."""
    path = tmp_path / "late.csv"
    body = "".join(f"u{i}@example.com,Name {i}\r\n" for i in range(60_000))
    path.write_bytes(("email,name\r\n" + body).encode() + "z@example.com,Zoë\r\n".encode("cp1252"))
    rows = rows_of(path)
    assert len(rows) == 60_001 and rows[-1].name == "Zoë"


def test_a_file_of_utf8_and_a_few_cp1252_bytes_reads_both_right(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Two exports pasted together, or a row added by another program: one
    cp1252 é among UTF-8 text made the whole file cp1252, and every UTF-8
    name turned to mojibake ("ZoÃ«") without a word."""
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        "email,name\nzoe@example.com,Zoë Müller\n".encode()
        + "jose@example.com,José\n".encode("cp1252")
        + "yuki@example.com,雪\n".encode()
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (3, 0)
    assert counts.files[0].encoding == "utf-8 (a few bytes cp1252)"
    names = {e: seen(engine, f"{e}@example.com").name for e in ("zoe", "jose", "yuki")}
    assert names == {"zoe": "Zoë Müller", "jose": "José", "yuki": "雪"}


def test_invalid_rows_reported_with_line_and_reason(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "bad_rows.csv")
    problems = {p.line: p.message for p in counts.problems}
    assert sorted(problems) == [3, 4, 5, 6, 10, 11]
    assert problems[3] == (
        "invalid email address 'no-at-sign.example.com': An email address must have an @-sign."
    )
    assert problems[4] == "no email address"
    assert "two periods in a row" in problems[6]
    assert "Internationalized characters before the @-sign" in problems[10]
    assert str(counts.problems[0]).startswith(f"{FIXTURES / 'bad_rows.csv'}:3: error: ")
    assert (counts.invalid, counts.new) == (6, 5)
    # IDN → punycode; mailto: and <…> stripped; the rest imported.
    assert seen(engine, "user@xn--bcher-kva.example").name == "IDN Domain"
    assert seen(engine, "mixed.case@example.com").email == "Mixed.Case@example.com"
    assert seen(engine, "angle@example.org").mailable
    assert seen(engine, "last@example.org").mailable


def test_no_email_column_is_one_clear_error(engine: Engine, settings: Settings) -> None:
    with pytest.raises(SubscriberError) as info:
        run_import(engine, settings, FIXTURES / "no_email_column.csv")
    assert str(info.value) == (
        f"{FIXTURES / 'no_email_column.csv'}:1: no email column in the header (looked for: "
        "email, e-mail, email address, email_address, emailaddress, mail, or a localized one "
        "such as e-mail-adresse, courriel, correo electrónico; found: name, city)"
    )


def test_empty_and_missing_files(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="the file is empty"):
        run_import(engine, settings, FIXTURES / "empty.csv")
    with pytest.raises(SubscriberError, match="file not found"):
        run_import(engine, settings, tmp_path / "nope.csv")
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(SubscriberError, match="the file is empty"):
        run_import(engine, settings, tmp_path / "zero.csv")


def test_broken_csv_quoting_fails_with_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_text('email,name\na@example.com,"unterminated\n', encoding="utf-8")
    items = list(read_source(path))
    # An unterminated quote swallows the rest: the row still parses, with the
    # newline inside the name, rather than crashing.
    assert len(items) == 1
    row = items[0]
    assert isinstance(row, SourceRow)
    assert (row.line, row.email, row.name.strip()) == (2, "a@example.com", "unterminated")


def test_a_stray_quote_that_swallows_rows_is_reported(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A quote opened and not closed on its line reads the following lines
    as one cell, up to the next quote in the file: those rows vanished into a
    name, without a word (exit 0).  Now the row is an error naming the lines
    it swallowed; the rows after it still import (invariant 5)."""
    path = tmp_path / "stray.csv"
    path.write_text(
        'email,name\na@example.com,"Bob\nb@example.com,Carl\nc@example.com,Dan\n'
        'd@example.com,"Eve"\ne@example.com,Fay\n',
        encoding="utf-8",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (1, 1)
    assert [str(p) for p in counts.problems] == [
        f"{path}:2: error: a quote opened on line 2 runs on to line 5, so lines 3-5, which "
        "look like rows of their own, were read as one cell: fix the quote and import again"
    ]
    assert statuses(engine) == {"e@example.com": "active"}
    # To the end of the file, too.
    path.write_text('email,name\na@example.com,"Bob\nb@example.com,Carl\n', encoding="utf-8")
    counts = run_import(engine, settings, path)
    assert counts.invalid == 1 and "runs on to line 3" in counts.problems[0].message


def test_sniff_delimiter_ignores_quoted() -> None:
    assert sniff_delimiter('"a;b;c",x,y\r\n') == ","
    assert sniff_delimiter("email;name\r\n") == ";"
    assert sniff_delimiter("email\r\n") == ","
    assert sniff_delimiter("email|name|x\n") == "|"


def test_a_delimiter_that_finds_the_email_column_wins_over_a_count(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A semicolon file whose header has as many commas as semicolons (or
    more) in a column name was split on commas, and then had "no email
    column"."""
    assert sniff_delimiter("email;name;notes (a, b)\r\n") == ";"
    assert sniff_delimiter("E-Mail;Name;Notiz (a, b, c)\n") == ";"
    assert sniff_delimiter("email,name,notes; more; even more\n") == ","
    assert sniff_delimiter("a,b;c\n") == ","  # no email column either way: the count, as before
    path = tmp_path / "semi.csv"
    path.write_text("email;name;notes (a, b)\nsemi@example.com;Semi;n, m\n", encoding="utf-8")
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.files[0].delimiter) == (1, ";")
    assert seen(engine, "semi@example.com").attributes == {"notes (a, b)": "n, m"}


def test_a_headerless_list_is_split_where_a_cell_is_an_address(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A bare semicolon list whose first name holds a comma: split on commas
    (a tie, so the default) no cell was an address, and every row was refused."""
    assert sniff_delimiter("a@example.com;Alice, A\n") == ";"
    assert sniff_delimiter("a@example.com,Alice; A\n") == ","
    path = tmp_path / "bare.csv"
    path.write_text("a@example.com;Alice, A\nb@example.com;Bob\n", encoding="utf-8")
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.files[0].delimiter) == (2, 0, ";")
    assert seen(engine, "a@example.com").name == "Alice, A"


# --------------------------------------------------------------------------- services


def test_detect_every_format() -> None:
    cases = {
        "substack_emails.csv": "substack",
        "substack_dashboard.csv": "substack",
        "ghost_members.csv": "ghost",
        "listmonk_import.csv": "listmonk",
        "listmonk_export.csv": "listmonk",
        "beehiiv.csv": "beehiiv",
        "buttondown.csv": "buttondown",
        "kit.csv": "kit",
        "mailchimp/subscribed_members_export_3f2a.csv": "mailchimp",
        "mailchimp/cleaned_members_export_3f2a.csv": "mailchimp",
        "bad_rows.csv": "generic",
    }
    for name, expected in cases.items():
        infos: list = []
        list(read_source(FIXTURES / name, infos=infos))
        assert infos[0].format == expected, name
    assert detect_format(["email", "name", "status", "subscribed_at", "x"]) == "newsletter"


def mailchimp_zip(tmp_path: Path) -> Path:
    path = tmp_path / "mailchimp_export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for csv_file in sorted((FIXTURES / "mailchimp").iterdir()):
            archive.write(csv_file, f"members_export/{csv_file.name}")
        archive.writestr("__MACOSX/._subscribed_members_export_3f2a.csv", b"\x00\x05junk")
        archive.writestr("readme.txt", "not a csv")
    return path


def test_mailchimp_zip_imports_all_three_files(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    counts = run_import(engine, settings, mailchimp_zip(tmp_path))
    assert [Path(f.name).name for f in counts.files] == [
        "cleaned_members_export_3f2a.csv",
        "subscribed_members_export_3f2a.csv",
        "unsubscribed_members_export_3f2a.csv",
    ]
    assert seen(engine, "sub.one@example.com").mailable
    assert seen(engine, "sub.one@example.com").attributes["TAGS"] == '"VIP"'
    assert seen(engine, "gone@example.com").status == "unsubscribed"
    assert seen(engine, "gone@example.com").attributes["UNSUB_REASON"] == "No longer interested"
    assert seen(engine, "bounced@example.org").status == "bounced"
    # Subscribed in one file, unsubscribed in the other: the unsubscribe wins.
    both = seen(engine, "both.ways@example.com")
    assert (both.status, both.mailable, both.email) == (
        "unsubscribed",
        False,
        "Both.Ways@example.com",
    )
    assert counts.duplicates == 1 and counts.new == 4


def test_mailchimp_single_unsubscribed_file_by_columns(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    renamed = tmp_path / "export.csv"
    renamed.write_bytes((FIXTURES / "mailchimp/unsubscribed_members_export_3f2a.csv").read_bytes())
    run_import(engine, settings, renamed)
    assert seen(engine, "gone@example.com").status == "unsubscribed"


_MAILCHIMP_HEADER = '"Email Address","First Name","Last Name",MEMBER_RATING,OPTIN_TIME,LEID,EUID\n'


@pytest.mark.parametrize("name", ["nonsubscribed_members_export_abc.csv", "members_abc.csv"])
def test_a_mailchimp_zip_member_whose_name_gives_no_status_is_refused(
    engine: Engine, settings: Settings, tmp_path: Path, name: str
) -> None:
    """Only `subscribed_`, `unsubscribed_` and `cleaned_` say what a ZIP's
    member file holds; any other (Mailchimp's `nonsubscribed_…`: contacts
    who never subscribed) was imported as active.  `subscribed_` is the end
    of `nonsubscribed_`: the whole word must match."""
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for csv_file in sorted((FIXTURES / "mailchimp").iterdir()):
            archive.write(csv_file, csv_file.name)
        archive.writestr(name, _MAILCHIMP_HEADER + "never@example.com,Never,Opted,1,,1,a\n")
    with pytest.raises(SubscriberError) as caught:
        run_import(engine, settings, path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{name}: a Mailchimp file whose name does not say")
    assert "nothing was imported" in message
    assert statuses(engine) == {}


def test_a_single_mailchimp_file_named_for_another_status_is_refused(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "nonsubscribed_members_export_abc.csv"
    path.write_text(_MAILCHIMP_HEADER + "never@example.com,Never,Opted,1,,1,a\n")
    with pytest.raises(SubscriberError, match="a Mailchimp file whose name does not say"):
        run_import(engine, settings, path)
    assert statuses(engine) == {}


def test_mailchimp_names_and_columns_that_do_say_the_status(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A single file under a name of its own is read by its columns (no
    UNSUB_TIME or CLEAN_TIME: subscribed); a ZIP member whose name gives no
    status but whose columns do is read by them (never more mailable)."""
    single = tmp_path / "my export.csv"
    single.write_text(_MAILCHIMP_HEADER + "kept@example.com,Kept,On,1,,1,a\n")
    run_import(engine, settings, single)
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(FIXTURES / "mailchimp/cleaned_members_export_3f2a.csv", "archived.csv")
        subscribed = FIXTURES / "mailchimp/subscribed_members_export_3f2a.csv"
        archive.write(subscribed, "Subscribed_Members_Export_3F2A.CSV")
    run_import(engine, settings, path)
    assert statuses(engine) == {
        "kept@example.com": "active",
        "bounced@example.org": "bounced",
        "sub.one@example.com": "active",
        "Both.Ways@example.com": "active",
    }


# A Mailchimp export after a spreadsheet: MEMBER_RATING, OPTIN_TIME, LEID and
# EUID (what recognises Mailchimp's header) deleted, the file names kept.
_TRIMMED = {
    "subscribed_members_export_abc.csv": "Email Address,First Name,Last Name\r\n"
    "sub@example.com,Sub,One\r\n",
    "unsubscribed_members_export_abc.csv": "Email Address,First Name,Last Name,UNSUB_TIME\r\n"
    "unsub@example.com,Un,Sub,2023-01-01 10:00:00\r\n",
    "cleaned_members_export_abc.csv": "Email Address,First Name,Last Name\r\n"
    "clean@example.com,Cl,Ean\r\n",
}


def _trimmed_zip(path: Path, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in {**_TRIMMED, **(extra or {})}.items():
            archive.writestr(name, text)
    return path


def test_a_trimmed_mailchimp_zip_keeps_its_files_statuses(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Without the columns that recognise Mailchimp's header, the ZIP's files
    were read as generic and everyone imported active: the unsubscribed and
    the cleaned too.  Their names still say what they hold."""
    counts = run_import(engine, settings, _trimmed_zip(tmp_path / "mc.zip"))
    assert statuses(engine) == {
        "sub@example.com": "active",
        "unsub@example.com": "unsubscribed",
        "clean@example.com": "bounced",
    }
    assert {f.format for f in counts.files} == {"mailchimp"}


def test_a_trimmed_mailchimp_zip_with_nonsubscribed_contacts_is_refused(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    name = "nonsubscribed_members_export_abc.csv"
    path = _trimmed_zip(
        tmp_path / "mc.zip", {name: "Email Address,First Name\r\nnever@example.com,Ne\r\n"}
    )
    with pytest.raises(SubscriberError, match=f"{name}: a Mailchimp file whose name does not"):
        run_import(engine, settings, path)
    assert statuses(engine) == {}


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expected"),
    [
        # Mailchimp's header without the columns that recognise it.
        ("unsubscribed_members_export_abc.csv", "Email Address,First Name\nx@example.com,X\n",
         "auto", "unsubscribed"),
        ("Cleaned_Members_Export_ABC.CSV", "Email Address\nx@example.com\n", "auto", "bounced"),
        ("my list.csv", "Email Address,UNSUB_TIME\nx@example.com,2023-01-01\n", "auto",
         "unsubscribed"),
        ("my list.csv", "Email Address,CLEAN_TIME\nx@example.com,2023-01-01\n", "auto",
         "bounced"),
        # Its email column renamed too: read as generic, still not mailable,
        # whatever a status column says (the stronger status wins).
        ("unsubscribed_members_export_abc.csv", "email,name,status\nx@example.com,X,active\n",
         "auto", "unsubscribed"),
        ("unsubscribed_members_export_abc.csv", "email\nx@example.com\n", "generic",
         "unsubscribed"),
        ("cleaned_members_export_abc.csv", "email,status\nx@example.com,complained\n", "auto",
         "complained"),
        ("export.csv", "E-Mail,UNSUB_TIME\nx@example.com,2023-01-01\n", "auto",
         "unsubscribed"),
        ("export.csv", "email,clean_time\nx@example.com,2023-01-01\n", "generic", "bounced"),
        # Another tool's file whose column is empty for those still subscribed.
        ("export.csv", "email,unsub_time\nx@example.com,\n", "generic", "active"),
        ("export.csv", "email,status,clean_time\nx@example.com,active, \n", "auto", "active"),
        # A name of one's own that merely starts with such a word says nothing.
        ("cleaned_up_list.csv", "email\nx@example.com\n", "auto", "active"),
        ("subscribed_members_export_abc.csv", "email\nx@example.com\n", "auto", "active"),
    ],
)  # fmt: skip
def test_a_mailchimp_file_that_says_its_members_left_is_never_imported_active(
    engine: Engine, settings: Settings, tmp_path: Path, name: str, text: str, fmt: str,
    expected: str,
) -> None:  # fmt: skip
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert run_import(engine, settings, path, fmt=fmt).invalid == 0
    assert statuses(engine) == {"x@example.com": expected}


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("Email Address,First Name\nnever@example.com,Ne\n", "auto"),
        ("email,name\nnever@example.com,Ne\n", "auto"),
        ("email,name\nnever@example.com,Ne\n", "generic"),
    ],
)
def test_a_single_trimmed_nonsubscribed_file_is_refused_whatever_it_is_read_as(
    engine: Engine, settings: Settings, tmp_path: Path, text: str, fmt: str
) -> None:
    path = tmp_path / "nonsubscribed_members_export_abc.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SubscriberError, match="a Mailchimp file whose name does not say"):
        run_import(engine, settings, path, fmt=fmt)
    assert statuses(engine) == {}


def _damaged_zip(path: Path, damage: str) -> Path:
    """A Mailchimp-like ZIP, password-protected, packed with a method Python
    lacks (Deflate64: Windows' for big folders), or with its deflate stream
    scrambled."""
    import struct

    body = "email\n" + "".join(f"user{i}@example.com\n" for i in range(2000))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("subscribed_members_export.csv", body)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    if damage == "encrypted":  # general purpose flag bit 0, local and central headers
        data[6] |= 1
        data[central + 8] |= 1
    elif damage == "deflate64":  # compression method 9
        data[8:10] = data[central + 10 : central + 12] = struct.pack("<H", 9)
    else:
        for i in range(120, 180):
            data[i] ^= 0x55
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("encrypted", "is password-protected"),
        ("deflate64", "is packed with a compression method Python cannot unpack"),
        ("scrambled", "is damaged"),
    ],
)
def test_a_zip_that_cannot_be_unpacked_is_one_clear_error(
    engine: Engine, settings: Settings, tmp_path: Path, damage: str, reason: str
) -> None:
    """These raised RuntimeError, NotImplementedError and zlib.error: a
    traceback instead of a line naming the file."""
    path = _damaged_zip(tmp_path / "export.zip", damage)
    with pytest.raises(SubscriberError) as caught:
        run_import(engine, settings, path)
    assert str(caught.value).startswith(f"{path}:subscribed_members_export.csv: {reason}")
    assert "unzip it" in str(caught.value) or damage == "scrambled"
    assert statuses(engine) == {}


def test_zip_without_csv(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "nothing")
    with pytest.raises(SubscriberError, match=r"the ZIP file holds no \.csv file"):
        run_import(engine, settings, path)


@pytest.mark.parametrize(
    ("name", "members", "kind"),
    [
        ("members.xlsx", {"[Content_Types].xml": "", "xl/workbook.xml": ""}, "an Excel workbook"),
        ("members.ods", {"mimetype": "application/vnd.oasis.opendocument.spreadsheet",
                         "content.xml": "", "META-INF/manifest.xml": ""},
         "an OpenDocument spreadsheet"),
        ("members.numbers", {"Index/Document.iwa": ""}, "a Numbers document"),
    ],
)  # fmt: skip
def test_a_spreadsheet_workbook_is_told_to_be_saved_as_csv(
    engine: Engine, settings: Settings, tmp_path: Path, name: str, members: dict[str, str],
    kind: str,
) -> None:  # fmt: skip
    """An .xlsx or .ods file is a ZIP too: it was "the ZIP file holds no .csv
    file", which says nothing to someone who never made a ZIP."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    with pytest.raises(SubscriberError) as caught:
        run_import(engine, settings, path)
    assert str(caught.value) == (
        f"{path}: this is {kind}, not a CSV file: save it as CSV (UTF-8) from your "
        "spreadsheet program and import that"
    )


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504),
         "this is an Excel 97-2003 workbook (.xls), not a CSV file: save it as CSV (UTF-8) "
         "from your spreadsheet program and import that"),
        # mtime=0: a gzip header holds its time, and test ids made of it
        # differed between pytest-xdist's workers when a second ticked.
        (__import__("gzip").compress(b"email\na@example.com\n", mtime=0),
         "this is a gzip file, not a CSV file: unpack it (gunzip) and import the CSV file"),
    ],
    ids=["xls", "gzip"],
)  # fmt: skip
def test_a_binary_workbook_or_gzip_file_is_named_for_what_it_is(
    engine: Engine, settings: Settings, tmp_path: Path, head: bytes, said: str
) -> None:
    """They were read as Latin-1 text: "no email column in the header (…
    found: ÐÏ\x11à¡±…)", a line of escaped binary."""
    path = tmp_path / "members.bin"
    path.write_bytes(head)
    with pytest.raises(SubscriberError) as caught:
        run_import(engine, settings, path)
    assert str(caught.value) == f"{path}: {said}"


def test_substack_email_list(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "substack_emails.csv")
    assert seen(engine, "reader@example.com").mailable
    paying = seen(engine, "paying@example.com")
    assert paying.mailable and paying.attributes["active_subscription"] == "true"
    assert seen(engine, "muted@example.com").status == "unsubscribed"


def test_substack_dashboard(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "substack_dashboard.csv")
    fan = seen(engine, "fan@example.org")
    assert fan.name == "Big Fan" and fan.mailable
    assert fan.attributes["Subscription type"] == "Free"


def test_ghost_members(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "ghost_members.csv")
    member = seen(engine, "member@example.com")
    assert member.mailable and member.attributes["labels"] == ["vip", "early"]
    assert member.attributes["note"] == "met at a conference"
    assert seen(engine, "quiet@example.com").status == "unsubscribed"
    assert seen(engine, "deleted@example.com").status == "unsubscribed"
    assert counts.new == 3


def test_ghost_labels_never_hold_an_empty_label(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """`vip, ,early` (a label deleted by hand) and a trailing comma gave an
    empty label "" beside the real ones."""
    path = tmp_path / "ghost.csv"
    path.write_text(
        'email,name,subscribed_to_emails,labels\ng@example.com,G,true,"vip, ,early, "\n',
        encoding="utf-8",
    )
    run_import(engine, settings, path)
    assert seen(engine, "g@example.com").attributes["labels"] == ["vip", "early"]


def test_listmonk_import_shape_bad_json_warns(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "listmonk_import.csv", fmt="listmonk")
    assert seen(engine, "dev@example.com").attributes == {"city": "Bengaluru", "projects": 3}
    broken = seen(engine, "broken.json@example.com")
    assert broken.mailable and broken.attributes == {}
    assert counts.warnings == 1 and counts.invalid == 0
    warning = counts.problems[0]
    assert (warning.line, warning.severity) == (3, "warning")
    assert warning.message.startswith("attributes are not a JSON object")


def test_listmonk_export_shape(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "listmonk_export.csv")
    on = seen(engine, "on@example.com")
    assert on.mailable and on.attributes == {"uuid": "5e9a-1", "plan": "pro"}
    assert seen(engine, "blocked@example.com").status == "unsubscribed"
    assert not seen(engine, "off@example.com").mailable


def test_beehiiv(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "beehiiv.csv")
    bee = seen(engine, "bee@example.com")
    assert bee.mailable and bee.name == "Bee Keeper" and bee.attributes["tier"] == "free"
    assert seen(engine, "left@example.com").status == "unsubscribed"
    assert seen(engine, "late@example.com").status == "unsubscribed"
    wait = seen(engine, "wait@example.com")
    assert (wait.status, wait.mailable) == ("pending", False)


def test_buttondown(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "buttondown.csv")
    got = {e: seen(engine, f"{e}@example.com").status for e in
           ("regular", "new", "out", "spam", "dead", "odd")}  # fmt: skip
    assert got == {
        "regular": "active",
        "new": "pending",
        "out": "unsubscribed",
        "spam": "complained",
        "dead": "bounced",
        "odd": "pending",
    }
    assert [p.message for p in counts.problems] == [
        "unknown subscriber_type 'mystery'; imported as pending (not mailable)"
    ]


def test_kit(engine: Engine, settings: Settings) -> None:
    run_import(engine, settings, FIXTURES / "kit.csv")
    got = {e: seen(engine, f"{e}@example.com").status for e in
           ("kit", "cold", "cancel", "bounce", "complain", "unconfirmed")}  # fmt: skip
    assert got == {
        "kit": "active",
        "cold": "active",
        "cancel": "unsubscribed",
        "bounce": "bounced",
        "complain": "complained",
        "unconfirmed": "pending",
    }
    assert seen(engine, "kit@example.com").name == "Kit"


def test_forced_format_on_generic_file(engine: Engine, settings: Settings) -> None:
    counts = run_import(engine, settings, FIXTURES / "utf8_tab.tsv", fmt="generic")
    assert counts.new == 1


def test_problem_items_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("email\nnot-an-address\n", encoding="utf-8")
    items = list(read_source(path))
    assert not any(isinstance(i, Problem) for i in items)  # validation happens later
    assert [(i.line, i.email) for i in items if isinstance(i, SourceRow)] == [(2, "not-an-address")]


def test_generic_status_words(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "email,status\na@example.com,Subscribed\nb@example.com,cleaned\nc@example.com,VIP\n"
        "d@example.com,\n",
        encoding="utf-8",
    )
    counts = run_import(engine, settings, path)
    got = {e: seen(engine, f"{e}@example.com").status for e in "abcd"}
    assert got == {"a": "active", "b": "bounced", "c": "pending", "d": "active"}
    assert [(p.line, p.message) for p in counts.problems] == [
        (4, "unknown status 'vip'; imported as pending (not mailable)")
    ]


def test_headerless_list_of_addresses(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "pasted.csv"
    path.write_text("one@example.com,One\ntwo@example.com\nnot-an-address\n", encoding="utf-8")
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (2, 1)
    assert seen(engine, "one@example.com").name == "One"
    assert [p.line for p in counts.problems] == [3]


def test_cells_beyond_the_header_are_a_warning_not_lost_silently(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """An unquoted comma in a name (`Smith, John`) makes a row longer than
    the header: the row is imported, and the cells that fit no column are
    named in a warning (they were dropped without a word).  Empty trailing
    cells (a spreadsheet's ragged rows) are nothing to report."""
    path = tmp_path / "ragged.csv"
    path.write_text(
        "email,name\nsmith@example.com,Smith, John\nok@example.com,Ok,,\nshort@example.com\n",
        encoding="utf-8",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.warnings) == (3, 0, 1)
    assert [(p.line, p.severity, p.message) for p in counts.problems] == [
        (2, "warning", "1 cell more than the header's 2 columns, not imported: 'John'")
    ]
    assert seen(engine, "smith@example.com").name == "Smith"


def test_repeated_and_blank_header_names_keep_every_column(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Two columns of one name, or several without a name: each cell is kept
    under a name of its own, where the last cell of a name overwrote the
    others and a second `name` column (case aside) was dropped."""
    path = tmp_path / "repeated.csv"
    path.write_text(
        "email,name,Name,tag,tag,Tag,,\nr@example.com,Ann,Anna,red,blue,pink,x,y\n",
        encoding="utf-8",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.warnings) == (1, 0)
    got = seen(engine, "r@example.com")
    assert got.name == "Ann"
    assert got.attributes == {
        "Name": "Anna", "tag": "red", "tag 2": "blue", "Tag": "pink", "column 7": "x",
        "column 8": "y",
    }  # fmt: skip


def test_a_time_out_of_range_is_ignored_not_the_whole_row(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A subscribed-since time that exists but not in UTC (year 1 east of
    Greenwich, 9999-12-31 west of it) is unreadable like any other: the
    subscriber is imported without it.  OverflowError threw the row away."""
    path = tmp_path / "times.csv"
    path.write_text(
        "email,name,status,subscribed_at\n"
        "early@example.com,E,active,0001-01-01T00:00:00+05:00\n"
        "late@example.com,L,active,9999-12-31T23:59:59-01:00\n",
        encoding="utf-8",
    )
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.problems) == (2, 0, [])
    assert seen(engine, "early@example.com").mailable and seen(engine, "late@example.com").mailable


def test_oversized_field_is_one_bad_row(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    huge = "x" * 200_000  # over csv's default 128 kB field limit
    path.write_text(
        f"email,name\na@example.com,A\nb@example.com,{huge}\nc@example.com,C\n", encoding="utf-8"
    )
    counts = run_import(engine, settings, path)
    assert counts.new == 2 and counts.invalid == 1
    assert counts.problems[0].line == 3
    assert counts.problems[0].message.startswith("unreadable row: field larger than field limit")
    assert seen(engine, "c@example.com").mailable


@pytest.mark.parametrize(
    ("encoding", "bom", "expected"),
    [
        ("utf-16-le", b"", "utf-16-le"),
        ("utf-16-be", b"", "utf-16-be"),
        ("utf-16-be", b"\xfe\xff", "utf-16"),
        ("utf-8", b"", "utf-8"),
    ],
)
def test_encodings_without_and_with_bom(
    tmp_path: Path, encoding: str, bom: bytes, expected: str
) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(bom + "email\tname\r\nrene@example.com\tRené\r\n".encode(encoding))
    infos: list = []
    rows = [r for r in read_source(path, infos=infos) if isinstance(r, SourceRow)]
    assert infos[0].encoding == expected
    assert [(r.email, r.name) for r in rows] == [("rene@example.com", "René")]


def test_progress_reports_bytes_up_to_the_size(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(150_000)))
    seen_bytes: list[int] = []
    rows = sum(1 for _ in read_source(path, progress=seen_bytes.append))
    assert rows == 150_000
    assert seen_bytes == sorted(seen_bytes) and len(seen_bytes) >= 3
    assert seen_bytes[-1] == path.stat().st_size


def test_our_own_export_keeps_its_status_though_it_carries_an_unsub_time_attribute(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    # Another tool's file with an `unsub_time` column: the filled rows are
    # unsubscribed and the column is kept as an attribute.  The owner then
    # resubscribes one; our export says `active` and carries the attribute,
    # and importing it elsewhere (a move to PostgreSQL) undid the resubscribe.
    import io

    from newsletter.audience import members as subs
    from newsletter.audience.subscribers import export_list

    source = tmp_path / "other-tool.csv"
    source.write_text("email,unsub_time\nx@example.com,2023-01-01\ny@example.com,\n")
    run_import(engine, settings, source)
    assert statuses(engine) == {"x@example.com": "unsubscribed", "y@example.com": "active"}
    found = subs.get_by_email(engine, "x@example.com")
    assert found is not None
    subs.resubscribe(engine, found.id, "news", source="owner")
    out = io.StringIO()
    export_list(engine, "news", out)
    backup = tmp_path / "backup.csv"
    backup.write_text(out.getvalue(), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = make_engine(elsewhere, settings)
    run_import(moved, settings, backup)
    assert statuses(moved) == {"x@example.com": "active", "y@example.com": "active"}
