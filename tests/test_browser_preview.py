"""The preview and the public pages in a real headless Chromium (Debian's
/usr/bin/chromium driven by Playwright), served by uvicorn on 127.0.0.1.

Every request for another host is answered by Playwright's router with a
local image or refused, so nothing leaves the machine (invariant 6).
Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, require_browser
from smtpserver import SmtpTestServer, free_port
from test_web_support import copy_site, make_store
from watchready import Watched

from newsletter.config import load_settings
from newsletter.web.public import create_public_app
from newsletter.web.server import RunningServer, preview_in_thread, start_in_thread

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLEAN = "tending-a-winter-allotment"
POST_FILE = "2024-03-02-tending-a-winter-allotment.md"

pytestmark = pytest.mark.browser


def png(width: int, height: int) -> bytes:
    """A plain PNG, wider than a phone, standing in for every remote image."""
    raw = b"".join(b"\x00" + b"\xa0\xb4\x8c" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw)),
            chunk(b"IEND", b""),
        ]
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _local_only(context: Any) -> None:
    image = png(1200, 700)

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "http://localhost:")):
            route.continue_()
        elif route.request.resource_type == "image":
            route.fulfill(status=200, body=image, content_type="image/png")
        else:
            route.abort()

    context.route("**/*", handle)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    _local_only(context)
    opened = context.new_page()
    # Bounds a hang only: a starved machine's Chromium took over 10 s to click.
    opened.set_default_timeout(60_000)
    # A script or handler our own CSP blocks is a broken page, not a detail.
    blocked: list[str] = []
    opened.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield opened
    context.close()
    assert blocked == []


@pytest.fixture
def preview(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SmtpTestServer,
    watched: Watched,  # made before the preview's watchers, so it sees them
) -> Iterator[tuple[RunningServer, Path]]:
    config = copy_site(tmp_path, monkeypatch)
    overrides = smtp_server.settings_overrides()
    running = preview_in_thread(lambda: load_settings(config, overrides))
    try:
        yield running, config
    finally:
        running.stop()


def _frame_metrics(page: Any) -> dict[str, float]:
    return page.evaluate(
        """() => {
            const f = document.getElementById('email');
            const d = f.contentDocument.documentElement;
            const imgs = [...f.contentDocument.images].map(i => i.getBoundingClientRect().width);
            return {box: f.getBoundingClientRect().width, client: d.clientWidth,
                    scroll: d.scrollWidth, widest: Math.max(0, ...imgs), images: imgs.length,
                    loaded: [...f.contentDocument.images].every(i => i.complete)};
        }"""
    )


def _wait_for_frame(page: Any) -> None:
    page.wait_for_function(
        "() => { const f = document.getElementById('email');"
        " return f && f.contentDocument && f.contentDocument.readyState === 'complete'"
        " && f.getBoundingClientRect().height > 300; }"
    )


def test_preview_in_chromium(
    page: Any,
    preview: tuple[RunningServer, Path],
    smtp_server: SmtpTestServer,
    watched: Watched,
) -> None:
    running, config = preview
    ARTIFACTS.mkdir(exist_ok=True)

    # The index, then a post.
    page.goto(running.url + "/")
    assert page.locator("#posts tbody tr").count() == 4
    page.get_by_role("link", name="Tending a Winter Allotment").click()
    page.wait_for_url(re.compile(rf"/post/{CLEAN}"))
    _wait_for_frame(page)
    page.locator("#live.on").wait_for()  # the event stream is connected
    desktop = _frame_metrics(page)
    assert desktop["box"] == 600 and desktop["scroll"] <= 600
    page.screenshot(path=str(ARTIFACTS / "preview-desktop.png"), full_page=True)

    # Mobile width: the frame is 375 px and nothing scrolls sideways.
    page.get_by_role("button", name="Mobile 375").click()
    page.wait_for_function("() => document.getElementById('email').offsetWidth === 375")
    _wait_for_frame(page)
    mobile = _frame_metrics(page)
    assert mobile["box"] == 375 and mobile["client"] == 375
    assert mobile["scroll"] <= 375, "horizontal scrolling at 375 px"
    assert mobile["images"] >= 1 and 0 < mobile["widest"] <= 375, "an image does not scale down"
    page.locator("#email").screenshot(path=str(ARTIFACTS / "preview-mobile-email.png"))
    page.set_viewport_size({"width": 900, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "preview-mobile.png"), full_page=True)

    # The text part.
    page.get_by_role("button", name="Text").click()
    assert page.locator("#text-part").is_visible()
    assert not page.locator("#email").is_visible()
    assert "What still grows when the frost comes" in page.locator("#text-part").inner_text()
    assert page.evaluate("location.hash") == "#tab=text&width=375"

    # Saving the post updates the open page, keeping the tab and the width.
    # How soon is measured, not asserted (a starved machine's Chromium takes
    # seconds to click): the page's 60 s default wait only bounds a hang.
    post = config.parent / "posts" / POST_FILE
    assert watched.wait(post)  # the watcher sees the save (not a race with its start)
    post.write_text(post.read_text().replace("Tending a Winter", "Minding a Winter"))
    page.locator("#subject", has_text="Minding a Winter Allotment").wait_for()
    assert page.evaluate("location.hash") == "#tab=text&width=375"
    assert page.locator("#text-part").is_visible()
    assert "Minding a Winter Allotment" in page.locator("#text-part").inner_text()
    assert page.evaluate("document.getElementById('email').style.width") == "375px"

    # Send a test to the aiosmtpd server on 127.0.0.1.
    page.fill("#test-addresses", "tester@example.com")
    page.click("#send-test-button")
    page.locator("#notice").wait_for()
    assert "sent a test to tester@example.com via smtp" in page.locator("#notice").inner_text()
    assert page.evaluate("location.hash") == "#tab=text&width=375"  # kept across the POST
    assert [r.rcpt_tos for r in smtp_server.received] == [("tester@example.com",)]
    message = message_from_bytes(smtp_server.received[0].data, policy=policy.default)
    assert message["Subject"] == "[TEST] Minding a Winter Allotment"


def test_list_selector_switches_the_email(page: Any, preview: tuple[RunningServer, Path]) -> None:
    running, _ = preview
    page.goto(f"{running.url}/post/{CLEAN}#tab=html&width=800")
    page.select_option("#list-select", "garden")
    page.wait_for_url(re.compile(r"list=garden"))
    _wait_for_frame(page)
    assert page.evaluate("location.hash") == "#tab=html&width=800"
    assert _frame_metrics(page)["box"] == 800
    frame = page.frame_locator("#email")
    assert "Lantern Notes: garden posts" in frame.locator("body").inner_text()


def test_unsubscribe_confirm_and_undo_in_chromium(
    page: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undo's Origin check passes for our own page in a real browser (with
    `Referrer-Policy: no-referrer` Chromium would send `Origin: null`), and
    refuses the same form submitted from another site."""
    config = copy_site(tmp_path, monkeypatch)
    store = make_store(config)
    row = store.add("vera@example.com")
    port = free_port()
    settings = load_settings(config, {"web.public_url": f"http://127.0.0.1:{port}"})
    app = create_public_app(settings, engine=store.engine, secret=store.secret)
    undo_url = f"http://127.0.0.1:{port}/unsubscribe/{store.token(row)}/undo"
    hostile = f'<form method="post" action="{undo_url}"><button id="go">Win a prize</button></form>'
    page.route(
        "http://evil.example/**",
        lambda route: route.fulfill(status=200, body=hostile, content_type="text/html"),
    )
    with start_in_thread(app, port=port) as running:
        page.set_viewport_size({"width": 375, "height": 700})
        page.goto(f"{running.url}/unsubscribe/{store.token(row)}")
        assert store.mailable(row)  # opening the page changed nothing
        page.screenshot(path=str(ARTIFACTS / "unsubscribe-confirm.png"))
        page.click("#confirm")
        page.locator("#done").wait_for()
        assert not store.mailable(row)
        page.goto("http://evil.example/")
        page.click("#go")
        page.wait_for_load_state("load")
        assert "cross-origin request refused" in page.content()
        assert not store.mailable(row)
        page.goto(f"{running.url}/unsubscribe/{store.token(row)}")
        page.click("#undo")
        page.locator("#resubscribed").wait_for()
        assert store.mailable(row)


