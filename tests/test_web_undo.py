"""`POST /unsubscribe/<token>/undo` reverses exactly what that token's own
one-click POST changed, within 15 minutes, from our own pages only (issue 9,
item 1).  A suppression made anywhere else — a global unsubscribe, the owner's
`subscribers remove` / `unsubscribe`, an import with status=unsubscribed —
is lifted only by the owner (`subscribers resubscribe`, `import --resubscribe`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.audience.consent import history
from newsletter.cli import main
from newsletter.email.tokens import ALL_LISTS
from newsletter.store.schema import memberships, subscribers, unsubscribe_events
from newsletter.web.public import create_public_app

PUBLIC = "https://news.lantern.example.com"
ORIGIN = {"origin": PUBLIC}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
REFUSED = "cannot subscribe this address again"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_site(tmp_path, monkeypatch)


@pytest.fixture
def store(config: Path) -> Store:
    return make_store(config)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as c:
        yield c


def owner(config: Path, *args: str) -> str:
    """Run an owner's command; it must succeed."""
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def unsubscribe(client: TestClient, token: str) -> None:
    response = client.post(f"/unsubscribe/{token}", data=ONE_CLICK)
    assert response.status_code == 200


def undo(client: TestClient, token: str, headers: dict[str, str] | None = None) -> str:
    response = client.post(
        f"/unsubscribe/{token}/undo", headers=ORIGIN if headers is None else headers
    )
    assert response.status_code == 200, response.text
    return response.text


# --------------------------------------------------------------------------- happy paths


def test_undo_reverses_this_tokens_own_unsubscribe(client: TestClient, store: Store) -> None:
    ana = store.add("ana@example.com")
    token = store.token(ana)
    unsubscribe(client, token)
    assert not store.mailable(ana)
    page = client.get(f"/unsubscribe/{token}")
    assert f'action="/unsubscribe/{token}/undo"' in page.text
    assert "for 15 minutes" in page.text
    text = undo(client, token)
    assert "subscribed to Lantern Notes letters again" in text
    assert store.mailable(ana) and store.status(ana) == "active"
    # Once undone there is nothing left to undo: a second POST changes nothing.
    assert "subscribed to Lantern Notes letters again" in undo(client, token)
    assert store.mailable(ana)


def test_global_undo_restores_the_status_it_changed(client: TestClient, store: Store) -> None:
    bea = store.add("bea@example.com")
    store.add("bea@example.com", "garden")
    everywhere = store.token(bea, ALL_LISTS)
    unsubscribe(client, everywhere)
    assert store.status(bea) == "unsubscribed"
    undo(client, everywhere)
    assert store.status(bea) == "active"
    assert store.mailable(bea, "letters") and store.mailable(bea, "garden")


def test_undo_after_a_one_click_on_a_removed_member_restores_the_removal(
    client: TestClient, store: Store, config: Path
) -> None:
    """The POST recorded a per-list unsubscribe for a non-member; undo takes
    back exactly that record and adds nobody to the list."""
    cai = store.add("cai@example.com")
    owner(config, "subscribers", "remove", "cai@example.com", "--list", "letters")
    unsubscribe(client, store.token(cai))
    assert store.left(cai) == {"letters"}
    assert REFUSED in undo(client, store.token(cai))
    assert subs.membership_lists(store.engine, cai.id) == {}
    assert not store.mailable(cai)


# --------------------------------------------------------------------------- the four holes


def test_undo_never_lifts_a_global_unsubscribe(client: TestClient, store: Store) -> None:
    dan = store.add("dan@example.com")
    unsubscribe(client, store.token(dan, ALL_LISTS))
    # The per-list link of the same reader: undo without a POST of its own...
    assert REFUSED in undo(client, store.token(dan))
    assert store.status(dan) == "unsubscribed" and not store.mailable(dan)
    # ...and after its own POST neither: putting the membership back would
    # send nothing while every list is left, so nothing is reversed or
    # recorded (the page said "cannot", the consent record "resubscribe").
    unsubscribe(client, store.token(dan))
    assert store.left(dan) == {"letters"}
    assert REFUSED in undo(client, store.token(dan))
    assert store.left(dan) == {"letters"}
    assert store.status(dan) == "unsubscribed" and not store.mailable(dan)


