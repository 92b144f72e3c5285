"""Daemon: what is due, and the APScheduler process that sends it on time.

It may import `newsletter.delivery` and everything below it.

- `planning`: pure decisions — which posts are due for which lists, digests, crons
- `passes`: one pass — sync, plan, deliver — and its report
- `lock`: one daemon per SQLite database (`DaemonLock`), any number on PostgreSQL (`SharedLock`)
- `scheduler`: the long-running `Daemon` (APScheduler, signals) and `run_once`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.lazy import lazy_exports

if TYPE_CHECKING:
    from newsletter.daemon.passes import PassReport
    from newsletter.daemon.planning import UpcomingSend, upcoming_sends
    from newsletter.daemon.scheduler import Daemon, run_once

_EXPORTS = {
    "PassReport": "passes",
    "UpcomingSend": "planning",
    "upcoming_sends": "planning",
    "Daemon": "scheduler",
    "run_once": "scheduler",
}
__all__ = [
    "Daemon",
    "PassReport",
    "UpcomingSend",
    "run_once",
    "upcoming_sends",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
