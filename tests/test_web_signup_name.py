"""Whose name a subscriber is greeted by: the one typed in the very request
that was confirmed, never a stranger's typed beside their address."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_web_signup import client_for, form, link, parsed, public_config, row
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.delivery.transports.memory import MemoryTransport

pytestmark = pytest.mark.usefixtures("database_env")

STRANGER = "WIN A PRIZE at evil.example.net"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    return make_store(public_config(copy_site(tmp_path, monkeypatch)))


@pytest.fixture
def outbox() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def client(store: Store, outbox: MemoryTransport) -> Iterator[TestClient]:
    with client_for(store, outbox) as c:
        yield c


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def greeted(data: bytes) -> tuple[str, str]:
    """(the To header's display name, the first line of the text) of an email."""
    message = parsed(data)
    return message["To"].addresses[0].display_name, text_of(message).splitlines()[0]


def test_a_strangers_name_never_reaches_the_reader(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    """A bot signs vera@ up with its text as the name; Vera later signs up
    herself and confirms the link of her OWN request: the welcome went to
    "WIN A PRIZE at evil.example.net" <vera@…>, "Hello WIN A PRIZE…", and
    every later newsletter too (the name was stored with the pending row)."""
    form(client, "vera@example.org", "letters", name=STRANGER)
    assert row(store, "vera@example.org").name == ""  # nothing of it on her record
    form(client, "vera@example.org", "letters", name="Vera Lind")
    bots, hers = (m.message for m in outbox.outbox)
    assert client.post(link(hers, "confirm")).status_code == 200
    welcome = outbox.outbox[-1].message
    assert greeted(welcome) == ("Vera Lind", "Hello Vera Lind,")
    vera = row(store, "vera@example.org")
    assert vera.name == "Vera Lind"
    newsletter = store.send("tending-a-winter-allotment")
    [sent] = [m for m in newsletter.outbox if m.recipient == "vera@example.org"]
    assert parsed(sent.message)["To"].addresses[0].display_name == "Vera Lind"
    # The bot's link, opened later, renames no one.
    assert client.post(link(bots, "confirm")).status_code == 200
    assert row(store, "vera@example.org").name == "Vera Lind"
    assert len(outbox.outbox) == 3  # and welcomes no one twice


def test_the_name_typed_is_kept_once_its_request_is_confirmed(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    answer = client.post(
        "/subscribe", json={"email": "wes@example.org", "name": "Wes", "lists": ["letters"]}
    )
    assert answer.status_code == 202
    assert row(store, "wes@example.org").name == ""  # unconfirmed: anyone could have typed it
    client.post(link(outbox.outbox[0].message, "confirm"))
    assert row(store, "wes@example.org").name == "Wes"
    assert greeted(outbox.outbox[-1].message) == ("Wes", "Hello Wes,")


def test_a_subscribers_name_is_never_changed_from_the_form(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    """An active subscriber's name stays, whatever a signup for another
    list types beside the address, confirmed or not."""
    subs.add_subscriber(store.engine, "xia@example.org", "letters", name="Xia Chen")
    form(client, "xia@example.org", "garden", name=STRANGER)
    assert row(store, "xia@example.org").name == "Xia Chen"
    client.post(link(outbox.outbox[0].message, "confirm"))
    assert row(store, "xia@example.org").name == "Xia Chen"
    assert greeted(outbox.outbox[-1].message) == ("Xia Chen", "Hello Xia Chen,")


def test_a_subscriber_without_a_name_gets_the_confirmed_one(
    client: TestClient, store: Store, outbox: MemoryTransport
) -> None:
    store.add("yan@example.org", "letters")
    form(client, "yan@example.org", "garden", name="Yan")
    assert row(store, "yan@example.org").name == ""
    client.post(link(outbox.outbox[0].message, "confirm"))
    assert row(store, "yan@example.org").name == "Yan"
