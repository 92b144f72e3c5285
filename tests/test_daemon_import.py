"""A running daemon, a long `subscribers import` and a `run --once`, as real processes.

Before: the import held SQLite's write lock for its whole run, the daemon's
heartbeat waited behind it, `run --once` then took the "expired" lock and the
daemon stopped with exit 0.  Now the import stages without the write lock and
merges in one short transaction, the heartbeat goes on, a live daemon on this
host keeps its lock, and a daemon that loses its lock anyway exits 1.

The import waits between staging and merging at a test gate
(`subscribers.TEST_GATE_ENV`) until `run --once` has run: mid-import by
construction (it once raced an import that had become faster, and lost).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select, update
from test_daemon_support import Site, engine_of, make_site

from newsletter.audience.subscribers import TEST_GATE_ENV
from newsletter.daemon.scheduler import LOCK_KEY
from newsletter.store import reading
from newsletter.store.schema import state

ROWS = 150_000
HEARTBEAT_GAP = 10.0  # seconds: the heartbeat is every 5 s; the merge may delay one a little


def newsletter(site: Site, *args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", "--config", str(site.config), *args]


def lock_row(engine: Engine) -> tuple[str, datetime] | None:
    with reading(engine) as conn:
        row = conn.execute(
            select(state.c.value, state.c.updated_at).where(state.c.key == LOCK_KEY)
        ).first()
    return None if row is None else (row[0], row[1])


def start_daemon(site: Site, engine: Engine) -> tuple[subprocess.Popen[str], str]:
    daemon = subprocess.Popen(
        newsletter(site, "run", "--no-watch"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while (held := lock_row(engine)) is None and time.monotonic() < deadline:
        assert daemon.poll() is None, daemon.communicate()[1]
        time.sleep(0.1)
    assert held is not None, "the daemon never took its lock"
    return daemon, held[0]


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_a_long_import_neither_stalls_the_heartbeat_nor_loses_the_daemon_its_lock(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, scan_interval="10m")
    engine = engine_of(site.settings())
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as fh:
        fh.write("email,name,city\n")
        fh.writelines(f"reader{i}@mail{i % 500}.example.com,Reader {i},Town\n" for i in range(ROWS))
    gate = tmp_path / "gate"
    gate.mkdir()
    daemon, owner = start_daemon(site, engine)
    try:
        importer = subprocess.Popen(
            newsletter(site, "subscribers", "import", str(big), "--list", "news", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, TEST_GATE_ENV: str(gate)},
        )
        beats: list[datetime] = []
        once: subprocess.CompletedProcess[str] | None = None
        started = time.monotonic()
        while importer.poll() is None:
            held = lock_row(engine)
            assert held is not None and held[0] == owner
            if not beats or held[1] != beats[-1]:
                beats.append(held[1])
            # Mid-import: staged and planned, waiting at the gate to merge.
            if once is None and (gate / "staged").exists():
                once = subprocess.run(
                    newsletter(site, "run", "--once"), capture_output=True, text=True, timeout=120
                )
                (gate / "go").touch()
            time.sleep(0.2)
        out, err = importer.communicate()
        took = time.monotonic() - started
        # The first beat after the import: a fast import may see only one during it.
        while len(beats) < 2 and time.monotonic() - started < took + 2 * HEARTBEAT_GAP:
            held = lock_row(engine)
            if held is not None and held[1] != beats[-1]:
                beats.append(held[1])
            time.sleep(0.2)
        assert importer.returncode == 0, err
        assert '"new": 150000' in out
        assert once is not None, f"the import finished in {took:.1f} s without reaching the gate"
        assert once.returncode == 1
        assert once.stderr == (
            f"error: database.url: another newsletter daemon ({owner}, last heartbeat "
            f"{once.stderr.split('last heartbeat ')[1].split(' s ago')[0]} s ago) is running on "
            f"sqlite:///{tmp_path / 'news.db'}; stop it first (a crashed one is taken over "
            "after 30 s)\n"
        )
        # The heartbeat went on all through the import.
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(beats)]
        assert gaps and max(gaps) <= HEARTBEAT_GAP, (gaps, took)
        held = lock_row(engine)
        assert held is not None and held[0] == owner and daemon.poll() is None
    finally:
        code, err = stop(daemon)
    assert code == 0, err
    assert lock_row(engine) is None


def test_a_daemon_that_loses_its_lock_exits_non_zero(tmp_path: Path) -> None:
    site = make_site(tmp_path, scan_interval="10m")
    engine = engine_of(site.settings())
    daemon, _owner = start_daemon(site, engine)
    try:
        with engine.begin() as conn:  # as a takeover from another host would
            conn.execute(
                update(state)
                .where(state.c.key == LOCK_KEY)
                .values(value="elsewhere.example.com:4242:cafe")
            )
        daemon.wait(timeout=30)  # the next heartbeat (≤ 5 s) notices
    finally:
        code, err = stop(daemon)
    assert code == 1, err
    assert err.splitlines()[-1] == (
        "error: database.url: stopped: another process took the daemon lock"
    )
    assert "the daemon lock was taken by another process; stopping" in err
    held = lock_row(engine)
    assert held is not None and held[0] == "elsewhere.example.com:4242:cafe"
