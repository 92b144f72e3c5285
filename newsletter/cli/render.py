"""The `render` command: one post as an email, HTML, text or .eml."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter.cli import handle_errors, settings_of
from newsletter.posts import load_posts
from newsletter.render import render_email


@click.command("render")
@click.argument("post")
@click.option("--list", "list_name", help="Render for this list (default: the first list).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "text", "eml"]),
    default="html",
    show_default=True,
    help="HTML part, plain-text part, or the whole message.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output.",
)
@click.pass_context
@handle_errors
def render_cmd(
    ctx: click.Context, post: str, list_name: str | None, fmt: str, output: Path | None
) -> None:
    """Render POST (an id, slug, file name or path) as an email."""
    settings = settings_of(ctx)
    found = load_posts(settings).find(post)
    lst = settings.get_list(list_name) if list_name else next(iter(settings.lists.values()))
    rendered = render_email(found, settings, lst)
    data = rendered.html if fmt == "html" else rendered.text
    if output:
        output.write_text(data, encoding="utf-8")
    else:
        click.echo(data)


def register(group: click.Group) -> None:
    group.add_command(render_cmd)
