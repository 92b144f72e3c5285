"""The preview app over HTTP: Host and same-origin guards, index, a post's
email exactly as `send` builds it, lint, test sends, the outbox, live reload."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from smtpserver import SmtpTestServer
from starlette.testclient import TestClient
from test_web_support import copy_site, make_store
from watchready import Watched

from newsletter.config import Settings, load_settings
from newsletter.email.message import MessageTemplate
from newsletter.email.render import render_email
from newsletter.posts.collection import load_posts
from newsletter.web.hostcheck import is_loopback_host, is_same_origin, split_host
from newsletter.web.preview import create_preview_app, parse_addresses
from newsletter.web.reload import Broadcaster, watch
from newsletter.web.server import preview_in_thread

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

BASE = "http://127.0.0.1:8025"
SAME_ORIGIN = {"origin": BASE}
MESSY = "notes-that-need-fixing"
CLEAN = "tending-a-winter-allotment"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_site(tmp_path, monkeypatch)


def _client(config: Path, **overrides: object) -> TestClient:
    app = create_preview_app(lambda: load_settings(config, overrides), live=False)
    return TestClient(app, base_url=BASE)


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with _client(config) as c:
        yield c


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True),
        ("localhost:8025", True),
        ("127.0.0.1:8025", True),
        ("[::1]:8025", True),
        ("[::1]", True),
        ("LOCALHOST:8025", True),
        ("evil.example.com", False),
        ("127.0.0.1.evil.example.com", False),
        ("localhost.example.com:8025", False),
        ("evillocalhost:8025", False),  # a suffix is not the name
        ("rebound127.0.0.1", False),
        ("[::1", False),
        ("127.0.0.1:80x", False),
        ("0.0.0.0:8025", False),
    ],
)
def test_loopback_host_names(host: str, ok: bool) -> None:
    assert is_loopback_host(host) is ok


def test_split_host_keeps_ipv6_brackets() -> None:
    assert split_host("[::1]:8025") == ("[::1]", "8025")
    assert split_host("localhost") == ("localhost", "")


def test_same_origin_needs_the_same_host_and_port() -> None:
    assert is_same_origin("http://127.0.0.1:8025", "127.0.0.1:8025")
    assert is_same_origin("http://127.0.0.1:8025/post/x?y", "127.0.0.1:8025")
    assert not is_same_origin("http://127.0.0.1:9999", "127.0.0.1:8025")
    assert not is_same_origin("http://localhost:8025", "127.0.0.1:8025")
    assert not is_same_origin("null", "127.0.0.1:8025")
    assert not is_same_origin("file:///tmp/x.html", "127.0.0.1:8025")


def test_foreign_host_header_is_refused(client: TestClient) -> None:
    for path in ("/", f"/post/{CLEAN}", "/outbox/", "/events"):
        response = client.get(path, headers={"host": "rebound.example.com"})
        assert response.status_code == 403, path
        assert "only answers to localhost" in response.text
    assert client.get("/", headers={"host": "[::1]:8025"}).status_code == 200


def test_missing_host_header_is_400(client: TestClient) -> None:
    response = client.get("/", headers={"host": ""})
    assert response.status_code == 400


def test_post_needs_a_same_origin_header(client: TestClient, config: Path) -> None:
    url = f"/send-test/{CLEAN}"
    data = {"addresses": "me@example.com"}
    outbox = config.parent / ".newsletter" / "outbox"
    for headers in ({}, {"origin": "https://evil.example.com"}, {"origin": "null"}):
        response = client.post(url, data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403
        assert response.text == "cross-origin request refused\n"
    assert not (outbox / "new").exists() or not any((outbox / "new").iterdir())
    referer = {"referer": f"{BASE}/post/{CLEAN}"}
    assert client.post(url, data=data, headers=referer, follow_redirects=False).status_code == 303


def test_get_cannot_send(client: TestClient) -> None:
    assert client.get(f"/send-test/{CLEAN}").status_code == 405


# --------------------------------------------------------------------------- index


def test_index_lists_posts_with_status_per_list(client: TestClient, config: Path) -> None:
    store = make_store(config)
    store.add("uma@example.com")
    store.send(CLEAN)
    page = client.get("/").text
    rows = dict(re.findall(r'<tr data-post="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {CLEAN, "a-lamp-that-listens", MESSY, "draft-not-yet"}
    badges = {k: re.findall(r'class="badge[^"]*">([^<]+)<', v) for k, v in rows.items()}
    assert badges[CLEAN] == ["sent", "due"]  # letters: sent; garden: tagged, not yet
    assert badges["a-lamp-that-listens"] == ["due", "not for this list"]
    assert badges["draft-not-yet"] == ["unpublished", "unpublished"]
    assert "2024-03-02" in rows[CLEAN]


def test_a_draft_in_the_sites_drafts_folder_previews_by_its_name(
    client: TestClient, config: Path
) -> None:
    """`_drafts/next-idea.md` is no post of the blog yet: its page showed
    "no post matches"; a writer previews it before publishing it."""
    settings = load_settings(config)
    drafts = (settings.site.source_dir or settings.base_dir) / "_drafts"
    drafts.mkdir(exist_ok=True)
    (drafts / "next-idea.md").write_text("---\ntitle: Next Idea\n---\nSoon.\n", encoding="utf-8")
    page = client.get("/post/next-idea")
    assert page.status_code == 200 and "Next Idea" in page.text
    assert client.get("/post/not-a-draft").status_code == 404


def test_an_edited_draft_shows_on_the_next_request(client: TestClient, config: Path) -> None:
    """A draft is read again on each request, but its preview was kept by
    (id, list) and dropped only when a post folder changed: the preview kept
    the first version while `render` and the test send used the new one."""
    settings = load_settings(config)
    drafts = (settings.site.source_dir or settings.base_dir) / "_drafts"
    drafts.mkdir(exist_ok=True)
    draft = drafts / "stale.md"
    draft.write_text("---\ntitle: Stale draft\n---\nVersion one.\n", encoding="utf-8")
    assert "Version one." in client.get("/html/stale").text
    draft.write_text("---\ntitle: Stale draft\n---\nVersion two.\n", encoding="utf-8")
    assert "Version two." in client.get("/html/stale").text
    assert "Version two." in client.get("/post/stale").text


def test_index_reports_unreadable_posts(client: TestClient, config: Path) -> None:
    (config.parent / "posts" / "2024-10-10-broken.md").write_text("---\ntitle: [unclosed\n---\nx\n")
    page = client.get("/")
    assert page.status_code == 200
    assert "Posts that cannot be read" in page.text
    assert "2024-10-10-broken.md" in page.text


def test_a_readable_posts_warnings_are_not_listed_as_unreadable(
    client: TestClient, config: Path
) -> None:
    """Before, a post's warnings were listed under "Posts that cannot be
    read" while the same post was listed, readable, with its warning count."""
    (config.parent / "posts" / "2024-10-11-odd.md").write_text(
        "---\ntitle: Odd\n---\nHi {% frobnicate %}\n"
    )
    page = client.get("/")
    assert page.status_code == 200
    assert "Posts that cannot be read" not in page.text
    row = re.search(r'<tr data-post="odd">.*?</tr>', page.text, re.S)
    assert row is not None and '<span class="level-warning">1</span>' in row.group(0)
    (config.parent / "posts" / "2024-10-10-broken.md").write_text("---\ntitle: [unclosed\n---\nx\n")
    page = client.get("/")
    unreadable = page.text[page.text.index("Posts that cannot be read") :]
    unreadable = unreadable[: unreadable.index("</section>")]
    assert "2024-10-10-broken.md" in unreadable and "frobnicate" not in unreadable


