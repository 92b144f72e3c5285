"""Benchmark: import 1,000,000 subscriber rows (1 % invalid, 1 % duplicates), twice.

Run: `python bench/import.py [--rows N] [--repeat R] [--before DIR] [--databases sqlite,postgresql]
[--reader auto|always|never] [--floor]`.

Per round, interleaved (the order alternates round by round), each in its own
subprocess so that its peak RSS (ru_maxrss of the child itself) is its own.
An import may start a process of its own that reads and validates the file
(`newsletter.audience.stagereader`): its CPU seconds are added to the
import's, and its peak RSS is printed beside the import's (`reader`), so the
figures count every process the import ran:

* `baseline`: a plain `sqlite3` `executemany` of the same rows (csv.reader,
  one INSERT of the four cells per row into a table without indexes, one
  transaction, the store's PRAGMAs: WAL, synchronous=NORMAL).  It validates
  nothing: the floor for "import at the speed of the database" (issue 13);
* for each code (`after`: this checkout or `--after DIR`; `before`: `--before DIR`, e.g. main's
  checkout, imported with that DIR first on sys.path) and each database
  (SQLite; PostgreSQL in a throwaway cluster, tests/pgcluster.py): the first
  import into an empty store, then the re-import of the same file (every row
  unchanged).

With `--floor`, each code's FLOOR too (below).  Each SQLite store's size (its
file and WAL) is printed after each run that wrote it.

Goals (issue 13, issue 12): SQLite import ≤ 4x the baseline of the same round,
peak RSS ≤ 150 MB; PostgreSQL ≤ 1.5x SQLite of the same round and code (first
import and re-import).  `os.getloadavg()` is printed at the start and the end:
on a shared 2-core machine the ratios (same round) mean more than the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
GOAL_RATIO_SQLITE = 4.0
GOAL_RATIO_PG = 1.5
GOAL_RSS_MB = 150.0

CONFIG = """\
[database]
url = "{url}"

[lists.bench]
title = "Benchmark"
"""

BASELINE = """
import csv, sqlite3, sys
db = sqlite3.connect(sys.argv[2], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, first TEXT, last TEXT, city TEXT)")
with open(sys.argv[1], newline="", encoding="utf-8") as fh:
    rows = csv.reader(fh)
    next(rows)
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (email, first, last, city) VALUES (?, ?, ?, ?)", rows)
    db.execute("COMMIT")
db.close()
"""

# --floor: what this schema costs SQLite with nothing else (no validation, no
# staging, no line numbers, no reader process, the write lock held throughout,
# duplicates dropped by the unique index): the file's rows straight into the
# store's real tables and indexes (subscribers, memberships, consent records)
# in file order, one transaction; the import's own work is what lies between
# this and its time.  Timed for each code measured (`after`, `before`), each
# with its own schema and its own stored form of a time, which SCHEMA (not
# timed) prints after making the empty store.
SCHEMA = """
import sys
from datetime import UTC, datetime
from newsletter.store import open_url
from newsletter.store.schema import UtcDateTime
engine = open_url(f"sqlite:///{sys.argv[2]}")
engine.dispose()
# The floor's one time, as that code's store type writes it (text or integer).
process = UtcDateTime().dialect_impl(engine.dialect).bind_processor(engine.dialect)
print(repr(process(datetime(2026, 1, 1, tzinfo=UTC))))
"""
FLOOR = """
import ast, csv, itertools, json, random, sqlite3, sys
db = sqlite3.connect(sys.argv[2], isolation_level=None)
for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536", "foreign_keys=OFF"):
    db.execute(f"PRAGMA {pragma}")
stamp = ast.literal_eval(sys.argv[3])  # the code's own form of a time (SCHEMA printed it)
db.execute("INSERT INTO lists (name, title, created_at) VALUES ('bench', '', ?)", (stamp,))
# Schema 11 on: no stored uid (derived), one consent record for the range.
derived = not any(c[1] == "uid" and c[3] for c in db.execute("PRAGMA table_info(subscribers)"))
def rows(reader):
    for rank, (email, first, last, city) in enumerate(reader, 1):
        uid = None if derived else f"{rank:016x}{random.getrandbits(64):016x}"
        yield (email, email.lower(), uid, f"{first} {last}", json.dumps({"city": city}))
with open(sys.argv[1], newline="", encoding="utf-8") as fh:
    reader = csv.reader(fh)
    next(reader)
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT OR IGNORE INTO subscribers (email, email_key, uid, name, attributes, status,"
        " status_changed_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'active', ?1, ?1, ?1)"
        .replace("?1", repr(stamp)),
        rows(reader),
    )
    db.execute("INSERT INTO memberships (list_id, subscriber_id, created_at) SELECT 1, id, ? FROM subscribers", (stamp,))
    if derived:
        db.execute(
            "INSERT INTO consent_events (subscriber_id, last_subscriber_id, at, action, source,"
            " list_name) SELECT min(id), max(id), ?, 'subscribe', 'import', 'bench' FROM subscribers",
            (stamp,),
        )
    else:
        db.execute(
            "INSERT INTO consent_events (subscriber_id, at, action, source, list_name)"
            " SELECT id, ?, 'subscribe', 'import', 'bench' FROM subscribers", (stamp,)
        )
    db.execute("COMMIT")
