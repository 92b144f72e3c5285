"""`newsletter run`: --once summaries, --json, --log-json, refusals, exit codes."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sample_site import SAMPLE_FUTURE_DATE, SAMPLE_FUTURE_POST
from test_daemon_support import MEMBERS, add_members, engine_of, make_site

from newsletter.audience import members as subs
from newsletter.cli import main
from newsletter.daemon.scheduler import DaemonLock
from newsletter.store import open_store

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_has_help_naming_its_options() -> None:
    code, out, _err = invoke("run", "--help")
    assert code == 0
    for option in ("--once", "--log-json", "--no-watch", "--json"):
        assert option in out
    assert "SIGTERM" in out


def test_run_once_on_the_bundled_sample_sends_through_the_maildir(sample_site: Path) -> None:
    settings_path = sample_site / "newsletter.toml"
    from newsletter.config import load_settings

    settings = load_settings(settings_path)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    for email in ("ada@example.com", "grace@example.com", "linus@example.com"):
        subs.add_subscriber(engine, email, "sample")
    code, out, err = invoke("run", "--once")
    assert code == 0, err
    assert out == (
        "Planned 3 mailings and 0 digests.\n"
        "Sent 9, deferred 0, failed 0, skipped 0.\n"
        f"Next: {SAMPLE_FUTURE_POST} at {SAMPLE_FUTURE_DATE.isoformat()}.\n"
    )
    assert len(list(mailbox.Maildir(settings.delivery.outbox_dir))) == 9
    assert "mailing 1 finished: how-sleep-consolidates-memory -> sample: sent 3" in err
    code, out, _err = invoke("run", "--once")
    assert code == 0
    assert out.startswith("Planned 0 mailings and 0 digests.\nSent 0, deferred 0,")
    assert len(list(mailbox.Maildir(settings.delivery.outbox_dir))) == 9


def test_readme_main_job_syncs_the_sample_list_and_sends_once(sample_site: Path) -> None:
    # The README's quick start: `newsletter run --once --sync` on a fresh copy.
    code, out, err = invoke("run", "--once", "--sync")
    assert code == 0, err
    assert out.startswith("synced list sample from sample.csv: rows 3, new 3\n")
    assert "Sent 9, deferred 0, failed 0, skipped 0." in out
    outbox = mailbox.Maildir(sample_site / ".newsletter" / "outbox", create=False)
    received = sorted(str(msg["To"]) for msg in outbox)
    assert len(received) == 9 and received.count("Ada Example <ada@example.com>") == 3
    code, out, _err = invoke("run", "--once", "--sync")
    assert code == 0
    assert "rows 3, unchanged 3" in out and "Sent 0," in out
    assert len(list(outbox)) == 9


def test_run_once_says_how_many_posts_since_held_back(tmp_path: Path) -> None:
    site = make_site(tmp_path, since="2025-01-01")
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    site.write_post("2024-03-01-a.md", "A", "2024-03-01 10:00:00")
    site.write_post("2024-04-01-b.md", "B", "2024-04-01 10:00:00")
    code, out, err = invoke("--config", str(site.config), "run", "--once")
    assert code == 0, err
    assert out.splitlines()[:3] == [
        "2 posts before since=2025-01-01T00:00:00+00:00 were skipped.",
        "Planned 0 mailings and 0 digests.",
        "Sent 0, deferred 0, failed 0, skipped 0.",
    ]


def test_run_once_json(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    site.write_post("2025-06-01-due.md", "Due", PAST)
    site.write_post("2099-06-01-later.md", "Later", "2099-06-01 10:00:00 +0000")
    code, out, err = invoke("--config", str(site.config), "run", "--once", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["sent"] == 3 and data["planned"] == [1] and data["digests"] == []
    assert data["future"] == [{"post_id": "later", "date": "2099-06-01T10:00:00+00:00"}]
    assert data["since"] == "2024-01-01T00:00:00+00:00"
    assert data["transport_error"] is None and data["problems"] == []


def test_log_json_writes_one_json_object_per_line(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    site.write_post("2025-06-01-due.md", "Due", PAST)
    code, _out, err = invoke("--config", str(site.config), "run", "--once", "--log-json")
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    finish = [r for r in records if r.get("event") == "mailing-finish"]
    assert finish and finish[0]["sent"] == 3 and finish[0]["post_id"] == "due"
    assert finish[0]["list"] == "news" and finish[0]["level"] == "info"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_run_once_while_a_daemon_runs_is_refused_with_one_line(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    settings = site.settings()
    engine = engine_of(settings)
    if engine.dialect.name == "postgresql":
        pytest.skip("several daemons share a PostgreSQL (tests/test_several_daemons.py)")
    holder = DaemonLock(engine)
    holder.acquire()
    code, out, err = invoke("--config", str(site.config), "run", "--once")
    assert code == 1 and out == ""
    assert err == (
        f"error: database.url: another newsletter daemon ({holder.owner}, last heartbeat 0 s "
        f"ago) is running on {settings.database.url}; stop it first (a crashed one is taken "
        "over after 30 s)\n"
    )


def test_a_broken_post_is_one_line_exit_1_and_the_rest_still_goes(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    (site.posts / "2025-05-01-broken.md").write_text("---\ntitle: [oops\n---\nbody\n")
    site.write_post("2025-06-01-fine.md", "Fine", PAST)
    code, out, err = invoke("--config", str(site.config), "run", "--once")
    assert code == 1
    assert "Sent 3, deferred 0, failed 0, skipped 0." in out
    problems = [line for line in err.splitlines() if "2025-05-01-broken.md" in line]
    assert len(problems) == 1 and "error:" in problems[0]
    assert "Traceback" not in err


def test_a_bad_cron_is_reported_and_the_each_lists_still_go(tmp_path: Path) -> None:
    lists = (
        '[lists.news]\ntitle = "News"\n'
        '[lists.weekly]\ntitle = "Weekly"\nmode = "digest"\ncron = "at eight"\n'
    )
    site = make_site(tmp_path, lists=lists)
    settings = site.settings()
    add_members(engine_of(settings), "news", MEMBERS, settings=settings)
    site.write_post("2025-06-01-fine.md", "Fine", PAST)
    code, out, err = invoke("--config", str(site.config), "run", "--once")
    assert code == 1
    assert "Sent 3," in out
    assert (
        "error: lists.weekly.cron: invalid cron 'at eight': 5 fields wanted (minute hour day month weekday), got 2"
        in err
    )


def _daemon(site: Any) -> subprocess.Popen[str]:
    """`newsletter run --no-watch` on `site`, in a process of its own."""
    command = [sys.executable, "-m", "newsletter", "--config", str(site.config), "run"]
    return subprocess.Popen(
        [*command, "--no-watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _started(proc: subprocess.Popen[str]) -> str:
    """The daemon's stderr up to "daemon started", its first line after taking the lock."""
    assert proc.stderr is not None
    started = ""
    while "daemon started" not in started:
        line = proc.stderr.readline()
        assert line, proc.communicate(timeout=60)
        started += line
    return started


