"""Every statement that claims, records, renews, releases or reclaims reads by an index
(and so does matching a bounce report to its delivery by Message-ID).

The statements are the ones the code really runs (captured from the engine
while it claims, records and frees leases), explained by the database with
their own parameters: on SQLite `EXPLAIN QUERY PLAN`, on PostgreSQL `EXPLAIN`
with sequential scans and whole-table joins disabled (so the plan shows one
only if no index can serve the read at all; on a test-sized table they would
otherwise be cheapest).  A read of `deliveries` is bounded when the index narrows it (an
equality or range on the index's leading columns), or when the index is one
of the partial ones that hold only the few rows in flight.  An unbounded
read is O(rows in the table): the claims of issue 13 that cost 140 ms each at
a million rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from string import Template
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update

from newsletter.audience import members as subs
from newsletter.config import ListSettings, Settings
from newsletter.delivery.bouncebox import process_bounces
from newsletter.delivery.mailings import plan_mailing
from newsletter.store import mailings as q
from newsletter.store import open_url
from newsletter.store.schema import bounce_events, deliveries

SETTINGS = Settings(lists={"news": ListSettings("news", "News")})
# Partial indexes: they hold only leased, sent or deferred rows, never the
# queue, or (uq_delivery_mailing_subscriber) only the rows planned before
# schema 7, which PostgreSQL may read whole when they are few.
PARTIAL = {
    "ix_deliveries_lease",
    "ix_deliveries_sent_at",
    "ix_deliveries_deferred",
    "uq_delivery_mailing_subscriber",
}
TABLES = ("deliveries", "subscribers", "memberships", "mailings")

Statement = tuple[str, Any]


@contextmanager
def captured(engine: Engine) -> Iterator[list[Statement]]:
    """The SQL statements on deliveries run inside the block, with their parameters."""
    seen: list[Statement] = []

    def listen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if head in ("SELECT", "UPDATE", "DELETE") and "deliveries" in statement:
            many = isinstance(params, list)
            seen.append((statement, params[0] if many else params))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def sqlite_reads(engine: Engine, statement: str, params: Any) -> list[tuple[str, str]]:
    """(table, how) for every table the statement reads: how is "search", "scan" or an index."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
    reads = []
    for row in rows:
        detail = str(row[-1])
        words = detail.split()
        if words[0] not in ("SCAN", "SEARCH") or words[1] not in TABLES:
            continue
        index = next((w for w in words if w in PARTIAL), None)
        # "SEARCH t" without "USING" is a walk of the whole table that SQLite
        # happens to name a search (measured: 50 ms at a million rows).
        by_index = words[0] == "SEARCH" and "USING" in words
        how = index or ("search" if by_index else "scan")
        reads.append((words[1], how))
    return reads


def pg_reads(engine: Engine, statement: str, params: Any) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        # A test-sized table makes whole-table scans and joins cheapest; with them
        # off, the plan shows one only where no index can serve the read at all.
        for method in ("seqscan", "hashjoin", "mergejoin"):
            cursor.execute(f"SET enable_{method} = off")
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
        plan = cursor.fetchone()[0]
        cursor.close()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    reads: list[tuple[str, str]] = []

    def walk(node: dict[str, Any]) -> None:
        table = node.get("Relation Name")
        kind = node["Node Type"]
        if table in TABLES and kind != "ModifyTable":
            index = node.get("Index Name")
            if index in PARTIAL:
                how = index
            elif "Index Cond" in node or kind == "Bitmap Heap Scan":
                how = "search"
            else:
                how = "scan"
            reads.append((table, how))
        for child in node.get("Plans", ()):
            if child["Node Type"] == "Bitmap Index Scan" and child.get("Index Name") in PARTIAL:
                reads[-1] = (reads[-1][0], child["Index Name"])
            walk(child)

    walk(plan[0]["Plan"])
    return reads


