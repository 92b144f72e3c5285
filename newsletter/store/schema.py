"""The database schema (SQLAlchemy Core), one place for every table.

Dialect-neutral on purpose: PostgreSQL is next.  Times are stored as
timezone-aware UTC datetimes (`UtcDateTime`), statuses as short strings.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

# 2: consent events, confirmations, signup hits, dedupe_key; 3: claim/lease indexes,
# lease_owner TEXT; 4: planning-friendly ledger (partial deferred and unique indexes, no
# foreign keys on deliveries on PostgreSQL); 5: no foreign keys on memberships and
# consent_events on PostgreSQL; 6: no unique index on subscribers.email (email_key's
# implies it), memberships WITHOUT ROWID on SQLite, deliveries indexed by message_id;
# 7: keyed delivery ids (ledger_keys, mailings.ledger_key, bigint ids on PostgreSQL),
# uq_delivery_mailing_subscriber dropped and uq_deliveries_dedupe kept for older rows;
# 8: mailings.origin (who planned a mailing: the daemon's can be withdrawn);
# 9: no new column, but outcome journals beside the store (`store.journal`),
# which a sender of version 8 would not read: the number makes it refuse the store;
# 10: confirmations.name (the name typed in that signup: kept only once it is confirmed);
# 11: subscribers.uid may be NULL (derived from the row id: `store.uids`; unique where
# stored: UID_INDEX), and one consent record may cover a range of subscribers
# (consent_events.last_subscriber_id).
SCHEMA_VERSION = 11


def new_uid() -> str:
    return secrets.token_hex(16)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _email_key(context: Any) -> str:
    return str(context.get_current_parameters()["email"]).lower()


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", UtcDateTime, nullable=False),
)

# One row per normalised address.  status: active | unsubscribed | bounced |
# complained | pending.  A suppression (anything but active/pending) is only
# undone by an explicit resubscribe (invariant 3).
subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    # Not unique by itself (schema 6): equal addresses have equal keys, so
    # `email_key`'s unique index already refuses a second one, and a third
    # index on every new subscriber was a tenth of a big import's merge.  A
    # SQLite database made before version 6 keeps its table constraint
    # (dropping one means rebuilding the table): stricter, only slower.
    Column("email", String(320), nullable=False),
    # The address lower-cased: duplicates are merged case-insensitively while
    # `email` keeps the local part as given (RFC 5321 §2.4 lets servers treat
    # it case-sensitively, so we never rewrite what people typed).  Filled in
    # from `email` when an insert does not give it.
    Column("email_key", String(320), nullable=False, unique=True, default=_email_key),
    # Unguessable, never the bare row id: what unsubscribe tokens and URLs
    # carry.  32 hex digits: 128 random bits (`new_uid`), or NULL for the new
    # rows of a staged import (schema 11), whose uid is derived from the row
    # id and the store's own random nonce (`newsletter.store.uids`): writing
    # a million stored uids and their index entries was a third of a big
    # first import's write lock.  Read it through `uids.UID`, never this column.
    # Unique where stored (`UID_INDEX`: NULLs take no entry).
    Column("uid", String(32), nullable=True, default=new_uid),
    Column("name", String(200), nullable=False, default=""),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("status", String(16), nullable=False, default="active"),
    Column("status_reason", Text, nullable=True),
    Column("status_changed_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# A store made before version 11 keeps its table constraint on SQLite
# (dropping one means rebuilding the table): the same uniqueness, and an
# entry per NULL.  PostgreSQL swaps its constraint for this (upgrade 11).
UID_INDEX = Index(
    "uq_subscribers_uid",
    subscribers.c.uid,
    unique=True,
    sqlite_where=text("uid IS NOT NULL"),  # PostgreSQL's: PARTIAL_INDEXES
)

lists = Table(
    "lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("title", String(200), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
)


# Bulk-written tables whose foreign keys are SQLite's only (schema 5): on
# PostgreSQL each key is a per-row trigger that looks the parent up again,
# and a first import of a million rows spent most of its merge in them
# (memberships and consent records).  The code guarantees them as it does
# the ledger's (see DELIVERY_FOREIGN_KEYS): these rows are written only for
# a subscriber and a list read or inserted in the same transaction, and no
# subscriber or list is ever deleted (statuses change; rows stay).
def _sqlite_only_key(column: str, parent: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint([column], [parent], ondelete="CASCADE").ddl_if(dialect="sqlite")


memberships = Table(
    "memberships",
    metadata,
    Column("list_id", Integer, primary_key=True),
    Column("subscriber_id", Integer, primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    # Per-list unsubscribe ("subscribers unsubscribe EMAIL --list L").  Equal
    # to created_at: recorded for someone who never joined the list
    # (newsletter.audience.memberreads.NEVER_JOINED).
    Column("unsubscribed_at", UtcDateTime, nullable=True),
    Index("ix_memberships_subscriber", "subscriber_id"),
    _sqlite_only_key("list_id", "lists.id"),
    _sqlite_only_key("subscriber_id", "subscribers.id"),
    # SQLite (schema 6): the rows live in the primary key's B-tree instead of
    # a rowid table plus a separate index on the key, one B-tree less to
    # write per membership.  A database made before version 6 keeps its rowid
    # table (the same rows and answers, one more B-tree).
    sqlite_with_rowid=False,
)

# What one unsubscribe link's POST changed, so that its undo button reverses
# exactly that and nothing else (issue 9).  list_id None: a global token.
# change: status (the subscriber's status went previous_status → unsubscribed)
# | membership (the membership got unsubscribed_at) | new_membership (an
# unsubscribed membership was created for someone not on the list).  The
# stamp it wrote is `changed_at`: if the row no longer carries it, something
# else changed it since, and the undo leaves it alone.
unsubscribe_events = Table(
    "unsubscribe_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("list_id", ForeignKey("lists.id", ondelete="CASCADE"), nullable=True),
    Column("change", String(16), nullable=False),
    Column("previous_status", String(16), nullable=True),
    Column("changed_at", UtcDateTime, nullable=False),
    Column("undone_at", UtcDateTime, nullable=True),
    Index("ix_unsubscribe_events_subscriber", "subscriber_id"),
)

# A mailing is (post, list): planned once, automatically at most once (invariant 1).
# kind: post | digest | resend.  state: planned | waiting | held | sending | paused
# | withdrawn | postponed | done (the last two: `store.halts`).
mailings = Table(
    "mailings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("post_id", String(500), nullable=False),
    Column("list_id", ForeignKey("lists.id"), nullable=False),
    Column("kind", String(16), nullable=False, default="post"),
    Column("generation", Integer, nullable=False, default=0),  # >0 only for --resend
    Column("subject", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False, default="planned"),
    Column("post_ids", JSON, nullable=False, default=list),  # digest contents
    Column("created_at", UtcDateTime, nullable=False),
    Column("scheduled_for", UtcDateTime, nullable=True),
    Column("paused_until", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    # The number in the ids of this mailing's deliveries (`delivery_id`);
    # NULL for a mailing planned before schema 7 (its rows have plain ids).
    Column("ledger_key", Integer, nullable=True),
    # Schema 8: who planned it, AUTOMATIC (the daemon: withdrawn when its post
    # is pulled, invariant 4) or EXPLICIT (`newsletter send`: the owner's
    # choice, never withdrawn).  Mailings planned before are AUTOMATIC but
    # for resends (store.upgrades.upgrade_to_8).
    Column("origin", String(16), nullable=False, server_default="daemon"),
    UniqueConstraint("post_id", "list_id", "generation", name="uq_mailing_post_list"),
)

AUTOMATIC = "daemon"
EXPLICIT = "send"

# Schema 7: where delivery ids come from.  A delivery's id is
# `ledger_key * 2**32 + subscriber_id` (`delivery_id`), so the ledger's primary
# key itself refuses a second delivery per (key, subscriber), and planning
# writes one B-tree fewer per row than with a separate unique index (a third
# of the time of planning a million rows on PostgreSQL, measured).  A
# deduplicated post mailing takes its post's key (the row with that
# `post_id`, made once: the unique column makes concurrent planners on any
# host agree), so one person gets one delivery of a post across every list;
# any other mailing (resend, digest, dedupe off) takes a fresh key of its own
# (`post_id` NULL), so one delivery per (mailing, person).
ledger_keys = Table(
    "ledger_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("post_id", String(500), nullable=True, unique=True),
)

KEY_SHIFT = 2**32


def delivery_id(ledger_key: int, subscriber_id: int) -> int:
    """The id of the delivery of a mailing with this ledger key to this subscriber."""
    if not 0 < subscriber_id < KEY_SHIFT:
        raise ValueError(f"subscriber id {subscriber_id} out of range for a delivery id")
    return ledger_key * KEY_SHIFT + subscriber_id


# Added in schema version 3 (store.upgrades.upgrade_to_3 creates them in older databases).
DELIVERY_INDEXES_V3 = (
    # Queued rows in id order: a claim reads only the rows it takes.
    Index("ix_deliveries_queue", "mailing_id", "status", "id"),
    # Leased rows by owner (recording, renewing, releasing, freeing dead owners):
    # only the few rows in flight are in it.
    Index(
        "ix_deliveries_lease",
        "lease_owner",
        sqlite_where=text("lease_owner IS NOT NULL"),
    ),
    # Deployment-wide caps count what went out in the last hour/day.  Partial:
    # planning a million rows adds nothing to it.
    Index(
        "ix_deliveries_sent_at",
        "sent_at",
        sqlite_where=text("sent_at IS NOT NULL"),
    ),
)

# Added in schema version 6: a bounce report without our VERP token is matched
# by the returned message's Message-ID (`delivery.bouncebox`), which was a
# full scan of the ledger per report.  Partial: only sent rows carry one, so
# planning a million queued rows adds nothing to it.  Since December 2026 no
# row gets one: a Message-ID names its delivery (`delivery.messageids`) and
# is not stored, so recording an outcome does not move this index; it serves
# the bounces of the rows recorded before.
MESSAGE_ID_INDEX = Index(
    "ix_deliveries_message_id",
    "message_id",
    sqlite_where=text("message_id IS NOT NULL"),
)

# Added in schema version 4, replacing ix_deliveries_claim (mailing_id, status,
# next_attempt_at), which held every row: deferred rows in the order they fall
# due, and only them, so planning a million queued rows adds nothing to it.
# Queries reach it only with the literal `status = 'deferred'` in their SQL (a
# bound parameter does not prove the index's WHERE): see `DEFERRED`.
DEFERRED_INDEX = Index(
    "ix_deliveries_deferred",
    "mailing_id",
    "next_attempt_at",
    sqlite_where=text("status = 'deferred'"),
)

# The foreign keys of the ledger, on SQLite only.  On PostgreSQL each is a
# per-row trigger that looked the parent row up again: 60 % of the time of
# planning a mailing (a million trigger calls each; deferring them only moves
# the calls to the commit).  The code guarantees them instead: deliveries are
# created only by the planning INSERT … SELECT, from a join on `subscribers`
# and for the mailing inserted in the same transaction, and nothing ever
# deletes a subscriber or a mailing (statuses change; rows stay: they are the
# record of what was sent).  SQLite keeps them (dropping one means rebuilding
# the table) and switches enforcement off for the planning transaction only
# (`store.snapshot_transaction`).
DELIVERY_FOREIGN_KEYS = (
    ForeignKeyConstraint(["mailing_id"], ["mailings.id"], ondelete="CASCADE").ddl_if(
        dialect="sqlite"
    ),
    ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"]).ddl_if(dialect="sqlite"),
)

# One row per (mailing, subscriber): the ledger behind invariant 2.
# status: queued | sending | sent | deferred | failed | skipped.
deliveries = Table(
    "deliveries",
    metadata,
    # 64 bits (`delivery_id`); SQLite's INTEGER PRIMARY KEY already is, and
    # must stay spelled INTEGER to remain the rowid.  The default (a sequence
    # on PostgreSQL, the rowid on SQLite) gave the ids of rows planned before
    # schema 7, all below 2**32; planning now always gives the id.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("mailing_id", Integer, nullable=False),
    Column("subscriber_id", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("status", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=True),
    # TEXT: an owner is host:pid:random or $NEWSLETTER_OWNER; host names can be long.
    Column("lease_owner", Text, nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_text", Text, nullable=True),
    Column("message_id", String(300), nullable=True),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    # Before schema 7: the post id on every delivery of a deduplicated
    # mailing, kept unique per subscriber by uq_deliveries_dedupe.  Rows
    # planned since leave it NULL: their ids carry the rule (`ledger_keys`).
    Column("dedupe_key", Text, nullable=True),
    *DELIVERY_FOREIGN_KEYS,
    *DELIVERY_INDEXES_V3,
    DEFERRED_INDEX,
    MESSAGE_ID_INDEX,
)

# Rows planned before schema 7 (ids below 2**32): one per (mailing,
# subscriber), kept by two partial unique indexes that each such row is in
# exactly one of (schema 4):
# - a deduplicated mailing's rows all carry its post id as dedupe_key, so
#   "one per (post, subscriber)" already means one per (mailing, subscriber);
#   the index also serves the look-ups of those rows when their post is
#   planned for another list (`store.mailings.delivered_before`);
# - every other such row is kept by uq_delivery_mailing_subscriber.
# Rows planned since have dedupe_key NULL and ids from 2**32 up: they are in
# neither (their primary key does the work), so planning a row costs no
# B-tree but the table's, its primary key and ix_deliveries_queue.
# A SQLite database made before version 4 keeps its full table constraint
# UNIQUE (mailing_id, subscriber_id) (SQLite cannot drop one without
# rebuilding the table): stricter, only slower.
DEDUPE_INDEX = Index(
    "uq_deliveries_dedupe",
    deliveries.c.dedupe_key,
    deliveries.c.subscriber_id,
    unique=True,
    sqlite_where=text("dedupe_key IS NOT NULL"),
)
MAILING_SUBSCRIBER_INDEX = Index(
    "uq_delivery_mailing_subscriber",
    deliveries.c.mailing_id,
    deliveries.c.subscriber_id,
    unique=True,
    sqlite_where=text(f"dedupe_key IS NULL AND id < {KEY_SHIFT}"),
)

# Small key/value table: daemon lock, generated secrets, last digest times.
state = Table(
    "state",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("number", Float, nullable=True),
)

# One row per bounce or complaint read back from the bounce mailbox.
# kind: hard | soft | complaint.  `source` is the report's Message-ID (or a
# digest of its bytes): a report read twice after a crash is recorded once.
bounce_events = Table(
    "bounce_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(300), nullable=False),
    Column("email", String(320), nullable=False),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=True),
    Column("mailing_id", ForeignKey("mailings.id", ondelete="SET NULL"), nullable=True),
    Column("delivery_id", BigInteger().with_variant(Integer(), "sqlite"), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=True),
    Column("diagnostic", Text, nullable=False, default=""),
    Column("received_at", UtcDateTime, nullable=False),
    UniqueConstraint("source", "email", name="uq_bounce_source_email"),
    Index("ix_bounce_events_subscriber", "subscriber_id", "kind", "received_at"),
)

# The consent record (GDPR art. 7(1)): every signup, confirmation,
# unsubscribe and preference change, with when and through what.
# action: signup | confirm | subscribe | unsubscribe | resubscribe | preferences
#         | import | bounce | complaint.
# source: form | json | import | cli | one-click | preferences | confirm | sync.
consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subscriber_id", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("action", String(32), nullable=False),
    Column("source", String(32), nullable=False),
    Column("list_name", Text, nullable=True),  # None: every list
    Column("detail", Text, nullable=True),
    # Schema 11: one record for subscribers subscriber_id … last_subscriber_id
    # (every id between them), which a staged import writes for the
    # consecutive rows it added with one consent (a million rows of this
    # table and its index were a fifth of a big first import's merge).
    # NULL: the record of subscriber_id alone.  `consent.history` reads both.
    Column("last_subscriber_id", Integer, nullable=True),
    Index("ix_consent_subscriber", "subscriber_id", "at"),
    _sqlite_only_key("subscriber_id", "subscribers.id"),
)

CONSENT_RANGES_INDEX = Index(
    "ix_consent_ranges",
    consent_events.c.last_subscriber_id,
    sqlite_where=text("last_subscriber_id IS NOT NULL"),  # PostgreSQL's: PARTIAL_INDEXES
)

# One row per confirmation email sent: the link carries the nonce, so a link
# works once, expires, and can be counted per address per day.
confirmations = Table(
    "confirmations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("nonce", String(32), nullable=False, unique=True, default=new_uid),
    Column("subscriber_id", ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
    Column("lists", JSON, nullable=False, default=list),
    Column("source", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime, nullable=True),
    # The name typed beside the address in this request: a stranger's text
    # until the address's owner confirms this very request, so it reaches
    # the subscriber only then (NULL: a row from before schema 10).
    Column("name", String(200), nullable=True),
    Index("ix_confirmations_subscriber", "subscriber_id", "created_at"),
)

# Signup rate limits, counted in the database so several processes share
# them.  bucket: "ip" | "address"; key: an HMAC of the IP or address (the
# table never holds either in the clear).
signup_hits = Table(
    "signup_hits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bucket", String(16), nullable=False),
    Column("key", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Index("ix_signup_hits", "bucket", "key", "at"),
)


# The partial indexes' conditions on PostgreSQL, attached when a PostgreSQL
# engine is opened (`store.open_url`): a `postgresql_where=` above would
# import SQLAlchemy's PostgreSQL dialect in every process, SQLite ones
# included (30-46 ms of a `run --once`, measured).  SQLite's own spelling
# (`sqlite_where`) stays on each index; the condition is the same text.
PARTIAL_INDEXES = tuple(
    index
    for index in (
        *DELIVERY_INDEXES_V3,
        DEFERRED_INDEX,
        MESSAGE_ID_INDEX,
        DEDUPE_INDEX,
        MAILING_SUBSCRIBER_INDEX,
        UID_INDEX,
        CONSENT_RANGES_INDEX,
    )
    if index.dialect_options["sqlite"]["where"] is not None
)


# A derived uid (`newsletter.store.uids`) as a SQL function of both
# databases: on SQLite a Python function every connection registers
# (`store._sqlite_pragmas`), on PostgreSQL this one, made by `store.upgrade`.
# Both give the same 32 hex digits: 16 of the id, then the first 16 of
# SHA-256("<nonce>:<id>").  A NULL nonce gives NULL.  STABLE, not IMMUTABLE:
# its body calls STABLE functions (convert_to, text || bigint), and
# PostgreSQL inlines only a function declared no stricter than its body
# (inlined, 200,000 uids took 0.32 s; called, 0.89 s).
UID_FUNCTION = "newsletter_uid"
PG_UID_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {UID_FUNCTION}(row_id bigint, nonce text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT lpad(to_hex(row_id), 16, '0')
        || substr(encode(sha256(convert_to(nonce || ':' || row_id, 'UTF8')), 'hex'), 1, 16)
$$
"""


def derived_uid(row_id: int | None, nonce: str | None) -> str | None:
    """SQLite's `newsletter_uid(id, nonce)`: `PG_UID_FUNCTION` in Python."""
    if row_id is None or nonce is None:
        return None
    digest = hashlib.sha256(f"{nonce}:{row_id}".encode()).hexdigest()
    return f"{row_id:016x}{digest[:16]}"


def use_postgresql_conditions() -> None:
    """Give each partial index its WHERE for PostgreSQL (idempotent)."""
    for index in PARTIAL_INDEXES:
        where = index.dialect_options["sqlite"]["where"]
        index.dialect_kwargs["postgresql_where"] = where
