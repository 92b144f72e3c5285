"""Planning a mailing of N recipients: this checkout against an earlier one (before/after).

`plan_mailing` snapshots a list's mailable members with one INSERT … SELECT.
Each side runs in its own process with its own source tree on the path (the
"before" tree is `git archive` of a revision, `main` by default) and its own
database, filled once with N subscribers on one list; then every round plans a
new post on each side, A/B interleaved (the order alternates per round), on
SQLite and on a throwaway PostgreSQL (tests/pgcluster.py: fsync off, so commit
settings are not measured).  Later rounds plan into a ledger that already holds
the earlier rounds' rows, the same for both sides.  CPU: the planning
process's, plus on PostgreSQL the server's (every process of the cluster), so
that a loaded machine's figures can be read beside the wall times.

    python3 bench/plan.py --n 1000000 --rounds 3 --db sqlite
    python3 bench/plan.py --n 1000000 --rounds 3 --db postgresql --before main
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- one side (a child process)


def child(action: str, url: str, arg: str) -> None:
    """Runs with one side's tree first on PYTHONPATH: fill the database, or plan one post."""
    from sqlalchemy import text

    from newsletter.audience import members as subs
    from newsletter.config import ListSettings, Settings
    from newsletter.delivery.mailings import plan_mailing
    from newsletter.store import open_url

    settings = Settings(lists={"news": ListSettings("news", "News")})
    engine = open_url(url)
    if action == "fill":
        subs.ensure_lists(engine, settings)
        numbers = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
        with engine.begin() as conn:
            lid = subs.list_id(conn, "news")
            conn.execute(
                text(
                    numbers + "INSERT INTO subscribers (id, email, email_key, uid, name, "
                    "attributes, status, created_at, updated_at) SELECT i, "
                    "'r' || i || '@example.org', 'r' || i || '@example.org', 'u' || i, '', "
                    "'{}', 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM g"
                ),
                {"n": int(arg)},
            )
            conn.execute(
                text(
                    numbers + "INSERT INTO memberships (list_id, subscriber_id, created_at) "
                    "SELECT :lid, i, CURRENT_TIMESTAMP FROM g"
                ),
                {"n": int(arg), "lid": lid},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        return
    server = int(os.environ.get(SERVER_PID, "0"))
    cpu = time.process_time() + server_cpu(server)
    started = time.perf_counter()
    mailing_id = plan_mailing(engine, settings, arg, "news")
    seconds = time.perf_counter() - started
    cpu = time.process_time() + server_cpu(server) - cpu
    with engine.connect() as conn:
        rows = conn.scalar(
            text("SELECT count(*) FROM deliveries WHERE mailing_id = :m"), {"m": mailing_id}
        )
    print(f"{seconds:.4f} {cpu:.4f} {rows}")


SERVER_PID = "NEWSLETTER_BENCH_SERVER_PID"


def server_cpu(postmaster: int) -> float:
    """CPU seconds used so far by a PostgreSQL server: the postmaster and its children.

    The backend that plans, and the WAL writer, background writer and
    checkpointer that its writes keep busy.  0 for SQLite (no server).
    """
    if not postmaster:
        return 0.0
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if stat.parent.name == str(postmaster) or fields[1] == str(postmaster):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the driver


def run_child(tree: Path, *args: str, server: int = 0) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree), **{SERVER_PID: str(server)})
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def export(revision: str, into: Path) -> Path:
    """The `newsletter` package as it is at `revision`, unpacked under `into`."""
    archive = into / "before.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "newsletter"], stdout=out, check=True
        )
    tree = into / "before"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(
    name: str, urls: dict[str, str], trees: dict[str, Path], n: int, rounds: int, server: int = 0
) -> None:
    print(f"{name}: load average at start {load()}", flush=True)
    for side, tree in trees.items():
        started = time.perf_counter()
        run_child(tree, "fill", urls[side], str(n))
        print(f"  filled {side}'s database in {time.perf_counter() - started:.1f} s", flush=True)
    times: dict[str, list[float]] = {side: [] for side in trees}
    cpus: dict[str, list[float]] = {side: [] for side in trees}
    sides = list(trees)
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            out = run_child(trees[side], "plan", urls[side], f"post-{r}", server=server)
            seconds, cpu, rows = out.split()
            if int(rows) != n:
                raise SystemExit(f"{side} planned {rows} deliveries, not {n}")
            times[side].append(float(seconds))
            cpus[side].append(float(cpu))
            print(
                f"  round {r + 1} {side:>6}: {float(seconds):6.2f} s wall, "
                f"{float(cpu):6.2f} s CPU  (load {load()})",
                flush=True,
            )
    for side in sides:
        for what, values in (("wall", times[side]), ("CPU", cpus[side])):
            print(
                f"{name:>10} {side:>6} {what:>4}: min {min(values):6.2f} s  "
                f"median {statistics.median(values):6.2f} s  max {max(values):6.2f} s",
                flush=True,
            )
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"{name:>10} before/after (medians): {before / after:.2f}x", flush=True)
    print(f"{name}: load average at end {load()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="main", help="git revision to compare with")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    print(f"planning a mailing of {args.n} recipients, {args.rounds} rounds", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="newsletter-plan-"))
    try:
        trees = {"before": export(args.before, tmp), "after": ROOT}
        if args.db in ("sqlite", "both"):
            urls = {side: f"sqlite:///{tmp}/{side}.db" for side in trees}
            measure("SQLite", urls, trees, args.n, args.rounds)
        if args.db in ("postgresql", "both"):
            postgresql(trees, args.n, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def postgresql(trees: dict[str, Path], n: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from pgcluster import PgCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL not installed: skipped")
        return
    cluster = PgCluster(bindir).start()
    try:
        urls = {side: cluster.url(cluster.create_role()) for side in trees}
        assert cluster.proc is not None
        measure("PostgreSQL", urls, trees, n, rounds, server=cluster.proc.pid)
    finally:
        cluster.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
