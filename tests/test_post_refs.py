"""A post reference names exactly one post (issue 9, item 2).

The site has a published `posts/2024-05-01-a-post.md` and a draft
`posts/drafts/2020-02-01-a-post.md` (`published: false`) with the same slug:
`send`, `render`, the preview and the archive must each pick the right one,
and a draft is never mailed to a list nor shown in the public archive.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.errors import PostError
from newsletter.posts.collection import load_posts
from newsletter.web.preview import create_preview_app
from newsletter.web.public import create_public_app

PUBLISHED = """---
title: "The Published Post"
---

PUBLISHED-WORDS are the ones readers may see.
"""

DRAFT = """---
title: "The Draft Post"
published: false
---

DRAFT-WORDS must stay on the writer's desk.
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = copy_site(tmp_path, monkeypatch)
    posts = config.parent / "posts"
    (posts / "2024-05-01-a-post.md").write_text(PUBLISHED)
    (posts / "drafts").mkdir()
    (posts / "drafts" / "2020-02-01-a-post.md").write_text(DRAFT)
    monkeypatch.chdir(config.parent)
    return config


@pytest.fixture
def store(config: Path) -> Store:
    store = make_store(config)
    store.add("reader@example.com")
    return store


def run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


def outbox_text(config: Path) -> str:
    path = config.parent / ".newsletter" / "outbox"
    if not path.exists():
        return ""
    box = mailbox.Maildir(path, create=False)
    return "\n".join(m.as_bytes().decode("utf-8", "replace") for m in box)


# --------------------------------------------------------------------------- find


@pytest.mark.parametrize(
    ("ref", "title"),
    [
        ("a-post", "The Published Post"),  # an id
        ("drafts/a-post", "The Draft Post"),  # the draft's id
        ("2024-05-01-a-post", "The Published Post"),  # path under posts/, no extension
        ("2024-05-01-a-post.md", "The Published Post"),
        ("drafts/2020-02-01-a-post.md", "The Draft Post"),
        ("drafts/2020-02-01-a-post", "The Draft Post"),
        ("posts/drafts/2020-02-01-a-post.md", "The Draft Post"),  # under the site
        ("posts/2024-05-01-a-post", "The Published Post"),
    ],
)
def test_find_resolves_ids_then_paths_exactly(config: Path, ref: str, title: str) -> None:
    assert load_posts(load_settings(config)).find(ref).title == title


def test_find_takes_an_absolute_path(config: Path) -> None:
    draft = config.parent / "posts" / "drafts" / "2020-02-01-a-post.md"
    assert load_posts(load_settings(config)).find(str(draft)).title == "The Draft Post"


@pytest.mark.parametrize(
    "ref", ["2020-02-01-a-post", "2020-02-01-a-post.md", "post", "drafts", "a-post.md", ""]
)
def test_loose_references_match_nothing(config: Path, ref: str) -> None:
    # The old lookup took a slug, a file name or a stem from anywhere: the
    # draft's file name alone named the draft, "a-post" could be either.
    with pytest.raises(PostError, match="no post matches"):
        load_posts(load_settings(config)).find(ref)


@pytest.mark.parametrize("ref", ["a\x00post", "~no-such-user-here/a-post.md", "~no-such-user-here"])
def test_unresolvable_paths_match_nothing(config: Path, ref: str) -> None:
    """A NUL (the preview's /post/%00) or an unknown ~user: "no post matches",
    not ValueError / RuntimeError from pathlib (a 500, a traceback)."""
    with pytest.raises(PostError, match="no post matches"):
        load_posts(load_settings(config)).find(ref)


def test_preview_of_an_unresolvable_reference_is_a_404(config: Path) -> None:
    app = create_preview_app(lambda: load_settings(config), live=False)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:
        assert client.get("/post/%00").status_code == 404
        assert client.get("/eml/~no-such-user-here").status_code == 404
        # Also no draft of that name (`_drafts/`): a name too long for a file is none.
        assert client.get("/post/" + "a" * 5000).status_code == 404
        assert client.get("/post/~no-such-user-here.md").status_code == 404


def test_an_ambiguous_reference_lists_the_candidates(config: Path) -> None:
    posts = config.parent / "posts"
    (posts / "2024-06-01-twin.md").write_text("---\ntitle: One\nid: twin\n---\nx\n")
    (posts / "2024-06-02-other.md").write_text("---\ntitle: Two\nid: twin\n---\ny\n")
    with pytest.raises(PostError) as info:
        load_posts(load_settings(config)).find("twin")
    message = str(info.value)
    assert "'twin' names 2 posts" in message
    assert "posts/2024-06-01-twin.md" in message and "posts/2024-06-02-other.md" in message
    assert "\n" not in message


def test_an_ambiguous_path_lists_the_candidates(config: Path) -> None:
    posts = config.parent / "posts"
    (posts / "2024-06-01-pair.md").write_text("---\ntitle: One\nid: pair-md\n---\nx\n")
    (posts / "2024-06-01-pair.markdown").write_text("---\ntitle: Two\nid: pair-mk\n---\ny\n")
    with pytest.raises(PostError, match=r"'2024-06-01-pair' names 2 posts: .*pair\.markdown"):
        load_posts(load_settings(config)).find("2024-06-01-pair")


