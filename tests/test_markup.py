"""markup: Markdown features, sanitising, absolute URLs, HTML → text."""

from __future__ import annotations

import html
import textwrap
import unicodedata

import lxml.html
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.errors import RenderError
from newsletter.posts import textwidth
from newsletter.posts.markup import absolute_url, html_to_text, markdown_to_html, video_link

BASE = "https://blog.example.com/notes/2024/06/08/post.html"
HERE = "https://blog.example.com/notes/2024/06/08"  # the folder BASE is in
CDN = "https://res.cloudinary.com/demo/image/upload"
PNG = "data:image/png;base64,iVBORw0KGgo="


def md(text: str) -> str:
    return markdown_to_html(text, BASE)


def test_table_becomes_html_table_with_alignment() -> None:
    out = md("| a | b |\n|:--|--:|\n| 1 | 2 |\n")
    assert "<table>" in out and "<th" in out
    assert 'style="text-align: right;"' in out


def test_fenced_code_is_highlighted_with_inline_styles_only() -> None:
    out = md('```python\nprint("hi")\n```\n')
    assert '<span style="color:' in out  # Pygments noclasses
    assert 'class="k"' not in out and 'class="s2"' not in out
    assert "&quot;hi&quot;" in out or '"hi"' in out


def test_unlabelled_code_is_not_guessed() -> None:
    out = md("```\nplain words here\n```\n")
    assert "plain words here" in out
    assert "<span style" not in out.split("<code>")[1]


def test_footnotes_render_and_link_to_the_post() -> None:
    out = md("Claim[^1].\n\n[^1]: Source.\n")
    assert 'class="footnote"' in out
    assert f'href="{BASE}#fn:1"' in out


@pytest.mark.parametrize(
    "source",
    [
        "A paragraph.\n{: .notice}\n",
        "A paragraph.\n\n{: .notice}\n",
        "{:toc}\n\nText.\n",
        "Text with {: .inline} inside.\n",
        '{::options parse_block_html="true" /}\n\nText.\n',
    ],
)
def test_kramdown_attribute_lines_never_shown(source: str) -> None:
    out = md(source)
    assert "{:" not in out
    assert "A paragraph.</p>" in out or "Text" in out  # the prose itself stays


def test_attribute_line_applies_class_to_block() -> None:
    assert '<p class="notice">A paragraph.</p>' in md("A paragraph.\n{: .notice}\n")


def test_attribute_syntax_inside_code_is_kept() -> None:
    out = md("Use `{: .notice}` after a paragraph.\n\n```\n{: .x}\n```\n")
    assert out.count("{: .") == 2


@pytest.mark.parametrize(
    "html",
    [
        "<script>alert(1)</script>",
        '<script src="https://evil.example.com/x.js"></script>',
        '<form action="/x"><input name="a"><button>Go</button></form>',
        '<object data="/x.swf"><param name="a" value="b"></object>',
        '<embed src="/x.swf">',
        "<style>body{display:none}</style>",
        '<iframe srcdoc="<script>1</script>"></iframe>',
    ],
)
def test_active_content_never_reaches_an_email(html: str) -> None:
    out = md(f"Before.\n\n{html}\n\nAfter.\n").lower()
    for tag in ("<script", "<form", "<object", "<embed", "<iframe", "<style", "<input"):
        assert tag not in out
    assert "before." in out and "after." in out


def test_event_handlers_and_javascript_urls_are_removed() -> None:
    out = md(
        '<p onclick="x()">Hi <a href="javascript:alert(1)" onmouseover="y()">a</a> '
        '<a href="  JaVa\tScRiPt:alert(2)">b</a> <img src="data:text/html,x" alt="d"></p>\n'
    )
    assert "onclick" not in out and "onmouseover" not in out
    assert "javascript" not in out.lower().replace("\t", "")
    assert "data:text/html" not in out


