"""Readers in a real headless Chromium with JavaScript switched off: the
`newsletter snippet` form on a blog page (another origin), the confirm page
and its button, the preferences page; screenshots at 375 px and desktop in
tests/artifacts/ (readers-*.png)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, require_browser
from smtpserver import free_port
from test_web_signup import public_config
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.web.public import create_public_app
from newsletter.web.server import RunningServer, start_in_thread
from newsletter.web.snippet import signup_snippet

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SIZES = {"375": {"width": 375, "height": 740}, "desktop": {"width": 1280, "height": 860}}

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Blog:
    """A static blog page holding the snippet, served from its own origin."""

    def __init__(self, root: Path, port: int) -> None:
        handler = partial(SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None  # type: ignore[attr-defined]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def readers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, RunningServer, str, MemoryTransport]]:
    app_port, blog_port = free_port(), free_port()
    config = public_config(copy_site(tmp_path, monkeypatch))
    text = config.read_text()
    text = text.replace(
        'url = "https://lantern.example.com"', f'url = "http://127.0.0.1:{blog_port}"'
    )
    text = text.replace(
        'public_url = "https://news.lantern.example.com"',
        f'public_url = "http://127.0.0.1:{app_port}"',
    )
    # For the fetch() recipe of docs/web.md; the blog's form posts pass either way.
    text = text.replace(
        'allowed_origins = ["https://widgets.example.net"]',
        f'allowed_origins = ["https://widgets.example.net", "http://127.0.0.1:{blog_port}"]',
    )
    config.write_text(text)
    store = make_store(config)
    blog_root = tmp_path / "blog"
    blog_root.mkdir()
    form = signup_snippet(store.settings, ("letters", "garden"))
    (blog_root / "index.html").write_text(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        "<title>Lantern Notes</title></head><body><h1>Lantern Notes</h1>"
        f"<p>A blog about lamps and gardens.</p>{form}</body></html>",
        encoding="utf-8",
    )
    blog = Blog(blog_root, blog_port)
    outbox = MemoryTransport()
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    app.state.notice_transport = outbox
    running = start_in_thread(app, "127.0.0.1", app_port)
    try:
        yield store, running, f"http://127.0.0.1:{blog_port}/", outbox
    finally:
        running.stop()
        blog.stop()


def new_page(browser: Any, size: str, problems: list[str]) -> Any:
    context = browser.new_context(viewport=SIZES[size], java_script_enabled=False)
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("http://127.0.0.1:")
            else route.abort()
        ),
    )
    page = context.new_page()
    page.set_default_timeout(60_000)  # bounds a hang only (see test_browser_preview)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return page


def mail_to(outbox: MemoryTransport, address: str, timeout: float = 60.0) -> bytes:
    """The confirmation mailed to `address`.  The server sends it in a
    background task after its answer, so it may land just after the page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sent in list(outbox.outbox):
            if sent.recipient == address:
                return sent.message
        time.sleep(0.02)
    raise AssertionError(f"no mail to {address} within {timeout} s: {outbox.outbox!r}")


def confirm_path(outbox: MemoryTransport, running: RunningServer, address: str) -> str:
    message = message_from_bytes(mail_to(outbox, address), policy=policy.default)
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(re.escape(running.url) + r"/confirm/[A-Za-z0-9_-]+", body)
    assert found, body
    return found.group(0)


