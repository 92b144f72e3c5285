"""What is due: the daemon's decisions, free of any scheduler or clock.

Every function here takes `now` (and whatever history it needs) as an argument,
so the rules can be tested with an injected clock and no waiting:

* A post is due for an ``each`` list when it is published, opted in
  (``newsletter`` is not false), its date ≤ now, its date ≥ ``[schedule]
  since``, it matches the list's filter, and no mailing exists yet for
  (post, list) — invariants 1 and 4 of DESIGN.md.
* The filter: a post that names ``lists: [...]`` goes to exactly those lists;
  otherwise a list with ``categories = [...]`` takes only posts in at least
  one of those categories, and a list with ``tags = [...]`` only posts sharing
  at least one tag (both case-insensitively); a list with neither takes every
  post.
* A digest list collects every matching post since ``since`` that is not yet
  in one of its digests (nor mailed to it on its own), up to the digest's
  cron slot.

`delivery.mailed_pairs` counts a digest's posts as mailed to its list, which is
what keeps them out of the next digest.  The few planning anchors the daemon
keeps in the ``state`` table (first-run `since`, last digest slot) are read and
written at the bottom.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import ListSettings, Settings
from newsletter.errors import ConfigError, Problem, StoreError, database_reason
from newsletter.posts import lookup
from newsletter.posts.collection import Post, PostCollection
from newsletter.store import insert_or_ignore, reading
from newsletter.store.schema import state

DIGEST_PREFIX = "digest:"
SINCE_KEY = "schedule.since"  # first-run anchor when [schedule] since is unset


@dataclass(frozen=True)
class DueSend:
    """One (post, list) pair to plan as a mailing now."""

    post: Post
    list_name: str


@dataclass(frozen=True)
class Plan:
    """The outcome of looking at every post against every ``each`` list."""

    due: tuple[DueSend, ...]
    future: tuple[Post, ...]  # unsent, would match a list: one-off job at its date
    before_since: tuple[Post, ...]  # would be due but for [schedule] since
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class DigestPlan:
    """One digest to plan: its mailing's post id and the posts it lists."""

    list_name: str
    slot: datetime  # the cron slot it belongs to (UTC); names the mailing
    posts: tuple[Post, ...]

    @property
    def mailing_post_id(self) -> str:
        return digest_post_id(self.list_name, self.slot)

    @property
    def post_ids(self) -> tuple[str, ...]:
        return tuple(p.post_id for p in self.posts)


@dataclass(frozen=True)
class UpcomingSend:
    """A send the daemon will make unless something changes (for `status`)."""

    post_id: str
    title: str
    list_name: str
    at: datetime  # when it goes (UTC); a due-but-unplanned send says `now`
    kind: Literal["post", "digest"] = "post"
    post_ids: tuple[str, ...] = ()  # a digest's contents


# --------------------------------------------------------------------------- filters


def _folded(values: Iterable[str]) -> set[str]:
    return {v.casefold() for v in values}


def list_takes(post: Post, mailing_list: ListSettings) -> bool:
    """Whether the list's filter (or the post's own `lists:`) lets the post in."""
    if not post.newsletter:
        return False
    if post.lists is not None:
        return mailing_list.name in post.lists
    if mailing_list.categories and not _folded(post.categories) & _folded(mailing_list.categories):
        return False
    if not mailing_list.tags:
        return True
    return bool(_folded(post.tags) & _folded(mailing_list.tags))


def is_candidate(post: Post) -> bool:
    """Published and opted in: the only posts the daemon ever looks at."""
    return post.published and post.newsletter


def unknown_lists(post: Post, known: Iterable[str]) -> tuple[str, ...]:
    names = set(known)
    return tuple(name for name in post.lists or () if name not in names)


def unknown_list_problems(posts: Iterable[Post], lists: Iterable[str]) -> list[Problem]:
    """A warning for each list a post's `lists:` names that the configuration
    lacks (a typo sends the post to none): the daemon's, `check`'s and `posts`'."""
    known = set(lists)
    return [
        Problem(f"names unknown list {name!r}", post.path, None, "warning", "lists")
        for post in posts
        if is_candidate(post)
        for name in unknown_lists(post, known)
    ]


# --------------------------------------------------------------------------- each lists


