"""What the preview keeps between starts and leaves until after its first page,
and that neither ever shows a stale template or a stale post."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
from starlette.testclient import TestClient
from test_web_support import copy_site

from newsletter.config import load_settings
from newsletter.web import pages
from newsletter.web.preview import create_preview_app

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


def as_a_new_process() -> None:
    """Only what is on disk is left: the pages' environments are made again."""
    pages.environment.cache_clear()


def refuse_to_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a template was compiled")

    monkeypatch.setattr(jinja2.Environment, "compile", compile_)


def edit_page(monkeypatch: pytest.MonkeyPatch, name: str, edit: Callable[[str], str]) -> None:
    """The preview's pages ship inside the package: an edit (an upgrade, a
    developer's change) reaches Jinja2 as new source from the same file name."""
    source_of = jinja2.PackageLoader.get_source

    def get_source(
        self: jinja2.PackageLoader, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = source_of(self, environment, template)
        return (edit(source) if template == name else source), filename, uptodate

    monkeypatch.setattr(jinja2.PackageLoader, "get_source", get_source)


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
