"""render: the default theme (golden files), templates, subject, inlining.

Golden files live in tests/golden/render/.  After an intended change to the
theme, regenerate them with

    NEWSLETTER_UPDATE_GOLDEN=1 pytest tests/test_render.py

and review the diff before committing.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from test_render_support import GOLDEN, POST_URL, make_post, make_settings, urls_in

from newsletter.email.render import (
    GMAIL_CLIP_BYTES,
    PLACEHOLDERS,
    render_digest,
    render_email,
    template_environment,
)
from newsletter.errors import RenderError, TemplateError

UPDATE = os.environ.get("NEWSLETTER_UPDATE_GOLDEN") == "1"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; rerun")
    assert actual == path.read_text(encoding="utf-8"), (
        f"{name} differs from the golden file; if intended, regenerate with "
        "NEWSLETTER_UPDATE_GOLDEN=1"
    )


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    template_environment.cache_clear()
    yield
    template_environment.cache_clear()


def render_default(**email_kw: object) -> tuple[str, str, str]:
    settings = make_settings(**email_kw)
    out = render_email(make_post(), settings, settings.lists["everything"])
    return out.subject, out.html, out.text


# --------------------------------------------------------------------------- golden


def test_default_theme_html_matches_golden() -> None:
    check_golden("email.html", render_default()[1])


def test_default_theme_text_matches_golden() -> None:
    check_golden("email.txt", render_default()[2])


def test_full_content_text_matches_golden() -> None:
    check_golden("email-full.txt", render_default(content="full")[2])


def test_digest_matches_golden() -> None:
    settings = make_settings()
    first = make_post()
    second = make_post(
        "A short second post about **sand fleas**.\n",
        post_id="sand-fleas",
        slug="sand-fleas",
        title="Sand Fleas",
        title_html="Sand Fleas",
        url="https://tides.example.com/notes/2024/06/15/sand-fleas.html",
        date=first.date.replace(day=15),
        image=None,
        authors=(),
    )
    out = render_digest([second, first], settings, settings.lists["weekly"])
    assert out.subject == "Tide Notes weekly: 2 new posts"
    assert out.post_id == "tide-pools+sand-fleas"
    assert out.html.index("Counting Life") < out.html.index("Sand Fleas")
    check_golden("digest.html", out.html)
    check_golden("digest.txt", out.text)


# --------------------------------------------------------------------------- theme content


def test_html_carries_every_required_piece() -> None:
    _, html, _ = render_default()
    assert 'class="preheader"' in html and "One Saturday, three rock pools" in html
    assert ">Tide Notes</a>" in html  # site title
    assert "Counting Life in <em>Tide Pools</em>" in html
    assert (
        'By <a href="https://example.org/defne"' in html and "Defne Kaya</a> and Sam Ortiz" in html
    )
    assert "8 June 2024" in html
    assert 'alt="A tide pool at dawn" width="600"' in html
    assert ">Read the full post</a>" in html
    assert "#Field work" in html and "#Biology" in html
    assert re.search(
        r'href="https://news.tides.example.com/archive/tide-pools"[^>]*>View in browser', html
    )
    assert re.search(rf'href="{PLACEHOLDERS["unsubscribe_url"]}"[^>]*>Unsubscribe', html)
    assert 'href="https://tides.example.com"' in html  # site link in the footer
    assert 'width="600"' in html and 'role="presentation"' in html


def test_excerpt_mode_stops_at_the_separator_full_mode_does_not() -> None:
    _, excerpt_html, _ = render_default()
    _, full_html, _ = render_default(content="full")
    assert "Tide pools are small laboratories" in excerpt_html
    assert "What we counted" not in excerpt_html
    assert "What we counted" in full_html and "Periwinkles" in full_html
    assert "Read it on the web" in full_html


def test_text_part_carries_the_same_content() -> None:
    _, _, text = render_default()
    assert text.startswith("Tide Notes · Tide Notes: every post\n")
    assert "Counting Life in Tide Pools\n===========================" in text
    assert "By Defne Kaya and Sam Ortiz · 8 June 2024" in text
    assert "Tide pools are small laboratories" in text
    assert re.search(rf"Read the full post:\s+<{re.escape(POST_URL)}>", text)
    assert re.search(rf"Unsubscribe:\s+<{PLACEHOLDERS['unsubscribe_url']}>\n", text)
    # No HTML leaks into it: its only angle brackets hold URLs (RFC 3986 App. C).
    bare = re.sub(r"<(?:https?://|mailto:|NLPH0)[^<>\s]*>", "", text)
    assert "<" not in bare.replace("<3", "")
    assert all(line in ("-- ", line.rstrip()) for line in text.splitlines())  # RFC 3676 "-- "


def test_media_queries_stay_in_style_everything_else_is_inlined() -> None:
    _, html, _ = render_default(content="full")
    styles = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)
    assert len(styles) == 1
    block = styles[0]
    assert "@media only screen and (max-width: 620px)" in block
    assert "@media (prefers-color-scheme: dark)" in block
    outside_media = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", block)
    assert outside_media.strip() == ""
    assert re.search(r"<td class=\"content\"[^>]* style='[^']*font-size:17px", html)
    assert re.search(r'<th style="[^"]*border:1px solid', html)


def test_all_urls_absolute_and_all_images_have_alt() -> None:
    _, html, _ = render_default(content="full")
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    for url in urls_in(html):
        if url.startswith("#"):  # a footnote link to its note, in this same email
            assert url[1:] in ids and url.startswith(("#fn:", "#fnref:")), url
            continue
        assert url.startswith(("https://", "mailto:")) or url == PLACEHOLDERS["unsubscribe_url"], (
            url
        )
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) >= 4
    assert all(' alt="' in img for img in images)
    assert "https://tides.example.com/notes/2024/06/08/assets/periwinkles.jpg" in html
    assert "https://tides.example.com/notes/2024/06/assets/notebook.jpg" in html
    assert "https://tides.example.com/images/rock-pool.jpg" in html


def test_a_background_url_in_a_style_is_absolute_in_the_email() -> None:
    """docs/templates.md: every link and image is made absolute against the
    post's URL; a raw-HTML hero's `style="background-image:url(...)"` was
    not, and premailer, which rewrites every style, must keep it so."""
    settings = make_settings(content="full")
    body = "<div style=\"background-image:url('/images/hero.png'); padding:20px\">Hero</div>\n"
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    assert "url('https://tides.example.com/images/hero.png')" in html
    assert "/images/hero.png" not in html.replace("https://tides.example.com/images/hero.png", "")


def test_post_content_is_sanitised_in_the_email() -> None:
    _, html, _ = render_default(content="full")
    lowered = html.lower()
    for tag in ("<script", "<iframe", "<form", "<object", "<embed", "onclick", "javascript:"):
        assert tag not in lowered
    assert "https://www.youtube.com/watch?v=aBcD123xyz9" in html
    assert "{:" not in html


def test_hostile_title_html_is_sanitised() -> None:
    settings = make_settings()
    post = make_post(title_html='Bad <script>alert(1)</script><img src=x onerror="y()">')
    out = render_email(post, settings, settings.lists["everything"])
    assert "<script" not in out.html and "onerror" not in out.html
    assert "alert(1)" not in out.html
    assert re.search(r"<h1[^>]*>.*?>Bad <img ", out.html, re.S)  # the safe part stays


def test_a_title_naming_an_element_keeps_its_words() -> None:
    """`The <script> tag explained` was mailed as "The": a lone element name
    was taken for a tag (a script's, with all that followed as its content).
    Only well-formed markup is HTML; the rest is text, escaped in the HTML."""
    from newsletter.posts.text import title_html, title_text

    settings = make_settings()
    heading = title_html("The <script> tag explained")
    post = make_post(
        title=title_text(heading),
        title_html=heading,
        description="Using <template> & Vec<T> in *Rust*",
    )
    out = render_email(post, settings, settings.lists["everything"])
    assert out.subject == "The <script> tag explained"
    assert "The &lt;script&gt; tag explained" in out.html
    assert "Using &lt;template&gt; &amp; Vec&lt;T&gt; in Rust" in out.html
    assert "<script" not in out.html and "<template" not in out.html
    assert "The <script> tag explained" in out.text


def test_front_matter_values_are_escaped_in_the_html_pieces() -> None:
    """The byline, the lead image and the tags come from the front matter as
    text: they were written into the HTML as they were (the shared macros
    file was not an escaping template), so an alt text could add an event
    handler to the image and a tag an element of its own."""
    from newsletter.posts.collection import Author

    settings = make_settings()
    post = make_post(
        image_alt='say "hi" & x" onerror="alert(1)',
        tags=("<img src=x onerror=alert(2)>", "R&D"),
        authors=(Author("Evil <i>Name</i>", 'https://example.org/a?b=1&c="2'),),
    )
    import lxml.html

    for out in (
        render_email(post, settings, settings.lists["everything"]),
        render_digest([post], settings, settings.lists["weekly"]),
    ):
        tree = lxml.html.fromstring(out.html)
        handlers = [a for e in tree.iter() for a in getattr(e, "attrib", {}) if a.startswith("on")]
        assert handlers == []
        [hero] = tree.find_class("hero-img")
        assert hero.get("alt") == 'say "hi" & x" onerror="alert(1)'
        assert tree.xpath("//i") == []
        [author] = [a for a in tree.iter("a") if a.text == "Evil <i>Name</i>"]
        assert author.get("href") == 'https://example.org/a?b=1&c="2'
        assert "By Evil <i>Name</i> · 8 June 2024" in out.text  # the text part stays text
    tree = lxml.html.fromstring(render_email(post, settings, settings.lists["everything"]).html)
    assert [t.text for t in tree.find_class("tag")] == ["#<img src=x onerror=alert(2)>", "#R&D"]
    assert len(tree.xpath("//img")) == 1  # the hero alone


def test_no_author_no_image_no_description() -> None:
    settings = make_settings()
    post = make_post(authors=(), image=None, description=None, tags=())
    out = render_email(post, settings, settings.lists["everything"])
    assert "By " not in out.text.split("\n\n")[2]
    assert 'class="hero-img"' not in out.html and 'class="tags"' not in out.html
    assert "8 June 2024" in out.text


# --------------------------------------------------------------------------- subject


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ post.title }}", "Counting Life in Tide Pools"),
        ("[{{ site.title }}] {{ post.title }}", "[Tide Notes] Counting Life in Tide Pools"),
        (
            "{{ post.title }}\r\nBcc: victim@example.org",
            "Counting Life in Tide Pools Bcc: victim@example.org",
        ),
        (
            "  {{ post.title }}\n\n\t({{ list.title }})  ",
            "Counting Life in Tide Pools (Tide Notes: every post)",
        ),
        ("Fish & {{ post.tags[0] }} <3", "Fish & Field work <3"),
    ],
)
def test_subject_is_one_line_of_plain_text(template: str, expected: str) -> None:
    assert render_default(subject=template)[0] == expected


def test_title_with_newlines_cannot_break_the_subject() -> None:
    settings = make_settings()
    post = make_post(title="Line one\r\nBcc: x@example.org\u2028more")
    out = render_email(post, settings, settings.lists["everything"])
    assert out.subject == "Line one Bcc: x@example.org more"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{{ post.nope }}",
            "subject template: 'newsletter.posts.model.Post object' has no attribute 'nope'",
        ),
        ("{{ post.title", "subject template:"),
        ("{{ '' }}", "the subject template renders to nothing"),
        ("{{ post.title + 1 }}", "subject template: TypeError: can only concatenate str"),
    ],
)
def test_bad_subject_template_is_reported_with_its_key(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_default(subject=template)
    assert info.value.key == "email.subject"
    assert message in str(info.value)


def test_the_site_links_go_to_the_blogs_home_with_its_baseurl() -> None:
    """A GitHub project site lives at url + baseurl (`https://user.github.io/repo/`):
    the site title, the logo and the text footer link there, not to the host
    alone (another site, or a 404).  Without a baseurl they are `site.url`."""
    settings = make_settings(logo="/logo.png")
    site = replace(settings.site, baseurl="/repo")
    out = render_email(make_post(), replace(settings, site=site), settings.lists["everything"])
    home = "https://tides.example.com/repo/"
    links = re.findall(r'<a [^>]*href="(https://tides\.example\.com[^"]*)"', out.html)
    assert links.count(home) == 2, links  # the logo (else the title) and the footer
    assert 'https://tides.example.com"' not in out.html
    assert f"Tide Notes: <{home}>" in out.text
    plain = render_email(make_post(), settings, settings.lists["everything"])
    assert "Tide Notes: <https://tides.example.com>" in plain.text


def test_a_missing_value_in_the_subject_is_no_text_not_none() -> None:
    """Jinja prints None as "None"; in a subject that is a word the reader
    sees (a post without `description:`).  Liquid prints nil as nothing: so
    does the subject, and one with nothing left is the error it always was."""
    settings = make_settings(subject="{{ post.title }}{{ post.description }}")
    post = make_post(description=None)
    assert render_email(post, settings, settings.lists["everything"]).subject == post.title
    settings = make_settings(subject="{{ post.description }}")
    with pytest.raises(TemplateError, match="the subject template renders to nothing"):
        render_email(post, settings, settings.lists["everything"])


# --------------------------------------------------------------------------- user templates


def test_a_theme_copied_before_the_split_macros_escapes_too(tmp_path: Path) -> None:
    """A theme folder whose copies of the templates import from "_macros.j2"
    (as the default theme's did) gets the same escaped pieces, each once,
    and plain text in its text part."""
    import lxml.html

    from newsletter.posts.collection import Author

    theme = Path(__file__).resolve().parents[1] / "templates"
    for name, kind in (("email.html.j2", "html"), ("email.txt.j2", "txt")):
        source = (theme / name).read_text(encoding="utf-8")
        old = source.replace(f'"_macros.{kind}.j2"', '"_macros.j2"')
        assert old != source
        (tmp_path / name).write_text(old, encoding="utf-8")
    settings = make_settings(templates_dir=tmp_path)
    post = make_post(
        image_alt='x" onerror="y()', authors=(Author("A & <b>B</b>", "https://e.org/"),)
    )
    out = render_email(post, settings, settings.lists["everything"])
    default = render_email(post, make_settings(), settings.lists["everything"])
    assert (out.html, out.text) == (default.html, default.text)
    tree = lxml.html.fromstring(out.html)
    assert tree.find_class("hero-img")[0].get("alt") == 'x" onerror="y()'
    assert [a.text for a in tree.iter("a") if a.get("href") == "https://e.org/"] == ["A & <b>B</b>"]
    assert "By A & <b>B</b> · 8 June 2024" in out.text


def test_user_template_overrides_one_file_and_falls_back_for_the_rest(tmp_path: Path) -> None:
    (tmp_path / "email.txt.j2").write_text(
        "CUSTOM {{ post.title }} {{ unsubscribe_url }}\n", encoding="utf-8"
    )
    _, html, text = render_default(templates_dir=tmp_path)
    # (an unsubscribe URL is long: over 78 columns it gets a line of its own)
    assert text == f"CUSTOM Counting Life in Tide Pools\n{PLACEHOLDERS['unsubscribe_url']}\n"
    assert "Read the full post" in html  # default theme still used for HTML


def test_user_css_override_is_inlined(tmp_path: Path) -> None:
    (tmp_path / "email.css").write_text(".title { color: #123456; }\n", encoding="utf-8")
    _, html, _ = render_default(templates_dir=tmp_path)
    assert re.search(r'<h1 class="title" style="[^"]*color:#123456', html)


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "email.html.j2").write_text("<p>ok</p>\n<p>{% if %}</p>\n", encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        render_default(templates_dir=tmp_path)
    assert info.value.line == 2
    assert info.value.path == tmp_path / "email.html.j2"
    assert str(info.value).startswith(f"{tmp_path / 'email.html.j2'}:2: template syntax error")


def test_undefined_variable_in_template_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "email.txt.j2").write_text("{{ post.no_such_field }}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="no_such_field"):
        render_default(templates_dir=tmp_path)


@pytest.mark.parametrize(
    ("files", "where", "message"),
    [
        (
            {"email.txt.j2": "ok\n{{ post.title + 1 }}\n"},
            ("email.txt.j2", 2),
            "TypeError: can only",
        ),
        ({"email.html.j2": "{{ 1 / 0 }}"}, ("email.html.j2", 1), "ZeroDivisionError"),
        (
            {"email.html.j2": '{% include "email.html.j2" %}'},
            ("email.html.j2", 1),
            "RecursionError",
        ),
        (
            {"email.html.j2": 'a\n{% include "part.j2" %}', "part.j2": "\n\n{{ 1 / 0 }}"},
            ("part.j2", 3),
            "ZeroDivisionError",
        ),
        ({"email.txt.j2": "\n{{ post.no_such_field }}\n"}, ("email.txt.j2", 2), "no_such_field"),
    ],
    ids=["type-error", "division", "includes-itself", "in-an-include", "undefined"],
)
def test_a_failing_expression_is_the_templates_error_at_its_line(
    tmp_path: Path, files: dict[str, str], where: tuple[str, int], message: str
) -> None:
    # Each but the last was a Python traceback out of render, send and run.
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        render_default(templates_dir=tmp_path)
    assert (info.value.path, info.value.line) == (tmp_path / where[0], where[1])
    assert message in str(info.value)


def test_missing_templates_dir_is_a_config_key_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        render_default(templates_dir=tmp_path / "nope")
    assert info.value.key == "email.templates_dir"


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b".title { color: red; }"
        self.send_response(200)
        self.send_header("Content-Type", "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_inlining_never_fetches_remote_stylesheets(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        (tmp_path / "email.html.j2").write_text(
            f'<html><head><link rel="stylesheet" href="{base}/linked.css">'
            f'<style>@import url("{base}/imported.css");\np {{ color: blue; }}</style>'
            "</head><body><p>{{ post.title }}</p></body></html>\n",
            encoding="utf-8",
        )
        _, html, _ = render_default(templates_dir=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert _CountingHandler.hits == []
    assert '<p style="color:blue">Counting Life in Tide Pools</p>' in html
    assert "linked.css" not in html and "@import" not in html


def test_gmail_clip_warning_over_102_kb() -> None:
    settings = make_settings(content="full")
    big = "\n\n".join(f"Paragraph {i} " + "lorem ipsum " * 60 for i in range(180))
    out = render_email(make_post(big), settings, settings.lists["everything"])
    assert len(out.html.encode()) > GMAIL_CLIP_BYTES
    assert len(out.warnings) == 1 and "Gmail clips messages over 102 KB" in out.warnings[0]
    small = render_email(make_post(), settings, settings.lists["everything"])
    assert small.warnings == ()


def test_digest_needs_posts() -> None:
    settings = make_settings()
    with pytest.raises(RenderError, match="a digest needs at least one post"):
        render_digest([], settings, settings.lists["weekly"])


def test_rendering_is_deterministic() -> None:
    assert render_default() == render_default()


def test_render_does_not_mutate_post() -> None:
    post = make_post()
    settings = make_settings()
    before = replace(post)
    render_email(post, settings, settings.lists["everything"])
    assert post == before


def test_theme_ships_in_the_wheel_configuration() -> None:
    """Every theme file matches pyproject's package-data for newsletter.templates
    (checked by hand with `pip wheel . -w /tmp/w --no-deps`; no network here)."""
    import fnmatch
    import importlib.resources
    import tomllib

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    tool = config["tool"]["setuptools"]
    assert tool["package-dir"]["newsletter.templates"] == "templates"
    assert "newsletter.templates" in tool["packages"]
    globs = tool["package-data"]["newsletter.templates"]
    theme = [p.name for p in (root / "templates").iterdir() if p.suffix in (".j2", ".css")]
    assert {"email.html.j2", "email.txt.j2", "digest.html.j2", "digest.txt.j2"} <= set(theme)
    for name in theme:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
        assert importlib.resources.files("newsletter.templates").joinpath(name).is_file()
