"""The user docs stay true to the code: README.md's command and configuration
tables against the CLI and the config loader, every TOML example in the docs
against the loader, docs/architecture.md's module table against newsletter/.

Cheap on purpose (no database, no posts): a drift fails here, naming what
to fix, instead of being found by a reader."""

from __future__ import annotations

import re
import shlex
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click
import pytest

from newsletter.cli import main
from newsletter.config import ListSettings, Settings, load_settings
from newsletter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))

# Keys whose default is a duration or prose in the README, not a TOML value.
DEFAULT_IN_WORDS = {
    "schedule.scan_interval",
    "schedule.wait_for_page_timeout",
    "schedule.wait_for_page_retry",
    "site.excerpt_separator",
}


def _toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in [ROOT / "README.md", *DOCS]:
        text = path.read_text(encoding="utf-8")
        for n, match in enumerate(re.finditer(r"```toml\n(.*?)```", text, re.S)):
            blocks.append((f"{path.name}#{n + 1}", match.group(1)))
    return blocks


@pytest.mark.parametrize(("where", "text"), _toml_blocks(), ids=lambda v: v.split("\n")[0])
def test_every_toml_example_in_the_docs_is_valid_config(
    tmp_path: Path, where: str, text: str
) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(text, encoding="utf-8")
    load_settings(config)  # a ConfigError names the key that drifted


def test_the_docs_have_toml_examples() -> None:
    assert len(_toml_blocks()) >= 5  # the extraction itself still finds them


# --------------------------------------------------------------------------- configuration


def _section_classes() -> dict[str, Any]:
    """Each [section] of newsletter.toml and its dataclass, as `Settings` holds them."""
    sections = {
        f.name: f.default_factory
        for f in fields(Settings)
        if f.default_factory is not MISSING and f.name != "lists"
    }
    return {**sections, "lists.NAME": ListSettings}


def _accepted(section: str, cls: Any, tmp_path: Path) -> dict[str, Any]:
    """The keys newsletter.toml may set in a section, with their defaults:
    every field the loader does not reject as an unknown key."""
    table = "lists.x" if section == "lists.NAME" else section
    keys = {}
    for f in fields(cls):
        key = f.name.rstrip("_")
        if key == "name" and section == "lists.NAME":
            continue
        config = tmp_path / "probe.toml"
        config.write_text(f'[{table}]\n{key} = "x"\n', encoding="utf-8")
        try:
            load_settings(config)
        except ConfigError as exc:
            if str(exc.args[0]).startswith("unknown key"):
                continue
        keys[key] = f.default
    return keys


def _readme_rows(section: str) -> dict[str, str]:
    """The README's row for `[section]`: each key named outside parentheses,
    with the text that follows it up to the next key."""
    row = re.search(rf"^\| `\[{re.escape(section)}\]` \| (.*)$", README, re.M)
    assert row, f"README.md has no row for [{section}]"
    body = row.group(1)
    depth, starts = 0, []
    for token in re.finditer(r"[()]|`([a-z_]+)`", body):
        if token.group(0) == "(":
            depth += 1
        elif token.group(0) == ")":
            depth -= 1
        elif depth == 0:
            starts.append((token.group(1), token.start()))
    ends = [start for _, start in starts[1:]] + [len(body)]
    return {key: body[start:end] for (key, start), end in zip(starts, ends, strict=True)}


