"""`newsletter cancel` of one list's mailing of a post deduplicated across lists.

With `[email] dedupe_across_lists` a member of two lists is queued once, on
the list they joined first.  Cancelling that list's mailing must not deprive
them of the other list's: whoever was queued on the cancelled mailing and is
still on another list whose mailing of the post goes on is handed over to
that mailing (its footer, its unsubscribe link), and gets the post once.
Leaving that first list alone (a per-list unsubscribe) does the same.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from test_daemon_support import Site, add_members, engine_of, make_site

from newsletter.cli import main
from newsletter.daemon import passes
from newsletter.delivery.mailings import deliver_mailing, plan_post
from newsletter.delivery.transports.memory import MemoryTransport
from newsletter.posts.collection import load_posts
from newsletter.store.schema import deliveries, mailings

pytestmark = pytest.mark.usefixtures("database_env")

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
TWO_LISTS = """
[lists.field]
title = "Field reports"
mode = "each"

[lists.essays]
title = "Essays"
mode = "each"
"""
BOTH = "both@example.com"  # joins `field` first, then `essays`: queued on field's mailing


def site_with_members(root: Path) -> tuple[Site, Engine, dict[str, int]]:
    """Both lists' mailings of one post, planned together (nothing sent yet)."""
    site = make_site(root, lists=TWO_LISTS)
    site.write_post("2025-01-01-shared.md", "Shared post", PAST)
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "field", [BOTH, "fieldonly@example.com"], settings=settings)
    add_members(engine, "essays", ["essaysonly@example.com", BOTH])
    planned = plan_post(engine, settings, "shared", ("field", "essays"), origin="automatic")
    return site, engine, planned


def cli(site: Site, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(site.config), *args])


def holders(engine: Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.email, deliveries.c.mailing_id, deliveries.c.status)
        )
        return {email: (mid, status) for email, mid, status in rows}


def state_of(engine: Engine, mailing_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(select(mailings.c.state).where(mailings.c.id == mailing_id)))


def footer_list(data: bytes) -> str:
    message = message_from_bytes(data, policy=policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return text.split("subscribed to ")[1].split(".")[0]


def test_cancelling_one_list_hands_its_shared_members_to_the_other(tmp_path: Path) -> None:
    site, engine, planned = site_with_members(tmp_path)
    field, essays = planned["field"], planned["essays"]
    assert holders(engine)[BOTH] == (field, "queued")

    result = cli(site, "cancel", str(field))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        f"mailing {field} cancelled: shared -> field: sent 0, not sent 1; "
        f"1 also on list essays handed over to its mailing {essays}"
    )
    assert holders(engine)[BOTH] == (essays, "queued")
    assert holders(engine)["fieldonly@example.com"] == (field, "queued")

    transport = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=transport)
    got = Counter(m.recipient for m in transport.outbox)
    assert got == {BOTH: 1, "essaysonly@example.com": 1}  # fieldonly was cancelled
    [mine] = [m for m in transport.outbox if m.recipient == BOTH]
    assert footer_list(mine.message) == "Essays"
    assert (state_of(engine, field), state_of(engine, essays)) == ("cancelled", "done")

    status = cli(site, "status", "--json")
    by_id = {m["id"]: m for m in json.loads(status.output)["mailings"]}
    assert by_id[field]["last_error"] == (
        f"cancelled by the owner; 1 also on list essays handed over to its mailing {essays}"
    )
    # Another pass sends nobody anything more.
    again = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=again)
    assert again.outbox == []


def test_a_finished_mailing_of_the_other_list_takes_them_and_goes_again(tmp_path: Path) -> None:
    """The other list's mailing was done before the cancel: it sends again,
    to those handed over only."""
    site, engine, planned = site_with_members(tmp_path)
    field, essays = planned["field"], planned["essays"]
    first = MemoryTransport()
    settings = site.settings()
    deliver_mailing(engine, settings, essays, load_posts(settings), transport=first)
    assert [m.recipient for m in first.outbox] == ["essaysonly@example.com"]
    assert state_of(engine, essays) == "done"

    result = cli(site, "cancel", str(field), "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert (found["cancelled"], found["not_sent"]) == (True, 1)
    assert found["handed_over"] == [{"mailing": essays, "list": "essays", "recipients": 1}]
    assert state_of(engine, essays) == "sending"

    transport = MemoryTransport()
    passes.run_pass(settings, engine, transport=transport)
    assert [m.recipient for m in transport.outbox] == [BOTH]
    assert state_of(engine, essays) == "done"


def test_nobody_is_handed_to_a_list_they_left(tmp_path: Path) -> None:
    site, engine, planned = site_with_members(tmp_path)
    field = planned["field"]
    assert cli(site, "subscribers", "remove", BOTH, "--list", "essays").exit_code == 0
    result = cli(site, "cancel", str(field))
    assert result.exit_code == 0, result.output
    assert "handed over" not in result.output
    assert holders(engine)[BOTH] == (field, "queued")


def test_nobody_is_handed_to_a_cancelled_mailing(tmp_path: Path) -> None:
    site, engine, planned = site_with_members(tmp_path)
    field, essays = planned["field"], planned["essays"]
    assert cli(site, "cancel", str(essays)).exit_code == 0
    result = cli(site, "cancel", str(field))
    assert result.exit_code == 0, result.output
    assert "handed over" not in result.output, result.output
    assert holders(engine)[BOTH] == (field, "queued")
    transport = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=transport)
    assert transport.outbox == []