@pytest.mark.parametrize("size", ["375", "desktop"])
def test_signup_confirm_and_preferences_without_javascript(
    browser: Any, readers: tuple[Store, RunningServer, str, MemoryTransport], size: str
) -> None:
    store, running, blog_url, outbox = readers
    problems: list[str] = []
    page = new_page(browser, size, problems)
    page.goto(blog_url)
    # Every field is reachable by its label (what a screen reader announces).
    page.get_by_label("Email address").fill(f"reader-{size}@example.com")
    page.get_by_label("Name (optional)").fill("Rae")
    page.get_by_label("Lantern Notes: garden posts").check()
    assert page.get_by_label("Lantern Notes letters").is_checked()
    assert not page.locator("#newsletter-website").is_visible()  # the honeypot
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-form.png"), full_page=True)
    page.get_by_role("button", name="Subscribe").click()
    page.locator("#sent").wait_for()
    assert page.url == f"{running.url}/subscribe"
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-sent.png"), full_page=True)
    row = subs.get_by_email(store.engine, f"reader-{size}@example.com")
    assert row is not None and row.status == "pending"

    page.goto(confirm_path(outbox, running, f"reader-{size}@example.com"))
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-confirm.png"), full_page=True)
    assert store.status(row) == "pending"  # the page alone confirms nothing
    page.get_by_role("button", name="Confirm my subscription").click()
    page.locator("#done").wait_for()
    assert store.mailable(row, "letters") and store.mailable(row, "garden")
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-done.png"), full_page=True)

    page.get_by_role("link", name="Change your lists").click()
    assert "/preferences/" in page.url
    assert page.get_by_label("Lantern Notes letters").is_checked()
    page.get_by_label("Lantern Notes letters").uncheck()
    page.get_by_role("button", name="Save").click()
    page.locator("#saved").wait_for()
    assert "Left: Lantern Notes letters." in page.locator("#saved").inner_text()
    assert not store.mailable(row, "letters") and store.mailable(row, "garden")
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-preferences.png"), full_page=True)
    # Nothing on these pages overflows a phone's width.
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[size]["width"]
    assert problems == []
    page.context.close()


@pytest.mark.parametrize("size", ["375", "desktop"])
def test_the_apps_own_signup_page_posts_to_itself(
    browser: Any, readers: tuple[Store, RunningServer, str, MemoryTransport], size: str
) -> None:
    store, running, _blog, outbox = readers
    assert subs.get_by_email(store.engine, "sam@example.com") is None
    problems: list[str] = []
    page = new_page(browser, size, problems)
    page.goto(f"{running.url}/subscribe")
    page.screenshot(path=str(ARTIFACTS / f"readers-{size}-subscribe-page.png"), full_page=True)
    page.get_by_label("Email address").fill("sam@example.com")
    page.get_by_role("button", name="Subscribe").click()
    page.locator("#sent").wait_for()
    mail_to(outbox, "sam@example.com")
    assert [m.recipient for m in outbox.outbox] == ["sam@example.com"]
    sam = subs.get_by_email(store.engine, "sam@example.com")
    assert sam is not None and sam.status == "pending"
    assert problems == []
    page.context.close()


