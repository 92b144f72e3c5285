"""Hostile input to the signup form: names and addresses made to break the
confirmation email or the store."""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from test_web_signup import APP, BLOG, client_for, public_config
from test_web_support import copy_site, make_store

from newsletter.audience import members as subs
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store.schema import confirmations, signup_hits

pytestmark = pytest.mark.usefixtures("database_env")

HOSTILE_NAMES = [
    "Ana\r\nBcc: victim@example.net",
    "Ana\n\nYOU WON: claim at http://prize.example.net\n",
    "Ana\x00Bell",
    "Ana\x1b[31mBell\u2028\u2029\x7f",
]


def parsed(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def typed_name(engine: Engine) -> str:
    """The name typed in the one signup: kept with its confirmation until then."""
    with engine.connect() as conn:
        return str(conn.execute(select(confirmations.c.name)).scalar_one())


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_is_kept_to_one_clean_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, as_json: bool
) -> None:
    store = make_store(public_config(copy_site(tmp_path, monkeypatch)))
    outbox = MemoryTransport()
    with client_for(store, outbox) as client:
        if as_json:
            answer = client.post(
                "/subscribe", json={"email": "ana@example.com", "name": name, "lists": ["letters"]}
            )
        else:
            answer = client.post(
                "/subscribe",
                data={"email": "ana@example.com", "name": name, "list": "letters"},
                headers={"Origin": BLOG},
            )
    assert answer.status_code in (200, 202), answer.text
    found = subs.get_by_email(store.engine, "ana@example.com")
    assert found is not None and found.name == ""  # a stranger's text until confirmed
    kept = typed_name(store.engine)
    assert kept.isprintable() and kept.startswith("Ana"), repr(kept)
    [sent] = outbox.outbox
    message = parsed(sent.message)
    assert message["Bcc"] is None
    assert message["To"].addresses[0].addr_spec == "ana@example.com"
    assert len(message["To"].addresses) == 1
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # The confirmation goes to an address anyone could type: nothing of the
    # name typed beside it reaches that inbox (it did: "Hello Ana … YOU WON").
    assert text.splitlines()[0] == "Hello,"
    assert "Ana" not in text and "Ana" not in html and "prize" not in html
    assert message["To"].addresses[0].display_name == ""
    assert APP in text


@pytest.mark.parametrize(
    "email",
    [
        "ana\x00@example.com",
        "ana@example.com\r\nBcc: victim@example.net",
        "ana@example.com\x00",
        "ana@exa\x00mple.com",
        "ana@example.com, bo@example.net",
        # A display name is dropped like everywhere else (tests/test_addresses.py),
        # but a second address is never taken for the one to confirm.
        "ana@example.com, Bo <bo@example.net>",
    ],
)
def test_a_hostile_address_is_refused_as_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, email: str
) -> None:
    """400 with the form (never a 503 "try again" from the database), no email."""
    store = make_store(public_config(copy_site(tmp_path, monkeypatch)))
    outbox = MemoryTransport()
    with client_for(store, outbox) as client:
        answer = client.post("/subscribe", json={"email": email, "lists": ["letters"]})
    assert answer.status_code == 400, answer.text
    assert outbox.outbox == []


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 8000 + b"]" * 8000,
        b'{"email": "ana@example.com", "lists": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["array", "lists"],
)
def test_deeply_nested_json_is_a_400(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    """Within the size limit, but nested past the JSON parser's recursion
    limit: a 400 like any other unreadable body, not a 500."""
    store = make_store(public_config(copy_site(tmp_path, monkeypatch)))
    outbox = MemoryTransport()
    with client_for(store, outbox) as client:
        answer = client.post(
            "/subscribe", content=body, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400
    assert answer.json() == {"error": "the body is not valid JSON"}
    assert outbox.outbox == []


@pytest.mark.parametrize("escaped", ["\\ud800", "Ana \\udfff", "\\udce9Bell\\ud83d"])
def test_a_lone_surrogate_in_the_name_is_replaced_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, escaped: str
) -> None:
    """JSON may spell a lone surrogate (`"\\ud800"`), which no encoding can
    write: the insert failed with UnicodeEncodeError, a 500, and the
    rate-limit hit was rolled back with it.  Each becomes U+FFFD, as a form
    post's undecodable bytes do."""
    store = make_store(public_config(copy_site(tmp_path, monkeypatch)))
    outbox = MemoryTransport()
    # Spelled out: httpx's json= cannot encode a lone surrogate.
    body = '{"email": "surr1@example.com", "name": "NAME", "lists": ["letters"]}'
    body = body.replace("NAME", escaped)
    with client_for(store, outbox) as client:
        answer = client.post(
            "/subscribe", content=body.encode(), headers={"content-type": "application/json"}
        )
    assert answer.status_code == 202, answer.text
    expected = json.loads(f'"{escaped}"')
    assert typed_name(store.engine) == re.sub("[\ud800-\udfff]", "\ufffd", expected).strip()
    assert [m.recipient for m in outbox.outbox] == ["surr1@example.com"]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(signup_hits)) == 2  # ip, address
