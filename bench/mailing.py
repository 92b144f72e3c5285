"""One big mailing as a user runs it: is the rate flat from start to end, and how much memory?

    python bench/mailing.py                          # 1,000,000 recipients, concurrency 4
    python bench/mailing.py --n 200000 --concurrency 8 --pipelining off

A fresh SQLite site gets N members on one list (bulk-inserted, not timed);
then `newsletter send POST --list bench` runs as its own process (the CLI
entry point, default strategy and settings) against Postfix's `smtp-sink` on
127.0.0.1.  Reported:
- the whole run's wall time and rate;
- the rate over each tenth of the recipients, from the ledger's `sent_at`
  (the time each outcome was recorded), and the last tenth's rate against the
  first's (issue 13's goal: within ±15 %);
- the peak RSS of the `send` process (`ru_maxrss` of the waited child;
  goal ≤ 100 MB at 1M), and its CPU seconds per 1,000 messages.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import send as bench  # bench/send.py: the site, the members, the sink

POST = bench.POST


def site(directory: Path, port: int, concurrency: int) -> Path:
    """bench/send.py's site, with the default strategy (what `auto` picks)."""
    bench.make_site(directory, port, concurrency)
    config = directory / "newsletter.toml"
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("strategy")]
    config.write_text("\n".join(lines) + "\n")
    return config


def sent_times(database: Path) -> list[float]:
    """Every delivery's recording time, in order (seconds since the epoch)."""
    from sqlalchemy import select

    from newsletter.store import open_url
    from newsletter.store.schema import deliveries

    engine = open_url(f"sqlite:///{database}")
    with engine.connect() as conn:
        stamps = conn.scalars(
            select(deliveries.c.sent_at)
            .where(deliveries.c.status == "sent")
            .order_by(deliveries.c.sent_at)
        ).all()
    return [s.timestamp() for s in stamps]


def tenths(times: list[float]) -> list[float]:
    """Messages per second over each tenth of the recipients."""
    n = len(times)
    rates = []
    for k in range(10):
        first, last = times[k * n // 10], times[min(n - 1, (k + 1) * n // 10)]
        rates.append((n // 10) / max(last - first, 1e-9))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pipelining", choices=["on", "off"], default="on")
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()}", flush=True)
    sink, port = bench.start_smtp_sink(args.pipelining == "on")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            config = site(directory, port, args.concurrency)
            from newsletter.audience import members as subs
            from newsletter.config import load_settings
            from newsletter.store import open_store

            settings = load_settings(config)
            engine = open_store(settings)
            subs.ensure_lists(engine, settings)
            bench.add_members(engine, args.n)
            engine.dispose()
            print(f"{args.n:,} members added", flush=True)
            cmd = [sys.executable, "-m", "newsletter", "--config", str(config), "send", POST]
            cmd += ["--list", "bench"]
            env = {**bench.CHILD_ENV, "NEWSLETTER_SECRET": "bench-secret"}
            started = time.perf_counter()
            done = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"send failed ({done.returncode}):\n{done.stderr[-3000:]}")
            print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)")
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            times = sent_times(directory / "bench.db")
    finally:
        sink.kill()
    if len(times) != args.n:
        raise SystemExit(f"sent {len(times)} of {args.n}")
    rates = tenths(times)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"sent {args.n:,} in {wall:.1f} s: {args.n / wall:,.0f} msg/s (whole command)")
    print("rate per tenth (msg/s): " + "  ".join(f"{r:,.0f}" for r in rates))
    print(f"last tenth / first tenth: {rates[-1] / rates[0]:.2f} (goal 0.85 to 1.15)")
    low, high = min(rates), max(rates)
    print(f"slowest / fastest tenth: {low:,.0f} / {high:,.0f} msg/s ({low / high:.2f})")
    print(f"peak RSS of the send process: {usage.ru_maxrss / 1024:.1f} MB (goal <= 100 MB)")
    print(f"CPU of the send process: {cpu / args.n * 1000:.3f} s per 1,000 messages")
    print(f"load average at end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
