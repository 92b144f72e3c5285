"""SIGTERM or Ctrl-C in the first moments of `run` and `send`: a clean stop,
exit 0 (`send`: `STOPPED` when it was cut short).

Real processes (`python -m newsletter`, the console script's own entry point),
signalled at several delays after start, most of them inside the second the
CLI spends importing its libraries.  Python code cannot catch a signal that
arrives while the interpreter itself is still starting (before it runs
`newsletter/__main__.py`: ~0.1 s here, most of it site-packages' .pth files), so
an early case first reads from /proc whether the process catches SIGTERM yet
(the entry point holds SIGINT just before it, so that says the same of Ctrl-C);
from `INTERPRETER_UP` of CPU time on (a wide margin over that), exit 0 is
required.  CPU time, not time since the start: a starved machine can take
longer than that in wall time before the interpreter has run at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from test_daemon_support import add_members, engine_of, make_site

from newsletter.daemon.scheduler import LOCK_KEY
from newsletter.shutdown import STOPPED
from newsletter.store.schema import state

DELAYS = (0.05, 0.15, 0.3, 0.6, 1.2, 2.5)
# CPU seconds: by then Python runs our code, however busy the machine (the
# hold was in place after 0.02-0.05 s of CPU in 27 starts, idle and starved).
INTERPRETER_UP = 0.15
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/status")


def catches_sigterm(pid: int) -> bool:
    """SigCgt in /proc: the process has a handler for SIGTERM installed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) the process has had so far: /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def signalled(
    args: list[str],
    before: Callable[[subprocess.Popen[str]], bool],
    sig: signal.Signals = signal.SIGTERM,
) -> tuple[bool, int, str]:
    """(what `before` said, exit code, stderr) of a command sent `sig` once
    `before` returns."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = before(proc)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return said, proc.returncode, err


def terminate_after(
    args: list[str], delay: float, sig: signal.Signals = signal.SIGTERM
) -> tuple[bool, int, str]:
    """(caught, exit code, stderr); `caught` is True when `sig` had to be caught."""

    def wait(proc: subprocess.Popen[str]) -> bool:
        time.sleep(delay)
        # Read before the signal: both can only have grown by the time it lands.
        return cpu_seconds(proc.pid) >= INTERPRETER_UP or catches_sigterm(proc.pid)

    return signalled(args, wait, sig)


def check(
    caught: bool,
    code: int,
    err: str,
    *,
    stopped: tuple[int, ...] = (0,),
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """`stopped`: the exit statuses of a caught stop (`send` says it was cut
    short with `STOPPED`, or 0 when the signal came after its work was done)."""
    if caught:
        assert "Traceback" not in err and "Aborted!" not in err, err
        assert code in stopped, err
    elif sig == signal.SIGTERM:  # still inside the interpreter's own start-up
        assert "Traceback" not in err, err
        assert code in (*stopped, -signal.SIGTERM), err
    else:  # Python's own KeyboardInterrupt there, before any code of ours ran
        assert code in (*stopped, 1, -signal.SIGINT), err


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])


@SIGNALS
@pytest.mark.parametrize("delay", DELAYS)
def test_a_stop_right_after_run_starts_exits_0(
    tmp_path: Path, delay: float, sig: signal.Signals
) -> None:
    site = make_site(tmp_path, scan_interval="10m")
    engine = engine_of(site.settings())
    args = ["--config", str(site.config), "run", "--no-watch"]
    caught, code, err = terminate_after(args, delay, sig)
    check(caught, code, err, sig=sig)
    with engine.connect() as conn:  # a daemon that stopped never leaves its lock behind
        assert conn.scalar(select(state.c.value).where(state.c.key == LOCK_KEY)) is None


@SIGNALS
@pytest.mark.parametrize("delay", DELAYS)
def test_a_stop_right_after_send_starts_stops_cleanly(
    tmp_path: Path, delay: float, sig: signal.Signals
) -> None:
    site = make_site(tmp_path, transport="maildir")
    site.write_post("2024-05-01-hello.md", "Hello", datetime(2024, 5, 1, tzinfo=UTC))
    settings = site.settings()
    emails = [f"reader{i}@example.com" for i in range(40)]
    add_members(engine_of(settings), "news", emails, settings)
    args = ["--config", str(site.config), "send", "hello", "--list", "news"]
    caught, code, err = terminate_after(args, delay, sig)
    check(caught, code, err, stopped=(0, STOPPED), sig=sig)
    # Whatever the moment, running it again finishes the mailing.
    again = subprocess.run(
        [sys.executable, "-m", "newsletter", *args], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    sent = len(list((tmp_path / "outbox" / "new").iterdir()))
    assert sent == len(emails)


def test_the_handler_is_in_place_long_before_the_cli_is_imported(tmp_path: Path) -> None:
    """The hold comes first: SIGTERM is caught well before `--help` can answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while proc.poll() is None and not catches_sigterm(proc.pid):
            time.sleep(0.002)
        assert proc.poll() is None, "the CLI finished before SIGTERM was ever caught"
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == 0  # --help is not graceful: but no signal came


def test_other_commands_still_die_of_a_sigterm_noted_during_start_up(tmp_path: Path) -> None:
    # `posts` only reads: the hold must not make it ignore a stop request.
    # The signal goes as soon as the hold is in place, long before `posts` can
    # finish: a fixed delay raced the command itself, which got faster than it.
    site = make_site(tmp_path)

    def held(proc: subprocess.Popen[str]) -> bool:
        while proc.poll() is None and not catches_sigterm(proc.pid):
            time.sleep(0.001)
        return proc.poll() is None

    running, code, err = signalled(["--config", str(site.config), "posts"], held)
    assert running, "`posts` finished before SIGTERM was ever caught"
    assert code == -signal.SIGTERM, err


def test_a_finished_graceful_command_ignores_sigterm_through_interpreter_shutdown() -> None:
    # Interpreter shutdown resets Python handlers to the default disposition, so a
    # SIGTERM in a finished `send`'s last milliseconds killed it; SIG_IGN survives.
    code = (
        "import os, signal\n"
        "from newsletter import shutdown\n"
        "shutdown.hold(); shutdown.settle(graceful=True); shutdown.finish()\n"
        "ignored = [l for l in open('/proc/self/status') if l.startswith('SigIgn:')][0]\n"
        "print(bool(int(ignored.split()[1], 16) & (1 << (signal.SIGTERM - 1))))\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
