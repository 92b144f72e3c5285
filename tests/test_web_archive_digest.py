"""A digest's "View in browser" page over HTTP: the digest mailing as it was
sent, whole, at /archive/digest/<mailing id>, and the link to it in the email."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.posts.collection import load_posts
from newsletter.web.public import create_public_app

PUBLIC = "https://news.lantern.example.com"
DIGEST_POSTS = ("tending-a-winter-allotment", "a-lamp-that-listens")
TITLES = ("Tending a Winter Allotment", "A Lamp That Listens")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(copy_site(tmp_path, monkeypatch))


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as c:
        yield c


def send_digest(
    store: Store, post_ids: tuple[str, ...] = DIGEST_POSTS, *, deliver: bool = True
) -> tuple[int, MemoryTransport]:
    """Plan a digest mailing of `post_ids` to "letters" and deliver it for real."""
    mailing_id = plan_mailing(
        store.engine,
        store.settings,
        "digest/letters/2024-06-01",
        "letters",
        kind="digest",
        post_ids=post_ids,
        subject="Lantern Notes letters: 2 new posts",
    )
    transport = MemoryTransport()
    if deliver:
        deliver_mailing(
            store.engine,
            store.settings,
            mailing_id,
            load_posts(store.settings),
            transport=transport,
        )
    return mailing_id, transport


def parts(raw: bytes) -> tuple[str, str]:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def test_digest_email_links_to_its_archive_page(store: Store) -> None:
    store.add("ria@example.com")
    mailing_id, transport = send_digest(store)
    assert len(transport.outbox) == 1
    html, text = parts(transport.outbox[0].message)
    url = f"{PUBLIC}/archive/digest/{mailing_id}"
    assert re.search(f'<a href="{re.escape(url)}"[^>]*>View in browser</a>', html)
    assert f"View in browser: <{url}>" in text.splitlines()


def test_digest_page_shows_every_post_without_any_token(client: TestClient, store: Store) -> None:
    sol = store.add("sol@example.com")
    mailing_id, _ = send_digest(store)
    response = client.get(f"/archive/digest/{mailing_id}")
    assert response.status_code == 200
    for title in TITLES:
        assert title in response.text
    assert "Lantern Notes letters" in response.text  # the headline: the list title
    assert f'href="{PUBLIC}/archive/digest/{mailing_id}"' in response.text
    assert "NLPH0" not in response.text  # every placeholder filled
    assert "sol@example.com" not in response.text
    assert store.token(sol) not in response.text
    assert f'{PUBLIC}/unsubscribe/"' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'none'" in csp
    assert "<script" not in response.text.lower()
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_unpublished_post_of_a_digest_is_never_shown(client: TestClient, store: Store) -> None:
    store.add("tao@example.com")
    mailing_id, transport = send_digest(store, (*DIGEST_POSTS, "draft-not-yet"))
    assert len(transport.outbox) == 1
    assert "Not Yet Ready" in parts(transport.outbox[0].message)[0]  # it did go out
    response = client.get(f"/archive/digest/{mailing_id}")
    assert response.status_code == 200
    assert "Tending a Winter Allotment" in response.text
    assert "Not Yet Ready" not in response.text
    assert "This draft must never appear" not in response.text


def test_digest_of_only_unpublished_posts_has_no_page(client: TestClient, store: Store) -> None:
    store.add("uma@example.com")
    mailing_id, _ = send_digest(store, ("draft-not-yet",))
    assert client.get(f"/archive/digest/{mailing_id}").status_code == 404


def assert_not_in_archive(response: Any, archive: str = f"{PUBLIC}/archive/") -> None:
    """A page in the public pages' style (a reader follows "View in browser"
    to it), still a 404, that links the archive's index."""
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert '<html lang="en">' in text and "<title>" in text
    assert "<h1>This email is not in the archive</h1>" in text
    assert f'href="{archive}"' in text


def test_unknown_unsent_and_post_mailings_get_404(client: TestClient, store: Store) -> None:
    store.add("vic@example.com")
    store.send("tending-a-winter-allotment")  # a post mailing, id 1
    unsent, _ = send_digest(store, deliver=False)
    post_mailing = unsent - 1
    for path in (
        f"/archive/digest/{post_mailing}",  # not a digest
        f"/archive/digest/{unsent}",  # planned, nothing sent yet
        "/archive/digest/9999",
        "/archive/digest/0",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert_not_in_archive(response)
    # Not a number: no digest route, and no post with that id either.
    assert client.get("/archive/digest/abc").status_code == 404


@pytest.mark.parametrize("mailing_id", [str(2**31), str(2**63), "9" * 40])
def test_a_mailing_id_too_big_for_the_database_is_404(
    database_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mailing_id: str
) -> None:
    """Not a 500 from the driver's integer overflow (SQLite) nor a 503 from
    PostgreSQL's "integer out of range": ids are 32-bit there."""
    store = make_store(copy_site(tmp_path, monkeypatch))
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        response = client.get(f"/archive/digest/{mailing_id}")
    assert_not_in_archive(response)


def test_not_in_archive_links_the_index_under_the_path_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy_site(tmp_path, monkeypatch)
    config.write_text(config.read_text().replace(f'"{PUBLIC}"', f'"{PUBLIC}/news"'))
    store = make_store(config)
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        for path in ("/news/archive/digest/9999", "/news/archive/no-such-post"):
            assert_not_in_archive(client.get(path), f"{PUBLIC}/news/archive/")
        index = client.get("/news/archive/")
    assert index.status_code == 200
