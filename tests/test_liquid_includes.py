"""Jekyll's `{% include %}`: parameters as `include.*`, a missing or broken
include costs only its own output (with a warning naming its line)."""

from __future__ import annotations

from pathlib import Path

from newsletter.posts import liquid


def _render(text: str, includes: Path | None) -> liquid.LiquidResult:
    return liquid.render(
        text,
        site={"title": "Site", "data": {"v": "4.2"}},
        page={"title": "Page"},
        post_url=lambda _: None,
        link=lambda _: None,
        first_line=10,
        includes=includes,
    )


def _includes(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "_includes"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_parameters_variables_and_nesting(tmp_path: Path) -> None:
    folder = _includes(
        tmp_path,
        {
            "box.html": "[{{ include.title }}|{{ include.n }}|{{ page.title }}|{% include parts/inner.html x=include.title %}]",
            "parts/inner.html": "<{{ include.x | upcase }}>",
        },
    )
    result = _render(
        '{% assign t = site.data.v %}{% include box.html title=t n="two words" %}', folder
    )
    assert result.text == "[4.2|two words|Page|<4.2>]"
    assert result.warnings == ()


def test_missing_and_broken_includes_cost_only_themselves(tmp_path: Path) -> None:
    folder = _includes(tmp_path, {"broken.html": "{% if x %}never closed", "ok.html": "ok"})
    text = "a {% include nope.html %}\nb {% include broken.html %}\nc {% include ok.html %} {{ page.title }}"
    result = _render(text, folder)
    assert result.text == "a \nb \nc ok Page"
    messages = [(w.line, w.message) for w in result.warnings]
    assert messages[0] == (10, "{% include nope.html %} dropped (not in _includes)")
    assert messages[1][0] == 11
    assert messages[1][1].startswith("{% include broken.html %} dropped: ")


def test_no_includes_folder_and_computed_names(tmp_path: Path) -> None:
    result = _render("x{% include a.html %}{% include {{ page.f }} %}y", None)
    assert result.text == "xy"
    assert [w.message for w in result.warnings] == [
        "{% include a.html %} dropped (not in _includes)",
        "{% include {{ page.f }} %} dropped (a computed include name)",
    ]


def test_include_cannot_leave_the_includes_folder(tmp_path: Path) -> None:
    folder = _includes(tmp_path, {"ok.html": "ok"})
    (tmp_path / "secret.txt").write_text("secret", encoding="utf-8")
    result = _render("{% include ../secret.txt %}", folder)
    assert "secret" not in result.text


def test_markdownify_in_an_include_is_html(tmp_path: Path) -> None:
    """Jekyll's markdownify makes HTML: inside an include's HTML block, where
    Markdown is not read again, '*upper*' showed with its asterisks."""
    from newsletter.config import load_settings
    from newsletter.posts import load_posts

    (tmp_path / "_config.yml").write_text("title: T\n", encoding="utf-8")
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    _includes(
        tmp_path,
        {"note.html": '<div class="note">\n  <p>{{ include.text | markdownify }}</p>\n</div>\n'},
    )
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / "2024-01-01-n.md").write_text(
        '---\ntitle: N\n---\n{% include note.html text="The *upper* site\'s closed." %}\n\n'
        "{{ '**bold**' | markdownify }}\n",
        encoding="utf-8",
    )
    (post,) = load_posts(load_settings(tmp_path / "newsletter.toml"), index=False).posts
    # `jekyll build`: <div class="note"><p><p>The <em>upper</em> site’s closed.</p>\n</p></div>
    assert "The <em>upper</em> site\u2019s closed." in post.body_html
    assert "<strong>bold</strong>" in post.body_html
    assert "*" not in post.body_html


def test_post_url_and_link_inside_an_include(tmp_path: Path) -> None:
    """`jekyll build` resolves them inside an include as in the post: here
    <a href="/blog/2024/01/01/a.html">A</a> <a href="/blog/about.html">About</a>."""
    from newsletter.config import load_settings
    from newsletter.posts import load_posts

    (tmp_path / "_config.yml").write_text(
        "url: https://example.com\nbaseurl: /blog\n", encoding="utf-8"
    )
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "about.md").write_text("---\ntitle: About\n---\nMe.\n", encoding="utf-8")
    _includes(
        tmp_path,
        {
            "related.html": '<p><a href="{% post_url 2024-01-01-a %}">A</a> '
            '<a href="{% link about.md %}">About</a></p>\n'
        },
    )
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / "2024-01-01-a.md").write_text("---\n---\nA.\n", encoding="utf-8")
    (tmp_path / "_posts" / "2024-01-02-b.md").write_text(
        "---\n---\n{% include related.html %}\n", encoding="utf-8"
    )
    posts = load_posts(load_settings(tmp_path / "newsletter.toml"), index=False).posts
    assert posts[1].body_html == (
        '<p><a href="https://example.com/blog/2024/01/01/a.html">A</a> '
        '<a href="https://example.com/blog/about.html">About</a></p>'
    )
