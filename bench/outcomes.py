"""Benchmark: the store's side of sending, claims and group commits of outcomes.

Run: `python bench/outcomes.py [--n 200000] [--group 4] [--repeat 3] [--before DIR]`.
`--group 0`: the pass's `Recorder` instead, one outcome waited for at a time
(a connection at C = 1; journaled on a SQLite file since December 2026).

A fresh SQLite store gets N active members on one list and a mailing
planned for them (`store.snapshots.snapshot_list`; not timed).  Then, timed,
what a sender does to the store without any SMTP: `store.leases.claim`
batches of 200, and each batch's outcomes (sent) recorded `--group` at a
time by the recorder's `LedgerWriter`, one commit per group.  A code whose
`Outcome` still records a Message-ID (before December 2026's derived ones)
is given the one its sender made, hashed from the mailing and the address
(`email.message.message_id`): those land on random leaves of
ix_deliveries_message_id, as they did in a real mailing.  Both codes hash
it, so the loop's CPU differs only by what the store does with it.  Printed per code (this checkout, and `--before DIR`, e.g. main's,
each in its own subprocess run from its own folder, interleaved round by
round): CPU seconds per 1,000 messages for the whole loop and for the
recording alone, wall seconds, and the database's size at the end.  The
machine is shared: compare A and B of the same round; `os.getloadavg()` is
printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
from datetime import UTC, datetime
from sqlalchemy import func, insert, select, update
from newsletter.store import open_url
from newsletter.store.leases import claim
from newsletter.store.mailings import insert_mailing
from newsletter.email.message import message_id
from newsletter.store.outcomes import LedgerWriter, Outcome
from newsletter.store.schema import deliveries, lists, mailings, memberships, subscribers
from newsletter.store.snapshots import snapshot_list

database, n, group = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = open_url(f"sqlite:///{database}")
at = datetime(2026, 1, 1, tzinfo=UTC)
with engine.begin() as conn:
    list_id = conn.execute(insert(lists).values(name="bench", created_at=at)).inserted_primary_key[0]
    for start in range(0, n, 10_000):
        conn.execute(insert(subscribers), [
            {"email": f"user.{i}@mail{i % 2000}.example.com", "uid": f"{i:032x}", "name": "",
             "attributes": {}, "status": "active", "created_at": at, "updated_at": at}
            for i in range(start, min(n, start + 10_000))
        ])
    conn.execute(insert(memberships).from_select(
        ["list_id", "subscriber_id", "created_at"],
        select(list_id, subscribers.c.id, subscribers.c.created_at),
    ))
    mailing = insert_mailing(conn, post_id="bench", list_id=list_id, kind="post", generation=0,
                             subject="bench", post_ids=(), ledger_key=1)
    conn.execute(update(mailings).where(mailings.c.id == mailing).values(state="sending"))
    snapshot_list(conn, mailing, list_id, 1)
owner = "bench:1:x"
records_mid = "message_id" in Outcome.__dataclass_fields__

def outcome(c):
    mid = message_id(str(mailing), c.email, "bench.example.com")
    if records_mid:
        return Outcome("sent", 1, 250, "2.0.0 Ok", message_id=mid)
    return Outcome("sent", 1, 250, "2.0.0 Ok")

sent, recording = 0, 0.0
wall, cpu = time.perf_counter(), time.process_time()
if group == 0:
    # The pass's Recorder, one outcome waited for at a time (a connection at
    # C = 1): a commit each, or (a SQLite file, since December 2026) an
    # appended journal line each and a fold before every claim.
    import threading
    from newsletter.delivery.recorder import Recorder
    recorder = Recorder(engine, threading.Lock(), owner)
    fold = getattr(recorder, "fold", lambda: None)
    while True:
        started = time.process_time()
        fold()
        recording += time.process_time() - started
        claimed, _ = claim(engine, mailing, owner, 200, 300.0)
        if not claimed:
            break
        for c in claimed:
            o = outcome(c)
            started = time.process_time()
            recorder.submit(c.id, o).wait()
            recording += time.process_time() - started
    started = time.process_time()
    recorder.close()
    recording += time.process_time() - started
    with engine.connect() as conn:
        sent = conn.scalar(select(func.count()).select_from(deliveries).where(
            deliveries.c.status == "sent"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    engine.dispose()
    print(json.dumps({"sent": sent, "wall": wall, "cpu": cpu, "recording": recording}))
    sys.exit(0)
connection = engine.connect()
writer = LedgerWriter(connection, owner)
while True:
    claimed, _ = claim(engine, mailing, owner, 200, 300.0)
    if not claimed:
        break
    for first in range(0, len(claimed), group):
        outcomes = [(c.id, outcome(c)) for c in claimed[first:first + group]]
        started = time.process_time()
        sent += writer.write(outcomes)
        recording += time.process_time() - started
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
connection.close()
engine.dispose()
print(json.dumps({"sent": sent, "wall": wall, "cpu": cpu, "recording": recording}))
"""


def run(label: str, code: Path, folder: Path, n: int, group: int) -> dict[str, float]:
    database = folder / f"{label}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    # From `code`'s folder: `python -c` puts the working directory before PYTHONPATH.
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(database), str(n), str(group)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["sent"] != n:
        raise SystemExit(f"{code}: {figures['sent']} of {n} outcomes recorded")
    files = (Path(f"{database}{suffix}") for suffix in ("", "-wal"))
    figures["size"] = sum(f.stat().st_size for f in files if f.exists()) / 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument(
        "--group",
        type=int,
        default=4,
        help="outcomes per commit; 0: the pass's Recorder, one outcome at a time (journaled on SQLite)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--before", type=Path, help="another checkout to compare (e.g. main's)")
    args = parser.parse_args()
    codes = {"after": HERE}
    if args.before:
        codes["before"] = args.before.resolve()
    print(f"load average at start: {os.getloadavg()}")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in codes}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            order = list(codes.items())
            for label, code in order if round_ % 2 == 0 else reversed(order):
                f = run(label, code, Path(tmp), args.n, args.group)
                results[label].append(f)
                print(
                    f"round {round_ + 1} {label:<7}: {f['wall']:6.2f} s wall, CPU per 1,000: "
                    f"{f['cpu'] * 1000 / args.n:.4f} s (recording {f['recording'] * 1000 / args.n:.4f}"
                    f" s), database {f['size']:.0f} MB",
                    flush=True,
                )
    print("\nmin / median / max over rounds, CPU seconds per 1,000 messages:")
    for label, runs in results.items():
        whole = [r["cpu"] * 1000 / args.n for r in runs]
        recording = [r["recording"] * 1000 / args.n for r in runs]
        walls = [r["wall"] for r in runs]
        print(
            f"{label:<7} claim+record {_spread(whole, 4)}  recording {_spread(recording, 4)}  "
            f"wall {_spread(walls, 2)} s  database {runs[-1]['size']:.0f} MB"
        )
    print(f"load average at end: {os.getloadavg()}")


def _spread(values: list[float], digits: int) -> str:
    return "/".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


if __name__ == "__main__":
    main()
