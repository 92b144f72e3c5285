"""`subscribers import` under generated hostile files: never a traceback.

Hypothesis writes CSV files (every supported service's header, random bytes,
BOMs, NULs, deeply nested JSON in attribute cells, cells over the csv module's
field limit, formula cells) and feeds them to the command through click's
CliRunner; a few fixed nasty files also go through the real CLI.  Each run
must end with exit status 0 or 1, no traceback, and every problem line must
name the file (and the row, for a row's problem).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.cli import main

HEADERS = {
    "generic": ["email", "name", "note"],
    "newsletter": ["email", "name", "status", "subscribed_at", "city", "score"],
    "mailchimp": ["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME"],
    "substack": ["email", "active_subscription", "expiry", "email_disabled", "created_at"],
    "substack_dashboard": ["Email", "Name", "Subscription type", "Start date", "Revenue"],
    "ghost": ["id", "email", "name", "note", "subscribed_to_emails", "created_at", "deleted_at",
              "labels"],
    "listmonk": ["uuid", "email", "name", "attributes", "status", "created_at", "updated_at"],
    "listmonk_import": ["email", "name", "attributes"],
    "beehiiv": ["email", "First Name", "Last Name", "status", "tier", "created_at",
                "unsubscribed_at"],
    "buttondown": ["email", "notes", "metadata", "tags", "creation_date", "subscriber_type"],
    "kit": ["first_name", "email_address", "state", "created_at", "tags"],
}  # fmt: skip
CONFIG = """
[site]
title = "Fuzz"
url = "https://fuzz.example.com"
posts_dir = "posts"

[email]
from = "Fuzz <news@example.com>"

[database]
url = "sqlite:///{db}"

[lists.news]
title = "News"
"""


def nested(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    if opener == "{":
        return '{"a":' * depth + "1" + closer * depth
    return opener * depth + closer * depth


emails = st.one_of(
    st.sampled_from(["ada@example.com", "Grace@Example.org", " linus@example.net ", ""]),
    st.from_regex(r"[a-z]{1,70}@[a-z]{1,10}\.example", fullmatch=True),
    st.text(max_size=30),
)
nasty_cells = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list(",;\t|\"\r\n\x00\ufeff=+-@'{}[]:")), max_size=40),
    st.integers(min_value=1, max_value=3000).map(lambda n: nested(n)),
    st.integers(min_value=1, max_value=3000).map(lambda n: nested(n, "{")),
    st.sampled_from(['{"a": 1}', "[1, 2]", "true", "null", '"text"', "{not json", "[]"]),
    st.sampled_from(["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "'=1+1", "\t=1"]),
    st.sampled_from([131_072, 131_073, 140_000]).map(lambda n: "x" * n),  # csv's limit
    st.sampled_from(["active", "unsubscribed", "true", "false", "2024-05-01T00:00:00Z", "bogus"]),
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2000))
    header = draw(
        st.one_of(st.sampled_from(list(HEADERS.values())), st.lists(st.text(), max_size=5))
    )
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        cells = [draw(nasty_cells) for _ in header]
        if cells:
            cells[0 if "email" in header[0].lower() else min(1, len(cells) - 1)] = draw(emails)
        rows.append(cells)
    lines = [delimiter.join(_quote(c, delimiter) for c in header)]
    lines += [delimiter.join(_quote(c, delimiter) for c in row) for row in rows]
    text = "\r\n".join(lines) + draw(st.sampled_from(["", "\r\n", "\n", '"']))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"]))
    data = text.encode(encoding, errors="replace")
    junk = draw(st.sampled_from([b"", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\x00\x00\x00"]))
    return data + junk if draw(st.booleans()) else junk + data


def _quote(cell: str, delimiter: str) -> str:
    if any(c in cell for c in (delimiter, '"', "\r", "\n")):
        return '"' + cell.replace('"', '""') + '"'
    return cell


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "posts").mkdir()
    (root / "newsletter.toml").write_text(CONFIG.format(db=root / "fuzz.db"), encoding="utf-8")
    return root


def assert_clean(code: int | None, stderr: str, path: Path) -> None:
    """Exit 0/1, no traceback; a row's problem reads `path:line: error|warning: …`,
    the file's own (it cannot be read at all) `error: path[:line]: …`."""
    assert code in (0, 1), stderr
    assert "Traceback" not in stderr, stderr
    row = re.compile(rf"^{re.escape(str(path))}:\d+: (error|warning): \S")
    whole = re.compile(rf"^error: {re.escape(str(path))}(:\d+)?: \S")
    for line in stderr.splitlines():
        assert line.startswith("... and ") or row.match(line) or whole.match(line), line


@settings(
    max_examples=40,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(data=csv_files(), fmt=st.sampled_from(["auto", "auto", "newsletter", "listmonk"]))
def test_generated_files_never_end_in_a_traceback(site: Path, data: bytes, fmt: str) -> None:
    path = site / "fuzzed.csv"
    path.write_bytes(data)
    args = ["--config", str(site / "newsletter.toml"), "subscribers", "import", str(path)]
    result = CliRunner().invoke(main, [*args, "--list", "news", "--format", fmt])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert_clean(result.exit_code, result.stderr, path)


NASTY = {
    "listmonk_deep.csv": "email,name,attributes\r\nada@example.com,Ada,"
    + json.dumps(nested(100_000))
    + "\r\ngrace@example.com,Grace,{}\r\n",
    "export_deep.csv": "email,name,status,subscribed_at,prefs\r\n"
    "ada@example.com,Ada,active,2024-05-01T00:00:00+00:00," + nested(5000, "{") + "\r\n",
    "nul_bom.csv": "\ufeffemail,name\r\nada@example.com,A\x00da\r\n\x00\x00\r\n",
    # A header cell over the csv module's field limit (131,072 characters):
    # found by the fuzzer above as a UTF-16 BOM before ASCII, one huge "line".
    "huge_header.csv": 'email,"' + "x" * 140_000 + '"\r\nada@example.com,Ada\r\n',
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_nasty_files_through_the_real_cli(site: Path, name: str) -> None:
    path = site / name
    path.write_text(NASTY[name], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site / "newsletter.toml"),
         "subscribers", "import", str(path), "--list", "news"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert_clean(done.returncode, done.stderr, path)
    assert "ada@example.com" not in done.stderr or ":2: " in done.stderr
