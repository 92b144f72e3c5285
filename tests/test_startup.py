"""Start-up stays cheap: `newsletter --help` and `--version` load click, not the library.

Each case runs in a fresh interpreter, since this test process has long
imported everything.  Timing is measured in bench/cold.py, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What costs tens of milliseconds or megabytes to import, and no --help needs.
HEAVY = (
    "sqlalchemy",
    "premailer",
    "lxml",
    "pygments",
    "starlette",
    "uvicorn",
    "apscheduler",
    "markdown",
    "liquid",
    "jinja2",
    "yaml",
    "rich",
    "cssutils",
    "dkim",
    "watchfiles",
    "uvloop",
    "email_validator",
)

PROBE = """
import json, sys
from newsletter.cli import main
try:
    main(sys.argv[1:], prog_name="newsletter")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def run_cli(*args: str) -> tuple[int, list[str], str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NEWSLETTER_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    *shown, last = done.stdout.rstrip("\n").split("\n")
    result = json.loads(last)
    return result["code"], result["modules"], "\n".join(shown)


def loaded_heavy(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("send", "--help"), ("run", "--help"), ("posts", "--help")],
)
def test_help_and_version_import_none_of_the_library(args: tuple[str, ...]) -> None:
    code, modules, shown = run_cli(*args)
    assert code == 0
    assert loaded_heavy(modules) == []
    # Not even our own stages or settings: the CLI and what only needs the stdlib.
    stages = ("posts", "email", "audience", "delivery", "daemon", "web", "store", "config")
    ours = {m.split(".")[1] for m in modules if m.startswith("newsletter.")}
    assert not ours & set(stages), ours
    assert shown  # it did print the help or the version


