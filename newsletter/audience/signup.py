"""Double opt-in signup, confirmation and the preferences page's changes.

The web layer (`newsletter.web.signup`, `newsletter.web.preferences`) speaks
HTTP; this module decides, in the database:

* `request_signup`: counts the request against the rate limits, and, when a
  confirmation is worth sending, records a `confirmations` row (its nonce is
  what the link carries) and returns it.  It returns None — and the caller
  answers exactly as when it sends — for a known address that needs nothing,
  a suppression the reader cannot lift, or too many pending confirmations.
* `confirm`: spends a confirmation once; the address becomes active on the
  lists it asked for.  It never lifts an owner's unsubscribe (`cli`, imports),
  a bounce or a complaint (invariant 3).  The name typed in the signup waits
  on its confirmation row and reaches the subscriber only when that very
  request is confirmed (`_confirmed_name`).
* `set_preferences`: joins and leaves public lists for one subscriber.

Every change writes its consent event in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, select, update

from newsletter.audience import consent
from newsletter.audience import members as subs
from newsletter.audience.addresses import normalise_email
from newsletter.config import Settings
from newsletter.errors import SubscriberError
from newsletter.store import insert_or_ignore, reading
from newsletter.store.schema import (
    confirmations,
    memberships,
    new_uid,
    signup_hits,
    subscribers,
)

WINDOW = timedelta(hours=1)
DAY = timedelta(days=1)
# Unsubscribe reasons a reader gave themselves: their own confirmed signup
# may undo them.  Anything else (the owner's `cli`, an import, a bounce, a
# complaint) only the owner's `resubscribe` undoes.
SELF_REASONS = ("one-click", "preferences", "form")
# The same for one list, by the consent record's source of its unsubscribe
# (form, json: a list kept left when a signup brought the reader back).
SELF_SOURCES = ("one-click", "preferences", "form", "json")


class RateLimited(SubscriberError):
    """Too many signup requests from one address (IP) in the window."""


@dataclass(frozen=True)
class SignupRequest:
    email: str
    name: str
    lists: tuple[str, ...]
    source: str  # form | json
    client: str  # the requester's IP (only its HMAC is stored)


@dataclass(frozen=True)
class Pending:
    """A confirmation to send: its nonce, to whom, for which lists, until when.

    No name: the one typed beside the address is a stranger's text until
    the address's owner confirms (docs/web.md)."""

    nonce: str
    email: str
    lists: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class Confirmed:
    """The outcome of a confirm link's POST."""

    outcome: str  # confirmed | already | expired | invalid | refused
    email: str = ""
    name: str = ""
    uid: str = ""
    lists: tuple[str, ...] = ()
    joined: tuple[str, ...] = ()  # lists that became mailable now (welcome email)


def _hit_key(secret: bytes, value: str) -> str:
    return hmac.new(secret, b"signup\0" + value.encode(), hashlib.sha256).hexdigest()[:64]


def _count_hits(conn: Connection, bucket: str, key: str, since: datetime) -> int:
    query = select(func.count()).where(
        signup_hits.c.bucket == bucket, signup_hits.c.key == key, signup_hits.c.at > since
    )
    return int(conn.scalar(query) or 0)


def self_suppressed(row: subs.SubscriberRow) -> bool:
    reason = row.status_reason or ""
    return row.status == subs.UNSUBSCRIBED and reason.startswith(SELF_REASONS)