def test_scripted_styles_are_removed_plain_styles_kept() -> None:
    out = md(
        '<p style="width: expression(alert(1))">a</p>\n\n'
        '<p style="background: url(&quot;java\\script:x()&quot;)">b</p>\n\n'
        '<p style="color: red">c</p>\n'
    )
    assert "expression" not in out and "script:" not in out
    assert '<p style="color: red">c</p>' in out


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (
            "background-image:url('/images/hero.png'); padding:20px",
            "background-image:url('https://blog.example.com/images/hero.png'); padding:20px",
        ),
        ('background: url("hero.png") no-repeat', f'background: url("{HERE}/hero.png") no-repeat'),
        (
            "background:URL( ../x.png )",
            "background:URL(https://blog.example.com/notes/2024/06/x.png)",
        ),
        (
            "background:url(//cdn.example.net/x.png)",
            "background:url(https://cdn.example.net/x.png)",
        ),
        # Absolute and data: URLs are left as they are.
        (
            "background:url(https://cdn.example.net/a.png)",
            "background:url(https://cdn.example.net/a.png)",
        ),
        (f"background:url('{PNG}')", f"background:url('{PNG}')"),
        (f"background:url({PNG})", f"background:url({PNG})"),
        # Two in one declaration; a space is kept inside the quotes.
        (
            "background:url(a.png), url('b c.png')",
            f"background:url({HERE}/a.png), url('{HERE}/b c.png')",
        ),
    ],
)
def test_urls_in_a_style_attribute_are_made_absolute(style: str, expected: str) -> None:
    """A relative url() in an inline style (a raw-HTML hero block) was left
    relative: in an email it resolves against nothing, and the image is lost."""
    out = md(f'<div style="{html.escape(style)}">Hero</div>\n')
    assert lxml.html.fragment_fromstring(out).get("style") == expected


def test_a_style_with_a_dangerous_url_is_removed() -> None:
    """A url() no link could have (vbscript:, an unknown scheme) takes its
    style with it, as expression() and javascript: did and still do."""
    out = md(
        '<p style="color: red; background: url(vbscript:msgbox(1))">a</p>\n\n'
        '<p style="background: url(&quot;wyciwyg://0/x&quot;)">b</p>\n\n'
        "<p style=\"background: url('java\tscript:x()')\">c</p>\n\n"
        '<p style="width: expression(alert(1)); background: url(/x.png)">d</p>\n'
    )
    assert "style" not in out and "script" not in out and "wyciwyg" not in out
    assert all(f"<p>{text}</p>" in out for text in "abcd")


def test_attribute_list_cannot_smuggle_handlers() -> None:
    out = md('[link](x.html){: onclick="evil()" }\n')
    assert "onclick" not in out and "evil" not in out
    assert '<a href="https://blog.example.com/notes/2024/06/08/x.html">link</a>' in out


@pytest.mark.parametrize(
    ("src", "expected_url", "service"),
    [
        (
            "https://www.youtube.com/embed/aBcD123xyz9",
            "https://www.youtube.com/watch?v=aBcD123xyz9",
            "YouTube",
        ),
        (
            "https://www.youtube-nocookie.com/embed/aBcD123xyz9?start=3",
            "https://www.youtube.com/watch?v=aBcD123xyz9",
            "YouTube",
        ),
        ("//player.vimeo.com/video/76979871", "https://vimeo.com/76979871", "Vimeo"),
    ],
)
def test_embedded_video_becomes_a_link(src: str, expected_url: str, service: str) -> None:
    out = md(f'Watch:\n\n<iframe src="{src}" title="Our clip"></iframe>\n')
    assert "<iframe" not in out
    assert f'<a href="{expected_url}">▶ Watch Our clip on {service}</a>' in out


def test_unknown_iframe_and_video_tag_become_links() -> None:
    out = md(
        '<iframe src="/widgets/map.html"></iframe>\n\n'
        '<video controls><source src="media/clip.mp4" type="video/mp4"></video>\n'
    )
    assert "https://blog.example.com/widgets/map.html" in out
    assert "https://blog.example.com/notes/2024/06/08/media/clip.mp4" in out
    assert "<video" not in out and "<iframe" not in out


def test_video_link_for_youtu_be() -> None:
    assert video_link("https://youtu.be/xyz")[0] == "https://www.youtube.com/watch?v=xyz"


def test_iframe_without_src_disappears() -> None:
    assert md("<iframe></iframe>\n\nText.\n") == "<p>Text.</p>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/x.png", "https://blog.example.com/x.png"),
        ("assets/x.png", "https://blog.example.com/notes/2024/06/08/assets/x.png"),
        ("../assets/x.png", "https://blog.example.com/notes/2024/06/assets/x.png"),
        ("../../../../../x.png", "https://blog.example.com/x.png"),
        ("//cdn.example.org/x.png", "https://cdn.example.org/x.png"),
        ("#section", BASE + "#section"),
        ("?page=2", "https://blog.example.com/notes/2024/06/08/post.html?page=2"),
        ("https://other.example.org/a", "https://other.example.org/a"),
        ("mailto:me@example.com", "mailto:me@example.com"),
    ],
)
def test_urls_resolve_like_a_browser(value: str, expected: str) -> None:
    assert absolute_url(value, BASE) == expected
    out = md(f"[a]({value}) ![b]({value})\n")
    assert out.count(f'"{expected}"') == 2


