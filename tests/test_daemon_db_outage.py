"""The daemon when PostgreSQL drops every session mid-mailing (a failover, an
administrator's pg_terminate_backend, a restart): a real daemon process, a
real cluster, a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pgcluster import DATABASE, PgCluster
from smtpserver import SmtpTestServer
from test_daemon import PAST, many_members, smtp_site, spawn, wait_for
from test_daemon_support import add_members, engine_of

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
