"""Two requests for the same reader at the same instant, against a real
server on 127.0.0.1 (SQLite and PostgreSQL): a double-clicked Subscribe,
a preferences form sent twice, two confirm links of one address opened
together.  Each answer must be the one a single request gets.

On PostgreSQL the interleaving is forced, not hoped for: `Gate` holds the
statement where the two transactions would collide (the first write that
reads-then-inserts could clash on) until both requests have reached it.
SQLite takes its write lock at BEGIN, so its writers never interleave: the
requests there are only concurrent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from test_web_signup import BLOG, link, public_config
from test_web_support import Store, copy_site, make_store

from newsletter.audience import members as subs
from newsletter.audience.consent import history
from newsletter.audience.unsubscribes import unsubscribe_by_link
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.email.linktokens import make_preferences_token
from newsletter.web.public import create_public_app
from newsletter.web.server import RunningServer, start_in_thread

pytestmark = pytest.mark.usefixtures("database_env")

ROUNDS = 4


class Gate:
    """Holds the first `parties` SQL statements that start with `prefix`
    (after each `arm()`) until all of them have reached it: two
    transactions then run that statement together."""

    def __init__(self, engine: Engine, prefix: str, parties: int = 2) -> None:
        self.engine, self.prefix, self.parties = engine, prefix.upper(), parties
        self.met = 0  # rounds in which every party reached the statement
        self._lock = threading.Lock()
        self._barrier: threading.Barrier | None = None
        self._left = 0
        event.listen(engine, "before_cursor_execute", self._before)

    def arm(self) -> None:
        with self._lock:
            self._barrier = threading.Barrier(self.parties, timeout=10)
            self._left = self.parties

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not statement.lstrip().upper().startswith(self.prefix):
            return
        with self._lock:
            if self._barrier is None or self._left == 0:
                return
            self._left -= 1
            barrier = self._barrier
        try:
            if barrier.wait() == 0:
                self.met += 1
        except threading.BrokenBarrierError:
            pass  # the other never came: the test's count of `met` says so


@dataclass
class Site:
    store: Store
    server: RunningServer
    outbox: MemoryTransport

    def gate(self, prefix: str) -> Gate | None:
        """A Gate on PostgreSQL; None on SQLite (whose writers take turns)."""
        if self.store.engine.dialect.name != "postgresql":
            return None
        return Gate(self.store.engine, prefix)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    # Every request comes from 127.0.0.1: the per-IP limit must not answer 429.
    config = public_config(copy_site(tmp_path, monkeypatch), "per_ip_per_hour = 1000\n")
    store = make_store(config)
    outbox = MemoryTransport()
    app = create_public_app(store.settings, engine=store.engine, secret=store.secret)
    app.state.notice_transport = outbox
    server = start_in_thread(app, "127.0.0.1", 0)
    try:
        yield Site(store, server, outbox)
    finally:
        server.stop()


def together(gate: Gate | None, *calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """The calls at the same instant (a barrier), each in its own thread."""
    if gate is not None:
        gate.arm()
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def signup(site: Site, email: str, as_json: bool) -> Callable[[], httpx.Response]:
    url = f"{site.server.url}/subscribe"
    if as_json:
        body = {"email": email, "lists": ["letters"]}
        return lambda: httpx.post(url, json=body, timeout=60)
    data = {"email": email, "list": "letters"}
    return lambda: httpx.post(url, data=data, headers={"Origin": BLOG}, timeout=60)


def answers(responses: list[httpx.Response]) -> list[tuple[int, str]]:
    return [(r.status_code, r.text) for r in responses]


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "form"])
def test_a_double_submitted_signup_gets_the_usual_answer_twice(site: Site, as_json: bool) -> None:
    """Two signups for a new address at once: one transaction lost the race
    to create the subscriber (a unique violation) and answered 503 "please
    try again in a minute", while a known address got the usual answer
    twice: the answer told whether an address was in the database, and a
    reader's double-click got an error page though the confirmation went."""
    for i in range(ROUNDS):
        site.store.add(f"known{i}@example.org")
    usual = answers([signup(site, "alone@example.org", as_json)()])[0]
    assert usual[0] == (202 if as_json else 200)
    gate = site.gate("INSERT INTO subscribers")
    try:
        for i in range(ROUNDS):
            known = together(None, *[signup(site, f"known{i}@example.org", as_json)] * 2)
            new = together(gate, *[signup(site, f"new{i}@example.org", as_json)] * 2)
            assert answers(known) == [usual, usual], i
            assert answers(new) == [usual, usual], i
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS  # the race was really run each round
    for i in range(ROUNDS):
        found = subs.get_by_email(site.store.engine, f"new{i}@example.org")
        assert found is not None and found.status == "pending"


def preferences(site: Site, row: subs.SubscriberRow, *lists: str) -> Callable[[], httpx.Response]:
    url = f"{site.server.url}/preferences/{make_preferences_token(site.store.secret, row.uid)}"
    return lambda: httpx.post(url, data={"list": list(lists)}, timeout=60)


def joins(site: Site, row: subs.SubscriberRow, list_name: str) -> int:
    """How many times the consent record says this reader joined `list_name`."""
    return sum(
        1
        for e in history(site.store.engine, row.id)
        if e.action == "subscribe" and e.list_name == list_name
    )