def plan_due(
    posts: Iterable[Post],
    lists: Mapping[str, ListSettings],
    since: datetime,
    now: datetime,
    mailed: set[tuple[str, str]],
) -> Plan:
    """Which (post, list) pairs to plan now, which to wake up for, which `since` hides."""
    each = [lst for lst in lists.values() if lst.mode == "each"]
    due: list[DueSend] = []
    future: list[Post] = []
    before: list[Post] = []
    posts = tuple(posts)
    problems = unknown_list_problems(posts, lists)
    # Which of them a mailing sent would be unknowable (their error says so).
    shared = lookup.shared_ids(posts)
    for post in posts:
        if not is_candidate(post) or post.post_id in shared:
            continue
        targets = [
            lst.name
            for lst in each
            if list_takes(post, lst) and (post.post_id, lst.name) not in mailed
        ]
        if not targets:
            continue
        if post.date < since:
            before.append(post)
        elif post.date > now:
            future.append(post)
        else:
            due.extend(DueSend(post, name) for name in targets)
    return Plan(tuple(due), tuple(future), tuple(before), tuple(problems))


# --------------------------------------------------------------------------- digests


def digest_subject(title: str, count: int) -> str:
    """A digest's subject: the list's title and how many posts it carries."""
    return f"{title}: {count} new post{'s' if count != 1 else ''}"


def digest_post_id(list_name: str, slot: datetime) -> str:
    """`digest:<list>:<ISO slot, UTC>`: the same slot gives the same id, so two
    daemons (or a restart) firing one cron slot plan one mailing."""
    return f"{DIGEST_PREFIX}{list_name}:{slot.astimezone(UTC).isoformat()}"


def digest_posts(
    posts: Iterable[Post],
    mailing_list: ListSettings,
    since: datetime,
    until: datetime,
    excluded: set[str],
) -> tuple[Post, ...]:
    """The posts a digest at `until` lists, oldest first.

    `excluded` holds the post ids already in an earlier digest of this list or
    mailed to it on their own; re-dating or retitling a post does not change
    its id, so it is never listed twice.
    """
    posts = tuple(posts)
    shared = lookup.shared_ids(posts)  # listed by id: the one it names is unknowable
    chosen = [
        post
        for post in posts
        if is_candidate(post)
        and post.post_id not in shared
        and list_takes(post, mailing_list)
        and since <= post.date <= until
        and post.post_id not in excluded
    ]
    return tuple(sorted(chosen, key=lambda p: (p.date, p.post_id)))


def cron_zone(mailing_list: ListSettings, settings: Settings) -> ZoneInfo:
    return ZoneInfo(mailing_list.timezone or settings.site.timezone)


def cron_trigger(mailing_list: ListSettings, zone: ZoneInfo) -> object:
    """The list's cron as crontab reads it (`cronslots`), over APScheduler's
    calculator: the daemon's digest job's trigger, and the slots here."""
    from newsletter.daemon.cronslots import CronSlots

    try:
        return CronSlots(mailing_list.cron or "", zone)
    except ValueError as exc:
        raise ConfigError(
            f"invalid cron {mailing_list.cron!r}: {exc}", key=f"lists.{mailing_list.name}.cron"
        ) from exc


def next_digest_time(
    mailing_list: ListSettings, zone: ZoneInfo, after: datetime
) -> datetime | None:
    """The first cron slot strictly after `after` (UTC).

    As cron(8) does, a cron with a fixed minute and hour fires once when the
    clocks go back: the second pass through the repeated hour (`fold` 1) is
    no slot of its own, or a daily digest would go twice that night.  A
    wildcard hour or minute (`*`, `*/15`) fires in both passes, since each is
    an hour of its own.  A slot in the hour skipped in spring moves past the
    gap by as much as it was into it (02:30 in a 02:00-03:00 gap fires at
    03:30), so it is never lost, even where the gap swallows midnight.
    """
    trigger = cron_trigger(mailing_list, zone)
    fixed = not any(f.startswith("*") for f in (mailing_list.cron or "").split()[:2])
    start = after + timedelta(microseconds=1)
    while True:
        nxt = trigger.get_next_fire_time(None, start)  # type: ignore[attr-defined]
        if nxt is None:
            return None
        slot: datetime = nxt.astimezone(UTC)
        if not (fixed and slot.astimezone(zone).fold):
            return slot
        start = slot + timedelta(microseconds=1)


def digest_slot(
    mailing_list: ListSettings, zone: ZoneInfo, anchor: datetime, now: datetime
) -> datetime | None:
    """The latest cron slot in (anchor, now], or None when none has passed.

    `anchor` is the last digest's slot (or when the daemon first saw the list),
    so a daemon that was down across a slot still sends one digest, not one per
    missed slot.
    """
    slot = next_digest_time(mailing_list, zone, anchor)
    if slot is None or slot > now:
        return None
    while True:
        later = next_digest_time(mailing_list, zone, slot)
        if later is None or later > now:
            return slot
        slot = later


# --------------------------------------------------------------------------- status


