"""A big file is read and validated by a second process (audience/stagereader.py),
and the merge gives new subscribers no stored uid (derived: tests/test_store_uids.py).

Both must change nothing an import reports or stores: the same counts, the same
problems (file, line, reason) in file order, the same file facts, the same
members, errors with the same message and location, progress to the end.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from test_subscribers_common import make_engine, make_settings, run_import

import newsletter.audience.stagereader as stagereader
import newsletter.audience.staging as staging
from newsletter.audience.members import ensure_lists
from newsletter.audience.subscribers import members
from newsletter.config import Settings
from newsletter.errors import SubscriberError
from newsletter.store import open_url

ROWS = [  # our own export's header: `subscribed_at` is when they joined
    "email,name,status,subscribed_at,city",
    "a@example.com,Ann,active,2023-05-01T10:00:00Z,Oslo",
    "not-an-address,Bad,active,,Rome",
    ",Nobody,active,,Rome",
    "b@example.com,Bob,zombie,,Lima",  # unknown status: a warning, pending
    "A@EXAMPLE.COM,Ann Again,unsubscribed,,",  # a duplicate: the unsubscribe wins
    "c@example.org,,active,,'=1+2",
    "",
    "d@example.net,Dee,bounced,2022-01-02 03:04:05,42",
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings("news", base_dir=tmp_path)


@pytest.fixture
def engine(database_url: str, settings: Settings) -> Engine:
    engine = open_url(database_url)
    ensure_lists(engine, settings)
    return engine


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every file counts as big; the command lines of the children started."""
    started: list[list[str]] = []
    real = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(args)
        return real(args, **kwargs)

    monkeypatch.setattr(stagereader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stagereader, "_spare_core", lambda: True)
    monkeypatch.setattr(stagereader.subprocess, "Popen", popen)
    return started


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def outcome(engine: Engine, settings: Settings, path: Path) -> tuple[Any, ...]:
    ticks: list[tuple[int, int]] = []
    counts = run_import(engine, settings, path, progress=lambda d, t: ticks.append((d, t)))
    problems = [(p.message, p.path, p.line, p.severity) for p in counts.problems]
    stored = sorted(
        (m.email, m.name, m.status, m.subscribed_at.isoformat() if m.subscribed_at.year < 2024
         else "now", sorted(m.attributes.items()))
        for m in members(engine, "news")
    )  # fmt: skip
    return counts.as_dict(), problems, counts.files, stored, ticks[-1][0] == ticks[-1][1]


def test_a_big_file_read_by_a_second_process_imports_exactly_the_same(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    children: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path / "people.csv", ROWS)
    parallel = outcome(engine, settings, path)
    assert len(children) == 1 and children[0][1:3] == ["-m", stagereader.__name__]
    monkeypatch.setattr(stagereader, "PARALLEL_MIN_BYTES", 1 << 60)
    reference = outcome(make_engine(tmp_path, settings), settings, path)
    assert len(children) == 1  # the reference was read here
    assert parallel == reference
    counts, problems, _files, stored, progress_to_the_end = parallel
    assert (counts["rows"], counts["new"], counts["invalid"], counts["duplicates"]) == (7, 4, 2, 1)
    assert [(line, severity) for _m, _p, line, severity in problems] == [
        (3, "error"),
        (4, "error"),
        (5, "warning"),
    ]
    assert problems[0][1] == path and "not-an-address" in problems[0][0]
    assert stored[0][:3] == ("a@example.com", "Ann", "unsubscribed")
    assert stored[0][3] == "2023-05-01T10:00:00+00:00"
    assert stored[2][4] == [("city", "=1+2")] and stored[3][3:] == (
        "2022-01-02T03:04:05+00:00",
        [("city", 42)],
    )
    assert progress_to_the_end


@pytest.mark.parametrize("every", [97, 7])  # 7: more problems than are listed (MAX_PROBLEMS)
def test_problems_of_every_batch_come_in_file_order_whoever_validated_it(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    children: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    every: int,
) -> None:
    """The child validates some batches and (SQLite) the importing process
    the others (`stagereader.SHARE_OF`): problems met on either side are one
    list, in file order, as when one process reads the file, and so are the
    counts."""
    lines = ["email,name,status,subscribed_at,city"]
    for i in range(12_000):
        if i % every == 0:
            lines.append(f"broken{i}.example.com,B,active,,X")  # an error
        elif i % (every + 2) == 0:
            lines.append(f"u{i}@example.com,U,zombie,2022-01-02,Y")  # a warning, and a time
        elif i % 1009 == 0:
            lines.append(f"U{i - 1}@EXAMPLE.COM,Again,unsubscribed,,")  # a repeat
        else:
            lines.append(f"u{i}@example.com,User {i},active,,City {i % 13}")
    path = write(tmp_path / "many.csv", lines)
    parallel = outcome(engine, settings, path)
    assert len(children) == 1
    monkeypatch.setattr(stagereader, "PARALLEL_MIN_BYTES", 1 << 60)
    reference = outcome(make_engine(tmp_path, settings), settings, path)
    assert parallel == reference
    counts, problems, *_ = parallel
    zombies = sum(1 for i in range(12_000) if i % every and i % (every + 2) == 0)
    assert (counts["invalid"], counts["warnings"]) == (len(range(0, 12_000, every)), zombies)
    assert len(problems) == min(1000, counts["invalid"] + counts["warnings"])
    assert [p[2] for p in problems] == sorted(p[2] for p in problems)  # by line
    # Lines from batches of both kinds (`stagereader.SHARE_OF` go to the importer).
    assert problems[-1][2] > 5000 if every == 97 else problems[-1][2] < 8000


