"""Work proportional to what changed: 1,000 posts, cold (no index) and warm.

    python bench/posts.py [--posts N] [--runs N] [--skip-cold-check] [--before PATH] [--jekyll]

Generates N seed-shaped posts (bench/blog.py) and measures, in the same run,
min / median / max of CPU seconds (and wall) for:

* baseline: `frontmatter.load` of every file (YAML + split only), in-process;
* `load_posts(bodies=False)` in-process: cold (no index) and warm (index on
  disk, as a new process finds it);
* whole commands as new processes, cold (state folder without index or
  renders) and warm: `posts --json`, `render POST`, `send POST --list main
  --resend` (3 subscribers, maildir outbox), `check`, `check` after editing
  one post, `check --all`;
* a daemon pass with nothing new (`passes.run_pass`, in-process, warm);
* the preview: a new process until `GET /` answers (and one post page),
  through Starlette's test client, and `newsletter preview` itself until its
  `GET /` answers 200 over HTTP.

`--before PATH` runs the commands and the preview from another checkout too
(`PYTHONPATH=PATH`, its own copy of the blog), interleaved with cold and warm.
`--jekyll` lays the same posts out as a Jekyll site (`_config.yml`, posts in
`_posts`, `[site] jekyll_config`), the path real blogs take.  Each tree's
package is byte-compiled first, as an installed wheel is (with
PYTHONDONTWRITEBYTECODE set every process would compile it from source).
The load average is printed at the start and at the end.

Goals (issue 13, on 1,000 posts): `send`/`render` of one post ≤ 0.5 s CPU;
`posts` ≤ 0.5 s when nothing changed; `check` ≤ 1 s when nothing changed;
a daemon pass with nothing new ≤ 50 ms CPU; the preview ready in ≤ 1 s.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blog import generate, posts_folder, write_post

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout, whatever is installed

PREVIEW_PROBE = """
import sys, time
start = time.perf_counter()
from starlette.testclient import TestClient
from newsletter.config import load_settings
from newsletter.web.preview import create_preview_app
app = create_preview_app(lambda: load_settings(None))
with TestClient(app, base_url="http://127.0.0.1:8025") as client:
    assert client.get("/").status_code == 200
    ready = time.perf_counter() - start
    assert client.get("/post/" + sys.argv[1]).status_code == 200
    shown = time.perf_counter() - start