def test_help_still_lists_every_command() -> None:
    _code, _modules, shown = run_cli("--help")
    for command in ("init", "check", "posts", "render", "send", "run", "status", "lists"):
        assert f"  {command} " in shown
    for command in ("subscribers", "preview", "serve"):
        assert f"  {command}" in shown


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check above would notice: a command that runs does load the library."""
    config = tmp_path / "newsletter.toml"
    config.write_text('[lists.main]\ntitle = "Main"\n', encoding="utf-8")
    code, modules, shown = run_cli("--config", str(config), "lists", "--json")
    assert code in (0, None) and '"name": "main"' in shown
    assert "sqlalchemy" in loaded_heavy(modules)


def quiet_site(root: Path) -> Path:
    """Three posts, all before `since` (nothing to send), dated a year back as
    a blog's files are; a configuration with a list and its own database."""
    (root / "posts").mkdir()
    for day in (1, 2, 3):
        post = root / "posts" / f"2024-01-0{day}-post-{day}.md"
        post.write_text(
            f'---\ntitle: "Post {day}"\ntags: [a]\n---\n\nOn {{{{ site.title }}}}, *day* {day}.\n',
            encoding="utf-8",
        )
        os.utime(post, (1_700_000_000 + day, 1_700_000_000 + day))
    config = root / "newsletter.toml"
    config.write_text(
        '[site]\ntitle = "Quiet"\nposts_dir = "posts"\n'
        f'[database]\nurl = "sqlite:///{root / "news.db"}"\n'
        '[schedule]\nsince = "2030-01-01T00:00:00+00:00"\n'
        '[lists.main]\ntitle = "Main"\n',
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize("command", [("run", "--once"), ("posts", "--json")])
def test_nothing_changed_means_no_post_is_read_and_no_parser_loaded(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Issue 13: a second `run --once` (or `posts`) with no post changed takes
    the last load whole from the state folder: neither YAML nor Liquid nor
    Markdown is imported, nor email-validator, nor the reading modules."""
    config = quiet_site(tmp_path)
    code, first, _shown = run_cli("--config", str(config), *command)
    assert code in (0, None)
    assert {"yaml", "liquid"} <= set(loaded_heavy(first))  # the first run reads the posts
    assert not {"markdown", "lxml"} & set(loaded_heavy(first))  # a listing: no HTML built
    code, again, shown = run_cli("--config", str(config), *command)
    assert code in (0, None)
    assert ("Post 3" if command[0] == "posts" else "3 posts before since") in shown
    assert loaded_heavy(again) == ["sqlalchemy"]
    assert "sqlalchemy.dialects.postgresql" not in again  # a SQLite store needs none of it
    # Core alone: the ORM and the extensions (asyncio's) cost ~0.05 s more each.
    assert not [m for m in again if m.startswith(("sqlalchemy.orm", "sqlalchemy.ext"))]
    reading = {"newsletter.posts.source", "newsletter.posts.building", "newsletter.posts.site"}
    assert not reading & set(again)
    # A pass that sends nothing ensures the lists, and needs nothing else of the audience.
    assert "newsletter.audience.members" not in again
    # ctypes (malloc_trim after a big write, store.bulk) only when one was made.
    assert "ctypes" not in again
    # An edited post is read again (and only then are the parsers loaded).
    post = tmp_path / "posts" / "2024-01-02-post-2.md"
    post.write_text(post.read_text(encoding="utf-8").replace("Post 2", "Post two"), "utf-8")
    os.utime(post, (1_700_000_100, 1_700_000_100))
    code, edited, shown = run_cli("--config", str(config), "posts", "--json")
    assert code in (0, None) and "Post two" in shown
    assert "yaml" in loaded_heavy(edited)


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    _code, _modules, shown = run_cli("--version")
    assert shown == f"newsletter, version {version('newsletter')}"


def test_lazy_choices_still_list_and_check_their_values() -> None:
    """`--status` and `--format` take their values from the library, loaded on use."""
    from click.testing import CliRunner

    from newsletter.audience.members import STATUSES
    from newsletter.audience.serviceformats import FORMATS
    from newsletter.cli import main

    shown = CliRunner().invoke(main, ["subscribers", "list", "--help"]).output
    assert "[" + "|".join(STATUSES) + "]" in shown.replace("\n", "").replace(" ", "")
    bad = CliRunner().invoke(main, ["subscribers", "list", "--list", "x", "--status", "happy"])
    assert bad.exit_code == 2 and "'happy' is not one of" in bad.output
    shown = CliRunner().invoke(main, ["subscribers", "import", "--help"]).output
    assert "auto|" + "|".join(FORMATS[:2]) in shown.replace("\n", "").replace(" ", "")


def test_a_second_send_of_a_post_loads_no_renderer(tmp_path: Path) -> None:
    """Issue 13: `send POST --resend` with the post's render kept in the state
    folder (the first send made it) builds its message from that render:
    neither Jinja2 nor premailer, lxml or Markdown is imported, nor the
    module that renders (`email.render`), nor the post readers."""
    config = quiet_site(tmp_path)
    outbox = tmp_path / "outbox"
    with config.open("a", encoding="utf-8") as fh:
        fh.write(f'[delivery]\ntransport = "maildir"\noutbox_dir = "{outbox}"\n')
    code, _modules, _shown = run_cli(
        "--config", str(config), "subscribers", "add", "reader@example.com", "--list", "main"
    )
    assert code in (0, None)
    send = ("--config", str(config), "send", "post-2", "--list", "main", "--resend")
    code, first, shown = run_cli(*send)
    assert code in (0, None) and "sent 1," in shown
    assert "jinja2" in loaded_heavy(first)  # the first send rendered the post
    code, again, shown = run_cli(*send)
    assert code in (0, None) and "sent 1," in shown
    assert loaded_heavy(again) == ["sqlalchemy"]
    assert "newsletter.email.render" not in again
    assert "ctypes" not in again  # a plan of one row has no big cache to give back
    reading = {"newsletter.posts.source", "newsletter.posts.building", "newsletter.posts.site"}
    assert not reading & set(again)
    assert len([p for p in outbox.rglob("*") if p.is_file()]) == 2  # both were delivered
    # A maildir pass takes the threaded strategy: nothing of SMTP's (the event
    # loop's streams, the rounds, smtplib) nor the worker processes is loaded.
    smtp = {
        "newsletter.delivery.streams",
        "newsletter.delivery.rounds",
        "newsletter.delivery.processes",
        "newsletter.delivery.transports.smtp",
        "smtplib",
        "multiprocessing",
    }
    assert not smtp & set(again)


def test_a_second_render_of_a_post_loads_neither_renderer_nor_store(tmp_path: Path) -> None:
    """Issue 13: `render POST` with its render kept in the state folder needs no
    database (a sample recipient, no real token): SQLAlchemy stays unloaded,
    as do the renderer and the post readers."""
    config = quiet_site(tmp_path)
    render = ("--config", str(config), "render", "post-2", "--format", "text")
    code, first, shown = run_cli(*render)
    assert code in (0, None) and "day* 2" not in shown and "day 2" in shown
    assert "jinja2" in loaded_heavy(first)  # the first render did render
    code, again, shown_again = run_cli(*render)
    assert code in (0, None) and shown_again == shown
    assert loaded_heavy(again) == []
    assert not {"newsletter.store", "newsletter.email.render"} & set(again)
    assert not (tmp_path / "news.db").exists()  # nor was a database made


# --------------------------------------------------------------------------- the way out

EXIT_PROBE = """
import atexit, gc, sys
# Registered first, so it runs last: after the entry point and logging's handlers.
atexit.register(lambda: print("frozen", gc.get_freeze_count(), file=sys.stderr))
from newsletter.__main__ import main
sys.argv = ["newsletter", *sys.argv[1:]]
main()
"""


def run_entry_point(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NEWSLETTER_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_entry_point_exits_without_the_last_collection_and_closes_the_store(
    tmp_path: Path,
) -> None:
    """Issue 13: the console script leaves its objects to the operating system
    (frozen, so the interpreter's final sweep skips them: a fifth of an idle
    `run --once`), and closes the database itself first: SQLite removes its
    -wal and -shm files only when the last connection closes, as it did when
    the collector closed them."""
    config = quiet_site(tmp_path)
    for _ in range(2):  # the first pass reads the posts, the second is the idle one
        done = run_entry_point("--config", str(config), "run", "--once")
        assert done.returncode == 0, done.stderr
        assert "3 posts before since" in done.stdout
        frozen = [line for line in done.stderr.splitlines() if line.startswith("frozen ")]
        assert frozen and int(frozen[-1].split()[1]) > 10_000, done.stderr
        assert sorted(p.name for p in tmp_path.glob("news.db*")) == ["news.db"]


def test_the_entry_point_still_exits_with_the_commands_status(tmp_path: Path) -> None:
    """Usage errors (2), problems (1) and --help (0) keep their exit status."""
    assert run_entry_point("--help").returncode == 0
    assert run_entry_point("no-such-command").returncode == 2
    missing = run_entry_point("--config", str(tmp_path / "missing.toml"), "lists")
    assert missing.returncode == 1 and "error:" in missing.stderr


def test_a_store_that_fails_to_close_changes_no_exit_status(tmp_path: Path) -> None:
    """Closing the store on the way out never turns the command's outcome
    into a traceback: the system closes what could not be closed."""
    config = quiet_site(tmp_path)
    failing = EXIT_PROBE.replace(
        "from newsletter.__main__ import main",
        "import newsletter.store as store\n"
        "def broken():\n    raise OSError('injected: cannot close')\n"
        "store.close_all = broken\n"
        "from newsletter.__main__ import main",
    )
    assert "store.close_all = broken" in failing
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    unknown_list = ("subscribers", "list", "--list", "nosuch")  # the store opened, then 1
    for command, status in ((("lists",), 0), (unknown_list, 1)):
        done = subprocess.run(
            [sys.executable, "-c", failing, "--config", str(config), *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == status, done.stderr
        assert "injected" not in done.stderr and "Traceback" not in done.stderr
        assert ("unknown list 'nosuch'" in done.stderr) == (status == 1)
        assert "frozen" in done.stderr  # it still left the objects to the system
