"""Commands about posts: `init`, `check`, `posts`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from newsletter.cli.common import emit_json, handle_errors, json_option, settings_of
from newsletter.config import DEFAULT_CONFIG, ListSettings, Settings, utcnow
from newsletter.daemon.planning import cron_trigger, effective_since
from newsletter.delivery.mailings import mailed_pairs
from newsletter.email import dkim, render
from newsletter.errors import NewsletterError, Problem
from newsletter.posts.collection import PostCollection, load_posts, post_files, post_status
from newsletter.store import open_store


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on a terminal; a no-op callback anywhere else."""
    if total < 2 or not sys.stdout.isatty():
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _load(settings: Settings, label: str, *, bodies: bool = True) -> PostCollection:
    total = len(post_files(settings.site.posts_dir))
    with progress_bar(total, label) as advance:
        return load_posts(settings, progress=advance, bodies=bodies)


# --------------------------------------------------------------------------- posts


@click.command("posts")
@json_option
@click.pass_context
@handle_errors
def posts_cmd(ctx: click.Context, as_json: bool) -> None:
    """List every post with its date, URL, authors, tags and status.

    STATUS is `sent` (a mailing exists for it), `due` (would be sent),
    `future` (not before its date), `unpublished` (published: false),
    `opted-out` (newsletter: false) or `before-since` (older than [schedule]
    since, or than the first run when since is unset).  Problems go to stderr.
    """
    settings = settings_of(ctx)
    # A listing shows no HTML: skip Markdown, the bulk of the cost.
    collection = _load(settings, "Reading posts", bodies=False)
    now = utcnow()
    engine = open_store(settings)
    since = effective_since(engine, settings, now, record=False)
    sent_to: dict[str, list[str]] = {}
    for post_id, list_name in sorted(mailed_pairs(engine)):
        sent_to.setdefault(post_id, []).append(list_name)
    rows = [
        {
            "path": str(p.path),
            "id": p.post_id,
            "title": p.title,
            "date": p.date.isoformat(),
            "url": p.url,
            "authors": [{"name": a.name, "url": a.url} for a in p.authors],
            "tags": list(p.tags),
            "status": post_status(p, now, since, sent=p.post_id in sent_to),
            "sent_to": sent_to.get(p.post_id, []),
        }
        for p in collection.posts
    ]
    if as_json:
        emit_json(rows)
    else:
        for row in rows:
            click.echo(f"{row['date']}  {row['status']:<12}  {row['title']}  {row['url']}")
        click.echo(_summary(len(rows), collection.problems))
    for problem in collection.problems:
        click.echo(str(problem), err=True)


def _summary(count: int, problems: tuple[Problem, ...], verb: str = "") -> str:
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    noun = "post" if count == 1 else "posts"
    return f"{count} {noun}{verb}, {errors} error(s), {warnings} warning(s)"


# --------------------------------------------------------------------------- check


@click.command("check")
@json_option
@click.pass_context
@handle_errors
def check_cmd(ctx: click.Context, as_json: bool) -> None:
    """Check the configuration, the templates and every post.

    Prints one line per problem (file, line when known, reason).  Exits 1
    when there is an error, 0 when there are only warnings.
    """
    settings = settings_of(ctx)  # a broken configuration stops here, exit 1
    problems = list(check_settings(settings))
    records, dkim_problems = dkim.check(settings.dkim)  # loads and test-signs every key
    problems.extend(dkim_problems)
    collection = _load(settings, "Checking posts")
    problems.extend(collection.problems)
    with progress_bar(len(collection.posts), "Rendering") as advance:
        problems.extend(check_templates(settings, collection, progress=advance))
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        emit_json([_problem_json(p) for p in problems])
    else:
        for problem in problems:
            click.echo(str(problem))
        for name, value in records:
            click.echo(f'DKIM: publish TXT at {name}: "{value}"')
        click.echo(_summary(len(collection.posts), tuple(problems), " checked"))
    if errors:
        sys.exit(1)


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "severity": problem.severity,
        "path": str(problem.path) if problem.path else None,
        "line": problem.line,
        "key": problem.key,
        "message": problem.message,
    }


