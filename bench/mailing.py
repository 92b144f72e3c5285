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
  goal ≤ 100 MB at 1M), and its CPU seconds per 1,000 messages;
- the send process's CPU per message over each tenth (its CPU time is read
  from /proc every 0.2 s and interpolated at each tenth's first and last
  `sent_at`): on a machine shared with other jobs the rate of a tenth follows
  the load while it ran, the CPU a message costs much less, so this tells a
  claim that slows as the queue shrinks (or grows) from a busy neighbour;
- when the first message was recorded, and the RSS then (planning and the
  render are done) against the peak.
"""

from __future__ import annotations

import argparse
import bisect
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


def sample(proc: subprocess.Popen[str], every: float = 0.2) -> list[tuple[float, float, float]]:
    """(epoch seconds, CPU seconds, RSS MB) of `proc` until it exits (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    samples = []
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            break
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime: every thread
        samples.append((time.time(), cpu, int(fields[21]) * page / 2**20))  # rss pages
        time.sleep(every)
    return samples


def cpu_at(samples: list[tuple[float, float, float]], when: float) -> float:
    """The process's CPU seconds at `when`, interpolated between samples."""
    stamps = [s[0] for s in samples]
    i = bisect.bisect_left(stamps, when)
    if i <= 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, c0, _r0), (t1, c1, _r1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (when - t0) / max(t1 - t0, 1e-9)


def tenths_cpu(times: list[float], samples: list[tuple[float, float, float]]) -> list[float]:
    """CPU milliseconds per message over each tenth of the recipients."""
    n = len(times)
    per = []
    for k in range(10):
        first, last = times[k * n // 10], times[min(n - 1, (k + 1) * n // 10)]
        per.append((cpu_at(samples, last) - cpu_at(samples, first)) / (n // 10) * 1000)
    return per


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
            started_epoch = time.time()
            # Files, not pipes: nobody reads a pipe while the samples are taken.
            with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
                proc = subprocess.Popen(
                    cmd, cwd=directory, env=env, stdout=out_file, stderr=err_file, text=True
                )
                samples = sample(proc)
                proc.wait()
                wall = time.perf_counter() - started
                out_file.seek(0)
                err_file.seek(0)
                out, err = out_file.read(), err_file.read()
            if proc.returncode != 0:
                raise SystemExit(f"send failed ({proc.returncode}):\n{err[-3000:]}")
            print(out.strip().splitlines()[-1] if out.strip() else "(no output)")
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
    if samples:
        per = tenths_cpu(times, samples)
        print("CPU per message per tenth (ms): " + "  ".join(f"{c:.3f}" for c in per))
        print(f"CPU per message, last tenth / first tenth: {per[-1] / per[0]:.2f}")
        first_rss = max((r for t, _c, r in samples if t <= times[0]), default=0.0)
        print(
            f"first message recorded {times[0] - started_epoch:.2f} s after the start "
            f"(planning and the render included); RSS by then {first_rss:.1f} MB, "
            f"largest sampled {max(r for _t, _c, r in samples):.1f} MB"
        )
    low, high = min(rates), max(rates)
    print(f"slowest / fastest tenth: {low:,.0f} / {high:,.0f} msg/s ({low / high:.2f})")
    print(f"peak RSS of the send process: {usage.ru_maxrss / 1024:.1f} MB (goal <= 100 MB)")
    print(f"CPU of the send process: {cpu / args.n * 1000:.3f} s per 1,000 messages")
    print(f"load average at end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
