"""The public app's pages: their compiled templates kept in the state folder
between starts (as the preview's), and never a stale one after an edit."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_web_support import (
    Store,
    as_a_new_process,
    copy_site,
    edit_page,
    make_store,
    refuse_to_compile,
)

from newsletter.web.public import create_public_app

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

# A page from each module that makes them: the unsubscribe help and the one
# answer to a bad token (public), the signup form (signup), a bad
# preferences link (preferences), a bad confirmation link, the archive.
PAGES = {
    "/unsubscribe/": 200,
    "/unsubscribe/forged": 404,
    "/subscribe": 404,  # no list is public in the fixture: the "closed" page
    "/preferences/forged": 404,
    "/confirm/forged": 404,
    "/archive/": 200,
}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(copy_site(tmp_path, monkeypatch))


def served(store: Store, paths: list[str] | None = None) -> dict[str, str]:
    """Each page's text, from a new app (as `newsletter serve` makes one)."""
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    found = {}
    with TestClient(app, base_url="https://news.lantern.example.com") as client:
        for path in paths or list(PAGES):
            answer = client.get(path)
            assert answer.status_code == PAGES[path], path
            assert "<html" in answer.text
            found[path] = answer.text
    return found


def test_the_public_pages_are_compiled_once_and_kept_in_the_state_folder(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_a_new_process()
    first = served(store)
    assert list((store.settings.state_dir / "jinja").iterdir())
    as_a_new_process()
    with monkeypatch.context() as patched:
        refuse_to_compile(patched)
        again = served(store)
    assert again == first  # the public pages carry no nonce: the same bytes
    assert "Unsubscribing" in again["/unsubscribe/"]


def test_an_edited_public_template_is_compiled_again_not_served_stale(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_a_new_process()
    assert "Edited heading" not in served(store, ["/unsubscribe/"])["/unsubscribe/"]
    as_a_new_process()
    edit_page(monkeypatch, "public_help.html", lambda s: s.replace("<h1>", "<h1>Edited heading "))
    assert (
        "<h1>Edited heading Unsubscribing</h1>" in served(store, ["/unsubscribe/"])["/unsubscribe/"]
    )
    # and the base the public pages extend
    as_a_new_process()
    edit_page(monkeypatch, "public_base.html", lambda s: s.replace("<body>", "<body>Edited base"))
    assert "Edited base" in served(store, ["/subscribe"])["/subscribe"]


def test_the_signup_snippet_is_compiled_once_and_kept_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`newsletter snippet` compiled its form from source in every process
    (nothing kept: ~3-7 ms against ~0.5 ms to read the kept code back); now
    it keeps and reuses it as the public pages do."""
    from newsletter.config import load_settings
    from newsletter.web.snippet import signup_snippet

    config = copy_site(tmp_path, monkeypatch)
    title = 'title = "Lantern Notes letters"\n'
    config.write_text(config.read_text().replace(title, title + "public = true\n"))
    settings = load_settings(config)
    as_a_new_process()
    first = signup_snippet(settings, ("letters",))
    as_a_new_process()
    with monkeypatch.context() as patched:
        refuse_to_compile(patched)
        again = signup_snippet(settings, ("letters",))
    assert again == first
    assert 'name="email"' in again
