"""Read the bounce mailbox (Maildir or IMAP over TLS) and act on what it holds.

Each message is parsed (`newsletter.delivery.bounces.parse_report`), recorded in
``bounce_events`` and then moved out of the way: into the
``processed_folder`` when understood, into the ``unparsed_folder`` (kept,
never deleted, and reported) when not.  Recording comes first and is
idempotent (unique per report and address), so a crash between the two
steps only means the report is read again and changes nothing.

Effects (invariant 3: none of them is undone by an import or a sync):
hard bounce -> ``bounced``; ``[bounces] soft_limit`` soft bounces within
``soft_days`` (dated by the reports themselves when plausible) -> ``bounced``;
complaint -> ``complained`` on every list.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import logging
import os
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from newsletter.audience import members as subs
from newsletter.config import Settings, utcnow
from newsletter.delivery.bounces import (
    BounceEvent,
    ParsedReport,
    UnparseableReport,
    parse_report,
    verify_verp,
    verp_tokens_in,
)
from newsletter.delivery.messageids import delivery_of
from newsletter.email.tokens import load_secret, verify_token
from newsletter.errors import ConfigError, DeliveryError, Problem
from newsletter.store.schema import bounce_events, deliveries, lists, mailings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BounceRun:
    """What one read of the mailbox found."""

    read: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    delays: int = 0  # delay warnings: read and filed, no effect
    suppressed: tuple[str, ...] = ()  # addresses newly suppressed
    unknown: tuple[str, ...] = ()  # reports naming nobody we mail
    unparsed: tuple[Problem, ...] = ()
    unverified: tuple[str, ...] = ()  # reports whose VERP token fails its check: no effect


@dataclass
class _Tally:
    """BounceRun's counts while the mailbox is read."""

    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    suppressed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unparsed: list[Problem] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    def result(self) -> BounceRun:
        k = self.kinds
        return BounceRun(
            self.read, k["hard"], k["soft"], k["complaint"], k["delay"],
            tuple(self.suppressed), tuple(self.unknown), tuple(self.unparsed),
            tuple(self.unverified),
        )  # fmt: skip


class Mailbox(Protocol):
    def messages(self) -> Iterator[tuple[str, bytes]]: ...
    def processed(self, ref: str) -> None: ...
    def unparsed(self, ref: str) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- Maildir


class MaildirBox:
    """A Maildir; finished messages move to Maildir++ sub-folders (``.name``)."""

    def __init__(self, root: Path, processed: str, unparsed: str) -> None:
        if not (root / "new").is_dir() or not (root / "cur").is_dir():
            raise ConfigError("not a Maildir (no new/ and cur/)", path=root, key="bounces.maildir")
        self.root = root
        self.targets = {"processed": root / f".{processed}", "unparsed": root / f".{unparsed}"}

    def messages(self) -> Iterator[tuple[str, bytes]]:
        for sub in ("new", "cur"):
            for path in sorted((self.root / sub).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue  # filed meanwhile by another reader (the daemon, the command)
                    yield str(path), data

    def _move(self, ref: str, target: str) -> None:
        folder = self.targets[target]
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        path = Path(ref)
        name = path.name if ":2," in path.name else f"{path.name}:2,S"  # read: 'S'een
        # Same file system: atomic.  Gone already: another reader read it too
        # and filed it first (its report is recorded once either way).
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, folder / "cur" / name)

    def processed(self, ref: str) -> None:
        self._move(ref, "processed")

    def unparsed(self, ref: str) -> None:
        self._move(ref, "unparsed")

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- IMAP


