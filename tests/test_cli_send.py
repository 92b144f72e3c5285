"""`newsletter send` and `newsletter status` through click's CliRunner."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample_site import SAMPLE_FUTURE_DATE, SAMPLE_FUTURE_POST
from smtpserver import SmtpTestServer

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.store import open_store

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

POST = "how-sleep-consolidates-memory"


def smtp_config(site: Path, server: SmtpTestServer, extra: str = "") -> Path:
    """The sample configuration pointed at a local test server."""
    text = (site / "newsletter.toml").read_text()
    text = text.replace('transport = "maildir"', 'transport = "smtp"')
    text = text.replace(
        'host = "smtp.example.com"\nsecurity = "starttls"',
        f'host = "127.0.0.1"\nport = {server.port}\nsecurity = "none"',
    )
    text = text.replace('username = "newsletter@fieldnotes.example.com"\n', "")
    text = text.replace("max_attempts = 5", f"max_attempts = 5\n{extra}")
    path = site / "smtp.toml"
    path.write_text(text)
    return path


def add_readers(config: Path, n: int, list_name: str = "sample") -> None:
    settings = load_settings(config)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for i in range(n):
        subs.add_subscriber(engine, f"reader{i:02d}@example.org", list_name)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "cli-test-secret")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_texts() -> None:
    for command in ("send", "status"):
        code, out, _ = run(command, "--help")
        assert code == 0 and "Usage:" in out
    assert "--test ADDR" in run("send", "--help")[1]


def test_send_to_the_maildir_outbox_then_again_sends_nothing(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    add_readers(config, 5)
    code, out, err = run("send", POST, "--list", "sample")
    assert (code, err) == (0, "")
    assert out == "sent 5, deferred 0, failed 0, skipped 0\n"
    box = mailbox.Maildir(sample_site / ".newsletter/outbox", create=False)
    assert len(box) == 5
    code, out, _ = run("send", POST, "--list", "sample")
    assert code == 0
    assert out.startswith(f"'{POST}' was already sent to list 'sample' ")
    assert out.endswith("; nothing sent (use --resend to send it again)\n")
    assert len(box) == 5
    code, out, _ = run("send", POST, "--list", "sample", "--resend")
    assert (code, out) == (0, "sent 5, deferred 0, failed 0, skipped 0\n")
    assert len(mailbox.Maildir(sample_site / ".newsletter/outbox", create=False)) == 10


def test_send_over_smtp_and_status(sample_site: Path, smtp_server: SmtpTestServer) -> None:
    config = smtp_config(sample_site, smtp_server)
    add_readers(config, 4)
    smtp_server.script("reader01@example.org", "550 5.1.1 No such user")
    code, out, err = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0
    assert out == "sent 3, deferred 0, failed 1, skipped 0\n"
    assert err == "failed: reader01@example.org: 550 5.1.1 No such user\n"
    code, out, _ = run("--config", str(config), "status")
    assert code == 0
    assert out.startswith(
        f"#1 {POST} → sample: done; 4 recipient(s): sent 3, failed 1\n"
        "    last error: reader01@example.org: 550 5.1.1 No such user\n"
        "upcoming:\n"
    )
    # the sent post is no longer upcoming for that list; the future one is, at its date
    assert f"{POST} → sample\n" not in out
    assert f"  {SAMPLE_FUTURE_DATE.isoformat()}  {SAMPLE_FUTURE_POST} → sample\n" in out
    code, out, _ = run("--config", str(config), "status", "--json")
    data = json.loads(out)
    first = data["mailings"][0]
    assert first["counts"] == {"sent": 3, "failed": 1} and first["state"] == "done"
    upcoming = {(u["post"], u["list"]) for u in data["upcoming"]}
    assert (SAMPLE_FUTURE_POST, "sample") in upcoming
    assert (POST, "sample") not in upcoming


def test_send_json_summary(sample_site: Path) -> None:
    add_readers(sample_site / "newsletter.toml", 2)
    code, out, _ = run("send", POST, "--list", "sample", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["sent"], data["failed"], data["mailing"]) == (2, 0, 1)


def test_test_addresses_get_a_prefixed_copy_and_no_record(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = smtp_config(sample_site, smtp_server)
    code, out, _ = run(
        "--config", str(config), "send", POST, "--list", "sample",
        "--test", "me@example.com", "--test", "you@example.org",
    )  # fmt: skip
    assert (code, out) == (0, f"sent 2 test message(s) of '{POST}'\n")
    assert smtp_server.recipients() == ["me@example.com", "you@example.org"]
    assert b"\r\nSubject: [TEST] " in smtp_server.received[0].data
    assert run("--config", str(config), "status")[1].startswith("no mailings yet\nupcoming:\n")


def test_dry_run_counts_and_lists_with_verbose(sample_site: Path) -> None:
    add_readers(sample_site / "newsletter.toml", 3)
    code, out, _ = run("send", POST, "--list", "sample", "--dry-run")
    assert (code, out) == (0, f"would send '{POST}' to 3 subscriber(s) of list 'sample'\n")
    code, out, _ = run("send", POST, "--list", "sample", "--dry-run", "-v")
    assert out.splitlines()[1:] == [f"  reader{i:02d}@example.org" for i in range(3)]
    assert not (sample_site / ".newsletter/outbox").exists()
    assert run("status")[1].startswith("no mailings yet\nupcoming:\n")


def test_user_errors_exit_1_with_one_line(sample_site: Path) -> None:
    code, _, err = run("send", "no-such-post", "--list", "sample")
    assert code == 1 and err.startswith("error: no post matches 'no-such-post'")
    assert err.count("\n") == 1
    code, _, err = run("send", POST, "--list", "nope")
    assert code == 1 and err.startswith("error: ") and "unknown list 'nope'" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("bad", ["bo b@example.com", "<bo@example.com>", "a@example.com,b@x.org"])
def test_an_unusable_test_address_is_named_in_the_error(sample_site: Path, bad: str) -> None:
    """With several --test addresses, the error says which one is wrong."""
    code, out, err = run(
        "send", POST, "--list", "sample", "--test", "me@example.com", "--test", bad
    )
    assert code == 1 and out == ""
    assert err == f"error: not a usable address: {bad!r}\n"
    assert not (sample_site / ".newsletter/outbox").exists()  # nothing went, not even to me@


def test_usage_error_exits_2(sample_site: Path) -> None:
    code, _, err = run("send", POST)
    assert code == 2 and "Missing option '--list'" in err


def test_starttls_missing_is_a_one_line_error(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = smtp_config(sample_site, smtp_server)
    text = config.read_text().replace('security = "none"', 'security = "starttls"')
    config.write_text(text)
    add_readers(config, 2)
    code, _, err = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 1
    assert err == (
        "error: smtp.security: 127.0.0.1 does not offer STARTTLS; refusing to send in "
        'clear (use security = "tls" for port 465)\n'
    )
    assert smtp_server.received == []
    # Nothing was spent: the recipients are still queued for a fixed configuration.
    assert "queued 2" in run("--config", str(config), "status")[1]


def test_paused_mailing_says_so(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    text = config.read_text().replace("max_attempts = 5", "max_attempts = 5\nmax_per_hour = 2")
    config.write_text(text)
    add_readers(config, 3)
    code, out, _ = run("send", POST, "--list", "sample")
    assert code == 0 and out.startswith("sent 2, deferred 0, failed 0, skipped 0 (paused:")
    status = run("status")[1]
    assert "sample: paused until " in status and "sent 2, queued 1" in status


def test_send_to_a_list_with_no_members_finishes_at_once(sample_site: Path) -> None:
    # Regression: closing an empty mailing once deadlocked on SQLite's write
    # lock (a read held open while writing the state) until the busy timeout.
    import time

    started = time.monotonic()
    code, out, err = run("send", POST, "--list", "sample")
    assert (code, out) == (0, "sent 0, deferred 0, failed 0, skipped 0\n"), err
    # SQLite's busy timeout is 30 s: the deadlock would wait that long.
    assert time.monotonic() - started < 20
    assert run("status")[1].startswith(f"#1 {POST} → sample: done; 0 recipient(s)\n")


def test_status_with_a_bad_digest_cron_still_shows_everything_else(sample_site: Path) -> None:
    """A bad `cron` disables that digest only (docs/daemon.md): `status` still
    lists the mailings and the other sends to come, then the problem in one line."""
    config = sample_site / "newsletter.toml"
    add_readers(config, 2)
    assert run("send", POST, "--list", "sample")[0] == 0
    text = config.read_text()
    assert 'cron = "0 8 * * MON"' in text
    config.write_text(text.replace('cron = "0 8 * * MON"', 'cron = "every monday"'))
    code, out, err = run("status")
    assert code == 1
    assert out.startswith(f"#1 {POST} → sample: done; 2 recipient(s): sent 2\n")
    assert "upcoming:\n" in out and "→ sample" in out.split("upcoming:")[1]
    assert err == (
        "error: lists.weekly.cron: invalid cron 'every monday': "
        "5 fields wanted (minute hour day month weekday), got 2\n"
    )
    code, out, err = run("status", "--json")
    assert code == 1
    data = json.loads(out)
    assert [m["post"] for m in data["mailings"]] == [POST]
    assert data["problems"] == [err.removeprefix("error: ").rstrip("\n")]


def test_a_stop_after_the_last_outcome_is_not_a_stopped_send(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM that lands once every reader has their outcome: the send did
    all it had to, so it exits 0 and reports no stop.  (A stop with readers
    left exits `STOPPED`: tests/test_stop_budget.py.)"""
    from typing import Any

    from newsletter.delivery import mailings

    config = smtp_config(sample_site, smtp_server)
    add_readers(config, 3)
    real = mailings.deliver_mailing

    def then_stopped(*args: Any, stop: Any, **kwargs: Any) -> Any:
        report = real(*args, stop=stop, **kwargs)
        stop.set()  # the signal arrives after the pass, before the summary
        return report

    monkeypatch.setattr(mailings, "deliver_mailing", then_stopped)
    result = CliRunner().invoke(
        main, ["--config", str(config), "send", POST, "--list", "sample", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["left"], summary["stopped"]) == (3, 0, False)
    assert "stopped" not in result.stderr
    assert len(smtp_server.received) == 3


def test_a_server_that_cannot_be_reached_is_named_in_the_summary(sample_site: Path) -> None:
    """Deferrals exit 0 (they are retried), but why they happened was only in
    `newsletter status`: the summaries of `send` and `run --once` say it once."""
    server = SmtpTestServer()  # never started: its port refuses connections
    config = smtp_config(sample_site, server)
    add_readers(config, 2)
    refused = f"cannot connect to 127.0.0.1:{server.port}"
    code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0
    assert out.startswith("sent 0, deferred 2, failed 0, skipped 0")
    assert f"; last error: reader01@example.org: {refused}" in out
    code, out, _ = run("--config", str(config), "send", POST, "--list", "sample", "--resend",
                       "--json")  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["deferred"] == 2 and refused in report["last_error"]
    code, out, _ = run("--config", str(config), "run", "--once")
    assert code == 0
    lines = out.splitlines()
    sent = next(i for i, line in enumerate(lines) if line.startswith("Sent 0, deferred "))
    assert lines[sent + 1].startswith("Last error: ") and refused in lines[sent + 1]
    with server:
        code, out, _ = run("--config", str(config), "send", POST, "--list", "sample", "--resend")
    assert code == 0
    assert out.startswith("sent 2, deferred 0") and "last error" not in out


def test_dry_run_with_test_addresses_sends_nothing(sample_site: Path) -> None:
    code, out, err = run("send", POST, "--list", "sample", "--test", "me@example.com", "--dry-run")
    assert (code, err) == (0, "")
    assert out == f"would send a test message of '{POST}' to me@example.com\n"
    assert not (sample_site / ".newsletter/outbox").exists()
    code, out, _ = run(
        "send", POST, "--list", "sample", "--test", "me@example.com", "--dry-run", "--json"
    )
    assert (code, json.loads(out)) == (
        0, {"test": True, "dry_run": True, "post": POST, "to": ["me@example.com"]}
    )  # fmt: skip
    assert not (sample_site / ".newsletter/outbox").exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--test", "me@example.com", "--resend"], "--resend"),
        (["-v"], "--verbose"),
    ],
    ids=["test-and-resend", "verbose-alone"],
)
def test_options_that_would_be_ignored_are_usage_errors(
    sample_site: Path, flags: list[str], says: str
) -> None:
    add_readers(sample_site / "newsletter.toml", 1)
    code, out, err = run("send", POST, "--list", "sample", *flags)
    assert (code, out) == (2, "")
    assert says in err
    assert not (sample_site / ".newsletter/outbox").exists()


