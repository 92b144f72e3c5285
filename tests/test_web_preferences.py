"""`/preferences/<token>` over HTTP: the public lists with this address's
membership, changes by POST, the consent record, and the token rules
(forged, mangled, another kind of token, another secret: one 404)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_web_signup import APP, public_config
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.audience.consent import history
from newsletter.cli import main
from newsletter.email.linktokens import make_confirm_token, make_preferences_token
from newsletter.email.tokens import make_token
from newsletter.web.public import create_public_app

# What a browser sends for the form with no box ticked (httpx's `data={}` sends no type).
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(public_config(copy_site(tmp_path, monkeypatch)))


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=APP) as c:
        yield c


def url(store: Store, row: subs.SubscriberRow) -> str:
    return f"/preferences/{make_preferences_token(store.secret, row.uid)}"


def boxes(html: str) -> dict[str, bool]:
    """List name → ticked, read from the page's checkboxes."""
    import re

    found = re.findall(r'name="list" value="([^"]+)"( checked)?', html)
    return {name: bool(ticked) for name, ticked in found}


def test_the_page_shows_public_lists_with_membership(client: TestClient, store: Store) -> None:
    ana = store.add("ana@example.com", "letters")
    store.add("ana@example.com", "staff")
    page = client.get(url(store, ana))
    assert page.status_code == 200
    assert boxes(page.text) == {"letters": True, "garden": False}  # staff is not public
    assert "a•••@example.com" in page.text and "ana@example.com" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text


def test_post_joins_and_leaves_and_is_recorded(client: TestClient, store: Store) -> None:
    bo = store.add("bo@example.com", "letters")
    store.add("bo@example.com", "staff")
    saved = client.post(url(store, bo), data={"list": ["garden"]})
    assert saved.status_code == 200
    assert "Joined: Lantern Notes: garden posts. Left: Lantern Notes letters." in saved.text
    assert boxes(saved.text) == {"letters": False, "garden": True}
    assert store.mailable(bo, "garden") and not store.mailable(bo, "letters")
    assert store.mailable(bo, "staff")  # lists not on the page are left alone
    events = [(e.action, e.source, e.list_name) for e in history(store.engine, bo.id)]
    assert events == [
        ("unsubscribe", "preferences", "letters"),
        ("subscribe", "preferences", "garden"),
    ]
    again = client.post(url(store, bo), data={"list": ["garden"]})
    assert "Nothing changed." in again.text
    # Not the form: JSON, or a body with no type (Starlette read either as an
    # empty form, "no list ticked"), changes nothing.
    for odd in ({"json": {"list": []}}, {"content": b""}, {"content": b"list=x"}):
        refused = client.post(url(store, bo), **odd)  # type: ignore[arg-type]
        assert refused.status_code == 415, odd
    assert store.mailable(bo, "garden")
    # The form with no box ticked, as a browser sends it: leaves every list.
    nothing = client.post(url(store, bo), content=b"", headers=FORM)
    assert boxes(nothing.text) == {"letters": False, "garden": False}
    assert not store.mailable(bo, "garden")


def test_a_private_list_cannot_be_joined_from_the_page(client: TestClient, store: Store) -> None:
    cy = store.add("cy@example.com", "letters")
    client.post(url(store, cy), data={"list": ["letters", "staff"]})
    assert not store.mailable(cy, "staff")


def test_a_complaint_can_leave_lists_but_never_join(client: TestClient, store: Store) -> None:
    di = store.add("di@example.com", "letters")
    subs.mark_complained(store.engine, di.id, reason="feedback loop")
    page = client.get(url(store, di))
    assert 'id="locked"' in page.text
    client.post(url(store, di), data={"list": ["letters", "garden"]})
    assert store.status(di) == "complained"
    assert not store.mailable(di, "letters") and not store.mailable(di, "garden")


def test_a_reader_who_left_everything_can_come_back_to_one_list(
    client: TestClient, store: Store
) -> None:
    ed = store.add("ed@example.com", "letters")
    store.add("ed@example.com", "staff")
    subs.unsubscribe(store.engine, ed.id, None, reason="one-click (RFC 8058)")
    assert boxes(client.get(url(store, ed)).text) == {"letters": False, "garden": False}
    client.post(url(store, ed), data={"list": ["garden"]})
    assert store.status(ed) == "active"
    assert store.mailable(ed, "garden")
    assert not store.mailable(ed, "letters") and not store.mailable(ed, "staff")


def test_bad_tokens_get_one_404(client: TestClient, store: Store) -> None:
    fay = store.add("fay@example.com", "letters")
    good = make_preferences_token(store.secret, fay.uid)
    from datetime import UTC, datetime

    bad_tokens = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),
        good[:-2],
        good + "AA",
        make_token(store.secret, fay.uid, "letters"),  # an unsubscribe token
        make_confirm_token(store.secret, fay.uid, datetime(2100, 1, 1, tzinfo=UTC)),
        make_preferences_token(b"another secret", fay.uid),
        make_preferences_token(store.secret, "0" * 32),  # nobody
        "not-a-token",
    ]
    for bad in bad_tokens:
        for answer in (client.get(f"/preferences/{bad}"), client.post(f"/preferences/{bad}")):
            assert answer.status_code == 404, bad
            assert "This link is not valid" in answer.text
    assert store.mailable(fay, "letters")