def request_signup(
    engine: Engine, settings: Settings, secret: bytes, request: SignupRequest, at: datetime
) -> Pending | None:
    """Count the request, decide whether to send a confirmation, record it."""
    address = normalise_email(request.email)  # SubscriberError: the form says "invalid"
    name = subs.clean_name(request.name)
    limits = settings.signup
    ip_key = _hit_key(secret, request.client)
    address_key = _hit_key(secret, address.key)
    with subs.writing(engine) as conn:
        conn.execute(delete(signup_hits).where(signup_hits.c.at < at - DAY))
        if _count_hits(conn, "ip", ip_key, at - WINDOW) >= limits.per_ip_per_hour:
            raise RateLimited("too many signup requests from this network; try again later")
        conn.execute(signup_hits.insert().values(bucket="ip", key=ip_key, at=at))
        conn.execute(signup_hits.insert().values(bucket="address", key=address_key, at=at))
        if _count_hits(conn, "address", address_key, at - WINDOW) > limits.per_address_per_hour:
            return None  # quietly: the answer must not say the address was asked for
        row = _find_or_create(conn, address.email, address.key, at)
        lists = _to_confirm(conn, row, request.lists)
        if not lists:
            return None
        sent_today = conn.scalar(
            select(func.count()).where(
                confirmations.c.subscriber_id == row.id,
                confirmations.c.created_at > at - DAY,
                confirmations.c.confirmed_at.is_(None),
            )
        )
        if int(sent_today or 0) >= limits.pending_per_address_per_day:
            return None
        expires = at + timedelta(hours=limits.confirm_hours)
        nonce = _insert_confirmation(conn, row.id, lists, name, request.source, at, expires)
        consent.record(
            conn, row.id, "signup", request.source, ", ".join(lists), "confirmation sent", at=at
        )
    return Pending(nonce, row.email, lists, expires)


def _find_or_create(conn: Connection, email: str, key: str, at: datetime) -> subs.SubscriberRow:
    """The subscriber for this address, a new pending one (with no name) if
    it is unknown.

    Insert-or-ignore, then read: two signups of a new address at once (a
    double-click; on PostgreSQL) both find the one row, where read-then-insert
    made the later one fail on the unique key and answer 503, which a known
    address never got (docs/web.md: the same answer for every address).
    """
    values = {
        "email": email,
        "email_key": key,
        "uid": new_uid(),
        "name": "",
        "attributes": {},
        "status": subs.PENDING,
        "status_reason": "awaiting confirmation",
        "status_changed_at": at,
        "created_at": at,
        "updated_at": at,
    }
    # Any unique index: a SQLite file made before schema 6 has one on email too.
    insert_or_ignore(conn, subscribers, values, ("email_key",), any_unique=True)
    row = subs.get_by_email(conn, email)
    assert row is not None
    return row


def _to_confirm(
    conn: Connection, row: subs.SubscriberRow, lists: tuple[str, ...]
) -> tuple[str, ...]:
    """The lists a confirmation asks for; none means no mail.

    Nothing for a suppression the reader cannot lift or for someone already
    on every list; never a list the owner took them off (docs/web.md: no
    email to an owner-suppressed address)."""
    if row.suppressed and not self_suppressed(row):
        return ()
    blocked = _owner_left(conn, row.id, lists)
    wanted = tuple(name for name in lists if name not in blocked)
    if row.status == subs.ACTIVE:
        joined = subs.membership_lists(conn, row.id)
        if all(name in joined and joined[name] is None for name in wanted):
            return ()
    return wanted


def _insert_confirmation(
    conn: Connection,
    sid: int,
    lists: tuple[str, ...],
    name: str,
    source: str,
    at: datetime,
    expires: datetime,
) -> str:
    nonce = new_uid()
    conn.execute(
        confirmations.insert().values(
            nonce=nonce,
            subscriber_id=sid,
            lists=list(lists),
            name=name,
            source=source,
            created_at=at,
            expires_at=expires,
        )
    )
    return nonce


def confirmation_state(engine: Engine, nonce: str, at: datetime) -> str:
    """What a confirm link's GET page should say: open | already | expired | invalid."""
    with subs.reading(engine) as conn:
        row = conn.execute(
            select(confirmations.c.confirmed_at, confirmations.c.expires_at).where(
                confirmations.c.nonce == nonce
            )
        ).first()
    if row is None:
        return "invalid"
    if row.confirmed_at is not None:
        return "already"
    return "expired" if row.expires_at <= at else "open"


