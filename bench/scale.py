"""Scale-out on PostgreSQL: 1 sender against 3 sharing one mailing, and a kill -9.

Starts a throwaway PostgreSQL cluster (tests/pgcluster.py) and Postfix's
`smtp-sink` (a C server that is never the bottleneck; every transaction is
appended to a dump file on /dev/shm so duplicates and losses are counted from
what the server received), fills a list with N subscribers, then runs, in
interleaved rounds, real `newsletter send` processes (concurrency C each):

  one      1 process sends the mailing
  three    3 processes started together send one mailing
  kill     3 processes; one is killed with SIGKILL a third of the way in;
           the other two finish its rows (reclaimed through its advisory lock)

and prints per run: wall time, msg/s, each process's share, duplicates, lost,
and for `kill` how long its leased rows took to be finished by the others.

    python3 bench/scale.py --n 100000 --concurrency 4 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pgcluster import PgCluster, find_bindir, free_port  # noqa: E402
from sqlalchemy import Engine, func, select, text  # noqa: E402

from newsletter.audience import members as subs  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.delivery import plan_mailing  # noqa: E402
from newsletter.store import open_url  # noqa: E402
from newsletter.store.schema import deliveries  # noqa: E402

POST = "how-sleep-consolidates-memory"
LIST = "sample"


@dataclass
class Run:
    scenario: str
    seconds: float
    shares: list[int]
    duplicates: int
    lost: int
    reclaim_seconds: float | None = None

    @property
    def rate(self) -> float:
        return (sum(self.shares) + 0.0) / self.seconds


class Sink:
    """/usr/sbin/smtp-sink appending every transaction to one dump file."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o777)
        self.dump = folder / "dump"
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            ["/usr/sbin/smtp-sink", *user, "-D", str(self.dump), f"127.0.0.1:{self.port}", "1000"]
        )
        time.sleep(0.3)

    def take(self) -> Counter[str]:
        """Recipients received since the last call (the dump starts over)."""
        if not self.dump.exists():
            return Counter()
        counts: Counter[str] = Counter()
        with self.dump.open("rb") as fh:
            for line in fh:
                if line.startswith(b"X-Rcpt-Args: <"):
                    counts[line[14:].split(b">", 1)[0].decode()] += 1
        self.dump.unlink()
        return counts

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def make_site(root: Path, port: int, concurrency: int, url: str) -> Path:
    for name in ("newsletter.toml", "posts", "subscribers"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    text_ = (root / "newsletter.toml").read_text()
    text_ = text_.replace('transport = "maildir"', 'transport = "smtp"')
    text_ = text_.replace(
        'host = "smtp.example.com"\nsecurity = "starttls"',
        f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"',
    )
    text_ = text_.replace('username = "newsletter@fieldnotes.example.com"\n', "")
    text_ = re.sub(r"concurrency = \d+", f"concurrency = {concurrency}", text_)
    text_ = re.sub(r"rate_per_second = [\d.]+", "rate_per_second = 0", text_)
    (root / "newsletter.toml").write_text(text_)
    os.environ["NEWSLETTER_DATABASE_URL"] = url
    os.environ["NEWSLETTER_SECRET"] = "bench-scale-secret"
    return root / "newsletter.toml"


def fill(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        lid = subs.list_id(conn, LIST)
        conn.execute(
            text(
                "INSERT INTO subscribers (email, email_key, uid, name, attributes, status, "
                "created_at, updated_at) SELECT 'r' || i || '@example.org', "
                "'r' || i || '@example.org', md5(i::text), '', '{}', 'active', now(), now() "
                "FROM generate_series(1, :n) AS i"
            ),
            {"n": n},
        )
        conn.execute(
            text(
                "INSERT INTO memberships (list_id, subscriber_id, created_at) "
                "SELECT :lid, id, now() FROM subscribers"
            ),
            {"lid": lid},
        )


def sender(config: Path, owner: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEWSLETTER_OWNER": owner}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", POST, "--list", LIST],
        cwd=config.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def share_of(proc: subprocess.Popen[bytes]) -> int:
    out, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"a sender failed ({proc.returncode}): {err.decode()[-2000:]}")
    words = out.decode().split()
    return int(words[1].rstrip(",")) if words[:1] == ["sent"] else 0


def sent_count(engine: Engine, mailing_id: int) -> int:
    with engine.connect() as conn:
        query = select(func.count()).where(
            deliveries.c.mailing_id == mailing_id, deliveries.c.status == "sent"
        )
        return int(conn.scalar(query) or 0)


def run(scenario: str, config: Path, engine: Engine, sink: Sink, n: int) -> Run:
    settings = load_settings(config)
    mailing_id = plan_mailing(engine, settings, POST, LIST, resend=True)
    count = 1 if scenario == "one" else 3
    started = time.perf_counter()
    procs = [sender(config, f"bench-{scenario}-{i}") for i in range(count)]
    reclaim: float | None = None
    if scenario == "kill":
        reclaim = kill_one(procs, engine, mailing_id, n)
    shares = [share_of(p) for p in procs]
    seconds = time.perf_counter() - started
    received = sink.take()
    expected = {f"r{i}@example.org" for i in range(1, n + 1)}
    duplicates = sum(c - 1 for c in received.values())
    lost = len(expected - set(received))
    if scenario == "kill":
        shares[0] = sent_count(engine, mailing_id) - sum(shares[1:])  # it could not say
    return Run(scenario, seconds, shares, duplicates, lost, reclaim)


def kill_one(
    procs: list[subprocess.Popen[bytes]], engine: Engine, mailing_id: int, n: int
) -> float:
    """SIGKILL the first sender a third of the way in; seconds until its rows were finished."""
    while sent_count(engine, mailing_id) < n // 3:
        time.sleep(0.05)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    killed_at = time.perf_counter()
    with engine.connect() as conn:
        held = list(
            conn.execute(
                select(deliveries.c.id).where(
                    deliveries.c.mailing_id == mailing_id,
                    deliveries.c.lease_owner.like("bench-kill-0:%"),
                )
            ).scalars()
        )
    print(f"  killed bench-kill-0 holding {len(held)} leased rows", flush=True)
    while held:
        with engine.connect() as conn:
            left = conn.scalar(
                select(func.count()).where(deliveries.c.id.in_(held), deliveries.c.status != "sent")
            )
        if not left:
            break
        time.sleep(0.05)
    return time.perf_counter() - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL's initdb was not found (Debian: apt-get install postgresql)")
    tmp = Path(tempfile.mkdtemp(prefix="newsletter-scale-"))
    cluster = PgCluster(bindir).start()
    sink = Sink(Path(tempfile.mkdtemp(prefix="newsletter-sink-", dir="/dev/shm")))
    try:
        url = cluster.url(cluster.create_role())
        config = make_site(tmp, sink.port, args.concurrency, url)
        engine = open_url(url)
        subs.ensure_lists(engine, load_settings(config))
        fill(engine, args.n)
        print(f"N={args.n}, C={args.concurrency} per process, {os.cpu_count()} cores", flush=True)
        runs: list[Run] = []
        for _ in range(args.rounds):
            for scenario in ("one", "three", "kill"):
                result = run(scenario, config, engine, sink, args.n)
                runs.append(result)
                shares = ", ".join(f"{s / args.n:.0%}" for s in result.shares)
                extra = (
                    f", killed sender's rows finished {result.reclaim_seconds:.1f} s after the kill"
                    if result.reclaim_seconds is not None
                    else ""
                )
                print(
                    f"{scenario:>5}: {result.seconds:6.1f} s  {result.rate:7.0f} msg/s  "
                    f"shares [{shares}]  duplicates {result.duplicates}  lost {result.lost}{extra}",
                    flush=True,
                )
        report(runs)
    finally:
        sink.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sink.dump.parent, ignore_errors=True)


def report(runs: list[Run]) -> None:
    one = [r.rate for r in runs if r.scenario == "one"]
    three = [r.rate for r in runs if r.scenario == "three"]
    ratios = [t / o for o, t in zip(one, three, strict=True)]
    print(
        f"three/one throughput: min {min(ratios):.2f}  median {statistics.median(ratios):.2f}  "
        f"max {max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