def test_srcset_is_made_absolute() -> None:
    out = md('<img src="a.png" srcset="a.png 1x, /b.png 2x" alt="x">\n')
    assert (
        'srcset="https://blog.example.com/notes/2024/06/08/a.png 1x, https://blog.example.com/b.png 2x"'
        in out
    )


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        # Commas inside a URL are part of it (Cloudinary, imgix transformations).
        (
            f"{CDN}/w_400,c_fill/a.jpg 400w, {CDN}/w_800,c_fill/a.jpg 800w",
            f"{CDN}/w_400,c_fill/a.jpg 400w, {CDN}/w_800,c_fill/a.jpg 800w",
        ),
        (f"{PNG} 1x, /b.png 2x", f"{PNG} 1x, https://blog.example.com/b.png 2x"),
        # A comma right after a descriptor, or commas ending a URL, end the candidate.
        ("a.png 1x,/b.png 2x", f"{HERE}/a.png 1x, https://blog.example.com/b.png 2x"),
        ("a.png,, b.png 2x", f"{HERE}/a.png, {HERE}/b.png 2x"),
        # A descriptor's parentheses hold their commas (the standard's "in parens").
        ("a.png 400w (x, y), b.png 800w", f"{HERE}/a.png 400w (x, y), {HERE}/b.png 800w"),
        # Any whitespace separates; a dangerous candidate is dropped, the others kept.
        ("\n  a.png\t1x ,\n javascript:x() 2x, b.png 3x ", f"{HERE}/a.png 1x, {HERE}/b.png 3x"),
    ],
)
def test_srcset_is_parsed_as_the_html_standard_does(srcset: str, expected: str) -> None:
    """srcset was split on every comma: a Cloudinary URL (`w_400,c_fill`) or
    a data: URL was cut apart and its pieces resolved against the post's URL."""
    out = md(f'<img src="/a.png" srcset="{srcset}" alt="x">\n')
    assert f'srcset="{expected}"' in out


def test_a_picture_source_srcset_keeps_the_commas_of_its_url() -> None:
    out = md(
        f'<picture><source srcset="{CDN}/f_webp,w_800/a.webp" type="image/webp">'
        f'<img src="{CDN}/w_800/a.jpg" alt="x"></picture>\n'
    )
    assert f'<source srcset="{CDN}/f_webp,w_800/a.webp" type="image/webp">' in out


def test_every_image_gets_alt() -> None:
    out = md('<img src="/a.png">\n\n![](/b.png)\n\n<img src="/c.png" title="Cee">\n')
    assert out.count('alt="') == 3
    assert 'alt="Cee"' in out


def test_raw_html_is_kept() -> None:
    out = md('<div class="note"><strong>Kept</strong> as written</div>\n')
    assert '<div class="note"><strong>Kept</strong> as written</div>' in out


def test_empty_and_broken_input() -> None:
    assert md("") == ""
    assert md("   \n") == ""
    out = md("<div><p>unclosed <b>bold\n\nnext")
    assert "unclosed" in out and "next" in out


def test_top_level_text_is_escaped() -> None:
    from newsletter.posts.markup import sanitise_html

    assert sanitise_html("Fish &amp; <b>chips</b>", BASE) == "Fish &amp; <b>chips</b>"
    assert sanitise_html("a &lt;script&gt;", BASE) == "a &lt;script&gt;"


# --------------------------------------------------------------------------- html_to_text


def test_text_links_headings_lists_and_code() -> None:
    html = md(
        "## Section\n\nSee [the docs](/docs/) and <https://example.org/x>.\n\n"
        "- one\n- two\n\n1. first\n2. second\n\n```\ncode  line\n```\n\n> quoted\n"
    )
    text = html_to_text(html)
    assert "Section\n-------" in text  # an h2: a section rule, not the title's "="
    # RFC 3986 Appendix C: the URL in angle brackets; a URL that is its own
    # text written once.
    assert "the docs <https://blog.example.com/docs/>" in text
    assert "and\n<https://example.org/x>." in text and "https://example.org/x <" not in text
    assert "- one\n- two" in text and "1. first\n2. second" in text
    assert "    code  line" in text
    assert "> quoted" in text


