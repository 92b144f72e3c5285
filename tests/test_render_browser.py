"""The default theme in a real browser: no horizontal scrolling at 375 px,
images scale down, dark mode applies.  Every request is answered locally by
Playwright's router (nothing leaves the machine)."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, require_browser
from test_render_support import make_post, make_settings

from newsletter.email.message import fill_placeholders, sample_recipient
from newsletter.email.render import render_digest, render_email

pytestmark = pytest.mark.browser


def png(width: int, height: int) -> bytes:
    """A plain grey PNG of the given size (wide enough to overflow a phone)."""
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = require_browser()
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture(scope="module")
def email_html() -> str:
    long_url = "https://tides.example.com/" + "x" * 400
    body = (Path(__file__).parent / "fixtures" / "render" / "feature-post.md").read_text()
    body += f"\n\nA long unbroken link: {long_url}\n\n    {'wide_code_line_' * 20}\n"
    settings = make_settings(content="full")
    rendered = render_email(make_post(body), settings, settings.lists["everything"])
    return fill_placeholders(rendered, sample_recipient(settings))[0]


def open_page(browser: object, html: str, width: int, scheme: str = "light") -> object:
    page = browser.new_page(viewport={"width": width, "height": 800}, color_scheme=scheme)  # type: ignore[attr-defined]
    image = png(1600, 800)
    page.route(
        "**/*", lambda route: route.fulfill(status=200, body=image, content_type="image/png")
    )
    page.set_content(html, wait_until="load")
    return page


@pytest.mark.parametrize("width", [375, 600])
def test_no_horizontal_scrolling_and_images_fit(
    browser: object, email_html: str, width: int
) -> None:
    page = open_page(browser, email_html, width)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # type: ignore[attr-defined]
    widths = page.evaluate(  # type: ignore[attr-defined]
        "[...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().width])"
    )
    assert len(widths) >= 4
    assert all(natural == 1600 for natural, _ in widths)  # the images really loaded
    assert all(shown <= width for _, shown in widths)
    page.close()  # type: ignore[attr-defined]


def test_dark_mode_rule_applies(browser: object, email_html: str) -> None:
    light = open_page(browser, email_html, 600)
    dark = open_page(browser, email_html, 600, scheme="dark")
    script = "getComputedStyle(document.querySelector('.container')).backgroundColor"
    assert light.evaluate(script) == "rgb(255, 255, 255)"  # type: ignore[attr-defined]
    assert dark.evaluate(script) == "rgb(29, 33, 37)"  # type: ignore[attr-defined]
    light.close()  # type: ignore[attr-defined]
    dark.close()  # type: ignore[attr-defined]


WIDE_POST = (
    "A phone-sized test.\n\n<!--more-->\n\n"
    "![A 3000 px photo](/images/wide.png)\n\n"
    "A long unbroken link: https://tides.example.com/" + "segment/" * 30 + "end.html\n\n"
    "| " + " | ".join(f"column {n}" for n in range(1, 10)) + " |\n"
    "|" + "---|" * 9 + "\n"
    "| " + " | ".join("a longer cell value" for _ in range(9)) + " |\n\n"
    "```python\nresult = compute(" + ", ".join(f"argument_{n}" for n in range(30)) + ")\n```\n"
)


@pytest.fixture(scope="module")
def wide_emails(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A post with a 3000 px image of the site's own, a long URL, a wide table
    and a long code line, rendered whole; and in a digest (its excerpt is all
    of it there)."""
    from dataclasses import replace

    from PIL import Image

    site = tmp_path_factory.mktemp("site")
    (site / "images").mkdir()
    Image.new("RGB", (3000, 1500), "teal").save(site / "images" / "wide.png")
    base = make_settings(content="full")
    settings = replace(base, site=replace(base.site, source_dir=site, posts_dir=site / "_posts"))
    hero = "https://tides.example.com/images/wide.png"
    post = make_post(WIDE_POST, image=hero)
    rendered = render_email(post, settings, settings.lists["everything"], cache=False)
    assert 'width="536" height="268"' in rendered.html  # the size came from the file
    whole = make_post(WIDE_POST.replace("<!--more-->", ""), image=hero)
    digest = render_digest([whole], settings, settings.lists["weekly"], cache=False)
    assert "argument_29" in digest.html and "column 9" in digest.html
    recipient = sample_recipient(settings)
    return {
        "post": fill_placeholders(rendered, recipient)[0],
        "digest": fill_placeholders(digest, recipient)[0],
    }


STYLE_BLOCK = re.compile(r"<style\b[^>]*>.*?</style>", re.S | re.I)


@pytest.mark.parametrize("kind", ["post", "digest"])
@pytest.mark.parametrize("styles", ["kept", "stripped"])
def test_a_phone_never_scrolls_sideways_even_without_style_support(
    browser: object, wide_emails: dict[str, str], styles: str, kind: str
) -> None:
    """Clients that drop <style> (Gmail's apps with other accounts, many
    webmails) got a 1,200 px wide email: `white-space: pre-wrap` for code
    lived only in an @media rule, so one long code line widened the layout."""
    wide_email = wide_emails[kind]
    html = wide_email if styles == "kept" else STYLE_BLOCK.sub("", wide_email)
    assert ("<style" in html) == (styles == "kept")
    page = open_page(browser, html, 375)
    page.set_viewport_size({"width": 375, "height": 800})  # type: ignore[attr-defined]
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # type: ignore[attr-defined]
    shown = page.evaluate(  # type: ignore[attr-defined]
        "[...document.images].map(i => i.getBoundingClientRect().width)"
    )
    assert len(shown) == 2 and all(0 < w <= 375 for w in shown)
    code = page.evaluate(  # type: ignore[attr-defined]
        "getComputedStyle(document.querySelector('pre')).whiteSpace"
    )
    assert code == "pre-wrap"
    page.close()  # type: ignore[attr-defined]


def test_the_logo_is_readable_in_dark_mode(browser: object) -> None:
    from dataclasses import replace

    base = make_settings()
    settings = replace(base, email=replace(base.email, logo="https://cdn.example.net/logo.png"))
    rendered = render_email(make_post(), settings, settings.lists["everything"], cache=False)
    html = fill_placeholders(rendered, sample_recipient(settings))[0]
    dark = open_page(browser, html, 600, scheme="dark")
    script = "getComputedStyle(document.querySelector('.logo')).backgroundColor"
    assert dark.evaluate(script) == "rgb(255, 255, 255)"  # type: ignore[attr-defined]
    dark.close()  # type: ignore[attr-defined]


def test_every_heading_level_is_light_in_dark_mode(browser: object) -> None:
    """Only h2 and h3 turned light in dark mode: a post's #### heading (or a
    digest's, one level down) stayed #111827 on the #1d2125 container."""
    body = "Intro.\n\n## Two\n\n### Three\n\n#### Four\n\n##### Five\n\n###### Six\n"
    settings = make_settings(content="full")
    rendered = render_email(make_post(body), settings, settings.lists["everything"], cache=False)
    html = fill_placeholders(rendered, sample_recipient(settings))[0]
    dark = open_page(browser, html, 600, scheme="dark")
    colours = dark.evaluate(  # type: ignore[attr-defined]
        "[...document.querySelectorAll('.post-body h2, .post-body h3, .post-body h4,"
        " .post-body h5, .post-body h6')].map(h => [h.tagName, getComputedStyle(h).color])"
    )
    dark.close()  # type: ignore[attr-defined]
    assert [tag for tag, _ in colours] == ["H2", "H3", "H4", "H5", "H6"]
    assert all(colour == "rgb(236, 239, 241)" for _, colour in colours), colours