def test_broken_configuration_shows_the_error_then_recovers(
    client: TestClient, config: Path
) -> None:
    good = config.read_text()
    config.write_text(good.replace('timezone = "Europe/Lisbon"', 'timezone = "Mars/Olympus"'))
    broken = client.get("/")
    assert broken.status_code == 500
    assert "site.timezone" in broken.text and "Mars/Olympus" in broken.text
    config.write_text(good)
    assert client.get("/").status_code == 200


# --------------------------------------------------------------------------- one post


def _without_date(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: [^\r]*\r\n", b"", raw)


def test_eml_is_exactly_what_send_builds(client: TestClient, config: Path) -> None:
    response = client.get(f"/eml/{CLEAN}?list=letters")
    assert response.status_code == 200
    assert response.headers["content-type"] == "message/rfc822"
    assert 'filename="tending-a-winter-allotment.eml"' in response.headers["content-disposition"]
    settings = load_settings(config)
    post = load_posts(settings).find(CLEAN)
    rendered = render_email(post, settings, settings.lists["letters"])
    expected = MessageTemplate.build(rendered, settings).sample(
        mailing_key=f"preview:{CLEAN}:letters"
    )
    assert _without_date(response.content).split(b"\r\n") == _without_date(expected).split(b"\r\n")


def test_preview_is_dkim_signed_like_a_real_send(config: Path) -> None:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = config.parent / "dkim.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    dkim_keys = {
        "dkim.domain": "lantern.example.com",
        "dkim.selector": "news",
        "dkim.private_key_path": str(pem),
    }
    with _client(config, **dkim_keys) as client:
        raw = client.get(f"/eml/{CLEAN}").content
        page = client.get(f"/post/{CLEAN}").text
    assert raw.startswith(b"DKIM-Signature:")
    assert "<th>DKIM-Signature</th>" in page
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)


