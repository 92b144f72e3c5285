"""Commands about posts: `init`, `check`, `posts`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.common import (
    emit_json,
    handle_errors,
    json_option,
    problem_json,
    settings_of,
    stdout_is_tty,
)

# The library is imported inside each command, so `--help` stays cheap.
if TYPE_CHECKING:
    from newsletter.config import ListSettings, Settings
    from newsletter.delivery.mailings import PostMailing
    from newsletter.errors import Problem
    from newsletter.posts.collection import PostCollection


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on a terminal; a no-op callback anywhere else."""
    if total < 2 or not stdout_is_tty():
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _load(
    settings: Settings, label: str, *, bodies: bool = True, index: bool = True
) -> PostCollection:
    from newsletter.errors import Problem
    from newsletter.posts.collection import PostCollection, load_posts
    from newsletter.posts.files import site_post_files, where_posts_are

    # Counting the files is only worth it for a bar on a terminal.
    total = len(site_post_files(settings)) if stdout_is_tty() else 0
    with progress_bar(total, label) as advance:
        collection = load_posts(settings, progress=advance, bodies=bodies, index=index)
    if not collection.posts and not collection.problems:
        # "0 posts, 0 errors" and exit 0 hides a wrong folder: say where we looked.
        nothing = Problem(
            f"no posts found in {where_posts_are(settings)}",
            settings.config_path,
            None,
            "warning",
            "site.posts_dir",
        )
        collection = PostCollection((), (nothing,))
    return collection


# --------------------------------------------------------------------------- posts


@click.command("posts")
@json_option
@click.pass_context
@handle_errors
def posts_cmd(ctx: click.Context, as_json: bool) -> None:
    """List every post with its date, URL, authors, tags and status.

    STATUS, for a post with a mailing: `sent` (done), `sending` (under way,
    paused by a cap or waiting for its page), `postponed` or `withdrawn` (its
    post was re-dated or pulled mid-mailing), `held` (its page never went
    live) or `cancelled` (`newsletter cancel`); with several lists, the one
    that needs a look.  Without one: `due` (would be sent), `future` (not
    before its date), `unpublished` (published: false), `opted-out`
    (newsletter: false) or `before-since` (older than [schedule] since, or
    than the first run when since is unset).  Problems go to stderr.
    """
    from newsletter.config import utcnow
    from newsletter.daemon.planning import effective_since, unknown_list_problems
    from newsletter.delivery.mailings import mailed_pairs, post_mailings
    from newsletter.posts.collection import post_status
    from newsletter.store import open_store

    settings = settings_of(ctx)
    # A listing shows no HTML: skip Markdown, the bulk of the cost.
    collection = _load(settings, "Reading posts", bodies=False)
    now = utcnow()
    engine = open_store(settings)
    since = effective_since(engine, settings, now, record=False)
    sent_to: dict[str, list[str]] = {}
    for post_id, list_name in sorted(mailed_pairs(engine)):
        sent_to.setdefault(post_id, []).append(list_name)
    mailed = post_mailings(engine)
    rows = [
        {
            "path": str(p.path),
            "id": p.post_id,
            "title": p.title,
            "date": p.date.isoformat(),
            "url": p.url,
            "authors": [{"name": a.name, "url": a.url} for a in p.authors],
            "tags": list(p.tags),
            "categories": list(p.categories),
            "status": _mailing_word(mailed.get(p.post_id, []))
            or post_status(p, now, since, sent=p.post_id in sent_to),
            "sent_to": sent_to.get(p.post_id, []),
            "mailings": [
                {"mailing": m.mailing_id, "list": m.list_name, "state": m.state}
                for m in mailed.get(p.post_id, [])
            ],
        }
        for p in collection.posts
    ]
    problems = (*collection.problems, *unknown_list_problems(collection.posts, settings.lists))
    if as_json:
        emit_json(rows)
    else:
        for row in rows:
            click.echo(f"{row['date']}  {row['status']:<12}  {row['title']}  {row['url']}")
        click.echo(_summary(len(rows), problems))
    for problem in problems:
        click.echo(str(problem), err=True)


# A mailing's state as a post's status; the first of these found wins, so a
# post sent to one list and withdrawn from another says `withdrawn`.
_WORDS = {
    "planned": "sending",
    "sending": "sending",
    "paused": "sending",
    "waiting": "sending",
    "postponed": "postponed",
    "held": "held",
    "withdrawn": "withdrawn",
    "cancelled": "cancelled",
    "done": "sent",
}
_FIRST = ("sending", "postponed", "held", "withdrawn", "cancelled", "sent")


