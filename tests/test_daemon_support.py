"""Helpers shared by the daemon's tests (planning, scheduler, daemon): a small
site in a temporary folder, posts written on the fly, subscribers added.

No tests live here; pytest collects the module and finds none.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from newsletter.config import Settings, load_settings
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store import open_store

FIXTURES = Path(__file__).parent / "fixtures" / "daemon"
MEMBERS = ("ada@example.com", "grace@example.com", "linus@example.com")


@dataclass
class Site:
    root: Path
    config: Path
    posts: Path

    def settings(self, overrides: Mapping[str, Any] | None = None) -> Settings:
        return load_settings(self.config, overrides)

    def write_post(
        self,
        name: str,
        title: str,
        date: datetime | str,
        *,
        tags: Iterable[str] = (),
        extra: str = "",
        body: str = "A first paragraph that serves as the excerpt.\n\nMore text.\n",
    ) -> Path:
        stamp = date if isinstance(date, str) else date.isoformat(sep=" ")
        path = self.posts / name
        tag_list = ", ".join(tags)
        path.write_text(
            f'---\ntitle: "{title}"\ndate: {stamp}\ntags: [{tag_list}]\n{extra}---\n\n{body}',
            encoding="utf-8",
        )
        return path


def make_site(
    root: Path,
    *,
    since: str | None = "2024-01-01T00:00:00+00:00",
    lists: str | None = None,
    extra: str = "",
    transport: str = "memory",
    smtp_port: int = 25,
    scan_interval: str = "0.5s",
    max_attempts: int = 5,
    rate: float = 0,
    concurrency: int = 1,
    smtp_timeout: float = 5,
) -> Site:
    """A site with `[lists.news]` (each) unless `lists` gives other TOML."""
    posts = root / "posts"
    posts.mkdir(parents=True, exist_ok=True)
    since_line = f'since = "{since}"\n' if since else ""
    lists_toml = lists if lists is not None else '[lists.news]\ntitle = "News"\nmode = "each"\n'
    config = root / "newsletter.toml"
    config.write_text(
        f"""
[site]
title = "Test Notes"
url = "https://notes.example.com"
posts_dir = "posts"
timezone = "UTC"

[email]
from = "Test Notes <news@example.com>"

[delivery]
transport = "{transport}"
outbox_dir = "outbox"
concurrency = {concurrency}
rate_per_second = {rate}
max_attempts = {max_attempts}
backoff_base = 0.3
backoff_cap = 1.0

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
timeout = {smtp_timeout}

[database]
url = "sqlite:///{root / "news.db"}"

[schedule]
scan_interval = "{scan_interval}"
wait_for_page = false
{since_line}
{extra}
{lists_toml}
""",
        encoding="utf-8",
    )
    return Site(root, config, posts)


def add_members(
    engine: Engine,
    list_name: str,
    emails: Iterable[str] = MEMBERS,
    settings: Settings | None = None,
) -> None:
    from newsletter.audience import members as subs

    if settings is not None:
        subs.ensure_lists(engine, settings)
    for email in emails:
        subs.add_subscriber(engine, email, list_name)


def engine_of(settings: Settings) -> Engine:
    return open_store(settings)


def first_recipient_only(settings: Settings, engine: Engine) -> MemoryTransport:
    """A daemon pass that plans the post and is stopped after one message."""
    from newsletter.daemon import passes

    stop = threading.Event()
    transport = MemoryTransport()

    def progress(_mailing: int, done: int, _total: int) -> None:
        if done >= 1:
            stop.set()

    report = passes.run_pass(settings, engine, transport=transport, stop=stop, progress=progress)
    assert len(report.planned) == 1 and len(transport.outbox) == 1
    return transport
