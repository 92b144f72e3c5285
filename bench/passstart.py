"""What a delivery pass reads before its first claim, before and after it stopped counting.

    python bench/passstart.py                 # 20,000 and 100,000 rows, 15 rounds
    python bench/passstart.py --n 20000 --rounds 30

A pass used to count every row of its mailing by status (`store.tallies.counts`,
one scan of the mailing's part of ix_deliveries_queue) before its first claim,
only for a progress bar's total and the `[delivery] processes` split; now it
counts only when one of those asks (`MailingPass._counted`).  This times, on a
real SQLite ledger made by `plan_mailing` (bench/send.py's site and members),
the reads each way, A/B interleaved in the same process, each round both:

* before: `has_open` + `counts` (every pass);
* after: `has_open` (a daemon pass, `send` off a terminal, the workers);
* after, VERP on: `has_open` + `has_sent` (one index look, senders.py).

Twice per size: a fresh mailing (all queued) and one half sent.  Prints
min/median/max in ms and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import send as bench  # bench/send.py: the site and the members

from newsletter.store import mailings as q
from newsletter.store import open_store, reading


def prepare(directory: Path, n: int) -> tuple[Any, int]:
    """bench/send.py's site with n members and a planned mailing; the store's engine."""
    from newsletter.audience import members as subs
    from newsletter.delivery.mailings import plan_mailing

    settings = bench.make_site(directory, 1, 1)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    bench.add_members(engine, n)
    return engine, plan_mailing(engine, settings, bench.POST, "bench")


def half_sent(engine: Any, mailing: int, n: int) -> None:
    from sqlalchemy import func, select, update

    from newsletter.store.schema import deliveries

    with engine.begin() as conn:
        first = conn.scalar(select(func.min(deliveries.c.id)))
        conn.execute(
            update(deliveries)
            .where(deliveries.c.mailing_id == mailing, deliveries.c.id < first + n // 2)
            .values(status="sent")
        )


def timed(engine: Any, action: Callable[[Any], object]) -> float:
    with reading(engine) as conn:
        start = time.perf_counter()
        action(conn)
        return (time.perf_counter() - start) * 1000


def reads(mid: int) -> dict[str, Callable[[Any], object]]:
    """The reads before a pass's first claim, each way."""
    return {
        "before: has_open + counts": lambda c: (q.has_open(c, mid), q.counts(c, mid)),
        "after: has_open": lambda c: q.has_open(c, mid),
        "after, VERP: has_open + has_sent": lambda c: (q.has_open(c, mid), q.has_sent(c, mid)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            engine, mid = prepare(Path(tmp), n)
            for state in ("fresh", "half sent"):
                if state == "half sent":
                    half_sent(engine, mid, n)
                ways = reads(mid)
                times: dict[str, list[float]] = {name: [] for name in ways}
                for _ in range(3):  # warm the page cache
                    for way in ways.values():
                        timed(engine, way)
                names = list(ways)
                for round_ in range(args.rounds):  # interleaved, the order turning
                    for name in names[round_ % 3 :] + names[: round_ % 3]:
                        times[name].append(timed(engine, ways[name]))
                print(f"n = {n:,}, {state} ({args.rounds} rounds, ms):")
                for name, values in times.items():
                    low, mid_, high = min(values), statistics.median(values), max(values)
                    print(f"  {name:36} min {low:7.3f}  median {mid_:7.3f}  max {high:7.3f}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