def test_post_page_shows_parts_headers_and_iframe(client: TestClient) -> None:
    page = client.get(f"/post/{CLEAN}")
    assert page.status_code == 200
    assert f'src="/html/{CLEAN}?list=letters"' in page.text
    assert 'id="text-part"' in page.text and "leeks stand through the cold" in page.text.lower()
    assert "<th>List-Unsubscribe-Post</th>" in page.text
    assert "reader@example.com" in page.text  # the sample recipient
    html = client.get(f"/html/{CLEAN}?list=letters")
    assert html.status_code == 200
    assert "Tending a Winter Allotment" in html.text
    assert "script-src 'none'" in html.headers["content-security-policy"]


def test_list_selector_and_per_list_rendering(client: TestClient) -> None:
    page = client.get(f"/post/{CLEAN}?list=garden").text
    assert '<option value="garden" selected>' in page
    assert "this email differs between lists" in page
    letters = client.get(f"/html/{CLEAN}?list=letters").text
    garden = client.get(f"/html/{CLEAN}?list=garden").text
    assert "Lantern Notes: garden posts" in garden and "Lantern Notes: garden posts" not in letters


def test_unknown_post_or_list_is_404(client: TestClient) -> None:
    assert client.get("/post/no-such-post").status_code == 404
    assert client.get(f"/post/{CLEAN}?list=nope").status_code == 404
    assert client.get(f"/html/{CLEAN}?list=nope").status_code == 404
    assert client.get("/eml/no-such-post").status_code == 404


def test_a_broken_template_is_shown_not_crashed(config: Path) -> None:
    theme = config.parent / "my-theme"
    theme.mkdir()
    (theme / "email.html.j2").write_text("<p>{{ post.title </p>\n")
    with _client(config, **{"email.templates_dir": str(theme)}) as client:
        page = client.get(f"/post/{CLEAN}")
        assert page.status_code == 500
        assert "email.html.j2" in page.text
        assert client.get(f"/html/{CLEAN}").status_code == 500
        # Fixing the template is picked up without restarting.
        (theme / "email.html.j2").write_text(
            "<p>{{ post.title }} <a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>\n"
        )
        fixed = client.get(f"/html/{CLEAN}")
    assert fixed.status_code == 200
    assert "Tending a Winter Allotment" in fixed.text


