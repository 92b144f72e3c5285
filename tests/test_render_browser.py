"""The default theme in a real browser: no horizontal scrolling at 375 px,
images scale down, dark mode applies.  Every request is answered locally by
Playwright's router (nothing leaves the machine)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, require_browser
from test_render_support import make_post, make_settings

from newsletter.email.message import fill_placeholders, sample_recipient
from newsletter.email.render import render_email

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
