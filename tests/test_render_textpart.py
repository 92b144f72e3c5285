"""The text part and the excerpt as a reader sees them: footnotes an excerpt
does not refer to, quoted paragraphs, links, heading levels and widths,
tables.  Posts go through the real reader (a Jekyll site on disk) or through
`make_post`'s Markdown, then through `render_email`."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_render_support import POST_URL, make_post, make_settings

from newsletter.config import load_settings
from newsletter.email.render import render_email, template_environment
from newsletter.posts import load_posts
from newsletter.posts.collection import Post


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    template_environment.cache_clear()
    yield
    template_environment.cache_clear()


def read_post(tmp_path: Path, body: str) -> Post:
    """`body` as a post of a Jekyll site, read as `newsletter` reads it."""
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_config.yml").write_text("url: https://tides.example.com\ntimezone: UTC\n")
    (tmp_path / "_posts" / "2024-06-08-tide-pools.md").write_text(body, encoding="utf-8")
    config = tmp_path / "newsletter.toml"
    config.write_text('[site]\njekyll_config = "_config.yml"\n[lists.all]\n', encoding="utf-8")
    (post,) = load_posts(load_settings(config)).posts
    return post


def text_part(post: Post, content: str = "excerpt") -> str:
    settings = make_settings(content=content)
    return render_email(post, settings, settings.lists["everything"]).text


def body_of(text: str) -> str:
    """The post's part of the text: after the byline, before "Read …"."""
    start = text.index(" min read\n") + len(" min read\n")
    end = re.search(r"\nRead (the full post|it on the web)", text)
    assert end is not None
    return text[start : end.start()].strip("\n")


# --------------------------------------------------------------------------- footnotes


def test_an_excerpt_shows_only_the_footnotes_it_refers_to(tmp_path: Path) -> None:
    """Jekyll appends every footnote definition to an excerpt and kramdown
    shows the referenced ones; python-markdown printed them all, so an
    image-only excerpt ended in a stray "1. The note."."""
    post = read_post(
        tmp_path,
        "---\ntitle: Tide pools\nexcerpt_separator: <!--more-->\n---\n"
        "![A tide chart](/chart.png)\n\nRead second[^b].\n\n[^a]: Nobody refers to me.\n\n"
        "<!--more-->\n\nRead first[^c], then again[^b].\n\n[^c]: Note C.\n[^b]: Note B.\n",
    )
    assert 'id="fn:a"' not in post.excerpt_html and "Nobody refers" not in post.excerpt_text
    assert re.search(r'href="[^"]*#fn:b">1</a>', post.excerpt_html)  # kramdown's number
    assert body_of(text_part(post)).endswith("Read second[1].\n\n--------------------\n\n"
                                             "1. Note B.")  # fmt: skip
    full = body_of(text_part(post, "full"))
    assert "Nobody refers" not in full
    # kramdown numbers notes in the order the text first refers to them.
    assert "Read second[1]." in full and "Read first[2], then again[1]." in full
    assert full.endswith("1. Note B.\n2. Note C.")


def test_an_image_only_excerpt_has_no_footnote_list(tmp_path: Path) -> None:
    post = read_post(
        tmp_path,
        "---\ntitle: Tide pools\n---\n![A tide pool](/pool.jpg)\n\n"
        "The pool filled at noon[^n].\n\n[^n]: Exactly at noon.\n",
    )
    assert "footnote" not in post.excerpt_html
    assert body_of(text_part(post)) == "[A tide pool]"


def test_a_notes_second_back_link_is_numbered_and_never_an_emoji() -> None:
    body = "Once[^n] and twice[^n].\n\n[^n]: The note.\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    arrows = re.findall(r'class="footnote-backref"[^>]*>(.*?)</a>', html)
    assert arrows == ["↩\ufe0e", "↩\ufe0e<sup>2</sup>"]


# --------------------------------------------------------------------------- quotes


def test_a_quotes_paragraphs_stay_inside_the_quote() -> None:
    """A blank line without ">" between a quote's paragraphs ended the quote
    for every reader that colours or folds quoted text."""
    body = (
        "Before.\n\n> First quoted paragraph.\n>\n> Second quoted paragraph.\n>\n"
        "> > Nested one.\n> >\n> > Nested two.\n\nAfter.\n"
    )
    text = body_of(text_part(make_post(body), "full"))
    assert text == (
        "Before.\n\n> First quoted paragraph.\n>\n> Second quoted paragraph.\n>\n"
        "> > Nested one.\n> >\n> > Nested two.\n\nAfter."
    )


# --------------------------------------------------------------------------- links