def test_sigint_stops_the_daemon_with_exit_0(tmp_path: Path) -> None:
    import signal

    from sqlalchemy import select

    from newsletter.daemon.scheduler import LOCK_KEY
    from newsletter.store.schema import state

    site = make_site(tmp_path, scan_interval="10m")
    engine = engine_of(site.settings())
    proc = _daemon(site)

    def holder() -> str | None:
        with engine.connect() as conn:
            return conn.scalar(select(state.c.value).where(state.c.key == LOCK_KEY))

    try:
        started = _started(proc)
        # SQLite: one daemon, holding the lock row; PostgreSQL: any number, no row.
        assert (holder() is not None) == (engine.dialect.name == "sqlite")
        proc.send_signal(signal.SIGINT)
        # Bounds a hang only: the first pass (its imports) may still be running
        # and is waited for; under load that took over 10 s (a full-suite run).
        _out, err = proc.communicate(timeout=60)
        err = started + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGINT" in err and "daemon stopped after" in err
    assert holder() is None  # the lock went with it


def test_upcoming_helpers_for_status() -> None:
    from newsletter.cli.daemon import upcoming_json, upcoming_line
    from newsletter.daemon.planning import UpcomingSend

    at = datetime(2031, 3, 9, 7, 0, tzinfo=UTC)
    post = UpcomingSend("a-letter", "A Letter", "sample", at)
    digest = UpcomingSend("digest:weekly:x", "Weekly: 2 posts", "weekly", at, "digest", ("a", "b"))
    assert upcoming_line(post) == "2031-03-09T07:00:00+00:00  a-letter → sample"
    assert (
        upcoming_line(digest) == "2031-03-09T07:00:00+00:00  digest:weekly:x → weekly [digest of 2]"
    )
    assert upcoming_json(digest) == {
        "post": "digest:weekly:x",
        "title": "Weekly: 2 posts",
        "list": "weekly",
        "at": "2031-03-09T07:00:00+00:00",
        "kind": "digest",
        "post_ids": ["a", "b"],
    }


