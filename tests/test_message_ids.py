"""Message-IDs that name their delivery (delivery/messageids.py).

A delivery's Message-ID is `<mailing.delivery.tag@domain>`, signed, and is not
written to the ledger (one index fewer moved per recorded outcome).  Over real
SMTP (aiosmtpd on 127.0.0.1), on SQLite and PostgreSQL: every delivery has its
own, a retry keeps it, a bounce quoting it finds the delivery, a forged one
finds nobody, and the Message-IDs older versions stored still work.
"""

from __future__ import annotations

import hashlib
import re
from email import message_from_bytes, policy
from pathlib import Path
from string import Template

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import Engine, select, update
from test_delivery_smtp import POST, populate, site_settings
from test_store_indexes import GMAIL_DSN, OneReport

from newsletter.audience import members as subs
from newsletter.config import Settings
from newsletter.delivery import messageids
from newsletter.delivery.bouncebox import process_bounces
from newsletter.delivery.mailings import deliver_mailing, plan_mailing
from newsletter.delivery.messageids import delivery_of, message_id_for
from newsletter.posts.collection import load_posts
from newsletter.store import mailings as q
from newsletter.store.outcomes import RECORD
from newsletter.store.schema import bounce_events, deliveries

SECRET = "message-id-test-secret"
STRANGER = "stranger@example.net"  # a report naming nobody we mail: only the Message-ID tells


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)


def test_a_message_id_names_its_delivery_and_refuses_any_alteration() -> None:
    mid = message_id_for(b"k", 7, 2**32 + 5, "example.com")
    assert re.fullmatch(r"<7\.\d{1,20}\.[0-9a-f]{20}@example\.com>", mid)
    masked = mid.split(".")[1]
    assert masked != str(2**32 + 5)  # the subscriber's id is not for readers to see
    assert message_id_for(b"k", 7, 2**32 + 6, "example.com").split(".")[1] != masked
    assert delivery_of(b"k", mid) == (7, 2**32 + 5)
    assert delivery_of(b"k", f" {mid.upper()} ") == (7, 2**32 + 5)  # folded on its way back
    tag = mid.split(".")[2].split("@")[0]
    assert delivery_of(b"other", mid) is None
    assert delivery_of(b"k", mid.replace("<7.", "<8.")) is None
    other = str(int(masked) ^ 1)
    assert delivery_of(b"k", mid.replace(f".{masked}.", f".{other}.")) is None
    assert delivery_of(b"k", mid.replace(tag, tag[:-1] + ("a" if tag[-1] != "a" else "b"))) is None
    old = "<" + hashlib.sha256(b"7\0r@example.org").hexdigest()[:32] + "@example.com>"
    assert delivery_of(b"k", old) is None and delivery_of(b"k", "<garbage>") is None


def test_many_bounces_of_one_mailing_name_their_deliveries_with_one_pad() -> None:
    """A mailing's pad (an HMAC) is made once per (mailing, secret) however
    many of its bounces are parsed, and the ids are those of a fresh start;
    another secret's pad is never taken for it (the cache is keyed by both)."""
    messageids._pad.cache_clear()
    deliveries_of = {m: [2**32 * m + i for i in range(300)] for m in (3, 4)}
    sent = {
        (m, d): message_id_for(b"k", m, d, "example.com")
        for m, ds in deliveries_of.items()
        for d in ds
    }
    other = {key: message_id_for(b"other", *key, "example.com") for key in sent}
    assert set(sent.values()).isdisjoint(other.values())
    messageids._pad.cache_clear()
    for key, mid in sent.items():  # interleaved: the secrets take turns
        assert delivery_of(b"k", mid) == key
        assert delivery_of(b"other", other[key]) == key
        assert delivery_of(b"other", mid) is None
    info = messageids._pad.cache_info()
    assert info.misses == 4  # two mailings x two secrets
    assert info.hits == 3 * len(sent) - 4


def test_the_outcome_update_does_not_name_the_message_id() -> None:
    # SQLite moves every index on a column named in SET, whatever the value.
    assert "message_id" not in str(RECORD)