def test_links_are_text_then_the_url_in_angle_brackets() -> None:
    """`text (url)` ended in a ")" a linkifier could take into the URL, or
    leave out of one that holds ")" itself (RFC 3986 Appendix C)."""
    body = (
        "See [the crab](https://en.example.org/wiki/Crab_(animal)), "
        "<https://tides.example.com/a>, "
        "[tides.example.com/b](https://tides.example.com/b/) and "
        "[mail us](mailto:editor@example.com) or "
        "[editor@example.com](mailto:editor@example.com).\n"
    )
    text = body_of(text_part(make_post(body), "full"))
    assert " ".join(text.split()) == (
        "See the crab <https://en.example.org/wiki/Crab_(animal)>, "
        "<https://tides.example.com/a>, <https://tides.example.com/b/> and "
        "mail us <mailto:editor@example.com> or editor@example.com."
    )


def test_every_url_of_the_text_part_is_in_angle_brackets() -> None:
    for content in ("excerpt", "full"):
        settings = make_settings(content=content, preferences_link=True)
        text = render_email(make_post(), settings, settings.lists["everything"]).text
        words = [w.strip(".,") for w in text.split() if re.search(r"://|SCRIBE0|ENCES0", w)]
        assert len(words) >= 5 and all(w.startswith("<") and w.endswith(">") for w in words), words


# --------------------------------------------------------------------------- headings


def test_the_posts_headings_are_ruled_below_the_title_by_level() -> None:
    """A post's `#`/`##` headings were underlined with "=", as the email's
    title: the reader could not tell a section from the title."""
    body = "Intro.\n\n# Part\n\nText.\n\n## Sub part\n\nText.\n\n### Detail\n\nText.\n"
    text = text_part(make_post(body), "full")
    assert "Counting Life in Tide Pools\n===========================" in text
    post = body_of(text)
    assert "Part\n----\n" in post and "Sub part\n~~~~~~~~\n" in post
    assert "Detail\n......\n" in post
    # A post that starts at h2 reads the same: levels are the email's, not the source's.
    shifted = re.sub(r"\n(#+) ", r"\n\1# ", body)
    assert body_of(text_part(make_post(shifted), "full")) == post


def test_a_cjk_heading_is_underlined_to_its_display_width() -> None:
    """ "天気の記録" takes ten columns; its rule took five."""
    body = "前書き。\n\n## 天気の記録\n\n本文。\n\n## Café ́ notes\n\nText.\n"
    post = body_of(text_part(make_post(body), "full"))
    assert "天気の記録\n----------\n" in post
    assert "Café ́ notes\n-----------\n" in post  # a combining mark takes no column


def test_a_digest_rules_the_posts_headings_below_its_post_titles() -> None:
    from newsletter.email.render import render_digest

    body = "## Part\n\nText.\n\n<!--more-->\n\nMore.\n"
    settings = make_settings()
    text = render_digest([make_post(body)], settings, settings.lists["weekly"]).text
    assert "Counting Life in Tide Pools\n---------------------------" in text
    assert "Part\n~~~~\n" in text


# --------------------------------------------------------------------------- tables


def test_a_table_that_fits_is_aligned_in_columns() -> None:
    """Rows were "Creature | Count" lines, no column lined up with the next."""
    body = (
        "| Creature | Count | Pool |\n|:--|--:|:-:|\n"
        "| Periwinkles | 41 | north |\n| Anemones | 7 | 天気 |\n| Crabs | 1203 | [x](/x) |\n"
    )
    text = body_of(text_part(make_post(body), "full"))
    assert text == (
        "Creature     Count  Pool\n"
        "-----------  -----  -------------------------------\n"
        "Periwinkles     41  north\n"
        "Anemones         7  天気\n"  # two wide characters take four columns
        "Crabs         1203  x <https://tides.example.com/x>"
    )


def test_a_table_too_wide_for_78_columns_reads_as_one_block_per_row() -> None:
    """A five-column row ran to 120 columns, then was wrapped mid-row."""
    body = (
        "Before.\n\n| Creature | Where | When | Count | Notes |\n|---|---|---|---|---|\n"
        "| Periwinkles on the north rock | the upper pool | at the lowest tide | 41 "
        "| counted twice by two people |\n| Crabs | under the weed | at noon | 3 | |\n\n"
        "> | Key | Value |\n> |---|---|\n> | "
        + "a long quoted value " * 3
        + "| "
        + "more " * 5
        + "|\n"
    )
    text = body_of(text_part(make_post(body), "full"))
    assert text == (
        "Before.\n\n"
        "Creature: Periwinkles on the north rock\nWhere: the upper pool\n"
        "When: at the lowest tide\nCount: 41\nNotes: counted twice by two people\n\n"
        "Creature: Crabs\nWhere: under the weed\nWhen: at noon\nCount: 3\n\n"
        "> Key: " + ("a long quoted value " * 3).strip() + "\n> Value: " + ("more " * 5).strip()
    )
    assert max(len(line) for line in text.splitlines()) <= 78


