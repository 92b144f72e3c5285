"""Planning a mailing in the store: one INSERT … SELECT, safe to race, schema version 4.

SQLite and PostgreSQL (the `database_url` fixture).  Speed is measured in
bench/plan.py, never asserted here.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from newsletter.audience import members as subs
from newsletter.config import ListSettings, Settings
from newsletter.delivery.mailings import plan_mailing, plan_post
from newsletter.store import mailings as q
from newsletter.store import open_url, snapshot_transaction
from newsletter.store.schema import deliveries, schema_version

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


def test_two_planners_of_one_post_for_two_lists_race_without_error(pg_url: str) -> None:
    """Host A plans the post for `field` while host B plans it for `essays`.

    B's NOT EXISTS cannot see A's uncommitted rows, so both queue the member
    of both lists; the unique dedupe index makes B wait for A's commit and
    then (before the fix) fail with a unique violation: B's whole plan was
    lost and reported as an error.  Now B leaves that member to A.
    """
    engine = site_db(pg_url)
    outcome: dict[str, object] = {}
    with engine.connect() as conn, conn.begin():
        # Host A, mid-plan: the mailing and its snapshot written, not yet committed.
        field = q.list_id(conn, "field")
        assert field is not None
        mid_a = q.insert_mailing(
            conn, post_id="p", list_id=field, kind="post", generation=0, subject="", post_ids=()
        )
        assert mid_a is not None
        q.snapshot_list(conn, mid_a, field, dedupe_key="p")

        def host_b() -> None:
            try:
                outcome["ids"] = plan_post(engine, SETTINGS, "p", ("essays",))
            except Exception as exc:  # the failure under test
                outcome["error"] = exc

        thread = threading.Thread(target=host_b)
        thread.start()
        time.sleep(1.0)  # B is now waiting on A's uncommitted index entry
        assert thread.is_alive()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    ids = outcome["ids"]
    assert isinstance(ids, dict)
    assert sorted(queued(engine, mid_a)) == sorted([BOTH] + [f"f{i}@example.org" for i in range(5)])
    assert sorted(queued(engine, ids["essays"])) == [f"e{i}@example.org" for i in range(5)]


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


def test_a_version_3_database_is_upgraded_to_4(database_url: str) -> None:
    engine = open_url(database_url)
    with engine.begin() as conn:  # make it look like version 3
        conn.execute(text("DROP INDEX ix_deliveries_deferred"))
        conn.execute(
            text(
                "CREATE INDEX ix_deliveries_claim ON deliveries (mailing_id, status, next_attempt_at)"
            )
        )
        if conn.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE deliveries ADD FOREIGN KEY (mailing_id) REFERENCES mailings (id) "
                    "ON DELETE CASCADE, ADD FOREIGN KEY (subscriber_id) REFERENCES subscribers (id)"
                )
            )
        conn.execute(schema_version.delete().where(schema_version.c.version > 3))
    engine = site_db(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(schema_version.c.version))) == 4
        names = {ix["name"] for ix in inspect(conn).get_indexes("deliveries")}
        foreign = inspect(conn).get_foreign_keys("deliveries")
    assert "ix_deliveries_claim" not in names
    assert "ix_deliveries_deferred" in names
    if engine.dialect.name == "postgresql":
        assert foreign == []
    else:  # SQLite keeps them (it cannot drop one without rebuilding the table)
        assert {fk["referred_table"] for fk in foreign} == {"mailings", "subscribers"}
    ids = plan_post(engine, SETTINGS, "p", ("field",))
    assert len(queued(engine, ids["field"])) == 6
