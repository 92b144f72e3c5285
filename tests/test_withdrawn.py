"""A post pulled while its automatic mailing is under way (invariant 4).

The daemon starts a mailing that cannot finish in one pass (the pass is
stopped after the first recipient, as a shutdown or a cap would leave it);
the writer then unpublishes, drafts, deletes or re-dates the post, and the
next pass must not send it to the rest.  On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from test_daemon_support import MEMBERS, Site, add_members, engine_of, make_site

from newsletter.config import Settings
from newsletter.daemon import passes
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.store.schema import deliveries, mailings

pytestmark = pytest.mark.usefixtures("database_env")

LAST_YEAR = datetime.now(UTC).replace(microsecond=0) - timedelta(days=300)
POST = "2025-01-02-pulled.md"


@pytest.fixture
def ready(tmp_path: Path) -> tuple[Site, Settings, Engine]:
    site = make_site(tmp_path)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "news", settings=settings)
    site.write_post(POST, "Pulled", LAST_YEAR)
    return site, settings, engine


def first_recipient_only(settings: Settings, engine: Engine) -> MemoryTransport:
    """A daemon pass that plans the post and is stopped after one message."""
    stop = threading.Event()
    transport = MemoryTransport()

    def progress(_mailing: int, done: int, _total: int) -> None:
        if done >= 1:
            stop.set()

    report = passes.run_pass(settings, engine, transport=transport, stop=stop, progress=progress)
    assert len(report.planned) == 1 and len(transport.outbox) == 1
    return transport


def later_pass(
    settings: Settings, engine: Engine, now: datetime | None = None
) -> tuple[passes.PassReport, MemoryTransport]:
    transport = MemoryTransport()
    return passes.run_pass(settings, engine, now=now, transport=transport), transport


def mailing_state(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(select(mailings.c.state, mailings.c.last_error)).one()
    return row[0], row[1]


def unpublish(site: Site) -> None:
    site.write_post(POST, "Pulled", LAST_YEAR, extra="published: false\n")


def make_draft(site: Site) -> None:
    site.write_post(POST, "Pulled", LAST_YEAR, extra="draft: true\n")


def delete(site: Site) -> None:
    (site.posts / POST).unlink()


WITHDRAWALS: dict[str, Callable[[Site], None]] = {
    "unpublished": unpublish,
    "draft": make_draft,
    "deleted": delete,
}


@pytest.mark.parametrize("how", sorted(WITHDRAWALS))
def test_a_pulled_post_is_not_sent_to_the_rest(
    ready: tuple[Site, Settings, Engine], how: str
) -> None:
    site, settings, engine = ready
    first_recipient_only(settings, engine)
    WITHDRAWALS[how](site)
    report, transport = later_pass(settings, engine)
    assert transport.outbox == []
    assert report.problems == ()
    state, note = mailing_state(engine)
    assert state == "withdrawn"
    assert note is not None and "withdrawn" in note


def test_a_post_redated_into_the_future_waits_for_its_new_date(
    ready: tuple[Site, Settings, Engine],
) -> None:
    site, settings, engine = ready
    first = first_recipient_only(settings, engine).outbox[0].recipient
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    site.write_post(POST, "Pulled", later)
    _report, transport = later_pass(settings, engine)
    assert transport.outbox == []
    with engine.connect() as conn:
        state, until = conn.execute(select(mailings.c.state, mailings.c.paused_until)).one()
    assert state == "postponed" and until == later
    assert passes.next_work_time(engine, datetime.now(UTC)) == later
    # Its date comes: the rest get it, the first recipient not again.
    _report, transport = later_pass(settings, engine, now=later + timedelta(seconds=1))
    assert sorted(s.recipient for s in transport.outbox) == sorted(set(MEMBERS) - {first})
    with engine.connect() as conn:
        assert conn.scalar(select(mailings.c.state)) == "done"
        sent = conn.execute(select(deliveries.c.email).where(deliveries.c.status == "sent"))
        assert sorted(sent.scalars()) == sorted(MEMBERS)
