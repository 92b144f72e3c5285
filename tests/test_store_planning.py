"""Planning a mailing in the store: one INSERT … SELECT, safe to race, schema version 4.

SQLite and PostgreSQL (the `database_url` fixture).  Speed is measured in
bench/plan.py, never asserted here.
"""

from __future__ import annotations

import platform
import sqlite3
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from newsletter.audience import members as subs
from newsletter.config import ListSettings, Settings
from newsletter.delivery.mailings import plan_mailing, plan_post
from newsletter.store import bulk, open_url, snapshot_transaction
from newsletter.store import mailings as q
from newsletter.store.schema import (
    SCHEMA_VERSION,
    deliveries,
    delivery_id,
    schema_version,
    subscribers,
)

SETTINGS = Settings(
    lists={"field": ListSettings("field", "Field"), "essays": ListSettings("essays", "Essays")}
)
BOTH = "both@example.org"


def site_db(url: str) -> Engine:
    engine = open_url(url)
    subs.ensure_lists(engine, SETTINGS)
    with engine.begin() as conn:
        subs.add_subscriber(conn, BOTH, "field")
        subs.add_subscriber(conn, BOTH, "essays")
        for i in range(5):
            subs.add_subscriber(conn, f"f{i}@example.org", "field")
            subs.add_subscriber(conn, f"e{i}@example.org", "essays")
    return engine


def queued(engine: Engine, mailing_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(deliveries.c.email)
                .where(deliveries.c.mailing_id == mailing_id)
                .order_by(deliveries.c.id)
            ).scalars()
        )


