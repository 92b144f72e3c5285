"""Invariant 2: kill -9 a real `newsletter send` mid-mailing, re-run, nobody skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import func, select
from test_cli_send import add_readers, smtp_config

from newsletter.config import load_settings
from newsletter.shutdown import STOPPED
from newsletter.store import open_store
from newsletter.store.schema import deliveries

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

POST = "how-sleep-consolidates-memory"
N = 300
CONCURRENCY = 3


def send(config: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEWSLETTER_SECRET": "crash-test-secret"}
    env.pop("NEWSLETTER_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", POST,
         "--list", "sample"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["streams", "rounds"])
@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_kill_9_mid_mailing_then_resume(
    sample_site: Path, smtp_server: SmtpTestServer, pipelining: bool, strategy: str
) -> None:
    smtp_server.pipelining = pipelining
    config = smtp_config(sample_site, smtp_server)
    text = config.read_text()
    text = text.replace(
        "concurrency = 2\n", f'concurrency = {CONCURRENCY}\nstrategy = "{strategy}"\n'
    )
    text = text.replace("rate_per_second = 0\n", "rate_per_second = 150\n")
    config.write_text(text)
    assert load_settings(config).delivery.concurrency == CONCURRENCY
    assert load_settings(config).delivery.strategy == strategy
    add_readers(config, N)

    first = send(config, sample_site)
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < N // 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = len(smtp_server.received)
    assert at_kill < N, "the mailing finished before the kill; slow it down"

    second = send(config, sample_site)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert out.decode().startswith("sent ")

    counts = Counter(smtp_server.recipients())
    expected = {f"reader{i:02d}@example.org" for i in range(N)}
    assert set(counts) == expected  # nobody skipped
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= CONCURRENCY
    engine = open_store(load_settings(config))
    with engine.connect() as conn:
        statuses: dict[str, int] = dict(
            conn.execute(
                select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
            ).all()
        )
    assert statuses == {"sent": N}
    # A third run has nothing left to do.
    third = send(config, sample_site)
    out, _ = third.communicate(timeout=60)
    assert "already sent" in out.decode()
    assert len(smtp_server.received) == N + duplicates


@pytest.mark.slow
def test_sigterm_finishes_in_flight_then_rerun_sends_the_rest_once(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    config = smtp_config(sample_site, smtp_server)
    fast = config.read_text().replace("rate_per_second = 0\n", "rate_per_second = 100\n")
    # The first run at 10 a second: the 100 after the first 20 would take 10 s,
    # ample for the SIGTERM to be handled on a loaded machine (at 100/s it raced 1 s).
    config.write_text(fast.replace("rate_per_second = 100\n", "rate_per_second = 10\n"))
    add_readers(config, 120)
    first = send(config, sample_site)
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 20:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == STOPPED, err.decode()  # stopped before the end: run it again
    assert "stopped: the messages in flight were finished" in err.decode()
    partial = len(smtp_server.received)
    assert partial < 120
    assert out.decode().startswith(f"sent {partial}, ")
    config.write_text(fast)
    second = send(config, sample_site)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    assert out.decode().startswith(f"sent {120 - partial}, ")
    counts = Counter(smtp_server.recipients())
    assert len(counts) == 120 and set(counts.values()) == {1}  # a clean stop: no duplicates
