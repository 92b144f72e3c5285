"""A generated blog for the benchmarks: N seed-shaped posts and a configuration.

Each post is shaped like the seed post: a `+0300` date string, a site-relative
image, a body-only byline, ~5 KB of Markdown in eight sections; every third
post also has Liquid (`post_url`, `site.title`, a filter), a code block and an
image.  Files are dated a year back, as a blog's are (a file changed in the
last seconds is also compared by content, which a real blog rarely needs).
"""

from __future__ import annotations

import os
from pathlib import Path

PARAGRAPH = (
    "Curious readers keep asking how a small habit changes the way a brain files away "
    "the day. The short answer is repetition at the right moment; the long answer needs "
    "a few experiments, some careful measurement and a willingness to be surprised by "
    "the numbers once they arrive on the screen."
)

CONFIG = """\
[site]
title = "Bench"
url = "https://bench.example.com"
posts_dir = "posts"
timezone = "Europe/Istanbul"

[delivery]
transport = "maildir"

[schedule]
since = "2030-01-01T00:00:00+00:00"

[lists.main]
title = "Main"
"""

# `--jekyll`: the same posts laid out as a Jekyll site (`_config.yml`, `_posts`,
# `[site] jekyll_config`), the path real blogs take.
JEKYLL_CONFIG = """\
title: Bench
url: https://bench.example.com
timezone: Europe/Istanbul
"""
JEKYLL_SITE = '[site]\njekyll_config = "_config.yml"\n'

A_YEAR = 365 * 24 * 3600


def posts_folder(root: Path) -> Path:
    return root / "_posts" if (root / "_config.yml").is_file() else root / "posts"


def post_name(i: int) -> str:
    day = 1 + i % 28
    month = 1 + (i // 28) % 12
    return f"2024-{month:02d}-{day:02d}-bench-post-{i}.md"


def post_text(i: int, title_suffix: str = "") -> str:
    day = 1 + i % 28
    month = 1 + (i // 28) % 12
    extras = ""
    if i % 3 == 0:
        extras = (
            "\n```python\nfor trial in range(10):\n    print(trial)\n```\n\n"
            "![A chart of results](../assets/chart.png)\n\n"
            "See [the previous post]({% post_url 2024-01-01-bench-post-0 %}) and "
            "{{ site.title }} at {{ '/about/' | absolute_url }}.\n"
        )
    sections = "\n".join(f"## Section {s}: a heading\n{PARAGRAPH}\n" for s in range(8))
    return (
        "---\n"
        "layout: post\n"
        f'title: "Bench post number {i}: how habits shape memory{title_suffix}"\n'
        f'description: "A generated post ({i}) for measuring the reader"\n'
        f"date:   2024-{month:02d}-{day:02d} 0{i % 10}:00:00 +0300\n"
        "image:  '/images/bench.png'\n"
        "tags:   [Bench, Neuroscience, Technology]\n"
        "---\n\n"
        f"### Author: [Writer {i % 7}](https://example.org/people/writer-{i % 7})\n\n"
        f"{PARAGRAPH}\n\n{extras}{sections}"
    )


def write_post(root: Path, i: int, title_suffix: str = "", age: float = A_YEAR) -> Path:
    path = posts_folder(root) / post_name(i)
    path.write_text(post_text(i, title_suffix), encoding="utf-8")
    stamp = path.stat().st_mtime - age
    os.utime(path, (stamp, stamp))
    return path


def generate(root: Path, count: int, *, jekyll: bool = False) -> Path:
    """The blog in `root` (which must exist); returns its newsletter.toml."""
    config = CONFIG
    if jekyll:
        (root / "_config.yml").write_text(JEKYLL_CONFIG, encoding="utf-8")
        config = JEKYLL_SITE + config[config.index("\n[delivery]") :]
    (root / "newsletter.toml").write_text(config, encoding="utf-8")
    posts_folder(root).mkdir()
    for i in range(count):
        write_post(root, i)
    return root / "newsletter.toml"