def _waits_on_a_lock(engine: Engine, timeout: float) -> bool:
    """Whether a session of this database waits on a lock (PostgreSQL) within
    `timeout`, which only bounds a hang."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(waiting).scalar_one():
                return True
            conn.rollback()  # a fresh snapshot of pg_stat_activity
            time.sleep(0.02)
    return False


@pytest.mark.parametrize("key_before", [False, True], ids=["first-plan", "key-exists"])
def test_two_planners_of_one_post_for_two_lists_race_without_error(
    pg_url: str, key_before: bool
) -> None:
    """Host A plans the post for `field` while host B plans it for `essays`.

    B's NOT EXISTS could not see A's uncommitted rows, so both queued the
    member of both lists; the dedupe index then made B wait for A's commit
    and fail with a unique violation: B's whole plan was lost, reported as
    an error.  Now B waits for A's turn on the post, then leaves that member
    to A: exactly one mailing per list, each recipient planned once.

    `key-exists`: the post's ledger key was made before (the post went to
    another list earlier, or a plan of it was cancelled).  On a first plan
    B also waits on A's new ledger key (its unique column), which hid the
    race: without `lock_post` that case passed; this one fails (B's plan is
    lost to the primary key of BOTH's delivery, the same id under one key).
    """
    engine = site_db(pg_url)
    if key_before:
        with engine.begin() as conn:
            q.ledger_key(conn, "p")
    outcome: dict[str, object] = {}
    with engine.connect() as conn, conn.begin():
        # Host A, mid-plan: the mailing and its snapshot written, not yet committed.
        field = q.list_id(conn, "field")
        assert field is not None
        q.lock_post(conn, "p")  # what plan_post does first
        key = q.ledger_key(conn, "p")
        mid_a = q.insert_mailing(
            conn, post_id="p", list_id=field, kind="post", generation=0, subject="",
            post_ids=(), ledger_key=key,
        )  # fmt: skip
        assert mid_a is not None
        q.snapshot_list(conn, mid_a, field, key, dedupe=True)

        def host_b() -> None:
            try:
                outcome["ids"] = plan_post(engine, SETTINGS, "p", ("essays",))
            except Exception as exc:  # the failure under test
                outcome["error"] = exc

        thread = threading.Thread(target=host_b)
        thread.start()
        # Not a fixed pause (a starved B may not have got that far in 1 s, and
        # the test would then check no race): until B waits on a lock.
        assert _waits_on_a_lock(engine, 60.0), "host B never waited for A's turn"
        assert thread.is_alive()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    ids = outcome["ids"]
    assert isinstance(ids, dict)
    assert sorted(queued(engine, mid_a)) == sorted([BOTH] + [f"f{i}@example.org" for i in range(5)])
    assert sorted(queued(engine, ids["essays"])) == [f"e{i}@example.org" for i in range(5)]
    with engine.connect() as conn:  # one mailing per list, nobody planned twice
        mailings_of = conn.execute(select(deliveries.c.mailing_id).distinct()).scalars().all()
        emails = conn.execute(select(deliveries.c.email)).scalars().all()
    assert sorted(mailings_of) == sorted([mid_a, ids["essays"]])
    assert len(emails) == len(set(emails)) == 11


def test_a_plan_snapshots_every_mailable_member_once_in_id_order(database_url: str) -> None:
    engine = site_db(database_url)
    gone = subs.get_by_email(engine, "f2@example.org")
    assert gone is not None
    subs.unsubscribe(engine, gone.id, "field", reason="test")
    ids = plan_post(engine, SETTINGS, "p", ("field", "essays"))
    field = queued(engine, ids["field"])
    essays = queued(engine, ids["essays"])
    # BOTH joined field first; f2 left field; nobody twice.
    assert field == [BOTH, "f0@example.org", "f1@example.org", "f3@example.org", "f4@example.org"]
    assert essays == [f"e{i}@example.org" for i in range(5)]
    # Planning again is a no-op: same mailings, same rows.
    assert plan_post(engine, SETTINGS, "p", ("field", "essays")) == ids
    assert queued(engine, ids["field"]) == field
    # A resend is a new generation with every mailable member again.
    again = plan_mailing(engine, SETTINGS, "p", "field", resend=True)
    assert again != ids["field"]
    assert queued(engine, again) == field


def test_planning_leaves_the_connections_foreign_key_checks_on(tmp_path: object) -> None:
    # SQLite: the snapshot runs with foreign-key enforcement off; every other
    # write on a pooled connection must still have it on.
    engine = site_db(f"sqlite:///{tmp_path}/news.db")
    plan_post(engine, SETTINGS, "p", ("field",))
    assert engine.pool.checkedin() == 1  # the planning connection, back in the pool
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), engine.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                mailing_id=999, subscriber_id=1, email=BOTH, status="queued",
                attempts=0, updated_at=datetime.now(UTC),
            )
        )  # fmt: skip


def test_a_failed_plan_on_sqlite_also_turns_the_checks_back_on(tmp_path: object) -> None:
    engine = site_db(f"sqlite:///{tmp_path}/news.db")
    with pytest.raises(RuntimeError), snapshot_transaction(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        raise RuntimeError("planning failed")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_planning_on_sqlite_gives_its_page_cache_back_after_the_commit(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The big transaction's cache (16 MB) is freed when it shrinks back; the
    # C allocator is asked to hand it back to the system once the snapshot is
    # committed (another connection sees it), not in the middle of it.
    engine = site_db(f"sqlite:///{tmp_path}/news.db")
    seen: list[int] = []

    def release() -> bool:
        with engine.connect() as conn:
            seen.append(conn.scalar(select(func.count()).select_from(deliveries)) or 0)
        return True

    with engine.begin() as conn:
        for i in range(5, 40):
            subs.add_subscriber(conn, f"f{i}@example.org", "field")
    monkeypatch.setattr(bulk, "release_freed_memory", release)
    monkeypatch.setattr(bulk, "GIVE_BACK_ROWS", 30)  # as if 30 rows were a big plan
    plan_post(engine, SETTINGS, "p", ("field",))
    assert seen == [41]  # once, after the commit: BOTH and f0-f39
    # A smaller plan leaves the default cache alone: nothing to give back.
    plan_post(engine, SETTINGS, "p", ("essays",))  # e0-e4 (BOTH has the post)
    assert seen == [41]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_freed_memory_is_given_back_where_glibc_can() -> None:
    assert bulk.release_freed_memory() is True


def test_planning_where_memory_cannot_be_given_back_still_plans(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No malloc_trim (musl, macOS, a Python without ctypes): nothing is done.
    monkeypatch.setattr(bulk, "_malloc_trim", lambda: None)
    assert bulk.release_freed_memory() is False
    engine = site_db(f"sqlite:///{tmp_path}/news.db")
    ids = plan_post(engine, SETTINGS, "p", ("field",))
    assert len(queued(engine, ids["field"])) == 6


@pytest.mark.parametrize("dedupe", [True, False])
def test_planning_on_sqlite_reads_the_members_in_key_order_without_sorting(
    tmp_path: object, dedupe: bool
) -> None:
    # The INSERT … SELECT the code runs, explained with its own parameters:
    # the list's members come in subscriber order from the membership key, so
    # SQLite needs no temporary B-tree to sort a million rows (it used one).
    engine = site_db(f"sqlite:///{tmp_path}/news.db")
    settings = replace(SETTINGS, email=replace(SETTINGS.email, dedupe_across_lists=dedupe))
    inserts: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO DELIVERIES"):
            inserts.append((statement, params))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        plan_post(engine, settings, "p", ("field", "essays"))  # rivals too
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert len(inserts) == 2
    with engine.connect() as conn:
        for statement, params in inserts:
            plan = [
                str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            ]
            assert not [step for step in plan if "TEMP B-TREE" in step], plan
    assert queued(engine, plan_post(engine, settings, "p", ("field",))["field"])[0] == BOTH


def index_sql(conn: Connection, name: str) -> str:
    """The CREATE INDEX statement of an index, as the database keeps it."""
    if conn.dialect.name == "postgresql":
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
    else:
        query = "SELECT sql FROM sqlite_master WHERE name = :name"
    return str(conn.execute(text(query), {"name": name}).scalar() or "")


def test_a_version_3_database_is_upgraded_to_4(database_url: str) -> None:
    engine = open_url(database_url)
    with engine.begin() as conn:  # make it look like version 3
        for name in ("ix_deliveries_deferred", "uq_deliveries_dedupe"):
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(
            text(
                "CREATE INDEX ix_deliveries_claim ON deliveries (mailing_id, status, next_attempt_at)"
            )
        )
        conn.execute(
            text(
                "CREATE UNIQUE INDEX uq_deliveries_dedupe ON deliveries (dedupe_key, subscriber_id)"
            )
        )
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP INDEX uq_delivery_mailing_subscriber"))
            conn.execute(
                text(
                    "ALTER TABLE deliveries ADD FOREIGN KEY (mailing_id) REFERENCES mailings (id) "
                    "ON DELETE CASCADE, ADD FOREIGN KEY (subscriber_id) REFERENCES subscribers (id), "
                    "ADD CONSTRAINT uq_delivery_mailing_subscriber UNIQUE (mailing_id, subscriber_id)"
                )
            )
        conn.execute(schema_version.delete().where(schema_version.c.version > 3))
    engine = site_db(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        names = {ix["name"] for ix in inspect(conn).get_indexes("deliveries")}
        foreign = inspect(conn).get_foreign_keys("deliveries")
        dedupe = index_sql(conn, "uq_deliveries_dedupe")
        mailing_subscriber = index_sql(conn, "uq_delivery_mailing_subscriber")
    assert "ix_deliveries_claim" not in names
    assert "ix_deliveries_deferred" in names
    assert "WHERE" in dedupe and "dedupe_key IS NOT NULL" in dedupe
    if engine.dialect.name == "postgresql":
        assert foreign == []
        assert "UNIQUE" in mailing_subscriber and "dedupe_key IS NULL" in mailing_subscriber
        assert "4294967296" in mailing_subscriber  # schema 7: older rows only
    else:  # SQLite keeps its table constraints (it cannot drop one without rebuilding the table)
        assert {fk["referred_table"] for fk in foreign} == {"mailings", "subscribers"}
    ids = plan_post(engine, SETTINGS, "p", ("field",))
    assert len(queued(engine, ids["field"])) == 6
    duplicate_refused(engine, ids["field"])


def duplicate_refused(engine: Engine, mailing_id: int, *, legacy: bool = False) -> None:
    """A second delivery to one of the mailing's subscribers is refused by the database.

    `legacy`: a mailing planned before schema 7 (plain ids), whose rows a
    unique constraint on (mailing, subscriber) keeps: a row without an id.
    """
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries.c.subscriber_id, deliveries.c.email).where(
                deliveries.c.mailing_id == mailing_id
            )
        ).first()
    assert row is not None
    with pytest.raises(IntegrityError), engine.begin() as conn:
        if not legacy:  # the way planning writes rows: the id from the mailing's key
            q.snapshot(conn, mailing_id, [(row.subscriber_id, row.email)])
        conn.execute(
            deliveries.insert().values(
                mailing_id=mailing_id, subscriber_id=row.subscriber_id, email=row.email,
                status="queued", attempts=0, updated_at=datetime.now(UTC),
            )
        )  # fmt: skip


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
def test_a_mailing_never_holds_one_subscriber_twice(database_url: str, dedupe: bool) -> None:
    """A row's id is its ledger key and subscriber: either way, one per (mailing, person)."""
    engine = site_db(database_url)
    settings = SETTINGS
    if not dedupe:
        settings = Settings(
            lists=SETTINGS.lists, email=replace(SETTINGS.email, dedupe_across_lists=False)
        )
    ids = plan_post(engine, settings, "p", ("field", "essays"))
    with engine.connect() as conn:
        keys = {m: q.mailing_ledger_key(conn, m) for m in ids.values()}
        rows = conn.execute(
            select(deliveries.c.id, deliveries.c.mailing_id, deliveries.c.subscriber_id)
        ).all()
        assert set(conn.execute(select(deliveries.c.dedupe_key)).scalars()) == {None}
    # Deduplicated: the post's one key for both lists; otherwise one key each.
    assert len(set(keys.values())) == (1 if dedupe else 2)
    assert rows and all(r.id == delivery_id(keys[r.mailing_id], r.subscriber_id) for r in rows)
    for mailing_id in ids.values():
        duplicate_refused(engine, mailing_id)
    resend = plan_mailing(engine, settings, "p", "field", resend=True)
    duplicate_refused(engine, resend)


V3_SQLITE = Path(__file__).parent / "fixtures" / "store" / "schema_v3_sqlite.sql"


def test_a_sqlite_file_made_by_version_3_upgrades_with_its_ledger(tmp_path: Path) -> None:
    """The real version-3 schema (table constraints and all), with a mailing half sent."""
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:
        db.executescript(V3_SQLITE.read_text())
        db.executescript(
            "INSERT INTO schema_version VALUES (3, '2026-01-01 00:00:00');"
            "INSERT INTO lists VALUES (1, 'field', 'Field', '2026-01-01 00:00:00');"
            "INSERT INTO subscribers (id, email, email_key, uid, name, attributes, status, "
            "created_at, updated_at) VALUES (1, 'a@example.org', 'a@example.org', 'u1', '', "
            "'{}', 'active', '2026-01-01', '2026-01-01');"
            "INSERT INTO memberships VALUES (1, 1, '2026-01-01', NULL);"
            "INSERT INTO mailings (id, post_id, list_id, kind, generation, subject, state, "
            "post_ids, created_at) VALUES (1, 'old', 1, 'post', 0, '', 'sending', '[]', "
            "'2026-01-01');"
            "INSERT INTO deliveries (id, mailing_id, subscriber_id, email, status, attempts, "
            "next_attempt_at, updated_at, dedupe_key) VALUES (1, 1, 1, 'a@example.org', "
            "'deferred', 1, '2026-01-01 00:00:00', '2026-01-01', 'old');"
        )
    engine = open_url(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        assert "dedupe_key IS NOT NULL" in index_sql(conn, "uq_deliveries_dedupe")
        names = {ix["name"] for ix in inspect(conn).get_indexes("deliveries")}
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        unique = [u["column_names"] for u in inspect(conn).get_unique_constraints("subscribers")]
    assert "ix_deliveries_claim" not in names and "ix_deliveries_deferred" in names
    assert "ix_deliveries_message_id" in names  # schema 6
    # Schema 6 keeps SQLite's table constraint on email (stricter, only slower).
    assert ["email"] in unique and ["email_key"] in unique
    # The table constraint still refuses a second (mailing, subscriber), key or no key.
    duplicate_refused(engine, 1, legacy=True)
    # The deferred row is claimable through the new index; planning works.
    claimed, _ = q.claim(engine, 1, "host:1:x", 10, 60)
    assert [r.email for r in claimed] == ["a@example.org"]
    settings = Settings(lists={"field": ListSettings("field", "Field")})
    mid = plan_mailing(engine, settings, "new", "field")
    assert queued(engine, mid) == ["a@example.org"]


def test_a_version_4_database_loses_the_import_tables_foreign_keys_on_postgresql(
    database_url: str,
) -> None:
    # Schema 5: memberships and consent_events keep their keys on SQLite only
    # (on PostgreSQL they were per-row triggers: most of a big import's merge).
    engine = open_url(database_url)
    with engine.begin() as conn:  # make it look like version 4
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE memberships ADD FOREIGN KEY (list_id) REFERENCES lists (id) "
                    "ON DELETE CASCADE, ADD FOREIGN KEY (subscriber_id) REFERENCES "
                    "subscribers (id) ON DELETE CASCADE"
                )
            )
            conn.execute(
                text(
                    "ALTER TABLE consent_events ADD FOREIGN KEY (subscriber_id) "
                    "REFERENCES subscribers (id) ON DELETE CASCADE"
                )
            )
        conn.execute(schema_version.delete().where(schema_version.c.version > 4))
    engine.dispose()
    engine = open_url(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        keys = {
            table: {fk["referred_table"] for fk in inspect(conn).get_foreign_keys(table)}
            for table in ("memberships", "consent_events")
        }
    if engine.dialect.name == "postgresql":
        assert keys == {"memberships": set(), "consent_events": set()}
    else:
        assert keys == {"memberships": {"lists", "subscribers"}, "consent_events": {"subscribers"}}


def test_a_version_5_database_is_upgraded_to_6_with_its_data(database_url: str) -> None:
    # Schema 6: deliveries indexed by message_id (bounces), and on PostgreSQL
    # no unique constraint on subscribers.email (email_key's implies it).
    engine = site_db(database_url)
    mid = plan_mailing(engine, SETTINGS, "p", "field")
    claimed, _ = q.claim(engine, mid, "host:1:v5", 1, 60)
    q.record_many(engine, [(claimed[0].id, q.Outcome("sent", 1))], "host:1:v5")
    with engine.begin() as conn:  # make it look like version 5, which stored Message-IDs
        conn.execute(
            update(deliveries).where(deliveries.c.id == claimed[0].id).values(message_id="<v5@x>")
        )
        conn.execute(text("DROP INDEX ix_deliveries_message_id"))
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("ALTER TABLE subscribers ADD CONSTRAINT subscribers_email_key UNIQUE (email)")
            )
        conn.execute(schema_version.delete().where(schema_version.c.version > 5))
    engine.dispose()
    engine = open_url(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        message_id = index_sql(conn, "ix_deliveries_message_id")
        unique = [u["column_names"] for u in inspect(conn).get_unique_constraints("subscribers")]
        kept = conn.execute(
            select(deliveries.c.email).where(deliveries.c.message_id == "<v5@x>")
        ).scalars()
        assert list(kept) == [claimed[0].email]
    assert "message_id IS NOT NULL" in message_id
    if engine.dialect.name == "postgresql":  # SQLite's: see the version-3 file's test
        assert ["email"] not in unique and ["email_key"] in unique
    assert len(queued(engine, mid)) == 6  # the ledger and its subscribers are all there
    # One address, any case, is still one subscriber: email_key refuses the second.
    subs.add_subscriber(engine, BOTH.upper(), "field")
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(subscribers)) == 11
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            subscribers.insert().values(
                email=BOTH.capitalize(), email_key=BOTH, uid="other", name="",
                attributes={}, status="active", created_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
            )
        )  # fmt: skip


