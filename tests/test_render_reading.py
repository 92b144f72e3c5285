"""The email as a reader reads it: the text part's line width, the inbox
preview of a post that opens with an image, heading levels, footnotes that
stay inside the email, a logo that survives dark mode."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from test_render_support import POST_URL, make_post, make_settings

from newsletter.email.message import Recipient, fill_placeholders
from newsletter.email.render import render_digest, render_email, template_environment

# What a real recipient's values look like: a token makes the URLs long.
READER = Recipient(
    "a.rather.long.reader.name@example.com",
    "Rae Reader",
    "https://news.tides.example.com/unsubscribe/" + "AbCdEfGh" * 8,
    "https://news.tides.example.com/preferences/" + "AbCdEfGh" * 8,
)
WIDE_BODY = (
    "Tide pools are small laboratories. A long link: "
    "https://tides.example.com/" + "very-long-path-segment/" * 6 + "end.html ok.\n\n"
    "<!--more-->\n\n"
    "| Creature | Where | When | Count | Notes |\n|---|---|---|---|---|\n"
    "| Periwinkles on the north rock | the upper pool | at the lowest tide | 41 "
    "| counted twice by two people |\n\n"
    "    " + "a_long_code_line_" * 8 + "\n\n"
    "> A blockquote long enough to be wrapped in the plain-text part of the email, "
    "certainly longer than seventy-eight characters.\n"
)


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    template_environment.cache_clear()
    yield
    template_environment.cache_clear()


def text_for(content: str = "excerpt", list_name: str = "everything") -> str:
    settings = make_settings(content=content, preferences_link=True,
                             postal_address="Tide Notes, 12 Harbour Road, Example Bay 00000")  # fmt: skip
    post = make_post(WIDE_BODY)
    lst = settings.lists[list_name]
    if lst.mode == "digest":
        rendered = render_digest(
            [post], settings, lst, archive_url="https://news.tides.example.com/archive/digest/7"
        )
    else:
        rendered = render_email(post, settings, lst)
    return fill_placeholders(rendered, READER)[1]


def is_code(line: str) -> bool:
    return re.sub(r"^(> ?)+", "", line).startswith("    ")


def is_lone_url(line: str) -> bool:
    return re.fullmatch(r"\s*(> )*\S+://\S+", line) is not None


@pytest.mark.parametrize(
    ("content", "list_name"),
    [("excerpt", "everything"), ("full", "everything"), ("full", "weekly")],
)
def test_the_text_part_is_wrapped_at_78_columns_and_urls_stay_whole(
    content: str, list_name: str
) -> None:
    """The footer ("You are receiving this because <address> subscribed to
    …"), "Read the full post: <URL>" and table rows went out as 90-160
    column lines."""
    text = text_for(content, list_name)
    long = [
        ln for ln in text.splitlines() if len(ln) > 78 and not is_code(ln) and not is_lone_url(ln)
    ]
    assert long == []
    for url in (READER.unsubscribe_url, READER.preferences_url, POST_URL):
        assert f"<{url}>" in text.split()  # whole, and a word of its own
    assert "You are receiving this because" in text and READER.email in text
    if content == "full" and list_name == "everything":
        assert "    " + "a_long_code_line_" * 8 in text.splitlines()  # code is never rewrapped
        assert any(
            ln.startswith("https://tides.example.com/very-long-path") for ln in text.splitlines()
        )


def test_the_footer_keeps_its_signature_separator_and_labels() -> None:
    text = text_for()
    lines = text.splitlines()
    footer = lines[lines.index("-- ") :]
    assert footer[0] == "-- "
    joined = "\n".join(footer)
    assert re.search(r"Unsubscribe:\s+<" + re.escape(READER.unsubscribe_url) + ">", joined)
    assert re.search(
        r"Manage your subscription:\s+<" + re.escape(READER.preferences_url) + ">", joined
    )


# --------------------------------------------------------------------------- preheader


def preheader_of(html: str) -> str | None:
    match = re.search(r'<div class="preheader"[^>]*>(.*?)(?:&#847;|\u034f)', html, re.S)
    return match.group(1).strip() if match else None


def test_a_post_opening_with_an_image_and_a_footnote_previews_its_prose() -> None:
    """The excerpt was an image and the footnotes python-markdown lists after
    it: the inbox preview read "-------------------- 1." (the text part's
    rule and footnote number)."""
    body = (
        "![A tide pool](https://tides.example.com/images/pool.jpg)\n\n<!--more-->\n\n"
        "The pool filled at noon[^a]. We left.\n\n[^a]: Exactly at noon.\n"
    )
    settings = make_settings()
    excerpt = make_post(body).excerpt_html
    post = make_post(body, description=None,
                     excerpt_html=excerpt + '<div class="footnote"><hr><ol><li id="fn:a">'
                     "<p>Exactly at noon.</p></li></ol></div>")  # fmt: skip
    html = render_email(post, settings, settings.lists["everything"]).html
    pre = preheader_of(html)
    assert pre is not None
    assert "---" not in pre and "1." not in pre
    assert pre == "The pool filled at noon."


def test_an_email_always_has_a_preheader() -> None:
    """No description and an image-only excerpt: no preheader at all, so the
    inbox preview showed the logo's alt text and the list title."""
    body = "![A tide pool](https://tides.example.com/images/pool.jpg)\n"
    settings = make_settings()
    post = make_post(body, description=None)
    html = render_email(post, settings, settings.lists["everything"]).html
    pre = preheader_of(html)
    assert pre  # something of the post, never empty
    assert "Tide Notes: every post" not in pre


# --------------------------------------------------------------------------- headings


def heading_levels(html: str) -> list[int]:
    return [int(level) for level in re.findall(r"<h([1-6])\b", html)]


def test_the_posts_own_headings_sit_below_the_emails_title() -> None:
    """A post written with `# Heading` put a second <h1>, larger than the
    email's title, in the middle of the email."""
    body = "Intro.\n\n# Big part\n\nText.\n\n## Smaller part\n\nText.\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    assert heading_levels(html) == [1, 2, 3]
    assert re.search(r"<h2[^>]*>Big part</h2>", html)
    digest = render_digest([make_post(body)], settings, settings.lists["weekly"]).html
    assert heading_levels(digest)[:2] == [1, 2]  # the digest's title, the post's title
    assert min(heading_levels(digest)[2:] or [3]) >= 3


def test_headings_of_a_post_that_starts_at_h2_are_kept() -> None:
    body = "Intro.\n\n## Part\n\n### Sub\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    assert heading_levels(html) == [1, 2, 3]


# --------------------------------------------------------------------------- footnotes


def test_footnote_links_stay_inside_a_full_email() -> None:
    """The footnote number and its "↩" back-link opened the web page: the
    reader left the email to read a note printed a few lines below."""
    body = "Text with a note[^n].\n\n[^n]: The note.\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    assert re.search(r'<a class="footnote-ref" href="#fn:n"', html)
    assert re.search(r'<a class="footnote-backref" href="#fnref:n"', html)
    assert 'id="fn:n"' in html and 'id="fnref:n"' in html
    assert f"{POST_URL}#fn" not in html
    # The back-link arrow is text, not an emoji (iOS draws a blue ↩️ button).
    assert re.search(r'class="footnote-backref"[^>]*>(↩|&#8617;)(\ufe0e|&#65038;)</a>', html)


def test_links_to_the_posts_own_headings_stay_inside_the_email() -> None:
    body = "[Jump to the results](#results)\n\n## Results {#results}\n\nText.\n\n[Elsewhere](#nowhere)\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    assert 'href="#results"' in html and 'id="results"' in html
    assert f'href="{POST_URL}#nowhere"' in html  # no such place in the email: the web page


def test_footnotes_in_a_digest_keep_their_web_links() -> None:
    """Two posts' "fn:1" would collide inside one digest: links go to the post."""
    body = "Text with a note[^1].\n\n[^1]: The note.\n\n<!--more-->\n\nMore.\n"
    settings = make_settings()
    other = POST_URL.replace("tide-pools", "sand-fleas")
    first, second = make_post(body), make_post(body, post_id="b", url=other)
    html = render_digest([first, second], settings, settings.lists["weekly"]).html
    assert 'href="#fn' not in html
    assert f'href="{POST_URL}#fn:1"' in html and f'href="{other}#fn:1"' in html


# --------------------------------------------------------------------------- logo


def test_the_logo_keeps_a_light_backdrop_in_dark_mode() -> None:
    """A dark logo on a transparent background vanished on the dark theme's
    #1d2125 container."""
    base = make_settings()
    settings = replace(base, email=replace(base.email, logo="https://cdn.example.net/logo.png"))
    html = render_email(make_post(), settings, settings.lists["everything"]).html
    dark = html[html.index("prefers-color-scheme: dark") :]
    assert re.search(r"\.logo\s*\{[^}]*background-color:\s*#fff", dark)


def preview_text(html: str) -> str:
    """What an inbox previews: the body's text from the top, hidden or not,
    whitespace collapsed (zero-width characters count as characters)."""
    body = html[html.index("<body") :]
    body = re.sub(r"<style\b.*?</style>|<!--.*?-->", "", body, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", body)
    text = text.replace("&#847;", "\u034f").replace("&zwnj;", "\u200c").replace("&nbsp;", "\xa0")
    return re.sub(r"[ \t\r\n]+", " ", text).strip()


@pytest.mark.parametrize("description", [None, "Short.", "A description " * 9 + "end."])
def test_the_inbox_preview_never_reaches_the_masthead(description: str | None) -> None:
    """A short preheader left room in a 200-character preview for what
    follows it: the logo's alt text, the list title, "View in browser"."""
    body = "Crabs walk sideways.\n\n<!--more-->\n\nMore.\n"
    settings = make_settings()
    post = make_post(body, description=description)
    html = render_email(post, settings, settings.lists["everything"]).html
    digest = render_digest([post], settings, settings.lists["weekly"]).html
    for part in (html, digest):
        assert "Tide Notes" not in preview_text(part)[:200]


# --------------------------------------------------------------------------- right to left


def test_a_right_to_left_post_quotes_with_a_bar_on_the_right() -> None:
    """An Arabic post's blockquote kept its bar and padding on the left, the
    far end of right-to-left lines."""
    body = "مرحبا.\n\n> اقتباس طويل\n"
    settings = make_settings(content="full")
    html = render_email(make_post(body, extra={"lang": "ar"}), settings,
                        settings.lists["everything"]).html  # fmt: skip
    quote = re.search(r"<blockquote\b[^>]*>", html)
    assert quote is not None
    assert "border-right:3px solid" in quote.group(0)
    assert "border-left:0" in quote.group(0) and "padding:4px 16px 4px 0" in quote.group(0)
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    quote = re.search(r"<blockquote\b[^>]*>", html)
    assert quote is not None and "border-left:3px solid" in quote.group(0)


# --------------------------------------------------------------------------- avatar


def test_the_avatar_is_not_read_before_the_name_it_sits_beside() -> None:
    """alt="Defne Kaya" beside the linked name: screen readers said the name
    twice, and with images off the byline read "By Defne Kaya Defne Kaya"."""
    from newsletter.posts.collection import Author

    author = Author(
        "Defne Kaya", "https://example.org/defne", avatar="https://tides.example.com/d.jpg"
    )
    settings = make_settings()
    html = render_email(make_post(authors=(author,)), settings, settings.lists["everything"]).html
    avatar = re.search(r'<img class="avatar"[^>]*>', html)
    assert avatar is not None and 'alt=""' in avatar.group(0)
    assert "Defne Kaya</a>" in html


def test_a_digest_in_a_right_to_left_language_points_its_arrows_the_right_way() -> None:
    settings = make_settings()
    posts = [make_post(extra={"lang": "he"}), make_post(post_id="b", extra={"lang": "he"})]
    html = render_digest(posts, settings, settings.lists["weekly"]).html
    assert "Read the full post ←" in html and "→" not in html
    html = render_digest([make_post()], settings, settings.lists["weekly"]).html
    assert "Read the full post →" in html


# --------------------------------------------------------------------------- image sizes


def test_an_authors_oversized_width_attribute_is_capped_for_outlook() -> None:
    """<img width="3000" height="1500"> written in the post went out as is:
    Outlook (which ignores max-width) laid the email out 3,000 px wide."""
    body = (
        '<img src="https://cdn.example.net/wide.jpg" alt="Wide" width="3000" height="1500">\n\n'
        '<img src="https://cdn.example.net/small.jpg" alt="Small" width="120" height="80">\n\n'
        '<img src="https://cdn.example.net/odd.jpg" alt="Odd" width="100%">\n'
    )
    settings = make_settings(content="full")
    html = render_email(make_post(body), settings, settings.lists["everything"]).html
    tags = {
        alt: t for t in re.findall(r"<img\b[^>]*>", html) for alt in re.findall(r'alt="(\w+)"', t)
    }
    assert 'width="536" height="268"' in tags["Wide"]
    assert 'width="120" height="80"' in tags["Small"]
    assert 'width="100%"' in tags["Odd"]


def test_the_preheader_skips_headings_and_their_text_underlines() -> None:
    """An excerpt opening with "## Why" previewed as "Why === Tide pools…"."""
    body = "## Why we went\n\nTide pools are small laboratories. More.\n\n<!--more-->\n\nRest.\n"
    settings = make_settings()
    html = render_email(make_post(body, description=None), settings,
                        settings.lists["everything"]).html  # fmt: skip
    assert preheader_of(html) == "Tide pools are small laboratories."


# --------------------------------------------------------------------------- links


def test_the_lead_image_link_is_never_an_empty_link() -> None:
    """The lead image's alt is empty when it would repeat the title, which
    left its link with no name: screen readers announced "link" and a URL."""
    settings = make_settings()
    for alt, hidden in (("Counting Life in Tide Pools", True), ("A tide pool at dawn", False)):
        html = render_email(make_post(image_alt=alt), settings, settings.lists["everything"]).html
        link = re.search(r'<a\b[^>]*>(?=<img class="hero-img")', html)
        assert link is not None
        assert (
            'aria-hidden="true"' in link.group(0) and 'tabindex="-1"' in link.group(0)
        ) is hidden
        # The title's link to the same page follows, with its words.
        assert re.search(r'<h1 class="title"[^>]*><a href="' + re.escape(POST_URL), html)
