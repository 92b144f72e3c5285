"""Security headers on every response of both apps (issue 9, item 8):
`X-Content-Type-Options: nosniff` everywhere, no `'unsafe-inline'` in any
`script-src` (the preview's own scripts carry a per-response nonce), and a
`Referrer-Policy` on the archive pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.config import load_settings
from newsletter.web.preview import create_preview_app
from newsletter.web.public import create_public_app

PUBLIC = "https://news.lantern.example.com"
PREVIEW = "http://127.0.0.1:8025"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
SENT = "tending-a-winter-allotment"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(copy_site(tmp_path, monkeypatch))


@pytest.fixture
def public(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        yield client


def csp(response: httpx.Response) -> dict[str, str]:
    """The Content-Security-Policy as directive → value."""
    policy = response.headers.get("content-security-policy", "")
    parts = (p.strip().split(None, 1) for p in policy.split(";") if p.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


def check_scripts(response: httpx.Response) -> None:
    """Any HTML: no 'unsafe-inline' for scripts, and every <script> carries the nonce."""
    if not response.headers.get("content-type", "").startswith("text/html"):
        return
    policy = csp(response)
    assert "script-src" in policy, response.request.url
    assert "'unsafe-inline'" not in policy["script-src"], response.request.url
    assert "unsafe-inline" not in policy.get("default-src", "")
    # Inline event handlers (onclick=…) never run without 'unsafe-inline'.
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", response.text), response.request.url
    nonces = re.findall(r"'nonce-([^']+)'", policy["script-src"])
    for tag in re.findall(r"<script\b[^>]*>", response.text):
        assert nonces, f"{response.request.url}: a script but no nonce in the CSP"
        assert f'nonce="{nonces[0]}"' in tag, tag


def public_responses(public: TestClient, store: Store) -> list[httpx.Response]:
    row = store.add("ana@example.com")
    store.send(SENT)
    token = store.token(row)
    return [
        public.get("/healthz"),
        public.get("/unsubscribe/"),
        public.get(f"/unsubscribe/{token}"),
        public.get("/unsubscribe/not-a-token"),
        public.post(f"/unsubscribe/{token}", data=ONE_CLICK),
        public.post(f"/unsubscribe/{token}", data={}),  # 400
        public.post(f"/unsubscribe/{token}/undo", headers={"origin": "https://evil.example"}),
        public.post(f"/unsubscribe/{token}/undo", headers={"origin": PUBLIC}),
        public.get(f"/unsubscribe/{token}/undo", follow_redirects=False),  # 303 to the page
        public.delete(f"/unsubscribe/{token}/undo"),  # 405
        public.get("/archive/"),
        public.get(f"/archive/{SENT}"),
        public.get("/archive/no-such-post"),
        public.get("/no-such-page"),  # the router's own 404
    ]


def test_every_public_response_has_nosniff_and_no_inline_script(
    public: TestClient, store: Store
) -> None:
    responses = public_responses(public, store)
    assert {r.status_code for r in responses} >= {200, 400, 403, 404, 405}
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url
        assert "frame-ancestors" in csp(response), response.request.url  # JSON and text too
        check_scripts(response)


def test_public_pages_run_no_script_and_cannot_be_framed(public: TestClient, store: Store) -> None:
    row = store.add("bea@example.com")
    for response in (public.get(f"/unsubscribe/{store.token(row)}"), public.get("/archive/")):
        policy = csp(response)
        assert policy["script-src"] == "'none'"
        assert policy["frame-ancestors"] == "'none'"  # no clickjacking of the buttons


def test_archive_pages_have_a_referrer_policy(public: TestClient, store: Store) -> None:
    store.add("cai@example.com")
    store.send(SENT)
    for path in ("/archive/", f"/archive/{SENT}"):
        response = public.get(path)
        assert response.status_code == 200
        assert response.headers["referrer-policy"] == "no-referrer", path


def check_crash_answer(response: httpx.Response) -> None:
    """Starlette's outermost error middleware made this 500: it carries the
    same headers as every other answer, and a policy that allows nothing."""
    assert response.status_code == 500
    assert response.headers.get("x-content-type-options") == "nosniff"
    policy = csp(response)
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"


def crash(*args: object, **kwargs: object) -> None:
    raise RuntimeError("an unexpected bug")


def test_a_500_from_an_unexpected_error_has_the_security_headers(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("newsletter.web.public.sent_posts", crash)
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC, raise_server_exceptions=False) as client:
        check_crash_answer(client.get("/archive/"))


# --------------------------------------------------------------------------- preview


@pytest.fixture
def preview_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_site(tmp_path, monkeypatch)


@pytest.mark.parametrize("live", [False, True])
def test_every_preview_response_has_nosniff_and_nonced_scripts(
    preview_config: Path, live: bool
) -> None:
    app = create_preview_app(lambda: load_settings(preview_config), live=live)
    with TestClient(app, base_url=PREVIEW) as client:
        responses = [
            client.get("/"),
            client.get(f"/post/{SENT}"),
            client.get(f"/html/{SENT}"),
            client.get(f"/eml/{SENT}"),
            client.get("/post/no-such-post"),
            client.get("/outbox/"),
            client.get("/", headers={"host": "evil.example"}),  # refused by the Host guard
            client.post(f"/send-test/{SENT}", headers={"origin": "https://evil.example"}),
        ]
        again = client.get(f"/post/{SENT}")
    assert {r.status_code for r in responses} >= {200, 403, 404}
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url
        assert "frame-ancestors" in csp(response), response.request.url  # JSON and text too
        check_scripts(response)
    post_page = responses[1]
    assert "<script" in post_page.text
    if live:
        assert "EventSource" in responses[0].text  # the live-reload script is there, nonced
    first = re.findall(r"'nonce-([^']+)'", post_page.headers["content-security-policy"])
    second = re.findall(r"'nonce-([^']+)'", again.headers["content-security-policy"])
    assert first and second and first != second  # a fresh nonce per response
    assert len(first[0]) >= 22  # at least 128 bits


def test_a_500_in_the_preview_has_the_security_headers(
    preview_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("newsletter.web.preview.mailing_states", crash)
    app = create_preview_app(lambda: load_settings(preview_config), live=False)
    with TestClient(app, base_url=PREVIEW, raise_server_exceptions=False) as client:
        check_crash_answer(client.get("/"))
