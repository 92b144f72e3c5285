"""Ctrl-C to a real `newsletter subscribers import`: before the import is
saved, the store is exactly as it was, one line says so and the exit status
is `STOPPED`; once its transaction is committing, the import is done and ends
as if no Ctrl-C had come (its summary, exit 0).  Never a traceback.

Real processes sent a real SIGINT at known moments: while the file is read
(its descriptor's position, from /proc), at the test gate between staging and
merging (`subscribers.TEST_GATE_ENV`), inside a statement of the merge (and
inside a Python function such a statement calls), as the process reading a
big file starts (the whole process group, as a terminal's Ctrl-C), and at the
gate right after the merge committed.  SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from test_daemon_support import Site, add_members, engine_of, make_site
from test_signals_startup import INTERPRETER_UP, catches_sigterm, cpu_seconds

from newsletter.audience.subscribers import TEST_GATE_ENV
from newsletter.shutdown import STOPPED
from newsletter.store.schema import memberships, subscribers

pytestmark = [
    pytest.mark.usefixtures("database_env"),
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc"),
]

ROWS = 200_000  # a few seconds of import: time enough to land in its reading
STOPPED_LINE = (
    "stopped: Ctrl-C before the import was saved; the store is as it was "
    "(run the same command again to import the file)\n"
)

# The entry point (`newsletter.__main__`), with one thing made to happen:
# `merge`, a statement inside the merge's transaction that the signal lands in
# (it says "mid-merge" on stderr first); `function`, the same with a Python
# function the statement calls, as reads of derived uids do (store.uids; sqlite3
# turns the KeyboardInterrupt raised there into an error of its own);
# `reader`, a second process reading the file whatever its size and the
# machine's load (`stagereader`).
ENTRY = """
import sys
from newsletter import shutdown
shutdown.hold()  # first thing, as the entry point does
import newsletter.audience.stagereader as stagereader
import newsletter.audience.staging as staging

how = sys.argv.pop(1)
if how == "reader":
    stagereader.PARALLEL_MIN_BYTES = 0
    stagereader._spare_core = lambda: True
elif how in ("merge", "function"):
    import time
    changes = staging._apply_changes

    def stalled(conn, stamp):
        slow = (
            "SELECT pg_sleep(1)" if conn.dialect.name == "postgresql" else
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000000) "
            "SELECT count(*) FROM n"
        )
        if how == "function":
            conn.connection.driver_connection.create_function("nap", 0, lambda: time.sleep(1))
            slow = "SELECT nap()"
        print("mid-merge", file=sys.stderr, flush=True)
        conn.exec_driver_sql(slow)
        return changes(conn, stamp)

    staging._apply_changes = stalled
from newsletter.__main__ import main
main()
"""


def import_site(tmp_path: Path) -> tuple[Site, Engine, Path]:
    site = make_site(tmp_path)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", ["before@example.com"], settings)
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as fh:
        fh.write("email,name\n")
        fh.writelines(f"reader{i}@example.com,Reader {i}\n" for i in range(ROWS))
    return site, engine, big


def counts(engine: Engine) -> tuple[int, int]:
    """(subscribers, memberships) in the store."""
    with engine.connect() as conn:
        return (
            conn.scalar(select(func.count()).select_from(subscribers)) or 0,
            conn.scalar(select(func.count()).select_from(memberships)) or 0,
        )


def start(site: Site, big: Path, how: str = "", gate: Path | None = None) -> subprocess.Popen[str]:
    """The import, in a process group of its own (a terminal's Ctrl-C goes to one)."""
    args = ["--config", str(site.config), "subscribers", "import", str(big), "--list", "news"]
    entry = ["-c", ENTRY, how] if how else ["-m", "newsletter"]
    env = {**os.environ, **({TEST_GATE_ENV: str(gate)} if gate else {})}
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        process_group=0,
    )


def reading(pid: int, path: Path) -> bool:
    """Whether the process has `path` open and has read some of it."""
    folder = Path(f"/proc/{pid}/fd")
    try:
        for fd in folder.iterdir():
            if os.readlink(fd) == str(path):
                info = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
                if int(info.split("pos:")[1].split()[0]) > 0:
                    return True
    except (FileNotFoundError, ProcessLookupError):  # a descriptor closed meanwhile
        return False
    return False


