"""`newsletter subscribers …` and `newsletter lists` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_subscribers_common import FIXTURES

from newsletter.cli import main


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_every_subscribers_command_has_help(sample_site: Path) -> None:
    for command in ("import", "export", "add", "remove", "unsubscribe", "resubscribe", "list",
                    "sync"):  # fmt: skip
        result = cli("subscribers", command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout, command
    assert "never commit real ones" in cli("subscribers", "--help").stdout
    # sync deletes memberships: its help says so, not only "mirror".
    assert "no longer in their list's file are taken off" in " ".join(
        cli("subscribers", "sync", "--help").stdout.split()
    )
    assert cli("lists", "--help").exit_code == 0


def test_import_ok_then_summary(sample_site: Path) -> None:
    result = cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "sample: imported 3 rows: 3 new, 0 updated, 0 unchanged, 0 kept suppressed, "
        "0 invalid, 0 duplicates merged"
    )
    assert "kept suppressed" in result.stdout and result.stderr == ""


def test_import_with_bad_rows_exits_1_and_names_lines(sample_site: Path) -> None:
    path = FIXTURES / "bad_rows.csv"
    result = cli("subscribers", "import", str(path), "--list", "sample")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 6
    assert lines[0] == (
        f"{path}:3: error: invalid email address 'no-at-sign.example.com': "
        "An email address must have an @-sign."
    )
    assert lines[1] == f"{path}:4: error: no email address"
    assert "5 new" in result.stdout and "6 invalid" in result.stdout


def test_import_json_and_dry_run(sample_site: Path) -> None:
    result = cli(
        "subscribers", "import", "subscribers/sample.csv", "--list", "sample", "--dry-run", "--json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["new"] == 3 and data["list"] == "sample"
    listed = cli("subscribers", "list", "--list", "sample")
    assert listed.exit_code == 0 and listed.stdout == ""


def test_import_errors(sample_site: Path) -> None:
    result = cli("subscribers", "import", "missing.csv", "--list", "sample")
    assert (result.exit_code, result.stderr) == (1, "error: missing.csv: file not found\n")
    result = cli("subscribers", "import", "subscribers/sample.csv", "--list", "nope")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: newsletter.toml: lists.nope: unknown list 'nope' "
        "(lists in the configuration: sample, weekly)\n"
    )
    result = cli("subscribers", "import", "x.csv", "--list", "sample", "--format", "myspace")
    assert result.exit_code == 2
    assert cli("subscribers", "import", "x.csv").exit_code == 2  # --list is required


def test_add_list_unsubscribe_resubscribe_remove(sample_site: Path) -> None:
    add = cli("subscribers", "add", "Ada@Example.com", "--list", "sample", "--name", "Ada")
    assert (add.exit_code, add.stdout) == (0, "added Ada@example.com to sample\n")
    bad = cli("subscribers", "add", "nobody", "--list", "sample")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: invalid email address 'nobody'")
    listed = cli("subscribers", "list", "--list", "sample")
    assert listed.stdout == "Ada@example.com\tactive\tAda\n"

    off = cli("subscribers", "unsubscribe", "ada@example.com")
    assert off.stdout == "unsubscribed Ada@example.com from every list\n"
    again = cli("subscribers", "unsubscribe", "ada@example.com")
    assert again.stdout == "Ada@example.com was already unsubscribed from every list\n"
    readd = cli("subscribers", "add", "ada@example.com", "--list", "sample")
    assert readd.stdout == (
        "added Ada@example.com to sample, but it stays unsubscribed (cli) and gets no mail; "
        "only with their consent, lift it with "
        "`newsletter subscribers resubscribe Ada@example.com`\n"
    )
    data = json.loads(cli("subscribers", "list", "--list", "sample", "--json").stdout)
    assert [(d["email"], d["status"]) for d in data] == [("Ada@example.com", "unsubscribed")]
    only_active = cli("subscribers", "list", "--list", "sample", "--status", "active", "--json")
    assert json.loads(only_active.stdout) == []

    back = cli("subscribers", "resubscribe", "ada@example.com")
    assert back.stdout == "resubscribed Ada@example.com to every list\n"
    removed = cli("subscribers", "remove", "ada@example.com", "--list", "sample")
    assert removed.stdout == "removed Ada@example.com from sample\n"
    missing = cli("subscribers", "remove", "who@example.com", "--list", "sample")
    assert (missing.exit_code, missing.stderr) == (
        1,
        "error: no subscriber with address 'who@example.com'\n",
    )


def test_adding_an_address_unsubscribed_from_that_list_says_it_stays_so(
    sample_site: Path,
) -> None:
    cli("subscribers", "add", "a@example.com", "--list", "sample")
    cli("subscribers", "unsubscribe", "a@example.com", "--list", "sample")
    readd = cli("subscribers", "add", "a@example.com", "--list", "sample")
    assert readd.exit_code == 0
    assert readd.stdout == (
        "added a@example.com to sample, but it stays unsubscribed from sample and gets no "
        "mail from it; only with their consent, lift it with "
        "`newsletter subscribers resubscribe a@example.com --list sample`\n"
    )
    listed = cli("subscribers", "list", "--list", "sample")
    assert listed.stdout == "a@example.com\tunsubscribed\n"
    other = cli("subscribers", "add", "a@example.com", "--list", "weekly")
    assert other.stdout == "added a@example.com to weekly\n"  # another list: nothing to say


def test_per_list_unsubscribe(sample_site: Path) -> None:
    cli("subscribers", "add", "a@example.com", "--list", "sample")
    cli("subscribers", "add", "a@example.com", "--list", "weekly")
    result = cli("subscribers", "unsubscribe", "a@example.com", "--list", "weekly")
    assert result.stdout == "unsubscribed a@example.com from weekly\n"
    data = json.loads(cli("lists", "--json").stdout)
    counts = {d["name"]: d["counts"] for d in data}
    assert counts["sample"]["active"] == 1
    assert counts["weekly"] == {
        "active": 0,
        "pending": 0,
        "unsubscribed": 1,
        "bounced": 0,
        "complained": 0,
    }
    assert {d["name"]: d["title"] for d in data}["weekly"] == "Field Notes weekly digest"
    table = cli("lists").stdout
    assert "sample" in table and "Field Notes" in table


def test_export_to_file_and_stdout(sample_site: Path) -> None:
    cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample")
    result = cli("subscribers", "export", "--list", "sample", "-o", "out.csv")
    assert result.exit_code == 0
    assert result.stderr == "exported 3 members of sample to out.csv\n"
    text = Path("out.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "email,name,status,subscribed_at"
    stdout = cli("subscribers", "export", "--list", "sample", "--status", "bounced")
    assert stdout.stdout_bytes == b"email,name,status,subscribed_at\r\n"  # RFC 4180 CRLF


def test_sync_sample_and_unknown_list(sample_site: Path) -> None:
    result = cli("subscribers", "sync")
    assert result.exit_code == 0, result.output
    assert "sample: imported 3 rows: 3 new" in result.stdout
    second = cli("subscribers", "sync", "--json")
    assert json.loads(second.stdout)[0]["unchanged"] == 3
    Path("subscribers/typo.csv").write_text("email\nx@example.com\n", encoding="utf-8")
    bad = cli("subscribers", "sync")
    assert bad.exit_code == 1
    assert bad.stderr == (
        "subscribers/typo.csv: error: no list 'typo' in the configuration "
        "(declared: sample, weekly); add [lists.typo] or rename the file\n"
    )


def test_a_forced_format_the_header_does_not_fit_is_an_error(sample_site: Path) -> None:
    path = FIXTURES / "substack_emails.csv"
    result = cli("subscribers", "import", str(path), "--list", "sample", "--format", "mailchimp")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: {path}:1: --format mailchimp expects a column 'email address', which the "
        "header lacks (email, active_subscription,"
    )
    assert result.stderr.endswith(
        "this file looks like a substack export: try --format substack or --format auto\n"
    )
    assert len(result.stderr.splitlines()) == 1
    assert cli("subscribers", "list", "--list", "sample").stdout == ""  # nothing written


def test_the_format_used_is_printed_and_in_json(sample_site: Path) -> None:
    path = FIXTURES / "substack_emails.csv"
    shown = cli("subscribers", "import", str(path), "--list", "sample", "--dry-run")
    assert shown.stdout.splitlines()[0] == (
        f"{path}: read as substack (detected from its header; utf-8, ',')"
    )
    forced = cli(
        "subscribers", "import", str(path), "--list", "sample", "--format", "substack", "--json"
    )
    data = json.loads(forced.stdout)
    assert data["format"] == "substack"
    assert data["files"] == [
        {"file": str(path), "format": "substack", "detected": False, "encoding": "utf-8",
         "delimiter": ","}
    ]  # fmt: skip


def test_a_pipe_is_refused_with_a_clear_line_not_read_as_empty(sample_site: Path) -> None:
    """`import <(unzip -p export.zip)` hands over a pipe (/dev/fd/N): an import
    reads its file twice (the encoding first), and the second read of a pipe
    found nothing, which was reported as "the file is empty"."""
    import os

    read_end, write_end = os.pipe()
    os.write(write_end, b"email\npiped@example.com\n")
    os.close(write_end)
    try:
        result = cli("subscribers", "import", f"/dev/fd/{read_end}", "--list", "sample")
    finally:
        os.close(read_end)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: /dev/fd/{read_end}: not a regular file (a pipe or a device cannot be "
        "read twice, and an import reads its file twice); save it to a file and import that\n"
    )
    assert cli("subscribers", "list", "--list", "sample").stdout == ""


def test_remove_says_whether_it_was_never_on_the_list_or_stays_unsubscribed(
    sample_site: Path,
) -> None:
    """`remove` of someone not on the list said "(an unsubscribe stays
    recorded)" whether or not there was any unsubscribe to keep."""
    cli("subscribers", "add", "a@example.com", "--list", "sample")
    never = cli("subscribers", "remove", "a@example.com", "--list", "weekly")
    assert (never.exit_code, never.stdout) == (0, "a@example.com is not on weekly\n")
    cli("subscribers", "unsubscribe", "a@example.com", "--list", "sample")
    kept = cli("subscribers", "remove", "a@example.com", "--list", "sample")
    assert (kept.exit_code, kept.stdout) == (
        0,
        "a@example.com stays recorded as unsubscribed from sample, so that no import "
        "or sync adds it back\n",
    )
    assert cli("subscribers", "list", "--list", "sample").stdout == "a@example.com\tunsubscribed\n"