def test_json_log_lines_carry_extra_fields_and_exceptions() -> None:
    import io
    import logging

    from newsletter.logging_setup import remove_logging, setup_logging

    stream = io.StringIO()
    handler = setup_logging(json_lines=True, stream=stream)
    again = setup_logging(json_lines=True, stream=stream)  # replaces, never duplicates
    try:
        log = logging.getLogger("newsletter.daemon")
        log.warning(
            "mailing %d: %s", 7, "refused", extra={"recipient": "ada@example.com", "code": 550}
        )
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("oops")
    finally:
        remove_logging(again)
        remove_logging(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "mailing 7: refused" and first["level"] == "warning"
    assert first["recipient"] == "ada@example.com" and first["code"] == 550
    assert "ValueError: bad" in second["exception"]
    assert handler not in logging.getLogger("newsletter").handlers


def test_run_serve_answers_public_endpoints_beside_the_daemon(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.smtpserver import free_port

    port = free_port()
    site = make_site(
        tmp_path, scan_interval="10m", extra=f'[web]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(site.config),
            "run",
            "--no-watch",
            "--serve",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = b""
        deadline = time.monotonic() + 60  # bounds a hang: start-up takes seconds under load
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = resp.read()
            except OSError:
                time.sleep(0.1)
        assert body, "the public server never answered /healthz"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"serving unsubscribe and archive at http://127.0.0.1:{port}" in err
    with pytest.raises(OSError):  # stopped with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_run_serve_on_a_taken_port_points_at_web_port(tmp_path: Path) -> None:
    """`run` has no --port: the one line says which setting to change."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        site = make_site(tmp_path, extra=f'[web]\nhost = "127.0.0.1"\nport = {port}\n')
        code, _out, err = invoke("--config", str(site.config), "run", "--no-watch", "--serve")
    assert code == 1
    assert err.endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (change [web] port)\n"
    )


def test_a_daemon_stops_when_a_newer_newsletter_upgrades_the_schema_under_it(
    tmp_path: Path,
) -> None:
    # On PostgreSQL any number of daemons share a store with no lock row, so a
    # newer binary started beside them upgrades it; they went on writing the old way.

    from newsletter.store import now
    from newsletter.store.schema import SCHEMA_VERSION, schema_version

    site = make_site(tmp_path, scan_interval="10m")
    engine = engine_of(site.settings())
    proc = _daemon(site)
    try:
        started = _started(proc)
        with engine.begin() as conn:
            conn.execute(
                schema_version.insert().values(version=SCHEMA_VERSION + 1, applied_at=now())
            )
        # The next heartbeat (every 5 s) notices; the bound only catches a hang.
        _out, err = proc.communicate(timeout=60)
        err = started + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert f"upgraded to schema version {SCHEMA_VERSION + 1} by a newer newsletter" in err
    assert err.rstrip().endswith(
        f"error: database.url: stopped: a newer newsletter upgraded the database to schema version "
        f"{SCHEMA_VERSION + 1}; upgrade newsletter here"
    ), err


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_run_once_sends_when_its_output_cannot_be_written(sample_site: Path, stdout: str) -> None:
    """A cron job whose log is on a full disk, or whose standard output is
    closed: the sync's summary line raised before the pass (nothing sent), and
    a closed stdout made `sys.stdout.isatty()` an AttributeError."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "newsletter", "run", "--once", "--sync"]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
    else:
        shell = " ".join(command) + " >&-"
        done = subprocess.run(["sh", "-c", shell], stderr=subprocess.PIPE, text=True)
    outbox = mailbox.Maildir(sample_site / ".newsletter" / "outbox", create=False)
    assert len(list(outbox)) == 9, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    if stdout == "full":
        assert done.returncode == 1
        assert done.stderr.rstrip().endswith("error: No space left on device"), done.stderr
    else:
        assert done.returncode == 0, done.stderr


def test_log_json_reports_a_broken_post_as_a_json_problem_event(tmp_path: Path) -> None:
    # The pass's problems were written as plain lines into the JSON stream.
    site = make_site(tmp_path)
    settings = site.settings()
    add_members(engine_of(settings), "news", settings=settings)
    (site.posts / "2025-05-01-broken.md").write_text("---\ntitle: [oops\n---\nbody\n")
    site.write_post("2025-06-01-fine.md", "Fine", PAST)
    code, _out, err = invoke("--config", str(site.config), "run", "--once", "--log-json")
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), err
    problems = [json.loads(line) for line in lines if "2025-05-01-broken.md" in line]
    assert len(problems) == 1, err
    assert problems[0]["event"] == "problem" and problems[0]["level"] == "error"


@pytest.mark.parametrize("once", [True, False])
def test_run_without_a_configuration_is_refused_before_it_writes_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, once: bool
) -> None:
    # In cron's $HOME it made a database and a secret there, then failed on
    # a posts folder it guessed ("site.posts_dir: posts folder not found").
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    code, _out, err = invoke("run", *(["--once"] if once else ["--no-watch"]))
    assert code == 1
    assert err.startswith("error: no newsletter.toml in this folder"), err
    assert list(tmp_path.iterdir()) == []