def test_undo_never_lifts_an_owners_remove(client: TestClient, store: Store, config: Path) -> None:
    eva = store.add("eva@example.com")
    owner(config, "subscribers", "remove", "eva@example.com", "--list", "letters")
    assert REFUSED in undo(client, store.token(eva))
    assert subs.membership_lists(store.engine, eva.id) == {}
    assert not store.mailable(eva)


def test_undo_never_lifts_an_imported_suppression(
    client: TestClient, store: Store, config: Path, tmp_path: Path
) -> None:
    fay = store.add("fay@example.com")
    csv = tmp_path / "suppressed.csv"
    csv.write_text("email,status\nfay@example.com,unsubscribed\n")
    owner(config, "subscribers", "import", str(csv), "--list", "letters")
    assert store.status(fay) == "unsubscribed"
    for token in (store.token(fay), store.token(fay, ALL_LISTS)):
        assert REFUSED in undo(client, token)
        # A one-click that changes nothing (already suppressed) gives undo nothing to reverse.
        unsubscribe(client, token)
        assert REFUSED in undo(client, token)
    assert store.status(fay) == "unsubscribed" and not store.mailable(fay)


@pytest.mark.parametrize("scope", [["--list", "letters"], []])
def test_undo_never_lifts_an_owners_unsubscribe(
    client: TestClient, store: Store, config: Path, scope: list[str]
) -> None:
    gil = store.add("gil@example.com")
    owner(config, "subscribers", "unsubscribe", "gil@example.com", *scope)
    owners_scope = store.token(gil) if scope else store.token(gil, ALL_LISTS)
    assert REFUSED in undo(client, owners_scope)
    assert REFUSED in undo(client, store.token(gil))  # the letters link, either way
    for token in (store.token(gil), store.token(gil, ALL_LISTS)):
        undo(client, token)
        unsubscribe(client, token)
    assert not store.mailable(gil)
    # Each POST above that changed something (the scope the owner left
    # alone) is undone; the owner's own unsubscribe stands.
    for token in (store.token(gil), store.token(gil, ALL_LISTS)):
        undo(client, token)
    assert not store.mailable(gil)
    # The owner can lift it.
    owner(config, "subscribers", "resubscribe", "gil@example.com", *scope)
    assert store.mailable(gil)


def test_an_owners_later_unsubscribe_is_not_undone(
    client: TestClient, store: Store, config: Path
) -> None:
    hal = store.add("hal@example.com")
    token = store.token(hal)
    unsubscribe(client, token)
    owner(config, "subscribers", "resubscribe", "hal@example.com", "--list", "letters")
    owner(config, "subscribers", "unsubscribe", "hal@example.com", "--list", "letters")
    assert REFUSED in undo(client, token)  # the stamp is the owner's now, not the link's
    assert not store.mailable(hal)


# --------------------------------------------------------------------------- origin and window


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "http://news.lantern.example.com"},  # another scheme is another origin
        {"origin": "https://news.lantern.example.com.evil.example"},
        {"referer": "https://evil.example/page"},
        {},  # no Origin, no Referer
    ],
)
def test_cross_origin_undo_is_refused(
    client: TestClient, store: Store, headers: dict[str, str]
) -> None:
    ivo = store.add("ivo@example.com")
    token = store.token(ivo)
    unsubscribe(client, token)
    response = client.post(f"/unsubscribe/{token}/undo", headers=headers)
    assert response.status_code == 403
    assert response.text == "cross-origin request refused\n"
    assert not store.mailable(ivo)
    undo(client, token)  # the same undo from our own page still works
    assert store.mailable(ivo)


def test_same_origin_referer_is_enough_without_origin(client: TestClient, store: Store) -> None:
    jon = store.add("jon@example.com")
    token = store.token(jon)
    unsubscribe(client, token)
    undo(client, token, {"referer": f"{PUBLIC}/unsubscribe/{token}"})
    assert store.mailable(jon)