def test_resubscribe_of_someone_never_unsubscribed_says_nothing_changed(
    sample_site: Path,
) -> None:
    cli("subscribers", "add", "a@example.com", "--list", "sample")
    result = cli("subscribers", "resubscribe", "a@example.com")
    assert (result.exit_code, result.stdout) == (
        0,
        "a@example.com was not unsubscribed from every list; nothing changed\n",
    )
    on_list = cli("subscribers", "resubscribe", "a@example.com", "--list", "sample")
    assert on_list.stdout == "a@example.com was not unsubscribed from sample; nothing changed\n"
    assert "resubscribe" not in cli("subscribers", "show", "a@example.com").stdout


def test_unsubscribe_of_a_bounced_address_says_it_is_bounced(sample_site: Path) -> None:
    """It said "was already unsubscribed" of an address that never was,
    but bounced (or complained): a different record, for a different reason."""
    Path("bounced.csv").write_text("email,status\nb@example.com,bounced\n", encoding="utf-8")
    assert cli("subscribers", "import", "bounced.csv", "--list", "sample").exit_code == 0
    result = cli("subscribers", "unsubscribe", "b@example.com")
    assert (result.exit_code, result.stdout) == (
        0,
        "b@example.com is already bounced (import: bounced), which stops all its mail; "
        "nothing changed\n",
    )
    cli("subscribers", "add", "u@example.com", "--list", "sample")
    cli("subscribers", "unsubscribe", "u@example.com")
    again = cli("subscribers", "unsubscribe", "u@example.com")
    assert again.stdout == "u@example.com was already unsubscribed from every list\n"