print(f"{ready:.4f} {shown:.4f}")
"""


def child(argv: list[str], cwd: Path, tree: Path = ROOT) -> tuple[float, float, str]:
    """Wall and CPU seconds of one new process (the kernel's accounting), and its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode} (PYTHONPATH={tree})")
    return wall, usage.ru_utime + usage.ru_stime, out


def preview_command(cwd: Path, tree: Path) -> tuple[float, float]:
    """Wall seconds from starting `newsletter preview` to its first 200 for GET /,
    and the CPU seconds it used by then (its children's included)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["PYTHONPATH"] = str(tree)
    argv = newsletter("preview", "--no-open", "--port", str(port))
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    raise SystemExit(f"preview exited {proc.returncode}") from None
                time.sleep(0.005)
        wall = time.perf_counter() - start
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return wall, cpu


def newsletter(*args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", *args]


def row(label: str, cpu: list[float], wall: list[float], goal: str = "") -> None:
    def three(values: list[float]) -> str:
        return f"{min(values):7.3f} {statistics.median(values):7.3f} {max(values):7.3f}"

    print(f"{label:<48} {three(cpu)}   {three(wall)}  {goal}")


def forget_index(blog: Path) -> None:
    """Cold: none of what the state folder keeps (index, renders, inlining, templates)."""
    for name in ("index", "renders", "inlined", "jinja"):
        shutil.rmtree(blog / ".newsletter" / name, ignore_errors=True)


def in_process(func: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    func()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="Runs of each (default 3).")
    parser.add_argument(
        "--skip-cold-check", action="store_true", help="Skip the cold `check` (minutes)."
    )
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="Another checkout (say main before this change) run the same way, interleaved.",
    )
    parser.add_argument(
        "--jekyll", action="store_true", help="Lay the posts out as a Jekyll site (_posts)."
    )
    args = parser.parse_args()

    compileall.compile_dir(ROOT / "newsletter", quiet=1)
    if args.before:
        compileall.compile_dir(Path(args.before) / "newsletter", quiet=1)

    import frontmatter

    from newsletter.config import load_settings
    from newsletter.posts import index as post_index
    from newsletter.posts.collection import load_posts

    with tempfile.TemporaryDirectory() as tmp:
        blog = Path(tmp)
        config = generate(blog, args.posts, jekyll=args.jekyll)
        files = sorted(posts_folder(blog).glob("*.md"))
        print(
            f"{args.posts} posts, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB; "
            f"{args.runs} runs each; load {os.getloadavg()[0]:.1f}"
        )
        print(f"{'':<48} {'CPU s min  median     max':>23}   {'wall s min  median     max':>23}")
        os.chdir(blog)
        for who in ("alice", "bob", "carol"):
            child(newsletter("subscribers", "add", f"{who}@example.com", "--list", "main"), blog)
        settings = load_settings(config)
        post = f"bench-post-{args.posts // 2}"

        base = [in_process(lambda: [frontmatter.load(f) for f in files]) for _ in range(args.runs)]
        row(
            "baseline: frontmatter.load of every file", [c for _w, c in base], [w for w, _c in base]
        )

        def load_cold() -> object:
            forget_index(blog)
            post_index.forget()
            return load_posts(settings, bodies=False)

        def load_warm() -> object:
            post_index.forget()  # as a new process: read the index from disk
            return load_posts(settings, bodies=False)

        for label, func in (("cold", load_cold), ("warm", load_warm)):
            got = [in_process(func) for _ in range(args.runs)]
            row(
                f"load_posts(bodies=False), {label} index",
                [c for _w, c in got],
                [w for w, _c in got],
            )

        before: tuple[Path, Path] | None = None
        if args.before:
            before = (Path(args.before).resolve(), Path(tmp) / "before")
            shutil.copytree(blog, before[1], ignore=shutil.ignore_patterns(".newsletter"))
            for who in ("alice", "bob", "carol"):
                email = f"{who}@example.com"
                child(
                    newsletter("subscribers", "add", email, "--list", "main"), before[1], before[0]
                )

        def measure(label: str, argv: list[str], goal: str = "", runs: int = args.runs) -> None:
            """This tree cold (no index, no renders) and warm, and the tree before, interleaved."""
            got: dict[str, list[tuple[float, float, str]]] = {"cold": [], "warm": [], "before": []}
            for _ in range(runs):
                forget_index(blog)
                got["cold"].append(child(argv, blog))
                got["warm"].append(child(argv, blog))
                if before is not None:
                    got["before"].append(child(argv, before[1], before[0]))
            for state, found in got.items():
                if found:
                    cpu, wall = [c for _w, c, _o in found], [w for w, _c, _o in found]
                    row(f"{label}, {state}", cpu, wall, goal if state == "warm" else "")

        measure("posts --json", newsletter("posts", "--json"), "≤ 0.5 s")
        measure(f"render {post}", newsletter("render", post), "≤ 0.5 s CPU")
        send = newsletter("send", post, "--list", "main", "--resend")
        measure(f"send {post} --list main --resend", send, "≤ 0.5 s CPU")

        if not args.skip_cold_check:
            forget_index(blog)
            wall, cpu, _out = child(newsletter("check"), blog)
            row("check, cold (renders every post)", [cpu], [wall])
            if before is not None:
                wall, cpu, _out = child(newsletter("check"), before[1], before[0])
                row("check, before (renders every post)", [cpu], [wall])
        else:
            child(newsletter("check"), blog)
        runs = [child(newsletter("check"), blog) for _ in range(args.runs)]
        row(
            "check, warm (nothing changed)",
            [c for _w, c, _o in runs],
            [w for w, _c, _o in runs],
            "≤ 1 s",
        )
        runs = []
        for i in range(args.runs):
            write_post(blog, 7, title_suffix=f" (edit {i})", age=3600)
            runs.append(child(newsletter("check"), blog))
        row("check after editing one post", [c for _w, c, _o in runs], [w for w, _c, _o in runs])
        if not args.skip_cold_check:
            wall, cpu, _out = child(newsletter("check", "--all"), blog)
            row("check --all (renders every post)", [cpu], [wall])

        from newsletter.daemon import passes
        from newsletter.delivery.transports.memory import MemoryTransport
        from newsletter.store import open_store

        engine = open_store(settings)
        passes.run_pass(settings, engine, transport=MemoryTransport())
        got = [
            in_process(lambda: passes.run_pass(settings, engine, transport=MemoryTransport()))
            for _ in range(max(args.runs, 5))
        ]
        row(
            "daemon pass, nothing new (in-process)",
            [c for _w, c in got],
            [w for w, _c in got],
            "≤ 0.05 s CPU",
        )
        engine.dispose()

        places = {"cold": (blog, ROOT), "warm": (blog, ROOT)}
        if before is not None:
            places["before"] = (before[1], before[0])
        ready: dict[str, list[float]] = {k: [] for k in places}
        shown: dict[str, list[float]] = {k: [] for k in places}
        cpus: dict[str, list[float]] = {k: [] for k in places}
        for _ in range(args.runs):
            forget_index(blog)
            for state, (where, tree) in places.items():
                probe = [sys.executable, "-c", PREVIEW_PROBE, post]
                _wall, cpu, out = child(probe, where, tree)
                first, second = (float(x) for x in out.split())
                ready[state].append(first)
                shown[state].append(second)
                cpus[state].append(cpu)
        for state in places:
            goal = "≤ 1 s (wall)" if state == "warm" else ""
            row(f"preview: GET / answered, {state}", cpus[state], ready[state], goal)
            row(f"preview: and one post page, {state}", cpus[state], shown[state])
        # The command itself: `newsletter preview` started until its GET / answers
        # (interpreter and uvicorn included, no test client).
        started: dict[str, list[tuple[float, float]]] = {k: [] for k in places}
        for _ in range(args.runs):
            forget_index(blog)
            for state, (where, tree) in places.items():
                started[state].append(preview_command(where, tree))
        for state in places:
            goal = "≤ 1 s (wall)" if state == "warm" else ""
            cpu, wall = [c for _w, c in started[state]], [w for w, _c in started[state]]
            row(f"`newsletter preview` started → GET / 200, {state}", cpu, wall, goal)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
