"""Start-up: whole commands as fresh processes, against bare `python -c pass`.

    python bench/cold.py [--runs N] [--posts N] [--tree NAME=PATH ...]

For each command, started as a new process (interpreter start-up included):

* `newsletter --help` and `newsletter --version`;
* `newsletter run --once` with nothing to do (1,000 posts, all before
  `[schedule] since`), after one pass has set up the store and the index;
* `newsletter posts --json` on 1,000 posts, nothing changed since the last run;

prints min / median / max of wall seconds, CPU seconds (user + system, the
kernel's accounting of the finished child, from `os.wait4`) and peak RSS,
with the median CPU over the baseline's.  The baseline, `python -c pass`, runs
in the same rounds, interleaved (baseline, then each tree, per command, per
round), so a machine whose load drifts moves them together.

`--sqlalchemy` adds a second reference, `python -c "import sqlalchemy"`, in
the same rounds: the floor of every command that opens the store (SQLAlchemy
imports its whole Core, and asyncio, on any import of it).  That reference
also pays the interpreter's final collection of every object SQLAlchemy made
(0.05-0.1 s), which the `newsletter` entry point skips (`newsletter.__main__`):
a command can come out close to it, or under it.

`--tree NAME=PATH` adds another checkout of the project (say `main` in a git
worktree) run the same way, with `PYTHONPATH=PATH`, so before and after are
measured side by side; the default is this checkout alone.  Each tree gets its
own copy of the generated blog (its own state folder).

Goals (issue 13): `--help` and `--version` ≤ 0.15 s wall and ≤ 30 MiB;
`run --once` with nothing to do ≤ 0.4 s CPU; `posts` ≤ 0.5 s when nothing changed.

Each tree's package is byte-compiled first (`compileall`), as an installed
wheel is: with PYTHONDONTWRITEBYTECODE set (as on this machine) every run
would otherwise compile the whole package from source, ~0.1-0.3 s.  Peak
RSS is read by GNU time (`/usr/bin/time -f %M`) when it is there: the kernel's
figure for a child started straight from this process counts this
process's own memory too (vfork), so small children would all show ~17 MiB.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blog import generate

ROOT = Path(__file__).resolve().parent.parent

COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "--version": ["--version"],
    "run --once (nothing due)": ["run", "--once"],
    "posts --json (1,000 posts)": ["posts", "--json"],
}


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # MiB
    failures: int = 0


GNU_TIME = Path("/usr/bin/time")


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one child process, and its exit code."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as peak:
        timed = [str(GNU_TIME), "-f", "%M", "-o", peak.name, *argv] if GNU_TIME.exists() else argv
        start = time.perf_counter()
        proc = subprocess.Popen(
            timed, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _pid, status, usage = os.wait4(proc.pid, 0)  # CPU: the child and what it waited for
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        cpu = usage.ru_utime + usage.ru_stime
        text = peak.read().strip().splitlines()
        kib = int(text[-1]) if GNU_TIME.exists() and text else usage.ru_maxrss  # Linux: KiB
    return wall, cpu, kib / 1024, proc.returncode


def byte_compile(tree: Path) -> None:
    """As an installed wheel is (see the module's docstring)."""
    compileall.compile_dir(tree / "newsletter", quiet=1)


def tree_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["PYTHONPATH"] = str(tree)
    return env


def stats(values: list[float]) -> str:
    if not values:
        return "       -        -        -"
    return f"{min(values):8.3f} {statistics.median(values):8.3f} {max(values):8.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="Measured runs of each (default 7).")
    parser.add_argument("--posts", type=int, default=1000, help="Posts in the blog (default 1000).")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="Another checkout to measure beside this one (repeatable).",
    )
    parser.add_argument("--only", action="append", default=[], help="Only these commands.")
    parser.add_argument(
        "--sqlalchemy",
        action="store_true",
        help='Also run `python -c "import sqlalchemy"` (the store\'s floor) in each round.',
    )
    args = parser.parse_args()

    trees = {"this": ROOT}
    for item in args.tree:
        name, _, path = item.partition("=")
        trees[name] = Path(path).resolve()
    commands = {k: v for k, v in COMMANDS.items() if not args.only or k in args.only}
    for tree in trees.values():
        byte_compile(tree)
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "blog"
        source.mkdir()
        generate(source, args.posts)
        blogs = {}
        for name in trees:
            blogs[name] = Path(tmp) / f"blog-{name}"
            shutil.copytree(source, blogs[name], copy_function=shutil.copy2)
        bare = [sys.executable, "-c", "pass"]
        references = [("python -c pass", bare)]
        if args.sqlalchemy:
            references.append(("import sqlalchemy", [sys.executable, "-c", "import sqlalchemy"]))

        def argv(command: list[str]) -> list[str]:
            return [sys.executable, "-m", "newsletter", *command]

        samples: dict[tuple[str, str], Samples] = {}
        # Warm-up, not counted: caches of the OS, the store, the since stamp, the index.
        for _label, command in commands.items():
            run_once(bare, tree_env(ROOT), source)
            for name, tree in trees.items():
                run_once(argv(command), tree_env(tree), blogs[name])
        for _round in range(args.runs):
            for label, command in commands.items():
                for who, cmd, tree in [
                    *((who, cmd, ROOT) for who, cmd in references),
                    *((name, argv(command), tree) for name, tree in trees.items()),
                ]:
                    cwd = blogs.get(who, source)
                    wall, cpu, rss, code = run_once(cmd, tree_env(tree), cwd)
                    s = samples.setdefault((label, who), Samples())
                    if code != 0:
                        s.failures += 1
                    s.wall.append(wall)
                    s.cpu.append(cpu)
                    s.rss.append(rss)

    load = os.getloadavg()
    print(
        f"{args.runs} runs each, interleaved; {args.posts} posts; Python "
        f"{sys.version.split()[0]}; {os.cpu_count()} cores; load (1 min) at start "
        f"{load_start[0]:.1f}, at end {load[0]:.1f}"
    )
    print(
        f"{'command':<28} {'who':<17} {'wall s  min   median      max':>26}  "
        f"{'CPU s  min   median      max':>26}  {'peak MiB min median max':>26}  CPU/bare"
    )
    for label in commands:
        base = statistics.median(samples[(label, "python -c pass")].cpu)
        for who in [*(who for who, _cmd in references), *trees]:
            s = samples[(label, who)]
            ratio = statistics.median(s.cpu) / base if base else float("nan")
            failed = f"  ({s.failures} failed)" if s.failures else ""
            print(
                f"{label:<28} {who:<17} {stats(s.wall)}  {stats(s.cpu)}  {stats(s.rss)}  "
                f"{ratio:6.1f}×{failed}"
            )


if __name__ == "__main__":
    main()