def test_a_name_with_line_breaks_cannot_forge_lines_of_the_listing(sample_site: Path) -> None:
    """A name comes from anyone who signs up (the public form takes any
    text): one holding a newline and tabs printed as a second member, with
    any status, in `subscribers list`, which scripts read line by line."""
    from newsletter.audience.members import add_subscriber, ensure_lists
    from newsletter.config import load_settings
    from newsletter.store import open_store

    forged = "Eve\nmallory@example.com\tactive\tMallory"
    # Stored as it came (a store written before names were made one line).
    settings = load_settings(sample_site / "newsletter.toml")
    engine = open_store(settings)
    ensure_lists(engine, settings)
    add_subscriber(engine, "eve@example.com", "sample", name=forged)
    engine.dispose()
    listed = cli("subscribers", "list", "--list", "sample")
    assert listed.stdout == (
        "eve@example.com\tactive\tEve\\x0amallory@example.com\\x09active\\x09Mallory\n"
    )
    shown = cli("subscribers", "show", "eve@example.com").stdout.splitlines()[0]
    assert shown == "eve@example.com · Eve\\x0amallory@example.com\\x09active\\x09Mallory: active"
    data = json.loads(cli("subscribers", "list", "--list", "sample", "--json").stdout)
    assert data[0]["name"] == forged  # JSON carries it exactly