def upcoming_sends(
    settings: Settings,
    posts: PostCollection | Iterable[Post],
    engine: Engine,
    now: datetime,
    problems: list[ConfigError] | None = None,
) -> list[UpcomingSend]:
    """Every send the daemon will make (post × list × time), soonest first.

    Posts due but not yet planned (the next scan takes them) carry `now`;
    future posts carry their date; digest lists carry their next slot with the
    posts that would be in it so far.  A digest list with a bad `cron` is left
    out (the daemon disables it alone) and its error added to `problems`;
    without that list the error is raised.
    """
    from newsletter.delivery.mailings import mailed_pairs

    items = tuple(posts.posts if isinstance(posts, PostCollection) else posts)
    mailed = mailed_pairs(engine)
    since = effective_since(engine, settings, now, record=False)
    plan = plan_due(items, settings.lists, since, now, mailed)
    result = [UpcomingSend(d.post.post_id, d.post.title, d.list_name, now) for d in plan.due]
    for post in plan.future:
        for lst in settings.lists.values():
            wanted = lst.mode == "each" and list_takes(post, lst)
            if wanted and (post.post_id, lst.name) not in mailed:
                result.append(UpcomingSend(post.post_id, post.title, lst.name, post.date))
    result.extend(_postponed(engine, items))
    for lst in settings.lists.values():
        if lst.mode != "digest":
            continue
        try:
            result.extend(_upcoming_digest(settings, lst, items, engine, since, now, mailed))
        except ConfigError as exc:
            if problems is None:
                raise
            problems.append(exc)
    return sorted(result, key=lambda u: (u.at, u.list_name, u.post_id))


def _postponed(engine: Engine, items: tuple[Post, ...]) -> list[UpcomingSend]:
    """The rest of each mailing postponed with its re-dated post (`withdrawal`)."""
    from newsletter.store import halts

    titles = {p.post_id: p.title for p in items}
    try:
        with reading(engine) as conn:
            watched = halts.watched(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read mailings: {database_reason(exc)}") from exc
    return [
        UpcomingSend(m.post_id, titles.get(m.post_id, m.post_id), m.list_name, m.paused_until)
        for m in watched
        if m.state == halts.POSTPONED and m.paused_until is not None
    ]


def _upcoming_digest(
    settings: Settings,
    lst: ListSettings,
    items: tuple[Post, ...],
    engine: Engine,
    since: datetime,
    now: datetime,
    mailed: set[tuple[str, str]],
) -> list[UpcomingSend]:
    at = next_digest_time(lst, cron_zone(lst, settings), now)
    if at is None:
        return []
    excluded = {p for p, name in mailed if name == lst.name}
    chosen = digest_posts(items, lst, since, at, excluded)
    if not chosen:
        return []
    title = f"{lst.title}: {len(chosen)} post{'s' if len(chosen) != 1 else ''}"
    ids = tuple(p.post_id for p in chosen)
    return [UpcomingSend(digest_post_id(lst.name, at), title, lst.name, at, "digest", ids)]


# --------------------------------------------------------------------------- store reads


def read_state_time(engine: Engine, key: str) -> datetime | None:
    try:
        with reading(engine) as conn:
            value = conn.scalar(select(state.c.value).where(state.c.key == key))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read state {key!r}: {database_reason(exc)}") from exc
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None  # a damaged value is treated as missing, never fatal


def write_state_time(
    engine: Engine, key: str, value: datetime, *, only_if_missing: bool = False
) -> datetime:
    """Store an aware time under `key`; returns the stored value (the existing
    one when `only_if_missing` and another process got there first)."""
    try:
        with engine.begin() as conn:
            current = conn.scalar(select(state.c.value).where(state.c.key == key))
            if current is not None and only_if_missing:
                return datetime.fromisoformat(current)
            stamp = value.astimezone(UTC)
            row = {"key": key, "value": stamp.isoformat(), "updated_at": stamp}
            if current is None and insert_or_ignore(conn, state, row, ("key",)):
                return stamp
            if only_if_missing:  # another process wrote it first: theirs stands
                theirs = conn.execute(select(state.c.value).where(state.c.key == key)).scalar_one()
                return datetime.fromisoformat(theirs)
            conn.execute(
                state.update()
                .where(state.c.key == key)
                .values(value=stamp.isoformat(), updated_at=datetime.now(UTC))
            )
            return stamp
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write state {key!r}: {database_reason(exc)}") from exc


def effective_since(
    engine: Engine, settings: Settings, now: datetime, *, record: bool = True
) -> datetime:
    """`[schedule] since`, else the first run's time (kept in the state table),
    so that a first run on an old blog never mails its archive (invariant 4)."""
    if settings.schedule.since is not None:
        return settings.schedule.since
    stored = read_state_time(engine, SINCE_KEY)
    if stored is not None:
        return stored
    if not record:
        return now
    return write_state_time(engine, SINCE_KEY, now, only_if_missing=True)


def digest_anchor_key(list_name: str) -> str:
    return f"digest.{list_name}.last"