class ImapBox:
    """An IMAP mailbox over TLS (port 993); messages are MOVEd (RFC 6851) or,
    without MOVE, copied, flagged \\Deleted and expunged."""

    def __init__(self, settings: Settings) -> None:
        b = self.settings = settings.bounces
        context = ssl.create_default_context(cafile=str(b.ca_file) if b.ca_file else None)
        self.folders = {"processed": b.processed_folder, "unparsed": b.unparsed_folder}
        try:
            self.imap = imaplib.IMAP4_SSL(str(b.imap_host), b.port, ssl_context=context, timeout=30)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise DeliveryError(
                f"cannot reach IMAP server {b.imap_host}:{b.port}: {exc}", key="bounces.imap_host"
            ) from exc
        try:
            login(self.imap, str(b.username), b.password() or "")
            self._ok(self.imap.select(mailbox_name(b.mailbox)), f"select {b.mailbox}")
            # imaplib keeps the capabilities announced before login, which
            # servers may extend after it (dovecot adds MOVE there).
            reply = self._ok(self.imap.capability(), "capability")
            self.capabilities = set(b" ".join(reply).decode().upper().split())
        except imaplib.IMAP4.error as exc:
            self.close()
            raise DeliveryError(f"IMAP login or select failed: {exc}", key="bounces") from exc
        except DeliveryError:
            self.close()
            raise
        self.created: set[str] = set()

    @staticmethod
    def _ok(reply: tuple[str, list[Any]], what: str) -> list[Any]:
        status, data = reply
        if status != "OK":
            raise DeliveryError(f"IMAP {what} failed: {data!r}", key="bounces")
        return data

    @contextlib.contextmanager
    def _talking(self) -> Iterator[None]:
        """A connection lost in the middle of the session is one clear error.

        imaplib raises `IMAP4.abort` (or a bare OSError) then; what was read
        and filed before it stays done, the rest waits for the next read.
        """
        try:
            yield
        except (OSError, imaplib.IMAP4.error) as exc:
            where = f"{self.settings.imap_host}:{self.settings.port}"
            raise DeliveryError(
                f"IMAP connection to {where} lost: {exc}", key="bounces.imap_host"
            ) from exc

    def messages(self) -> Iterator[tuple[str, bytes]]:
        with self._talking():
            data = self._ok(self.imap.uid("SEARCH", "ALL"), "search")
        uids = data[0].decode().split() if data and isinstance(data[0], bytes) else []
        for uid in uids:
            with self._talking():
                fetched = self._ok(self.imap.uid("FETCH", uid, "(BODY.PEEK[])"), "fetch")
            body = next((p[1] for p in fetched if isinstance(p, tuple)), None)
            if isinstance(body, bytes):
                yield uid, body

    def _move(self, uid: str, target: str) -> None:
        with self._talking():
            self._file(uid, target)

    def _file(self, uid: str, target: str) -> None:
        folder = mailbox_name(self.folders[target])
        if folder not in self.created:
            self.imap.create(folder)  # NO when it exists: fine
            self.created.add(folder)
        if "MOVE" in self.capabilities:
            self._ok(self.imap.uid("MOVE", uid, folder), "move")
            return
        self._ok(self.imap.uid("COPY", uid, folder), "copy")
        self._ok(self.imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "store")
        self._ok(self.imap.expunge(), "expunge")

    def processed(self, ref: str) -> None:
        self._move(ref, "processed")

    def unparsed(self, ref: str) -> None:
        self._move(ref, "unparsed")

    def close(self) -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            self.imap.logout()


def login(imap: imaplib.IMAP4, username: str, password: str) -> None:
    """LOGIN, whose arguments imaplib sends as ASCII (a password with an
    umlaut was a UnicodeEncodeError traceback in every daemon pass); with
    anything else, AUTHENTICATE PLAIN, which carries UTF-8 (RFC 4616)."""
    if (username + password).isascii():
        imap.login(username, password)
        return
    credentials = f"\0{username}\0{password}".encode()
    imap.authenticate("PLAIN", lambda _challenge: credentials)


def mailbox_name(name: str) -> str:
    """A mailbox name as IMAP writes it: modified UTF-7 (RFC 3501 5.1.3) for
    what is not printable ASCII, then quoted."""
    return _quote(_modified_utf7(name))


def _modified_utf7(name: str) -> str:
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def open_mailbox(settings: Settings) -> Mailbox:
    b = settings.bounces
    if b.maildir is not None:
        return MaildirBox(b.maildir, b.processed_folder, b.unparsed_folder)
    if b.imap_host:
        return ImapBox(settings)
    raise ConfigError("set [bounces] maildir or imap_host to read bounces", key="bounces")


# --------------------------------------------------------------------------- processing


