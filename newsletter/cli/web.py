"""Commands: `preview` (local, live-reloading), `serve` (public endpoints), `snippet`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, cast

import click

from newsletter.cli.common import AppContext, handle_errors, require_config_file, settings_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine

    from newsletter.config import Settings

PREVIEW_HOST = "127.0.0.1"  # never anything else: see newsletter.web.hostcheck


@click.command("preview")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8025,
    show_default=True,
    help="Port on 127.0.0.1.",
)
@click.option(
    "--open/--no-open",
    "open_browser",
    default=True,
    show_default=True,
    help="Open the preview in a web browser.",
)
@click.pass_context
@handle_errors
def preview_cmd(ctx: click.Context, port: int, open_browser: bool) -> None:
    """Preview every post as an email in the browser, with live reload.

    Serves on 127.0.0.1 only. Saving a post, a template or newsletter.toml
    updates the open page. Shows the text part, headers, raw .eml, a lint
    panel, the maildir outbox, and sends tests like `send --test`.
    """
    from newsletter.config import load_settings
    from newsletter.web.preview import create_preview_app
    from newsletter.web.server import run_app

    settings_of(ctx)  # a broken configuration stops here, with exit 1
    config = cast(AppContext, ctx.find_root().obj).config

    def load() -> Settings:
        # Called again whenever newsletter.toml changes (live reload).
        return load_settings(config)

    def announce(url: str) -> None:
        click.echo(f"Preview on {url} (Ctrl-C to stop)")
        if open_browser:
            open_in_browser(url)

    app = create_preview_app(load)
    # Ctrl-C ends the open pages' live-reload streams first (see run_app).
    close_streams = app.state.preview.broadcaster.close
    run_app(
        app,
        PREVIEW_HOST,
        port,
        access_log=False,
        announce=announce,
        before_shutdown=[close_streams],
    )


def open_in_browser(url: str) -> None:
    """Open `url` now, from a thread (a text-mode browser would hold the
    command).  The socket already listens when the URL is announced, so the
    browser's first request waits in its queue until the app answers it: no
    need to wait for the server to start first."""
    import webbrowser  # only with --open

    threading.Thread(target=webbrowser.open, args=(url,), name="browser", daemon=True).start()


@click.command("serve")
@click.option("--host", default=None, help="Interface to listen on (default: [web] host).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default: [web] port)."
)
@click.pass_context
@handle_errors
def serve_cmd(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the public endpoints: signup, one-click unsubscribe, preferences, archive, /healthz.

    Put it behind a TLS reverse proxy at [web] public_url; emails link to
    <public_url>/unsubscribe/<token> and <public_url>/archive/<post>.
    """
    from newsletter.web.public import create_public_app
    from newsletter.web.server import run_app

    settings = settings_of(ctx)
    require_config_file(settings)
    host = host or settings.web.host
    port = settings.web.port if port is None else port
    app = create_public_app(settings)

    def announce(url: str) -> None:
        click.echo(f"Serving {settings.web.public_url} on {url} (Ctrl-C to stop)")

    run_app(app, host, port, announce=announce, stop_when=outgrown(app.state.public.engine))


def outgrown(engine: Engine) -> Callable[[], str | None]:
    """Why `serve` must stop: a newer newsletter upgraded the database under
    it (schema 11 stores no uid for an import's new subscribers: an older
    server could not find them from their links).  Exit 1; restarted, it is
    refused until this machine's newsletter is upgraded too."""
    from newsletter.store import newer_schema, outgrown_message

    def reason() -> str | None:
        version = newer_schema(engine)
        return None if version is None else outgrown_message(version)

    return reason


@click.command("snippet")
@click.option(
    "--list",
    "list_names",
    multiple=True,
    required=True,
    help="A public list the form offers (repeat for a choice of lists).",
)
@click.pass_context
@handle_errors
def snippet_cmd(ctx: click.Context, list_names: tuple[str, ...]) -> None:
    """Print an HTML signup form to paste into a Jekyll _includes/ file.

    No JavaScript; every field labelled. It posts to `[web] public_url`/subscribe,
    which `newsletter serve` answers; the lists must say `public = true`.
    """
    from newsletter.web.snippet import signup_snippet

    click.echo(signup_snippet(settings_of(ctx), list_names))


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(preview_cmd)
    group.add_command(serve_cmd)
    group.add_command(snippet_cmd)
