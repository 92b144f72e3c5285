"""`subscribers unsubscribe` of an address the store does not know yet, and
`resubscribe` next to per-list unsubscribes of lists never joined.

Someone may ask by email to be removed before their address is ever
imported: the request is kept, so invariant 3 protects it from every later
import and sync.  On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.audience.members import mailable_members
from newsletter.cli import main
from newsletter.store import open_url

pytestmark = pytest.mark.usefixtures("database_env")


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def mailable(url: str, list_name: str) -> list[str]:
    engine = open_url(url)
    try:
        return [m.email for m in mailable_members(engine, list_name)]
    finally:
        engine.dispose()


def counts(list_name: str) -> dict[str, int]:
    data = json.loads(cli("lists", "--json").stdout)
    found: dict[str, int] = {d["name"]: d["counts"] for d in data}[list_name]
    return found


def import_csv(path: Path, list_name: str, *emails: str) -> dict[str, int]:
    path.write_text("email\n" + "".join(e + "\n" for e in emails), encoding="utf-8")
    result = cli("subscribers", "import", str(path), "--list", list_name, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, int] = json.loads(result.stdout)
    return data


def test_unsubscribe_of_an_unknown_address_is_kept_against_imports(
    sample_site: Path, database_env: str
) -> None:
    """It was an error ("no subscriber with address"): nothing was recorded,
    and a later import added the person as active."""
    result = cli("subscribers", "unsubscribe", "Early@Example.com")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "Early@example.com is not a subscriber yet: recorded as unsubscribed from every list; "
        "an import will not add it\n"
    )
    shown = json.loads(cli("subscribers", "show", "early@example.com", "--json").stdout)
    assert (shown["status"], shown["status_reason"], shown["lists"]) == ("unsubscribed", "cli", {})
    assert [(e["action"], e["source"], e["list"], e["detail"]) for e in shown["history"]] == [
        ("unsubscribe", "cli", None, "cli; not a subscriber yet")
    ]
    assert sum(counts("sample").values()) == 0  # on no list: counted nowhere
    assert cli("subscribers", "export", "--list", "sample").stdout.count("\n") == 1

    got = import_csv(sample_site / "in.csv", "sample", "early@example.com", "ada@example.com")
    assert (got["new"], got["kept_suppressed"]) == (1, 1)
    assert mailable(database_env, "sample") == ["ada@example.com"]
    assert counts("sample")["active"] == 1 and counts("sample")["unsubscribed"] == 1
    listed = cli("subscribers", "list", "--list", "sample").stdout
    assert listed == "ada@example.com\tactive\nEarly@example.com\tunsubscribed\n"
    exported = cli("subscribers", "export", "--list", "sample").stdout.splitlines()
    assert exported[2].startswith("Early@example.com,,unsubscribed,")

    again = cli("subscribers", "unsubscribe", "early@example.com")
    assert again.stdout == "Early@example.com was already unsubscribed from every list\n"


def test_per_list_unsubscribe_of_an_unknown_address_keeps_only_that_list(
    sample_site: Path, database_env: str
) -> None:
    result = cli("subscribers", "unsubscribe", "early@example.com", "--list", "weekly")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "early@example.com is not a subscriber yet: recorded as unsubscribed from weekly; "
        "an import will not add it to weekly\n"
    )
    shown = json.loads(cli("subscribers", "show", "early@example.com", "--json").stdout)
    assert shown["lists"] == {"weekly": "unsubscribed"}
    assert [(e["action"], e["list"]) for e in shown["history"]] == [("unsubscribe", "weekly")]
    assert counts("weekly") == {
        "active": 0, "pending": 0, "unsubscribed": 1, "bounced": 0, "complained": 0
    }  # fmt: skip

    weekly = import_csv(sample_site / "w.csv", "weekly", "early@example.com")
    assert (weekly["new"], weekly["kept_suppressed"]) == (0, 1)
    sample = import_csv(sample_site / "s.csv", "sample", "early@example.com")
    assert sample["new"] == 1  # never asked to leave this one
    assert mailable(database_env, "weekly") == []
    assert mailable(database_env, "sample") == ["early@example.com"]


def test_sync_does_not_add_an_address_unsubscribed_before_it_was_known(
    sample_site: Path, database_env: str
) -> None:
    cli("subscribers", "unsubscribe", "ada@example.com")  # in subscribers/sample.csv
    result = cli("subscribers", "sync", "--json")
    assert result.exit_code == 0, result.output
    (synced,) = json.loads(result.stdout)
    assert (synced["new"], synced["kept_suppressed"]) == (2, 1)
    assert mailable(database_env, "sample") == ["grace@example.com", "linus@example.com"]


def test_unsubscribe_of_an_invalid_unknown_address_is_an_error(sample_site: Path) -> None:
    result = cli("subscribers", "unsubscribe", "nobody")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid email address 'nobody'")
    assert cli("subscribers", "unsubscribe", "a@example.com", "--list", "nope").exit_code == 1
    missing = cli("subscribers", "show", "a@example.com")  # the unknown list recorded nothing
    assert missing.stderr == "error: no subscriber with address 'a@example.com'\n"


def test_resubscribe_does_not_put_anyone_on_a_list_they_never_joined(
    sample_site: Path, database_env: str
) -> None:
    """A per-list unsubscribe of a non-member records an unsubscribed
    membership (so imports keep them out); `resubscribe EMAIL` then cleared
    it too and mailed them a list they had never joined."""
    cli("subscribers", "add", "a@example.com", "--list", "sample")
    cli("subscribers", "unsubscribe", "a@example.com", "--list", "sample")  # joined, then left
    cli("subscribers", "unsubscribe", "a@example.com", "--list", "weekly")  # never joined
    cli("subscribers", "unsubscribe", "a@example.com")
    back = cli("subscribers", "resubscribe", "a@example.com")
    assert back.stdout == (
        "resubscribed a@example.com to every list; it stays unsubscribed from weekly, "
        "which it never joined (`newsletter subscribers resubscribe a@example.com --list weekly` "
        "adds it)\n"
    )
    assert mailable(database_env, "sample") == ["a@example.com"]
    assert mailable(database_env, "weekly") == []
    shown = json.loads(cli("subscribers", "show", "a@example.com", "--json").stdout)
    assert shown["status"] == "active" and shown["lists"]["weekly"] == "unsubscribed"
    # Still kept out of weekly by an import; only the explicit per-list undo adds it.
    assert import_csv(sample_site / "w.csv", "weekly", "a@example.com")["kept_suppressed"] == 1
    joined = cli("subscribers", "resubscribe", "a@example.com", "--list", "weekly")
    assert joined.stdout == "resubscribed a@example.com to weekly\n"
    assert mailable(database_env, "weekly") == ["a@example.com"]
    # Joined now: a later unsubscribe and global resubscribe brings it back like any list.
    cli("subscribers", "unsubscribe", "a@example.com", "--list", "weekly")
    again = cli("subscribers", "resubscribe", "a@example.com")
    assert again.stdout == "resubscribed a@example.com to every list\n"
    assert mailable(database_env, "weekly") == ["a@example.com"]


def test_resubscribe_of_an_address_recorded_before_it_was_known(
    sample_site: Path, database_env: str
) -> None:
    cli("subscribers", "unsubscribe", "early@example.com", "--list", "weekly")
    back = cli("subscribers", "resubscribe", "early@example.com")
    assert back.stdout == (
        "early@example.com was not unsubscribed from every list; nothing changed; it stays "
        "unsubscribed from weekly, which it never joined (`newsletter subscribers resubscribe "
        "early@example.com --list weekly` adds it)\n"
    )
    assert mailable(database_env, "weekly") == []
    cli("subscribers", "unsubscribe", "late@example.com")
    lifted = cli("subscribers", "resubscribe", "late@example.com")
    assert lifted.stdout == "resubscribed late@example.com to every list\n"
    shown = json.loads(cli("subscribers", "show", "late@example.com", "--json").stdout)
    assert (shown["status"], shown["lists"]) == ("active", {})