def process_bounces(
    engine: Engine,
    settings: Settings,
    mailbox: Mailbox | None = None,
    *,
    at: datetime | None = None,
) -> BounceRun:
    """Read every message of the bounce mailbox once; see the module docstring."""
    own = mailbox is None
    box = mailbox or open_mailbox(settings)
    run = _Tally()
    try:
        for ref, data in box.messages():
            run.read += 1
            try:
                report = parse_report(data)
            except UnparseableReport as exc:
                box.unparsed(ref)
                run.unparsed.append(Problem(f"{exc.message}; kept in {_where(settings)}", key=ref))
                continue
            _record_report(engine, settings, report, run, at or utcnow())
            box.processed(ref)
    finally:
        if own:
            box.close()
    return run.result()


def _where(settings: Settings) -> str:
    return settings.bounces.unparsed_folder


# How old a report's own date may be and still be believed: older is a
# sender's clock gone wrong (1970, 2000), not a mailbox left unread.
_OLDEST_REPORT = timedelta(days=365)


def _happened_at(report: ParsedReport, read_at: datetime) -> datetime:
    """When the report's event happened: its own date when plausible (a
    mailbox read after weeks holds weeks of reports, and the soft-bounce
    window is about when they bounced), else when it was read."""
    date = report.date
    if date is None or date > read_at or date < read_at - _OLDEST_REPORT:
        return read_at
    return date


def _record_report(
    engine: Engine, settings: Settings, report: ParsedReport, run: _Tally, read_at: datetime
) -> None:
    if not report.events:
        run.kinds["delay"] += 1
    at = _happened_at(report, read_at)
    secret = load_secret(settings)
    for event in report.events:
        genuine, failed = _verp_tokens(settings, secret, event)
        if failed and not genuine:
            # Somebody made it up, or signed it with a secret we no longer
            # have: either way it must not suppress the address it names.
            run.unverified.append(
                f"{event.email or '(no address)'}: VERP token {failed[0]} fails its check, "
                f"not acted upon (report {report.source})"
            )
            continue
        target = _identify(engine, secret, event, genuine)
        if target is None:
            run.unknown.append(event.email or "(no address)")
            continue
        if not _insert(engine, report.source, event, target, at):
            continue  # read before (a crash between recording and moving)
        run.kinds[event.kind] += 1
        if _suppress(engine, settings, event, target, at):
            run.suppressed.append(target.email)


@dataclass(frozen=True)
class _Target:
    subscriber_id: int
    email: str
    mailing_id: int | None = None
    delivery_id: int | None = None


def _verp_tokens(
    settings: Settings, secret: bytes, event: BounceEvent
) -> tuple[list[int], list[str]]:
    """The delivery ids of the report's genuine VERP tokens, and the tokens
    that fail their check."""
    address = settings.bounces.address
    genuine: list[int] = []
    failed: list[str] = []
    for token in verp_tokens_in(event.verp_text or "", address) if address else []:
        delivery_id = verify_verp(secret, token)
        if delivery_id is None:
            failed.append(token)
        else:
            genuine.append(delivery_id)
    return genuine, failed


def _identify(
    engine: Engine, secret: bytes, event: BounceEvent, verp_ids: list[int]
) -> _Target | None:
    """Who a report is about: our VERP token first (it cannot be forged), then
    the returned message's Message-ID (signed, `delivery.messageids`, or one
    recorded by an older version), its unsubscribe token, the address.  A
    report with only tokens that fail their check never gets here."""
    with engine.connect() as conn:
        for delivery_id in verp_ids:
            row = conn.execute(
                select(deliveries.c.subscriber_id, deliveries.c.email, deliveries.c.mailing_id)
                .where(deliveries.c.id == delivery_id)
            ).first()  # fmt: skip
            if row is not None:
                return _Target(row.subscriber_id, row.email, row.mailing_id, delivery_id)
        named = delivery_of(secret, event.message_id) if event.message_id else None
        if named is not None:
            mailing_id, delivery_id = named
            held = conn.execute(
                select(deliveries.c.subscriber_id, deliveries.c.email)
                .where(deliveries.c.id == delivery_id)
            ).first()  # fmt: skip
            if held is not None:  # the mailing it went out in (the row may have moved since)
                return _Target(held.subscriber_id, held.email, mailing_id, delivery_id)
        elif event.message_id:  # any other: one an older version recorded with its row
            found = conn.execute(
                select(deliveries.c.id, deliveries.c.subscriber_id, deliveries.c.email,
                       deliveries.c.mailing_id)
                .where(deliveries.c.message_id == event.message_id)
            ).first()  # fmt: skip
            if found is not None:
                return _Target(found.subscriber_id, found.email, found.mailing_id, found.id)
    if event.unsubscribe_token:
        claim = verify_token(secret, event.unsubscribe_token)
        member = subs.get_by_uid(engine, claim.subscriber_uid) if claim else None
        if member is not None:
            return _Target(member.id, member.email)
    if event.email:
        member = subs.get_by_email(engine, event.email)
        if member is not None:
            return _Target(member.id, member.email)
    return None