def test_errors_of_the_second_process_are_raised_with_their_location(
    engine: Engine, settings: Settings, tmp_path: Path, children: list[list[str]]
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(SubscriberError) as raised:
        run_import(engine, settings, empty)
    assert str(raised.value) == f"{empty}: the file is empty (no header line)"
    wrong = write(tmp_path / "wrong.csv", ["email,name", "a@example.com,Ann"])
    with pytest.raises(SubscriberError, match="--format ghost expects") as raised:
        run_import(engine, settings, wrong, fmt="ghost")
    assert (raised.value.path, raised.value.line) == (wrong, 1)
    assert len(children) == 2
    assert run_import(engine, settings, wrong).new == 1  # nothing left behind


@pytest.mark.parametrize(
    "last_words",
    [
        "",  # exits without a word (killed, out of memory)
        # killed in the middle of a frame: its length says 100 bytes, 3 came
        "sys.stdout.buffer.write((100).to_bytes(8, 'big') + b'mxy'); sys.stdout.flush(); ",
    ],
    ids=["silent", "mid-frame"],
)
def test_a_reader_that_dies_is_an_error_not_an_empty_file(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    children: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    last_words: str,
) -> None:
    """Fault injection: the child dies before it says its end."""
    real = subprocess.Popen

    def dies(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return real([args[0], "-c", f"import sys; {last_words}sys.exit(9)"], **kwargs)

    monkeypatch.setattr(stagereader.subprocess, "Popen", dies)
    path = write(tmp_path / "people.csv", ROWS)
    with pytest.raises(SubscriberError, match="stopped unexpectedly"):
        run_import(engine, settings, path)
    assert list(members(engine, "news")) == []


def test_without_a_free_core_the_file_is_read_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle cores are measured now (/proc/stat over a tenth of a second),
    not taken from the load average, which trails by a minute: a quiet
    machine just after a busy minute has a core free."""
    monkeypatch.setattr(stagereader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stagereader, "IDLE_WINDOW", 0.0)
    monkeypatch.setattr(stagereader.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(stagereader.os, "getloadavg", lambda: (3.0, 3.0, 3.0))  # the last minute
    path = write(tmp_path / "people.csv", ROWS)
    # (idle, all) ticks before and after the window: 19 of 20 idle, then 12 of 20.
    for ticks, spare in (([(100, 200), (119, 220)], True), ([(100, 200), (112, 220)], False)):
        monkeypatch.setattr(stagereader, "_cpu_ticks", iter(ticks).__next__)
        assert stagereader.worth_a_process(path) is spare
    assert not stagereader.worth_a_process(tmp_path / "missing.csv")
    # Where /proc/stat cannot say, the load average decides.
    monkeypatch.setattr(stagereader, "_cpu_ticks", lambda: None)
    assert not stagereader.worth_a_process(path)
    monkeypatch.setattr(stagereader.os, "getloadavg", lambda: (0.5, 2.0, 2.0))
    assert stagereader.worth_a_process(path)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux's /proc/stat")
def test_the_idle_cores_come_from_proc_stat() -> None:
    before = stagereader._cpu_ticks()
    idle = stagereader._idle_cores(os.cpu_count() or 1)
    after = stagereader._cpu_ticks()
    assert before is not None and after is not None
    assert after[0] >= before[0] and after[1] > before[1] > before[0] > 0
    assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1) + 0.01


def test_a_failure_here_stops_the_reader_at_once(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    children: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: staging fails after one row while the child is still
    reading (12 batches, more than it may run ahead); it must not linger."""
    processes: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        processes.append(real(args, **kwargs))
        return processes[-1]

    def fails_after_one_run(_conn: object, runs: Any) -> None:
        next(iter(runs))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(stagereader.subprocess, "Popen", popen)
    monkeypatch.setattr(staging, "_write_runs", fails_after_one_run)
    lines = ["email"] + [f"user{i}@example.com" for i in range(60_000)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_import(engine, settings, write(tmp_path / "big.csv", lines))
    assert len(processes) == 1 and processes[0].poll() is not None
    assert list(members(engine, "news")) == []


def test_frames_are_marshal_for_plain_rows_and_pickle_for_the_rest() -> None:
    """Plain rows (str, int, None) go as marshal, the child's quicker codec;
    PostgreSQL's staged times (datetime), counts and problems as pickle; both
    come back as they went."""
    from datetime import UTC, datetime

    from newsletter.audience.importer import ImportCounts

    plain = ("rows", [(1, "a@example.com", "A", None), (2, "b@example.com", "", "x")], 10)
    timed = ("rows", [(1, "a@example.com", datetime(2023, 5, 1, tzinfo=UTC))], 20)
    counts = ImportCounts(rows=3, invalid=1)
    for message, codec in ((plain, b"m"), (timed, b"p"), (("end", counts, 30), b"p")):
        frame = stagereader._encode(message)
        assert frame[:1] == codec
        assert stagereader._decode(frame) == message


@pytest.mark.parametrize("driver", ["sqlite", "postgresql+psycopg"])
def test_the_reader_writes_times_as_the_store_s_own_type_does(driver: str) -> None:
    """The reader process converts a row's time without SQLAlchemy
    (`stagereader.driver_time`): the same value `_Raw` would have bound."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.engine import make_url

    from newsletter.audience.importwrites import _Raw

    raw = _Raw(make_url(f"{driver}://").get_dialect()())
    ours = stagereader.driver_time(driver)
    zones = (UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)))
    for zone in zones:
        for moment in (
            datetime(2023, 5, 1, 10, 0, tzinfo=zone),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=zone),
            datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=zone),
        ):
            assert ours(moment) == raw.time(moment), (driver, moment)
    with pytest.raises(ValueError, match="naive"):
        ours(datetime(2023, 5, 1))
