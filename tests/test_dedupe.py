"""One email per person per post: a post due for several lists reaches a member
of more than one once, on the list they joined first, through a real SMTP
server; the choice lives in the ledger, so it holds after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from smtpserver import SmtpTestServer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from test_daemon_support import Site, add_members, engine_of, make_site

from newsletter.cli import main
from newsletter.delivery.mailings import plan_mailing, plan_post
from newsletter.store import mailings as q
from newsletter.store.schema import deliveries

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
TWO_LISTS = """
[lists.essays]
title = "Essays"
mode = "each"

[lists.field]
title = "Field reports"
mode = "each"
"""
BOTH = "both@example.com"  # joins `field` first, then `essays`


def two_list_site(root: Path, port: int, extra: str = "", **kwargs: object) -> Site:
    site = make_site(
        root,
        transport="smtp",
        smtp_port=port,
        lists=TWO_LISTS,
        extra=extra,
        **kwargs,  # type: ignore[arg-type]
    )
    site.write_post("2025-01-01-shared.md", "Shared post", PAST)
    return site


def members(site: Site) -> None:
    settings = site.settings()
    engine = engine_of(settings)
    add_members(engine, "field", [BOTH, "fieldonly@example.com"], settings=settings)
    add_members(engine, "essays", ["essaysonly@example.com", BOTH])


def run_once(site: Site) -> str:
    result = CliRunner().invoke(main, ["--config", str(site.config), "run", "--once"])
    assert result.exit_code == 0, result.output
    return result.stdout


def footer_list(data: bytes) -> str:
    message = message_from_bytes(data, policy=policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return text.split("subscribed to ")[1].split(".")[0]


def test_a_member_of_two_lists_gets_the_post_once_from_the_list_joined_first(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    site = two_list_site(tmp_path, smtp_server.port)
    members(site)
    run_once(site)
    counts = Counter(smtp_server.recipients())
    assert counts == {
        BOTH: 1,
        "fieldonly@example.com": 1,
        "essaysonly@example.com": 1,
    }
    [message] = [r for r in smtp_server.received if BOTH in r.rcpt_tos]
    assert footer_list(message.data) == "Field reports"
    # A second pass (a restart) finds nothing to send.
    run_once(site)
    assert len(smtp_server.received) == 3


def test_without_dedupe_each_list_sends_its_own_copy(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    site = two_list_site(tmp_path, smtp_server.port)
    text = site.config.read_text().replace(
        '[email]\nfrom = "Test Notes <news@example.com>"',
        '[email]\nfrom = "Test Notes <news@example.com>"\ndedupe_across_lists = false',
    )
    site.config.write_text(text)
    assert not site.settings().email.dedupe_across_lists
    members(site)
    run_once(site)
    assert Counter(smtp_server.recipients())[BOTH] == 2
    footers = sorted(footer_list(r.data) for r in smtp_server.received if BOTH in r.rcpt_tos)
    assert footers == ["Essays", "Field reports"]


def test_a_later_mailing_of_the_same_post_skips_who_already_has_it(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    site = two_list_site(tmp_path, smtp_server.port)
    members(site)
    settings = site.settings()
    engine = engine_of(settings)
    # The owner sends to `essays` first by hand, then the daemon plans `field`.
    first = plan_mailing(engine, settings, "shared", "essays")
    later = plan_post(engine, settings, "shared", ("essays", "field"))
    assert later["essays"] == first
    with engine.connect() as conn:
        queued = dict(
            conn.execute(
                select(deliveries.c.mailing_id, func.count()).group_by(deliveries.c.mailing_id)
            ).all()
        )
    assert queued == {first: 2, later["field"]: 1}  # BOTH is on essays' mailing only


def test_the_ledger_refuses_a_second_delivery_of_a_post_to_one_person(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    """What keeps two planners on two hosts honest: the primary key, not memory.

    Any mailing of the post shares its ledger key, so a delivery to the same
    person has the same id as the first one.
    """
    site = two_list_site(tmp_path, smtp_server.port)
    members(site)
    settings = site.settings()
    engine = engine_of(settings)
    planned = plan_post(engine, settings, "shared", ("field",))
    with engine.connect() as conn:
        sid = conn.scalar(select(deliveries.c.subscriber_id).where(deliveries.c.email == BOTH))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        other = q.insert_mailing(
            conn, post_id="shared", list_id=q.list_id(conn, "essays") or 0, kind="post",
            generation=0, subject="", post_ids=(), ledger_key=q.ledger_key(conn, "shared"),
        )  # fmt: skip
        assert other is not None
        q.snapshot(conn, other, [(int(sid), BOTH)])
    assert planned["field"]


@pytest.mark.slow
def test_kill_9_mid_mailing_still_one_message_per_person(
    tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    n = 150
    concurrency = 2
    site = two_list_site(tmp_path, smtp_server.port, rate=60, concurrency=concurrency)
    settings = site.settings()
    engine = engine_of(settings)
    everyone = [f"reader{i:03d}@example.org" for i in range(n)]
    # Half joined `field` first, half `essays` first; all are on both.
    add_members(engine, "field", everyone[: n // 2], settings=settings)
    add_members(engine, "essays", everyone)
    add_members(engine, "field", everyone[n // 2 :])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "newsletter", "--config", str(site.config), "run", "--once"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < n // 3:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no progress before the kill"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(smtp_server.received) < n, "finished before the kill; slow it down"
    second = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr.decode()
    counts = Counter(smtp_server.recipients())
    assert set(counts) == set(everyone)  # nobody skipped
    assert sum(c - 1 for c in counts.values()) <= concurrency  # only in-flight may repeat
    with engine.connect() as conn:
        per_person = conn.execute(
            select(deliveries.c.email, func.count()).group_by(deliveries.c.email)
        ).all()
        footers = Counter(footer_list(r.data) for r in smtp_server.received)
    assert {c for _e, c in per_person} == {1}  # one ledger row per person for the post
    assert footers["Field reports"] >= n // 2 and footers["Essays"] >= n // 2
