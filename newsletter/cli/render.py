"""The `render` command: one post as an email, HTML, text or .eml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.common import handle_errors, settings_of

# The library is imported inside each function, so `--help` stays cheap.
if TYPE_CHECKING:
    from newsletter.config import ListSettings, Settings
    from newsletter.email.rendered import RenderedEmail
    from newsletter.posts.collection import Post


@click.command("render")
@click.argument("post")
@click.option("--list", "list_name", help="Render for this list (default: the first list).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "text", "eml"]),
    default="html",
    show_default=True,
    help="HTML part, plain-text part, or the whole message for a sample recipient.",
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
    """Render POST (a post id or a path) as an email.

    The output is exactly what subscribers get, with a made-up recipient
    (reader@example.com) in the per-recipient places.  Warnings (such as an
    email too large for Gmail) go to standard error.
    """
    from newsletter.errors import RenderError

    settings = settings_of(ctx)
    found = find_post(settings, post)
    lst = choose_list(settings, list_name)
    rendered = render_for_list(found, settings, lst)
    for warning in rendered.warnings:
        click.echo(f"warning: {found.path}: {warning}", err=True)
    data = render_output(rendered, settings, fmt)
    if output:
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise RenderError(f"cannot write: {exc.strerror}", path=output) from exc
        click.echo(f"wrote {output} ({len(data):,} bytes)", err=True)
    else:
        sys.stdout.flush()
        click.get_binary_stream("stdout").write(data)


def find_post(settings: Settings, ref: str) -> Post:
    """The post `ref` names; when it is one that failed to load, say why."""
    from newsletter.posts.collection import find_post_or_draft, load_posts

    # HTML for the one post found; a draft in _drafts/ renders too.
    return find_post_or_draft(load_posts(settings, bodies="lazy"), ref, settings)


def choose_list(settings: Settings, list_name: str | None) -> ListSettings:
    from newsletter.config import ListSettings

    if list_name:
        return settings.get_list(list_name)
    if settings.lists:
        return next(iter(settings.lists.values()))
    # No list configured yet: render for an unnamed one so a theme can be tried.
    return ListSettings(name="default", title=settings.site.title)


def render_for_list(post: Post, settings: Settings, lst: ListSettings) -> RenderedEmail:
    """A digest list shows the post as a one-post digest, as it would be sent."""
    from newsletter.email.rendercache import cached_render

    return cached_render([post], settings, lst, digest=lst.mode == "digest")


def render_output(rendered: RenderedEmail, settings: Settings, fmt: str) -> bytes:
    from newsletter.email.message import MessageTemplate, fill_placeholders, sample_recipient

    if fmt == "eml":
        return MessageTemplate.build(rendered, settings).sample()
    html, text = fill_placeholders(rendered, sample_recipient(settings))
    return (html if fmt == "html" else text).encode("utf-8")


def register(group: click.Group) -> None:
    group.add_command(render_cmd)