def _age(store: Store, row: subs.SubscriberRow, minutes: float) -> None:
    """Move this subscriber's recorded unsubscribe `minutes` into the past,
    consistently (the event and the membership stamp it set)."""
    with store.engine.begin() as conn:
        event = conn.execute(
            unsubscribe_events.select().where(unsubscribe_events.c.subscriber_id == row.id)
        ).one()
        earlier = event.changed_at - timedelta(minutes=minutes)
        conn.execute(
            update(unsubscribe_events)
            .where(unsubscribe_events.c.id == event.id)
            .values(changed_at=earlier)
        )
        conn.execute(
            update(memberships)
            .where(memberships.c.subscriber_id == row.id)
            .where(memberships.c.unsubscribed_at == event.changed_at)
            .values(unsubscribed_at=earlier)
        )
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == row.id)
            .where(subscribers.c.status_changed_at == event.changed_at)
            .values(status_changed_at=earlier)
        )


@pytest.mark.parametrize("scope", ["letters", ALL_LISTS])
def test_undo_after_the_window_is_refused(client: TestClient, store: Store, scope: str) -> None:
    kim = store.add("kim@example.com")
    token = store.token(kim, scope)
    unsubscribe(client, token)
    _age(store, kim, 16)
    assert "undo-form" not in client.get(f"/unsubscribe/{token}").text
    text = undo(client, token)
    assert "too late to undo" in text
    assert not store.mailable(kim)


def test_undo_just_inside_the_window_works(client: TestClient, store: Store) -> None:
    lea = store.add("lea@example.com")
    token = store.token(lea)
    unsubscribe(client, token)
    _age(store, lea, 14)
    assert "subscribed to Lantern Notes letters again" in undo(client, token)
    assert store.mailable(lea)


@pytest.mark.usefixtures("database_env")
def test_undo_from_an_idn_public_url_passes_the_origin_check(config: Path) -> None:
    """The browser sends the IDN host in its ASCII form; the check compared
    it with the Unicode host of `[web] public_url` and refused (403)."""
    text = config.read_text().replace(
        'public_url = "https://news.lantern.example.com"',
        'public_url = "https://Nachrichten.bücher.example:443"',
    )
    config.write_text(text)
    store = make_store(config)
    sent = "https://nachrichten.xn--bcher-kva.example"
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=sent) as client:
        dee = store.add("dee@example.com")
        unsubscribe(client, store.token(dee))
        assert "again" in undo(client, store.token(dee), {"origin": sent})
        assert store.mailable(dee)
        refused = client.post(
            f"/unsubscribe/{store.token(dee)}/undo",
            headers={"origin": "https://xn--bcher-kva.example"},
        )
        assert refused.status_code == 403


@pytest.mark.usefixtures("database_env")
@pytest.mark.parametrize(
    "stop",
    [
        lambda e, sid: subs.mark_bounced(e, sid, reason="550 5.1.1"),
        lambda e, sid: subs.mark_complained(e, sid, reason="feedback loop"),
        lambda e, sid: subs.unsubscribe(e, sid, None, reason="one-click", source="one-click"),
    ],
    ids=["bounce", "complaint", "another-links-global-unsubscribe"],
)
def test_no_undo_offered_nor_recorded_once_the_address_stopped_otherwise(
    client: TestClient, store: Store, stop: Any
) -> None:
    """After this link's unsubscribe from one list, a bounce, a complaint or
    an unsubscribe from every list stopped the address: the page offered
    "Subscribe again", whose answer was "We cannot subscribe this address
    again from here", while the membership was put back and the consent
    record said "resubscribe … undo"."""
    eve = store.add("eve@example.com")
    token = store.token(eve)
    unsubscribe(client, token)
    stop(store.engine, eve.id)
    page = client.get(f"/unsubscribe/{token}")
    assert 'id="undo"' not in page.text
    assert REFUSED in undo(client, token)
    assert store.left(eve) == {"letters"}
    assert not store.mailable(eve)
    assert "resubscribe" not in [e.action for e in history(store.engine, eve.id)]


def test_global_undo_names_the_lists_that_stay_left(client: TestClient, store: Store) -> None:
    """Undoing an unsubscribe from every list brings back the status, not a
    list left on its own before: the page said "subscribed to every list
    again" while that list stayed unsubscribed."""
    cy = store.add("cy@example.com")
    store.add("cy@example.com", "garden")
    unsubscribe(client, store.token(cy, "garden"))  # garden alone, first
    everywhere = store.token(cy, ALL_LISTS)
    unsubscribe(client, everywhere)
    text = undo(client, everywhere)
    assert store.mailable(cy, "letters") and not store.mailable(cy, "garden")
    assert "every list" not in text
    assert "stays unsubscribed from Lantern Notes: garden posts" in text


