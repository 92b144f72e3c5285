"""`[web] public_url` with a path (`http://host/news`), the app behind a
reverse proxy that strips `/news`: every URL the pages make (form actions,
links, the router's redirects, the signup snippet) stays under `/news`, and
the buttons work through the proxy.  A real uvicorn on 127.0.0.1 behind a
tiny real proxy (below), as a browser would reach it."""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.web.public import create_public_app
from newsletter.web.server import start_in_thread
from newsletter.web.snippet import signup_snippet

PREFIX = "/news"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


class StripPrefixProxy(BaseHTTPRequestHandler):
    """nginx's `location /news/ { proxy_pass http://app/; }` in miniature:
    strips the prefix, keeps the Host header, passes the answer on untouched."""

    server: ProxyServer
    protocol_version = "HTTP/1.1"

    def forward(self) -> None:
        if not (self.path == PREFIX or self.path.startswith(PREFIX + "/")):
            self.send_error(404, "not under the proxy's prefix")
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=10)
        try:
            upstream.request(self.command, self.path[len(PREFIX) :] or "/", body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = forward

    def log_message(self, format: str, *args: object) -> None:
        pass


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream_port = 0


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    server = ProxyServer(("127.0.0.1", 0), StripPrefixProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def public_url(proxy: ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.server_address[1]}{PREFIX}"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_url: str) -> Store:
    config = copy_site(tmp_path, monkeypatch)
    text = config.read_text()
    text = text.replace('"https://news.lantern.example.com"', f'"{public_url}"')
    text = text.replace(
        'title = "Lantern Notes letters"\n', 'title = "Lantern Notes letters"\npublic = true\n'
    )
    config.write_text(text)
    return make_store(config)


@pytest.fixture
def outbox() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def browser(
    store: Store, proxy: ProxyServer, outbox: MemoryTransport, public_url: str
) -> Iterator[httpx.Client]:
    """An HTTP client that only knows the proxy, and sends Origin as a browser does."""
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    app.state.notice_transport = outbox
    with start_in_thread(app) as running:
        proxy.upstream_port = running.port
        origin = public_url.removesuffix(PREFIX)
        with httpx.Client(base_url=origin, headers={"Origin": origin}, timeout=10) as client:
            yield client


def form_action(page: httpx.Response) -> str:
    """The first form's action, resolved against the page's URL as a browser does."""
    found = re.search(r'<form[^>]*\saction="([^"]*)"', page.text)
    assert found, page.text
    return urljoin(str(page.url), found.group(1))


def test_unsubscribe_and_undo_buttons_post_through_the_prefix(
    browser: httpx.Client, store: Store, public_url: str
) -> None:
    ana = store.add("ana@example.com")
    token = store.token(ana)
    page = browser.get(f"{PREFIX}/unsubscribe/{token}")
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert form_action(page) == f"{public_url}/unsubscribe/{token}"
    done = browser.post(form_action(page), data=ONE_CLICK)
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert not store.mailable(ana)
    assert form_action(done) == f"{public_url}/unsubscribe/{token}/undo"
    again = browser.post(form_action(done))
    assert again.status_code == 200, again.text
    assert "again" in again.text and store.mailable(ana)
    # The "unsubscribe again" button of that page goes back under the prefix too.
    assert form_action(again) == f"{public_url}/unsubscribe/{token}"


def test_signup_confirm_and_preferences_through_the_prefix(
    browser: httpx.Client, store: Store, outbox: MemoryTransport, public_url: str
) -> None:
    page = browser.get(f"{PREFIX}/subscribe")
    assert page.status_code == 200
    assert form_action(page) == f"{public_url}/subscribe"
    sent = browser.post(form_action(page), data={"email": "bo@example.com", "list": "letters"})
    assert sent.status_code == 200 and "Check your inbox" in sent.text, sent.text
    [confirmation] = outbox.outbox
    mail = message_from_bytes(confirmation.message, policy=policy.default)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf"{re.escape(public_url)}/confirm/[A-Za-z0-9_-]+", text)
    assert found
    confirm_page = browser.get(found.group(0))
    assert confirm_page.status_code == 200
    assert form_action(confirm_page) == found.group(0)
    confirmed = browser.post(form_action(confirm_page))
    assert confirmed.status_code == 200, confirmed.text
    prefs = re.search(r'href="([^"]*/preferences/[^"]+)"', confirmed.text)
    assert prefs and prefs.group(1).startswith(f"{public_url}/preferences/")
    prefs_page = browser.get(prefs.group(1))
    assert prefs_page.status_code == 200
    assert form_action(prefs_page) == prefs.group(1)
    saved = browser.post(  # leave every list, as a browser posts the form with none ticked
        form_action(prefs_page),
        content=b"",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert saved.status_code == 200 and "Lantern Notes letters" in saved.text
    bo = subs.get_by_email(store.engine, "bo@example.com")
    assert bo is not None and not store.mailable(bo)


def test_the_routers_redirects_stay_under_the_prefix(
    browser: httpx.Client, public_url: str
) -> None:
    moved = browser.get(f"{PREFIX}/archive")
    assert moved.status_code in (301, 302, 307, 308)
    assert urljoin(str(moved.url), moved.headers["location"]) == f"{public_url}/archive/"
    assert browser.get(moved.headers["location"]).status_code == 200


def test_a_request_that_kept_the_prefix_is_served_too(store: Store, public_url: str) -> None:
    """A proxy that forwards the path whole (no stripping) reaches the same pages."""
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    ana = store.add("ana@example.com")
    token = store.token(ana)
    with start_in_thread(app) as running, httpx.Client(base_url=running.url) as client:
        for path in (f"{PREFIX}/unsubscribe/{token}", f"/unsubscribe/{token}"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert urlsplit(form_action(page)).path == f"{PREFIX}/unsubscribe/{token}"
        assert client.get("/healthz").json()["status"] == "ok"


def test_the_snippet_posts_under_the_prefix(store: Store, public_url: str) -> None:
    assert f'action="{public_url}/subscribe"' in signup_snippet(store.settings, ("letters",))
