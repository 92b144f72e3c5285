"""Claims, leases and fenced outcomes, straight against the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text, update

from newsletter.audience import members as subs
from newsletter.config import ListSettings, Settings
from newsletter.delivery import plan_mailing
from newsletter.store import mailings as q
from newsletter.store import open_url
from newsletter.store.leases import OwnerLock
from newsletter.store.outcomes import LedgerWriter
from newsletter.store.schema import SCHEMA_VERSION, deliveries, schema_version

SETTINGS = Settings(lists={"news": ListSettings("news", "News")})


def planned(url: str, n: int) -> tuple[Engine, int]:
    engine = open_url(url)
    subs.ensure_lists(engine, SETTINGS)
    with engine.begin() as conn:
        for i in range(n):
            subs.add_subscriber(conn, f"r{i:04d}@example.org", "news")
    return engine, plan_mailing(engine, SETTINGS, "a-post", "news")


def leases(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.id, deliveries.c.lease_owner))
        return {r.id: r.lease_owner for r in rows}


def test_claims_take_distinct_rows_in_order_and_a_long_owner_name(database_url: str) -> None:
    engine, mid = planned(database_url, 10)
    long_owner = "a-container-host-name-well-over-forty-one-characters.example.net:123:abcdef01"
    first, _ = q.claim(engine, mid, long_owner, 4, 60)
    second, _ = q.claim(engine, mid, "other:1:x", 4, 60)
    assert [r.id for r in first] == sorted(r.id for r in first)
    assert not {r.id for r in first} & {r.id for r in second}
    assert len(first) == len(second) == 4
    assert sum(owner == long_owner for owner in leases(engine).values()) == 4


def test_concurrent_claimers_share_every_row_exactly_once(database_url: str) -> None:
    engine, mid = planned(database_url, 300)
    taken: dict[str, list[int]] = {}

    def claimer(name: str) -> None:
        got = taken.setdefault(name, [])
        while True:
            rows, _ = q.claim(engine, mid, name, 7, 60)
            if not rows and not q.claimable_left(engine, mid):
                return
            got.extend(r.id for r in rows)
            q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in rows], name)

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in taken.values() for i in ids]
    assert len(every) == len(set(every)) == 300  # none twice, none lost
    if engine.dialect.name == "postgresql":
        # SKIP LOCKED: claimers never wait for each other.  (SQLite serialises
        # writers; its busy-wait lets one thread win every race, by design.)
        assert all(taken.values())
    with engine.connect() as conn:
        assert q.counts(conn, mid)[mid] == {"sent": 300}


def test_an_outcome_is_recorded_only_while_the_lease_is_ours(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine, mid = planned(database_url, 3)
    rows, _ = q.claim(engine, mid, "slow:1:a", 3, 60)
    # Our lease lapsed and another host took the first row over.
    with engine.begin() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.id == rows[0].id).values(lease_owner="fast:2:b")
        )
    with caplog.at_level(logging.WARNING):
        assert q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in rows], "slow:1:a") == 2
    assert "dropped 1 of 3 delivery outcomes of slow:1:a" in caplog.text
    with engine.connect() as conn:
        status = dict(conn.execute(select(deliveries.c.id, deliveries.c.status)).all())
    assert status[rows[0].id] == "sending"  # the other host's row is untouched
    assert status[rows[1].id] == status[rows[2].id] == "sent"


def test_the_ledger_writer_is_fenced_too(database_url: str) -> None:
    engine, mid = planned(database_url, 2)
    rows, _ = q.claim(engine, mid, "me:1:a", 2, 60)
    with engine.begin() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.id == rows[1].id).values(lease_owner="you:1:b")
        )
    with engine.connect() as conn:
        writer = LedgerWriter(conn, "me:1:a")
        assert writer.write([(r.id, q.Outcome("sent", 1)) for r in rows]) == 1
    assert leases(engine) == {rows[0].id: None, rows[1].id: "you:1:b"}


def test_renew_extends_only_our_leases_from_the_database_clock(database_url: str) -> None:
    engine, mid = planned(database_url, 4)
    q.claim(engine, mid, "me:1:a", 2, 1)
    q.claim(engine, mid, "you:1:b", 2, 1)
    assert q.renew(engine, "me:1:a", 600) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.lease_owner, deliveries.c.lease_expires_at)).all()
    later = datetime.now(UTC) + timedelta(seconds=500)
    assert {o for o, at in rows if at > later} == {"me:1:a"}


def test_an_expired_lease_is_claimable_by_anyone(database_url: str) -> None:
    engine, mid = planned(database_url, 2)
    with OwnerLock(engine, "stalled:1:a"):  # alive, yet its lease ran out
        q.claim(engine, mid, "stalled:1:a", 2, 60)  # runs out below, not by the clock
        assert q.claim(engine, mid, "other:1:b", 2, 60)[0] == []
        with engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(seconds=1)
            conn.execute(update(deliveries).values(lease_expires_at=past))
        assert len(q.claim(engine, mid, "other:1:b", 2, 60)[0]) == 2


def test_an_owner_never_claims_its_own_lapsed_lease_again(database_url: str) -> None:
    """The owner holds those rows in memory (in flight): claiming them again
    would send them twice from one live process.  Another owner may take them."""
    engine, mid = planned(database_url, 3)
    with OwnerLock(engine, "stalled:1:a"):
        held, _ = q.claim(engine, mid, "stalled:1:a", 2, 60)
        with engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(seconds=1)
            conn.execute(update(deliveries).values(lease_expires_at=past))
        again, _ = q.claim(engine, mid, "stalled:1:a", 3, 60)
        assert {r.id for r in again}.isdisjoint(r.id for r in held)
        assert len(again) == 1  # the third, never leased
        assert not q.claimable_left(engine, mid, owner="stalled:1:a")
        assert q.claimable_left(engine, mid, owner="other:1:b")
        taken, _ = q.claim(engine, mid, "other:1:b", 3, 60)
        assert {r.id for r in taken} == {r.id for r in held}


def test_a_dead_owner_is_reclaimed_at_once_a_live_one_never(pg_url: str) -> None:
    # PostgreSQL: liveness is the owner's session advisory lock, whatever its host.
    engine, mid = planned(pg_url, 4)
    alive = OwnerLock(engine, "host-a:7:alive")
    dead = OwnerLock(engine, "host-b:7:dead")
    q.claim(engine, mid, "host-a:7:alive", 2, 3600)
    q.claim(engine, mid, "host-b:7:dead", 2, 3600)
    assert q.free_dead_leases(engine) == 0
    dead.close()  # what PostgreSQL does when the process or its host dies
    assert q.free_dead_leases(engine) == 1
    assert sorted(o for o in leases(engine).values() if o) == ["host-a:7:alive"] * 2
    assert len(q.claim(engine, mid, "host-c:1:new", 4, 60)[0]) == 2
    alive.close()


def test_release_gives_back_only_this_owners_rows(database_url: str) -> None:
    engine, mid = planned(database_url, 4)
    q.claim(engine, mid, "me:1:a", 2, 60)
    q.claim(engine, mid, "me:1:ab", 2, 60)  # a longer name that starts the same
    q.release(engine, "me:1:a")
    assert sorted(o or "-" for o in leases(engine).values()) == ["-", "-", "me:1:ab", "me:1:ab"]


def test_a_claim_reads_only_what_it_takes_on_sqlite(tmp_path: object) -> None:
    # The queued rows come from ix_deliveries_queue in id order: no temp sort,
    # no subquery over every remaining row (the O(N) claim of issue 13).
    engine = open_url(f"sqlite:///{tmp_path}/db.sqlite")
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE mailing_id = 1 AND "
            "status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= '2030') "
            "AND (lease_owner IS NULL OR lease_expires_at < '2030') ORDER BY id LIMIT 200"
        ).all()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "ix_deliveries_queue" in detail
    assert "TEMP B-TREE" not in detail


def test_a_version_2_database_gains_the_claim_and_lease_indexes(database_url: str) -> None:
    engine = open_url(database_url)
    with engine.begin() as conn:
        for name in ("ix_deliveries_queue", "ix_deliveries_lease", "ix_deliveries_sent_at"):
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(schema_version.delete().where(schema_version.c.version > 2))
    open_url(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        names = {ix["name"] for ix in conn.dialect.get_indexes(conn, "deliveries")}
    assert {"ix_deliveries_queue", "ix_deliveries_lease", "ix_deliveries_sent_at"} <= names


def test_caps_count_the_whole_deployment_sent_and_in_flight(database_url: str) -> None:
    engine, mid = planned(database_url, 10)
    hour = [(5, 3600.0)]
    first, _ = q.claim(engine, mid, "host-a:1:x", 3, 60, caps=hour)
    assert len(first) == 3
    q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in first[:2]], "host-a:1:x")
    # Another host: 2 sent + 1 in flight leave room for 2 under a cap of 5.
    second, _ = q.claim(engine, mid, "host-b:1:y", 4, 60, caps=hour)
    assert len(second) == 2
    assert q.claim(engine, mid, "host-c:1:z", 4, 60, caps=hour) == ([], 0)


def test_active_senders_counts_owners_with_live_leases(database_url: str) -> None:
    engine, mid = planned(database_url, 6)
    assert q.active_senders(engine) == 0
    q.claim(engine, mid, "host-a:1:x", 2, 60)
    q.claim(engine, mid, "host-b:1:y", 2, 60)
    q.claim(engine, mid, "host-c:1:z", 2, 0)  # already expired
    assert q.active_senders(engine) == 2


def test_planning_is_one_insert_select_of_the_mailable_members(database_url: str) -> None:
    engine, _ = planned(database_url, 0)
    with engine.begin() as conn:
        for i in range(5):
            subs.add_subscriber(conn, f"p{i}@example.org", "news")
    gone = subs.get_by_email(engine, "p1@example.org")
    assert gone is not None
    subs.unsubscribe(engine, gone.id, "news", reason="test")
    mid = plan_mailing(engine, SETTINGS, "another-post", "news")
    with engine.connect() as conn:
        emails = conn.execute(
            select(deliveries.c.email, deliveries.c.status)
            .where(deliveries.c.mailing_id == mid)
            .order_by(deliveries.c.id)
        ).all()
    assert emails == [(f"p{i}@example.org", "queued") for i in (0, 2, 3, 4)]