def make_version_6(conn: Connection) -> None:
    """Turn a fresh database back into schema 6: plain ids, no ledger keys, and
    uq_delivery_mailing_subscriber (PostgreSQL: 32-bit ids from a sequence)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE deliveries ALTER COLUMN id TYPE INTEGER"))
        conn.execute(text("ALTER SEQUENCE deliveries_id_seq AS INTEGER"))
        conn.execute(text("ALTER TABLE bounce_events ALTER COLUMN delivery_id TYPE INTEGER"))
    conn.execute(text("ALTER TABLE mailings DROP COLUMN ledger_key"))
    conn.execute(text("DROP TABLE ledger_keys"))
    conn.execute(text("DROP INDEX uq_delivery_mailing_subscriber"))
    conn.execute(
        text(
            "CREATE UNIQUE INDEX uq_delivery_mailing_subscriber "
            "ON deliveries (mailing_id, subscriber_id) WHERE dedupe_key IS NULL"
        )
    )
    conn.execute(schema_version.delete().where(schema_version.c.version > 6))


def plan_as_version_6(conn: Connection, post_id: str, list_name: str, key: str | None) -> int:
    """A mailing planned the way schema 6 did: ids from the default, dedupe_key per row."""
    lid = q.list_id(conn, list_name)
    conn.execute(
        text(
            "INSERT INTO mailings (post_id, list_id, kind, generation, subject, state, "
            "post_ids, created_at) VALUES (:p, :l, 'post', 0, '', 'planned', '[]', :at)"
        ),
        {"p": post_id, "l": lid, "at": datetime.now(UTC)},
    )
    mid = int(conn.scalar(text("SELECT max(id) FROM mailings")))
    conn.execute(
        text(
            "INSERT INTO deliveries (mailing_id, subscriber_id, email, status, attempts, "
            "updated_at, dedupe_key) SELECT :m, s.id, s.email, 'queued', 0, :at, :k "
            "FROM subscribers s JOIN memberships m ON m.subscriber_id = s.id "
            "WHERE m.list_id = :l ORDER BY s.id"
        ),
        {"m": mid, "l": lid, "at": datetime.now(UTC), "k": key},
    )
    return mid


def test_a_version_6_database_is_upgraded_to_7_with_its_ledger(database_url: str) -> None:
    # Schema 7: delivery ids made of a ledger key and the subscriber (the
    # primary key keeps one per (mailing or post, person)); rows planned
    # before keep their ids, and their post is still deduplicated against them.
    engine = site_db(database_url)
    with engine.begin() as conn:
        make_version_6(conn)
        old = plan_as_version_6(conn, "p", "field", "p")  # deduplicated, schema 6
        plain = plan_as_version_6(conn, "q", "field", None)  # dedupe off, schema 6
    engine.dispose()
    engine = open_url(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == SCHEMA_VERSION
        # Both partial unique indexes keep the rows planned before; new ones go in neither.
        assert "4294967296" in index_sql(conn, "uq_delivery_mailing_subscriber")
        assert "dedupe_key IS NOT NULL" in index_sql(conn, "uq_deliveries_dedupe")
        old_ids = conn.execute(
            select(deliveries.c.id).where(deliveries.c.mailing_id.in_((old, plain)))
        ).scalars()
        assert all(i < 2**32 for i in old_ids)
        if conn.dialect.name == "postgresql":
            types = dict(
                conn.execute(
                    text(
                        "SELECT table_name || '.' || column_name, data_type "
                        "FROM information_schema.columns WHERE table_schema = current_schema() "
                        "AND (table_name, column_name) IN "
                        "(('deliveries', 'id'), ('bounce_events', 'delivery_id'))"
                    )
                ).all()
            )
            assert types == {"deliveries.id": "bigint", "bounce_events.delivery_id": "bigint"}
    assert sorted(queued(engine, old)) == sorted([BOTH] + [f"f{i}@example.org" for i in range(5)])
    # The old mailings are still claimed and refuse a second row per person.
    claimed, _ = q.claim(engine, old, "host:1:v6", 1, 60)
    assert [r.email for r in claimed] == [BOTH]
    duplicate_refused(engine, plain, legacy=True)
    # "p" planned for essays now: BOTH has it from the schema-6 mailing.
    essays = plan_mailing(engine, SETTINGS, "p", "essays")
    assert queued(engine, essays) == [f"e{i}@example.org" for i in range(5)]
    with engine.connect() as conn:
        key = q.mailing_ledger_key(conn, essays)
        new_ids = conn.execute(
            select(deliveries.c.id, deliveries.c.subscriber_id).where(
                deliveries.c.mailing_id == essays
            )
        ).all()
    assert all(i == delivery_id(key, s) for i, s in new_ids)
    duplicate_refused(engine, essays)
