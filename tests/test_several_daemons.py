"""Several real `newsletter run` daemons on one database (issue 12).

On PostgreSQL any number run side by side: each due post is planned once
(whoever wins), every daemon delivers, and a kill -9 of one leaves the rest
to finish.  On SQLite a second daemon is still refused with one line.
Real subprocesses, a real SMTP server on 127.0.0.1, the test's own database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import func, select
from test_cli_send import add_readers, smtp_config

from newsletter.config import load_settings
from newsletter.store import open_store
from newsletter.store.schema import deliveries, mailings

CONCURRENCY = 2
POSTS = 3  # the sample's due posts; its fourth is dated ahead (conftest.SAMPLE_FUTURE_DATE)
READERS = 120

pytestmark = pytest.mark.slow


class Running:
    """One `newsletter run` process whose stderr (JSON log lines) is collected."""

    def __init__(self, config: Path, cwd: Path, owner: str) -> None:
        env = {**os.environ, "NEWSLETTER_OWNER": owner}
        env.pop("NEWSLETTER_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "--config", str(config), "run", "--no-watch",
             "--log-json"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def events(self, name: str) -> list[dict[str, object]]:
        records = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
        return [r for r in records if r.get("event") == name]

    def sent(self) -> int:
        return sum(int(str(r.get("sent", 0))) for r in self.events("mailing-finish"))

    def stop(self) -> int:
        """SIGTERM, then its exit status (60 s bounds a hang only: a daemon
        waits for its pass in flight, and on a loaded machine a daemon with
        nothing to send took over 10 s to stop, tests/test_daemon_cli.py)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=5)
        return code

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def pg_site(sample_site: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", pg_url)
    monkeypatch.setenv("NEWSLETTER_SECRET", "daemons-test-secret")
    return sample_site


def configure(site: Path, server: SmtpTestServer, rate: int) -> Path:
    config = smtp_config(site, server)
    text = config.read_text()
    text = text.replace("concurrency = 2\n", f"concurrency = {CONCURRENCY}\n")
    # The deployment's rate (shared by the daemons) makes the run last long
    # enough for every daemon to start; short leases make small batches.
    text = text.replace("rate_per_second = 0\n", f"rate_per_second = {rate}\nlease_seconds = 4\n")
    text = text.replace('scan_interval = "60s"', 'scan_interval = "1s"')
    config.write_text(text)
    settings = load_settings(config)
    assert settings.delivery.rate_per_second == rate and settings.schedule.scan_interval == 1
    return config


def per_post(server: SmtpTestServer) -> Counter[tuple[str, str]]:
    """(recipient, subject) → how many times it arrived."""
    counts: Counter[tuple[str, str]] = Counter()
    for item in list(server.received):
        subject = str(message_from_bytes(item.data, policy=policy.default)["Subject"])
        for rcpt in item.rcpt_tos:
            counts[(rcpt, subject)] += 1
    return counts


def ledger(config: Path) -> tuple[int, dict[str, int]]:
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        planned = int(conn.scalar(select(func.count()).select_from(mailings)) or 0)
        query = select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
        return planned, {status: n for status, n in conn.execute(query).all()}


def wait_until_all_sent(config: Path, daemons: list[Running], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while ledger(config)[1] != {"sent": POSTS * READERS}:
        for daemon in daemons:
            assert daemon.proc.poll() is None, daemon.text()  # each stays up
        assert time.monotonic() < deadline, ledger(config)
        time.sleep(0.2)


def delivering(daemon: Running) -> bool:
    """The daemon has started a mailing with recipients due."""
    return any(int(str(r.get("due", 0))) > 0 for r in daemon.events("mailing-start"))


def test_two_daemons_on_one_postgresql_plan_once_and_both_deliver(
    pg_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = configure(pg_site, smtp_server, rate=40)
    add_readers(config, READERS)
    # The mailings cannot end before both daemons deliver: the server keeps
    # its replies from the 5th message until each has started a mailing with
    # recipients due.  Before, the rate alone (360 messages, 9 s) had to
    # outlast the second interpreter's start, which a loaded machine can take.
    smtp_server.hold(after=5)
    daemons = [Running(config, pg_site, f"daemon-{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 60  # bounds a hang
        while not all(delivering(d) for d in daemons):
            for daemon in daemons:
                assert daemon.proc.poll() is None, daemon.text()
            assert time.monotonic() < deadline, [d.text() for d in daemons]
            time.sleep(0.1)
        smtp_server.release()
        wait_until_all_sent(config, daemons)
    finally:
        smtp_server.release()
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.text() for d in daemons]
    counts = per_post(smtp_server)
    assert len(counts) == POSTS * READERS  # every post reached every reader
    assert set(counts.values()) == {1}  # and nobody twice
    assert ledger(config) == (POSTS, {"sent": POSTS * READERS})  # one mailing per post
    shares = [d.sent() for d in daemons]
    assert sum(shares) == POSTS * READERS
    assert all(share > 0 for share in shares), shares  # both did real work


def test_kill_9_of_one_daemon_leaves_the_others_to_finish(
    pg_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = configure(pg_site, smtp_server, rate=40)
    add_readers(config, READERS)
    daemons = [Running(config, pg_site, f"daemon-{i}") for i in range(3)]
    try:
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < POSTS * READERS // 4 or not daemons[0].sent():
            assert daemons[0].proc.poll() is None, daemons[0].text()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        daemons[0].proc.send_signal(signal.SIGKILL)
        daemons[0].proc.wait()
        wait_until_all_sent(config, daemons[1:])
    finally:
        codes = [d.stop() for d in daemons[1:]]
    assert codes == [0, 0], [d.text() for d in daemons[1:]]
    counts = per_post(smtp_server)
    assert len(counts) == POSTS * READERS  # nobody lost
    # At most what the dead daemon had in flight went twice.
    assert sum(n - 1 for n in counts.values()) <= CONCURRENCY
    assert ledger(config) == (POSTS, {"sent": POSTS * READERS})


def test_on_sqlite_a_second_daemon_is_refused_with_one_line(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "daemons-test-secret")
    config = configure(sample_site, smtp_server, rate=0)
    first = Running(config, sample_site, "first")
    try:
        deadline = time.monotonic() + 30
        while not first.events("started"):
            assert first.proc.poll() is None, first.text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "newsletter", "--config", str(config), "run", "--no-watch"],
            cwd=sample_site, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert first.proc.poll() is None  # the first one is untouched
    finally:
        assert first.stop() == 0, first.text()
    assert second.returncode == 1 and second.stdout == ""
    assert len(second.stderr.splitlines()) == 1, second.stderr
    assert second.stderr.startswith("error: database.url: another newsletter daemon (")


def test_a_post_pulled_mid_mailing_stops_every_daemon_and_is_logged_once(
    pg_site: Path, smtp_server: SmtpTestServer
) -> None:
    """Two daemons send a post; it is unpublished mid-mailing.  Both stop
    sending it (the halt is one update in the database), one of them logs
    it, and the other posts still reach everyone."""
    config = configure(pg_site, smtp_server, rate=20)
    text = config.read_text().replace("lease_seconds = 4\n", "lease_seconds = 1.5\n")
    config.write_text(text)  # a sending pass reads its post again every 0.5 s
    add_readers(config, READERS)
    daemons = [Running(config, pg_site, f"daemon-{i}") for i in range(2)]
    engine = open_store(load_settings(config))
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                row = conn.execute(
                    select(mailings.c.post_id, func.count())
                    .join(deliveries, deliveries.c.mailing_id == mailings.c.id)
                    .where(deliveries.c.status == "sent")
                    .group_by(mailings.c.post_id)
                ).first()
            if row is not None and row[1] >= 10:
                break
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        pulled = row[0]
        (path,) = (pg_site / "posts").glob(f"*-{pulled}.md")
        path.write_text(path.read_text().replace("---\n", "---\npublished: false\n", 1))
        deadline = time.monotonic() + 120
        while True:  # the other posts finish
            with engine.connect() as conn:
                done = conn.execute(
                    select(mailings.c.post_id, mailings.c.state).order_by(mailings.c.id)
                ).all()
            if len(done) == POSTS and all(s == "done" for p, s in done if p != pulled):
                break
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.text() for d in daemons]
    states = dict(done)
    assert states[pulled] == "withdrawn"
    withdrawn = [e for d in daemons for e in d.events("mailing-withdrawn")]
    assert len(withdrawn) == 1, withdrawn  # logged once, by the daemon that made it
    assert withdrawn[0]["post_id"] == pulled
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(
                select(deliveries.c.status, func.count())
                .join(mailings, mailings.c.id == deliveries.c.mailing_id)
                .where(mailings.c.post_id == pulled)
                .group_by(deliveries.c.status)
            ).all()
        )
    sent = by_status.get("sent", 0)
    assert withdrawn[0]["sent"] <= sent < READERS // 2, by_status  # stopped early
    assert by_status.get("queued", 0) == READERS - sent  # the rest wait, none leased
    counts = per_post(smtp_server)
    assert len(counts) == (POSTS - 1) * READERS + sent  # what the ledger says went
    assert set(counts.values()) == {1}
