"""The public app over HTTP: RFC 8058 one-click unsubscribe, the confirm page,
undo, forged tokens, the archive and /healthz, with the store checked after each."""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.email.linktokens import make_confirm_token, make_preferences_token
from newsletter.email.tokens import ALL_LISTS, make_token
from newsletter.web.public import create_public_app
from newsletter.web.server import TokenRedactingFilter, redact_tokens, start_in_thread

# On SQLite and on PostgreSQL (see conftest.database_url).
pytestmark = pytest.mark.usefixtures("database_env")

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
SAME_ORIGIN = {"origin": "https://news.lantern.example.com"}  # the undo button's page


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(copy_site(tmp_path, monkeypatch))


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url="https://news.lantern.example.com") as c:
        yield c


# --------------------------------------------------------------------------- one-click POST


def test_one_click_urlencoded_unsubscribes_with_200_and_no_redirect(
    client: TestClient, store: Store
) -> None:
    ana = store.add("ana@example.com")
    response = client.post(
        f"/unsubscribe/{store.token(ana)}", data=ONE_CLICK, follow_redirects=False
    )
    assert response.status_code == 200
    assert "location" not in response.headers
    assert "You are unsubscribed" in response.text
    assert store.left(ana) == {"letters"}
    assert not store.mailable(ana)
    assert store.status(ana) == "active"  # a per-list token leaves other lists alone


def test_one_click_multipart_body_is_accepted(client: TestClient, store: Store) -> None:
    bea = store.add("bea@example.com")
    response = client.post(
        f"/unsubscribe/{store.token(bea)}",
        files={"List-Unsubscribe": (None, "One-Click")},
    )
    assert response.status_code == 200
    assert "multipart/form-data" in response.request.headers["content-type"]
    assert store.left(bea) == {"letters"}


def test_one_click_is_idempotent(client: TestClient, store: Store) -> None:
    cai = store.add("cai@example.com")
    url = f"/unsubscribe/{store.token(cai)}"
    first = client.post(url, data=ONE_CLICK)
    stamp = subs.membership_lists(store.engine, cai.id)["letters"]
    second = client.post(url, data=ONE_CLICK)
    assert first.status_code == second.status_code == 200
    # The second POST records nothing new: the first unsubscribe time stands.
    assert subs.membership_lists(store.engine, cai.id)["letters"] == stamp


def test_global_token_unsubscribes_from_every_list(client: TestClient, store: Store) -> None:
    dan = store.add("dan@example.com")
    store.add("dan@example.com", "garden")
    response = client.post(f"/unsubscribe/{store.token(dan, ALL_LISTS)}", data=ONE_CLICK)
    assert response.status_code == 200
    assert store.status(dan) == "unsubscribed"
    assert not store.mailable(dan, "letters") and not store.mailable(dan, "garden")