def unbounded(engine: Engine, statements: list[Statement]) -> list[str]:
    explain: Callable[[Engine, str, Any], list[tuple[str, str]]] = (
        pg_reads if engine.dialect.name == "postgresql" else sqlite_reads
    )
    bad = []
    for statement, params in statements:
        reads = explain(engine, statement, params)
        assert reads, f"no table read in the plan of {statement}"
        for table, how in reads:
            if how == "scan":
                bad.append(f"{table} scanned by: {' '.join(statement.split())}")
    return bad


def ledger(url: str) -> tuple[Engine, int]:
    """A mailing of 30 with rows in every state: queued, leased, deferred, sent."""
    engine = open_url(url)
    subs.ensure_lists(engine, SETTINGS)
    with engine.begin() as conn:
        for i in range(30):
            subs.add_subscriber(conn, f"r{i:02d}@example.org", "news")
    mid = plan_mailing(engine, SETTINGS, "a-post", "news")
    rows, _ = q.claim(engine, mid, "host:1:a", 6, 60)
    q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in rows[:3]], "host:1:a")
    q.record_many(engine, [(r.id, q.Outcome("deferred", 1)) for r in rows[3:]], "host:1:a")
    q.claim(engine, mid, "host:1:b", 4, 60)
    return engine, mid


def test_claims_read_only_by_index(database_url: str) -> None:
    engine, mid = ledger(database_url)
    with engine.begin() as conn:  # one deferred row due now, one crashed sender's row
        conn.execute(update(deliveries).where(deliveries.c.status == "deferred").values(
            next_attempt_at=None))  # fmt: skip
    with captured(engine) as statements:
        rows, _ = q.claim(engine, mid, "host:2:c", 30, 60, caps=[(1000, 3600.0)])
        q.claimable_left(engine, mid)
    assert rows
    kinds = " ".join(s for s, _ in statements)
    assert "status = 'deferred'" in kinds  # written into the SQL: the partial index applies
    assert ("SKIP LOCKED" in kinds) == (engine.dialect.name == "postgresql")
    assert len(statements) >= 6  # the caps' counts, three candidate reads, the update, the join
    assert unbounded(engine, statements) == []


def test_recording_renewing_and_releasing_read_only_by_index(database_url: str) -> None:
    engine, mid = ledger(database_url)
    rows, _ = q.claim(engine, mid, "host:3:d", 4, 60)
    with captured(engine) as statements:
        q.record_many(engine, [(rows[0].id, q.Outcome("sent", 1))], "host:3:d")
        q.record(engine, rows[1].id, q.Outcome("failed", 1, code=550), "host:3:d")
        q.renew(engine, "host:3:d", 60)
        q.release(engine, "host:3:d")
        q.active_senders(engine)
    assert len(statements) == 5
    assert unbounded(engine, statements) == []


def test_freeing_dead_leases_reads_only_the_leased_rows(database_url: str) -> None:
    engine, mid = ledger(database_url)
    dead = "ghost-host:999999:dead"
    if engine.dialect.name == "sqlite":
        import socket

        dead = f"{socket.gethostname()}:999999999:dead"  # a pid that does not exist here
    q.claim(engine, mid, dead, 3, 3600)
    with captured(engine) as statements:
        assert q.free_dead_leases(engine) >= 1
    assert any(s.lstrip().upper().startswith("UPDATE") for s, _ in statements)
    assert unbounded(engine, statements) == []


def test_the_check_itself_sees_a_full_scan(database_url: str) -> None:
    # Without this the tests above could pass on a check that sees nothing.
    engine, _ = ledger(database_url)
    with captured(engine) as statements, engine.connect() as conn:
        conn.execute(deliveries.select().where(deliveries.c.email == "r01@example.org"))
    assert unbounded(engine, statements) != []


def test_planning_looks_for_earlier_deliveries_of_the_post_by_index(database_url: str) -> None:
    # Planning asks once whether the post went out already (then each member
    # is checked against it); with a million rows of other posts, that
    # question must not read them.
    engine, _ = ledger(database_url)
    with captured(engine) as statements:
        plan_mailing(engine, SETTINGS, "another-post", "news")
    assert any("dedupe_key" in s for s, _ in statements)
    assert unbounded(engine, statements) == []