def test_a_refused_address_keeps_the_lists_chosen(
    browser: Any, readers: tuple[Store, RunningServer, str, MemoryTransport]
) -> None:
    """An address the browser's own check lets through (no dot in the
    domain) is refused by the server; the form shown again ticked the first
    list instead of the reader's choice, so fixing the address and sending
    it again asked to confirm a list they never picked."""
    _store, _running, blog_url, outbox = readers
    problems: list[str] = []
    page = new_page(browser, "desktop", problems)
    page.goto(blog_url)
    page.get_by_label("Lantern Notes letters").uncheck()
    page.get_by_label("Lantern Notes: garden posts").check()
    page.get_by_label("Email address").fill("gina@example")
    page.get_by_role("button", name="Subscribe").click()
    page.locator("#error").wait_for()
    assert not page.get_by_label("Lantern Notes letters").is_checked()
    assert page.get_by_label("Lantern Notes: garden posts").is_checked()
    page.get_by_label("Email address").fill("gina@example.org")
    page.get_by_role("button", name="Subscribe").click()
    page.locator("#sent").wait_for()
    message = message_from_bytes(mail_to(outbox, "gina@example.org"), policy=policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "garden posts" in text and "Lantern Notes letters" not in text
    assert [p for p in problems if "400 (Bad Request)" not in p] == []  # the refusal itself
    page.context.close()


@pytest.mark.parametrize("policy", ["no-referrer", "same-origin"])
def test_a_blog_page_that_hides_its_origin_sends_the_reader_to_the_signup_page(
    browser: Any,
    readers: tuple[Store, RunningServer, str, MemoryTransport],
    tmp_path: Path,
    policy: str,
) -> None:
    """Chromium posts the form of a page with this referrer policy with
    `Origin: null` and no Referer: refused (another site's page looks the
    same), but the 403 page says why and links to the app's own signup
    page, where the reader subscribes."""
    store, running, blog_url, outbox = readers
    page_html = (tmp_path / "blog" / "index.html").read_text(encoding="utf-8")
    meta = f'<meta name="referrer" content="{policy}">'
    (tmp_path / "blog" / "strict.html").write_text(
        page_html.replace("<meta charset=utf-8>", "<meta charset=utf-8>" + meta),
        encoding="utf-8",
    )
    problems: list[str] = []
    page = new_page(browser, "desktop", problems)
    sent: list[dict[str, str]] = []
    page.on("request", lambda r: sent.append(r.headers) if r.method == "POST" else None)
    page.goto(blog_url + "strict.html")
    page.get_by_label("Email address").fill("hal@example.com")
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_text("does not say which site it is on").wait_for()
    assert sent[0].get("origin") == "null" and "referer" not in sent[0]
    assert subs.get_by_email(store.engine, "hal@example.com") is None
    page.get_by_role("link", name="this site's signup page").click()
    page.get_by_label("Email address").fill("hal@example.com")
    page.get_by_role("button", name="Subscribe").click()
    page.locator("#sent").wait_for()
    assert page.url == f"{running.url}/subscribe"
    mail_to(outbox, "hal@example.com")
    assert [p for p in problems if "403 (Forbidden)" not in p] == []  # the refusal itself
    page.context.close()


def documented_script() -> str:
    """The fetch() recipe of docs/web.md, exactly as printed there."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "web.md").read_text()
    section = docs.split("### A blog page with a strict referrer policy", 1)[1]
    return "<script>" + section.split("<script>", 1)[1].split("</script>", 1)[0] + "</script>"


def test_the_documented_fetch_recipe_works_on_a_no_referrer_page(
    browser: Any, readers: tuple[Store, RunningServer, str, MemoryTransport], tmp_path: Path
) -> None:
    """docs/web.md's claim: a CORS fetch() carries the page's real origin
    under `no-referrer`, so the blog (in allowed_origins) can keep its policy."""
    store, _running, blog_url, outbox = readers
    page_html = (tmp_path / "blog" / "index.html").read_text(encoding="utf-8")
    meta = '<meta name="referrer" content="no-referrer">'
    page_html = page_html.replace("<meta charset=utf-8>", "<meta charset=utf-8>" + meta)
    (tmp_path / "blog" / "fetch.html").write_text(
        page_html.replace("</body>", documented_script() + "</body>"), encoding="utf-8"
    )
    context = browser.new_context(viewport=SIZES["desktop"])  # JavaScript on
    page = context.new_page()
    page.set_default_timeout(60_000)
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if r.method == "POST" else None)
    page.goto(blog_url + "fetch.html")
    page.get_by_label("Email address").fill("fay@example.com")
    page.get_by_label("Lantern Notes: garden posts").check()
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_text("Thanks! If the address can be subscribed").wait_for()
    assert page.url == blog_url + "fetch.html"  # no navigation: the script sent it
    # The origin as sent (a missing one would pass too: a server-side call).
    assert sent[-1].all_headers()["origin"] == blog_url.rstrip("/")
    message = message_from_bytes(mail_to(outbox, "fay@example.com"), policy=policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "garden posts" in text and "Lantern Notes letters" in text
    found = subs.get_by_email(store.engine, "fay@example.com")
    assert found is not None and found.status == "pending"
    context.close()
