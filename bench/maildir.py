"""The maildir outbox: our transport (0700 folders, each message chmod 0600)
vs the stdlib `mailbox.Maildir.add` it wraps (the baseline: what it cost
before the files were made private).

    python bench/maildir.py              # 5 interleaved rounds of 2,000 messages
    python bench/maildir.py --n 10000 --rounds 7
"""

from __future__ import annotations

import argparse
import mailbox
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.delivery.transports.maildir import MaildirTransport  # noqa: E402

MESSAGE = (
    b"From: news@example.com\r\nTo: reader@example.org\r\nSubject: hi\r\n\r\n"
    + b"x" * 10_000
    + b"\r\n"
)


def ours(folder: Path, n: int) -> None:
    with MaildirTransport(folder) as transport:
        for i in range(n):
            transport.send("news@example.com", f"r{i}@example.org", MESSAGE)


def baseline(folder: Path, n: int) -> None:
    box = mailbox.Maildir(folder, create=True)
    for i in range(n):
        envelope = f"Return-Path: <news@example.com>\r\nDelivered-To: r{i}@example.org\r\n"
        box.add(envelope.encode() + MESSAGE)


def timed(run: Callable[[Path, int], None], n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run(Path(tmp) / "outbox", n)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"baseline (mailbox.add)": [], "MaildirTransport": []}
    for _ in range(args.rounds):  # interleaved, so drift hits both alike
        results["baseline (mailbox.add)"].append(timed(baseline, args.n))
        results["MaildirTransport"].append(timed(ours, args.n))
    for name, times in results.items():
        rates = sorted(args.n / t for t in times)
        print(
            f"{name:24} msgs/s min {rates[0]:8.0f}  median {statistics.median(rates):8.0f}"
            f"  max {rates[-1]:8.0f}"
        )


if __name__ == "__main__":
    main()
