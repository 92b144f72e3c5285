"""Commands about posts: init, check, posts, render."""

from __future__ import annotations

import click

from newsletter.cli import emit_json, handle_errors, json_option, settings_of
from newsletter.posts import load_posts


@click.command("posts")
@json_option
@click.pass_context
@handle_errors
def posts_cmd(ctx: click.Context, as_json: bool) -> None:
    """List every post with its date, URL, authors, tags and status."""
    settings = settings_of(ctx)
    collection = load_posts(settings)
    rows = [
        {
            "path": str(p.path),
            "id": p.post_id,
            "title": p.title,
            "date": p.date.isoformat(),
            "url": p.url,
            "authors": [a.name for a in p.authors],
            "tags": list(p.tags),
        }
        for p in collection.posts
    ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['date']}  {row['title']}  {row['url']}")
    for problem in collection.problems:
        click.echo(str(problem), err=True)


def register(group: click.Group) -> None:
    for command in (posts_cmd,):
        group.add_command(command)