def smtp_mailing(
    site: Path, server: SmtpTestServer, url: str, n: int
) -> tuple[Settings, Engine, int]:
    settings = site_settings(site, server, **{"database.url": url})
    engine = populate(settings, n)
    return settings, engine, plan_mailing(engine, settings, POST, "sample")


def received_ids(server: SmtpTestServer) -> list[tuple[str, str]]:
    """(recipient, Message-ID) of every message the server took, in order."""
    out = []
    for item in server.received:
        msg = message_from_bytes(item.data, policy=policy.default)
        out.append((item.rcpt_tos[0], str(msg["Message-ID"])))
    return out


def ledger_ids(engine: Engine, mailing_id: int) -> dict[str, tuple[int, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.email, deliveries.c.id, deliveries.c.message_id)
            .where(deliveries.c.mailing_id == mailing_id)
        )  # fmt: skip
        return {r.email: (r.id, r.message_id) for r in rows}


def test_no_two_deliveries_share_a_message_id_and_none_is_stored(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str
) -> None:
    smtp_server.pipelining = True
    settings, engine, first = smtp_mailing(sample_site, smtp_server, database_url, 8)
    posts = load_posts(settings)
    assert deliver_mailing(engine, settings, first, posts).sent == 8
    # The same post again to the same list: a new mailing, new deliveries.
    second = plan_mailing(engine, settings, POST, "sample", resend=True)
    assert second != first
    assert deliver_mailing(engine, settings, second, posts).sent == 8
    got = received_ids(smtp_server)
    assert len(got) == 16 and len({mid for _, mid in got}) == 16
    rows = {m: ledger_ids(engine, m) for m in (first, second)}
    for index, (rcpt, mid) in enumerate(got):
        mailing = first if index < 8 else second
        delivery_id, stored = rows[mailing][rcpt]
        assert delivery_of(SECRET.encode(), mid) == (mailing, delivery_id)
        assert stored is None
        assert mid.endswith("@fieldnotes.example.com>")  # the From domain


def test_a_retried_delivery_keeps_its_message_id(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str
) -> None:
    settings, engine, mailing = smtp_mailing(sample_site, smtp_server, database_url, 3)
    smtp_server.script("r001@example.org", "451 4.3.0 Try again later", stage="data", times=1)
    posts = load_posts(settings)
    report = deliver_mailing(engine, settings, mailing, posts, wait=5)
    assert report.sent == 3
    (refused,) = smtp_server.refused
    again = [mid for rcpt, mid in received_ids(smtp_server) if rcpt == "r001@example.org"]
    first = str(message_from_bytes(refused.data, policy=policy.default)["Message-ID"])
    assert again == [first]
    delivery_id, stored = ledger_ids(engine, mailing)["r001@example.org"]
    assert delivery_of(SECRET.encode(), first) == (mailing, delivery_id) and stored is None


def test_a_delivery_that_recorded_a_message_id_before_keeps_it(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str
) -> None:
    # An older version wrote each attempt's Message-ID to the ledger: a row it
    # deferred is retried now with that one (RFC 5322: the same message).
    settings, engine, mailing = smtp_mailing(sample_site, smtp_server, database_url, 3)
    legacy = "<" + "ab" * 16 + "@example.com>"
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.email == "r002@example.org")
            .values(status="deferred", attempts=1, message_id=legacy)
        )  # fmt: skip
    assert deliver_mailing(engine, settings, mailing, load_posts(settings)).sent == 3
    assert dict(received_ids(smtp_server))["r002@example.org"] == legacy
    assert ledger_ids(engine, mailing)["r002@example.org"][1] == legacy


def bounce(engine: Engine, settings: Settings, message_id: str) -> tuple[int, ...]:
    """A Gmail DSN about STRANGER quoting `message_id`, without our VERP sender;
    the subscriber ids of the delivery it was tied to."""
    report = Template(GMAIL_DSN.read_text()).substitute(
        verp="someone-else@example.net", rcpt=STRANGER, message_id=message_id
    )
    box = OneReport(report.encode())
    process_bounces(engine, settings, box)
    assert box.done == ["1"]
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                select(bounce_events.c.subscriber_id).where(bounce_events.c.email != STRANGER)
            ).scalars()
        )


