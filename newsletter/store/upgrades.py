"""The steps that bring a database made by an older newsletter up to this
schema, one per version (`store.UPGRADES` lists them, `store.upgrade` runs
them in one transaction).  Version 1 is the initial schema created by
metadata.create_all; each step upgrades from version N-1 to N and is safe
to run on a database that already has part of it.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, inspect, text

from newsletter.store.schema import (
    CONSENT_RANGES_INDEX,
    DEDUPE_INDEX,
    DEFERRED_INDEX,
    DELIVERY_INDEXES_V3,
    MAILING_SUBSCRIBER_INDEX,
    MESSAGE_ID_INDEX,
    UID_INDEX,
)


def upgrade_to_2(conn: Connection) -> None:
    """Version 2: the new tables come from create_all; deliveries gains dedupe_key."""
    columns = {c["name"] for c in inspect(conn).get_columns("deliveries")}
    if "dedupe_key" not in columns:
        conn.execute(text("ALTER TABLE deliveries ADD COLUMN dedupe_key TEXT"))
    indexes = {i["name"] for i in inspect(conn).get_indexes("deliveries")}
    if DEDUPE_INDEX.name not in indexes:
        DEDUPE_INDEX.create(conn)


def upgrade_to_3(conn: Connection) -> None:
    # Claims in O(batch) and indexed lease bookkeeping; lease_owner as TEXT.
    for index in DELIVERY_INDEXES_V3:
        index.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE deliveries ALTER COLUMN lease_owner TYPE TEXT")


def upgrade_to_4(conn: Connection) -> None:
    # Planning a million rows in seconds: fewer indexes per row (why:
    # schema.DEFERRED_INDEX, schema.DEDUPE_INDEX), and PostgreSQL drops the
    # ledger's foreign-key triggers (why: schema.DELIVERY_FOREIGN_KEYS).
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_claim")
    DEFERRED_INDEX.create(conn, checkfirst=True)
    # Rebuilt partial: the NULL keys of every other mailing's rows leave it.
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {DEDUPE_INDEX.name}")
    DEDUPE_INDEX.create(conn)
    if conn.dialect.name == "postgresql":
        drop_foreign_keys(conn, "deliveries")
        conn.exec_driver_sql(
            f"ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS {MAILING_SUBSCRIBER}"
        )
    # SQLite keeps its table constraint (see schema.DEDUPE_INDEX's comment).
    constraints = {u["name"] for u in inspect(conn).get_unique_constraints("deliveries")}
    if MAILING_SUBSCRIBER not in constraints:
        # Schema 4-6's other partial unique index (narrowed by version 7).
        conn.exec_driver_sql(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {MAILING_SUBSCRIBER} "
            "ON deliveries (mailing_id, subscriber_id) WHERE dedupe_key IS NULL"
        )


MAILING_SUBSCRIBER = "uq_delivery_mailing_subscriber"


def upgrade_to_5(conn: Connection) -> None:
    # Importing a million subscribers: PostgreSQL drops the foreign-key
    # triggers of the bulk-written tables (why: schema.memberships).
    if conn.dialect.name == "postgresql":
        for table in ("memberships", "consent_events"):
            drop_foreign_keys(conn, table)


def upgrade_to_6(conn: Connection) -> None:
    # Bounces matched by Message-ID read by an index (why: schema.MESSAGE_ID_INDEX);
    # PostgreSQL drops the unique constraint on subscribers.email (why: the
    # column's comment in schema.subscribers).  SQLite keeps its table
    # constraint and its rowid memberships table (changing either means
    # rebuilding the table): stricter or one B-tree more, same answers.
    MESSAGE_ID_INDEX.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql":
        for constraint in inspect(conn).get_unique_constraints("subscribers"):
            if constraint["column_names"] == ["email"]:
                name = constraint["name"]
                conn.exec_driver_sql(f'ALTER TABLE subscribers DROP CONSTRAINT "{name}"')


def upgrade_to_7(conn: Connection) -> None:
    # Keyed delivery ids (why: schema.ledger_keys): mailings learn their key
    # (the ledger_keys table itself comes from create_all), PostgreSQL's ids
    # become 64-bit (a rewrite of the ledger, once), and the partial unique
    # index that every non-deduplicated row went into keeps only the rows
    # planned before (why: schema.DEDUPE_INDEX's comment).  Older rows keep
    # their ids.
    columns = {c["name"] for c in inspect(conn).get_columns("mailings")}
    if "ledger_key" not in columns:
        conn.exec_driver_sql("ALTER TABLE mailings ADD COLUMN ledger_key INTEGER")
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {MAILING_SUBSCRIBER}")
    constraints = {u["name"] for u in inspect(conn).get_unique_constraints("deliveries")}
    if MAILING_SUBSCRIBER not in constraints:  # SQLite's table constraint before version 4
        MAILING_SUBSCRIBER_INDEX.create(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE deliveries ALTER COLUMN id TYPE BIGINT")
        conn.exec_driver_sql("ALTER SEQUENCE IF EXISTS deliveries_id_seq AS BIGINT")
        conn.exec_driver_sql("ALTER TABLE bounce_events ALTER COLUMN delivery_id TYPE BIGINT")


def upgrade_to_8(conn: Connection) -> None:
    # Who planned each mailing (why: schema.mailings.origin).  A database
    # cannot tell for the mailings it already holds: a resend is always the
    # owner's; any other is taken as the daemon's, which most are, so that a
    # post pulled mid-mailing stops (invariant 4; an owner's own mailing
    # stopped this way goes on with `newsletter send`, which takes it over).
    columns = {c["name"] for c in inspect(conn).get_columns("mailings")}
    if "origin" not in columns:
        conn.exec_driver_sql(
            "ALTER TABLE mailings ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'daemon'"
        )
    conn.exec_driver_sql("UPDATE mailings SET origin = 'send' WHERE kind = 'resend'")


def upgrade_to_9(conn: Connection) -> None:
    # Nothing to change in the tables: the version itself is the step.  A
    # sender of version 8 ignores the outcome journals beside the store
    # (store.journal) and sent their messages again; it now refuses the store
    # ("newer than this newsletter").
    del conn


def upgrade_to_10(conn: Connection) -> None:
    # The name typed in a signup waits on its confirmation (why:
    # schema.confirmations.name).  Older rows have none: confirming one
    # keeps the subscriber's name as it is.
    columns = {c["name"] for c in inspect(conn).get_columns("confirmations")}
    if "name" not in columns:
        conn.exec_driver_sql("ALTER TABLE confirmations ADD COLUMN name VARCHAR(200)")


def upgrade_to_11(conn: Connection) -> None:
    # An import's new rows store no uid (why: store.uids) and one consent
    # record for them all (why: schema.consent_events.last_subscriber_id).
    columns = {c["name"] for c in inspect(conn).get_columns("consent_events")}
    if "last_subscriber_id" not in columns:
        conn.exec_driver_sql("ALTER TABLE consent_events ADD COLUMN last_subscriber_id INTEGER")
    CONSENT_RANGES_INDEX.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE subscribers ALTER COLUMN uid DROP NOT NULL")
        # Unique where stored: the index takes no entry for a NULL.  The
        # constraint goes first: named as the index (uq_subscribers_uid, a
        # common naming convention), its own index would pass for ours.
        for constraint in inspect(conn).get_unique_constraints("subscribers"):
            if constraint["column_names"] == ["uid"]:
                name = constraint["name"]
                conn.exec_driver_sql(f'ALTER TABLE subscribers DROP CONSTRAINT "{name}"')
        UID_INDEX.create(conn, checkfirst=True)
    else:
        _sqlite_uid_nullable(conn)  # its UNIQUE (uid) stays: see schema.UID_INDEX


def _sqlite_uid_nullable(conn: Connection) -> None:
    """SQLite cannot drop a NOT NULL with ALTER TABLE.  Removing one changes
    nothing stored, so SQLite's documented short procedure for it applies
    (https://sqlite.org/lang_altertable.html, "making other kinds of table
    schema changes"): edit the table's CREATE statement in sqlite_schema and
    move the schema cookie on, inside this transaction; no rewrite of the
    table, however big."""
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscribers'"
    ).scalar_one()
    relaxed, found = _UID_NOT_NULL.subn(r"\1", sql)
    if found != 1:
        return  # already nullable (or not as this schema wrote it: left alone)
    cookie = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'subscribers'",
            (relaxed,),
        )
        conn.exec_driver_sql(f"PRAGMA schema_version={int(cookie) + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema=OFF")


# The column as metadata.create_all wrote it in versions 1-10.
_UID_NOT_NULL = re.compile(r"(\buid VARCHAR\(32\)) NOT NULL")


def drop_foreign_keys(conn: Connection, table: str) -> None:
    for foreign_key in inspect(conn).get_foreign_keys(table):
        name = foreign_key["name"]
        conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{name}"')
