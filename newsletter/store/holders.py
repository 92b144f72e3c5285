"""Whether the process named in a lock (`host:pid:random`) still runs.

Stdlib only: the store reads the daemon lock before an upgrade
(`store._no_older_daemon`), the daemon takes it over from a dead holder
(`daemon.lock`).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path


def holder_alive(
    owner: str, expires_at: datetime | None, at: datetime, started: float | None = None
) -> bool:
    """On this host the pid decides, whatever the heartbeat says: a daemon whose
    heartbeat waited behind a long write (an import holding SQLite's lock) is
    still alive.  From another host only a fresh heartbeat says so."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return expires_at is not None and expires_at > at
    try:
        pid = int(rest.split(":")[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # The pid may have been reused since: compare when it started.
    now_started = process_started(pid)
    return started is None or now_started is None or now_started == started


def process_started(pid: int) -> float | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses
        return float(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None
