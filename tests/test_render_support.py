"""Shared builders for the render/message/markup tests (no tests of its own).

Posts are constructed directly (not through the post reader) so these tests
exercise rendering alone.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from newsletter.config import (
    EmailSettings,
    ListSettings,
    Settings,
    SiteSettings,
    UnsubscribeSettings,
    WebSettings,
)
from newsletter.posts import markup
from newsletter.posts.collection import Author, Post

FIXTURES = Path(__file__).parent / "fixtures" / "render"
GOLDEN = Path(__file__).parent / "golden" / "render"
POST_URL = "https://tides.example.com/notes/2024/06/08/tide-pools.html"
TZ = timezone(timedelta(hours=3))


def make_settings(**email_kw: Any) -> Settings:
    email_defaults: dict[str, Any] = {
        "from_": "Tide Notes <letters@tides.example.com>",
        "reply_to": "editor@tides.example.com",
    }
    email_defaults.update(email_kw)
    return Settings(
        site=SiteSettings(title="Tide Notes", url="https://tides.example.com"),
        email=EmailSettings(**email_defaults),
        unsubscribe=UnsubscribeSettings(mailto="unsubscribe@tides.example.com"),
        web=WebSettings(public_url="https://news.tides.example.com"),
        lists={
            "everything": ListSettings(name="everything", title="Tide Notes: every post"),
            "weekly": ListSettings(
                name="weekly", title="Tide Notes weekly", mode="digest", cron="0 8 * * MON"
            ),
        },
    )


def make_post(body_md: str | None = None, **overrides: Any) -> Post:
    """A post in the seed's shape, built from the feature fixture by default."""
    if body_md is None:
        body_md = (FIXTURES / "feature-post.md").read_text(encoding="utf-8")
    url = overrides.pop("url", POST_URL)
    body = markup.markdown_to_html(body_md, url)
    excerpt_md = body_md.split("<!--more-->")[0]
    excerpt = markup.markdown_to_html(excerpt_md, url)
    fields: dict[str, Any] = {
        "path": FIXTURES / "feature-post.md",
        "post_id": "tide-pools",
        "slug": "tide-pools",
        "title": "Counting Life in Tide Pools",
        "title_html": "Counting Life in <em>Tide Pools</em>",
        "date": datetime(2024, 6, 8, 9, 30, tzinfo=TZ),
        "url": url,
        "description": "One Saturday, three rock pools and a notebook",
        "image": "https://tides.example.com/images/tide-pool-lead.jpg",
        "image_alt": "A tide pool at dawn",
        "tags": ("Field work", "Biology"),
        "categories": ("notes",),
        "authors": (Author("Defne Kaya", "https://example.org/defne"), Author("Sam Ortiz")),
        "excerpt_html": excerpt,
        "excerpt_text": markup.html_to_text(excerpt),
        "body_html": body,
    }
    fields.update(overrides)
    return Post(**fields)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def assert_wire_format(raw: bytes) -> None:
    """CRLF only and no line over 998 bytes (RFC 5322 §2.1.1 / §2.3)."""
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert raw.endswith(b"\r\n")
    longest = max(len(line) for line in raw.split(b"\r\n"))
    assert longest <= 998, longest


def urls_in(html: str) -> list[str]:
    return re.findall(r'\b(?:href|src)="([^"]*)"', html)