# --------------------------------------------------------------------------- send


def test_send_mails_the_published_post_not_the_draft(config: Path, store: Store) -> None:
    code, out, err = run(config, "send", "a-post", "--list", "letters")
    assert (code, err) == (0, ""), out
    assert out == "sent 1, deferred 0, failed 0, skipped 0\n"
    text = outbox_text(config)
    assert "PUBLISHED-WORDS" in text and "DRAFT-WORDS" not in text


@pytest.mark.parametrize(
    "ref", ["drafts/a-post", "drafts/2020-02-01-a-post.md", "posts/drafts/2020-02-01-a-post.md"]
)
def test_send_refuses_an_unpublished_post(config: Path, store: Store, ref: str) -> None:
    for extra in ((), ("--dry-run",), ("--resend",)):
        code, out, err = run(config, "send", ref, "--list", "letters", *extra)
        assert code == 1, (extra, out)
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith("error: ") and "posts/drafts/2020-02-01-a-post.md: " in err
        assert "'drafts/a-post' is not published (published: false, draft: true" in err
        assert "send it with --test, but not to a list" in err
        assert "Traceback" not in err
    assert outbox_text(config) == ""


def test_send_test_of_a_draft_is_still_allowed(config: Path, store: Store) -> None:
    # A test send goes to the addresses given, not to a list: that is how a
    # writer checks a draft in a real mail client.
    code, out, err = run(
        config, "send", "drafts/a-post", "--list", "letters", "--test", "me@example.org"
    )
    assert (code, err) == (0, ""), out
    assert "DRAFT-WORDS" in outbox_text(config)


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("a-post", "PUBLISHED-WORDS"),
        ("drafts/a-post", "DRAFT-WORDS"),
        ("drafts/2020-02-01-a-post.md", "DRAFT-WORDS"),
    ],
)
def test_render_picks_the_exact_post(config: Path, ref: str, words: str) -> None:
    code, out, err = run(config, "render", ref, "--list", "letters", "--format", "text")
    assert code == 0, err
    assert words in out
    other = "DRAFT-WORDS" if words == "PUBLISHED-WORDS" else "PUBLISHED-WORDS"
    assert other not in out


def test_render_of_an_ambiguous_reference_is_one_clear_line(config: Path) -> None:
    posts = config.parent / "posts"
    (posts / "2024-06-01-twin.md").write_text("---\ntitle: One\nid: twin\n---\nx\n")
    (posts / "2024-06-02-other.md").write_text("---\ntitle: Two\nid: twin\n---\ny\n")
    code, out, err = run(config, "render", "twin", "--format", "text")
    assert code == 1 and out == ""
    assert "'twin' names 2 posts" in err
    assert err.count("\n") == 1


# --------------------------------------------------------------------------- preview


@pytest.fixture
def preview(config: Path) -> Iterator[TestClient]:
    app = create_preview_app(lambda: load_settings(config), live=False)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:
        yield client


@pytest.mark.parametrize(
    ("post_id", "words"), [("a-post", "PUBLISHED-WORDS"), ("drafts/a-post", "DRAFT-WORDS")]
)
def test_preview_shows_the_exact_post(preview: TestClient, post_id: str, words: str) -> None:
    response = preview.get(f"/html/{post_id}")
    assert response.status_code == 200
    assert words in response.text
    other = "DRAFT-WORDS" if words == "PUBLISHED-WORDS" else "PUBLISHED-WORDS"
    assert other not in response.text


def test_preview_of_a_loose_reference_is_404(preview: TestClient) -> None:
    assert preview.get("/html/2020-02-01-a-post").status_code == 404


# --------------------------------------------------------------------------- archive


@pytest.fixture
def public(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url="https://news.lantern.example.com") as client:
        yield client


def _deliver(store: Store, post_id: str) -> None:
    """A mailing as an older version (or a direct library call) could make it."""
    mailing_id = plan_mailing(store.engine, store.settings, post_id, "letters")
    deliver_mailing(
        store.engine,
        store.settings,
        mailing_id,
        load_posts(store.settings),
        transport=MemoryTransport(),
    )


def test_archive_serves_the_post_the_mailing_sent(public: TestClient, store: Store) -> None:
    _deliver(store, "a-post")
    response = public.get("/archive/a-post")
    assert response.status_code == 200
    assert "PUBLISHED-WORDS" in response.text
    assert "DRAFT-WORDS" not in response.text
    index = public.get("/archive/")
    assert "The Published Post" in index.text and "The Draft Post" not in index.text


def test_archive_never_serves_an_unpublished_post(public: TestClient, store: Store) -> None:
    _deliver(store, "drafts/a-post")  # mailed before the send guard existed
    for path in ("/archive/drafts/a-post", "/archive/a-post", "/archive/2020-02-01-a-post"):
        response = public.get(path)
        assert response.status_code == 404, path
        assert "DRAFT-WORDS" not in response.text
    index = public.get("/archive/")
    assert index.status_code == 200
    assert "The Draft Post" not in index.text
