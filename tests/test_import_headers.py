"""The email column found under the headers localized spreadsheets and
mail programs give it (German, French, Spanish, Dutch …), imported for real."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from sqlalchemy import Engine
from test_subscribers_common import make_engine, make_settings, run_import, seen

from newsletter.audience.csvformats import sniff_delimiter
from newsletter.config import Settings

HEADERS = [
    "E-Mail-Adresse",  # German Outlook / Excel
    "E-Mail Adresse",
    "E-Mail",
    "Adresse e-mail",  # French
    "Adresse électronique",
    "Courriel",
    "Correo electrónico",  # Spanish
    "Correo electronico",
    "E-mailadres",  # Dutch
    "Indirizzo email",  # Italian
]


@pytest.fixture
def settings() -> Settings:
    return make_settings("news")


@pytest.fixture
def engine(tmp_path: Path, settings: Settings) -> Engine:
    return make_engine(tmp_path, settings)


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_a_localized_email_header_is_the_email_column(
    engine: Engine, settings: Settings, tmp_path: Path, header: str, encoding: str
) -> None:
    """`E-Mail-Adresse;Vorname` was "no email column in the header"."""
    path = tmp_path / "export.csv"
    text = f"{header};Vorname;Stadt\r\nzoe@example.com;Zoë;Köln\r\nbad-address;Max;Bonn\r\n"
    path.write_bytes(text.encode(encoding))
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid, counts.files[0].delimiter) == (1, 1, ";")
    assert "invalid email address 'bad-address'" in str(counts.problems[0])
    zoe = seen(engine, "zoe@example.com")
    assert zoe.mailable and zoe.name == "Zoë"
    assert zoe.attributes == {"Stadt": "Köln"}  # the address is not kept as an attribute too


def test_a_decomposed_accent_in_the_header_is_the_same_header(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """A header typed on macOS may carry `ó` as `o` + a combining accent."""
    header = unicodedata.normalize("NFD", "Correo electrónico")
    assert header != "Correo electrónico"
    path = tmp_path / "export.csv"
    path.write_text(f"{header},Nombre\nana@example.com,Ana\n", encoding="utf-8")
    counts = run_import(engine, settings, path)
    assert (counts.new, counts.invalid) == (1, 0)
    assert seen(engine, "ana@example.com").name == "Ana"


def test_the_delimiter_is_the_one_that_finds_a_localized_email_header() -> None:
    # Three commas in a column name outnumber the one semicolon.
    assert sniff_delimiter("E-Mail-Adresse;Notiz (a, b, c)\r\n") == ";"