@pytest.mark.parametrize("status", ["queued", "deferred"])
def test_a_plan_on_sqlite_names_the_claim_indexes(tmp_path: object, status: str) -> None:
    engine, mid = ledger(f"sqlite:///{tmp_path}/db.sqlite")
    with captured(engine) as statements:
        q.claim(engine, mid, "host:4:e", 100, 60)  # every candidate query runs
    [candidate] = [
        (s, p) for s, p in statements
        if "ORDER BY" in s and (f"'{status}'" in s or status in p)
    ]  # fmt: skip
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + candidate[0], candidate[1]).all()
    plan = " ".join(str(row[-1]) for row in rows)
    expected = "ix_deliveries_queue" if status == "queued" else "ix_deliveries_deferred"
    assert expected in plan
    assert "TEMP B-TREE" not in plan


def test_the_daemons_next_wake_up_reads_only_by_index(database_url: str) -> None:
    # Every daemon pass asks when the next retry falls due: with a million
    # rows sent long ago, that question must not read them.
    from datetime import timedelta

    from newsletter.daemon.passes import next_work_time
    from newsletter.store import now

    engine, _ = ledger(database_url)
    later = now() + timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.status == "deferred").values(
            next_attempt_at=later))  # fmt: skip
    with captured(engine) as statements:
        wake = next_work_time(engine, now())
    assert wake is not None and abs((wake - later).total_seconds()) < 1
    assert statements
    assert unbounded(engine, statements) == []


def test_every_partial_index_has_its_condition_in_the_database(database_url: str) -> None:
    # PostgreSQL's WHERE is attached when its engine is opened (not at import,
    # which would load its dialect in SQLite processes): check what was created.
    from sqlalchemy import text

    from newsletter.store.schema import PARTIAL_INDEXES

    engine, _ = ledger(database_url)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
        else:
            rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes"))
        created = {name: sql for name, sql in rows if sql}
    assert len(PARTIAL_INDEXES) == 8  # schema 11: the stored uids, the consent ranges
    for index in PARTIAL_INDEXES:
        assert " WHERE " in created[str(index.name)].upper(), created[str(index.name)]


class OneReport:
    """A bounce mailbox holding one report (`bouncebox.Mailbox`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done: list[str] = []

    def messages(self) -> Iterator[tuple[str, bytes]]:
        yield "1", self.data

    def processed(self, ref: str) -> None:
        self.done.append(ref)

    def unparsed(self, ref: str) -> None:
        raise AssertionError(f"report {ref} was not understood")

    def close(self) -> None:
        pass


GMAIL_DSN = Path(__file__).parent / "fixtures" / "bounces" / "dsn-gmail-full-message.eml"


def test_a_bounce_without_our_verp_token_finds_its_delivery_by_an_index(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report that kept only the returned message's Message-ID (no VERP
    # sender of ours): matching it must not read the whole ledger (schema 6).
    # The Message-IDs an older version recorded with each row (today's name
    # their delivery and are not stored: tests/test_message_ids.py).
    monkeypatch.setenv("NEWSLETTER_SECRET", "index-test-secret")
    engine, mid = ledger(database_url)
    rows, _ = q.claim(engine, mid, "host:5:f", 2, 60)
    q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in rows], "host:5:f")
    with engine.begin() as conn:
        for r in rows:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == r.id)
                .values(message_id=f"<m{r.id}@example.com>")
            )
    target = rows[1]
    report = Template(GMAIL_DSN.read_text()).substitute(
        verp="someone-else@example.net", rcpt=target.email, message_id=f"<m{target.id}@example.com>"
    )
    box = OneReport(report.encode())
    with captured(engine) as statements:
        process_bounces(engine, SETTINGS, box)
    assert box.done == ["1"]
    with engine.connect() as conn:
        found = conn.execute(select(bounce_events.c.delivery_id, bounce_events.c.email)).all()
    assert [tuple(f) for f in found] == [(target.id, target.email)]  # by Message-ID only
    lookups = [(s, p) for s, p in statements if "message_id" in s.split("WHERE", 1)[-1]]
    assert lookups, statements
    assert unbounded(engine, lookups) == []
