"""Every text of every email type keeps WCAG AA contrast (4.5:1) in light and
dark mode, measured in real Chromium from the computed colours; and
screenshots of the default theme at 600 and 375 px in both colour schemes.

Set NEWSLETTER_SCREENSHOTS=DIR to keep the screenshots for a look.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, require_browser
from test_render_browser import png
from test_render_support import make_post, make_settings

from newsletter.email.message import fill_placeholders, sample_recipient
from newsletter.email.render import RenderedEmail, render_digest, render_email, template_environment

pytestmark = pytest.mark.browser

AA = 4.5

# Walks the page: for each element with its own visible text, the colour of
# the text and of the nearest painted background behind it, then the WCAG
# 2.x contrast ratio between them.
MEASURE = """
() => {
  const parse = c => { const m = c.match(/[\\d.]+/g).map(Number); return m.length === 3 ? [...m, 1] : m; };
  const lum = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) return c;
    }
    return [255, 255, 255, 1];
  };
  const found = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest('.preheader')) continue;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    const fg = parse(style.color), bg = background(el);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    found.push({tag: el.tagName.toLowerCase(), cls: el.className, text: text.slice(0, 40),
                fg: style.color, bg: `rgb(${bg.slice(0, 3).join(', ')})`, ratio: (a + 0.05) / (b + 0.05)});
  }
  return found;
}
"""


def emails() -> dict[str, RenderedEmail]:
    template_environment.cache_clear()
    settings = make_settings(postal_address="Tide Notes, 12 Harbour Road, Example Bay 00000",
                             preferences_link=True)  # fmt: skip
    full = make_settings(content="full", postal_address="Tide Notes, 12 Harbour Road",
                         preferences_link=True)  # fmt: skip
    second = make_post("A short second post about sand fleas.", post_id="fleas",
                       title="Sand Fleas", title_html="Sand Fleas",
                       date=make_post().date.replace(day=15), image=None)  # fmt: skip
    return {
        "post": render_email(make_post(), settings, settings.lists["everything"]),
        "full": render_email(make_post(), full, full.lists["everything"]),
        "digest": render_digest([make_post(), second], settings, settings.lists["weekly"]),
    }


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    settings = make_settings()
    return {
        name: fill_placeholders(rendered, sample_recipient(settings))[0]
        for name, rendered in emails().items()
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = require_browser()
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


def open_page(browser: object, html: str, width: int, scheme: str) -> object:
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)  # type: ignore[attr-defined]
    image = png(1200, 600)
    page.route(
        "**/*", lambda route: route.fulfill(status=200, body=image, content_type="image/png")
    )
    page.set_content(html, wait_until="load")
    return page


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("kind", ["post", "full", "digest"])
def test_every_text_keeps_aa_contrast(
    browser: object, pages: dict[str, str], kind: str, scheme: str
) -> None:
    page = open_page(browser, pages[kind], 600, scheme)
    measured = page.evaluate(MEASURE)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    # The measurement covers what was 2.51:1 in dark mode before (byline and
    # footer links, Unsubscribe included), and the postal address.
    texts = {m["text"] for m in measured}
    assert {"Unsubscribe", "Manage your subscription", "Defne Kaya"} <= texts
    assert any(t.startswith("Tide Notes, 12 Harbour Road") for t in texts)
    low = [m for m in measured if m["ratio"] < AA]
    assert not low, "\n".join(
        f'{m["tag"]}.{m["cls"]} "{m["text"]}": {m["fg"]} on {m["bg"]} = {m["ratio"]:.2f}'
        for m in low
    )
    assert len(measured) > 15


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [600, 375])
@pytest.mark.parametrize("kind", ["post", "digest"])
def test_screenshots(
    browser: object, pages: dict[str, str], tmp_path: Path, kind: str, width: int, scheme: str
) -> None:
    page = open_page(browser, pages[kind], width, scheme)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # type: ignore[attr-defined]
    footer = page.evaluate("document.querySelector('.footer').getBoundingClientRect().width")  # type: ignore[attr-defined]
    assert footer <= width
    keep = os.environ.get("NEWSLETTER_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"{kind}-{width}-{scheme}.png"
    page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]
    assert shot.stat().st_size > 10_000
