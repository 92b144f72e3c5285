"""Private files are created private whatever the umask (issue 9, item 8):
the state folder and every folder made for the database or the outbox 0700,
the database (subscriber data), its WAL files, the generated secret and every
outbox message (live unsubscribe tokens) 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.delivery.transports.maildir import MaildirTransport
from newsletter.email.tokens import load_secret
from newsletter.store import open_store, open_url

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o002], ids=["umask-000", "umask-022", "umask-002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_database_and_state_folder(tmp_path: Path, umask: int) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[lists.news]\ntitle = "News"\n')
    settings = load_settings(config)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    subs.add_subscriber(engine, "ana@example.com", "news")  # a write: WAL files appear
    state = tmp_path / ".newsletter"
    assert mode(state) == 0o700
    db = state / "newsletter.db"
    assert mode(db) == 0o600
    wal_files = [p for p in state.iterdir() if p.name.startswith("newsletter.db-")]
    assert wal_files, "expected SQLite's -wal/-shm files"
    for path in wal_files:
        assert mode(path) == 0o600, path.name
    engine.dispose()


def test_folders_made_for_a_database_are_private_existing_ones_untouched(
    tmp_path: Path, umask: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)  # the user's own folder: not ours to change
    engine = open_url(f"sqlite:///{shared}/deep/er/news.db")
    assert mode(shared) == 0o755
    assert mode(shared / "deep") == 0o700
    assert mode(shared / "deep" / "er") == 0o700
    assert mode(shared / "deep" / "er" / "news.db") == 0o600
    engine.dispose()


def test_an_existing_database_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "kept.db"
    open_url(f"sqlite:///{db}").dispose()
    db.chmod(0o640)  # the owner chose this (a backup group, say)
    open_url(f"sqlite:///{db}").dispose()
    assert mode(db) == 0o640


def test_outbox_folders_and_messages(tmp_path: Path, umask: int) -> None:
    outbox = tmp_path / ".newsletter" / "outbox"
    with MaildirTransport(outbox) as transport:
        result = transport.send("news@example.com", "b@example.org", MESSAGE)
    assert result.ok
    for folder in (
        tmp_path / ".newsletter",
        outbox,
        outbox / "tmp",
        outbox / "new",
        outbox / "cur",
    ):
        assert mode(folder) == 0o700, folder
    messages = list((outbox / "new").iterdir())
    assert len(messages) == 1
    assert mode(messages[0]) == 0o600


def test_generated_secret_and_its_folder(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text('[unsubscribe]\nsecret_env = "NL_MODES_SECRET"\n')
    monkeypatch.delenv("NL_MODES_SECRET", raising=False)
    load_secret(load_settings(config))
    # One secret per deployment: it lives in the (private) database, not in a file.
    assert mode(tmp_path / ".newsletter") == 0o700
    assert mode(tmp_path / ".newsletter" / "newsletter.db") == 0o600
    assert not (tmp_path / ".newsletter" / "secret").exists()


def test_send_from_a_fresh_site_leaves_nothing_readable_by_others(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    """End to end: `subscribers add` then `send` into the maildir outbox."""
    monkeypatch.setenv("NEWSLETTER_SECRET", "modes-test-secret")
    runner = CliRunner()
    added = runner.invoke(main, ["subscribers", "add", "reader@example.org", "--list", "sample"])
    assert added.exit_code == 0, added.output
    sent = runner.invoke(main, ["send", "how-sleep-consolidates-memory", "--list", "sample"])
    assert sent.exit_code == 0, sent.output
    state = sample_site / ".newsletter"
    made = [state, *state.rglob("*")]
    assert any(p.name == "newsletter.db" for p in made)
    assert any(p.parent.name == "new" for p in made)
    for path in made:
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, path.relative_to(sample_site)
