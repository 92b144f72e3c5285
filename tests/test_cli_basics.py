from __future__ import annotations

import importlib
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from newsletter.cli import COMMAND_MODULES, main


def _all_commands(group, prefix=()):  # type: ignore[no-untyped-def]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_command_has_help_text() -> None:
    missing = [" ".join(path) for path, cmd in _all_commands(main) if not (cmd.help or "").strip()]
    assert missing == []


def test_the_lazy_group_knows_every_command_and_its_module() -> None:
    """`COMMAND_MODULES` (what `newsletter` lists and loads on use) is exactly
    what the command modules register: a new command cannot be left out."""
    registered: dict[str, str] = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        group = click.Group()
        importlib.import_module(f"newsletter.cli.{module}").register(group)
        registered.update({name: module for name in group.commands})
    assert registered == COMMAND_MODULES
    assert {path for path, _cmd in _all_commands(main) if len(path) == 1} == {
        (name,) for name in COMMAND_MODULES
    }
    assert main.get_command(click.Context(main), "no-such-command") is None


def test_posts_json_lists_sample_posts(sample_site: Path) -> None:
    result = CliRunner().invoke(main, ["posts", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    titles = {row["title"] for row in rows}
    assert "The Octopus and Its Distributed Mind" in titles
    assert all("+03:00" in row["date"] for row in rows)


def test_bad_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[site]\ntimezone = 'Mars/Olympus'\n")
    result = CliRunner().invoke(main, ["--config", str(cfg), "posts"])
    assert result.exit_code == 1
    assert "site.timezone" in result.output and "Mars/Olympus" in result.output
    assert "Traceback" not in result.output


def test_usage_error_exits_2(sample_site: Path) -> None:
    result = CliRunner().invoke(main, ["render"])
    assert result.exit_code == 2
    assert result.output.endswith("Error: Missing argument 'POST'.\n")


def test_a_database_failure_no_step_translated_is_one_line_a_bug_keeps_its_traceback() -> None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from newsletter.cli.common import handle_errors

    refused = ConnectionRefusedError("connection refused")

    @click.command()
    @handle_errors
    def down() -> None:
        raise OperationalError("SELECT secret FROM t WHERE x = %s", ("a@b.c",), refused)

    result = CliRunner().invoke(down, [])
    assert (result.exit_code, result.stderr) == (1, "error: database: connection refused\n")

    @click.command()
    @handle_errors
    def bug() -> None:
        raise ProgrammingError("SELECT nonsense", (), Exception("syntax error"))

    result = CliRunner().invoke(bug, [])
    assert isinstance(result.exception, ProgrammingError)
    with pytest.raises(ProgrammingError):
        CliRunner().invoke(bug, [], catch_exceptions=False)
