"""Debian's `jekyll` as the oracle: build a fixture site, read what it made of
every post, and compare that field by field with what `newsletter` reads.

The site is copied to a temporary folder with one extra page, `oracle.json`,
that lists `site.posts` (url, date, title, byline, excerpt and content text).
The byline is the site's own `_includes/byline.html` (what the site shows
under a post's title); every fixture site has one.

    python tests/jekyll_oracle.py [SITE ...]   # prints the agreement table
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "jekyll"
FIELDS = ("url", "date", "title", "byline", "categories", "excerpt", "text")

ORACLE_PAGE = """\
---
layout: null
permalink: /oracle.json
---
[{% for p in site.posts %}{% capture byline %}{% include byline.html post=p %}{% endcapture %}
{"path": {{ p.path | jsonify }},
 "url": {{ p.url | absolute_url | jsonify }},
 "date": {{ p.date | date: "%Y-%m-%dT%H:%M:%S%:z" | jsonify }},
 "title": {{ p.title | jsonify }},
 "byline": {{ byline | strip | jsonify }},
 "categories": {{ p.categories | jsonify }},
 "excerpt": {{ p.excerpt | jsonify }},
 "content": {{ p.content | jsonify }}}{% unless forloop.last %},{% endunless %}{% endfor %}
]
"""


def sites() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "_config.yml").is_file())


def jekyll_available() -> bool:
    return shutil.which("jekyll") is not None


def build(site: str, work: Path) -> list[dict[str, Any]]:
    """Jekyll's view of every post of fixture `site` (built under `work`)."""
    source = work / site
    shutil.copytree(FIXTURES / site, source)
    (source / "oracle.json").write_text(ORACLE_PAGE, encoding="utf-8")
    dest = work / f"{site}-built"
    env = {**os.environ, "JEKYLL_ENV": "production", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [
            "jekyll",
            "build",
            "--future",
            "--unpublished",
            "--safe",
            "-s",
            str(source),
            "-d",
            str(dest),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"jekyll build {site} failed:\n{done.stdout}\n{done.stderr}")
    data: list[dict[str, Any]] = json.loads((dest / "oracle.json").read_text(encoding="utf-8"))
    return data


def text_of(fragment: str) -> str:
    """The visible words of an HTML fragment, whitespace collapsed, entities decoded.

    The same normalisation is applied to both sides, so only a real difference
    in what a reader sees (a quote, a word, a stray `{:`) counts.
    """
    fragment = re.sub(r"<(script|style)\b.*?</\1>", " ", fragment, flags=re.S | re.I)
    fragment = re.sub(r"<!--.*?-->", "", fragment, flags=re.S)  # invisible, no space
    fragment = re.sub(r"<[^>]+>", " ", fragment)
    text = html.unescape(fragment).replace("\u00a0", " ")
    text = text.replace("\u21a9\ufe0e", "").replace("\u21a9", "")  # footnote back-links
    return " ".join(text.split())


@dataclass(frozen=True)
class Mismatch:
    site: str
    path: str
    field: str
    jekyll: Any
    ours: Any


@dataclass(frozen=True)
class Comparison:
    site: str
    posts: int  # Jekyll's posts
    missing: tuple[str, ...]  # Jekyll publishes it, we do not have it
    extra: tuple[str, ...]  # we have it, Jekyll does not
    agree: Mapping[str, int]  # field → posts agreeing
    mismatches: tuple[Mismatch, ...]

    def percent(self, name: str) -> float:
        return 100.0 * self.agree[name] / self.posts if self.posts else 100.0


def ours_fields(site_dir: Path) -> dict[str, dict[str, Any]]:
    """`newsletter posts --json` (url, date, title, byline) plus the excerpt and
    body text from `load_posts`, keyed by the post's path under the site."""
    from click.testing import CliRunner

    from newsletter.cli import main
    from newsletter.config import load_settings
    from newsletter.posts import load_posts

    config = site_dir / "newsletter.toml"
    env = {"NEWSLETTER_CONFIG": str(config)}
    old = os.getcwd()
    os.chdir(site_dir)
    try:
        result = CliRunner().invoke(main, ["posts", "--json"], env=env)
        if result.exit_code != 0:
            raise RuntimeError(f"newsletter posts failed: {result.output}")
        rows = json.loads(result.stdout)
        collection = load_posts(load_settings(config))
    finally:
        os.chdir(old)
    by_path = {str(p.path): p for p in collection.posts}
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        post = by_path[row["path"]]
        rel = Path(row["path"]).resolve().relative_to(site_dir.resolve()).as_posix()
        found[rel] = {
            "url": row["url"],
            "date": row["date"],
            "title": row["title"],
            "byline": ", ".join(a["name"] for a in row["authors"]),
            "categories": row["categories"],
            "excerpt": text_of(post.excerpt_html),
            "text": text_of(post.body_html),
        }
    return found


def compare(site: str, jekyll_posts: list[dict[str, Any]], site_dir: Path) -> Comparison:
    try:
        ours = ours_fields(site_dir)
    except RuntimeError as exc:  # counted as every post missing, and said
        print(f"{site}: {exc}", file=sys.stderr)
        ours = {}
    theirs: dict[str, dict[str, Any]] = {}
    for post in jekyll_posts:
        theirs[post["path"]] = {
            "url": post["url"],
            "date": post["date"],
            "title": post["title"],
            "byline": post["byline"],
            "categories": post["categories"],
            "excerpt": text_of(post["excerpt"]),
            "text": text_of(post["content"]),
        }
    agree = dict.fromkeys(FIELDS, 0)
    mismatches: list[Mismatch] = []
    for path, expected in theirs.items():
        got = ours.get(path)
        if got is None:
            continue
        for name in FIELDS:
            # Jekyll's excerpt shows nothing (the post opens with a comment or
            # an {% assign %}): ours falls back to the first paragraph with
            # text, as docs/posts.md says; it must come from the body.
            fallback = name == "excerpt" and not expected[name] and got[name]
            if fallback and got[name] in got["text"]:
                agree[name] += 1
                continue
            if _same(name, expected[name], got[name]):
                agree[name] += 1
            else:
                mismatches.append(Mismatch(site, path, name, expected[name], got[name]))
    return Comparison(
        site=site,
        posts=len(theirs),
        missing=tuple(sorted(set(theirs) - set(ours))),
        extra=tuple(sorted(set(ours) - set(theirs))),
        agree=agree,
        mismatches=tuple(mismatches),
    )


def _same(name: str, expected: Any, got: Any) -> bool:
    if name == "date":
        from datetime import datetime

        return datetime.fromisoformat(expected) == datetime.fromisoformat(got) and (
            expected == got  # same instant *and* the same wall clock (the site's zone)
        )
    return expected == got


def table(comparisons: list[Comparison]) -> str:
    head = f"{'site':<10} {'posts':>5} {'missing':>7} {'extra':>5} " + " ".join(
        f"{f:>{max(len(f), 7) + 1}}" for f in FIELDS
    )
    lines = [head]
    for c in comparisons:
        cells = " ".join(f"{c.percent(f):{max(len(f), 7)}.1f}%" for f in FIELDS)
        lines.append(f"{c.site:<10} {c.posts:>5} {len(c.missing):>7} {len(c.extra):>5} {cells}")
    return "\n".join(lines)


def run(names: list[str], report: Callable[[str], None] = print) -> list[Comparison]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            posts = build(name, Path(tmp))
            results.append(compare(name, posts, Path(tmp) / name))
    report(table(results))
    for c in results:
        for path in c.missing:
            report(f"{c.site}: MISSING {path}")
        for path in c.extra:
            report(f"{c.site}: EXTRA {path}")
        for m in c.mismatches:
            report(f"{c.site}: {m.path} {m.field}:\n  jekyll: {m.jekyll!r}\n  ours:   {m.ours!r}")
    return results


if __name__ == "__main__":
    run(sys.argv[1:] or sites())
