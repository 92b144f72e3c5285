"""Double opt-in signup over HTTP: the form and JSON, the confirm page and its
button, expired/forged/reused links, enumeration-safe answers, the honeypot,
rate limits counted in the database, Origin checks and CORS."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import func, select
from starlette.testclient import TestClient
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.audience import signup as flow
from newsletter.audience.consent import history
from newsletter.config import load_settings, utcnow
from newsletter.delivery.mailings import plan_mailing
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.email.linktokens import make_confirm_token, make_preferences_token
from newsletter.store.schema import deliveries, subscribers
from newsletter.web.public import create_public_app

BLOG = "https://lantern.example.com"
APP = "https://news.lantern.example.com"
WIDGET = "https://widgets.example.net"
PUBLIC = """
[lists.letters]
title = "Lantern Notes letters"
public = true

[lists.garden]
title = "Lantern Notes: garden posts"
tags = ["Gardening"]
public = true

[lists.staff]
title = "Staff only"

[signup]
allowed_origins = ["https://widgets.example.net"]
"""


def public_config(config: Path, extra: str = "") -> Path:
    text = config.read_text()
    text = text[: text.index("[lists.letters]")] + PUBLIC + extra
    config.write_text(text)
    return config


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(public_config(copy_site(tmp_path, monkeypatch)))


@pytest.fixture
def outbox() -> MemoryTransport:
    return MemoryTransport()


def client_for(store: Store, outbox: MemoryTransport | None) -> TestClient:
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    app.state.notice_transport = outbox
    return TestClient(app, base_url=APP)


@pytest.fixture
def client(store: Store, outbox: MemoryTransport) -> Iterator[TestClient]:
    with client_for(store, outbox) as c:
        yield c


def form(
    client: TestClient, email: str, *lists: str, origin: str | None = BLOG, **extra: Any
) -> Any:
    headers = {"Origin": origin} if origin else {}
    data: dict[str, Any] = {"email": email, "name": "", "website": "", **extra}
    if lists:
        data["list"] = list(lists)
    return client.post("/subscribe", data=data, headers=headers)


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def link(data: bytes, kind: str) -> str:
    text = parsed(data).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    found = re.search(rf"{APP}(/{kind}/[A-Za-z0-9_-]+)", text)
    assert found, text
    return found.group(1)


def row(store: Store, email: str) -> subs.SubscriberRow:
    found = subs.get_by_email(store.engine, email)
    assert found is not None
    return found


# --------------------------------------------------------------------------- happy path


def test_double_opt_in_through_a_real_smtp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpTestServer
) -> None:
    config = public_config(copy_site(tmp_path, monkeypatch))
    text = config.read_text().replace('transport = "maildir"', 'transport = "smtp"')
    text += f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
    config.write_text(text)
    store = make_store(config)
    with client_for(store, None) as client:
        answer = form(client, "Ivy@Example.com", "letters", "garden", name="Ivy")
        assert answer.status_code == 200 and "Check your inbox" in answer.text
        assert row(store, "ivy@example.com").status == "pending"
        assert not store.mailable(row(store, "ivy@example.com"))
        [confirmation] = smtp_server.received
        assert confirmation.rcpt_tos == ("Ivy@example.com",)  # the domain is lower-cased
        assert parsed(confirmation.data)["Auto-Submitted"] == "auto-generated"
        path = link(confirmation.data, "confirm")
        page = client.get(path)  # what a mail scanner does: nothing changes
        assert page.status_code == 200 and 'id="confirm"' in page.text
        assert page.headers["cache-control"] == "no-store"
        assert row(store, "ivy@example.com").status == "pending"
        done = client.post(path)
        assert done.status_code == 200 and "You are subscribed" in done.text
    ivy = row(store, "ivy@example.com")
    assert ivy.status == "active" and ivy.name == "Ivy"
    assert store.mailable(ivy, "letters") and store.mailable(ivy, "garden")
    welcome = parsed(smtp_server.received[1].data)
    assert welcome["Subject"] == "Welcome to Lantern Notes"
    assert "/preferences/" in welcome.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    actions = [(e.action, e.source, e.list_name) for e in history(store.engine, ivy.id)]
    assert actions == [
        ("signup", "form", "letters, garden"),
        ("confirm", "form", "letters, garden"),
    ]


def test_json_signup_from_an_allowed_origin_gets_cors_headers(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    answer = client.post(
        "/subscribe", json={"email": "jo@example.com", "lists": ["garden"]},
        headers={"Origin": WIDGET},
    )  # fmt: skip
    assert answer.status_code == 202
    assert answer.json()["status"] == "ok"
    assert answer.headers["access-control-allow-origin"] == WIDGET
    assert [m.recipient for m in outbox.outbox] == ["jo@example.com"]
    done = client.post(link(outbox.outbox[0].message, "confirm"))
    assert done.status_code == 200
    jo = row(store, "jo@example.com")
    assert store.mailable(jo, "garden") and not store.mailable(jo, "letters")
    assert history(store.engine, jo.id)[0].source == "json"


@pytest.mark.parametrize(
    "name", ["Zoë Ünal-Çelik Aydınlıoğlu Şahin", "محمد بن عبد الله الأنصاري", "Ann =?utf-8?q?x?="]
)
def test_a_non_ascii_name_gets_its_welcome_email(
    client: TestClient, outbox: MemoryTransport, name: str
) -> None:
    """format_address folds a long encoded name onto two lines; the notice put
    that into EmailMessage, which refuses CR/LF: a 500 and no email.  (The
    confirmation leaves the name out; the welcome greets and addresses it.)"""
    answer = form(client, "zoe@example.com", "letters", name=name)
    assert answer.status_code == 200
    done = client.post(link(outbox.outbox[0].message, "confirm"))
    assert done.status_code == 200
    welcome = outbox.outbox[1].message
    head = welcome.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and max(len(line) for line in head.split(b"\r\n")) <= 78
    found = re.search(rb"(?:^|\r\n)To: (.*?)\r\n(?![ \t])", head + b"\r\n", re.S)
    assert found is not None
    phrase = found.group(1).decode().replace("\r\n", "").rsplit(" <", 1)[0]
    # Decoded as mail clients do (RFC 2047 §6.2: no space between encoded words).
    assert str(make_header(decode_header(phrase))) == name


def test_a_pending_address_receives_no_post(client: TestClient, store: Store) -> None:
    form(client, "kit@example.com", "letters")
    mailing = plan_mailing(store.engine, store.settings, "tending-a-winter-allotment", "letters")
    with store.engine.connect() as conn:
        queued = conn.scalars(
            select(deliveries.c.email).where(deliveries.c.mailing_id == mailing)
        ).all()
    assert "kit@example.com" not in queued


# --------------------------------------------------------------------------- no enumeration


def test_the_answer_is_the_same_for_known_unknown_and_suppressed_addresses(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    known = store.add("known@example.com")
    gone = store.add("gone@example.com")
    subs.mark_complained(store.engine, gone.id, reason="feedback loop")
    answers = [form(client, e, "letters") for e in ("known@example.com", "new@example.com",
                                                     "gone@example.com")]  # fmt: skip
    assert len({(a.status_code, a.text) for a in answers}) == 1
    # Only the new address needed a confirmation; nothing went to the complainer.
    assert [m.recipient for m in outbox.outbox] == ["new@example.com"]
    assert store.status(known) == "active"
    json_answers = {
        client.post("/subscribe", json={"email": e, "lists": ["letters"]}).text
        for e in ("known@example.com", "fresh@example.com", "gone@example.com")
    }
    assert len(json_answers) == 1


# --------------------------------------------------------------------------- tokens


def test_an_expired_link_shows_a_page_and_confirms_nothing(
    client: TestClient, store: Store
) -> None:
    long_ago = utcnow() - timedelta(hours=49)
    request = flow.SignupRequest("old@example.com", "", ("letters",), "form", "192.0.2.1")
    pending = flow.request_signup(store.engine, store.settings, store.secret, request, long_ago)
    assert pending is not None
    path = f"/confirm/{make_confirm_token(store.secret, pending.nonce, pending.expires_at)}"
    assert client.get(path).status_code == 410
    answer = client.post(path)
    assert answer.status_code == 410 and "expired" in answer.text
    assert row(store, "old@example.com").status == "pending"


def test_a_link_whose_token_claims_a_later_expiry_is_still_expired(
    client: TestClient, store: Store
) -> None:
    """The row's expiry decides too: re-signing is impossible, but a stale row must not pass."""
    long_ago = utcnow() - timedelta(hours=49)
    request = flow.SignupRequest("late@example.com", "", ("letters",), "form", "192.0.2.1")
    pending = flow.request_signup(store.engine, store.settings, store.secret, request, long_ago)
    assert pending is not None
    token = make_confirm_token(store.secret, pending.nonce, utcnow() + timedelta(days=1))
    assert client.post(f"/confirm/{token}").status_code == 410