def test_subscribers_show_prints_the_consent_history(client: TestClient, store: Store) -> None:
    gus = store.add("gus@example.com", "letters")
    client.post(url(store, gus), data={"list": ["garden"]})
    runner = CliRunner()
    config = str(store.settings.config_path)
    runner.invoke(main, ["--config", config, "subscribers", "add", "gus@example.com",
                         "--list", "staff"])  # fmt: skip
    result = runner.invoke(main, ["--config", config, "subscribers", "show", "gus@example.com"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "gus@example.com: active"
    history_lines = lines[lines.index("history:") + 1 :]
    assert [[*line.split()[1:3], line.split()[-1]] for line in history_lines] == [
        ["unsubscribe", "letters", "preferences"],
        ["subscribe", "garden", "preferences"],
        ["subscribe", "staff", "cli"],
    ]
    as_json = runner.invoke(
        main, ["--config", config, "subscribers", "show", "gus@example.com", "--json"]
    )
    import json

    data = json.loads(as_json.stdout)
    assert data["lists"] == {
        "garden": "subscribed",
        "letters": "unsubscribed",
        "staff": "subscribed",
    }
    assert [e["source"] for e in data["history"]] == ["preferences", "preferences", "cli"]
    missing = runner.invoke(main, ["--config", config, "subscribers", "show", "no@example.com"])
    assert missing.exit_code == 1


def test_every_email_footer_links_to_this_readers_preferences(
    client: TestClient, store: Store
) -> None:
    import re
    from email import message_from_bytes, policy

    hal = store.add("hal@example.com", "letters")
    ivo = store.add("ivo@example.com", "letters")
    sent = store.send("tending-a-winter-allotment")
    links: dict[str, str] = {}
    for item in sent.outbox:
        message = message_from_bytes(item.message, policy=policy.default)
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        found = re.search(
            rf"Manage your subscription:\s+<{APP}(/preferences/[A-Za-z0-9_-]+)>", text
        )
        assert found, text
        assert re.search(rf'href="{APP}{found.group(1)}"[^>]*>Manage your subscription</a>', html)
        links[item.recipient] = found.group(1)
    assert set(links) == {"hal@example.com", "ivo@example.com"}
    assert links["hal@example.com"] != links["ivo@example.com"]  # per subscriber
    assert "h•••@example.com" in client.get(links["hal@example.com"]).text
    client.post(links["ivo@example.com"], content=b"", headers=FORM)
    assert store.mailable(hal) and not store.mailable(ivo)


def test_no_preferences_link_without_public_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = make_store(copy_site(tmp_path, monkeypatch))  # the fixture: no public lists
    plain.add("jan@example.com", "letters")
    [item] = plain.send("tending-a-winter-allotment").outbox
    assert b"Manage your subscription" not in item.message and b"NLPH0" not in item.message


def test_one_click_and_its_undo_are_in_the_consent_record(client: TestClient, store: Store) -> None:
    kim = store.add("kim@example.com", "letters")
    url = f"/unsubscribe/{store.token(kim)}"
    assert client.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert client.post(f"{url}/undo", headers={"Origin": APP}).status_code == 200
    assert store.mailable(kim)
    events = [(e.action, e.source, e.list_name, e.detail) for e in history(store.engine, kim.id)]
    assert events == [
        ("unsubscribe", "one-click", "letters", "one-click (RFC 8058)"),
        ("resubscribe", "one-click", "letters", "undo"),
    ]


@pytest.mark.usefixtures("database_env")
def test_ticking_a_list_the_owner_took_the_address_off_says_why_nothing_changed(
    client: TestClient, store: Store
) -> None:
    """It said "Saved. Nothing changed." and no more."""
    lu = store.add("lu@example.com", "garden")
    subs.unsubscribe(store.engine, lu.id, "letters", reason="cli", source="cli")
    saved = client.post(url(store, lu), data={"list": ["letters", "garden"]})
    assert saved.status_code == 200
    assert "Nothing changed." not in saved.text
    assert (
        "Not joined: Lantern Notes letters (you were taken off it in a way only the "
        "site's owner can undo)." in saved.text
    )
    assert boxes(saved.text) == {"letters": False, "garden": True}
    assert not store.mailable(lu, "letters") and store.mailable(lu, "garden")
    assert [e.action for e in history(store.engine, lu.id)] == ["unsubscribe"]


@pytest.mark.usefixtures("database_env")
def test_the_lists_kept_left_from_the_preferences_page_are_recorded(
    client: TestClient, store: Store
) -> None:
    vic = store.add("vic@example.com", "letters")
    subs.unsubscribe(store.engine, vic.id, None, reason="one-click (RFC 8058)", source="one-click")
    client.post(url(store, vic), data={"list": ["garden"]})
    assert store.mailable(vic, "garden") and not store.mailable(vic, "letters")
    events = [(e.action, e.source, e.list_name, e.detail) for e in history(store.engine, vic.id)]
    assert ("unsubscribe", "preferences", "letters", "kept after preferences") in events
    # Still the reader's own: the page may join it again.
    client.post(url(store, vic), data={"list": ["garden", "letters"]})
    assert store.mailable(vic, "letters")