def test_a_double_submitted_preferences_form_joins_once(site: Site) -> None:
    """A subscriber of one list ticks another and sends the form twice at
    once: both read that they were not on it and inserted the membership;
    on PostgreSQL the later insert hit the unique key and the page said
    503 "cannot reach the subscriber database right now"."""
    gate = site.gate("INSERT INTO memberships")
    try:
        for i in range(ROUNDS):
            row = site.store.add(f"pref{i}@example.org", "letters")
            both = together(gate, *[preferences(site, row, "letters", "garden")] * 2)
            assert [r.status_code for r in both] == [200, 200], i
            assert site.store.mailable(row, "garden") and site.store.mailable(row, "letters")
            assert joins(site, row, "garden") == 1, i  # the second changed nothing
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS


def test_a_double_submitted_preferences_form_rejoins_once(site: Site) -> None:
    """The same for a list the reader had left: both cleared its
    unsubscribe and each wrote a "subscribe" to the consent record."""
    gate = site.gate("UPDATE memberships")
    try:
        for i in range(ROUNDS):
            row = site.store.add(f"back{i}@example.org", "letters")
            site.store.add(f"back{i}@example.org", "garden")
            subs.unsubscribe(
                site.store.engine, row.id, "garden", reason="preferences", source="preferences"
            )
            both = together(gate, *[preferences(site, row, "letters", "garden")] * 2)
            assert [r.status_code for r in both] == [200, 200], i
            assert site.store.mailable(row, "garden")
            assert joins(site, row, "garden") == 1, i
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS


def test_two_confirm_links_of_one_address_opened_at_once(site: Site) -> None:
    """Signed up twice, the reader clicks both confirmation links together:
    both made the pending address active and inserted its membership; on
    PostgreSQL the later insert failed and its page said 503."""
    gate = site.gate("UPDATE subscribers")
    try:
        for i in range(ROUNDS):
            email = f"twice{i}@example.org"
            for _ in range(2):
                signup(site, email, as_json=True)()
            paths = [link(m.message, "confirm") for m in wait_for_mail(site, email, 2)]
            calls = [lambda p=p: httpx.post(f"{site.server.url}{p}", timeout=60) for p in paths]
            both = together(gate, *calls)
            assert [r.status_code for r in both] == [200, 200], i
            assert all("You are subscribed" in r.text for r in both), i
            row = subs.get_by_email(site.store.engine, email)
            assert row is not None and site.store.mailable(row, "letters")
            welcomes = [m for m in site.outbox.outbox if m.recipient == email]
            assert len(welcomes) == 3, i  # two confirmations, one welcome
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS


def wait_for_mail(site: Site, email: str, count: int) -> list[Any]:
    """The first `count` messages to `email`: confirmations go out after the answer."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [m for m in list(site.outbox.outbox) if m.recipient == email]
        if len(found) >= count:
            return found[:count]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} messages to {email}")


def leaves(site: Site, row: subs.SubscriberRow, list_name: str | None) -> int:
    """How many times the consent record says this reader left `list_name`."""
    return sum(
        1
        for e in history(site.store.engine, row.id)
        if e.action == "unsubscribe" and e.list_name == list_name
    )


def test_a_double_submitted_preferences_form_leaves_once(site: Site) -> None:
    """Unticking a list and sending the form twice at once: the second
    changed nothing, yet wrote a second "unsubscribe" to the consent record
    and said "Left: …"."""
    gate = site.gate("UPDATE memberships")
    try:
        for i in range(ROUNDS):
            row = site.store.add(f"drop{i}@example.org", "letters")
            site.store.add(f"drop{i}@example.org", "garden")
            both = together(gate, *[preferences(site, row, "garden")] * 2)
            assert [r.status_code for r in both] == [200, 200], i
            assert sum("Left: Lantern Notes letters" in r.text for r in both) == 1, i
            assert not site.store.mailable(row, "letters")
            assert leaves(site, row, "letters") == 1, i
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS


def click(engine: Engine, subscriber_id: int, start: threading.Barrier) -> bool:
    start.wait()
    return unsubscribe_by_link(engine, subscriber_id, None, reason="one-click (RFC 8058)")


def test_a_double_one_click_unsubscribe_is_recorded_once(site: Site) -> None:
    """Two one-click POSTs of an every-list link at once (a mailbox provider
    and the reader, reaching two `serve` processes): both read "active" and
    both wrote the unsubscribe, its consent record and an undo event.  One
    server runs its one-click handler on the event loop, one at a time, so
    the two requests are the function's calls from two threads here."""
    engine = site.store.engine
    gate = site.gate("UPDATE subscribers")
    try:
        for i in range(ROUNDS):
            row = site.store.add(f"click{i}@example.org", "letters")
            if gate is not None:
                gate.arm()
            start = threading.Barrier(2)
            with ThreadPoolExecutor(2) as pool:
                calls = [pool.submit(click, engine, row.id, start) for _ in range(2)]
                changed = [call.result() for call in calls]
            assert sorted(changed) == [False, True], i
            assert site.store.status(row) == "unsubscribed"
            assert leaves(site, row, None) == 1, i
    finally:
        if gate is not None:
            gate.close()
    assert gate is None or gate.met == ROUNDS
