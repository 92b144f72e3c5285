"""Delivery figures: our SMTP sender vs plain smtplib and aiosmtplib, personalisation, memory.

    python bench/send.py                                  # smtp-sink, N = 20k and 100k, C = 1, 4, 8
    python bench/send.py --only streams,threaded          # ours with a strategy forced
    python bench/send.py --n 20000 --concurrency 4 --runs 3 --pipelining off
    python bench/send.py --also rounds,threaded           # the older strategies too
    python bench/send.py --only streams,streams-p2        # ours with [delivery] processes = 2
    python bench/send.py --only ours,ours-asyncio         # ours on asyncio's event loop too
    python bench/send.py --cold-render                    # ours renders (no render cache)
    python bench/send.py --only ours,before:ours          # before/after: main's code (--before)
    python bench/send.py --baselines smtplib              # skip aiosmtplib (the slowest run)
    python bench/send.py --sink python                    # the asyncio sink below instead
    python bench/send.py --personalise                    # personalisation rates only
    python bench/send.py --memory 100000,1000000          # peak RSS, one subprocess per size

Everything runs on 127.0.0.1 against one sink per PIPELINING mode: Postfix's
`smtp-sink` (C, event-driven, never the bottleneck; `-p` turns PIPELINING
off) or a minimal asyncio sink.  The baselines send pre-built bytes of the
same size over the same number of connections: smtplib with a thread per
connection, aiosmtplib with a coroutine per connection (neither pipelines).
Ours is the whole pass: claim, personalise, send, record in the ledger,
with `[delivery] strategy = "auto"` ("ours": what a user gets, whichever
strategy auto picks for the sink) unless a strategy is named ("streams",
"threaded", "rounds"; "-p2" after it: `[delivery] processes = 2`; "-asyncio"
or "-uvloop" last: the streams' event loop, see `set_event_loop`).

Each measurement runs in a fresh subprocess (clean CPU and memory figures);
within a run the contestants go in rotated order (A/B interleaved), and the
ratios are taken run by run.  Reported per cell: messages/s min/median/max,
CPU seconds per 1,000 messages (the whole process, all threads), and the time
from the start of sending to the first message accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The package measured: this checkout, or another one's for a before/after
# ("--only streams,before:streams --before /path/to/checkout").
CODE = Path(os.environ.get("BENCH_CODE") or ROOT)
sys.path.insert(0, str(CODE))

POST = "how-sleep-consolidates-memory"
SMTP_SINK = "/usr/sbin/smtp-sink"


# --------------------------------------------------------------------------- the sink


EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"


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
                writer.write(EHLO)
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


def run_sink(port: int, pipelining: bool) -> None:
    global EHLO
    if not pipelining:
        EHLO = EHLO.replace(b"250-PIPELINING\r\n", b"")

    async def main() -> None:
        server = await asyncio.start_server(_sink_client, "127.0.0.1", port, limit=1 << 20)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(pipelining: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    """The asyncio sink above, in its own process."""
    port = free_port()
    cmd = [sys.executable, __file__, "--python-sink", str(port)]
    proc = subprocess.Popen(cmd + ([] if pipelining else ["--no-pipelining"]))
    wait_for(port)
    return proc, port


def wait_for(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the sink did not start")


# --------------------------------------------------------------------------- a site


def make_site(
    directory: Path,
    port: int,
    concurrency: int,
    strategy: str = "streams",
    processes: int | None = None,
    event_loop: str = "",
) -> Any:
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
templates_dir = "{ROOT / "templates"}"
[delivery]
transport = "smtp"
concurrency = {concurrency}
strategy = "{strategy}"
{f"processes = {processes}" if processes is not None else ""}
{'event_loop = "asyncio"' if event_loop == "asyncio" else ""}
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

SENDER = "news@example.com"


def rcpt(i: int) -> str:
    return f"reader{i:07d}@example.org"


def shares(n: int, concurrency: int) -> list[int]:
    return [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]


def measure_smtplib(port: int, message: bytes, n: int, concurrency: int) -> tuple[int, float]:
    """Plain smtplib, a thread per connection: (messages sent, first message time)."""
    first: list[float] = []

    def worker(offset: int, count: int) -> None:
        conn = smtplib.SMTP("127.0.0.1", port, local_hostname="bench")
        for i in range(offset, offset + count):
            conn.sendmail(SENDER, [rcpt(i)], message)
            if not first:
                first.append(time.perf_counter())
        conn.quit()

    counts = shares(n, concurrency)
    offsets = [sum(counts[:i]) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=a) for a in zip(offsets, counts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n, first[0]


def measure_aiosmtplib(port: int, message: bytes, n: int, concurrency: int) -> tuple[int, float]:
    """aiosmtplib, a coroutine per connection on one loop."""
    import aiosmtplib

    first: list[float] = []

    async def worker(offset: int, count: int) -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, local_hostname="bench", start_tls=False
        )
        await client.connect()
        for i in range(offset, offset + count):
            await client.sendmail(SENDER, [rcpt(i)], message)
            if not first:
                first.append(time.perf_counter())
        await client.quit()

    async def main() -> None:
        counts = shares(n, concurrency)
        offsets = [sum(counts[:i]) for i in range(concurrency)]
        await asyncio.gather(*(worker(o, c) for o, c in zip(offsets, counts, strict=True)))

    asyncio.run(main())
    return n, first[0]


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


def prepare(directory: Path, n: int) -> int:
    """A site with n members and a planned mailing (copied for each run of ours)."""
    from newsletter.audience import members as subs
    from newsletter.delivery.mailings import plan_mailing
    from newsletter.store import open_store

    settings = make_site(directory, 1, 1)
    engine = open_store(settings)
    subs.ensure_lists(engine, settings)
    add_members(engine, n)
    mailing = plan_mailing(engine, settings, POST, "bench")
    engine.dispose()
    return mailing


def measure_ours(
    template: Path, mailing: int, port: int, concurrency: int, strategy: str
) -> tuple[int, float]:
    """The whole pass on a copy of the prepared ledger."""
    import gc
    import shutil

    import newsletter
    from newsletter.delivery import mailing_pass  # noqa: F401  (imported before the clock)
    from newsletter.delivery.mailings import deliver_mailing
    from newsletter.posts.collection import load_posts
    from newsletter.store import open_store

    # As in `newsletter send` (newsletter/__main__.py); an older checkout
    # (before:ours) sets the same thresholds there without the constant.
    gc.set_threshold(*getattr(newsletter, "GC_THRESHOLDS", (100_000, 10, 10)))
    work = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    try:
        # "streams-p2": the streams strategy with [delivery] processes = 2
        # ("-p1": one process; none: the default)
        strategy, event_loop = split_loop(strategy)
        strategy, _, procs = strategy.partition("-p")
        strategy = "auto" if strategy == "ours" else strategy
        processes = int(procs) if procs else None
        settings = make_site(work, port, concurrency, strategy, processes, event_loop)
        shutil.copy(template / "bench.db", work / "bench.db")

        os.chdir(work)
        engine = open_store(settings)
        posts = load_posts(settings)
        if RENDERED:
            # As after `newsletter render` or the preview of this post: the render is cached.
            from newsletter.email.rendercache import cached_render

            cached_render([posts.find(POST)], settings, settings.get_list("bench"))
        first: list[float] = []

        def progress(done: int, total: int) -> None:
            if not first:
                first.append(time.perf_counter())

        global STARTED, CPU_STARTED, CHILD_CPU
        STARTED, CPU_STARTED = time.perf_counter(), time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        CHILD_CPU = children.ru_utime + children.ru_stime
        set_event_loop(event_loop)  # on the clock: uvloop's import is part of the pass
        report = deliver_mailing(engine, settings, mailing, posts, progress=progress)
        return report.sent, first[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)


LOOPS = ("-uvloop", "-asyncio")


def split_loop(kind: str) -> tuple[str, str]:
    """The kind and its loop suffix: ours-uvloop -> (ours, uvloop); none -> (kind, "")."""
    for suffix in LOOPS:
        if kind.endswith(suffix):
            return kind.removesuffix(suffix), suffix[1:]
    return kind, ""


def set_event_loop(event_loop: str) -> None:
    """The loop asyncio.run makes in this process, when one is named: the streams' loop
    for a checkout from before `[delivery] event_loop` (before:ours-uvloop); since, "ours"
    is on uvloop when it is installed and "-asyncio" also sets event_loop = "asyncio"."""
    if event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif event_loop == "asyncio":
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


STARTED = CPU_STARTED = CHILD_CPU = 0.0
RENDERED = True  # --cold-render: ours renders the post (premailer) before its first message


def measure(args: argparse.Namespace) -> None:
    """In a fresh process: one contestant, one JSON line."""
    global STARTED, CPU_STARTED
    kind, port, n, concurrency = args.kind, args.port, args.n, args.concurrency
    message = Path(args.message).read_bytes()
    STARTED, CPU_STARTED = time.perf_counter(), time.process_time()
    if kind == "smtplib":
        sent, first = measure_smtplib(port, message, n, concurrency)
    elif kind == "aiosmtplib":
        sent, first = measure_aiosmtplib(port, message, n, concurrency)
    else:
        sent, first = measure_ours(Path(args.template), args.mailing, port, concurrency, kind)
    seconds = time.perf_counter() - STARTED
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, all joined
    cpu = time.process_time() - CPU_STARTED + children.ru_utime + children.ru_stime - CHILD_CPU
    print(
        json.dumps(
            {
                "kind": kind,
                "sent": sent,
                "rate": sent / seconds,
                "cpu_per_1000": cpu / max(1, sent) * 1000,
                "first": first - STARTED,
                "rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


def run_one(
    kind: str, port: int, n: int, concurrency: int, files: dict[str, Any]
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", kind, "--port", str(port), "--n", str(n)]
    cmd += ["--concurrency", str(concurrency), "--message", str(files["message"])]
    cmd += ["--template", str(files["template"]), "--mailing", str(files["mailing"])]
    cmd += ["--cold-render"] if not RENDERED else []
    env = CHILD_ENV
    if "@" in kind:  # a variant: the same code with environment variables (--variant)
        cmd[cmd.index(kind)], _, name = kind.partition("@")
        env = {**CHILD_ENV, **VARIANTS[name]}
        kind = cmd[cmd.index("--measure") + 1]
    if kind.startswith("before:"):
        env = {**CHILD_ENV, "BENCH_CODE": BEFORE, "PYTHONPATH": BEFORE}
        cmd[cmd.index(kind)] = kind.removeprefix("before:")
    if kind != "smtplib" and kind != "aiosmtplib" and (wrap := os.environ.get("BENCH_WRAP")):
        # e.g. BENCH_WRAP="py-spy record -o /tmp/p.txt -f raw --" profiles our runs only
        cmd = shlex.split(wrap) + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr}")
    lines = out.stdout.strip().splitlines()  # a BENCH_WRAP tool may print after ours
    result: dict[str, Any] = json.loads(next(x for x in reversed(lines) if x.startswith("{")))
    if result["sent"] != n:
        raise RuntimeError(f"{kind} sent {result['sent']} of {n}")
    return result


BEFORE = "/work/main"  # --before
VARIANTS: dict[str, dict[str, str]] = {}  # --variant NAME=VAR=VALUE: kinds ending in @NAME
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NEWSLETTER_SECRET": "bench-secret"}


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
                from newsletter.delivery.outgoing import MessageContext, build_template

                template = build_template(settings, row, posts)
                ctx = MessageContext(settings, row, template, None, engine)
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


# --------------------------------------------------------------------------- the comparison


def start_smtp_sink(pipelining: bool) -> tuple[subprocess.Popen[bytes], int]:
    """Postfix's smtp-sink: a C server that is never the bottleneck; -p: no PIPELINING."""
    port = free_port()
    cmd = [SMTP_SINK, "-u", "nobody"] if os.geteuid() == 0 else [SMTP_SINK]
    cmd += ([] if pipelining else ["-p"]) + [f"127.0.0.1:{port}", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_for(port)
    return proc, port


def stats(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def fmt(values: list[float], spec: str) -> str:
    low, mid, high = stats(values)
    return f"{low:{spec}} / {mid:{spec}} / {high:{spec}}"


def compare(args: argparse.Namespace) -> None:
    sizes = [int(v) for v in args.n.split(",")]
    widths = [int(v) for v in args.concurrency.split(",")]
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.pipelining]
    global BASELINES
    BASELINES = tuple(b for b in args.baselines.split(",") if b)
    kinds = ["ours", *BASELINES, *[k for k in args.also.split(",") if k]]
    if args.only:
        kinds = [k for k in args.only.split(",") if k] + list(BASELINES)
    log = open(args.out, "a") if args.out else None  # noqa: SIM115
    print(f"sink: {args.sink}; runs per cell: {args.runs}; interleaved order, rotated per run")
    print("rates: msg/s min / median / max; ratios per run: min / median / max;")
    print("CPU: s per 1,000 messages (median); first: s to the first accepted message (median)\n")
    with tempfile.TemporaryDirectory() as tmp:
        message = Path(tmp) / "message.eml"
        for n in sizes:
            template = Path(tmp) / f"site-{n}"
            template.mkdir()
            started = time.perf_counter()
            mailing = prepare(template, n)
            if not message.exists():
                message.write_bytes(sample_message(template))
            print(f"N = {n:,}: ledger prepared in {time.perf_counter() - started:.1f} s")
            files = {"message": message, "template": template, "mailing": mailing}
            for pipelining in modes:
                sink, port = (
                    start_smtp_sink(pipelining) if args.sink == "smtp-sink" else
                    start_sink(pipelining)
                )  # fmt: skip
                try:
                    for c in widths:
                        cell(n, c, pipelining, kinds, args.runs, port, files, log)
                finally:
                    sink.kill()
                    sink.wait()
    if log is not None:
        log.close()


BASELINES: tuple[str, ...] = ("smtplib", "aiosmtplib")  # --baselines


def loadavg() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def cell(
    n: int, c: int, pipelining: bool, kinds: list[str], runs: int, port: int,
    files: dict[str, Any], log: Any,
) -> None:  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    load_before = loadavg()
    for run in range(runs):
        order = kinds[run % len(kinds) :] + kinds[: run % len(kinds)]
        for kind in order:
            result = run_one(kind, port, n, c, files)
            results[kind].append(result)
            if log is not None:
                log.write(json.dumps({"n": n, "c": c, "pipelining": pipelining, **result}) + "\n")
                log.flush()
    mode = "PIPELINING" if pipelining else "no PIPELINING"
    print(f"N = {n:,}, C = {c}, {mode}  ({load_before} -> {loadavg()})")
    for kind in kinds:
        got = results[kind]
        rates = [r["rate"] for r in got]
        cpu = statistics.median(r["cpu_per_1000"] for r in got)
        first = statistics.median(r["first"] for r in got)
        print(f"  {kind:<11} {fmt(rates, '8,.0f')} msg/s  CPU {cpu:.3f}  first {first:.2f} s")
    for mine in [k for k in kinds if k not in BASELINES]:
        ours = results[mine]
        for base in BASELINES:
            theirs = results[base]
            ratios = [a["rate"] / b["rate"] for a, b in zip(ours, theirs, strict=True)]
            cpus = [
                a["cpu_per_1000"] / b["cpu_per_1000"] for a, b in zip(ours, theirs, strict=True)
            ]
            label = f"{mine}/{base}"
            print(f"  {label:<24} rate {fmt(ratios, '.2f')}   CPU {fmt(cpus, '.2f')}")
        # The A/B itself, run by run: against main's code, or the same on another loop.
        for other in (f"before:{mine}", split_loop(mine)[0], mine.partition("@")[0]):
            if other == mine or other not in results:
                continue
            pairs = list(zip(ours, results[other], strict=True))
            ratios = [a["rate"] / b["rate"] for a, b in pairs]
            cpus = [a["cpu_per_1000"] / b["cpu_per_1000"] for a, b in pairs]
            label = f"{mine}/{other}"
            print(f"  {label:<24} rate {fmt(ratios, '.2f')}   CPU {fmt(cpus, '.2f')}")
    print(flush=True)


def sample_message(site: Path) -> bytes:
    """One personalised message of the bench post: the baselines' bytes."""
    from newsletter.config import load_settings

    settings = load_settings(site / "newsletter.toml")
    return personalisation_rate(settings, 1)[2]


# --------------------------------------------------------------------------- main


def main() -> None:
    global RENDERED, BEFORE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="20000,100000", help="comma-separated list sizes")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated connection counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pipelining", choices=["on", "off", "both"], default="both")
    parser.add_argument("--sink", choices=["smtp-sink", "python"], default="smtp-sink")
    parser.add_argument("--also", default="", help="older strategies to measure: rounds,threaded")
    parser.add_argument("--out", default="", help="append every measurement as JSON lines")
    parser.add_argument(
        "--only",
        default="",
        help="ours to measure instead: ours,streams,threaded,streams-p2,ours-asyncio",
    )
    parser.add_argument(
        "--baselines",
        default="smtplib,aiosmtplib",
        help="baselines to run beside ours (aiosmtplib is slow: --baselines smtplib saves time)",
    )
    parser.add_argument("--before", default="/work/main", help="the checkout of before:KIND")
    parser.add_argument(
        "--cold-render", action="store_true", help="ours renders the post (no render cache)"
    )
    parser.add_argument("--personalise", action="store_true", help="personalisation rates only")
    parser.add_argument("--memory", default="", help="comma-separated sizes for peak RSS runs")
    parser.add_argument("--deliver", action="store_true", help="memory runs deliver via SMTP")
    for hidden in ("--python-sink", "--memory-run", "--port", "--mailing"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    for hidden in ("--measure", "--message", "--template"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=VAR=VALUE[,VAR=VALUE]: kinds ending in @NAME run with these variables",
    )
    parser.add_argument("--no-pipelining", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for variant in args.variant:
        name, _, assignments = variant.partition("=")
        VARIANTS[name] = dict(a.split("=", 1) for a in assignments.split(",") if a)
    RENDERED = not args.cold_render
    BEFORE = args.before
    if args.python_sink:
        run_sink(args.python_sink, not args.no_pipelining)
    elif args.measure:
        args.kind, args.n, args.concurrency = args.measure, int(args.n), int(args.concurrency)
        measure(args)
    elif args.memory_run:
        memory_run(args.memory_run, args.deliver)
    elif args.memory:
        print("n,processed,rss_after_members_mb,rss_after_plan_mb,peak_rss_mb,seconds")
        for size in args.memory.split(","):
            cmd = [sys.executable, __file__, "--memory-run", size]
            subprocess.run(cmd + (["--deliver"] if args.deliver else []), check=True)
    elif args.personalise:
        personalise(int(args.n.split(",")[0]))
    else:
        compare(args)


def personalise(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_site(Path(tmp), 1, 1)
        alone, with_token, sample = personalisation_rate(settings, min(n, 50_000))
        print(f"message size: {len(sample):,} bytes")
        print(f"personalisation alone:        {alone:10,.0f} msg/s (goal >= 20,000)")
        print(f"personalisation + token/URL:  {with_token:10,.0f} msg/s")


if __name__ == "__main__":
    main()
