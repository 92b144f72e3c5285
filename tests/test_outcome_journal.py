"""The outcome journal of a SQLite sender (store.journal, invariant 2).

Each outcome is appended to the pass's journal before the next final dot
and folded into the ledger in groups.  What must hold: a journaled outcome
is never lost and never sends its row again, whether its sender ends
cleanly, is killed (its journal folded by whoever frees its leases), or
stalls past its lease while alive (folded by the claim that takes its rows).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer
from sqlalchemy import Engine, select
from test_delivery_smtp import POST, ledger, populate, site_settings

import newsletter
from newsletter.delivery.mailings import plan_mailing
from newsletter.delivery.recorder import Recorder
from newsletter.errors import StoreError
from newsletter.store import journal
from newsletter.store import mailings as q
from newsletter.store.schema import deliveries

SENT = q.Outcome("sent", 1, 250, "2.0.0 Ok: queued as\tABC\n")  # a tab and a newline: escaped


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "journal-test-secret")


def planned(site: Path, server: SmtpTestServer, n: int) -> tuple[Engine, int]:
    settings = site_settings(site, server)
    engine = populate(settings, n)
    return engine, plan_mailing(engine, settings, POST, "sample")


def journaling(
    site: Path, server: SmtpTestServer, n: int, *, lease: float = 60.0
) -> tuple[Engine, int, list[q.Claimed], Recorder]:
    """n planned recipients, all claimed by a pass whose recorder journals:
    (engine, mailing, the rows, the recorder: its `owner` is the pass's)."""
    engine, mailing = planned(site, server, n)
    owner = q.owner_identity()
    rows, _ = q.claim(engine, mailing, owner, n, lease)
    return engine, mailing, rows, Recorder(engine, threading.Lock(), owner)


def files(engine: Engine) -> list[str]:
    folder = journal.folder_of(engine)
    assert folder is not None
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_outcomes_are_journaled_at_once_and_folded_in_one_transaction(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 6)
    reached = time.time()
    deferred = q.Outcome("deferred", 1, 451, "4.3.0 later", datetime(2030, 1, 1, tzinfo=UTC))
    for row in rows[:3]:
        pending = recorder.submit(row.id, SENT if row.email != "r001@example.org" else deferred)
        assert pending.done and pending.error is None  # nobody waits for a commit
    # Safe on file, not in the ledger yet.
    assert {r.status for r in ledger(engine).values()} == {"sending"}
    folder = journal.folder_of(engine)
    assert folder is not None and folder.stat().st_mode & 0o077 == 0
    lines = journal.read_lines(folder, journal.file_name(recorder.owner))
    assert [line.delivery_id for line in lines] == [row.id for row in rows[:3]]
    assert lines[0].outcome == SENT and lines[1].outcome == deferred

    recorder.fold()
    state = ledger(engine)
    assert state["r000@example.org"].status == "sent"
    assert state["r000@example.org"].last_text == SENT.text
    assert state["r000@example.org"].lease_owner is None
    sent_at = state["r002@example.org"].sent_at.replace(tzinfo=UTC).timestamp()
    assert reached - 1 <= sent_at <= time.time()  # when it was reached, not folded
    assert state["r001@example.org"].status == "deferred"
    assert state["r001@example.org"].next_attempt_at.year == 2030
    assert state["r003@example.org"].status == "sending"  # never journaled: still leased
    assert journal.read_lines(folder, journal.file_name(recorder.owner)) == []

    recorder.submit(rows[3].id, SENT)
    recorder.close()  # folds the rest and leaves no file behind
    assert ledger(engine)["r003@example.org"].status == "sent"
    assert files(engine) == []


def test_folding_a_line_twice_changes_nothing(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    engine, mailing = planned(sample_site, smtp_server, 2)
    owner = q.owner_identity()
    (row, *_), _ = q.claim(engine, mailing, owner, 2, 60.0)
    line = journal.Line(row.id, SENT, time.time())
    with engine.begin() as conn:
        assert journal.apply(conn, owner, [line]) == 1
    with engine.begin() as conn:
        assert journal.apply(conn, owner, [line]) == 0  # the lease is gone: fenced
    assert ledger(engine)["r000@example.org"].attempts == 1


CRASHING_SENDER = """
import os, sys, threading, time
from newsletter.config import load_settings
from newsletter.delivery.recorder import Recorder
from newsletter.store import mailings as q, open_store
engine = open_store(load_settings(sys.argv[1], {"database.url": sys.argv[2]}))
owner = q.owner_identity()
rows, _ = q.claim(engine, int(sys.argv[3]), owner, 4, 600.0)
recorder = Recorder(engine, threading.Lock(), owner)
for row in rows[:2]:
    recorder.submit(row.id, q.Outcome("sent", 1, 250, "2.0.0 Ok"))
folder = recorder._journal.folder
if len(rows) > 2:
    with open(folder / (recorder._journal.name + ".0.log"), "ab") as fh:
        fh.write(b"\\n%d\\tsent\\t1\\t250" % rows[2].id)  # a line cut short by the crash
print(owner, flush=True)
os._exit(9)  # kill -9: no fold, no release
"""


def crashed_sender(site: Path, engine: Engine, mailing: int) -> str:
    """Run CRASHING_SENDER on this database; its owner."""
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_SENDER, str(site / "newsletter.toml"), str(engine.url),
         str(mailing)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(newsletter.__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 9, done.stderr
    return done.stdout.strip()


def test_a_killed_senders_journal_is_folded_before_its_leases_are_freed(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    engine, mailing = planned(sample_site, smtp_server, 5)
    owner = crashed_sender(sample_site, engine, mailing)
    assert {r.lease_owner for r in ledger(engine).values() if r.status == "sending"} == {owner}
    assert files(engine)  # its lock and its lines are left behind

    assert q.free_dead_leases(engine) == 1
    state = ledger(engine)
    # The two journaled rows keep their outcome: never sent again.
    assert [state[f"r00{i}@example.org"].status for i in range(5)] == [
        "sent", "sent", "sending", "sending", "queued"
    ]  # fmt: skip
    # The cut line and the unjournaled row are free to go again.
    assert all(state[f"r00{i}@example.org"].lease_owner is None for i in range(5))
    assert files(engine) == []
    again, _ = q.claim(engine, mailing, q.owner_identity(), 10, 60.0)
    assert sorted(r.email for r in again) == [f"r00{i}@example.org" for i in (2, 3, 4)]


def test_a_live_senders_journal_is_left_to_it(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 2)
    recorder.submit(rows[0].id, SENT)
    assert q.free_dead_leases(engine) == 0  # as another process would: this owner lives
    assert ledger(engine)["r000@example.org"].status == "sending"
    assert len(files(engine)) == 2  # its lock and its lines
    recorder.close()
    assert ledger(engine)["r000@example.org"].status == "sent"


def test_a_claim_that_takes_a_stalled_senders_rows_folds_its_journal_first(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    # Alive but stalled past its lease: its rows go to another sender, except
    # those whose outcome it journaled (they went out; invariant 2).
    engine, mailing, rows, recorder = journaling(sample_site, smtp_server, 3, lease=0.05)
    recorder.submit(rows[0].id, SENT)
    time.sleep(0.1)
    taken, _ = q.claim(engine, mailing, q.owner_identity(), 10, 60.0)
    assert sorted(r.email for r in taken) == ["r001@example.org", "r002@example.org"]
    assert ledger(engine)["r000@example.org"].status == "sent"
    recorder.close()  # its own fold later finds nothing left to change
    assert ledger(engine)["r000@example.org"].attempts == 1


def test_a_journal_that_cannot_be_written_fails_the_outcome(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 1)

    def full(_fd: int, _data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "write", full)
    pending = recorder.submit(rows[0].id, SENT)
    with pytest.raises(StoreError, match=r"cannot journal 1 delivery outcome.*No space left"):
        pending.wait()
    monkeypatch.undo()
    recorder.close()
    with engine.connect() as conn:
        status = conn.scalar(select(deliveries.c.status).where(deliveries.c.id == rows[0].id))
    assert status == "sending"  # nothing recorded, the row still leased


def test_a_fold_that_fails_keeps_the_lines_and_the_leases(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.store.outcomes import LedgerWriter

    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 2)
    recorder.submit(rows[0].id, SENT)

    def locked(*_: object) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(LedgerWriter, "write", locked)
    with pytest.raises(StoreError, match="locked"):
        recorder.fold()
    recorder.close()  # logs the failure, keeps the file, lets its lock go
    assert recorder.owes
    monkeypatch.undo()
    assert ledger(engine)["r000@example.org"].status == "sending"
    # The journal is folded by the next free_dead_leases, even in this process.
    q.free_dead_leases(engine)
    assert ledger(engine)["r000@example.org"].status == "sent"
    assert files(engine) == []


def test_encoding_survives_any_reply_text() -> None:
    for text in (None, "", "ok", "tab\there", "line\nbreak", 'quote " and \\', "é ünïcödé"):
        line = journal.Line(7, q.Outcome("failed", 3, 550, text), 1.5)
        assert journal.decode(journal.encode(line).lstrip(b"\n")) == line
    assert journal.decode(b"12\tsent\t1") is None
    assert journal.decode(b"12\tse\t1\t250\t\t1.5\tnull") is None  # not an outcome
    assert journal.decode(textwrap.dedent("x\ty\tz\t\t\t1\tnull").encode()) is None


def test_a_line_cut_short_never_runs_into_the_next(tmp_path: Path) -> None:
    # A write that a full disk cut short, then a whole line: the whole one counts.
    whole = journal.Line(8, SENT, 2.0)
    cut = journal.encode(journal.Line(7, SENT, 1.0))[:-3]
    (tmp_path / "x.0.log").write_bytes(cut + journal.encode(whole))
    assert journal.read_lines(tmp_path, "x") == [whole]


def test_appends_racing_folds_land_exactly_once(
    sample_site: Path, smtp_server: SmtpTestServer
) -> None:
    # Workers append while the feeder folds (each fold starts the next file).
    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 200)
    done = threading.Event()

    def worker(share: list[q.Claimed]) -> None:
        for row in share:
            recorder.submit(row.id, SENT)

    threads = [threading.Thread(target=worker, args=(rows[i::4],)) for i in range(4)]
    folds = 0

    def feeder() -> None:
        nonlocal folds
        while not done.is_set():
            recorder.fold()
            folds += 1

    folding = threading.Thread(target=feeder)
    folding.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    folding.join()
    recorder.close()
    assert folds > 1
    state = ledger(engine)
    assert {row.status for row in state.values()} == {"sent"}
    assert {row.attempts for row in state.values()} == {1}
    assert files(engine) == []


def test_a_fold_whose_next_file_cannot_be_made_loses_nothing(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _mailing, rows, recorder = journaling(sample_site, smtp_server, 3)
    recorder.submit(rows[0].id, SENT)
    real = journal.Journal._open
    refused: list[int] = []

    def once_too_many(self: journal.Journal, number: int) -> int:
        if not refused:
            refused.append(number)
            raise OSError(24, "Too many open files")
        return real(self, number)

    monkeypatch.setattr(journal.Journal, "_open", once_too_many)
    with pytest.raises(StoreError, match="Too many open files"):
        recorder.fold()
    recorder.submit(rows[1].id, SENT)
    recorder.close()
    state = ledger(engine)
    assert [state[f"r00{i}@example.org"].status for i in range(2)] == ["sent", "sent"]
    assert files(engine) == []


def test_a_recovery_rolled_back_leaves_the_journal(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dead owner's files go only once the fold is committed.
    from newsletter.store import leases

    engine, mailing = planned(sample_site, smtp_server, 3)
    crashed_sender(sample_site, engine, mailing)
    left = files(engine)

    def failing(*_: object) -> bool:
        raise RuntimeError("the transaction fails after the fold")

    monkeypatch.setattr(leases, "_is_dead", failing)
    with pytest.raises(RuntimeError):
        q.free_dead_leases(engine)
    assert files(engine) == left
    assert ledger(engine)["r000@example.org"].status == "sending"  # rolled back
    monkeypatch.undo()
    q.free_dead_leases(engine)
    assert ledger(engine)["r000@example.org"].status == "sent"
    assert files(engine) == []


def test_a_lock_file_deleted_before_its_flock_is_made_again(
    sample_site: Path, smtp_server: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's recover found the new lock file free (not locked yet)
    # and deleted it: the pass must not hold a lock on a file no one can see.
    engine, mailing = planned(sample_site, smtp_server, 1)
    owner = q.owner_identity()
    rows, _ = q.claim(engine, mailing, owner, 1, 60.0)
    real = journal.fcntl.flock
    raced: list[int] = []

    def racing(fd: int, operation: int) -> None:
        if not raced and operation == journal.fcntl.LOCK_EX:
            raced.append(fd)
            q.free_dead_leases(engine)  # takes the free lock, deletes it
        real(fd, operation)

    monkeypatch.setattr(journal.fcntl, "flock", racing)
    recorder = Recorder(engine, threading.Lock(), owner)
    monkeypatch.undo()
    assert raced
    recorder.submit(rows[0].id, SENT)
    assert journal.file_name(owner) + ".lock" in files(engine)
    assert q.free_dead_leases(engine) == 0  # seen alive: its journal stays
    assert ledger(engine)["r000@example.org"].status == "sending"
    recorder.close()
    assert ledger(engine)["r000@example.org"].status == "sent"


def test_a_full_disk_under_send_is_one_line_not_a_traceback(
    sample_site: Path,
    smtp_server: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from click.testing import CliRunner
    from test_cli_send import POST, add_readers, smtp_config

    from newsletter.cli import main

    config = smtp_config(sample_site, smtp_server)
    add_readers(config, 6)
    taken = 0
    append = journal.Journal.append

    def filling(self: journal.Journal, line: journal.Line) -> None:
        nonlocal taken
        taken += 1
        if taken > 3:  # the disk fills up under the fourth outcome
            raise OSError(28, "No space left on device")
        append(self, line)

    monkeypatch.setattr(journal.Journal, "append", filling)
    result = CliRunner().invoke(main, ["--config", str(config), "send", POST, "--list", "sample"])
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(
        "error: cannot journal 1 delivery outcome(s): No space left on device\n"
    )
    # Said once, by the error line: not again as a warning with a traceback.
    assert "Traceback" not in result.stderr
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "recording the last delivery outcomes failed" not in caplog.text