def _mailing_word(found: list[PostMailing]) -> str | None:
    """What a post's mailings say of it (`delivery.mailings.post_mailings`)."""
    words = {_WORDS.get(m.state, m.state) for m in found}
    return next((w for w in _FIRST if w in words), None) if words else None


def _summary(count: int, problems: tuple[Problem, ...], verb: str = "") -> str:
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    noun = "post" if count == 1 else "posts"
    return f"{count} {noun}{verb}, {errors} error(s), {warnings} warning(s)"


# --------------------------------------------------------------------------- check


@click.command("check")
@click.option(
    "--all", "everything", is_flag=True, help="Read and render every post again, changed or not."
)
@json_option
@click.pass_context
@handle_errors
def check_cmd(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Check the configuration, the templates and every post.

    Prints one line per problem (file, line when known, reason).  Exits 1
    when there is an error, 0 when there are only warnings.  Only posts (and
    renders) whose file, templates or settings changed since the last check
    are read again; --all reads and renders them all.
    """
    settings = settings_of(ctx)  # a broken configuration stops here, exit 1
    problems = list(check_settings(settings))
    from newsletter.config import DkimSettings
    from newsletter.daemon.planning import unknown_list_problems

    if settings.dkim != DkimSettings():  # (else dkimpy and cryptography stay unloaded)
        from newsletter.email import dkim

        records, dkim_problems = dkim.check(settings.dkim)  # loads and test-signs every key
        problems.extend(dkim_problems)
    else:
        records = []
    collection = _load(settings, "Checking posts", index=not everything)
    problems.extend(collection.problems)
    problems.extend(unknown_list_problems(collection.posts, settings.lists))
    with progress_bar(len(collection.posts), "Rendering") as advance:
        problems.extend(
            check_templates(settings, collection, progress=advance, cache=not everything)
        )
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        emit_json([problem_json(p) for p in problems])
    else:
        for problem in problems:
            click.echo(str(problem))
        for name, value in records:
            click.echo(f'DKIM: publish TXT at {name}: "{value}"')
        click.echo(_summary(len(collection.posts), tuple(problems), " checked"))
    if errors:
        sys.exit(1)


def _cron_problems(mailing_list: ListSettings, settings: Settings) -> Iterator[Problem]:
    """A digest's cron that cannot be read or never fires; a cron on a list
    that is no digest (it mails each post at once: the cron does nothing)."""
    from datetime import UTC, datetime

    from newsletter.daemon.planning import cron_trigger, cron_zone
    from newsletter.errors import NewsletterError, Problem

    cfg, key = settings.config_path, f"lists.{mailing_list.name}.cron"
    if mailing_list.mode != "digest":
        why = 'no effect: the list mails each post as it is due (mode = "digest" to use it)'
        yield Problem(why, cfg, None, "warning", key)
        return
    try:
        trigger = cron_trigger(mailing_list, cron_zone(mailing_list, settings))
    except NewsletterError as exc:
        yield Problem(exc.message, cfg, None, "error", exc.key)
        return
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:  # type: ignore[attr-defined]
        why = f"{mailing_list.cron!r} never comes (no such date): the digest would never go"
        yield Problem(why, cfg, None, "error", key)


def check_settings(settings: Settings) -> Iterator[Problem]:
    """What loading the configuration cannot see: missing folders and secrets."""
    from newsletter.config import DEFAULT_CONFIG
    from newsletter.errors import NewsletterError, Problem

    cfg = settings.config_path
    if cfg is None:
        yield Problem(f"no {DEFAULT_CONFIG} found; using defaults", severity="warning")
    if not settings.lists:
        yield Problem(
            "no [lists.NAME] declared: nothing can be sent", cfg, None, "warning", "lists"
        )
    for mailing_list in settings.lists.values():
        if mailing_list.cron:
            yield from _cron_problems(mailing_list, settings)
    yield from _senders(settings)
    templates = settings.email.templates_dir
    if templates is not None and not templates.is_dir():
        yield Problem("templates folder not found", templates, None, "error", "email.templates_dir")
    if settings.delivery.transport == "smtp":
        yield from _placeholders(settings)
    jekyll = settings.site.jekyll
    if jekyll is not None and "timezone" not in jekyll:
        yield Problem(
            f"_config.yml sets no timezone: Jekyll then uses the build machine's, "
            f"newsletter {settings.site.timezone}; dates and URLs may differ by a day",
            settings.site.jekyll_config, None, "warning", "timezone",
        )  # fmt: skip
    if settings.delivery.transport == "smtp":
        from newsletter.delivery.transports.smtp_common import check_policy

        # What every send would refuse (clear text, a login without TLS):
        # check passed, then send planned the mailing and stopped at it.
        for step in (settings.smtp.password, lambda: check_policy(settings.smtp)):
            try:
                step()
            except NewsletterError as exc:
                yield Problem(exc.message, cfg, None, "error", exc.key)
    bounces = settings.bounces
    if bounces.address and not bounces.reads_mailbox:
        yield Problem(
            "bounces go to [bounces] address but nothing reads them: "
            "set [bounces] maildir or imap_host",
            cfg, None, "warning", "bounces.address",
        )  # fmt: skip
    maildir = bounces.maildir
    if maildir is not None and not all((maildir / d).is_dir() for d in ("new", "cur")):
        # As `bounces` and `run` say it: check passed, then every pass failed.
        yield Problem("not a Maildir (no new/ and cur/)", maildir, None, "error", "bounces.maildir")
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


def _senders(settings: Settings) -> Iterator[Problem]:
    """From and Reply-To as every email's headers write them: else each render
    and send would fail on them, one after the other, while `check` passed."""
    from newsletter.email.headers import fold_address, parse_from
    from newsletter.errors import NewsletterError, Problem

    checks: list[Callable[[], object]] = [lambda: parse_from(settings.email.from_)]
    if settings.email.reply_to:
        reply_to = settings.email.reply_to
        checks.append(lambda: fold_address("Reply-To", reply_to, "email.reply_to"))
    for check in checks:
        try:
            check()
        except NewsletterError as exc:
            yield Problem(exc.message, settings.config_path, None, "error", exc.key)


def _placeholders(settings: Settings) -> Iterator[Problem]:
    """Starter values that would reach real readers once email goes out by SMTP."""
    from email.utils import parseaddr
    from urllib.parse import urlsplit

    from newsletter.errors import Problem

    cfg = settings.config_path
    if _is_placeholder_host(urlsplit(settings.web.public_url).hostname or ""):
        yield Problem(
            f"public_url is {settings.web.public_url}: readers cannot reach the unsubscribe "
            "links in sent email; set it to where `newsletter serve` is reachable",
            cfg, None, "warning", "web.public_url",
        )  # fmt: skip
    if _is_placeholder_host(urlsplit(settings.site.url).hostname or ""):
        where = "in _config.yml" if settings.site.jekyll is not None else "[site] url"
        yield Problem(
            f"the site's url is {settings.site.url} ({where}): every post link in sent "
            "email would point there",
            cfg, None, "warning", "site.url",
        )  # fmt: skip
    sender = parseaddr(settings.email.from_)[1]
    if _is_placeholder_host(sender.rpartition("@")[2]):
        yield Problem(
            f"from is {settings.email.from_}: a placeholder address; replies and "
            "bounces would be lost and receivers reject it",
            cfg, None, "warning", "email.from",
        )  # fmt: skip


_PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net", "localhost")


def _is_placeholder_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host in ("", "127.0.0.1", "::1") or host.endswith(".localhost"):
        return True
    return any(host == d or host.endswith("." + d) for d in _PLACEHOLDER_DOMAINS)


def check_templates(
    settings: Settings,
    collection: PostCollection,
    progress: Callable[[], None] = lambda: None,
    *,
    cache: bool = True,
) -> Iterator[Problem]:
    """Render every post for the first list; report what the renderer refuses.

    A render whose post, templates and settings are unchanged comes from the
    render cache (`cache=False` renders every post again)."""
    from newsletter.config import ListSettings
    from newsletter.email.rendercache import RenderCache
    from newsletter.errors import NewsletterError, Problem

    lists = list(settings.lists.values()) or [ListSettings(name="check", title="check")]
    renders = RenderCache(settings, enabled=cache)
    for post in collection.posts:
        progress()
        try:
            rendered = renders.render([post], lists[0])
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


JEKYLL_SITE = """\
[site]
# url, baseurl, title, timezone, permalink, excerpt_separator, author, lang,
# defaults and every _posts folder come from Jekyll's own configuration: set
# them there.
jekyll_config = "_config.yml"
"""


@click.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing newsletter.toml.")
@handle_errors
def init_cmd(force: bool) -> None:
    """Start a newsletter in the current folder.

    Writes a starter newsletter.toml ([schedule] since = now, so older posts
    are never sent) and creates subscribers/ if it is missing.  In a Jekyll
    site (a _config.yml here) the starter reads the site from _config.yml and
    says what it found; elsewhere it creates posts/ as well.
    """
    from newsletter.config import DEFAULT_CONFIG, utcnow
    from newsletter.errors import ConfigError

    config = Path(DEFAULT_CONFIG)
    if config.exists() and not force:
        click.echo(f"error: {config}: already exists (use --force to overwrite)", err=True)
        sys.exit(1)
    since = utcnow().isoformat(timespec="seconds")
    jekyll_site = Path("_config.yml").is_file()
    text = STARTER.format(since=since)
    if jekyll_site:
        text = JEKYLL_SITE + text[text.index("\n[email]") :]
        text = text.replace('"My blog <newsletter@example.com>"', _sender_of(Path("_config.yml")))
    folders = [Path("subscribers")] if jekyll_site else [Path("posts"), Path("subscribers")]
    for folder in folders:  # before writing anything: all or nothing
        if folder.exists() and not folder.is_dir():
            raise ConfigError("exists and is not a folder", path=folder)
    try:
        config.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror or exc}", path=config) from exc
    click.echo(f"wrote {config} (since = {since})")
    # The folders first: a site the summary cannot read still gets them.
    for folder in folders:
        if not folder.exists():
            try:
                folder.mkdir()
            except OSError as exc:
                raise ConfigError(f"cannot create: {exc.strerror or exc}", path=folder) from exc
            click.echo(f"created {folder}/")
    if jekyll_site:
        _describe_jekyll_site(config)


def _sender_of(jekyll_config: Path) -> str:
    """The starter's From as a TOML string: the site's `title:`, as a phrase
    (quoted when it is more than atoms), at the placeholder address."""
    import json

    import yaml

    from newsletter.email.headers import phrase

    try:
        title = (yaml.safe_load(jekyll_config.read_text(encoding="utf-8")) or {}).get("title")
    except (OSError, UnicodeError, yaml.YAMLError, AttributeError):
        title = None  # `check` reports a broken _config.yml; the starter keeps its placeholder
    name = " ".join(title.split()) if isinstance(title, str) and title.strip() else "My blog"
    return json.dumps(f"{phrase(name)} <newsletter@example.com>", ensure_ascii=False)


def _jekyll_url(jekyll_config: Path) -> str | None:
    """_config.yml's `url:`; None when it is missing, empty or unreadable."""
    import yaml

    try:
        url = (yaml.safe_load(jekyll_config.read_text(encoding="utf-8")) or {}).get("url")
    except (OSError, UnicodeError, yaml.YAMLError, AttributeError):
        return None  # load_settings says what is wrong with the file
    return url if isinstance(url, str) and url.strip() else None


def _describe_jekyll_site(config: Path) -> None:
    """What `init` found in the Jekyll site, so a wrong guess shows at once."""
    from newsletter.config import SiteSettings, load_settings
    from newsletter.posts.collection import load_posts
    from newsletter.posts.files import site_post_files

    url = _jekyll_url(Path("_config.yml"))
    # `jekyll new` writes `url: ""`: a url still to set, as a missing one is,
    # not a reason to stop here (`check` and `send` refuse it, saying where).
    settings = load_settings(config, None if url else {"site.url": SiteSettings.url})
    site = settings.site
    files = site_post_files(settings)
    folders = sorted({f.site_rel.rsplit("_posts/", 1)[0] + "_posts" for f in files})
    click.echo("found a Jekyll site (_config.yml):")
    click.echo(f"  posts: {len(files)} in {', '.join(folders) or 'no _posts folder'}")
    if url:
        click.echo(f"  url: {site.url}{site.baseurl}")
    else:
        click.echo("  url: not set (set url: in _config.yml, or [site] url in newsletter.toml)")
    zone = (
        site.timezone
        if "timezone" in (site.jekyll or {})
        else f"{site.timezone} (not set in _config.yml)"
    )
    click.echo(f"  timezone: {zone}")
    collection = load_posts(settings, bodies=False)
    authors = sorted({a.name for p in collection.posts for a in p.authors})
    click.echo(f"  authors: {', '.join(authors) if authors else 'none'}")


def register(group: click.Group) -> None:
    for command in (init_cmd, check_cmd, posts_cmd):
        group.add_command(command)
