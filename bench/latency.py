"""Punctuality: the delay between a post's date and its first message at the sink.

    python bench/latency.py              # 10 posts, baseline scan interval 5 s
    python bench/latency.py --posts 5 --scan 3

A real daemon (`scheduler.Daemon`) sends through SMTP to an aiosmtpd server on
127.0.0.1.  Ten future-dated posts are written before it starts, one every
`--spacing` seconds; each arrival at the server is timestamped by a 2 ms poll
and matched to its post by Subject.  Two runs in the same process:

* punctual: the daemon's one-off DateTrigger job at each post's date;
* baseline: the same daemon with one-off jobs off, so only the periodic scan
  (every `--scan` seconds) notices a post has come due.  With the default
  scan_interval of 60 s the baseline's delays would be ~12x these.

Goal: maximum ≤ 2 s for the punctual path, and never early (a negative delay).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from smtpserver import SmtpTestServer  # noqa: E402
from test_daemon_support import add_members, engine_of, make_site  # noqa: E402

from newsletter.daemon.scheduler import Daemon  # noqa: E402


def measure(posts: int, spacing: float, scan: float, punctual: bool) -> list[float]:
    """Delays (seconds, arrival - date) for `posts` future posts."""
    with tempfile.TemporaryDirectory() as tmp, SmtpTestServer() as server:
        site = make_site(
            Path(tmp), transport="smtp", smtp_port=server.port, scan_interval=f"{scan}s"
        )
        settings = site.settings()
        engine = engine_of(settings)
        add_members(engine, "news", ["reader@example.com"], settings=settings)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        dates: dict[str, float] = {}
        for i in range(posts):
            # Post dates carry whole seconds (front matter), so spacing rounds up.
            date = start + timedelta(seconds=round(i * spacing))
            title = f"Latency probe {i:02d}"
            site.write_post(f"2030-01-01-probe-{i:02d}.md", title, date)
            dates[title] = date.timestamp()
        daemon = Daemon(settings, engine, watch=False, punctual=punctual)
        daemon.start()
        arrivals: dict[str, float] = {}
        seen = 0
        deadline = time.time() + max(dates.values()) - time.time() + scan + 10
        try:
            while len(arrivals) < posts and time.time() < deadline:
                received = server.received
                while seen < len(received):
                    subject = str(
                        message_from_bytes(received[seen].data, policy=policy.default)["Subject"]
                    )
                    arrivals.setdefault(subject, time.time())
                    seen += 1
                time.sleep(0.002)
        finally:
            daemon.stop()
        missing = set(dates) - set(arrivals)
        if missing:
            raise SystemExit(f"no message arrived for {sorted(missing)}")
        return [arrivals[t] - dates[t] for t in sorted(dates)]


def describe(name: str, delays: list[float]) -> str:
    return (
        f"{name:<10} n={len(delays):<3} median {statistics.median(delays):6.3f} s   "
        f"max {max(delays):6.3f} s   min {min(delays):6.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=1.0, help="seconds between post dates")
    parser.add_argument("--scan", type=float, default=5.0, help="baseline scan interval (s)")
    args = parser.parse_args()
    punctual = measure(args.posts, args.spacing, 60.0, punctual=True)
    baseline = measure(args.posts, args.spacing, args.scan, punctual=False)
    print(describe("punctual", punctual))
    print(describe("baseline", baseline) + f"   (scan every {args.scan:g} s, no one-off jobs)")
    ratio_median = statistics.median(baseline) / max(statistics.median(punctual), 1e-6)
    ratio_max = max(baseline) / max(max(punctual), 1e-6)
    print(f"baseline / punctual: median x{ratio_median:.1f}, max x{ratio_max:.1f}")
    early = [d for d in punctual if d < 0]
    print(
        f"goal max <= 2 s: {'met' if max(punctual) <= 2 else 'MISSED'}; early sends: {len(early)}"
    )


if __name__ == "__main__":
    main()