def _lint(client: TestClient, post_id: str) -> dict[str, list[str]]:
    page = client.get(f"/post/{post_id}").text
    found: dict[str, list[str]] = {}
    for code, text in re.findall(r'data-code="([^"]+)"><strong>\w+</strong> ([^<]*)<', page):
        found.setdefault(code, []).append(text)
    return found


def test_lint_flags_a_messy_post(client: TestClient) -> None:
    found = _lint(client, MESSY)
    assert any("http://lantern.example.com/old-page" in m for m in found["http"])
    assert any("messy.png" in m for m in found["img-width"])
    assert found["subject"] == ["subject is 87 characters; inboxes cut it after about 80"]
    assert "unsubscribe" not in found  # the theme has the link


def test_lint_is_quiet_for_a_clean_post(client: TestClient) -> None:
    found = _lint(client, CLEAN)
    assert set(found) <= {"size", "img-width", "post"}, found
    assert found["size"][0].startswith("HTML is ")


# --------------------------------------------------------------------------- test sends


def test_send_test_through_smtp(config: Path, smtp_server: SmtpTestServer) -> None:
    with _client(config, **smtp_server.settings_overrides()) as client:
        response = client.post(
            f"/send-test/{CLEAN}?list=letters",
            data={"addresses": "ed@example.com, fi@example.com"},
            headers=SAME_ORIGIN,
            follow_redirects=False,
        )
        assert response.status_code == 303
        page = client.get(response.headers["location"]).text
    assert "sent a test to ed@example.com, fi@example.com via smtp" in page
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        "ed@example.com",
        "fi@example.com",
    ]
    message = message_from_bytes(smtp_server.received[0].data, policy=policy.default)
    assert message["Subject"] == "[TEST] Tending a Winter Allotment"


def test_send_test_refused_by_the_server_is_reported(
    config: Path, smtp_server: SmtpTestServer
) -> None:
    smtp_server.script("gone@example.com", "550 5.1.1 No such user")
    with _client(config, **smtp_server.settings_overrides()) as client:
        response = client.post(
            f"/send-test/{CLEAN}", data={"addresses": "gone@example.com"}, headers=SAME_ORIGIN
        )
    assert 'class="notice error"' in response.text
    assert "sent 0 of 1" in response.text and "550" in response.text


def test_send_test_with_no_smtp_server_is_reported(config: Path) -> None:
    from smtpserver import free_port

    overrides = {"delivery.transport": "smtp", "smtp.host": "127.0.0.1", "smtp.port": free_port()}
    overrides |= {"smtp.security": "none", "smtp.timeout": 2.0}
    with _client(config, **overrides) as client:
        response = client.post(
            f"/send-test/{CLEAN}", data={"addresses": "me@example.com"}, headers=SAME_ORIGIN
        )
    assert response.status_code == 200
    assert 'class="notice error"' in response.text


def test_send_test_needs_addresses(client: TestClient) -> None:
    response = client.post(f"/send-test/{CLEAN}", data={"addresses": " "}, headers=SAME_ORIGIN)
    assert "give at least one address" in response.text
    many = ",".join(f"p{i}@example.com" for i in range(11))
    response = client.post(f"/send-test/{CLEAN}", data={"addresses": many}, headers=SAME_ORIGIN)
    assert "at most 10 test addresses" in response.text


def test_parse_addresses() -> None:
    assert parse_addresses(" a@example.com,b@example.com;\nc@example.com ") == (
        "a@example.com",
        "b@example.com",
        "c@example.com",
    )


# --------------------------------------------------------------------------- outbox


