"""How fast are the preview and the public endpoints?

Uses the web tests' fixture site (tests/fixtures/web/site) copied to a
temporary folder, and measures in the same run:

* baseline: `render_email` alone for one post × list (premailer dominates);
* a post's preview page, cold (render + message + lint + list comparison)
  and warm (cached until a watched file changes);
* the index over N extra generated posts (default 200), warm;
* baseline: `subscribers.unsubscribe` called directly on the store;
* RFC 8058 one-click POSTs through the public app (token check, form
  parsing, store write, page), per request.

    python bench/web.py [N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starlette.testclient import TestClient

from newsletter.audience import members as subs
from newsletter.config import load_settings
from newsletter.email.render import render_email
from newsletter.email.tokens import make_token
from newsletter.posts.collection import load_posts
from newsletter.store import open_store
from newsletter.web.preview import create_preview_app
from newsletter.web.public import create_public_app

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "tests" / "fixtures" / "web" / "site"
POST = "tending-a-winter-allotment"
BASE = "http://127.0.0.1:8025"


def timed(func: Callable[[], object], repeat: int) -> float:
    """Best-of-three mean seconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            func()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def extra_posts(folder: Path, count: int) -> None:
    body = "\n\n".join(f"Paragraph {i} about compost, seeds and the weather." for i in range(30))
    for i in range(count):
        day = 1 + i % 28
        (folder / f"2023-{1 + i % 12:02d}-{day:02d}-generated-{i}.md").write_text(
            f'---\ntitle: "Generated post {i}"\ntags: [Gardening]\n---\n\n{body}\n'
        )


def main(count: int) -> None:
    os.environ["LANTERN_TEST_SECRET"] = "bench-secret"
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(SITE, site)
        config = site / "newsletter.toml"
        settings = load_settings(config)
        post = load_posts(settings).find(POST)
        lst = settings.lists["letters"]

        render_s = timed(lambda: render_email(post, settings, lst), 20)

        app = create_preview_app(lambda: load_settings(config), live=False)
        with TestClient(app, base_url=BASE) as client:
            assert client.get(f"/post/{POST}").status_code == 200  # warm-up imports

            def cold() -> None:
                (site / "posts" / "2024-03-02-tending-a-winter-allotment.md").touch()
                assert client.get(f"/post/{POST}").status_code == 200

            cold_s = timed(cold, 5)
            warm_s = timed(lambda: client.get(f"/post/{POST}"), 50)
            extra_posts(site / "posts", count)
            client.get("/")
            index_s = timed(lambda: client.get("/"), 10)

        engine = open_store(settings)
        subs.ensure_lists(engine, settings)
        rows = [subs.add_subscriber(engine, f"b{i}@example.com", "letters") for i in range(400)]
        direct = iter(rows[:200])
        direct_s = timed(
            lambda: subs.unsubscribe(engine, next(direct).id, "letters", reason="b"), 60
        )
        public = create_public_app(settings, engine=engine, secret=b"bench-secret")
        tokens = iter(make_token(b"bench-secret", r.uid, "letters") for r in rows[200:])
        body = {"List-Unsubscribe": "One-Click"}
        with TestClient(public) as client:
            post_s = timed(lambda: client.post(f"/unsubscribe/{next(tokens)}", data=body), 60)

    print(f"render_email (baseline)          {render_s * 1000:8.1f} ms")
    print(
        f"preview page, cold               {cold_s * 1000:8.1f} ms  ({cold_s / render_s:.1f}x render)"
    )
    print(
        f"preview page, warm (cached)      {warm_s * 1000:8.1f} ms  ({warm_s / render_s:.2f}x render)"
    )
    print(f"index, {count + 4} posts, warm          {index_s * 1000:8.1f} ms")
    print(f"unsubscribe in the store (base)  {direct_s * 1000:8.2f} ms")
    print(
        f"one-click POST, end to end       {post_s * 1000:8.2f} ms  ({post_s / direct_s:.1f}x store)"
    )


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    cli.add_argument("posts", nargs="?", type=int, default=200, help="extra generated posts")
    main(cli.parse_args().posts)
