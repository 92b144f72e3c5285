"""Several real `newsletter` processes on one PostgreSQL (invariant 7).

Each test starts real subprocesses against a real SMTP server on 127.0.0.1
and the test's own PostgreSQL database: they share a mailing, survive a
kill -9 of one of them, and create the schema and plan the same post at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import func, select
from test_cli_send import add_readers, smtp_config

from newsletter.config import load_settings
from newsletter.store import open_store, open_url
from newsletter.store.schema import deliveries, mailings

POST = "how-sleep-consolidates-memory"
CONCURRENCY = 2

pytestmark = pytest.mark.slow


@pytest.fixture
def site(sample_site: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", pg_url)
    monkeypatch.setenv("NEWSLETTER_SECRET", "scale-test-secret")
    return sample_site


def configure(site: Path, server: SmtpTestServer, rate: int) -> Path:
    config = smtp_config(site, server)
    text = config.read_text()
    text = text.replace("concurrency = 2\n", f"concurrency = {CONCURRENCY}\n")
    # Short leases: small batches (rate × lease / 4), so that every sender gets
    # some, and several renewals within a run.
    text = text.replace("rate_per_second = 0\n", f"rate_per_second = {rate}\nlease_seconds = 4\n")
    config.write_text(text)
    assert load_settings(config).delivery.rate_per_second == rate
    return config


def send(config: Path, cwd: Path, owner: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEWSLETTER_OWNER": owner}
    env.pop("NEWSLETTER_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", POST,
         "--list", "sample"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def sent_by(proc: subprocess.Popen[bytes]) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    # "sent 123, deferred 0, failed 0, skipped 0" (or "already sent" when nothing was left)
    words = out.decode().split()
    return int(words[1].rstrip(",")) if words[:1] == ["sent"] else 0


def statuses(config: Path) -> dict[str, int]:
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
        return {status: n for status, n in conn.execute(query).all()}


def test_three_senders_share_one_mailing_exactly_once(
    site: Path, smtp_server: SmtpTestServer
) -> None:
    n = 450
    # The rate is the deployment's: ~9 s whatever the number of senders, long
    # enough for all three to have started (imports take seconds on a busy machine).
    config = configure(site, smtp_server, rate=50)
    add_readers(config, n)
    procs = [send(config, site, f"host-{i}") for i in range(3)]
    shares = [sent_by(p) for p in procs]
    counts = Counter(smtp_server.recipients())
    assert len(counts) == n  # nobody lost
    assert set(counts.values()) == {1}  # nobody twice
    assert sum(shares) == n
    assert all(share > 0 for share in shares), shares  # each did real work
    assert statuses(config) == {"sent": n}


def test_kill_9_one_sender_then_another_host_finishes(
    site: Path, smtp_server: SmtpTestServer
) -> None:
    n = 450
    config = configure(site, smtp_server, rate=50)
    add_readers(config, n)
    procs = [send(config, site, f"host-{i}") for i in range(3)]
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < n // 4:
        assert procs[0].poll() is None, procs[0].communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    # Restarted elsewhere: another owner identity, as on another host.
    procs[0] = send(config, site, "host-elsewhere")
    for proc in procs:
        sent_by(proc)
    counts = Counter(smtp_server.recipients())
    assert len(counts) == n  # nobody lost
    assert sum(c - 1 for c in counts.values()) <= CONCURRENCY  # only what was in flight
    assert statuses(config) == {"sent": n}


STARTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from newsletter.audience import members as subs
    from newsletter.config import ListSettings, Settings
    from newsletter.delivery import plan_mailing
    from newsletter.store import open_url

    url, go = sys.argv[1], Path(sys.argv[2])
    (go.parent / f"ready-{sys.argv[3]}").touch()  # imported, about to wait
    while not go.exists():
        time.sleep(0.001)
    engine = open_url(url)  # creates the schema: three at the same instant
    settings = Settings(lists={"news": ListSettings("news", "News")})
    subs.ensure_lists(engine, settings)
    for i in range(20):
        subs.add_subscriber(engine, f"m{i}@example.com", "news")
    print(plan_mailing(engine, settings, "the-post", "news"))
    """
)


@pytest.mark.parametrize("round_", range(3))
def test_three_processes_create_the_schema_and_plan_the_same_post_at_once(
    pg_url: str, tmp_path: Path, round_: int
) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, pg_url, str(go), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    # Every interpreter started and waiting: not a fixed 1 s, which a loaded
    # machine's imports outlast (the processes then did not start together).
    deadline = time.monotonic() + 60
    try:
        while len(list(tmp_path.glob("ready-*"))) < 3:
            dead = [p.communicate() for p in procs if p.poll() is not None]
            assert not dead, dead
            assert time.monotonic() < deadline, "the interpreters never got ready"
            time.sleep(0.01)
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:  # none left waiting for `go` after a failure
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    assert len({out.strip() for out, _ in results}) == 1  # one mailing for all three
    engine = open_url(pg_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(mailings)) == 1
        assert conn.scalar(select(func.count()).select_from(deliveries)) == 20
