"""How fast is `newsletter posts` over 1,000 seed-shaped posts?

Generates N posts (default 1,000) shaped like the seed post — a `+0300` date
string, a site-relative image, a body-only byline, ~5 KB of Markdown with
headings, some with Liquid, a code block and an image — into a temporary
folder, then measures, in the same run:

* baseline: `frontmatter.load` of every file (YAML + split only);
* `load_posts` (the library call: front matter, Liquid, byline, excerpt,
  Markdown → HTML for body and excerpt), and with `bodies=False` (no
  Markdown → HTML, which is what the `posts` listing uses);
* `newsletter posts --json` in-process (CliRunner);
* `newsletter posts --json` as a subprocess (adds interpreter start-up).

Goal (issue 2): the command over 1,000 posts in ≤ 3 s.

`--jekyll` lays the same posts out as a Jekyll site (`_config.yml`, posts
in `_posts`, `[site] jekyll_config`), the path real blogs take.  To compare
two versions, run this same script with each on PYTHONPATH, alternately.

    python bench/posts.py [N] [--jekyll]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import frontmatter
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.posts.collection import load_posts

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

[lists.main]
title = "Main"
"""


def post_text(i: int) -> str:
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
        f'title: "Bench post number {i}: how habits shape memory"\n'
        f'description: "A generated post ({i}) for measuring the reader"\n'
        f"date:   2024-{month:02d}-{day:02d} 0{i % 10}:00:00 +0300\n"
        "image:  '/images/bench.png'\n"
        "tags:   [Bench, Neuroscience, Technology]\n"
        "---\n\n"
        f"### Author: [Writer {i % 7}](https://example.org/people/writer-{i % 7})\n\n"
        f"{PARAGRAPH}\n\n{extras}{sections}"
    )


JEKYLL_CONFIG = """\
title: Bench
url: https://bench.example.com
timezone: Europe/Istanbul
"""


def generate(root: Path, count: int, jekyll: bool = False) -> None:
    if jekyll:
        (root / "_config.yml").write_text(JEKYLL_CONFIG, encoding="utf-8")
        config = '[site]\njekyll_config = "_config.yml"\n\n[lists.main]\ntitle = "Main"\n'
        (root / "newsletter.toml").write_text(config, encoding="utf-8")
    else:
        (root / "newsletter.toml").write_text(CONFIG, encoding="utf-8")
    posts = root / ("_posts" if jekyll else "posts")
    posts.mkdir()
    for i in range(count):
        day = 1 + i % 28
        month = 1 + (i // 28) % 12
        name = f"2024-{month:02d}-{day:02d}-bench-post-{i}.md"
        (posts / name).write_text(post_text(i), encoding="utf-8")


def timed(label: str, func: object, baseline: float | None = None) -> float:
    start = time.perf_counter()
    func()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    ratio = f"  ({elapsed / baseline:.1f}× baseline)" if baseline else ""
    print(f"{label:<44} {elapsed:7.3f} s{ratio}")
    return elapsed


def main_bench(count: int, jekyll: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, count, jekyll)
        files = sorted((root / ("_posts" if jekyll else "posts")).glob("*.md"))
        settings = load_settings(root / "newsletter.toml")
        size = sum(f.stat().st_size for f in files) / 1e6
        print(f"{count} posts, {size:.1f} MB{' (Jekyll site)' if jekyll else ''}")
        base = timed(
            "baseline: frontmatter.load of every file", lambda: [frontmatter.load(f) for f in files]
        )
        timed("load_posts (library, with HTML)", lambda: load_posts(settings), base)
        timed(
            "load_posts (bodies=False, as `posts` does)",
            lambda: load_posts(settings, bodies=False),
            base,
        )

        def cli() -> None:
            result = CliRunner().invoke(
                main, ["--config", str(root / "newsletter.toml"), "posts", "--json"]
            )
            assert result.exit_code == 0, result.output

        elapsed = timed("newsletter posts --json (in-process)", cli, base)
        cmd = [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(root / "newsletter.toml"),
            "posts",
            "--json",
        ]
        full = timed(
            "newsletter posts --json (subprocess)",
            lambda: subprocess.run(cmd, check=True, capture_output=True),
            base,
        )
        print(
            f"per post: {elapsed / count * 1000:.2f} ms in-process; goal ≤ 3 s: {'met' if full <= 3 else 'NOT met'}"
        )


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--jekyll"]
    main_bench(int(args[0]) if args else 1000, "--jekyll" in sys.argv[1:])