# --------------------------------------------------------------------------- leaving the list that held them


def test_unsubscribing_from_the_list_that_held_them_leaves_the_other_lists_copy(
    tmp_path: Path,
) -> None:
    """A member of both lists, queued on the one they joined first, leaves
    that list only: that list's mailing skips them, and they get the post
    from the list they are still on (its footer), once."""
    site, engine, planned = site_with_members(tmp_path)
    field, essays = planned["field"], planned["essays"]
    result = cli(site, "subscribers", "unsubscribe", BOTH, "--list", "field")
    assert result.exit_code == 0, result.output
    transport = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=transport)
    got = Counter(m.recipient for m in transport.outbox)
    assert got == {BOTH: 1, "essaysonly@example.com": 1, "fieldonly@example.com": 1}
    [mine] = [m for m in transport.outbox if m.recipient == BOTH]
    assert footer_list(mine.message) == "Essays"
    assert holders(engine)[BOTH] == (essays, "sent")
    assert (state_of(engine, field), state_of(engine, essays)) == ("done", "done")
    again = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=again)
    assert again.outbox == []


def test_leaving_every_list_is_still_a_skip(tmp_path: Path) -> None:
    site, engine, planned = site_with_members(tmp_path)
    assert cli(site, "subscribers", "unsubscribe", BOTH).exit_code == 0
    transport = MemoryTransport()
    passes.run_pass(site.settings(), engine, transport=transport)
    assert BOTH not in {m.recipient for m in transport.outbox}
    assert holders(engine)[BOTH] == (planned["field"], "skipped")


def test_a_cancelled_mailing_that_finishes_keeps_where_its_readers_went(tmp_path: Path) -> None:
    """A sender holds `fieldonly`'s row when the owner cancels: `both` is
    handed over to the essays mailing.  When the held message goes out and
    its pass ends, the cancelled mailing is done, and `status` still says it
    was cancelled and where `both` went (before, finishing erased the note:
    only a later mailing of the same list kept it)."""
    from newsletter.store import mailings as q

    site, engine, planned = site_with_members(tmp_path)
    field, essays = planned["field"], planned["essays"]
    owner = q.owner_identity()
    with q.OwnerLock(engine, owner):
        with engine.begin() as conn:  # a live sender holds fieldonly's row
            conn.execute(
                deliveries.update()
                .where(deliveries.c.mailing_id == field, deliveries.c.email != BOTH)
                .values(
                    status="sending",
                    lease_owner=owner,
                    lease_expires_at=datetime.now(UTC) + timedelta(minutes=10),
                )
            )
        assert cli(site, "cancel", str(field)).exit_code == 0
        assert holders(engine)[BOTH] == (essays, "queued")
        with engine.connect() as conn:
            row = conn.scalar(
                select(deliveries.c.id).where(
                    deliveries.c.mailing_id == field, deliveries.c.status == "sending"
                )
            )
        # The held message went out; its pass records it and ends (MailingPass._finish).
        assert q.record_many(engine, [(row, q.Outcome("sent", 1))], owner) == 1
        q.set_state(engine, field, "done", over_halt=True)
    status = json.loads(cli(site, "status", "--json").output)
    [entry] = [m for m in status["mailings"] if m["id"] == field]
    assert entry["state"] == "done"
    assert entry["last_error"] == (
        f"cancelled by the owner; 1 also on list essays handed over to its mailing {essays}"
    )
    lines = cli(site, "status").output.splitlines()
    at = lines.index(next(line for line in lines if line.startswith(f"#{field} ")))
    assert lines[at + 1].startswith("    why: cancelled by the owner; 1 also on list essays")
