"""Planning a mailing of N recipients: INSERT … SELECT in the database vs row by row.

`plan_mailing` snapshots a list's mailable members with one INSERT … SELECT.
The baseline, measured in the same run, is what planning did before: stream
the members through Python and insert them in batches of 1,000.  Both on
SQLite and on a throwaway PostgreSQL (tests/pgcluster.py), A/B interleaved.

    python3 bench/plan.py --n 1000000 --rounds 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pgcluster import PgCluster, find_bindir  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from newsletter.audience import members as subs  # noqa: E402
from newsletter.config import ListSettings, Settings  # noqa: E402
from newsletter.delivery import plan_mailing  # noqa: E402
from newsletter.store import mailings as q  # noqa: E402
from newsletter.store import now, open_url  # noqa: E402
from newsletter.store.schema import deliveries  # noqa: E402

SETTINGS = Settings(lists={"news": ListSettings("news", "News")})


def fill(engine: Engine, n: int) -> None:
    subs.ensure_lists(engine, SETTINGS)
    numbers = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
    with engine.begin() as conn:
        lid = subs.list_id(conn, "news")
        conn.execute(
            text(
                numbers + "INSERT INTO subscribers (id, email, email_key, uid, name, attributes, "
                "status, created_at, updated_at) SELECT i, 'r' || i || '@example.org', "
                "'r' || i || '@example.org', 'u' || i, '', '{}', 'active', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM g"
            ),
            {"n": n},
        )
        conn.execute(
            text(
                numbers + "INSERT INTO memberships (list_id, subscriber_id, created_at) "
                "SELECT :lid, i, CURRENT_TIMESTAMP FROM g"
            ),
            {"n": n, "lid": lid},
        )


def ours(engine: Engine, post: str) -> None:
    plan_mailing(engine, SETTINGS, post, "news")


def row_by_row(engine: Engine, post: str) -> None:
    """The previous planning: members through Python, executemany per 1,000."""
    with engine.begin() as conn:
        lid = subs.list_id(conn, "news")
        mailing_id = q.insert_mailing(
            conn, post_id=post, list_id=lid, kind="post", generation=0, subject="", post_ids=()
        )
        stamp = now()
        batch = []
        for member in subs.mailable_members(conn, "news"):
            batch.append(
                {
                    "mailing_id": mailing_id,
                    "subscriber_id": member.subscriber_id,
                    "email": member.email,
                    "status": "queued",
                    "attempts": 0,
                    "updated_at": stamp,
                }
            )
            if len(batch) >= 1000:
                conn.execute(deliveries.insert(), batch)
                batch = []
        if batch:
            conn.execute(deliveries.insert(), batch)


def measure(name: str, engine: Engine, rounds: int, baseline: bool) -> None:
    ways = (("ours", ours), ("row by row", row_by_row)) if baseline else (("ours", ours),)
    times: dict[str, list[float]] = {label: [] for label, _ in ways}
    for r in range(rounds):
        for label, plan in ways:
            started = time.perf_counter()
            plan(engine, f"{label}-{r}")
            times[label].append(time.perf_counter() - started)
    for label, values in times.items():
        print(
            f"{name:>10} {label:>10}: min {min(values):6.2f} s  "
            f"median {statistics.median(values):6.2f} s  max {max(values):6.2f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-baseline", action="store_true", help="only ours (row by row takes minutes at 1M)"
    )
    args = parser.parse_args()
    print(f"planning a mailing of {args.n} recipients", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="newsletter-plan-"))
    try:
        sqlite = open_url(f"sqlite:///{tmp}/plan.db")
        fill(sqlite, args.n)
        measure("SQLite", sqlite, args.rounds, not args.no_baseline)
        bindir = find_bindir()
        if bindir is None:
            print("PostgreSQL not installed: skipped")
            return
        cluster = PgCluster(bindir).start()
        try:
            pg = open_url(cluster.url(cluster.create_role()))
            fill(pg, args.n)
            measure("PostgreSQL", pg, args.rounds, not args.no_baseline)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