def test_forged_and_mangled_links_get_one_404(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    form(client, "lee@example.com", "letters")
    path = link(outbox.outbox[0].message, "confirm")
    token = path.rsplit("/", 1)[1]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    wrong_kind = make_preferences_token(store.secret, row(store, "lee@example.com").uid)
    other_secret = make_confirm_token(b"another secret", "0" * 32, utcnow() + timedelta(hours=1))
    for bad in (flipped, token[:-2], token + "A", "x" * 40, wrong_kind, other_secret, "%00"):
        for method in (client.get, client.post):
            answer = method(f"/confirm/{bad}")
            assert answer.status_code == 404, (bad, method)
            assert "This link is not valid" in answer.text
    assert row(store, "lee@example.com").status == "pending"


def test_a_used_link_confirms_once_and_never_undoes_a_later_unsubscribe(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    form(client, "max@example.com", "letters")
    path = link(outbox.outbox[0].message, "confirm")
    assert "You are subscribed" in client.post(path).text
    mx = row(store, "max@example.com")
    subs.unsubscribe(store.engine, mx.id, None, reason="one-click (RFC 8058)", source="one-click")
    again = client.post(path)
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert "Already confirmed" in client.get(path).text
    assert store.status(mx) == "unsubscribed"
    assert len(outbox.outbox) == 2  # the confirmation and one welcome


@pytest.mark.parametrize(
    ("suppress", "status"),
    [
        (lambda e, sid: subs.unsubscribe(e, sid, None, reason="cli"), "unsubscribed"),
        (lambda e, sid: subs.mark_complained(e, sid, reason="feedback loop"), "complained"),
        (lambda e, sid: subs.mark_bounced(e, sid, reason="550 5.1.1"), "bounced"),
    ],
    ids=["owner", "complaint", "bounce"],
)
def test_confirming_never_lifts_an_owners_or_a_complaints_suppression(
    client: TestClient, store: Store, outbox: MemoryTransport, suppress: Any, status: str
) -> None:
    form(client, "ned@example.com", "letters")
    path = link(outbox.outbox[0].message, "confirm")
    suppress(store.engine, row(store, "ned@example.com").id)  # between signup and click
    answer = client.post(path)
    assert answer.status_code == 200 and "cannot be subscribed here" in answer.text
    ned = row(store, "ned@example.com")
    assert ned.status == status and not store.mailable(ned)
    assert len(outbox.outbox) == 1  # no welcome


def test_a_reader_who_left_by_one_click_may_come_back_by_signing_up(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    ola = store.add("ola@example.com", "letters")
    store.add("ola@example.com", "staff")
    subs.unsubscribe(store.engine, ola.id, None, reason="one-click (RFC 8058)")
    form(client, "ola@example.com", "letters")
    client.post(link(outbox.outbox[0].message, "confirm"))
    assert store.mailable(ola, "letters")
    assert not store.mailable(ola, "staff")  # not asked for again: stays left


def test_confirming_never_lifts_an_owners_unsubscribe_from_one_list(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    # docs/web.md: confirming lifts a reader's own unsubscribe, never the
    # owner's.  The owner's unsubscribe from one list was lifted: the
    # membership keeps no reason, only the consent record says who left.
    pia = store.add("pia@example.com", "letters")
    store.add("pia@example.com", "garden")
    subs.unsubscribe(store.engine, pia.id, "letters", reason="cli", source="cli")
    subs.unsubscribe(store.engine, pia.id, "garden", reason="one-click", source="one-click")
    form(client, "pia@example.com", "letters", "garden")
    done = client.post(link(outbox.outbox[0].message, "confirm"))
    assert "Lantern Notes: garden posts" in done.text and "Lantern Notes letters" not in done.text
    assert not store.mailable(pia, "letters")  # the owner's: only `resubscribe` lifts it
    assert store.mailable(pia, "garden")  # her own: her confirmed signup lifts it


# --------------------------------------------------------------------------- abuse


def test_the_honeypot_gets_the_usual_answer_and_nothing_happens(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    answer = form(client, "bot@example.com", "letters", website="https://spam.example.net")
    normal = form(client, "person@example.com", "letters")
    assert (answer.status_code, answer.text) == (normal.status_code, normal.text)
    assert subs.get_by_email(store.engine, "bot@example.com") is None
    assert [m.recipient for m in outbox.outbox] == ["person@example.com"]


def test_per_ip_limit_answers_429(client: TestClient, store: Store) -> None:
    limit = store.settings.signup.per_ip_per_hour
    codes = [form(client, f"r{i}@example.com", "letters").status_code for i in range(limit + 1)]
    assert codes == [200] * limit + [429]
    refused = form(client, "late@example.com", "letters")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3600"
    assert subs.get_by_email(store.engine, "late@example.com") is None


def test_per_ip_limit_is_counted_in_the_database_across_app_instances(
    store: Store, outbox: MemoryTransport
) -> None:
    limit = store.settings.signup.per_ip_per_hour
    for i in range(limit):
        with client_for(store, outbox) as c:  # a new process each time, one database
            assert form(c, f"s{i}@example.com", "letters").status_code == 200
    with client_for(store, outbox) as c:
        assert form(c, "t@example.com", "letters").status_code == 429


def test_per_address_and_pending_limits_send_no_more_mail_and_say_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outbox: MemoryTransport
) -> None:
    config = public_config(
        copy_site(tmp_path, monkeypatch),
        "per_address_per_hour = 2\npending_per_address_per_day = 5\n",
    )
    store = make_store(config)
    with client_for(store, outbox) as client:
        answers = {form(client, "pat@example.com", "letters").text for _ in range(4)}
    assert len(answers) == 1
    assert len(outbox.outbox) == 2  # per address per hour
    text = config.read_text().replace("per_address_per_hour = 2", "per_address_per_hour = 50")
    config.write_text(
        text.replace("pending_per_address_per_day = 5", "pending_per_address_per_day = 3")
    )
    store = make_store(config)
    with client_for(store, outbox) as client:
        for _ in range(3):
            form(client, "pat@example.com", "letters")
    assert len(outbox.outbox) == 3  # at most 3 pending confirmations a day


def test_only_public_lists_can_be_joined(client: TestClient, store: Store) -> None:
    for lists in (("staff",), ("letters", "staff"), ("nope",)):
        answer = form(client, "quinn@example.com", *lists)
        assert answer.status_code == 400 and "no public list" in answer.text
    assert form(client, "quinn@example.com").status_code == 400  # two public lists: choose
    bad = form(client, "not-an-address", "letters")
    assert bad.status_code == 400 and 'role="alert"' in bad.text
    assert subs.get_by_email(store.engine, "quinn@example.com") is None


# --------------------------------------------------------------------------- origin, CORS


def test_form_posts_need_the_blogs_or_the_apps_origin(client: TestClient, store: Store) -> None:
    assert form(client, "a@example.com", "letters", origin=None).status_code == 403
    assert (
        form(client, "b@example.com", "letters", origin="https://evil.example.net").status_code
        == 403
    )
    assert form(client, "c@example.com", "letters", origin="null").status_code == 403
    referer = client.post(
        "/subscribe", data={"email": "d@example.com", "list": "letters"},
        headers={"Referer": f"{BLOG}/about/"},
    )  # fmt: skip
    assert referer.status_code == 200
    assert form(client, "e@example.com", "letters", origin=APP).status_code == 200
    assert form(client, "f@example.com", "letters", origin=WIDGET).status_code == 200
    with store.engine.connect() as conn:
        created = set(conn.scalars(select(subscribers.c.email)))
    assert created == {"d@example.com", "e@example.com", "f@example.com"}


def test_cors_preflight_and_json_posts_only_for_allowed_origins(client: TestClient) -> None:
    ok = client.options(
        "/subscribe",
        headers={"Origin": WIDGET, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == WIDGET
    assert ok.headers["access-control-allow-methods"] == "POST"
    refused = client.options("/subscribe", headers={"Origin": "https://evil.example.net"})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    evil = client.post(
        "/subscribe", json={"email": "g@example.com", "lists": ["letters"]},
        headers={"Origin": "https://evil.example.net"},
    )  # fmt: skip
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    # The blog's own origin may post the form, but CORS is only for the listed origins.
    blog = client.post(
        "/subscribe", json={"email": "h@example.com", "lists": ["letters"]},
        headers={"Origin": BLOG},
    )  # fmt: skip
    assert blog.status_code == 403
    server_side = client.post("/subscribe", json={"email": "i@example.com", "lists": ["letters"]})
    assert (
        server_side.status_code == 202 and "access-control-allow-origin" not in server_side.headers
    )


def test_bad_json_and_oversized_bodies_are_refused(client: TestClient) -> None:
    headers = {"Content-Type": "application/json", "Origin": WIDGET}
    assert client.post("/subscribe", content=b"{nope", headers=headers).status_code == 400
    assert client.post("/subscribe", content=b"[1, 2]", headers=headers).status_code == 400
    big = b'{"email": "' + b"a" * 20000 + b'"}'
    assert client.post("/subscribe", content=big, headers=headers).status_code == 400
    odd = client.post("/subscribe", json={"email": 5, "lists": ["letters"]}, headers=headers)
    assert odd.status_code == 400


def test_the_signup_page_shows_the_public_lists_only(client: TestClient) -> None:
    answer = client.get("/subscribe")
    assert answer.status_code == 200
    assert "Lantern Notes letters" in answer.text and "garden posts" in answer.text
    assert "Staff only" not in answer.text
    assert "<script" not in answer.text


def test_confirmation_counts_are_kept_per_address(client: TestClient, store: Store) -> None:
    from newsletter.store.schema import confirmations

    form(client, "u@example.com", "letters")
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(confirmations)) == 1
        hits = conn.execute(select(flow.signup_hits.c.key)).scalars().all()
    assert all("u@example.com" not in k and "testclient" not in k for k in hits)


def test_config_rejects_an_origin_with_a_path(tmp_path: Path) -> None:
    from newsletter.errors import ConfigError

    config = tmp_path / "newsletter.toml"
    config.write_text('[signup]\nallowed_origins = ["https://example.net/form"]\n')
    with pytest.raises(ConfigError, match=r"signup\.allowed_origins"):
        load_settings(config)


# --------------------------------------------------------------------------- owner's per-list unsubscribe


def owner_unsubscribes(store: Store, email: str, list_name: str) -> None:
    """`newsletter subscribers unsubscribe EMAIL --list L`, as the owner runs it."""
    from click.testing import CliRunner

    from newsletter.cli import main

    config = str(store.settings.config_path)
    result = CliRunner().invoke(
        main, ["--config", config, "subscribers", "unsubscribe", email, "--list", list_name]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.usefixtures("database_env")
@pytest.mark.parametrize("known", [True, False], ids=["member", "never-subscribed"])
def test_no_confirmation_for_a_list_the_owner_took_the_address_off(
    client: TestClient, store: Store, outbox: MemoryTransport, known: bool
) -> None:
    """docs/web.md: no email is sent to an owner-suppressed address; the
    answer is the one every address gets."""
    if known:
        store.add("rex@example.com", "letters")
    owner_unsubscribes(store, "rex@example.com", "letters")
    answer = form(client, "rex@example.com", "letters")
    usual = form(client, "newcomer@example.com", "letters")
    assert (answer.status_code, answer.text) == (usual.status_code, usual.text)
    as_json = client.post("/subscribe", json={"email": "rex@example.com", "lists": ["letters"]})
    assert as_json.status_code == 202
    assert [m.recipient for m in outbox.outbox] == ["newcomer@example.com"]
    rex = row(store, "rex@example.com")
    assert [e.action for e in history(store.engine, rex.id)] == ["unsubscribe"]


@pytest.mark.usefixtures("database_env")
def test_a_confirmation_asks_only_for_the_lists_the_owner_left_open(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    sam = store.add("sam@example.com", "garden")
    owner_unsubscribes(store, "sam@example.com", "letters")
    subs.unsubscribe(store.engine, sam.id, "garden", reason="one-click", source="one-click")
    form(client, "sam@example.com", "letters", "garden")
    [confirmation] = outbox.outbox
    text = parsed(confirmation.message).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "garden posts" in text and "Lantern Notes letters" not in text
    done = client.post(link(confirmation.message, "confirm"))
    assert "You are subscribed" in done.text and "garden posts" in done.text
    assert store.mailable(sam, "garden") and not store.mailable(sam, "letters")
    signup = history(store.engine, sam.id)[-2]
    assert (signup.action, signup.list_name) == ("signup", "garden")


@pytest.mark.usefixtures("database_env")
def test_confirming_after_the_owner_took_the_address_off_says_it_cannot_be_subscribed(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    """The owner's per-list unsubscribe between the signup and the click: the
    done page said "Welcome! You will get:" over an empty list and the
    consent record said "confirm … by link"."""
    form(client, "tia@example.com", "letters")
    path = link(outbox.outbox[0].message, "confirm")
    owner_unsubscribes(store, "tia@example.com", "letters")
    answer = client.post(path)
    assert answer.status_code == 200 and "cannot be subscribed here" in answer.text
    assert "You are subscribed" not in answer.text
    tia = row(store, "tia@example.com")
    assert not store.mailable(tia, "letters")
    assert len(outbox.outbox) == 1  # no welcome
    last = history(store.engine, tia.id)[-1]
    assert (last.action, last.detail) == ("confirm", "refused: unsubscribed by the owner")
    again = client.post(path)
    assert "Already confirmed" in again.text


# --------------------------------------------------------------------------- origins, spelled otherwise


def client_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_url: str, origins: str
) -> TestClient:
    config = public_config(copy_site(tmp_path, monkeypatch))
    text = config.read_text().replace('url = "https://lantern.example.com"', f'url = "{site_url}"')
    config.write_text(text.replace('allowed_origins = ["https://widgets.example.net"]', origins))
    return client_for(make_store(config), MemoryTransport())


@pytest.mark.parametrize(
    ("site_url", "origin"),
    [
        ("https://fieldnotes.example.com:443", "https://fieldnotes.example.com"),
        ("http://fieldnotes.example.com:80/blog", "http://fieldnotes.example.com"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://Straße.example:8443", "https://xn--strae-oqa.example:8443"),
    ],
)
def test_the_blogs_origin_matches_however_its_url_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_url: str, origin: str
) -> None:
    """Browsers send an origin without the scheme's default port and with an
    IDN host in its ASCII form (UTS #46, as they do: "ß" stays "ß"); the
    check compared the raw netlocs, so these blogs' own forms got 403."""
    with client_with(tmp_path, monkeypatch, site_url, "") as client:
        assert form(client, "vi@example.com", "letters", origin=origin).status_code == 200
        referer = client.post(
            "/subscribe", data={"email": "wu@example.com", "list": "letters"},
            headers={"Referer": f"{origin}/about/"},
        )  # fmt: skip
        assert referer.status_code == 200
        other = form(client, "xi@example.com", "letters", origin="https://example.com")
        assert other.status_code == 403


def test_an_allowed_origin_with_its_default_port_passes_cors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origins = 'allowed_origins = ["https://widgets.example.net:443", "https://bücher.example"]'
    with client_with(tmp_path, monkeypatch, BLOG, origins) as client:
        for sent in (WIDGET, "https://xn--bcher-kva.example"):
            ok = client.options(
                "/subscribe",
                headers={"Origin": sent, "Access-Control-Request-Method": "POST"},
            )
            assert ok.status_code == 204, sent
            # The header names the origin exactly as the browser sent it.
            assert ok.headers["access-control-allow-origin"] == sent
            posted = client.post(
                "/subscribe", json={"email": "yo@example.com", "lists": ["letters"]},
                headers={"Origin": sent},
            )  # fmt: skip
            assert posted.status_code == 202, sent
            assert posted.headers["access-control-allow-origin"] == sent
            assert form(client, "zu@example.com", "letters", origin=sent).status_code == 200
        evil = client.options("/subscribe", headers={"Origin": "https://widgets.example.net:8443"})
        assert evil.status_code == 403


@pytest.mark.usefixtures("database_env")
def test_the_lists_kept_left_after_a_signup_are_in_the_consent_record(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    """Back from a one-click "every list" unsubscribe by confirming one list:
    the others became per-list unsubscribes with no consent record."""
    ula = store.add("ula@example.com", "letters")
    store.add("ula@example.com", "staff")
    subs.unsubscribe(store.engine, ula.id, None, reason="one-click (RFC 8058)", source="one-click")
    form(client, "ula@example.com", "garden")
    client.post(link(outbox.outbox[0].message, "confirm"))
    assert store.mailable(ula, "garden") and not store.mailable(ula, "letters")
    events = [(e.action, e.source, e.list_name, e.detail) for e in history(store.engine, ula.id)]
    assert sorted(e for e in events if e[3] == "kept after signup") == [
        ("unsubscribe", "form", "letters", "kept after signup"),
        ("unsubscribe", "form", "staff", "kept after signup"),
    ]
    assert ("confirm", "form", "garden", "by link") in events
    # Their own choice still: a later signup for letters may lift it.
    form(client, "ula@example.com", "letters")
    client.post(link(outbox.outbox[-1].message, "confirm"))
    assert store.mailable(ula, "letters")


def test_the_pages_link_back_to_the_blogs_home_with_its_baseurl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GitHub project site's home is url + baseurl: the page's link back
    to the blog went to the host alone (another site, or a 404)."""
    config = public_config(copy_site(tmp_path, monkeypatch))
    text = config.read_text()
    config.write_text(text.replace(f'url = "{BLOG}"', f'url = "{BLOG}"\nbaseurl = "/notes"', 1))
    with client_for(make_store(config), None) as client:
        page = client.get("/subscribe").text
    assert f'href="{BLOG}/notes/"' in page
    assert f'href="{BLOG}"' not in page


def ticked(html: str) -> dict[str, bool]:
    """List name → ticked, read from the form's checkboxes."""
    found = re.findall(r'type="checkbox"[^>]* name="list" value="([^"]+)"( checked)?', html)
    return {name: bool(mark) for name, mark in found}


def test_a_refused_signup_keeps_the_lists_the_reader_chose(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    """The form shown again after a 400 ticked the first list whatever the
    reader had chosen: fixing the address and sending it again asked to
    confirm a list they never picked."""
    assert ticked(client.get("/subscribe").text) == {"letters": True, "garden": False}
    typo = form(client, "gina@example", "garden", name="Gina")
    assert typo.status_code == 400
    assert ticked(typo.text) == {"letters": False, "garden": True}
    assert 'value="gina@example"' in typo.text and 'value="Gina"' in typo.text
    # Only public lists are ever ticked (or shown); anything else is dropped.
    odd = form(client, "gina@example", "garden", "staff", '"><b>x</b>')
    assert odd.status_code == 400
    assert ticked(odd.text) == {"letters": False, "garden": True}
    assert "<b>x</b>" not in odd.text and "Staff only" not in odd.text
    # None chosen: none ticked (the page says to choose one).
    none = form(client, "gina@example.org")
    assert none.status_code == 400 and ticked(none.text) == {"letters": False, "garden": False}
    assert outbox.outbox == []


def test_a_page_hiding_its_origin_is_told_so_and_the_owner_is_told_once(
    client: TestClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A blog page with `Referrer-Policy: no-referrer` or `same-origin`:
    browsers post its form with `Origin: null` and no Referer (the Fetch
    standard), so the check cannot tell the blog from another site.  The
    403 said "This form can only be sent from the site's own pages", which
    blamed the reader who was on them; the owner was told nothing."""
    caplog.set_level(logging.WARNING, logger="newsletter.web")
    hidden = [form(client, f"h{i}@example.com", "letters", origin="null") for i in range(2)]
    for answer in hidden:
        assert answer.status_code == 403
        assert "only be sent from the site" not in answer.text
        assert "does not say which site it is on" in answer.text
        assert 'href="/subscribe"' in answer.text  # the app's own form works
    told = [r.getMessage() for r in caplog.records if "referrer policy" in r.getMessage()]
    assert len(told) == 1 and "strict-origin-when-cross-origin" in told[0]
    # Another site's page is refused with the words that are true for it.
    foreign = form(client, "f@example.com", "letters", origin="https://evil.example.net")
    assert foreign.status_code == 403 and "only be sent from the site" in foreign.text
    nothing = form(client, "n@example.com", "letters", origin=None)  # not a browser's
    assert nothing.status_code == 403 and "only be sent from the site" in nothing.text
    assert subs.get_by_email(store.engine, "h0@example.com") is None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"email": ' + b"9" * 5000 + b"}", "the body is not valid JSON"),
        (b"{oops", "the body is not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"email": "a@example.com", "name": "' + b"x" * 17000 + b'"}', "request body too large"),
        (b'{"email": "nope", "lists": ["letters"]}', "that does not look like an email address"),
    ],
    ids=["huge-number", "not-json", "array", "too-large", "bad-address"],
)
def test_every_json_error_reaches_an_allowed_origins_script(
    client: TestClient, body: bytes, error: str
) -> None:
    """The widget's fetch() reads the answer only with an
    Access-Control-Allow-Origin: the 400s for an unreadable body had none
    (a network error to the script, where a bad address got its message),
    and a number of 5,000 digits was answered with Python's own "Exceeds the
    limit (4300 digits) for integer string conversion"."""
    headers = {"Content-Type": "application/json", "Origin": WIDGET}
    answer = client.post("/subscribe", content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {"error": error}
    assert answer.headers["access-control-allow-origin"] == WIDGET
    other = client.post("/subscribe", content=body, headers={**headers, "Origin": BLOG})
    assert "access-control-allow-origin" not in other.headers  # only for allowed origins