def _as_toml(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        return f'"{value}"'
    if value == ():
        return "[]"
    return None  # None, or a default that needs words


@pytest.mark.parametrize("section", list(_section_classes()))
def test_the_readme_names_every_key_with_its_default(section: str, tmp_path: Path) -> None:
    accepted = _accepted(section, _section_classes()[section], tmp_path)
    documented = _readme_rows(section)
    assert sorted(set(documented) - set(accepted)) == [], "in README.md, unknown to the loader"
    assert sorted(set(accepted) - set(documented)) == [], "accepted, missing from README.md"
    wrong = {
        key: (expected, documented[key])
        for key, default in accepted.items()
        if default is not MISSING
        and f"{section}.{key}" not in DEFAULT_IN_WORDS
        and (expected := _as_toml(default)) is not None
        and f"`{expected}`" not in documented[key]
    }
    assert wrong == {}


# --------------------------------------------------------------------------- commands


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    ctx = click.Context(group)
    found = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            found.update(_commands(cmd, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = cmd
    return found


def _readme_usage(command: str) -> str:
    """The first cell of the README's row for a command: its usage line."""
    pattern = rf"^\| `{re.escape(command)}(?![a-z-])([^|]*(?:\\\|[^|]*)*)` \|"
    row = re.search(pattern, README, re.M)
    assert row, f"README.md's command table has no row for `{command}`"
    return row.group(1)


@pytest.mark.parametrize("command", sorted(_commands(main)))
def test_the_readme_command_table_shows_every_option(command: str) -> None:
    cmd = _commands(main)[command]
    usage = _readme_usage(command)
    named = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", usage))
    named |= {f"--{name[2:].split('/')[0]}" for name in named if "/" in name}
    options = [p for p in cmd.params if isinstance(p, click.Option)]
    known = {o for p in options for o in (*p.opts, *p.secondary_opts)}
    # --json and --help are said once above the table, for every command.
    missing = [
        p.opts[-1]
        for p in options
        if not set(p.opts) & (named | {"--json", "--help"}) and not p.hidden
    ]
    assert missing == [], f"`{command}` options missing from README.md's command table"
    assert sorted(named - known - {"--json", "--help"}) == []


# --------------------------------------------------------------------------- architecture


def _architecture_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z]+/)`.*$", text, re.M)}


def test_the_architecture_table_names_every_module() -> None:
    rows = _architecture_rows()
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in sorted((ROOT / "newsletter").rglob("*.py")):
        relative = path.relative_to(ROOT / "newsletter")
        if path.name == "__init__.py":
            continue
        if len(relative.parts) == 1:  # a top-level module: named anywhere in the table
            found = f"`{path.name}`" in text or f"`newsletter/{path.name}`" in text
        else:
            row = rows.get(f"{relative.parts[0]}/", "")
            found = f"`{path.stem}`" in row or f"`{relative.parts[0]}/{path.stem}`" in row
        if not found:
            missing.append(str(relative))
    assert missing == [], "modules missing from docs/architecture.md"


# --------------------------------------------------------------------------- --help


def test_a_group_help_names_every_subcommand() -> None:
    ctx = click.Context(main)
    group = main.get_command(ctx, "subscribers")
    assert isinstance(group, click.Group)
    summary = (group.help or "").split("\n\n")[0]
    missing = [name for name in group.list_commands(ctx) if name not in summary]
    assert missing == [], "`subscribers --help` does not name these"


@pytest.mark.parametrize("command", ["render", "send"])
def test_help_says_what_post_names_as_the_lookup_does(command: str) -> None:
    """A post reference is an id, else a path (newsletter/posts/lookup.py,
    docs/posts.md); a slug or a bare file name is no longer matched."""
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None and cmd.help is not None
    help_text = " ".join(cmd.help.split())
    assert "post id or a path" in help_text
    assert "slug" not in help_text


def test_serve_help_names_every_public_endpoint_kind() -> None:
    serve = main.get_command(click.Context(main), "serve")
    assert serve is not None
    summary = (serve.help or "").split("\n\n")[0]
    for word in ("signup", "unsubscribe", "preferences", "archive", "/healthz"):
        assert word in summary


# --------------------------------------------------------------------------- shell examples


def _shell_examples() -> list[tuple[str, str]]:
    """Every `newsletter …` line in a fenced block of README.md and docs/*.md
    (shell, a transcript's `$ `, a systemd `ExecStart=`), its comment and the
    `[…]` that mark an optional part removed."""
    found = []
    for path in [ROOT / "README.md", *DOCS]:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"```\w*\n(.*?)```", text, re.S):
            for line in block.group(1).splitlines():
                match = re.search(r"(?:^|\$ |/)newsletter (\S.*)", line)
                if match:
                    words = shlex.split(match.group(1), comments=True)
                    found.append((path.name, " ".join(w.strip("[]") for w in words)))
    return found


@pytest.mark.parametrize(("where", "line"), _shell_examples())
def test_every_shell_example_parses_as_a_command(where: str, line: str) -> None:
    """click parses the example as the real CLI would (commands, options,
    their values and arguments) without running it."""
    words = line.split()
    ctx = click.Context(main, info_name="newsletter")
    cmd: click.Command = main
    while isinstance(cmd, click.Group):  # the groups take no option in these examples
        name, words = words[0], words[1:]
        found = cmd.get_command(ctx, name)
        assert found is not None, f"{where}: unknown command {name!r}"
        ctx, cmd = click.Context(found, info_name=name, parent=ctx), found
    cmd.make_context(ctx.info_name, words, parent=ctx.parent)  # exits 2 on a usage error


def test_the_docs_have_shell_examples() -> None:
    assert len(_shell_examples()) >= 20