def test_a_name_given_to_add_is_stored_as_one_line(sample_site: Path) -> None:
    """`add --name` with a pasted line break, a tab or an escape character
    stored them, and every email's greeting then had a paragraph of its own."""
    pasted = "Ada\r\n  Lovelace\t\x1b[31m"
    assert (
        cli("subscribers", "add", "ada@example.com", "--list", "sample", "--name", pasted).exit_code
        == 0
    )
    data = json.loads(cli("subscribers", "list", "--list", "sample", "--json").stdout)
    assert [m["name"] for m in data] == ["Ada Lovelace [31m"]


def test_a_full_disk_under_standard_output_is_one_line_not_a_traceback(
    sample_site: Path,
) -> None:
    """`subscribers export > backup.csv` on a full disk (here /dev/full) was
    an OSError traceback; `list` too."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        import pytest

        pytest.skip("needs /dev/full")
    cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample")
    for command in ("export", "list"):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "newsletter", "subscribers", command, "--list", "sample"],
                stdout=full, stderr=subprocess.PIPE, text=True, cwd=sample_site, check=False,
            )  # fmt: skip
        assert (done.returncode, done.stderr) == (
            1,
            "error: cannot write to standard output: No space left on device\n",
        ), command


def test_a_bounce_reason_from_a_returned_message_stays_on_its_line(sample_site: Path) -> None:
    """A bounce's reason quotes the returned message (anyone can mail the
    bounce address): `show` and `add` printed its line breaks raw."""
    from newsletter.audience.members import get_by_email, mark_bounced
    from newsletter.config import load_settings
    from newsletter.store import open_store

    cli("subscribers", "add", "b@example.com", "--list", "sample")
    engine = open_store(load_settings(sample_site / "newsletter.toml"))
    row = get_by_email(engine, "b@example.com")
    assert row is not None
    mark_bounced(engine, row.id, reason="bounce 5.1.1: gone\nforged@example.com: active")
    engine.dispose()
    shown = cli("subscribers", "show", "b@example.com").stdout.splitlines()
    assert shown[0] == "b@example.com: bounced (bounce 5.1.1: gone\\x0aforged@example.com: active)"
    added = cli("subscribers", "add", "b@example.com", "--list", "weekly").stdout
    assert added.count("\n") == 1 and "gone\\x0aforged" in added


def test_import_json_includes_the_problems(sample_site: Path) -> None:
    """`--json` gave only the counts: the rows skipped (file, line, reason)
    were on stderr alone, for a script to parse out of text."""
    path = FIXTURES / "bad_rows.csv"
    result = cli("subscribers", "import", str(path), "--list", "sample", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["invalid"] == 6 and len(data["problems"]) == 6 + data["warnings"]
    assert data["problems"][:2] == [
        {
            "severity": "error",
            "path": str(path),
            "line": 3,
            "key": None,
            "message": "invalid email address 'no-at-sign.example.com': "
            "An email address must have an @-sign.",
        },
        {"severity": "error", "path": str(path), "line": 4, "key": None,
         "message": "no email address"},
    ]  # fmt: skip
    assert data["problems_not_listed"] == 0
    assert len(result.stderr.splitlines()) == 6  # the text report stays on stderr


def test_import_json_says_how_many_problems_it_left_out(sample_site: Path) -> None:
    from newsletter.audience.importcounts import MAX_PROBLEMS

    rows = "".join(f"bad{i}\n" for i in range(MAX_PROBLEMS + 5))
    Path("many.csv").write_text("email\nok@example.com\n" + rows, encoding="utf-8")
    result = cli("subscribers", "import", "many.csv", "--list", "sample", "--json")
    data = json.loads(result.stdout)
    assert (data["new"], data["invalid"]) == (1, MAX_PROBLEMS + 5)
    assert len(data["problems"]) == MAX_PROBLEMS and data["problems_not_listed"] == 5
    assert data["problems"][-1]["line"] == MAX_PROBLEMS + 2


def _members(list_name: str) -> dict[str, str]:
    rows = json.loads(cli("subscribers", "list", "--list", list_name, "--json").stdout)
    return {row["email"]: row["status"] for row in rows}


def test_resubscribe_to_one_list_lifts_a_global_unsubscribe_for_that_list_only(
    sample_site: Path,
) -> None:
    """The person re-consented to one list: the others they left with the
    global unsubscribe stay left (it made them mailable on every list)."""
    for name in ("sample", "weekly"):
        cli("subscribers", "add", "g@example.com", "--list", name)
    cli("subscribers", "unsubscribe", "g@example.com")
    result = cli("subscribers", "resubscribe", "g@example.com", "--list", "sample")
    assert result.exit_code == 0, result.output
    assert "resubscribed g@example.com to sample" in result.stdout
    assert "stays unsubscribed from weekly" in result.stdout
    assert _members("sample")["g@example.com"] == "active"
    assert _members("weekly").get("g@example.com", "unsubscribed") != "active"
    shown = json.loads(cli("subscribers", "show", "g@example.com", "--json").stdout)
    assert shown["lists"]["weekly"] is not None  # unsubscribed from it (its time)


def test_resubscribe_does_not_skip_a_pending_signups_confirmation(sample_site: Path) -> None:
    path = sample_site / "pending.csv"
    path.write_text("email,status\np@example.com,pending\n", encoding="utf-8")
    assert cli("subscribers", "import", str(path), "--list", "sample").exit_code == 0
    added = cli("subscribers", "add", "p@example.com", "--list", "weekly")
    assert "resubscribe" not in added.stdout and "pending" in added.stdout
    result = cli("subscribers", "resubscribe", "p@example.com")
    assert result.exit_code == 1
    assert "pending" in result.stderr and "confirm" in result.stderr
    assert _members("sample")["p@example.com"] == "pending"


@pytest.mark.usefixtures("database_env")
def test_a_name_argument_that_is_not_utf8_is_stored_with_a_replacement_character(
    sample_site: Path,
) -> None:
    """A byte that is not UTF-8 in argv reaches Python as a lone surrogate
    (surrogateescape), which no database driver can write: a traceback.
    It becomes U+FFFD, as everywhere else a name is stored."""
    added = cli("subscribers", "add", "rene@example.com", "--list", "sample", "--name", "Ren\udce9")
    assert added.exit_code == 0, added.output
    again = cli(
        "subscribers", "add", "rene@example.com", "--list", "sample", "--name", "\udce9mile"
    )
    assert again.exit_code == 0, again.output
    data = json.loads(cli("subscribers", "list", "--list", "sample", "--json").stdout)
    assert [m["name"] for m in data] == ["\ufffdmile"]


def test_a_mailchimp_zip_with_a_file_of_unknown_status_is_refused(sample_site: Path) -> None:
    import zipfile

    header = '"Email Address","First Name",MEMBER_RATING,OPTIN_TIME,LEID\n'
    with zipfile.ZipFile("export.zip", "w") as archive:
        archive.writestr("subscribed_members_export_abc.csv", header + "in@example.com,In,1,,1\n")
        archive.writestr(
            "nonsubscribed_members_export_abc.csv", header + "no@example.com,No,1,,2\n"
        )
    result = cli("subscribers", "import", "export.zip", "--list", "sample")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: export.zip:nonsubscribed_members_export_abc.csv: a Mailchimp file whose name "
        "does not say its members' status"
    )
    assert _members("sample") == {}


def test_a_list_left_out_of_the_configuration_is_named_where_lists_are_shown(
    sample_site: Path,
) -> None:
    """Renaming [lists.sample] (and its file) starts an empty list under the
    new name; the old one keeps its members and their unsubscribes, silently."""
    assert cli("subscribers", "sync").exit_code == 0
    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text().replace("[lists.sample]", "[lists.samples]"))
    (sample_site / "subscribers" / "sample.csv").rename(sample_site / "subscribers/samples.csv")
    warning = (
        "warning: list 'sample' (3 members in the store) is not in newsletter.toml: "
        "renamed or removed?"
    )
    shown = cli("lists")
    assert shown.exit_code == 0 and warning in shown.stderr, shown.stderr
    synced = cli("subscribers", "sync")
    assert synced.exit_code == 0 and warning in synced.stderr, synced.stderr


def test_show_of_something_that_is_no_address_says_so(sample_site: Path) -> None:
    result = cli("subscribers", "show", "not-an-address")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid email address 'not-an-address': ")


@pytest.mark.parametrize(
    "command",
    [
        ("subscribers", "import", "subscribers/sample.csv", "--list", "sample", "--dry-run"),
        ("subscribers", "sync", "--dry-run"),
        ("send", "how-sleep-consolidates-memory", "--list", "sample", "--dry-run"),
    ],
    ids=["import", "sync", "send"],
)
def test_a_dry_run_before_the_first_real_run_creates_no_database(
    sample_site: Path, command: tuple[str, ...]
) -> None:
    # "Write nothing" includes the store: a first dry run made the SQLite file
    # (and its folder), empty of what it showed, before anything was decided.
    result = cli(*command)
    assert result.exit_code == 0, result.output
    if command[0] == "subscribers":  # it read the sample's three subscribers all the same
        assert "3 new" in result.stdout
    assert not (sample_site / ".newsletter" / "newsletter.db").exists()
    real = cli("subscribers", "sync")
    assert real.exit_code == 0 and (sample_site / ".newsletter" / "newsletter.db").exists()
    again = cli(*command)
    assert again.exit_code == 0, again.output


@pytest.mark.usefixtures("database_env")
def test_an_export_that_fails_half_way_leaves_the_old_file_as_it_was(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export -o backup.csv` truncated yesterday's backup first, so an export
    that died on one member (a lone surrogate in its attributes did) left
    only the rows before it.  It is written beside it and renamed when done."""
    import os

    import newsletter.audience.subscribers as subscribers_module
    from newsletter.errors import StoreError

    assert cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample").exit_code == 0
    backup = sample_site / "backup.csv"
    backup.write_text("yesterday's complete backup\n", encoding="utf-8")
    os.chmod(backup, 0o640)
    escape = subscribers_module.escape_cell

    def failing(value: str) -> str:
        if value == "grace@example.com":
            raise StoreError("the database went away")
        return escape(value)

    monkeypatch.setattr(subscribers_module, "escape_cell", failing)
    result = cli("subscribers", "export", "--list", "sample", "-o", "backup.csv")
    assert (result.exit_code, result.stderr) == (1, "error: the database went away\n")
    assert backup.read_text(encoding="utf-8") == "yesterday's complete backup\n"
    assert list(sample_site.glob(".backup.csv*")) == []  # no half-written copy left behind
    monkeypatch.setattr(subscribers_module, "escape_cell", escape)
    done = cli("subscribers", "export", "--list", "sample", "-o", "backup.csv")
    assert done.exit_code == 0, done.output
    assert backup.read_text(encoding="utf-8").count("@example.com") == 3
    assert backup.stat().st_mode & 0o777 == 0o640  # the user's file keeps its mode
    assert cli("subscribers", "export", "--list", "sample", "-o", "new.csv").exit_code == 0
    assert (sample_site / "new.csv").stat().st_mode & 0o777 == 0o600  # subscriber data is private