def confirm(engine: Engine, settings: Settings, nonce: str, at: datetime) -> Confirmed:
    """Spend a confirmation: once, before it expires; see the module docstring."""
    with subs.writing(engine) as conn:
        row = conn.execute(select(confirmations).where(confirmations.c.nonce == nonce)).first()
        if row is None:
            return Confirmed("invalid")
        if row.confirmed_at is not None:
            return Confirmed("already")
        if row.expires_at <= at:
            return Confirmed("expired")
        spent = conn.execute(
            update(confirmations)
            .where(confirmations.c.id == row.id, confirmations.c.confirmed_at.is_(None))
            .values(confirmed_at=at)
        )
        if not spent.rowcount:  # a concurrent POST got there first
            return Confirmed("already")
        person = subs.get_by_id(conn, row.subscriber_id)
        assert person is not None
        names = tuple(n for n in row.lists if n in settings.lists)
        base = Confirmed("refused", person.email, person.name, person.uid, names)
        if person.suppressed and not self_suppressed(person):
            consent.record(
                conn, person.id, "confirm", row.source, None, "refused: " + person.status, at
            )
            return base
        # The owner took them off a list since the signup: only `resubscribe` lifts that.
        blocked = _owner_left(conn, person.id, names)
        names = tuple(n for n in names if n not in blocked)
        if not names:
            detail = "refused: unsubscribed by the owner"
            consent.record(conn, person.id, "confirm", row.source, ", ".join(blocked), detail, at)
            return base
        joined = _activate(conn, person, names, at, row.source)
        name = _confirmed_name(conn, person, row.name, at)
        consent.record(conn, person.id, "confirm", row.source, ", ".join(names), "by link", at)
        # The page lists what they will get: not a list the owner took them off.
        now_on = subs.membership_lists(conn, person.id)
        names = tuple(n for n in names if n in now_on and now_on[n] is None)
    return Confirmed("confirmed", person.email, name, person.uid, names, joined)


def _confirmed_name(
    conn: Connection, person: subs.SubscriberRow, typed: str | None, at: datetime
) -> str:
    """The subscriber's name once this request is confirmed: the one typed in
    it, for an address that was only pending or had no name.

    Anyone can type anyone's address, so only the request its owner
    confirmed may name them (a bot's text stayed on the pending row, in
    every email's To and greeting).  A subscriber's own name is never
    replaced from the form: the owner changes it (`subscribers add --name`).
    `typed` is None for a confirmation made before schema 10.
    """
    if not typed or (person.status != subs.PENDING and person.name):
        return person.name
    conn.execute(
        update(subscribers).where(subscribers.c.id == person.id).values(name=typed, updated_at=at)
    )
    return typed


def _activate(
    conn: Connection,
    person: subs.SubscriberRow,
    names: tuple[str, ...],
    at: datetime,
    source: str,
) -> tuple[str, ...]:
    """Make the address active on `names`; the lists newly mailable.

    The callers leave out the lists the owner took them off (`_owner_left`);
    `source` is the consent record's, for the lists kept left.
    """
    before = subs.membership_lists(conn, person.id)
    if person.status != subs.ACTIVE:
        if person.status == subs.UNSUBSCRIBED:
            # A reader's own earlier "every list" unsubscribe: lists they
            # had not asked for again stay left, in the consent record too.
            kept = "kept after preferences" if source == "preferences" else "kept after signup"
            for name, left in before.items():
                if left is None and name not in names:
                    subs.unsubscribe(conn, person.id, name, reason=kept, source=source)
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == person.id)
            .values(
                status=subs.ACTIVE,
                status_reason="confirmed",
                status_changed_at=at,
                updated_at=at,
            )
        )
    joined: list[str] = []
    for name in names:
        if name not in before or before[name] is not None:
            if _join(conn, person.id, subs.list_id(conn, name), at):
                joined.append(name)
        elif person.status != subs.ACTIVE:
            joined.append(name)  # a member all along, mailable from now on
    return tuple(joined)


def _join(conn: Connection, subscriber_id: int, lid: int, at: datetime) -> bool:
    """Put the subscriber on the list, or lift their unsubscribe from it;
    False when a concurrent request (the same form sent twice, two confirm
    links opened together) did it first.

    `before` was read earlier in the transaction: on PostgreSQL a plain
    insert would then fail on the unique key (a 503 page) and a plain update
    would count the join twice in the consent record."""
    values = {"list_id": lid, "subscriber_id": subscriber_id, "created_at": at}
    if insert_or_ignore(conn, memberships, values, ("list_id", "subscriber_id")):
        return True
    lifted = conn.execute(
        update(memberships)
        .where(
            memberships.c.list_id == lid,
            memberships.c.subscriber_id == subscriber_id,
            memberships.c.unsubscribed_at.is_not(None),
        )
        .values(unsubscribed_at=None)
    )
    return bool(lifted.rowcount)


