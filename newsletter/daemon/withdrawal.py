"""A post pulled while the daemon mails it: the rest waits (invariant 4).

Before delivering, each pass looks at every unfinished mailing the daemon
planned (`store.halts.watched`) against the posts as they are now, and a pass
that is sending looks again every few seconds (`MailingPass.check_halt`):

* the post unpublished (``published: false``, ``draft: true``, a ``_drafts``
  folder), opted out (``newsletter: false``) or gone (deleted, or its id
  changed): the mailing is ``withdrawn``;
* the post re-dated into the future: ``postponed`` until that date;
* the post may go again (published once more, present again, its date come):
  the mailing resumes and the rest get it; nobody who got it gets it twice
  (invariant 1), exactly as if each recipient's copy waited for the post.

A digest lists several posts: when one of them is pulled, the digest is
withdrawn and its rest get a new digest of the posts that may still go
(`store.replans`); when every one is pulled, it is withdrawn until one may
go again.  Its first readers had the pulled post, so no later digest of the
list carries it.

A file that fails to load is no verdict (an editor's half-saved file must
not stop a mailing): the pass reports it, as before.  A mailing the owner
sent with `newsletter send` is never halted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.daemon.planning import digest_subject
from newsletter.errors import StoreError, database_reason
from newsletter.posts import lookup
from newsletter.posts.collection import PostCollection
from newsletter.store import halts, reading, replans
from newsletter.store import mailings as q

log = logging.getLogger("newsletter.daemon")


@dataclass(frozen=True)
class Verdict:
    """What the post allows now: `state` None (it may go), WITHDRAWN or POSTPONED."""

    state: str | None
    reason: str = ""
    until: datetime | None = None  # POSTPONED: the post's new date
    then: str = ""  # when the rest goes, for the note and the log


MAY_GO = Verdict(None)


@dataclass(frozen=True)
class Change:
    """A halt or resume this process made (`run --once` prints it)."""

    mailing_id: int
    post_id: str
    list_name: str
    change: str  # WITHDRAWN, POSTPONED or "resumed"
    why: str
    sent: int
    not_sent: int


def verdict(posts: PostCollection, post_id: str, at: datetime) -> Verdict | None:
    """Whether the daemon may send this post at `at`; None when it cannot tell."""
    post = posts.with_id(post_id, whole=False)
    if post is None:
        if any(p.post_id == post_id for p in posts.posts):
            return None  # several posts claim the id: the pass reports that
        if lookup.failed(posts.problems, post_id, posts.roots) is not None:
            return None  # its file fails to load: reported, not a withdrawal
        gone = "its post is gone (deleted, or its id changed)"
        return Verdict(halts.WITHDRAWN, gone, then="if it comes back")
    if not post.published:
        why = "its post is unpublished (published: false, draft: true or a _drafts folder)"
        return Verdict(halts.WITHDRAWN, why, then="if it is published again")
    if not post.newsletter:
        why = "its post opted out (newsletter: false)"
        return Verdict(halts.WITHDRAWN, why, then="if it opts in again")
    if post.date > at:
        when = post.date.isoformat()
        return Verdict(halts.POSTPONED, f"its post is now dated {when}", post.date, f"at {when}")
    return MAY_GO


def review(
    engine: Engine, posts: PostCollection, at: datetime, mailing_id: int | None = None
) -> list[Change]:
    """Halt or resume the daemon's unfinished post mailings (one, or all) as
    their posts now allow; each change is logged once, by the process that
    made it, and returned."""
    changes: list[Change] = []
    try:
        if mailing_id is None:
            replans.sweep(engine)  # rows a stopped sender gave back to a re-planned digest
        with reading(engine) as conn:
            watched = halts.watched(conn, mailing_id)
            digests = replans.watched_digests(conn, mailing_id)
        for mailing in watched:
            found = verdict(posts, mailing.post_id, at)
            change = _apply(engine, mailing, found) if found is not None else None
            if change is not None:
                changes.append(change)
        for digest in digests:
            change = _review_digest(engine, posts, at, digest)
            if change is not None:
                changes.append(change)
        return changes
    except SQLAlchemyError as exc:
        reason = database_reason(exc)
        raise StoreError(f"cannot review the mailings of pulled posts: {reason}") from exc


def _apply(engine: Engine, mailing: halts.Watched, found: Verdict) -> Change | None:
    if found.state is None:
        if mailing.state in halts.HALTED and halts.resume(engine, mailing.id, mailing.state):
            return _log(engine, mailing, "resumed", "its post may go again")
        return None
    note = f"{found.state}: {found.reason}; the rest get it {found.then}"
    if halts.halt(engine, mailing.id, found.state, found.until, note) is not None:
        return _log(engine, mailing, found.state, f"{found.reason}; the rest get it {found.then}")
    return None


def _review_digest(
    engine: Engine, posts: PostCollection, at: datetime, digest: replans.WatchedDigest
) -> Change | None:
    """A digest whose posts may all go goes on (or resumes); one with a post
    pulled is re-planned without it for its rest, or withdrawn when none is left."""
    found = {pid: verdict(posts, pid, at) for pid in digest.post_ids}
    if any(v is None for v in found.values()):
        return None  # a post file that fails to load: no verdict (reported)
    pulled = {pid: v for pid, v in found.items() if v is not None and v.state is not None}
    if not pulled:
        if digest.state in halts.HALTED and halts.resume(engine, digest.id, digest.state):
            return _log(engine, digest, "resumed", "its posts may go again")
        return None
    # "its post x is unpublished (…)", one clause per pulled post
    why = "; ".join(v.reason.replace("its post", f"its post {pid}", 1) for pid, v in pulled.items())
    keep = tuple(pid for pid in digest.post_ids if pid not in pulled)
    if not keep:
        then = "when one of its posts may go again"
        note = f"{halts.WITHDRAWN}: {why}; the rest get it {then}"
        if halts.halt(engine, digest.id, halts.WITHDRAWN, None, note) is None:
            return None
        return _log(engine, digest, halts.WITHDRAWN, f"{why}; the rest get it {then}")
    escaped = why.replace("{", "{{").replace("}", "}}")
    note = f"{halts.WITHDRAWN}: {escaped}; the rest get the digest without it: mailing {{new}}"
    subject = digest_subject(digest.list_title, len(keep))
    new = replans.replan(engine, digest, keep, subject, note)
    if new is None:
        return None
    why = f"{why}; the rest get the digest without it: mailing {new}"
    return _log(engine, digest, halts.WITHDRAWN, why, rest_in=new)


def _log(
    engine: Engine,
    mailing: halts.Watched | replans.WatchedDigest,
    what: str,
    why: str,
    rest_in: int | None = None,
) -> Change:
    """One line with the post, the list and who got it and who not (yet);
    `rest_in`: the mailing that holds the rest now (a re-planned digest's)."""
    with reading(engine) as conn:
        counts = q.counts(conn, mailing.id).get(mailing.id, {})
        if rest_in is not None:
            rest = q.counts(conn, rest_in).get(rest_in, {})
            counts = {**rest, "sent": counts.get("sent", 0)}
    sent = counts.get("sent", 0)
    left = sum(counts.get(s, 0) for s in q.OPEN_STATUSES)
    log.info(
        "mailing %d %s: %s -> %s: %s; sent %d, not sent %d",
        mailing.id,
        what,
        mailing.post_id,
        mailing.list_name,
        why,
        sent,
        left,
        extra={
            "event": f"mailing-{what}",
            "mailing_id": mailing.id,
            "post_id": mailing.post_id,
            "list": mailing.list_name,
            "sent": sent,
            "not_sent": left,
        },
    )
    return Change(mailing.id, mailing.post_id, mailing.list_name, what, why, sent, left)
