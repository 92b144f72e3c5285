"""Delivery figures: our SMTP path vs plain smtplib, personalisation, memory.

    python bench/send.py                 # N = 100,000 through SMTP, C = 4
    python bench/send.py --n 20000 --concurrency 2
    python bench/send.py --memory 100000,1000000   # peak RSS, one subprocess per size

Everything runs on 127.0.0.1: a minimal asyncio SMTP sink (it answers 250 to
everything) in its own process is shared by both measurements, so the ratio
compares client work only.  The baseline sends pre-built bytes of the same
size with plain smtplib over the same number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POST = "how-sleep-consolidates-memory"


# --------------------------------------------------------------------------- the sink


async def _sink_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    try:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                writer.write(b"250 ok\r\n")
            elif verb == b"EHLO":
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def run_sink(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_sink_client, "127.0.0.1", port, limit=1 << 20)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--sink", str(port)])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the sink did not start")


# --------------------------------------------------------------------------- a site


def make_site(directory: Path, port: int, concurrency: int) -> Any:
    import shutil

    from newsletter.config import load_settings

    shutil.copytree(ROOT / "posts", directory / "posts")
    (directory / "newsletter.toml").write_text(
        f"""
[site]
title = "Bench"
url = "https://blog.example.com"
posts_dir = "posts"
[email]
from = "Bench <news@example.com>"
[delivery]
transport = "smtp"
concurrency = {concurrency}
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
[database]
url = "sqlite:///bench.db"
[lists.bench]
title = "Bench"
"""
    )
    os.environ.setdefault("NEWSLETTER_SECRET", "bench-secret")
    return load_settings(directory / "newsletter.toml")


def add_members(engine: Any, n: int) -> None:
    """Bulk-insert n active members of list 'bench' (faster than the CSV importer)."""
    from sqlalchemy import select

    from newsletter.store.schema import lists, memberships, subscribers

    stamp = datetime.now(UTC)
    with engine.begin() as conn:
        list_id = conn.scalar(select(lists.c.id).where(lists.c.name == "bench"))
        start = int(conn.scalar(select(subscribers.c.id).order_by(subscribers.c.id.desc())) or 0)
        for base in range(0, n, 10_000):
            chunk = range(base, min(n, base + 10_000))
            conn.execute(
                subscribers.insert(),
                [
                    {
                        "id": start + i + 1,
                        "email": f"reader{i:07d}@example.org",
                        "uid": f"{i:032x}",
                        "name": f"Reader {i}",
                        "attributes": {},
                        "status": "active",
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                    for i in chunk
                ],
            )
            conn.execute(
                memberships.insert(),
                [
                    {"list_id": list_id, "subscriber_id": start + i + 1, "created_at": stamp}
                    for i in chunk
                ],
            )


# --------------------------------------------------------------------------- measurements


def baseline(port: int, message: bytes, n: int, concurrency: int) -> float:
    """Plain smtplib, pre-built bytes, `concurrency` connections: messages/s."""

    def worker(count: int) -> None:
        conn = smtplib.SMTP("127.0.0.1", port, local_hostname="bench")
        for i in range(count):
            conn.sendmail("news@example.com", [f"reader{i:07d}@example.org"], message)
        conn.quit()

    share = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(c,)) for c in share]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - started)


def personalisation_rate(settings: Any, n: int) -> tuple[float, float, bytes]:
    """Messages/s for personalise alone, and with the unsubscribe token as sending does."""
    from newsletter.email import render
    from newsletter.email.message import MessageTemplate, Recipient
    from newsletter.email.tokens import load_secret, make_token, unsubscribe_url
    from newsletter.posts.collection import load_posts

    post = load_posts(settings).find(POST)
    rendered = render.render_email(post, settings, settings.get_list("bench"))
    template = MessageTemplate.build(rendered, settings)
    url = "https://news.example.com/unsubscribe/abcdefghijklmnop"
    sample = template.personalise(Recipient("reader0@example.org", "Reader", url), mailing_key="1")
    started = time.perf_counter()
    for i in range(n):
        template.personalise(Recipient(f"reader{i}@example.org", "Reader", url), mailing_key="1")
    alone = n / (time.perf_counter() - started)
    secret = load_secret(settings)
    started = time.perf_counter()
    for i in range(n):
        token = make_token(secret, f"{i:032x}", "bench")
        recipient = Recipient(f"reader{i}@example.org", "Reader", unsubscribe_url(settings, token))
        template.personalise(recipient, mailing_key="1")
    with_token = n / (time.perf_counter() - started)
    return alone, with_token, sample


def ours(settings: Any, n: int) -> tuple[float, float, Any]:
    """Plan + deliver through the real SMTP transport: (plan seconds, messages/s, report)."""
    from newsletter.audience import members as subs
    from newsletter.delivery.mailings import deliver_mailing, plan_mailing
    from newsletter.posts.collection import load_posts
    from newsletter.store import open_store

    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    add_members(engine, n)
    posts = load_posts(settings)
    started = time.perf_counter()
    mailing = plan_mailing(engine, settings, POST, "bench")
    planned = time.perf_counter() - started
    started = time.perf_counter()
    report = deliver_mailing(engine, settings, mailing, posts)
    rate = report.sent / (time.perf_counter() - started)
    return planned, rate, report


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_run(n: int, deliver: bool) -> None:
    """In a fresh process: members → plan → (deliver to the sink | personalise all)."""
    from newsletter.audience import members as subs
    from newsletter.delivery.mailing_pass import MailingPass
    from newsletter.delivery.mailings import deliver_mailing, plan_mailing
    from newsletter.posts.collection import load_posts
    from newsletter.store import mailings as q
    from newsletter.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        sink, port = start_sink() if deliver else (None, 1)
        try:
            settings = make_site(Path(tmp), port, 4)
            engine = open_store(settings)
            subs.ensure_lists(engine, settings)
            add_members(engine, n)
            base = peak_rss_mb()
            posts = load_posts(settings)
            mailing = plan_mailing(engine, settings, POST, "bench")
            after_plan = peak_rss_mb()
            started = time.perf_counter()
            if deliver:
                sent = deliver_mailing(engine, settings, mailing, posts).sent
            else:
                # Claim in batches and personalise every recipient, no network.
                with engine.connect() as conn:
                    row = q.get_mailing(conn, mailing)
                assert row is not None
                run = MailingPass(engine, settings, row, posts)
                from newsletter.delivery.outgoing import _Context, build_template

                ctx = _Context(settings, row, build_template(settings, row, posts), None)
                sent = 0
                with engine.connect() as conn:
                    for batch in _stream(conn, mailing):
                        for claimed in batch:
                            ctx.message(claimed)
                            sent += 1
                del run
            elapsed = time.perf_counter() - started
            print(
                f"{n},{sent},{base:.1f},{after_plan:.1f},{peak_rss_mb():.1f},{elapsed:.1f}",
                flush=True,
            )
        finally:
            if sink is not None:
                sink.kill()


def _stream(conn: Any, mailing_id: int) -> Any:
    """Deliveries joined with subscribers in pages of 1,000 (what claim reads)."""
    from sqlalchemy import select

    from newsletter.store import mailings as q
    from newsletter.store.schema import deliveries, subscribers

    last = 0
    while True:
        rows = conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.subscriber_id,
                subscribers.c.uid,
                deliveries.c.email,
                subscribers.c.name,
                deliveries.c.attempts,
                deliveries.c.message_id,
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.mailing_id == mailing_id, deliveries.c.id > last)
            .order_by(deliveries.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [q.Claimed(*r) for r in rows]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--memory", default="", help="comma-separated sizes for peak RSS runs")
    parser.add_argument("--deliver", action="store_true", help="memory runs deliver via SMTP")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(args.sink)
        return
    if args.memory_run:
        memory_run(args.memory_run, args.deliver)
        return
    if args.memory:
        print("n,processed,rss_after_members_mb,rss_after_plan_mb,peak_rss_mb,seconds")
        for size in args.memory.split(","):
            cmd = [sys.executable, __file__, "--memory-run", size]
            subprocess.run(cmd + (["--deliver"] if args.deliver else []), check=True)
        return
    bench(args.n, args.concurrency)


def bench(n: int, concurrency: int) -> None:
    sink, port = start_sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = make_site(Path(tmp), port, concurrency)
            alone, with_token, sample = personalisation_rate(settings, min(n, 50_000))
            print(f"message size: {len(sample):,} bytes; N = {n:,}; concurrency = {concurrency}")
            print(f"personalisation alone:        {alone:10,.0f} msg/s (goal >= 20,000)")
            print(f"personalisation + token/URL:  {with_token:10,.0f} msg/s")
            base = baseline(port, sample, n, concurrency)
            print(f"baseline smtplib (pre-built): {base:10,.0f} msg/s")
            planned, rate, report = ours(settings, n)
            print(f"planning (snapshot {n:,}):    {planned:10.2f} s")
            print(f"newsletter send (SMTP):       {rate:10,.0f} msg/s  (sent {report.sent:,})")
            print(f"ratio ours / baseline:        {rate / base:10.2f} (goal >= 0.9)")
            print(f"peak RSS of this process:     {peak_rss_mb():10.1f} MB")
    finally:
        sink.kill()


if __name__ == "__main__":
    main()
