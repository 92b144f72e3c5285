"""Rendering and personalisation speed.

    python bench/render.py [--posts N] [--recipients N]

Prints, for a seed-shaped post (≈4.7 KB of Markdown: a byline line, ten
`##` sections, a lead image), the per-post median of Markdown + template +
premailer inlining and posts/s; then `MessageTemplate.personalise` messages/s
against the baseline measured in the same run: an `EmailMessage` built and
serialised with `as_bytes()` per recipient.  Goals: render ≤ 30 ms median,
personalise ≥ 20,000 messages/s on one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from newsletter.config import (
    EmailSettings,
    ListSettings,
    Settings,
    SiteSettings,
    UnsubscribeSettings,
    WebSettings,
)
from newsletter.email.message import MessageTemplate, Recipient, message_id
from newsletter.email.render import PLACEHOLDERS, render_email
from newsletter.posts import markup
from newsletter.posts.collection import Author, Post

WORDS = [
    "river",
    "delta",
    "sediment",
    "tide",
    "current",
    "basin",
    "shoreline",
    "marsh",
    "reed",
    "heron",
    "estuary",
    "salt",
    "fresh",
    "water",
    "level",
    "gauge",
    "season",
    "flood",
    "ebb",
    "channel",
    "silt",
    "oyster",
    "bank",
    "sample",
    "survey",
]


def seed_shaped_markdown(index: int) -> str:
    """Made-up text in the seed's shape: byline line, ten sections of prose."""

    def sentence(k: int) -> str:
        words = [WORDS[(index + k * 7 + j * 3) % len(WORDS)] for j in range(14)]
        return " ".join(words).capitalize() + "."

    parts = ["### Author: [Made Up Writer](https://example.org/writer)", ""]
    parts.append(" ".join(sentence(k) for k in range(5)))
    for section in range(10):
        parts += ["", f"## Section {section + 1}: the {WORDS[section]}", ""]
        parts.append(" ".join(sentence(section * 10 + k) for k in range(4)))
    return "\n".join(parts) + "\n"


def settings(content: str) -> Settings:
    return Settings(
        site=SiteSettings(title="Bench Notes", url="https://bench.example.com"),
        email=EmailSettings(from_="Bench <news@bench.example.com>", content=content),  # type: ignore[arg-type]
        unsubscribe=UnsubscribeSettings(mailto="unsubscribe@bench.example.com"),
        web=WebSettings(public_url="https://news.bench.example.com"),
        lists={"all": ListSettings(name="all", title="Everything")},
    )


def make_post(index: int) -> Post:
    url = f"https://bench.example.com/2024/11/04/post-{index}.html"
    body = markup.markdown_to_html(seed_shaped_markdown(index), url)
    excerpt = body.split("</p>", 1)[0] + "</p>"
    return Post(
        path=Path(f"post-{index}.md"), post_id=f"post-{index}", slug=f"post-{index}",
        title=f"Bench post {index}", title_html=f"Bench post {index}",
        date=datetime(2024, 11, 4, tzinfo=UTC), url=url, description="A description",
        image="https://bench.example.com/images/lead.png", image_alt="Lead",
        tags=("Bench", "Notes"), categories=(), authors=(Author("Made Up Writer"),),
        excerpt_html=excerpt, excerpt_text=markup.html_to_text(excerpt), body_html=body,
    )  # fmt: skip


def bench_render(n: int, content: str) -> list[float]:
    cfg = settings(content)
    lst = cfg.lists["all"]
    render_email(make_post(0), cfg, lst)  # warm-up: templates compile once
    times = []
    for i in range(n):
        start = time.perf_counter()
        render_email(make_post(i), cfg, lst)  # Markdown + template + inlining
        times.append(time.perf_counter() - start)
    return times


def bench_seed(path: Path, n: int) -> None:
    """The real post reader (front matter, Liquid, Markdown) plus render."""
    from dataclasses import replace

    from newsletter.posts.collection import read_post

    for content in ("excerpt", "full"):
        base = settings(content)
        cfg = replace(base, site=replace(base.site, posts_dir=path.parent))
        render_email(read_post(path, cfg), cfg, cfg.lists["all"])
        read_times, render_times = [], []
        for _ in range(n):
            start = time.perf_counter()
            post = read_post(path, cfg)
            middle = time.perf_counter()
            render_email(post, cfg, cfg.lists["all"])
            read_times.append(middle - start)
            render_times.append(time.perf_counter() - middle)
        total = [a + b for a, b in zip(read_times, render_times, strict=True)]
        print(
            f"{path.name} [{content:7}]: read {statistics.median(read_times) * 1000:.1f} ms"
            f" + render {statistics.median(render_times) * 1000:.1f} ms"
            f" = median {statistics.median(total) * 1000:.1f} ms/post,"
            f" {n / sum(total):.0f} posts/s"
        )


def recipients(n: int) -> list[Recipient]:
    return [
        Recipient(
            f"reader{i}@example.com",
            f"Reader Number {i}" if i % 10 else f"Lectrice Zoë {i}",
            f"https://news.bench.example.com/unsubscribe/tok{i:08d}abcdefghijklmnop",
        )
        for i in range(n)
    ]


def baseline_message(cfg: Settings, html: str, text: str, subject: str, r: Recipient) -> bytes:
    """What a naive sender does: a fresh EmailMessage per recipient."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = cfg.email.from_
    msg["To"] = f"{r.name} <{r.email}>"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id("bench", r.email, "bench.example.com")
    msg["List-Unsubscribe"] = f"<{r.unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    key = PLACEHOLDERS["unsubscribe_url"]
    msg.set_content(text.replace(key, r.unsubscribe_url))
    msg.add_alternative(html.replace(key, r.unsubscribe_url), subtype="html")
    return msg.as_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument(
        "--seed", type=Path, help="also time a real post file end to end (read + render)"
    )
    args = parser.parse_args()

    print(f"seed-shaped Markdown: {len(seed_shaped_markdown(0)):,} bytes")
    for content in ("excerpt", "full"):
        times = bench_render(args.posts, content)
        median = statistics.median(times) * 1000
        print(
            f"render [{content:7}] {args.posts} posts: median {median:.1f} ms/post, "
            f"p95 {sorted(times)[int(len(times) * 0.95)] * 1000:.1f} ms, "
            f"{args.posts / sum(times):.0f} posts/s  (goal ≤ 30 ms median)"
        )

    if args.seed:
        bench_seed(args.seed, args.posts)

    cfg = settings("full")
    rendered = render_email(make_post(1), cfg, cfg.lists["all"])
    people = recipients(args.recipients)

    start = time.perf_counter()
    template = MessageTemplate.build(rendered, cfg)
    build_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for r in people:
        template.personalise(r, mailing_key="bench")
    fast = args.recipients / (time.perf_counter() - start)

    sample = people[: max(1, args.recipients // 25)]
    start = time.perf_counter()
    for r in sample:
        baseline_message(cfg, rendered.html, rendered.text, rendered.subject, r)
    slow = len(sample) / (time.perf_counter() - start)

    print(
        f"message size: {len(template.personalise(people[0])):,} bytes; build once: {build_ms:.1f} ms"
    )
    print(f"baseline EmailMessage+as_bytes: {slow:,.0f} messages/s ({len(sample):,} messages)")
    print(
        f"personalise (fast path):        {fast:,.0f} messages/s ({args.recipients:,} messages)"
        f"  = {fast / slow:.0f}× baseline  (goal ≥ 20,000/s)"
    )


if __name__ == "__main__":
    main()
