"""The daemon when PostgreSQL drops every session mid-mailing (a failover, an
administrator's pg_terminate_backend, a restart): a real daemon process, a
real cluster, a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pgcluster import DATABASE, PgCluster
from smtpserver import SmtpTestServer
from test_daemon import PAST, many_members, smtp_site, spawn, wait_for
from test_daemon_support import Site, add_members, engine_of

pytestmark = pytest.mark.usefixtures("database_env")


@pytest.mark.slow
def test_sessions_killed_mid_mailing_the_daemon_carries_on_and_says_so_in_one_line(
    tmp_path: Path, smtp_server: SmtpTestServer, request: pytest.FixtureRequest
) -> None:
    # A client timeout well past how long the server holds its replies.
    site = smtp_site(
        tmp_path, smtp_server.port, scan_interval="1s", rate=20, concurrency=2, smtp_timeout=120
    )
    settings = site.settings()
    engine = engine_of(settings)
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server whose sessions can be dropped")
    members = many_members(40)
    add_members(engine, "news", members, settings=settings)
    engine.dispose()
    site.write_post("2025-06-01-long.md", "Long", PAST)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    # The replies from the 5th message on wait until the sessions are gone:
    # the daemon is mid-mailing when they die, however slow the machine (at
    # 20/s the rest of the mailing took 1.75 s, a race with the test's kill).
    smtp_server.hold(after=5)
    proc = spawn(site, "--no-watch")
    try:
        assert wait_for(lambda: len(smtp_server.recipients()) >= 5, 60.0)
        with cluster.admin(DATABASE) as conn:
            cluster._end_sessions(conn, str(engine.url.username))
        smtp_server.release()
        everyone = wait_for(lambda: set(smtp_server.recipients()) == set(members), 60.0)
        time.sleep(1.5)  # one more scan: still running, nothing sent again
        alive = proc.poll() is None
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert everyone, err
    assert alive, err
    counts = Counter(smtp_server.recipients())
    # Invariant 2: at most the messages in flight (concurrency 2) went twice.
    assert sum(n - 1 for n in counts.values()) <= 2
    # The outage is reported, once per failure and in one line each: no
    # tracebacks from the connection pool, no SQL, no parameters.
    assert "Traceback" not in err
    assert "[SQL:" not in err and "[parameters:" not in err and "sqlalche.me" not in err
    problems = [line for line in err.splitlines() if "WARNING" in line or "ERROR" in line]
    # In the driver's words ("terminating connection due to administrator
    # command" or "the connection is lost", whichever statement met it first).
    assert any(p.count("connection") and "error: mailing 1: " in p for p in problems), err
    # A long mailing spans many scan intervals: that is normal, not a warning.
    assert "maximum number of running instances" not in err


# --------------------------------------------------------------------------- the database gone


def _held_mid_mailing(
    tmp_path: Path, smtp_server: SmtpTestServer, **site: object
) -> tuple[Site, tuple[str, ...], str]:
    """A PostgreSQL site with a post due to 40 members, the SMTP server set to
    hold its replies from the 5th message on: (site, members, the role)."""
    site_ = smtp_site(tmp_path, smtp_server.port, concurrency=2, smtp_timeout=120, **site)
    settings = site_.settings()
    engine = engine_of(settings)
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server that can go away")
    members = many_members(40)
    add_members(engine, "news", members, settings=settings)
    role = str(engine.url.username)
    engine.dispose()
    site_.write_post("2025-06-01-long.md", "Long", PAST)
    smtp_server.hold(after=5)
    return site_, members, role


def _newsletter(site: Site, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(site.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _one_line_only(err: str) -> None:
    """No traceback, no SQL, no parameters: what an operator reads is the driver's reason."""
    assert "Traceback" not in err, err
    assert "[SQL:" not in err and "[parameters:" not in err and "sqlalche.me" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("command", [("send", "long", "--list", "news"), ("run", "--once")])
def test_the_database_gone_mid_mailing_ends_a_command_with_one_line(
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    request: pytest.FixtureRequest,
    command: tuple[str, ...],
) -> None:
    site, members, role = _held_mid_mailing(tmp_path, smtp_server)
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    proc = _newsletter(site, *command)
    try:
        assert wait_for(lambda: len(smtp_server.recipients()) >= 5, 60.0)
        cluster.lock_out(role)  # as a stopped cluster: sessions end, connections refused
        smtp_server.release()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _one_line_only(err)
    assert proc.returncode == 1, err
    assert any(line.startswith("error: ") for line in err.splitlines()), err
    # The ledger stayed right: once the database is back, the same command
    # finishes the mailing; only the messages in flight (concurrency 2) twice.
    cluster.let_in(role)
    again = _newsletter(site, *command)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    counts = Counter(smtp_server.recipients())
    assert set(counts) == set(members)
    assert sum(n - 1 for n in counts.values()) <= 2, counts


@pytest.mark.slow
def test_the_database_down_for_several_scans_is_one_warning_then_one_recovery(
    tmp_path: Path, smtp_server: SmtpTestServer, request: pytest.FixtureRequest
) -> None:
    site, members, role = _held_mid_mailing(tmp_path, smtp_server, scan_interval="0.3s")
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    proc = spawn(site, "--no-watch")
    try:
        assert wait_for(lambda: len(smtp_server.recipients()) >= 5, 60.0)
        cluster.lock_out(role)
        smtp_server.release()
        time.sleep(3)  # ten scans or so, every one of them failing
        alive = proc.poll() is None
        cluster.let_in(role)
        everyone = wait_for(lambda: set(smtp_server.recipients()) == set(members), 60.0)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert alive and everyone, err
    _one_line_only(err)
    down = [line for line in err.splitlines() if "database unavailable" in line]
    assert len(down) == 1, err
    # Said when a scan reaches it again, not once the rest of the mailing is sent.
    lines = err.splitlines()
    back = next(i for i, line in enumerate(lines) if "database reachable again" in line)
    goes_on = max(i for i, line in enumerate(lines) if "mailing 1 start" in line)
    assert back < goes_on, err