def test_post_without_the_one_click_field_is_400_and_changes_nothing(
    client: TestClient, store: Store
) -> None:
    eva = store.add("eva@example.com")
    url = f"/unsubscribe/{store.token(eva)}"
    for body in ({}, {"List-Unsubscribe": "Yes"}, {"Other": "One-Click"}):
        response = client.post(url, data=body)
        assert response.status_code == 400
        assert "List-Unsubscribe=One-Click" in response.text
    broken = client.post(
        url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert broken.status_code == 400
    assert store.mailable(eva)


def test_oversized_body_is_refused(client: TestClient, store: Store) -> None:
    fay = store.add("fay@example.com")
    response = client.post(
        f"/unsubscribe/{store.token(fay)}",
        content=b"List-Unsubscribe=One-Click&pad=" + b"x" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert store.mailable(fay)


def test_the_list_unsubscribe_header_of_a_sent_email_works(
    client: TestClient, store: Store
) -> None:
    """End to end: the URL `send` put in List-Unsubscribe unsubscribes its recipient."""
    rio = store.add("rio@example.com")
    sam = store.add("sam@example.com")
    transport = store.send("tending-a-winter-allotment")
    sent = next(s for s in transport.outbox if s.recipient == "rio@example.com")
    message = message_from_bytes(sent.message, policy=policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert https is not None
    path = urlsplit(https.group(1)).path
    response = client.post(path, data=ONE_CLICK, follow_redirects=False)
    assert response.status_code == 200
    assert not store.mailable(rio)
    assert store.mailable(sam)


# --------------------------------------------------------------------------- GET and undo


def test_get_shows_a_confirm_form_and_changes_nothing(client: TestClient, store: Store) -> None:
    gil = store.add("gil@example.com")
    token = store.token(gil)
    response = client.get(f"/unsubscribe/{token}")
    assert response.status_code == 200
    assert f'action="/unsubscribe/{token}"' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert "g•••@example.com" in response.text and "gil@example.com" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "same-origin"
    assert store.mailable(gil)


def test_get_after_unsubscribing_offers_the_undo(client: TestClient, store: Store) -> None:
    hal = store.add("hal@example.com")
    token = store.token(hal)
    client.post(f"/unsubscribe/{token}", data=ONE_CLICK)
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert f'action="/unsubscribe/{token}/undo"' in page.text


def test_undo_resubscribes_that_list_only(client: TestClient, store: Store) -> None:
    ivo = store.add("ivo@example.com")
    store.add("ivo@example.com", "garden")
    client.post(f"/unsubscribe/{store.token(ivo, 'garden')}", data=ONE_CLICK)
    client.post(f"/unsubscribe/{store.token(ivo)}", data=ONE_CLICK)
    response = client.post(f"/unsubscribe/{store.token(ivo)}/undo", headers=SAME_ORIGIN)
    assert response.status_code == 200
    assert "subscribed to Lantern Notes letters again" in response.text
    assert store.mailable(ivo, "letters")
    assert not store.mailable(ivo, "garden")  # left on purpose, stays left


def test_global_undo_keeps_earlier_per_list_unsubscribes(client: TestClient, store: Store) -> None:
    jon = store.add("jon@example.com")
    store.add("jon@example.com", "garden")
    client.post(f"/unsubscribe/{store.token(jon, 'garden')}", data=ONE_CLICK)
    everywhere = store.token(jon, ALL_LISTS)
    client.post(f"/unsubscribe/{everywhere}", data=ONE_CLICK)
    assert client.post(f"/unsubscribe/{everywhere}/undo", headers=SAME_ORIGIN).status_code == 200
    assert store.status(jon) == "active"
    assert store.mailable(jon, "letters")
    assert store.left(jon) == {"garden"}


def test_undo_never_lifts_a_bounce(client: TestClient, store: Store) -> None:
    kim = store.add("kim@example.com")
    subs.mark_bounced(store.engine, kim.id, reason="550 5.1.1 no such user")
    response = client.post(f"/unsubscribe/{store.token(kim)}/undo", headers=SAME_ORIGIN)
    assert response.status_code == 200
    assert "cannot subscribe this address again" in response.text
    assert store.status(kim) == "bounced"


def test_get_on_undo_goes_back_to_the_page_and_changes_nothing(
    client: TestClient, store: Store
) -> None:
    """The address bar shows /undo after "Subscribe again": reloading it, or
    opening it from history, sees the unsubscribe page (its current state,
    the button again if it still works) rather than a bare 405.  Only the
    button's POST undoes anything."""
    lea = store.add("lea@example.com")
    token = store.token(lea)
    client.post(f"/unsubscribe/{token}", data=ONE_CLICK)
    for method in ("GET", "HEAD"):
        answer = client.request(method, f"/unsubscribe/{token}/undo", follow_redirects=False)
        assert answer.status_code == 303, method
        assert answer.headers["location"] == f"/unsubscribe/{token}"
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["referrer-policy"] == "same-origin"
    assert not store.mailable(lea)  # within the undo window, and still unsubscribed
    page = client.get(f"/unsubscribe/{token}/undo")
    assert page.status_code == 200 and 'id="undo"' in page.text
    assert not store.mailable(lea)


# --------------------------------------------------------------------------- bad tokens


def _bad_tokens(store: Store, victim: subs.SubscriberRow) -> dict[str, str]:
    good = store.token(victim)
    return {
        "forged": make_token(b"some-other-secret", victim.uid, "letters"),
        "truncated": good[:-5],
        "flipped": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "garbage": "not-a-token-at-all",
        "unknown subscriber": make_token(store.secret, "0" * 32, "letters"),
        "unknown list": make_token(store.secret, victim.uid, "no-such-list"),
    }


def test_bad_tokens_get_one_identical_404_and_touch_nobody(
    client: TestClient, store: Store
) -> None:
    victim = store.add("max@example.com")
    bystander = store.add("ned@example.com")
    bodies = set()
    for name, token in _bad_tokens(store, victim).items():
        for response in (
            client.get(f"/unsubscribe/{token}"),
            client.post(f"/unsubscribe/{token}", data=ONE_CLICK),
            client.post(f"/unsubscribe/{token}/undo", headers=SAME_ORIGIN),
        ):
            assert response.status_code == 404, name
            assert "max@" not in response.text and "m•••" not in response.text
            bodies.add(response.text)
    assert len(bodies) == 1  # no hint which kind of bad it was
    assert store.mailable(victim) and store.mailable(bystander)


def test_unsubscribe_without_token_explains_where_the_link_is(client: TestClient) -> None:
    response = client.get("/unsubscribe/")
    assert response.status_code == 200
    assert "unique to you" in response.text


# --------------------------------------------------------------------------- faults


def test_a_failing_write_is_503_not_a_fake_success(client: TestClient, store: Store) -> None:
    tia = store.add("tia@example.com")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE memberships")  # every per-list write now fails
    response = client.post(f"/unsubscribe/{store.token(tia)}", data=ONE_CLICK)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert "try again" in response.text


def test_an_unreachable_database_is_503_not_a_bad_link(
    client: TestClient, store: Store, break_database: Callable[[Engine], None]
) -> None:
    uli = store.add("uli@example.com")
    token = store.token(uli)
    break_database(store.engine)
    for response in (
        client.get(f"/unsubscribe/{token}"),
        client.post(f"/unsubscribe/{token}", data=ONE_CLICK),
        client.post(f"/unsubscribe/{token}/undo", headers=SAME_ORIGIN),
        client.get("/archive/"),
    ):
        assert response.status_code == 503, response.request.url


# --------------------------------------------------------------------------- archive


def test_archive_lists_only_sent_posts(client: TestClient, store: Store) -> None:
    store.add("oli@example.com")
    store.send("tending-a-winter-allotment")
    index = client.get("/archive/")
    assert index.status_code == 200
    assert "Tending a Winter Allotment" in index.text
    assert "A Lamp That Listens" not in index.text  # never sent
    assert "Not Yet Ready" not in index.text  # a draft


def test_archive_lists_posts_by_their_dates_whenever_they_were_sent(
    client: TestClient, store: Store
) -> None:
    """The index shows each post's date: an older post sent after a newer
    one is listed below it, not above."""
    store.add("ola@example.com")
    store.send("a-lamp-that-listens")  # 2024-05-19
    store.send("tending-a-winter-allotment")  # 2024-03-02, sent later
    index = client.get("/archive/").text
    newer, older = index.find("A Lamp That Listens"), index.find("Tending a Winter Allotment")
    assert -1 < newer < older
    assert index.find("2024-05-19") < index.find("2024-03-02")


def test_archive_page_is_the_email_without_any_token(client: TestClient, store: Store) -> None:
    pia = store.add("pia@example.com")
    transport = store.send("tending-a-winter-allotment")
    assert len(transport.outbox) == 1
    response = client.get("/archive/tending-a-winter-allotment")
    assert response.status_code == 200
    assert "Tending a Winter Allotment" in response.text
    assert "NLPH0" not in response.text  # every placeholder filled
    assert "pia@example.com" not in response.text
    assert store.token(pia) not in response.text
    assert 'https://news.lantern.example.com/unsubscribe/"' in response.text
    assert "script-src 'none'" in response.headers["content-security-policy"]


def test_archive_refuses_unsent_drafts_and_unknown_posts(client: TestClient, store: Store) -> None:
    store.add("quin@example.com")
    store.send("tending-a-winter-allotment")
    for post_id in ("a-lamp-that-listens", "draft-not-yet", "no-such-post", "x/../../etc"):
        response = client.get(f"/archive/{post_id}")
        assert response.status_code == 404, post_id
    response = client.get("/archive/draft-not-yet")
    # A page, not bare text: a reader reaches it from "View in browser".
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>This email is not in the archive</h1>" in response.text
    assert 'href="https://news.lantern.example.com/archive/"' in response.text


def test_archive_when_nothing_was_sent(client: TestClient) -> None:
    response = client.get("/archive/")
    assert response.status_code == 200
    assert "Nothing has been sent yet." in response.text


# --------------------------------------------------------------------------- health and logs


def test_healthz_reports_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_a_broken_database(
    store: Store, break_database: Callable[[Engine], None]
) -> None:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app) as c:
        break_database(store.engine)
        response = c.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"


def test_access_log_never_shows_a_whole_token(store: Store) -> None:
    token = make_token(store.secret, "f" * 32, "letters")
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/unsubscribe/{token}/undo?x=1", "1.1", 200),
        None,
    )
    assert TokenRedactingFilter().filter(record)
    line = record.getMessage()
    assert token not in line
    assert f"/unsubscribe/{token[:6]}…/undo?x=1" in line
    assert redact_tokens("GET /archive/post") == "GET /archive/post"


def test_access_log_of_a_real_server_shows_no_whole_link_token(store: Store) -> None:
    """Every token in a URL is a key: a preferences token lets its holder leave
    every list, a confirm token subscribes someone.  None may reach the log whole."""
    row = store.add("ana@example.com")
    tokens = {
        "unsubscribe": store.token(row),
        "preferences": make_preferences_token(store.secret, row.uid),
        "confirm": make_confirm_token(store.secret, "a" * 32, datetime(2030, 1, 1, tzinfo=UTC)),
    }
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    with start_in_thread(app, access_log=True, log_level="info") as server:
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        try:
            for kind, token in tokens.items():
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(f"{server.url}/{kind}/{token}", timeout=10).close()
        finally:
            access.removeHandler(handler)
    assert len(lines) == 3, lines
    for kind, token in tokens.items():
        assert not any(token in line for line in lines), kind
        assert any(f"/{kind}/{token[:6]}…" in line for line in lines), kind


ODD_POSTS = {
    "2024-12-17-c#-tips.md": ("c#-tips", "/archive/c%23-tips"),
    "2024-12-18-50%-off-a-spade?.md": ("50%-off-a-spade?", "/archive/50%25-off-a-spade%3F"),
    "news/2024-12-19-bees.md": ("news/bees", "/archive/news/bees"),
}


def test_view_in_browser_links_are_percent_encoded_and_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A post id with "#", "?" or "%" went into the link as it is: the
    browser asked for /archive/c (the rest a fragment).  The index page
    encoded its links already; the email now says the same, and the server
    (a real uvicorn on 127.0.0.1) finds the post from the encoded path."""
    config = copy_site(tmp_path, monkeypatch)
    for name in ODD_POSTS:
        path = config.parent / "posts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"Odd {path.stem}"
        path.write_text(f'---\ntitle: "{title}"\n---\n\nBody of {title}.\n')
    store = make_store(config)
    store.add("una@example.com")
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    public = "https://news.lantern.example.com"
    with start_in_thread(app) as server:
        for post_id, encoded in ODD_POSTS.values():
            [sent] = store.send(post_id).outbox
            message = message_from_bytes(sent.message, policy=policy.default)
            text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            found = re.search(r"View in browser:\s+<([^>]+)>", text)
            assert found is not None and found.group(1) == public + encoded, text
            with urllib.request.urlopen(server.url + encoded, timeout=10) as answer:
                assert answer.status == 200
                assert "Body of Odd" in answer.read().decode()
        with urllib.request.urlopen(server.url + "/archive/", timeout=10) as answer:
            index = answer.read().decode()
    for _, encoded in ODD_POSTS.values():
        assert f'href="{encoded.removeprefix("/archive/")}"' in index


def test_a_405_names_every_method_its_path_takes(client: TestClient, store: Store) -> None:
    """Each path with GET and POST was two routes, and the 405 of the first
    (`OPTIONS /unsubscribe/<token>`) said `allow: GET, HEAD`, without POST."""
    token = store.token(store.add("wyn@example.com"))
    expected = {
        f"/unsubscribe/{token}": {"GET", "HEAD", "POST"},
        f"/unsubscribe/{token}/undo": {"GET", "HEAD", "POST"},
        f"/preferences/{token}": {"GET", "HEAD", "POST"},
        f"/confirm/{token}": {"GET", "HEAD", "POST"},
        "/subscribe": {"GET", "HEAD", "POST", "OPTIONS"},
    }
    for path, methods in expected.items():
        for method in ("OPTIONS", "DELETE", "PUT"):
            if method in methods:
                continue
            answer = client.request(method, path)
            assert answer.status_code == 405, (method, path)
            assert set(answer.headers["allow"].split(", ")) == methods, (method, path)
            assert answer.headers["x-content-type-options"] == "nosniff"
    # Each method still reaches its own handler.
    assert client.get(f"/unsubscribe/{token}").status_code == 200
    assert client.head(f"/unsubscribe/{token}").status_code == 200
    assert client.post(f"/unsubscribe/{token}", data=ONE_CLICK).status_code == 200