def _insert(engine: Engine, source: str, event: BounceEvent, target: _Target, at: datetime) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(
                bounce_events.insert().values(
                    source=source, email=target.email, subscriber_id=target.subscriber_id,
                    mailing_id=target.mailing_id, delivery_id=target.delivery_id,
                    kind=event.kind, status=event.status, diagnostic=event.diagnostic[:1000],
                    received_at=at,
                )
            )  # fmt: skip
    except IntegrityError:
        return False
    return True


def _suppress(
    engine: Engine, settings: Settings, event: BounceEvent, target: _Target, at: datetime
) -> bool:
    before = subs.get_by_id(engine, target.subscriber_id)
    if event.kind == "complaint":
        subs.mark_complained(engine, target.subscriber_id, reason=f"complaint ({event.diagnostic})")
    elif event.kind == "hard":
        subs.mark_bounced(
            engine, target.subscriber_id, reason=f"bounce {event.status}: {event.diagnostic[:200]}"
        )
    else:
        b = settings.bounces
        count = _soft_in_window(engine, target.subscriber_id, at, timedelta(days=b.soft_days))
        if count < b.soft_limit:
            return False
        subs.mark_bounced(
            engine, target.subscriber_id,
            reason=f"{count} soft bounces in {b.soft_days} days (last {event.status})",
        )  # fmt: skip
    after = subs.get_by_id(engine, target.subscriber_id)
    return before is not None and after is not None and before.status != after.status


def _soft_in_window(engine: Engine, subscriber_id: int, at: datetime, span: timedelta) -> int:
    """The most soft bounces of the subscriber within one `span` that holds
    `at`.  Reports are dated by when they happened, and a mailbox need not
    hold them in that order: the window may end after `at` too."""
    with engine.connect() as conn:
        times = list(
            conn.scalars(
                select(bounce_events.c.received_at).where(
                    bounce_events.c.subscriber_id == subscriber_id,
                    bounce_events.c.kind == "soft",
                    bounce_events.c.received_at > at - span,
                    bounce_events.c.received_at < at + span,
                )
            )
        )
    starts = [t for t in times if t <= at]  # each window opens with one of them
    return max((sum(1 for t in times if s <= t < s + span) for s in starts), default=0)


# --------------------------------------------------------------------------- counts


def bounce_counts_by_mailing(engine: Engine) -> dict[int, dict[str, int]]:
    """{mailing id: {"hard": n, "soft": n, "complaint": n}} for `status`."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(bounce_events.c.mailing_id, bounce_events.c.kind, func.count())
            .where(bounce_events.c.mailing_id.is_not(None))
            .group_by(bounce_events.c.mailing_id, bounce_events.c.kind)
        )  # fmt: skip
        result: dict[int, dict[str, int]] = {}
        for mailing_id, kind, count in rows:
            result.setdefault(mailing_id, {})[kind] = count
    return result


def bounce_counts_by_list(engine: Engine) -> dict[str, dict[str, int]]:
    """{list name: {"hard": n, ...}} over the mailings each report could be tied to."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(lists.c.name, bounce_events.c.kind, func.count())
            .select_from(
                bounce_events.join(mailings, mailings.c.id == bounce_events.c.mailing_id)
                .join(lists, lists.c.id == mailings.c.list_id)
            )
            .group_by(lists.c.name, bounce_events.c.kind)
        )  # fmt: skip
        result: dict[str, dict[str, int]] = {}
        for name, kind, count in rows:
            result.setdefault(name, {})[kind] = count
    return result