def test_text_wraps_at_72_but_never_breaks_a_url() -> None:
    url = "https://example.org/" + "a" * 150
    text = html_to_text(f"<p>{'word ' * 40}<a href='{url}'>x</a></p>")
    assert url in text
    assert all(len(line) <= 72 or url in line for line in text.splitlines())


# 32 wide characters, 64 columns, and no space.
JAPANESE = "これは日本語の段落です。句読点で改行されるかどうかを確認します。"


def width_of(line: str) -> int:
    """Display columns, measured independently of `posts.textwidth`."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def test_cjk_text_wraps_at_72_display_columns() -> None:
    """A Japanese paragraph (and a quote of one, a list item) stayed one
    line, however long: textwrap breaks only at spaces and counts characters.
    The excerpt's text (`html_to_text`) now wraps it by display columns."""
    text = html_to_text(md(f"{JAPANESE * 3}\n\n> {JAPANESE * 2}\n"))
    paragraph, quote = text.split("\n\n")
    assert "".join(paragraph.splitlines()) == JAPANESE * 3
    assert "".join(line.removeprefix("> ") for line in quote.splitlines()) == JAPANESE * 2
    for block in (paragraph, quote):
        *full, last = block.splitlines()
        assert all(64 <= width_of(line) <= 72 for line in full) and width_of(last) <= 72
        assert not any(line.removeprefix("> ")[0] in "。、" for line in block.splitlines())


@settings(max_examples=500, deadline=None)
@given(
    st.text(st.sampled_from("ab-.:/ \t\n"), max_size=120),
    st.integers(1, 40),
    st.sampled_from(["", "> ", "    "]),
    st.sampled_from(["", "> ", "  "]),
)
def test_text_without_wide_characters_wraps_as_textwrap_does(
    text: str, width: int, first: str, rest: str
) -> None:
    """`textwidth.wrap` took over from textwrap: text without a wide
    character comes out exactly as before (the golden files rely on it)."""
    expected = textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=rest,
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    assert textwidth.wrap(text, width, first, rest) == expected


def test_an_ideographic_space_is_text_not_a_place_to_break() -> None:
    """U+3000 opens a Japanese paragraph; it must not become an ASCII space."""
    lines = textwidth.wrap("\u3000" + JAPANESE * 2, 72)
    assert "".join(lines) == "\u3000" + JAPANESE * 2 and len(lines) == 2


def test_a_cjk_table_too_wide_wraps_its_row_blocks_by_display_columns() -> None:
    """The "Header: value" lines of a table too wide for 78 columns wrap with
    their hanging indent; a CJK value was one line of 130 columns."""
    text = html_to_text(md(f"| 生物 | 場所 |\n|---|---|\n| {JAPANESE * 2} | 北 |\n"))
    first, *rest = text.splitlines()
    assert first.startswith("生物: これは") and width_of(first) <= 72
    assert rest[-1] == "場所: 北" and all(line.startswith("  ") for line in rest[:-1])
    assert all(width_of(line) <= 72 for line in rest)


def test_text_keeps_br_and_images_and_footnotes() -> None:
    text = html_to_text(
        md("line one<br>\nline two\n\n![A crab](/c.png)\n\nFact[^1].\n\n[^1]: Note.\n")
    )
    assert "line one\nline two" in text
    assert "[A crab]" in text
    assert "Fact[1]." in text and "#fn" not in text and "↩" not in text


def test_text_of_nothing_is_empty_and_entities_decode() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<p>Fish &amp; chips &lt;3</p>") == "Fish & chips <3"


@pytest.mark.parametrize(
    "fragment", ["\x00", "<html><body><p>x</p></body></html>", "<!-- only a comment -->"]
)
def test_odd_fragments_do_not_crash(fragment: str) -> None:
    assert "<" not in html_to_text(fragment)
    assert "<!--" not in markdown_to_html(fragment, BASE)


def test_markdown_failure_is_a_render_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import markdown

    def boom(self: markdown.Markdown, source: str) -> str:
        raise ValueError("extension exploded")

    monkeypatch.setattr(markdown.Markdown, "convert", boom)
    with pytest.raises(RenderError, match="cannot convert Markdown: extension exploded"):
        md("text")


def test_text_keeps_strikethrough_visible() -> None:
    """`~~was~~ is` says the opposite without its strike: the plain text part
    marks it as GFM writes it."""
    text = html_to_text(markdown_to_html("Price: ~~$20~~ $15, <s>old</s> <del> </del>new", BASE))
    assert text == "Price: ~~$20~~ $15, ~~old~~ new"