def test_an_export_through_a_symlink_replaces_its_target(sample_site: Path) -> None:
    assert cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample").exit_code == 0
    (sample_site / "backups").mkdir()
    real = sample_site / "backups" / "latest.csv"
    real.write_text("old\n", encoding="utf-8")
    (sample_site / "latest.csv").symlink_to(real)
    assert cli("subscribers", "export", "--list", "sample", "-o", "latest.csv").exit_code == 0
    assert (sample_site / "latest.csv").is_symlink()
    assert real.read_text(encoding="utf-8").startswith("email,name,status,subscribed_at")


def test_a_lone_surrogate_a_store_already_holds_is_exported_as_a_replacement_character(
    sample_site: Path,
) -> None:
    """Imported before imports replaced them (SQLite kept the JSON escape):
    `export` died with UnicodeEncodeError at that member and `list --json` too."""
    from sqlalchemy import text

    from newsletter.store import open_url

    assert cli("subscribers", "import", "subscribers/sample.csv", "--list", "sample").exit_code == 0
    engine = open_url(f"sqlite:///{sample_site / '.newsletter' / 'newsletter.db'}")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE subscribers SET attributes = :a WHERE email = 'grace@example.com'"),
            {"a": '{"nick": "Jo \\ud83d", "\\udc00": 1}'},
        )
    engine.dispose()
    result = cli("subscribers", "export", "--list", "sample", "-o", "backup.csv")
    assert result.exit_code == 0, result.output
    lines = Path("backup.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,name,status,subscribed_at,nick,\ufffd"
    assert lines[2].endswith(",Jo \ufffd,1") and len(lines) == 4
    listed = cli("subscribers", "list", "--list", "sample", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[1]["attributes"] == {"nick": "Jo \ufffd", "\ufffd": 1}


@pytest.mark.parametrize(
    "title", ["Field Notes [weekly] digest", "Notes [/]", "Weekly [/bold] notes"]
)
def test_a_list_title_with_square_brackets_is_shown_as_written(
    sample_site: Path, title: str
) -> None:
    # The table read the title as rich markup: "[weekly]" vanished, "[/]" raised.
    config = sample_site / "newsletter.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('title = "Field Notes weekly digest"', f"title = {json.dumps(title)}"),
        encoding="utf-8",
    )
    result = cli("lists")
    assert result.exit_code == 0, result.output
    bracketed = title[title.index("[") : title.index("]") + 1]
    assert bracketed in result.stdout, result.stdout  # the table may wrap the rest


@pytest.mark.parametrize("command", ["show", "remove", "unsubscribe", "resubscribe"])
def test_an_address_argument_that_is_not_utf8_is_one_line(sample_site: Path, command: str) -> None:
    # Looked up before it was validated: the driver could not encode its lone
    # surrogate, a UnicodeEncodeError traceback (add and send --test said it).
    extra = ("--list", "sample") if command == "remove" else ()
    result = cli("subscribers", command, "a\udcffb@example.com", *extra)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "invalid" in result.stderr or "not" in result.stderr, result.stderr


def test_a_file_or_folder_name_too_long_for_the_system_is_one_line(sample_site: Path) -> None:
    # Path.is_file and is_dir answer most errors with False, but raise this one.
    long = "a" * 300
    imported = cli("subscribers", "import", f"{long}.csv", "--list", "sample")
    assert imported.exit_code == 1, imported.output
    assert imported.stderr.count("\n") == 1 and "too long" in imported.stderr, imported.stderr
    synced = cli("subscribers", "sync", "--dir", long)
    assert synced.exit_code == 1, synced.output
    assert synced.stderr.count("\n") == 1 and "too long" in synced.stderr, synced.stderr


def test_lists_piped_is_not_cut_at_80_columns(sample_site: Path) -> None:
    # Piped, rich's 80 columns cut the header ("unsubscrib…") and wrapped titles.
    result = cli("lists")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "list" in line and "title" in line)
    assert "unsubscribed" in header and "complained" in header, result.stdout
    assert "Field Notes weekly digest" in result.stdout, result.stdout
