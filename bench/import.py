"""Benchmark: import 1,000,000 subscriber rows (1 % invalid, 1 % duplicates), twice.

Run: `python bench/import.py [--rows N] [--repeat R] [--database sqlite|postgresql]`.  Each import runs in its
own subprocess so that its peak RSS (ru_maxrss of RUSAGE_CHILDREN) is its own.
The baseline is `csv.reader` over the same file in the same kind of
subprocess: the floor any importer pays for reading the bytes.

Two paths, interleaved round by round on fresh databases: `classic` (one
transaction holding SQLite's write lock for the whole import) and `staged`
(stage and plan without the lock, merge in one short transaction; the default
on SQLite).  "lock" is how long the write lock was held: the merge for
`staged`, the whole import for `classic`.
Goals on the reference machine: each run ≤ 60 s and peak RSS ≤ 250 MB.

`--database postgresql` starts a throwaway PostgreSQL cluster
(tests/pgcluster.py: initdb in a temporary folder, fsync off; as root it runs
as the `postgres` user) and compares, interleaved, `sqlite staged` with
`postgresql staged` (rows COPYed into the stage) and `postgresql classic`
(the old single-transaction path, for reference).  Goal: PostgreSQL staged ≤
1.5x SQLite staged in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

GOAL_SECONDS = 60.0
GOAL_RSS_MB = 250.0

CONFIG = """\
[database]
url = "sqlite:///newsletter.db"

[lists.bench]
title = "Benchmark"
"""

BASELINE = """
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as fh:
    n = sum(1 for _ in csv.reader(fh))
print(n)
"""

IMPORT = """
import sys, time
from pathlib import Path
import newsletter.audience.subscribers as subs
from newsletter.config import load_settings
from newsletter.store import open_store
if sys.argv[3] == "classic":
    subs.STAGED_DIALECTS = ()
settings = load_settings(Path(sys.argv[2]))
engine = open_store(settings)
started = time.perf_counter()
counts = subs.import_file(engine, settings, Path(sys.argv[1]), "bench")
took = time.perf_counter() - started
print(counts.as_dict())
print(f"lock CPU {counts.write_lock_cpu_seconds or 0:.2f} s" if counts.write_lock_cpu_seconds
      is not None else "lock CPU: the whole import")
print(f"{counts.write_lock_seconds if counts.write_lock_seconds is not None else took:.3f}")
"""
PATHS = (("sqlite", "classic"), ("sqlite", "staged"))
PG_PATHS = (("sqlite", "staged"), ("postgresql", "staged"), ("postgresql", "classic"))


@contextlib.contextmanager
def postgres_urls() -> Iterator[object]:
    """A function giving a fresh, empty PostgreSQL database URL per call."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgcluster import PgCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb was not found (set PG_BINDIR)")
    cluster = PgCluster(bindir).start()
    try:
        yield lambda: cluster.url(cluster.create_role())
    finally:
        cluster.stop()


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


def measure(script: str, *args: str) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS in MB, stdout) of `python -c script args` in a child.

    The child reports its own ru_maxrss (RUSAGE_SELF, kB on Linux) as its last
    line; RUSAGE_CHILDREN in the parent would give the maximum over all runs.
    """
    probe = (
        "\nimport resource\nu = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(u.ru_utime + u.ru_stime)\nprint(u.ru_maxrss)\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script + probe, *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr}")
    *output, cpu, rss_kb = done.stdout.strip().splitlines()
    return seconds, float(cpu), int(rss_kb) / 1024, "\n".join(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds per path")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    paths = PATHS if args.database == "sqlite" else PG_PATHS
    pg = postgres_urls() if args.database == "postgresql" else contextlib.nullcontext(None)
    with tempfile.TemporaryDirectory() as tmp, pg as new_pg_url:
        folder = Path(tmp)
        data = folder / "subscribers.csv"
        config = folder / "newsletter.toml"
        config.write_text(CONFIG, encoding="utf-8")
        t0 = time.perf_counter()
        generate(data, args.rows)
        size_mb = data.stat().st_size / 1e6
        print(
            f"generated {args.rows:,} rows ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        env_rows = args.rows
        base_s, base_cpu, base_rss, _ = measure(BASELINE, str(data))
        print(
            f"baseline csv.reader : {base_s:6.2f} s wall {base_cpu:6.2f} s CPU  "
            f"{env_rows / base_s:>10,.0f} rows/s  peak RSS {base_rss:6.1f} MB"
        )
        results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        for round_ in range(args.repeat):
            for database, path in paths if round_ % 2 == 0 else paths[::-1]:
                config = folder / f"{path}.toml"
                (folder / f"{path}.db").unlink(missing_ok=True)
                url = new_pg_url() if database == "postgresql" else f"sqlite:///{path}.db"  # type: ignore[operator]
                config.write_text(CONFIG.replace("sqlite:///newsletter.db", url), encoding="utf-8")
                name = f"{database[:6]} {path}"
                for label in ("first import", "second import"):
                    secs, cpu, rss, out = measure(IMPORT, str(data), str(config), path)
                    *counts, lock_cpu, lock = out.splitlines()
                    results.setdefault((name, label), []).append((secs, cpu, rss, float(lock)))
                    ok = "ok" if secs <= GOAL_SECONDS and rss <= GOAL_RSS_MB else "MISSED GOAL"
                    print(
                        f"round {round_ + 1} {name:<14} {label:<13}: {secs:6.2f} s wall "
                        f"{cpu:6.2f} s CPU {env_rows / secs:>9,.0f} rows/s  peak RSS {rss:6.1f} MB"
                        f"  lock {float(lock):6.2f} s ({lock_cpu})  {ok}"
                    )
                    if round_ == 0:
                        print(f"    {counts[-1]}")
        print("\nmin / median / max over rounds:")
        for (path, label), runs in results.items():
            print(f"{path:<14} {label:<13}: " + "   ".join(
                f"{name} {_spread([r[i] for r in runs])}"
                for i, name in enumerate(("wall", "CPU", "RSS", "lock"))
            ))  # fmt: skip


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


if __name__ == "__main__":
    main()