# --------------------------------------------------------------------------- what to do instead

PREFS_LINK = re.compile(r'href="([^"]*/preferences/[^"]+)"')


def _public_letters(config: Path, public_url: str = PUBLIC) -> Store:
    """The fixture site with its letters list public (on the preferences page)."""
    text = config.read_text().replace(f'"{PUBLIC}"', f'"{public_url}"')
    text = text.replace(
        'title = "Lantern Notes letters"\n', 'title = "Lantern Notes letters"\npublic = true\n'
    )
    config.write_text(text)
    return make_store(config)


def _too_late(store: Store, client: TestClient, email: str, scope: str = "letters") -> str:
    row = store.add(email)
    token = store.token(row, scope)
    unsubscribe(client, token)
    _age(store, row, 16)
    return undo(client, token)


@pytest.mark.parametrize("public_url", [PUBLIC, f"{PUBLIC}/news"])
@pytest.mark.parametrize("scope", ["letters", ALL_LISTS])
def test_too_late_points_to_the_preferences_page_that_joins_again(
    config: Path, public_url: str, scope: str
) -> None:
    """Too late for the button: the reader joins again on their own
    preferences page (the link works, under the app's path prefix), instead
    of being told to "write to us" with no address."""
    store = _public_letters(config, public_url)
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        text = _too_late(store, client, "kit@example.com", scope)
        assert "write to us" not in text
        found = PREFS_LINK.search(text)
        assert found and found.group(1).startswith(f"{public_url}/preferences/"), text
        page = client.get(found.group(1))
        assert page.status_code == 200 and 'id="locked"' not in page.text
        saved = client.post(found.group(1), data={"list": "letters"})
        assert "Joined: Lantern Notes letters" in saved.text
    kit = subs.get_by_email(store.engine, "kit@example.com")
    assert kit is not None and store.mailable(kit)


def test_an_owners_stop_gets_no_offer_to_join_again(config: Path) -> None:
    """Stopped by the owner: the preferences page says why and joins
    nothing; this page asks the reader to reply rather than promise more."""
    store = _public_letters(config)
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        eva = store.add("eva@example.com")
        token = store.token(eva)
        unsubscribe(client, token)
        owner(config, "subscribers", "unsubscribe", "eva@example.com")
        text = undo(client, token)
        assert REFUSED in text and "write to us" not in text
        assert "Only the site's owner" in text and "reply to" in text
        found = PREFS_LINK.search(text)
        assert found, text
        assert 'id="locked"' in client.get(found.group(1)).text
        client.post(found.group(1), data={"list": "letters"})
    assert not store.mailable(eva)


def test_too_late_for_a_list_not_on_the_preferences_page(client: TestClient, store: Store) -> None:
    """A list that is not public cannot be joined by the reader: no promise."""
    text = _too_late(store, client, "kim@example.com")
    assert "too late to undo" in text and "write to us" not in text
    assert "Only the site's owner" in text and "reply to" in text


def test_a_reloaded_undo_url_goes_back_under_the_path_prefix(config: Path) -> None:
    store = _public_letters(config, f"{PUBLIC}/news")
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    token = store.token(store.add("ray@example.com"))
    with TestClient(app, base_url=PUBLIC) as client:
        answer = client.get(f"/unsubscribe/{token}/undo", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/news/unsubscribe/{token}"


def test_a_list_the_owner_took_them_off_gets_no_offer_to_join_again(config: Path) -> None:
    """The owner unsubscribed the reader from letters alone (still active for
    the rest): the preferences page will not join letters again, so this
    page must not promise it ("choose it on your preferences page")."""
    store = _public_letters(config)
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    with TestClient(app, base_url=PUBLIC) as client:
        ola = store.add("ola@example.com")
        token = store.token(ola)
        owner(config, "subscribers", "unsubscribe", "ola@example.com", "--list", "letters")
        text = undo(client, token)
        assert REFUSED in text
        assert 'id="rejoin"' not in text and "Only the site's owner" in text, text
        found = PREFS_LINK.search(text)
        assert found, text
        client.post(found.group(1), data={"list": "letters"})
    assert not store.mailable(ola)