def reader_starting(pid: int) -> bool:
    """Whether the process has a child running `stagereader` that is still
    starting: Python's own Ctrl-C handler is in place (KeyboardInterrupt), the
    reader's own disposition not yet."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            if b"stagereader" not in Path(f"/proc/{child}/cmdline").read_bytes():
                continue
            status = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{child}/status").read_text().splitlines()
            )
            if int(status["SigCgt"], 16) & (1 << (signal.SIGINT - 1)):
                return True
    except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
        return False
    return False


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120  # start-up under load: bounds a hang only
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.002)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("where", ["reading", "staged", "merge", "function", "reader"])
def test_ctrl_c_before_the_import_is_saved_leaves_the_store_as_it_was(
    tmp_path: Path, where: str, database_url: str
) -> None:
    if where == "function" and not database_url.startswith("sqlite"):
        pytest.skip("sqlite3's Python functions")
    site, engine, big = import_site(tmp_path)
    before = counts(engine)
    engine.dispose()
    gate = tmp_path / "gate"
    gate.mkdir()
    how = where if where in ("merge", "function", "reader") else ""
    proc = start(site, big, how=how, gate=gate if where == "staged" else None)
    said = ""
    try:
        assert proc.stderr is not None
        if where == "reading":
            wait_for(proc, lambda: reading(proc.pid, big), "reading the file")
        elif where == "staged":  # staged and planned, waiting to merge
            wait_for(proc, (gate / "staged").exists, "staged")
        elif where in ("merge", "function"):
            said = proc.stderr.readline()
            assert said == "mid-merge\n", said + proc.communicate()[1]
        else:  # a reader process is starting: a terminal's Ctrl-C reached it too
            wait_for(proc, lambda: reader_starting(proc.pid), "starting a reader process")
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out, err = finish(proc)
    assert (proc.returncode, out, err) == (STOPPED, "", STOPPED_LINE), said + err
    assert counts(engine) == before


def test_ctrl_c_right_after_the_merge_committed_is_a_finished_import(tmp_path: Path) -> None:
    site, engine, big = import_site(tmp_path)
    engine.dispose()
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "go").touch()  # no stop between staging and merging
    (gate / "wait-merged").touch()
    proc = start(site, big, gate=gate)
    try:
        wait_for(proc, (gate / "merged").exists, "merged")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)  # the signal handled (most likely) before the import goes on
        (gate / "go-merged").touch()
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert err == ""
    assert f"news: imported {ROWS} rows: {ROWS} new, 0 updated" in out
    assert counts(engine) == (ROWS + 1, ROWS + 1)


START_DELAYS = (0.05, 0.15, 0.3, 0.6)


@pytest.mark.parametrize("delay", START_DELAYS)
def test_ctrl_c_while_the_import_starts_is_a_stop_too(
    tmp_path: Path, delay: float, database_url: str
) -> None:
    """A Ctrl-C inside the second the command spends starting (its libraries,
    the store) is the same stop as one during the import: one line, `STOPPED`,
    the store as it was; never click's "Aborted!" with status 1."""
    site, engine, big = import_site(tmp_path)
    before = counts(engine)
    engine.dispose()
    proc = start(site, big)
    try:
        time.sleep(delay)
        # Read before the signal: it can only have grown by the time it lands.
        ours = cpu_seconds(proc.pid) >= INTERPRETER_UP or catches_sigterm(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out, err = finish(proc)
    if not ours:  # still inside the interpreter's own start-up: Python's KeyboardInterrupt
        assert proc.returncode in (STOPPED, 1, -signal.SIGINT), err
    else:
        assert (proc.returncode, out, err) == (STOPPED, "", STOPPED_LINE)
    assert counts(engine) == before


# Run as `python -m` (where CPython looks at exit for a KeyboardInterrupt that
# left the main module): a Ctrl-C raised inside code run from a string, as a
# dataclass's generated methods are, the moment the import's work begins.
FROM_A_STRING = """
import os, runpy, signal
import newsletter.audience.subscribers as subscribers

def interrupted(*_args, **_kwargs):
    exec("os.kill(os.getpid(), signal.SIGINT)\\nwhile True: pass")

subscribers.import_file = interrupted
runpy.run_module("newsletter", run_name="__main__", alter_sys=True)
"""


def test_a_ctrl_c_inside_code_run_from_a_string_is_a_stop_too(
    tmp_path: Path, database_url: str
) -> None:
    """CPython remembers that a KeyboardInterrupt left code run by `exec`
    from a string even once it was caught, and at the exit of `python -m`
    it then kills itself with SIGINT (-2): the stop must clear that."""
    site, engine, big = import_site(tmp_path)
    before = counts(engine)
    engine.dispose()
    (tmp_path / "ctrl_c_in_exec.py").write_text(FROM_A_STRING, encoding="utf-8")
    args = ["--config", str(site.config), "subscribers", "import", str(big), "--list", "news"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "ctrl_c_in_exec", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (STOPPED, "", STOPPED_LINE)
    assert counts(engine) == before
