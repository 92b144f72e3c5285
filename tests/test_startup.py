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
    assert {"sqlalchemy", "yaml"} <= set(loaded_heavy(modules))


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
