"""What the preview keeps between starts and leaves until after its first page,
and that neither ever shows a stale template or a stale post."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import watchfiles
from starlette.testclient import TestClient
from test_web_support import as_a_new_process, copy_site, edit_page, refuse_to_compile

from newsletter.config import load_settings
from newsletter.web.preview import PreviewState, create_preview_app
from newsletter.web.server import RunningServer, preview_in_thread

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

BASE = "http://127.0.0.1:8025"
CLEAN = "tending-a-winter-allotment"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_site(tmp_path, monkeypatch)


def index_of(config: Path) -> str:
    app = create_preview_app(lambda: load_settings(config), live=False)
    with TestClient(app, base_url=BASE) as client:
        answer = client.get("/")
        assert answer.status_code == 200
        return answer.text


def without_nonces(page: str) -> str:
    """A page without its per-response script nonces."""
    return re.sub(r"nonce[-=]\"?[A-Za-z0-9_-]+", "nonce", page)


def test_the_pages_are_compiled_once_and_kept_in_the_state_folder(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_a_new_process()
    first = index_of(config)
    assert list((config.parent / ".newsletter" / "jinja").iterdir())
    as_a_new_process()
    with monkeypatch.context() as patched:
        refuse_to_compile(patched)
        again = index_of(config)
    assert without_nonces(again) == without_nonces(first)
    assert f'<tr data-post="{CLEAN}">' in again


def test_an_edited_page_template_is_compiled_again_not_served_stale(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_a_new_process()
    assert "Edited heading" not in index_of(config)
    as_a_new_process()
    edit_page(monkeypatch, "preview_index.html", lambda s: s.replace("<h1>", "<h1>Edited heading "))
    assert "<h1>Edited heading Lantern Notes</h1>" in index_of(config)
    # and its base, which the index extends
    as_a_new_process()
    edit_page(monkeypatch, "preview_base.html", lambda s: s.replace("<body>", "<body>Edited base"))
    assert "Edited base" in index_of(config)


# --------------------------------------------------------------------------- the watcher


@dataclass
class Spy:
    """watchfiles.awatch, recording at each start whether the app had answered
    a request by then, after running `before` (an edit landing just then).
    A round of watching starts two: the posts and the theme (recursively) and
    the configuration's folder (its top level)."""

    before: Callable[[], None] = lambda: None
    preview: PreviewState | None = None
    starts: list[bool] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = watchfiles.awatch

        def awatch(*args: Any, **kwargs: Any) -> Any:
            answered = self.preview.answered if self.preview is not None else None
            self.starts.append(answered is not None and answered.is_set())
            self.before()
            return real(*args, **kwargs)

        monkeypatch.setattr(watchfiles, "awatch", awatch)


def running_preview(config: Path, spy: Spy) -> RunningServer:
    running = preview_in_thread(lambda: load_settings(config))
    spy.preview = running.server.config.app.state.preview
    return running


def until_reload(lines: Iterator[str]) -> str:
    """The stream's lines up to its first reload event (a read timeout if none comes)."""
    for line in lines:
        if line == "event: reload":
            return line
    return "the stream ended"


def told_to_reload(url: str, seen: int) -> str:
    """What the stream of a page rendered at generation `seen` says first after hello."""
    with httpx.stream("GET", f"{url}/events?g={seen}", timeout=5) as stream:
        return until_reload(stream.iter_lines())


def generation_of(page: str) -> int:
    found = re.search(r"/events\?g=([0-9]+)", page)
    assert found is not None, "the page listens for reloads"
    return int(found.group(1))


def test_the_watcher_starts_once_the_first_page_went_out(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy()
    spy.install(monkeypatch)
    running = running_preview(config, spy)
    try:
        page = httpx.get(f"{running.url}/", timeout=10)
        assert page.status_code == 200
        post = config.parent / "posts" / "2024-05-19-a-lamp-that-listens.md"
        with httpx.stream("GET", f"{running.url}/events?g=0", timeout=5) as stream:
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(3)] == ["retry: 500", "event: hello", "data: 0"]
            post.write_text(post.read_text() + "\nOne more line.\n")
            assert until_reload(lines) == "event: reload"
    finally:
        running.stop()
    assert spy.starts == [True, True]


def test_a_post_edited_before_the_watcher_is_up_still_reloads_the_open_page(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page goes out before the watcher watches anything: a save that
    lands in between is caught up once it does."""
    post = config.parent / "posts" / "2024-05-19-a-lamp-that-listens.md"
    spy = Spy(before=lambda: post.write_text(post.read_text().replace("A Lamp", "A Radio")))
    spy.install(monkeypatch)
    running = running_preview(config, spy)
    try:
        page = httpx.get(f"{running.url}/", timeout=10)
        assert page.status_code == 200
        assert told_to_reload(running.url, generation_of(page.text)) == "event: reload"
        assert "A Radio That Listens" in httpx.get(f"{running.url}/", timeout=10).text
    finally:
        running.stop()
    assert spy.starts == [True, True]
