"""An undefined variable renders as nothing — in Jekyll and here — so the
reader sees a hole ("the release of Ruby ."); `check` and the preview's lint
panel name the post, the line and the variable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_web_support import copy_site

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.posts import liquid
from newsletter.web.preview import create_preview_app


def _render(text: str, first_line: int = 1) -> liquid.LiquidResult:
    return liquid.render(
        text,
        site={"title": "T", "data": {"releases": [{"version": "4.2.1"}]}},
        page={"title": "P"},
        post_url=lambda _: None,
        link=lambda _: None,
        first_line=first_line,
    )


def test_undefined_variable_is_a_warning_with_its_line() -> None:
    result = _render(
        "Known {{ site.data.releases.first.version }}.\n\nRuby {{ site.data.ruby.version }}.", 7
    )
    assert result.text == "Known 4.2.1.\n\nRuby ."
    assert [(w.message, w.line) for w in result.warnings] == [
        ("undefined variable 'site.data.ruby.version' renders as nothing", 9)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "{% if site.data.ruby %}x{% endif %}",  # a test, not output
        "{{ site.data.ruby.version | default: 'soon' }}",  # a default fills the hole
        "{% for r in site.data.ruby %}{{ r }}{% endfor %}",  # an empty loop
        "{{ page.title }} {{ site.title }}",
    ],
)
def test_no_warning_where_nothing_is_lost(text: str) -> None:
    assert _render(text).warnings == ()


def test_the_same_variable_on_two_lines_is_two_warnings_one_per_line() -> None:
    result = _render("{{ nope }} {{ nope }}\n{{ nope }}")
    assert [w.line for w in result.warnings] == [1, 2]


def _add_post(site: Path, name: str, body: str) -> None:
    posts = site / "_posts" if (site / "_posts").is_dir() else site / "posts"
    (posts / name).write_text(f"---\ntitle: Holes\n---\n\n{body}\n", encoding="utf-8")


def test_check_names_post_line_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = copy_site(tmp_path, monkeypatch)
    monkeypatch.chdir(config.parent)
    _add_post(
        config.parent, "2024-05-05-holes.md", "The release of Ruby {{ site.data.ruby.version }}."
    )
    result = CliRunner().invoke(main, ["check", "--json"])
    problems = json.loads(result.stdout)
    found = [p for p in problems if "site.data.ruby.version" in p["message"]]
    assert len(found) == 1
    assert found[0]["severity"] == "warning"
    assert found[0]["path"].endswith("2024-05-05-holes.md")
    assert found[0]["line"] == 5


def test_lint_panel_shows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = copy_site(tmp_path, monkeypatch)
    _add_post(
        config.parent, "2024-05-05-holes.md", "The release of Ruby {{ site.data.ruby.version }}."
    )
    app = create_preview_app(lambda: load_settings(config), live=False)
    with TestClient(app, base_url="http://127.0.0.1:8025") as client:
        index = client.get("/").text
        post_id = next(m for m in re.findall(r'href="/post/([^"?]+)"', index) if "holes" in m)
        page = client.get(f"/post/{post_id}").text
    assert "undefined variable &#39;site.data.ruby.version&#39; renders as nothing" in page or (
        "undefined variable 'site.data.ruby.version' renders as nothing" in page
    )