@pytest.fixture(params=["excerpt", "full"])
def sample_preview(
    sample_site: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningServer, str]]:
    """The preview of the bundled sample site (the README's quick start)."""
    config = sample_site / "newsletter.toml"
    overrides = {"email.content": request.param}
    running = preview_in_thread(lambda: load_settings(config, overrides), live=False)
    try:
        yield running, request.param
    finally:
        running.stop()


def test_every_sample_post_fits_a_phone(
    page: Any, sample_preview: tuple[RunningServer, str]
) -> None:
    """No horizontal scrolling at 375 px and images scaled down, for every post."""
    running, content = sample_preview
    page.goto(running.url + "/")
    links = page.eval_on_selector_all("#posts a", "els => els.map(a => a.getAttribute('href'))")
    assert len(links) >= 4
    page.set_viewport_size({"width": 375, "height": 800})
    for link in links:
        post_id = link.removeprefix("/post/")
        page.goto(f"{running.url}/html/{post_id}")
        page.wait_for_load_state("load")
        metrics = page.evaluate(
            "() => ({scroll: document.documentElement.scrollWidth,"
            " widest: Math.max(0, ...[...document.images].map(i => i.getBoundingClientRect().right))})"
        )
        name = post_id.replace("/", "_")
        page.screenshot(path=str(ARTIFACTS / f"sample-375-{content}-{name}.png"), full_page=True)
        assert metrics["scroll"] <= 375, f"{post_id} scrolls sideways at 375 px"
        assert metrics["widest"] <= 375, f"{post_id} has an image wider than 375 px"