def test_outbox_lists_and_shows_maildir_messages(client: TestClient, config: Path) -> None:
    # The maildir transport creates only the last folder of outbox_dir, so its
    # parent must exist (in real use the database already lives there).
    (config.parent / ".newsletter").mkdir()
    assert "Nothing in the outbox yet." in client.get("/outbox/").text
    client.post(f"/send-test/{CLEAN}", data={"addresses": "kai@example.com"}, headers=SAME_ORIGIN)
    index = client.get("/outbox/").text
    assert "kai@example.com" in index
    assert "[TEST] Tending a Winter Allotment" in index
    key = re.search(r'href="/outbox/([^"]+)"', index)
    assert key is not None
    page = client.get(f"/outbox/{key.group(1)}")
    assert page.status_code == 200 and 'id="text-part"' in page.text
    assert "Tending a Winter Allotment" in client.get(f"/outbox/{key.group(1)}/html").text
    eml = client.get(f"/outbox/{key.group(1)}/eml")
    assert eml.content.startswith(b"") and b"kai@example.com" in eml.content


def test_outbox_refuses_bad_keys(client: TestClient, config: Path) -> None:
    (config.parent / ".newsletter").mkdir()
    client.post(f"/send-test/{CLEAN}", data={"addresses": "kai@example.com"}, headers=SAME_ORIGIN)
    for key in ("nope", ".hidden", "..%2F..%2Fnewsletter.toml"):
        assert client.get(f"/outbox/{key}").status_code == 404, key


# --------------------------------------------------------------------------- live reload


def test_edited_post_shows_without_the_watcher(client: TestClient, config: Path) -> None:
    post = config.parent / "posts" / "2024-03-02-tending-a-winter-allotment.md"
    post.write_text(post.read_text().replace("Tending a Winter", "Minding a Winter"))
    assert "Minding a Winter Allotment" in client.get(f"/html/{CLEAN}").text


def test_a_post_added_in_a_sub_folder_shows_without_the_watcher(
    client: TestClient, config: Path
) -> None:
    """The preview's stat fingerprint walks the posts folder to the bottom, as
    the post reader does."""
    folder = config.parent / "posts" / "2025" / "autumn"
    folder.mkdir(parents=True)
    assert "Pruning in the Rain" not in client.get("/").text
    (folder / "2025-10-04-pruning-in-the-rain.md").write_text(
        '---\ntitle: "Pruning in the Rain"\ntags: [Gardening]\n---\n\nWet shears.\n'
    )
    assert "Pruning in the Rain" in client.get("/").text


def test_a_template_edited_in_a_theme_sub_folder_shows_without_the_watcher(config: Path) -> None:
    theme = config.parent / "my-theme"
    (theme / "parts").mkdir(parents=True)
    (theme / "parts" / "sign-off.txt").write_text("Yours, the gardener\n")
    (theme / "email.txt.j2").write_text(
        "{{ post.title }}\n{% include 'parts/sign-off.txt' %}{{ unsubscribe_url }}\n"
    )
    with _client(config, **{"email.templates_dir": str(theme)}) as client:
        assert "Yours, the gardener" in client.get(f"/post/{CLEAN}").text
        (theme / "parts" / "sign-off.txt").write_text("Yours, the night gardener\n")
        assert "Yours, the night gardener" in client.get(f"/post/{CLEAN}").text


def test_broadcaster_stream_announces_changes() -> None:
    async def scenario() -> list[str]:
        hub = Broadcaster()
        stream = hub.stream(seen=None)
        frames = [await anext(stream)]
        hub.bump()
        frames.append(await asyncio.wait_for(anext(stream), 1))
        hub.close()
        frames += [frame async for frame in stream]
        return frames

    frames = asyncio.run(scenario())
    assert frames[0].startswith("retry: 500\nevent: hello\ndata: 0")
    assert frames[1] == "event: reload\ndata: 1\n\n"
    assert len(frames) == 2


def test_stale_page_is_told_to_reload_at_once() -> None:
    async def first_two() -> list[str]:
        hub = Broadcaster()
        hub.bump()
        stream = hub.stream(seen=0)
        return [await anext(stream), await anext(stream)]

    assert asyncio.run(first_two())[1] == "event: reload\ndata: 1\n\n"