def test_a_table_without_a_header_row_is_aligned_without_a_rule() -> None:
    body = (
        "<table><tr><td>Tide</td><td>06:12</td></tr>"
        "<tr><td>Sunrise</td><td>05:40</td></tr></table>\n"
    )
    text = body_of(text_part(make_post(body), "full"))
    assert text == "Tide     06:12\nSunrise  05:40"


def test_a_table_in_a_list_item_counts_the_items_indent() -> None:
    """78 columns of table fit at the margin, not behind "- " and a quote."""
    head = "| " + " | ".join(["H" * 18] * 4) + " |\n|---|---|---|---|\n"
    row = "| " + " | ".join(["x" * 18] * 4) + " |\n"
    flat = body_of(text_part(make_post(head + row), "full"))
    assert flat.splitlines()[0] == "  ".join(["H" * 18] * 4)  # 78 columns: aligned
    quoted = "".join("    > " + line + "\n" for line in (head + row).splitlines())
    nested = body_of(text_part(make_post("- An item:\n\n" + quoted), "full"))
    assert max(len(line) for line in nested.splitlines()) <= 78, nested
    assert "  > " + "H" * 18 + ": " + "x" * 18 in nested.splitlines()


def test_an_html_posts_own_footnote_list_is_left_as_written() -> None:
    from newsletter.posts import markup

    own = '<p>Text.</p><div class="footnote"><ol><li>A note of its own.</li></ol></div>'
    assert "A note of its own." in markup.sanitise_html(own, POST_URL)


# --------------------------------------------------------------------------- wide text

# 96 wide characters: 192 columns, with no space to break at.
JAPANESE = "これは日本語の段落です。句読点で改行されるかどうかを確認します。" * 3
TITLE = "日本語のタイトル：とても長い見出しがここに続きます、さらに続きます、まだ続きます、終わりはまだです"


def display_width(line: str) -> int:
    """Terminal columns, measured here independently of `textwidth`."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def test_a_cjk_paragraph_is_wrapped_at_72_columns() -> None:
    """A Japanese paragraph came out as one 192-column line: textwrap breaks
    only at spaces.  Wide text breaks between two wide characters, never
    before a closing mark such as 。 or 、 (nor after an opening one)."""
    lines = body_of(text_part(make_post(JAPANESE + "\n"), "full")).splitlines()
    assert "".join(lines) == JAPANESE  # nothing lost, no space put in
    assert len(lines) == 3
    assert all(64 <= display_width(line) <= 72 for line in lines[:-1])
    assert display_width(lines[-1]) <= 72
    assert not any(line[0] in "。、）」" or line[-1] in "（「" for line in lines)


def test_latin_words_and_urls_inside_cjk_text_stay_whole() -> None:
    url = "https://example.org/a/long/path/that/must/stay/whole/and/clickable"
    body = f"{JAPANESE[:30]}Periwinkles{JAPANESE[:20]} <{url}> {JAPANESE[:40]}\n"
    lines = body_of(text_part(make_post(body), "full")).splitlines()
    assert all(display_width(line) <= 72 for line in lines if url not in line)
    assert any(f"<{url}>" in line for line in lines)
    assert any("Periwinkles" in line for line in lines)
    assert "".join(lines).replace(" ", "") == body.strip().replace(" ", "")


def test_a_long_cjk_title_is_wrapped_and_underlined_to_its_display_width() -> None:
    """A 98-column title stayed on one line under a rule of 72 "=" signs."""
    text = text_part(make_post(title=TITLE, title_html=TITLE))
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) == {"="})
    heading = lines[lines.index("") + 1 : rule]
    assert "".join(heading) == TITLE and len(heading) == 2
    assert all(display_width(line) <= 72 for line in heading)
    assert len(lines[rule]) == max(map(display_width, heading))


def test_no_line_of_a_cjk_text_part_runs_past_78_columns() -> None:
    """The template's own lines (a description, a table's row blocks) are
    wrapped at 72 once over 78 columns: by display columns too."""
    table = (
        "| 生物 | 場所 | 時刻 | 数 |\n|---|---|---|---|\n| "
        + " | ".join([JAPANESE[:30]] * 4)
        + " |\n"
    )
    post = make_post(f"{JAPANESE}\n\n{table}", title=TITLE, title_html=TITLE, description=JAPANESE)
    text = text_part(post, "full")
    assert JAPANESE[:30] in text  # the description (the subtitle), wrapped
    for line in text.splitlines():
        assert display_width(line) <= 78 or "<https://" in line, line
