"""A changed unsubscribe secret is refused by `send`, `run` and `serve`, not used.

Every link already sent carries a MAC under the old secret; a different
`.newsletter/secret`, or NEWSLETTER_SECRET unset in one shell, would break them
all without a word.  The database keeps a fingerprint of the first secret used.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.daemon.scheduler import LOCK_KEY, Daemon
from newsletter.email.tokens import FINGERPRINT_KEY, checked_secret, secret_fingerprint
from newsletter.errors import ConfigError
from newsletter.store import open_store
from newsletter.store.schema import state
from newsletter.web.public import create_public_app

POST = "how-sleep-consolidates-memory"
OTHER_POST = "a-letter-from-the-future"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def readers(site: Path, n: int = 3) -> None:
    settings = load_settings(site / "newsletter.toml")
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(n):
        subs.add_subscriber(engine, f"reader{i}@example.org", "sample")


def outbox(site: Path) -> int:
    path = site / ".newsletter/outbox"
    return len(mailbox.Maildir(path, create=False)) if path.exists() else 0


def test_send_with_the_variable_unset_in_another_shell_is_refused(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers(sample_site)
    monkeypatch.setenv("NEWSLETTER_SECRET", "the-first-secret")
    code, _out, err = run("send", POST, "--list", "sample")
    assert (code, err) == (0, "")
    monkeypatch.delenv("NEWSLETTER_SECRET")  # falls back to the database's generated one
    code, out, err = run("send", POST, "--list", "sample", "--resend")
    assert code == 1 and out == ""
    assert err == (
        "error: unsubscribe.secret_env: the unsubscribe secret from "
        "the database (NEWSLETTER_SECRET unset) is not the one this "
        "database's links were made with; every unsubscribe link already sent would break. "
        "Use the earlier secret (set NEWSLETTER_SECRET as before, or restore that file)\n"
    )
    assert outbox(sample_site) == 3  # the first send only
    monkeypatch.setenv("NEWSLETTER_SECRET", "the-first-secret")
    assert run("send", POST, "--list", "sample", "--resend")[0] == 0  # the right one: fine
    assert outbox(sample_site) == 6


def test_a_different_secret_is_refused_by_send_run_and_serve(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    readers(sample_site)
    assert run("send", POST, "--list", "sample")[0] == 0  # generates and records the secret
    # A stray secret file (another machine's) is ignored: the database's secret stands.
    (sample_site / ".newsletter/secret").write_text("a-new-machine-made-a-new-one")
    assert run("send", POST, "--list", "sample", "--resend")[0] == 0
    # A host whose environment names another secret is refused.
    monkeypatch.setenv("NEWSLETTER_SECRET", "a-new-machine-made-a-new-one")
    code, _out, err = run("send", POST, "--list", "sample", "--resend")
    assert code == 1 and len(err.splitlines()) == 1 and "is not the one" in err
    code, out, err = run("run", "--once")
    assert code == 1 and out == ""
    assert err.startswith("error: unsubscribe.secret_env: the unsubscribe secret from ")
    assert len(err.splitlines()) == 1
    settings = load_settings(sample_site / "newsletter.toml")
    with pytest.raises(ConfigError, match="is not the one"):
        create_public_app(settings)
    engine = open_store(settings)
    with pytest.raises(ConfigError, match="is not the one"):
        Daemon(settings, engine, watch=False).start()
    with engine.connect() as conn:  # and it did not keep the lock it took to check
        assert conn.scalar(select(state.c.value).where(state.c.key == LOCK_KEY)) is None
    code, _out, err = run("serve", "--port", "0")
    assert code == 1 and err.startswith("error: unsubscribe.secret_env: the unsubscribe secret")


def test_the_fingerprint_is_recorded_once_and_reveals_nothing(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "s3cret-value")
    settings = load_settings(sample_site / "newsletter.toml")
    engine = open_store(settings)
    assert checked_secret(settings, engine) == b"s3cret-value"
    assert checked_secret(settings, engine) == b"s3cret-value"
    with engine.connect() as conn:
        rows = conn.execute(select(state.c.value).where(state.c.key == FINGERPRINT_KEY)).all()
    assert [r[0] for r in rows] == [secret_fingerprint(b"s3cret-value")]
    assert "s3cret" not in rows[0][0]
