"""Subscribers' uids: stored, or derived from the row id (schema 11).

A uid is what unsubscribe and preferences tokens carry (signed with the
store's secret, `newsletter.email.tokens`).  It must never name another
subscriber: not after a store is made again from scratch, when row ids start
over, and not when one uid is seen (a token shows its uid in clear) and the
next row id guessed.  Most subscribers keep the 128 random bits written with
them (`schema.new_uid`); the new rows of a staged import store NULL instead,
and their uid is derived where it is read:

    16 hex digits of the row id, then the first 16 hex digits of
    SHA-256(nonce ":" id)

where the nonce is 128 random bits drawn once per store (the `state` row
`NONCE_KEY`, made in the transaction that writes the first such row).
Another store has another nonce; the next id's uid needs the nonce.  Both
databases compute it in SQL, with one function of their own
(`schema.UID_FUNCTION`: on SQLite `schema.derived_uid`, which every
connection of ours registers; on PostgreSQL a SQL function over its own
`sha256`), so that every read of `UID` gives the same 32 hex digits, and a
uid in a link is found by its id (`derived_id`).

Why: a million stored uids and their index entries were a third of the write
lock of a first import of a million rows (issue 13; docs/subscribers.md).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, func, select

from newsletter.store import insert_or_ignore, now
from newsletter.store.schema import UID_FUNCTION, state, subscribers

NONCE_KEY = "uids.nonce"
_DERIVED = re.compile(r"[0-9a-f]{32}")


# The store's nonce, read once per statement (an uncorrelated subquery);
# NULL while no import has needed it, when no uid is NULL either.
_NONCE = select(state.c.value).where(state.c.key == NONCE_KEY).scalar_subquery()


# A subscriber's uid, stored or derived: select this (labelled "uid"), never
# `subscribers.c.uid`.
def _derived(row_id: Any) -> Any:
    return getattr(func, UID_FUNCTION)(row_id, _NONCE)


UID: Any = func.coalesce(subscribers.c.uid, _derived(subscribers.c.id)).label("uid")


def ensure_nonce(conn: Connection) -> None:
    """The store's nonce, made if missing, inside the caller's transaction:
    the one that writes rows with a NULL uid, so that no such row is ever
    committed without it."""
    row = {"key": NONCE_KEY, "value": secrets.token_hex(16), "updated_at": now()}
    insert_or_ignore(conn, state, row, ("key",))


def derived_id(uid: str) -> int | None:
    """The row id a derived uid names (checked against the derivation by
    the caller's query), or None for a string no derivation makes."""
    if not _DERIVED.fullmatch(uid):
        return None
    return int(uid[:16], 16)


def by_uid(uid: str) -> Any:
    """The condition that finds the subscriber whose uid (stored or derived) is `uid`.

    Two look-ups, each by an index: the stored uid, or the row whose id the
    uid begins with, whose uid is NULL and derives to `uid`."""
    row_id = derived_id(uid)
    stored = subscribers.c.uid == uid
    if row_id is None or row_id >= 1 << 63:  # no row id of SQLite's either
        return stored
    derived = _derived(subscribers.c.id)
    # As a 64-bit number: PostgreSQL's ids are 32-bit, and a bigger one bound
    # as theirs is an error, not a row that is not there.
    same_id = subscribers.c.id == bindparam("derived_id", row_id, type_=BigInteger)
    return stored | (same_id & subscribers.c.uid.is_(None) & (derived == uid))