db.close()
"""

IMPORT = """
import os, sys
from pathlib import Path
import newsletter.audience.subscribers as subs
reader = os.environ.get("BENCH_IMPORT_READER", "auto")
if reader != "auto":  # --reader: the reader process on (always) or off (never), whatever the load
    import newsletter.audience.stagereader as stagereader
    stagereader._spare_core = lambda: reader == "always"
from newsletter.config import load_settings
from newsletter.store import open_store
settings = load_settings(Path(sys.argv[2]))
engine = open_store(settings)
counts = subs.import_file(engine, settings, Path(sys.argv[1]), "bench")
print(counts.as_dict())
print(f"lock {counts.write_lock_seconds or 0:.2f} s ({counts.write_lock_cpu_seconds or 0:.2f} s CPU)")
"""


def generate(path: Path, rows: int, seed: int = 1) -> None:
    """`rows` data rows: 1 % invalid addresses, 1 % repeats of earlier rows (case changed)."""
    rng = random.Random(seed)
    domains = [f"mail{i}.example.com" for i in range(2000)] + ["example.org", "example.com"]
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("email,first_name,last_name,city\r\n")
        for i in range(rows):
            roll = rng.random()
            if roll < 0.01:
                email = f"broken{i}.example.com"  # no @
            elif roll < 0.02 and i > 0:
                j = rng.randrange(i)
                email = f"User.{j}@{domains[j % len(domains)]}".upper()
            else:
                email = f"user.{i}@{domains[i % len(domains)]}"
            fh.write(f"{email},First{i % 977},Last{i % 991},City {i % 97}\r\n")


def measure(script: str, code: Path, *args: str) -> tuple[float, float, float, float, str]:
    """(wall s, CPU s, peak RSS MB, its processes' peak RSS MB, stdout) of
    `python -c script args` in a child that imports `newsletter` from `code`.

    The child reports its own ru_maxrss, and the CPU seconds and largest
    ru_maxrss of the processes it waited for (RUSAGE_CHILDREN: the import's
    reader process), whose CPU is counted in the total."""
    probe = (
        "\nimport resource\nu = resource.getrusage(resource.RUSAGE_SELF)\n"
        "c = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime)\nprint(u.ru_maxrss)\n"
        "print(c.ru_maxrss)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    # Run in `code`'s folder: `python -c` and the reader's `python -m` put the
    # working directory first on sys.path, before PYTHONPATH, so a `--before`
    # child started from another checkout's root imported that checkout.
    done = subprocess.run(
        [sys.executable, "-c", script + probe, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=code,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr}")
    *output, cpu, rss_kb, children_kb = done.stdout.strip().splitlines()
    return seconds, float(cpu), int(rss_kb) / 1024, int(children_kb) / 1024, "\n".join(output)


@contextlib.contextmanager
def postgres_urls() -> Iterator[Callable[[], str]]:
    """A function giving a fresh, empty PostgreSQL database URL per call."""
    sys.path.insert(0, str(HERE / "tests"))
    from pgcluster import PgCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb was not found (set PG_BINDIR)")
    cluster = PgCluster(bindir).start()
    try:
        yield lambda: cluster.url(cluster.create_role())
    finally:
        cluster.stop()


# label -> [(wall, cpu, rss, the reader process's rss)]
Result = dict[str, list[tuple[float, float, float, float]]]


def one_round(
    round_: int,
    folder: Path,
    data: Path,
    codes: dict[str, Path],
    databases: list[str],
    new_pg_url: Callable[[], str] | None,
    results: Result,
    floor: bool = False,
) -> None:
    jobs: list[tuple[str, str]] = [("baseline", "")]
    jobs += [("floor", code) for code in codes] if floor else []
    jobs += [(code, db) for code in codes for db in databases]
    if round_ % 2:
        jobs.reverse()
    walls: dict[str, float] = {}
    for code, db in jobs:
        if code == "baseline":
            target = folder / "baseline.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            wall, cpu, rss, _, _ = measure(BASELINE, HERE, str(data), str(target))
            _record(results, walls, round_, code, wall, cpu, (rss, 0.0), "")
            continue
        if code == "floor":  # `db` names the code whose schema is measured
            target = folder / f"floor-{db}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            # The store's schema, empty, and its form of a time (not timed).
            stamp = measure(SCHEMA, codes[db], str(data), str(target))[-1].splitlines()[-1]
            wall, cpu, rss, _, _ = measure(FLOOR, codes[db], str(data), str(target), stamp)
            note = f"database {_size_mb(target):.0f} MB"
            _record(results, walls, round_, f"floor {db}", wall, cpu, (rss, 0.0), note)
            continue
        if db == "sqlite":
            target = folder / f"{code}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{target}"
        else:
            assert new_pg_url is not None
            url = new_pg_url()
        config = folder / f"{code}-{db}.toml"
        config.write_text(CONFIG.format(url=url), encoding="utf-8")
        for what in ("first", "again"):
            wall, cpu, rss, reader, out = measure(IMPORT, codes[code], str(data), str(config))
            counts, lock = out.splitlines()[-2:]
            note = f"{lock}  {counts if round_ == 0 else ''}"
            if db == "sqlite":
                note = f"database {_size_mb(target):.0f} MB  {note}"
            label = f"{code} {db} {what}"
            _record(results, walls, round_, label, wall, cpu, (rss, reader), note)
    base = walls["baseline"]
    for code in codes if floor else ():
        ratio = walls[f"floor {code}"] / base
        results.setdefault(f"ratio floor {code}/baseline", []).append((ratio, 0, 0, 0))
    for code in codes:
        for what in ("first", "again"):
            sqlite = walls.get(f"{code} sqlite {what}")
            pg = walls.get(f"{code} postgresql {what}")
            if sqlite is not None:
                results.setdefault(f"ratio {code} sqlite {what}/baseline", []).append(
                    (sqlite / base, 0.0, 0.0, 0.0)
                )
            if sqlite is not None and pg is not None:
                results.setdefault(f"ratio {code} postgresql/sqlite {what}", []).append(
                    (pg / sqlite, 0.0, 0.0, 0.0)
                )


def _size_mb(database: Path) -> float:
    """A SQLite store's size: its file and its WAL."""
    files = (Path(f"{database}{suffix}") for suffix in ("", "-wal"))
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def _record(
    results: Result,
    walls: dict[str, float],
    round_: int,
    label: str,
    wall: float,
    cpu: float,
    peaks: tuple[float, float],
    note: str,
) -> None:
    """One measurement; `peaks`: (the import's peak RSS, its reader process's or 0)."""
    rss, reader = peaks
    walls[label] = wall
    results.setdefault(label, []).append((wall, cpu, rss, reader))
    read = f" (reader {reader:5.1f} MB)" if reader else ""
    print(
        f"round {round_ + 1} {label:<26}: {wall:7.2f} s wall {cpu:7.2f} s CPU "
        f"peak RSS {rss:6.1f} MB{read}  {note}",
        flush=True,
    )


def report(results: Result) -> None:
    print("\nmin / median / max over rounds:")
    for label, runs in results.items():
        if label.startswith("ratio"):
            continue
        walls, cpus, rss, readers = zip(*runs, strict=True)
        over = " RSS OVER GOAL" if max(rss + readers) > GOAL_RSS_MB else ""
        read = f"  reader RSS {_spread(readers)} MB" if max(readers) else ""
        print(
            f"{label:<34} wall {_spread(walls)} s  CPU {_spread(cpus)} s  "
            f"RSS {_spread(rss)} MB{read}{over}"
        )
    print("\nratios of walls in the same round (min / median / max):")
    for label, runs in results.items():
        if not label.startswith("ratio"):
            continue
        values = [r[0] for r in runs]
        if "floor" in label:
            print(f"{label[6:]:<34} {_spread(values)}  (no goal: the schema's own cost)")
            continue
        goal = GOAL_RATIO_PG if "postgresql" in label else GOAL_RATIO_SQLITE
        verdict = "meets" if statistics.median(values) <= goal else "MISSES"
        print(f"{label[6:]:<34} {_spread(values)}  ({verdict} the goal <= {goal}x by median)")


def _spread(values: tuple[float, ...] | list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--before", type=Path, help="another checkout to compare (e.g. main's)")
    parser.add_argument(
        "--after", type=Path, default=HERE, help="the checkout measured as `after` (default: this)"
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time FLOOR for each code: its schema's SQLite work alone (no validation)",
    )
    parser.add_argument(
        "--reader",
        choices=("auto", "always", "never"),
        default="auto",
        help="a big file's reader process: as the load decides (auto), or forced on or off",
    )
    args = parser.parse_args()
    os.environ["BENCH_IMPORT_READER"] = args.reader  # read by IMPORT in each child
    databases = args.databases.split(",")
    codes = {"after": args.after.resolve()}
    if args.before:
        codes["before"] = args.before.resolve()
    print(f"load average at start: {os.getloadavg()}; reader process: {args.reader}")
    pg = postgres_urls() if "postgresql" in databases else contextlib.nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, pg as new_pg_url:
        folder = Path(tmp)
        data = folder / "subscribers.csv"
        started = time.perf_counter()
        generate(data, args.rows)
        size = data.stat().st_size / 1e6
        print(
            f"generated {args.rows:,} rows ({size:.1f} MB) in {time.perf_counter() - started:.1f} s"
        )
        results: Result = {}
        for round_ in range(args.repeat):
            one_round(round_, folder, data, codes, databases, new_pg_url, results, args.floor)
        report(results)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
