"""The preview's start: `newsletter preview` started until its `GET /` answers 200.

    python bench/preview.py [--posts N] [--runs N] [--tree NAME=PATH ...]

Issue 13's goal is "the preview ready in ≤ 1 s" on a 1,000-post blog with the
post index kept.  Each run starts `python -m newsletter preview --no-open` as a
new process in a generated blog (bench/blog.py) and asks for `GET /` every
2 ms until it answers 200 over HTTP (no browser, no test client).  It prints
min / median / max of the wall seconds from the start of the process to that
200, and of the CPU seconds the process (all its threads) used by then, read
from /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms
ticks).

`--callgrind N` also counts, in N more runs per tree, the instructions the
process executes up to that 200 (valgrind's callgrind, every thread; dumped
by `callgrind_control -d` when the 200 arrives): user-space work only, but the
same whatever else the machine runs, so a few percent between two trees shows
where the wall time of a loaded machine cannot.

`--tree NAME=PATH` adds another checkout (say main, in a git worktree) run
the same way with `PYTHONPATH=PATH`, interleaved round by round, in an order
that alternates, so a machine whose load drifts moves them together.  Each
tree gets its own copy of the blog (its own state folder) and one run before
the measured ones (the post index, and whatever else the state folder keeps,
made as `newsletter posts` or an earlier preview would have).  Each tree's
package is byte-compiled first, as an installed wheel is.  The load average is
printed at the start and at the end: on a shared 2-core machine the wall time
is mostly CPU waiting for a core.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blog import generate

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    return total / 1e9


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_once(blog: Path, tree: Path, callgrind: Path | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds from starting `newsletter preview` to its first 200 for
    GET /; with `callgrind`, the process runs under it and dumps its counts there."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["PYTHONPATH"] = str(tree)
    argv = [sys.executable, "-m", "newsletter", "preview", "--no-open", "--port", str(port)]
    if callgrind is not None:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}", *argv]
    with tempfile.TemporaryFile() as log:  # uvicorn's lines, shown if the preview dies
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=blog, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            while not answered(port):
                if proc.poll() is not None:
                    log.seek(0)
                    said = log.read().decode(errors="replace")
                    raise SystemExit(f"preview exited {proc.returncode} ({tree}): {said}")
                time.sleep(0.002 if callgrind is None else 0.05)
            wall = time.perf_counter() - start
            cpu = cpu_seconds(proc.pid)
            if callgrind is not None:
                dump = ["callgrind_control", "-d", str(proc.pid)]
                quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                subprocess.run(dump, check=True, **quiet)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return wall, cpu


def instructions(blog: Path, tree: Path, folder: Path) -> int:
    """Instructions executed up to the first 200 (callgrind's first dump)."""
    out = folder / "callgrind.out"
    start_once(blog, tree, out)
    found = 0
    for dump in folder.glob("callgrind.out*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                # The dump at the 200; the one at exit counts only the way out.
                found = max(found, int(line.split()[1]))
        dump.unlink()
    return found


def answered(port: int) -> bool:
    """True once GET / answers 200; False while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError as exc:  # it answered, and not with the index
        raise SystemExit(f"GET / answered {exc.code}") from exc
    except (urllib.error.URLError, ConnectionError):
        return False


def three(values: list[float]) -> str:
    return f"{min(values):6.3f} {statistics.median(values):6.3f} {max(values):6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=1000, help="Posts in the blog (1000).")
    parser.add_argument("--runs", type=int, default=7, help="Measured runs per tree (7).")
    parser.add_argument(
        "--callgrind",
        type=int,
        default=0,
        metavar="N",
        help="Also count instructions to the 200 under callgrind, N runs per tree.",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="Another checkout measured the same way, interleaved (repeatable).",
    )
    args = parser.parse_args()
    trees = {"this": ROOT}
    for spec in args.tree:
        name, _, path = spec.partition("=")
        trees[name] = Path(path).resolve()
    for tree in trees.values():
        compileall.compile_dir(tree / "newsletter", quiet=1)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "blog"
        source.mkdir()
        generate(source, args.posts)
        blogs = {name: Path(tmp) / name for name in trees}
        for name, tree in trees.items():
            shutil.copytree(source, blogs[name], symlinks=True)
            start_once(blogs[name], tree)  # the post index made, as after `newsletter posts`
        print(f"{args.posts} posts, {args.runs} runs per tree; load {os.getloadavg()[0]:.1f}")
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for round_ in range(args.runs):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                got[name].append(start_once(blogs[name], trees[name]))
        print(f"{'tree':<10} {'wall s min median max':>22}   {'CPU s min median max':>22}")
        for name, runs in got.items():
            walls, cpus = [w for w, _c in runs], [c for _w, c in runs]
            print(f"{name:<10} {three(walls):>22}   {three(cpus):>22}")
        counted: dict[str, list[int]] = {name: [] for name in trees}
        for _ in range(args.callgrind):
            for name in trees:
                counted[name].append(instructions(blogs[name], trees[name], Path(tmp)))
        for name, counts in counted.items():
            if counts:
                shown = " ".join(f"{count / 1e6:,.0f}" for count in counts)
                print(f"{name:<10} instructions to the 200 (millions): {shown}")
    print(f"load at the end {os.getloadavg()[0]:.1f}  (goal: ≤ 1 s wall)")


if __name__ == "__main__":
    main()