def test_watch_bumps_on_post_template_and_config_changes(tmp_path: Path, watched: Watched) -> None:
    posts, theme = tmp_path / "posts", tmp_path / "theme"
    posts.mkdir(), theme.mkdir()
    config = tmp_path / "newsletter.toml"
    config.write_text("")
    (tmp_path / "unrelated.txt").write_text("")

    async def scenario() -> list[int]:
        hub, stop = Broadcaster(), asyncio.Event()
        task = asyncio.create_task(watch(hub, lambda: [posts, theme], lambda: [config], stop))
        # Not a fixed pause: every path is watched before the first write.
        for _ in range(1200):
            if all(watched.covers(p) for p in (posts, theme, config)):
                break
            await asyncio.sleep(0.05)
        seen = []
        for path in (tmp_path / "unrelated.txt", posts / "a.md", theme / "t.j2", config):
            before = hub.generation
            path.write_text("changed")
            # An ignored file gets a shorter wait: nothing should come anyway
            # (a bump it caused would still show at the next path's count).
            # The other waits only bound a hang (3 x 30 s, under pytest-timeout's 120 s).
            deadline = time.monotonic() + (0.8 if path.suffix == ".txt" else 30)
            while hub.generation == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            seen.append(hub.generation - before)
        stop.set()
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(scenario()) == [0, 1, 1, 1]


def test_events_endpoint_reloads_after_a_save(config: Path, watched: Watched) -> None:
    """How soon is measured, not asserted (a loaded machine's thread can be
    starved for seconds): the 60 s read timeout only bounds a hang."""
    running = preview_in_thread(lambda: load_settings(config))
    try:
        post = config.parent / "posts" / "2024-05-19-a-lamp-that-listens.md"
        with httpx.stream("GET", f"{running.url}/events?g=0", timeout=60) as stream:
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(3)] == ["retry: 500", "event: hello", "data: 0"]
            # Not a fixed pause: a starved machine had not set the watch up after 0.3 s.
            assert watched.wait(post)
            post.write_text(post.read_text() + "\nOne more line.\n")
            # Keepalives keep the stream busy: the read timeout alone would
            # not end a stream that never reloads.
            deadline = time.monotonic() + 60
            for line in lines:
                if line == "event: reload":
                    break
                assert time.monotonic() < deadline, "no reload within 60 s of the save"
            else:
                pytest.fail("the stream ended without a reload")
    finally:
        running.stop()
    assert not running.thread.is_alive()


def test_settings_reload_uses_the_loader(config: Path) -> None:
    calls: list[Settings] = []

    def load() -> Settings:
        calls.append(load_settings(config))
        return calls[-1]

    with TestClient(create_preview_app(load, live=False), base_url=BASE) as c:
        c.get("/")
        c.get("/")
        assert len(calls) == 1  # unchanged file: loaded once
        config.write_text(config.read_text().replace('Lantern Notes"', 'Lantern Notebook"'))
        assert "Lantern Notebook" in c.get("/").text
        assert len(calls) == 2


@pytest.mark.parametrize("seen", ["9" * 5000, "²", "-1", "abc"])
def test_events_with_a_malformed_generation_starts_from_now(config: Path, seen: str) -> None:
    """`?g=` is the page's own number; anything else (too long for int(),
    a Unicode digit) is ignored, not a 500."""
    running = preview_in_thread(lambda: load_settings(config), live=False)
    try:
        with httpx.stream("GET", f"{running.url}/events", params={"g": seen}, timeout=5) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(3)] == ["retry: 500", "event: hello", "data: 0"]
    finally:
        running.stop()


def test_a_notice_in_a_link_is_never_shown(client: TestClient) -> None:
    """The banner after a test send said whatever `?notice=` held: a link to
    the preview could show the writer any text as the tool's own message."""
    response = client.get(
        f"/post/{CLEAN}",
        params={"notice": "Your SMTP password expired: see evil.example", "level": "error"},
    )
    assert response.status_code == 200
    assert "evil.example" not in response.text and 'id="notice"' not in response.text