def owner_left(engine: Engine, subscriber_id: int, names: tuple[str, ...]) -> set[str]:
    """The lists of `names` the owner (or an import) took this address off: the
    ones the preferences page will not join again (`_owner_left`)."""
    with reading(engine) as conn:
        return _owner_left(conn, subscriber_id, names)


def _owner_left(conn: Connection, subscriber_id: int, names: tuple[str, ...]) -> set[str]:
    """The lists of `names` the owner (or an import) took this address off."""
    left = subs.membership_lists(conn, subscriber_id)
    return {
        name
        for name in names
        if left.get(name) is not None and not _left_by_themselves(conn, subscriber_id, name)
    }


def _left_by_themselves(conn: Connection, subscriber_id: int, list_name: str) -> bool:
    """Whether the reader's last unsubscribe from this list was their own.

    A membership keeps only when it was left; the consent record says who
    did it.  A membership left with no record of it (older stores) is taken
    as the reader's, as before that record existed.
    """
    source = consent.last_unsubscribe_source(conn, subscriber_id, list_name)
    return source is None or source in SELF_SOURCES


# --------------------------------------------------------------------------- preferences


@dataclass(frozen=True)
class Choice:
    name: str
    title: str
    subscribed: bool


def choices(engine: Engine, settings: Settings, subscriber_id: int) -> list[Choice]:
    """Each public list, and whether this subscriber gets it now."""
    person = subs.get_by_id(engine, subscriber_id)
    joined = subs.membership_lists(engine, subscriber_id)
    active = person is not None and person.status == subs.ACTIVE
    return [
        Choice(lst.name, lst.title, active and lst.name in joined and joined[lst.name] is None)
        for lst in settings.public_lists
    ]


@dataclass(frozen=True)
class Saved:
    """What a preferences POST changed, and the ticked lists it could not join."""

    joined: tuple[str, ...]
    left: tuple[str, ...]
    refused: tuple[str, ...]  # the owner took the reader off them


def set_preferences(
    engine: Engine, settings: Settings, subscriber_id: int, wanted: set[str], at: datetime
) -> Saved:
    """Join the public lists in `wanted`, leave the others.

    A suppression the reader cannot lift (the owner's, a bounce, a
    complaint) lets them leave lists but join none; a list the owner took
    them off is not joined either.
    """
    public = [lst.name for lst in settings.public_lists]
    joined: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    left: list[str] = []
    with subs.writing(engine) as conn:
        person = subs.get_by_id(conn, subscriber_id)
        if person is None:
            raise SubscriberError("no such subscriber")
        current = subs.membership_lists(conn, subscriber_id)
        active = person.status == subs.ACTIVE
        for name in public:
            getting = active and name in current and current[name] is None
            # Only what this request changed: the same form sent twice at
            # once leaves the list once (one consent record, one "Left:").
            leaving = getting and name not in wanted
            if leaving and subs.unsubscribe(conn, subscriber_id, name, reason="preferences"):
                consent.record(conn, subscriber_id, "unsubscribe", "preferences", name, at=at)
                left.append(name)
        to_join = tuple(
            n for n in public if n in wanted and not (active and current.get(n, 1) is None)
        )
        if to_join and (active or self_suppressed(person)):
            joined, refused = _join_from_preferences(conn, person, to_join, at)
    return Saved(joined, tuple(left), refused)


def _join_from_preferences(
    conn: Connection, person: subs.SubscriberRow, names: tuple[str, ...], at: datetime
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Join `names`: (joined, refused: the lists the owner took them off)."""
    blocked = _owner_left(conn, person.id, names)
    allowed = tuple(n for n in names if n not in blocked)
    joined = _activate(conn, person, allowed, at, "preferences") if allowed else ()
    for name in joined:
        consent.record(conn, person.id, "subscribe", "preferences", name, at=at)
    return joined, tuple(n for n in names if n in blocked)