@pytest.mark.parametrize("bad", ["notanaddress", "a@b"])
def test_a_test_address_is_checked_as_a_subscribers_would_be(sample_site: Path, bad: str) -> None:
    code, out, err = run(
        "send", POST, "--list", "sample", "--test", "me@example.com", "--test", bad
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"error: invalid email address {bad!r}: "), err
    assert not (sample_site / ".newsletter/outbox").exists()


def test_a_test_address_given_twice_gets_one_copy(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = smtp_config(sample_site, smtp_server)
    code, out, _ = run(
        "--config", str(config), "send", POST, "--list", "sample",
        "--test", "me@example.com", "--test", "ME@Example.com ",
    )  # fmt: skip
    assert (code, out) == (0, f"sent 1 test message(s) of '{POST}'\n")
    assert smtp_server.recipients() == ["me@example.com"]


def test_status_says_why_a_mailing_every_pass_fails_on_is_stuck(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    """An explicit mailing whose post is gone fails on every pass ("no post
    matches"): `status` showed it planned with its queue and no reason."""
    config = smtp_config(sample_site, smtp_server)
    add_readers(config, 2)
    smtp_server.script("reader01@example.org", "451 4.3.0 Try later")  # one left queued
    run("--config", str(config), "send", POST, "--list", "sample")
    (sample_site / "posts" / f"2024-10-14-{POST}.md").unlink()
    code, _, err = run("--config", str(config), "run", "--once")
    assert code == 1 and f"no post matches '{POST}'" in err
    code, out, _ = run("--config", str(config), "status")
    assert f"last error: no post matches '{POST}'" in out, out


def test_a_post_mailed_before_deduplication_is_not_mailed_again_to_another_list(
    sample_site: Path,
) -> None:
    """A ledger from schema 1 had no dedupe key: its rows told no later
    mailing who already had the post, and a send of it to a second list
    mailed its members again (the upgrade fills the key in)."""
    from sqlalchemy import text

    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text() + '\n[lists.second]\ntitle = "Second"\n')
    add_readers(config, 3)
    add_readers(config, 4, "second")  # reader00-02 on both lists, reader03 on second only
    assert run("send", POST, "--list", "sample")[0] == 0
    engine = open_store(load_settings(config))
    with engine.begin() as conn:  # the ledger as schema 1 left it
        conn.execute(text("UPDATE deliveries SET id = subscriber_id, dedupe_key = NULL"))
        conn.execute(text("UPDATE mailings SET ledger_key = NULL"))
        conn.execute(text("DELETE FROM ledger_keys"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
    engine.dispose()
    code, out, err = run("send", POST, "--list", "second")
    assert code == 0, err
    assert out.startswith("sent 1,"), out  # reader03 alone
    box = mailbox.Maildir(sample_site / ".newsletter/outbox", create=False)
    assert sorted(m["To"] for m in box) == [f"reader{i:02d}@example.org" for i in (0, 1, 2, 3)]


def test_dry_run_leaves_out_who_already_has_the_post_from_another_list(sample_site: Path) -> None:
    """The dry run counted every member; the send then left out the ones
    another list's mailing of the post had reached (`dedupe_across_lists`)."""
    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text() + '\n[lists.second]\ntitle = "Second"\n')
    add_readers(config, 3)
    add_readers(config, 4, "second")  # reader00-02 on both lists
    assert run("send", POST, "--list", "sample")[0] == 0
    code, out, _ = run("send", POST, "--list", "second", "--dry-run", "-v")
    assert code == 0
    assert out.splitlines() == [
        f"would send '{POST}' to 1 subscriber(s) of list 'second'",
        "  reader03@example.org",
    ]
    code, out, _ = run("send", POST, "--list", "second")
    assert out.startswith("sent 1,"), out


@pytest.mark.parametrize("strategy", ["streams", "threaded"])
def test_the_summary_counts_each_recipient_once_by_its_final_outcome(
    sample_site: Path, smtp_server: SmtpTestServer, strategy: str
) -> None:
    """`send --wait`: a recipient deferred, then sent in the same command,
    counts once, as sent (before, 20 recipients read "sent 18, deferred 4,
    failed 2", deferral events, while `status` said none was deferred)."""
    backoff = "backoff_base = 0.01\nbackoff_cap = 0.05"
    config = smtp_config(sample_site, smtp_server, f'{backoff}\nstrategy = "{strategy}"')
    add_readers(config, 20)
    for reader in ("reader03", "reader07", "reader12", "reader16"):
        smtp_server.script(f"{reader}@example.org", "451 4.3.0 Try again later", times=1)
    for reader in ("reader05", "reader18"):
        smtp_server.script(f"{reader}@example.org", "554 5.7.1 Rejected by policy")
    args = ("--config", str(config), "send", POST, "--list", "sample", "--wait", "30")
    code, out, _ = run(*args, "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert (summary["sent"], summary["deferred"], summary["failed"]) == (18, 0, 2), summary
    assert summary["last_error"].endswith("554 5.7.1 Rejected by policy")
    code, out, _ = run("--config", str(config), "status", "--json")
    assert json.loads(out)["mailings"][0]["counts"] == {"sent": 18, "failed": 2}


@pytest.mark.parametrize("strategy", ["streams", "threaded"])
def test_the_last_error_of_a_summary_with_deferrals_is_why_they_were(
    sample_site: Path, smtp_server: SmtpTestServer, strategy: str
) -> None:
    """docs/delivery.md: when some were deferred the summary ends with why
    (they exit 0 and are retried), not with a failed recipient's reply,
    which has its own `failed:` line."""
    config = smtp_config(sample_site, smtp_server, f'strategy = "{strategy}"\nconcurrency = 1')
    config.write_text(config.read_text().replace("concurrency = 2\n", ""))
    add_readers(config, 6)
    smtp_server.script("reader01@example.org", "451 4.3.0 Try again later")
    smtp_server.script("reader05@example.org", "554 5.7.1 Rejected by policy")
    code, out, err = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0
    assert out == (
        "sent 4, deferred 1, failed 1, skipped 0 (deferred ones are retried by "
        "`newsletter run` or by sending again); last error: reader01@example.org: "
        "451 4.3.0 Try again later\n"
    )
    assert err == "failed: reader05@example.org: 554 5.7.1 Rejected by policy\n"


def test_sending_again_before_the_retry_time_says_who_still_waits(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    """The first summary says deferred ones are retried "by sending again";
    sending again at once printed "sent 0, deferred 0, failed 0, skipped 0"
    and nothing of the two still waiting for their retry time."""
    config = smtp_config(sample_site, smtp_server)
    add_readers(config, 5)
    for reader in ("reader01", "reader02"):
        smtp_server.script(f"{reader}@example.org", "451 4.3.0 Try later")
    code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0 and out.startswith("sent 3, deferred 2,")
    code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0
    first, second = out.splitlines()
    assert first == "sent 0, deferred 0, failed 0, skipped 0"
    assert second.startswith("2 recipient(s) wait for their retry, the first at ")
    assert second.endswith(": `newsletter run` sends them then (or this command after that time)")
    code, out, _ = run("--config", str(config), "send", POST, "--list", "sample", "--json")
    assert json.loads(out)["left"] == 2 and json.loads(out)["next_retry"] is not None


def test_an_outage_of_the_mail_server_fails_nobody(sample_site: Path) -> None:
    """A connection that never opened says nothing of the recipient, yet it
    spent an attempt: with the defaults (60 s doubling, 5 attempts) a server
    down for a quarter of an hour failed every recipient for good."""
    from sqlalchemy import select

    from newsletter.store.schema import deliveries

    server = SmtpTestServer()  # never started: its port refuses connections
    config = smtp_config(sample_site, server, "backoff_base = 0\nbackoff_cap = 0")
    add_readers(config, 4)
    for _ in range(7):  # more passes than max_attempts = 5
        code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
        assert code == 0 and "failed 0" in out, out
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.status, deliveries.c.attempts)).all()
    assert sorted(set(rows)) == [("deferred", 0)]
    with server:
        code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0 and out.startswith("sent 4, deferred 0, failed 0")
    assert sorted(server.recipients()) == [f"reader{i:02d}@example.org" for i in range(4)]


@pytest.mark.parametrize("strategy", ["streams", "threaded"])
def test_a_server_that_never_greets_costs_a_few_timeouts_not_one_per_recipient(
    sample_site: Path, strategy: str
) -> None:
    """It accepts the connection and says nothing: each recipient waited out
    the whole SMTP timeout on a connection of its own (500 recipients, the
    default 30 s: four hours).  After a few in a row the rest are deferred
    untried, with the same reason, no attempt spent."""
    import socket
    import time

    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(64)  # accepted by the kernel, never answered
    try:
        server = SmtpTestServer()
        server.port = mute.getsockname()[1]
        config = smtp_config(sample_site, server, f'strategy = "{strategy}"')
        text = config.read_text().replace("concurrency = 2\n", "concurrency = 1\n")
        config.write_text(text.replace("timeout = 30\n", "timeout = 0.5\n"))
        add_readers(config, 12)
        started = time.monotonic()
        code, out, _ = run("--config", str(config), "send", POST, "--list", "sample")
        took = time.monotonic() - started
    finally:
        mute.close()
    assert code == 0 and out.startswith("sent 0, deferred 12, failed 0"), out
    assert "cannot connect to 127.0.0.1" in out
    assert took < 12 * 0.5  # a few timeouts (3 in a row), not one per recipient


def test_imported_readers_leave_with_the_link_they_were_sent(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    """Schema 11: readers an import added store no uid (it is derived from
    the row id: store/uids.py).  The one-click link of the email each got
    over SMTP must unsubscribe that reader, and nobody else."""
    import email
    import re

    from sqlalchemy import select
    from starlette.testclient import TestClient

    from newsletter.store.schema import subscribers
    from newsletter.web.public import create_public_app

    config = smtp_config(sample_site, smtp_server)
    readers = sample_site / "readers.csv"
    readers.write_text("email,name\nann@example.org,Ann\nbob@example.org,Bob\n")
    code, _, err = run("--config", str(config), "subscribers", "import", str(readers),
                       "--list", "sample")  # fmt: skip
    assert code == 0, err
    settings = load_settings(config)
    engine = open_store(settings)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(subscribers.c.email, subscribers.c.uid)).all())
    assert stored["ann@example.org"] is None and stored["bob@example.org"] is None
    code, _out, err = run("--config", str(config), "send", POST, "--list", "sample")
    assert code == 0, err
    got = {
        rcpt: email.message_from_bytes(item.data)
        for item in smtp_server.received
        for rcpt in item.rcpt_tos
    }
    header = str(got["ann@example.org"]["List-Unsubscribe"])
    found = re.search(r"<https?://[^>]+/unsubscribe/([^>/]+)>", header)
    assert found is not None, header
    app = create_public_app(settings)
    with TestClient(app, base_url=settings.web.public_url) as client:
        response = client.post(
            f"/unsubscribe/{found.group(1)}", data={"List-Unsubscribe": "One-Click"}
        )
    assert response.status_code == 200, response.text
    ann = subs.get_by_email(engine, "ann@example.org")
    bob = subs.get_by_email(engine, "bob@example.org")
    assert ann is not None and bob is not None
    assert not subs.is_mailable(engine, ann.id, "sample")
    assert subs.is_mailable(engine, bob.id, "sample")
