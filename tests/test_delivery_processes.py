"""`[delivery] processes`: worker processes share one mailing over real SMTP (aiosmtpd).

Each worker claims its own leases; the parent sends a share too, folds the
workers' progress and counts into its own, and sends the rows of a worker
that died.  On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SmtpTestServer, _Handler
from sqlalchemy import Engine
from test_delivery_smtp import ledger, populate, site_settings

from newsletter.config import Settings, load_settings
from newsletter.delivery import processes
from newsletter.delivery.mailings import deliver_mailing, mailing_summaries, plan_mailing
from newsletter.errors import ConfigError
from newsletter.posts.collection import load_posts

pytestmark = pytest.mark.usefixtures("database_env")

POST = "how-sleep-consolidates-memory"


@pytest.fixture(autouse=True)
def _small_mailings_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers even for a test-sized mailing (only the parent decides how many)."""
    monkeypatch.setattr(processes, "MIN_ROWS_PER_PROCESS", 1)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "processes-test-secret")


def gate(monkeypatch: pytest.MonkeyPatch, connections: int, seconds: float) -> None:
    """No DATA is answered before `connections` sessions said EHLO (the worker's
    too: a fresh interpreter takes a second or two to start), then each takes
    `seconds`, so a mailing lasts long enough to watch."""
    real_ehlo, real_data = _Handler.handle_EHLO, _Handler.handle_DATA
    seen: list[int] = []
    opened: list[asyncio.Event] = []

    def event() -> asyncio.Event:
        if not opened:
            opened.append(asyncio.Event())
        return opened[0]

    async def ehlo(  # aiosmtpd reads this signature: it must be the full one
        self: _Handler, smtp: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        seen.append(1)
        if len(seen) >= connections:
            event().set()
        return await real_ehlo(self, smtp, session, envelope, hostname, responses)

    async def data(self: _Handler, smtp: Any, session: Any, envelope: Any) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event().wait(), 30)
        await asyncio.sleep(seconds)
        return await real_data(self, smtp, session, envelope)

    monkeypatch.setattr(_Handler, "handle_EHLO", ehlo)
    monkeypatch.setattr(_Handler, "handle_DATA", data)


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_workers_share_a_mailing_and_each_recipient_gets_it_once(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    pipelining: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_server.pipelining = pipelining
    gate(monkeypatch, 4, 0.01)
    settings = site_settings(
        sample_site,
        smtp_server,
        **{
            "delivery.processes": 2,
            "delivery.concurrency": 4,
            # Named, so that no probe connection counts at the gate.
            "delivery.strategy": "streams" if pipelining else "threaded",
        },
    )
    engine = populate(settings, 80)
    smtp_server.script("r007@example.org", "550 5.1.1 No such user here")
    mid = plan_mailing(engine, settings, POST, "sample")
    seen: list[tuple[int, int, str]] = []
    report = deliver_mailing(
        engine,
        settings,
        mid,
        load_posts(settings),
        progress=lambda d, t: seen.append((d, t, threading.current_thread().name)),
    )
    expected = [f"r{i:03d}@example.org" for i in range(80) if i != 7]
    assert sorted(smtp_server.recipients()) == expected  # each once, nobody lost
    assert (report.sent, report.failed, report.deferred) == (79, 1, 0)
    assert len(report.errors) == 1 and "r007@example.org" in report.errors[0]
    rows = ledger(engine)
    assert {e: r.status for e, r in rows.items() if r.status != "sent"} == {
        "r007@example.org": "failed"
    }
    assert all(r.lease_owner is None for r in rows.values())
    # The worker did real work: its progress reached ours through the pipe.
    assert any(name == "workers" for _, _, name in seen)
    assert max(d for d, _, _ in seen) == 80 and {t for _, t, _ in seen} == {80}
    assert mailing_summaries(engine)[0].state == "done"
    assert not multiprocessing.active_children()


def two_slow_workers(
    site: Path,
    server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    size: int = 60,
    seconds: float = 0.02,
) -> tuple[Settings, Engine, int]:
    """A planned mailing of `size` for two processes of one streams connection
    each, sending slowly enough (gated: `seconds` a message) to be killed or
    stopped mid-way."""
    server.pipelining = True
    gate(monkeypatch, 2, seconds)
    settings = site_settings(
        site,
        server,
        **{"delivery.processes": 2, "delivery.concurrency": 2, "delivery.strategy": "streams"},
    )
    engine = populate(settings, size)
    return settings, engine, plan_mailing(engine, settings, POST, "sample")


def test_a_killed_worker_s_rows_are_sent_by_the_parent(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, engine, mid = two_slow_workers(sample_site, smtp_server, monkeypatch)
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        # Once the worker has sent a few, kill -9 it mid-mailing.
        if not killed and threading.current_thread().name == "workers" and done >= 10:
            (worker,) = multiprocessing.active_children()
            assert worker.pid is not None
            killed.append(worker.pid)
            os.kill(worker.pid, signal.SIGKILL)

    report = deliver_mailing(engine, settings, mid, load_posts(settings), progress=progress)
    assert killed
    received = Counter(smtp_server.recipients())
    everyone = {f"r{i:03d}@example.org" for i in range(60)}
    assert set(received) == everyone  # nobody lost
    # Invariant 2: only the worker's message in flight (one connection) may go twice.
    assert sum(n - 1 for n in received.values()) <= 1
    assert all(r.status == "sent" and r.lease_owner is None for r in ledger(engine).values())
    # The worker's counts up to its last report (every 0.2 s) and ours; a
    # message counted by the worker but not yet committed was sent again here.
    assert 40 <= report.sent <= 61 and report.failed == report.deferred == 0
    assert mailing_summaries(engine)[0].state == "done"


def test_a_stop_reaches_the_workers_and_leaves_the_rest_queued(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, engine, mid = two_slow_workers(sample_site, smtp_server, monkeypatch)
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if threading.current_thread().name == "workers" and done >= 6:
            stop.set()

    report = deliver_mailing(
        engine, settings, mid, load_posts(settings), stop=stop, progress=progress
    )
    received = Counter(smtp_server.recipients())
    rows = ledger(engine)
    sent = {e for e, r in rows.items() if r.status == "sent"}
    assert 6 <= len(sent) < 60 and report.sent == len(sent)
    assert set(received) == sent and max(received.values()) == 1
    # What was not sent is claimable again at once: no lease left behind.
    assert all(
        r.status == "queued" and r.lease_owner is None for e, r in rows.items() if e not in sent
    )
    assert not multiprocessing.active_children()
    # A second run finishes the mailing, nobody twice.
    deliver_mailing(engine, settings, mid, load_posts(settings))
    assert sorted(Counter(smtp_server.recipients()).values()) == [1] * 60


def test_a_small_mailing_or_a_single_connection_stays_in_one_process(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "MIN_ROWS_PER_PROCESS", 2000)
    settings = site_settings(
        sample_site, smtp_server, **{"delivery.processes": 4, "delivery.concurrency": 8}
    )
    assert processes.process_count(settings, 1999) == 1
    assert processes.process_count(settings, 5000) == 2
    assert processes.process_count(settings, 100_000) == 4
    one = site_settings(sample_site, smtp_server, **{"delivery.processes": 4})
    assert processes.process_count(one, 100_000) == 2  # concurrency 2: one connection each
    assert processes.shares(8, 3) == [3, 3, 2]


def test_auto_splits_a_big_mailing_over_several_connections_on_two_cores(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "MIN_ROWS_PER_PROCESS", 2000)
    monkeypatch.setattr(processes, "AUTO_MIN_ROWS", 10_000)
    auto = {"delivery.processes": "auto", "delivery.concurrency": 4}
    settings = site_settings(sample_site, smtp_server, **auto)

    def count(settings: Settings, rows: int, cores: int, threads: bool = True) -> int:
        return processes.process_count(settings, rows, cores, lambda: threads)

    assert count(settings, 9_999, cores=2) == 1  # small
    assert count(settings, 10_000, cores=2) == 2  # big
    assert count(settings, 10_000, cores=2, threads=False) == 1  # the streams (PIPELINING)
    assert count(settings, 1_000_000, cores=8) == 2  # two, measured
    assert count(settings, 1_000_000, cores=1) == 1  # one core
    single = site_settings(sample_site, smtp_server, **{**auto, "delivery.concurrency": 1})
    assert count(single, 1_000_000, cores=2) == 1  # one connection
    forced = site_settings(sample_site, smtp_server, **{**auto, "delivery.processes": 3})
    assert count(forced, 10_000, cores=1, threads=False) == 3  # a number still forces
    # The cores this process may use (taskset, a container), not the machine's;
    # whether the server pipelines, asked of the server (aiosmtpd here does).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert processes.usable_cores() == 2
    threaded = site_settings(sample_site, smtp_server, **{**auto, "delivery.strategy": "threaded"})
    assert processes.uses_threads(threaded)
    assert processes.process_count(threaded, 50_000) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert processes.process_count(threaded, 50_000) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    # `strategy = "auto"` streams several connections with or without
    # PIPELINING, so it never splits; one connection without PIPELINING is
    # a thread (the server is asked), with it the streams.
    for pipelining in (False, True):
        smtp_server.pipelining = pipelining
        assert not processes.uses_threads(settings)
        assert processes.process_count(settings, 50_000) == 1
    single_auto = site_settings(sample_site, smtp_server, **{**auto, "delivery.concurrency": 1})
    smtp_server.pipelining = False
    assert processes.uses_threads(single_auto)
    smtp_server.pipelining = True
    assert not processes.uses_threads(single_auto)


@pytest.mark.parametrize("size", [30, 29], ids=["big", "small"])
def test_auto_in_a_pass_splits_only_a_big_mailing(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The pass asks `process_count` with the real core count: here at least 2."""
    monkeypatch.setattr(processes, "AUTO_MIN_ROWS", 30)
    monkeypatch.setattr(processes, "usable_cores", lambda: 2)
    smtp_server.pipelining = False  # "auto" splits the threaded strategy only
    gate(monkeypatch, 2, 0.01)  # both connections open before any message: both processes send
    settings = site_settings(
        sample_site,
        smtp_server,
        **{
            "delivery.processes": "auto",
            "delivery.concurrency": 2,
            "delivery.strategy": "threaded",
        },
    )
    engine = populate(settings, size)
    mid = plan_mailing(engine, settings, POST, "sample")
    threads: set[str] = set()
    report = deliver_mailing(
        engine,
        settings,
        mid,
        load_posts(settings),
        progress=lambda d, t: threads.add(threading.current_thread().name),
    )
    assert report.sent == size and sorted(Counter(smtp_server.recipients()).values()) == [1] * size
    assert ("workers" in threads) == (size == 30)  # a worker process reported progress


@pytest.mark.parametrize("value", [0, -1, 65, "two", "Auto", True, 1.5])
def test_processes_must_be_auto_or_between_1_and_64(sample_site: Path, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(sample_site / "newsletter.toml", {"delivery.processes": value})
    assert caught.value.key == "delivery.processes"
    assert "auto" in str(caught.value)


def test_processes_from_the_file_and_its_default(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    assert load_settings(config).delivery.processes == 1
    text = config.read_text()
    assert "[delivery]" in text
    config.write_text(text.replace("[delivery]", "[delivery]\nprocesses = 2", 1))
    assert load_settings(config).delivery.processes == 2
    config.write_text(text.replace("[delivery]", '[delivery]\nprocesses = "two"', 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == "delivery.processes"


def test_a_worker_collects_garbage_as_the_cli_does() -> None:
    """A spawned worker starts a fresh interpreter, without the CLI's thresholds;
    `worker_start` sets them (at the default, the collector walked the
    worker's long-lived objects again and again: ~4 % of a send's CPU)."""
    import gc

    from newsletter import GC_THRESHOLDS

    before = gc.get_threshold()
    ours, theirs = multiprocessing.Pipe()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        gc.set_threshold(700, 10, 10)
        processes.worker_start(theirs)
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        ours.close()  # the listening thread sees the pipe close and ends
        theirs.close()


def test_a_worker_logs_as_the_cli_does(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """With the daemon's logging set up (JSON lines here), a spawned worker's
    INFO lines reach the same standard error; a fresh interpreter has no
    handler, and they vanished."""
    import json
    import sys

    from newsletter.logging_setup import remove_logging, setup_logging

    settings, engine, mid = two_slow_workers(sample_site, smtp_server, monkeypatch, 20, 0.01)
    handler = setup_logging(json_lines=True, stream=sys.__stderr__)
    try:
        report = deliver_mailing(engine, settings, mid, load_posts(settings))
    finally:
        remove_logging(handler)
    assert report.sent == 20
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line[:1] == "{"]
    shares = [line for line in lines if "takes its share of mailing" in line["message"]]
    assert len(shares) == 1  # the one worker's (the parent runs its share in place)
    assert shares[0]["level"] == "info" and f"of mailing {mid} " in shares[0]["message"]
    assert str(os.getpid()) not in shares[0]["message"]