def check_settings(settings: Settings) -> Iterator[Problem]:
    """What loading the configuration cannot see: missing folders and secrets."""
    cfg = settings.config_path
    if cfg is None:
        yield Problem(f"no {DEFAULT_CONFIG} found; using defaults", severity="warning")
    if not settings.lists:
        yield Problem(
            "no [lists.NAME] declared: nothing can be sent", cfg, None, "warning", "lists"
        )
    for mailing_list in settings.lists.values():
        if mailing_list.cron:
            try:
                cron_trigger(mailing_list, settings.site.tz)
            except NewsletterError as exc:
                yield Problem(exc.message, cfg, None, "error", exc.key)
    templates = settings.email.templates_dir
    if templates is not None and not templates.is_dir():
        yield Problem("templates folder not found", templates, None, "error", "email.templates_dir")
    if settings.delivery.transport == "smtp" and _is_local_url(settings.web.public_url):
        yield Problem(
            f"public_url is {settings.web.public_url}: readers cannot reach the unsubscribe "
            "links in sent email; set it to where `newsletter serve` is reachable",
            cfg,
            None,
            "warning",
            "web.public_url",
        )
    if settings.delivery.transport == "smtp":
        try:
            settings.smtp.password()
        except NewsletterError as exc:
            yield Problem(exc.message, cfg, None, "error", exc.key)
    bounces = settings.bounces
    if bounces.address and not bounces.reads_mailbox:
        yield Problem(
            "bounces go to [bounces] address but nothing reads them: "
            "set [bounces] maildir or imap_host",
            cfg, None, "warning", "bounces.address",
        )  # fmt: skip
    if bounces.imap_host:
        try:
            bounces.password()
        except NewsletterError as exc:
            yield Problem(exc.message, cfg, None, "error", exc.key)
    if settings.delivery.transport == "smtp" and not settings.email.postal_address:
        yield Problem(
            "no postal address: CAN-SPAM requires one in every commercial email; "
            "set [email] postal_address (it is printed in the footer)",
            cfg,
            None,
            "warning",
            "email.postal_address",
        )


def _is_local_url(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")


def check_templates(
    settings: Settings, collection: PostCollection, progress: Callable[[], None] = lambda: None
) -> Iterator[Problem]:
    """Render every post for the first list; report what the renderer refuses."""
    lists = list(settings.lists.values()) or [ListSettings(name="check", title="check")]
    for post in collection.posts:
        progress()
        try:
            rendered = render.render_email(post, settings, lists[0])
        except NewsletterError as exc:
            yield Problem(exc.message, exc.path or post.path, exc.line, "error", exc.key)
            continue
        except Exception as exc:  # never a traceback from `check`
            yield Problem(f"cannot render: {type(exc).__name__}: {exc}", post.path)
            continue
        for warning in rendered.warnings:
            yield Problem(warning, post.path, None, "warning")


# --------------------------------------------------------------------------- init

STARTER = """\
# newsletter configuration; see `newsletter --help` and the README.
# Secrets never go here: name the environment variable that holds them.

[site]
title = "My blog"
url = "https://blog.example.com"
posts_dir = "posts"
# jekyll_config = "../my-site/_config.yml"   # read url, permalink, timezone… from Jekyll
timezone = "UTC"

[email]
from = "My blog <newsletter@example.com>"
subject = "{{{{ post.title }}}}"
content = "excerpt"

[delivery]
transport = "maildir"   # or "smtp"
outbox_dir = ".newsletter/outbox"

[smtp]
host = "smtp.example.com"
security = "starttls"
password_env = "NEWSLETTER_SMTP_PASSWORD"

[unsubscribe]
secret_env = "NEWSLETTER_SECRET"

[web]
# Where `newsletter serve` is reachable (behind your TLS proxy): emails link to
# <public_url>/unsubscribe/<token> and <public_url>/archive/<post>.
public_url = "https://news.example.com"

[schedule]
scan_interval = "60s"
# Posts dated before this moment are never sent automatically.
since = "{since}"
# With an https url the daemon mails a post only once its page answers 200
# (a Jekyll build can lag the post's date); wait_for_page = false turns it off.

[lists.main]
title = "Every new post"
mode = "each"
# public = true   # offer this list on the signup form (`newsletter snippet --list main`)
"""


@click.command("init")
@click.option("--force", is_flag=True, help=f"Overwrite an existing {DEFAULT_CONFIG}.")
@handle_errors
def init_cmd(force: bool) -> None:
    """Start a newsletter in the current folder.

    Writes a starter newsletter.toml ([schedule] since = now, so older posts
    are never sent) and creates posts/ and subscribers/ if they are missing.
    """
    config = Path(DEFAULT_CONFIG)
    if config.exists() and not force:
        click.echo(f"error: {config}: already exists (use --force to overwrite)", err=True)
        sys.exit(1)
    since = utcnow().isoformat(timespec="seconds")
    config.write_text(STARTER.format(since=since), encoding="utf-8")
    click.echo(f"wrote {config} (since = {since})")
    for folder in (Path("posts"), Path("subscribers")):
        if not folder.exists():
            folder.mkdir()
            click.echo(f"created {folder}/")


def register(group: click.Group) -> None:
    for command in (init_cmd, check_cmd, posts_cmd):
        group.add_command(command)