def test_a_bounce_quoting_a_message_id_marks_its_delivery_and_a_forged_one_nobody(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str
) -> None:
    settings, engine, mailing = smtp_mailing(sample_site, smtp_server, database_url, 4)
    assert deliver_mailing(engine, settings, mailing, load_posts(settings)).sent == 4
    sent = dict(received_ids(smtp_server))
    real = sent["r001@example.org"]
    tag = real.split(".")[2].split("@")[0]
    # Forged: the tag altered, or another delivery's number under r001's tag.
    other_id = ledger_ids(engine, mailing)["r002@example.org"][0]
    forged = [
        real.replace(tag, ("b" if tag[0] != "b" else "c") + tag[1:]),
        re.sub(r"\.\d+\.", f".{other_id}.", real, count=1),
    ]
    for mid in forged:
        assert bounce(engine, settings, mid) == ()
    assert statuses(engine, 4) == ["active"] * 4
    member = subs.get_by_email(engine, "r001@example.org")
    assert member is not None
    assert bounce(engine, settings, real) == (member.id,)
    with engine.connect() as conn:
        event = conn.execute(
            select(bounce_events).where(bounce_events.c.subscriber_id == member.id)
        ).one()  # fmt: skip
    delivery_id = ledger_ids(engine, mailing)["r001@example.org"][0]
    assert (event.mailing_id, event.delivery_id) == (mailing, delivery_id)
    assert statuses(engine, 4) == ["active", "bounced", "active", "active"]


def statuses(engine: Engine, n: int) -> list[str]:
    found = [subs.get_by_email(engine, f"r{i:03d}@example.org") for i in range(n)]
    return [m.status if m is not None else "missing" for m in found]


def test_a_bounce_of_a_message_id_stored_before_still_matches(
    sample_site: Path, smtp_server: SmtpTestServer, database_url: str
) -> None:
    settings, engine, mailing = smtp_mailing(sample_site, smtp_server, database_url, 3)
    rows, _ = q.claim(engine, mailing, "old:1:a", 3, 60)
    q.record_many(engine, [(r.id, q.Outcome("sent", 1)) for r in rows], "old:1:a")
    legacy = "<" + "cd" * 16 + "@example.com>"
    target = next(r for r in rows if r.email == "r000@example.org")
    with engine.begin() as conn:  # as an older version recorded it
        conn.execute(
            update(deliveries).where(deliveries.c.id == target.id).values(message_id=legacy)
        )
    assert bounce(engine, settings, legacy) == (target.subscriber_id,)
    assert statuses(engine, 3) == ["bounced", "active", "active"]


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "each-list"])
def test_a_post_due_for_two_lists_names_the_mailing_each_message_went_out_in(
    tmp_path: Path, smtp_server: SmtpTestServer, dedupe: bool
) -> None:
    # Deduplicated, a member of both lists has one delivery (one id for the
    # post's ledger key), sent from the list joined first; without, one per
    # list.  Each Message-ID names the mailing that sent it and its own row.
    from test_dedupe import BOTH, members, run_once, two_list_site

    from newsletter.store import open_store

    site = two_list_site(tmp_path, smtp_server.port)
    if not dedupe:
        text = site.config.read_text().replace(
            '[email]\nfrom = "Test Notes <news@example.com>"',
            '[email]\nfrom = "Test Notes <news@example.com>"\ndedupe_across_lists = false',
        )
        site.config.write_text(text)
    members(site)
    run_once(site)
    engine = open_store(site.settings())
    with engine.connect() as conn:
        rows = {
            (r.mailing_id, r.id): r.email
            for r in conn.execute(
                select(deliveries.c.mailing_id, deliveries.c.id, deliveries.c.email)
            )
        }
    got = received_ids(smtp_server)
    assert len(got) == len(rows) == (3 if dedupe else 4)
    assert [rcpt for rcpt, _ in got].count(BOTH) == (1 if dedupe else 2)
    named = [delivery_of(SECRET.encode(), mid) for _, mid in got]
    for (rcpt, _), delivery in zip(got, named, strict=True):
        assert delivery is not None and rows[delivery] == rcpt  # its own row, its mailing
    assert len(set(named)) == len(named)
