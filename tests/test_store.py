from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from smtpserver import free_port
from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.exc import OperationalError, StatementError

import newsletter.store as store
from newsletter.errors import StoreError
from newsletter.store import open_url
from newsletter.store.schema import schema_version, subscribers


def test_created_on_first_use_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/er/db.sqlite"
    engine = open_url(url)
    assert (tmp_path / "deep/er/db.sqlite").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.scalar(select(schema_version.c.version)) == store.schema.SCHEMA_VERSION


def test_new_sqlite_store_takes_its_page_size_and_an_existing_file_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new file takes store.SQLITE_PAGE_SIZE; one made with another size
    # (issue 13 measured 8 and 16 kB) keeps it, its rows and WAL mode, and
    # still takes writes.
    def page_size(engine: Engine) -> int:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)

    new = open_url(f"sqlite:///{tmp_path}/new.db")
    assert page_size(new) == store.SQLITE_PAGE_SIZE == 4096
    new.dispose()
    other_url = f"sqlite:///{tmp_path}/other.db"
    with monkeypatch.context() as patch:
        patch.setattr(store, "SQLITE_PAGE_SIZE", 16384)
        other = open_url(other_url)
        with other.begin() as conn:
            conn.execute(subscribers.insert().values(email="a@example.com", **_stamps()))
        other.dispose()
    reopened = open_url(other_url)
    assert page_size(reopened) == 16384
    with reopened.begin() as conn:
        conn.execute(subscribers.insert().values(email="b@example.com", **_stamps()))
        emails = conn.scalars(select(subscribers.c.email).order_by(subscribers.c.id)).all()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert emails == ["a@example.com", "b@example.com"]
    reopened.dispose()


def _stamps() -> dict[str, datetime]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return {"created_at": at, "updated_at": at}


def test_reopening_does_not_add_versions(database_url: str) -> None:
    url = database_url
    open_url(url)
    engine = open_url(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == 1


def test_upgrade_steps_run_once_in_order(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = database_url
    open_url(url)
    ran: list[int] = []

    def step(version: int):  # type: ignore[no-untyped-def]
        def run(conn: Connection) -> None:
            ran.append(version)
            conn.execute(text(f"CREATE TABLE extra_{version} (id INTEGER)"))

        return run

    base = store.schema.SCHEMA_VERSION
    monkeypatch.setattr(store, "SCHEMA_VERSION", base + 2)
    monkeypatch.setattr(store, "UPGRADES", {base + 1: step(base + 1), base + 2: step(base + 2)})
    caplog.set_level(logging.INFO, logger="newsletter.store")
    engine = open_url(url)
    # What the user sees while a step may rewrite a big table, and after.
    said = [r.getMessage() for r in caplog.records if r.name == "newsletter.store"]
    assert said[0].startswith(f"upgrading the database from schema version {base} to {base + 2}")
    assert said[1].startswith(f"upgraded the database to schema version {base + 2} in ")
    caplog.clear()
    open_url(url)  # a second open finds nothing to do, and says nothing
    assert ran == [base + 1, base + 2]
    assert not [r for r in caplog.records if r.name == "newsletter.store"]
    with engine.connect() as conn:
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
        assert sorted(versions) == [base, base + 1, base + 2]
        assert conn.execute(text(f"SELECT count(*) FROM extra_{base + 2}")).scalar() == 0


def statements_of(func: Callable[[], object]) -> list[str]:
    """Every SQL statement any engine runs while `func` runs."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        func()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return seen


def test_opening_an_up_to_date_database_only_reads(database_url: str) -> None:
    """Issue 13: every command opens the store; when nothing is to be upgraded
    the open neither takes SQLite's write lock nor PostgreSQL's advisory lock,
    nor runs create_all's checks, so it never waits behind a sending process."""
    first = statements_of(lambda: open_url(database_url))
    assert any("CREATE TABLE" in s for s in first)  # the first open did create
    again = " | ".join(statements_of(lambda: open_url(database_url)))
    assert "schema_version" in again
    for locked in ("BEGIN IMMEDIATE", "pg_advisory", "CREATE", "INSERT"):
        assert locked not in again


def test_a_shared_value_once_made_is_only_read(database_url: str) -> None:
    """Issue 13: `run --once` and `send` read the unsubscribe secret each time;
    once some process made it, reading it takes no write lock (SQLite's
    BEGIN IMMEDIATE waited behind a sending process) and inserts nothing.
    The first one still creates it, and a later candidate never replaces it."""
    engine = open_url(database_url)
    made = " | ".join(statements_of(lambda: store.shared_value(engine, "k", "first")))
    assert "INSERT" in made
    seen: list[str] = []
    again = statements_of(lambda: seen.append(store.shared_value(engine, "k", "second")))
    assert seen == ["first"]
    for locked in ("BEGIN IMMEDIATE", "INSERT", "UPDATE"):
        assert locked not in " | ".join(again)
    engine.dispose()


def test_a_missing_table_is_created_again_without_a_new_version(database_url: str) -> None:
    """The read-only check looks at the tables too: a database at this version
    that lacks one (a table added without a version step, or dropped) still
    gets it from create_all."""
    engine = open_url(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE consent_events"))
    engine.dispose()
    engine = open_url(database_url)
    with engine.connect() as conn:
        assert inspect(conn).has_table("consent_events")
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == 1


def test_newer_database_is_refused(database_url: str) -> None:
    url = database_url
    engine = open_url(url)
    with engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=99, applied_at=datetime.now(UTC)))
    with pytest.raises(StoreError, match="schema version 99"):
        open_url(url)


def test_times_come_back_aware_and_in_utc(database_url: str) -> None:
    engine = open_url(database_url)
    istanbul = timezone(timedelta(hours=3))
    moment = datetime(2024, 11, 4, 0, 0, tzinfo=istanbul)
    with engine.begin() as conn:
        conn.execute(
            subscribers.insert().values(email="a@example.com", created_at=moment, updated_at=moment)
        )
        back = conn.scalar(select(subscribers.c.created_at))
    assert back == moment and back.tzinfo is not None
    assert back.utcoffset() == timedelta(0)


def test_naive_times_are_refused(database_url: str) -> None:
    engine = open_url(database_url)
    with pytest.raises(StatementError, match="naive"), engine.begin() as conn:
        conn.execute(
            subscribers.insert().values(
                email="a@example.com",
                created_at=datetime(2024, 1, 1),
                updated_at=datetime(2024, 1, 1),
            )
        )


def test_unopenable_database_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open database"):
        open_url(f"sqlite:///{blocker}/db.sqlite")


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@db.example.com/news", "oracle://u:secret@db.example.com/news"]
)
def test_an_unsupported_database_is_a_store_error(url: str) -> None:
    """Not ModuleNotFoundError's traceback from a driver that is not installed;
    the message says what is supported and hides the password."""
    with pytest.raises(StoreError, match="cannot open database") as info:
        open_url(url)
    assert "sqlite" in str(info.value) and "postgresql" in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("url", ["mysql://u:secret@db.example.com/news", "not a url"])
def test_status_with_an_unsupported_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: database.url: cannot open database ")
    assert result.stderr.count("\n") == 1
    # From the environment, the line names the variable, not the file's key alone.
    config.write_text("")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.stderr.endswith(" (the URL is $NEWSLETTER_DATABASE_URL)\n")
    assert "secret" not in result.stderr


def test_an_empty_database_url_in_the_file_does_not_blame_an_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    config = tmp_path / "newsletter.toml"
    config.write_text('[database]\nurl = ""\n')
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: database.url: ")
    assert "NEWSLETTER_DATABASE_URL" not in result.stderr, result.stderr


def test_a_heroku_style_postgres_url_says_how_to_write_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    config = tmp_path / "newsletter.toml"
    config.write_text('[database]\nurl = "postgres://u@db.example.com/news"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.stderr.endswith(
        "; write postgresql:// (SQLAlchemy no longer reads postgres://)\n"
    )


def test_reading_connections_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    # A long write (an import) holds SQLite's write lock; status and the web
    # app read through `reading()` and must neither wait nor fail meanwhile.
    url = f"sqlite:///{tmp_path}/db.sqlite"
    writer_engine = open_url(url)
    reader_engine = open_url(url)
    moment = datetime.now(UTC)
    with writer_engine.begin() as conn:
        conn.execute(
            subscribers.insert().values(email="a@example.com", created_at=moment, updated_at=moment)
        )
    with writer_engine.begin() as writer:
        writer.execute(
            subscribers.insert().values(email="b@example.com", created_at=moment, updated_at=moment)
        )
        with store.reading(reader_engine) as reader:
            reader.connection.driver_connection.execute("PRAGMA busy_timeout=100")
            emails = reader.execute(select(subscribers.c.email)).scalars().all()
        assert emails == ["a@example.com"]  # the snapshot before the uncommitted write
        # Without it, a read waits for the writer (here: 0.1 s, then fails).
        with reader_engine.connect() as blocked:
            blocked.connection.driver_connection.execute("PRAGMA busy_timeout=100")
            with pytest.raises(OperationalError, match="locked"):
                blocked.execute(select(subscribers.c.email)).all()


def test_a_database_password_never_appears_in_errors() -> None:
    # Nothing listens on port 9 of 127.0.0.1: the connection is refused.
    url = "postgresql+psycopg://news:s3cret-pass@127.0.0.1:9/news"
    with pytest.raises(StoreError) as info:
        open_url(url)
    assert "s3cret-pass" not in str(info.value)
    assert "postgresql+psycopg://news:***@127.0.0.1:9/news" in str(info.value)


def test_a_version_1_database_gains_the_dedupe_column_and_the_new_tables(tmp_path: Path) -> None:
    """Schema 2 (readers): deliveries.dedupe_key with its unique index, and the
    consent, confirmation and signup-hit tables, added to a version-1 file."""
    url = f"sqlite:///{tmp_path}/db.sqlite"
    open_url(url)
    with open_url(url).begin() as conn:  # make it look like version 1
        conn.execute(text("DROP INDEX uq_deliveries_dedupe"))
        conn.execute(
            text("DROP INDEX IF EXISTS uq_delivery_mailing_subscriber")
        )  # names dedupe_key
        conn.execute(text("ALTER TABLE deliveries DROP COLUMN dedupe_key"))
        for table in ("consent_events", "confirmations", "signup_hits"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("DELETE FROM schema_version"))
        conn.execute(text("INSERT INTO schema_version VALUES (1, '2026-01-01 00:00:00')"))
    engine = open_url(url)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("deliveries")}
        indexes = {i["name"]: i["unique"] for i in inspect(conn).get_indexes("deliveries")}
        tables = set(inspect(conn).get_table_names())
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    assert "dedupe_key" in columns
    assert indexes["uq_deliveries_dedupe"]
    assert {"consent_events", "confirmations", "signup_hits"} <= tables
    assert sorted(versions) == list(range(1, store.schema.SCHEMA_VERSION + 1))


def test_a_big_write_is_checkpointed_after_the_block_not_inside_its_commit(
    tmp_path: Path,
) -> None:
    # An import's merge is timed as holding the write lock; SQLite's automatic
    # checkpoint (copying the WAL into the file) ran inside its COMMIT call.
    path = tmp_path / "db.sqlite"
    engine = open_url(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE big (x TEXT)")
    empty = path.stat().st_size
    # ~2,500 pages, whatever their size: past the automatic checkpoint's 1,000.
    written = 2_500 * store.SQLITE_PAGE_SIZE
    with engine.connect() as conn:
        with store.checkpoint_after(conn):
            with conn.begin():
                rows = [{"x": f"{i:04d}" * 250} for i in range(written // 1_000)]
                conn.execute(text("INSERT INTO big (x) VALUES (:x)"), rows)
            assert path.stat().st_size == empty  # committed, still only in the WAL
        assert path.stat().st_size > empty + written * 0.9  # checkpointed after the block
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    with engine.connect() as conn:  # and without it, SQLite checkpoints in the COMMIT
        size = path.stat().st_size
        with conn.begin():
            conn.execute(text("INSERT INTO big (x) VALUES (:x)"), rows)
        assert path.stat().st_size > size + written * 0.9


def test_an_unreachable_postgresql_is_one_readable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own words, on one line: no escaped newlines, no SQLAlchemy
    "Background on this error" link, no password."""
    from click.testing import CliRunner

    from newsletter.cli import main

    port = free_port()  # nothing listens there
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\nurl = "postgresql+psycopg://u:secret@127.0.0.1:{port}/news"\n')
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    line = result.stderr
    assert line.startswith("error: cannot open database ") and line.count("\n") == 1
    assert "Connection refused" in line
    assert "\\x0a" not in line and "sqlalche.me" not in line and "secret" not in line


def test_no_upgrade_under_a_running_older_daemon(tmp_path: Path) -> None:
    """An older daemon never looks at the version again once it runs: an
    upgrade under it (any command of a newer newsletter opens the store)
    left it writing the old way into the new schema (ids in the keyed
    range: later mailings of a post then skipped people as served)."""
    from newsletter.daemon.lock import LOCK_KEY
    from newsletter.store.schema import state

    url = f"sqlite:///{tmp_path}/db.sqlite"
    engine = open_url(url)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    with engine.begin() as conn:
        conn.execute(schema_version.delete().where(schema_version.c.version > 8))
        conn.execute(
            state.insert().values(
                key=LOCK_KEY, value="oldhost:4242:abcd1234", updated_at=datetime.now(UTC),
                expires_at=soon, number=1.0,
            )
        )  # fmt: skip
    engine.dispose()
    with pytest.raises(StoreError, match="oldhost:4242") as info:
        open_url(url)
    assert "stop it" in str(info.value)
    with create_engine(url).begin() as conn:  # the daemon stopped (its lock lapsed)
        conn.execute(state.update().values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with open_url(url).connect() as conn:
        assert (
            conn.scalar(select(func.max(schema_version.c.version))) == store.schema.SCHEMA_VERSION
        )


def test_a_version_9_database_gains_the_confirmations_name(database_url: str) -> None:
    """Schema 10: the name typed in a signup waits on its confirmation row.
    A confirmation made before the upgrade has none (NULL): confirming it
    keeps the subscriber's name as it was."""
    from newsletter.audience import members as subs
    from newsletter.audience import signup as flow
    from newsletter.config import ListSettings, Settings
    from newsletter.store.schema import confirmations

    settings = Settings(lists={"news": ListSettings("news", "News", public=True)})
    engine = open_url(database_url)
    subs.ensure_lists(engine, settings)
    at = datetime.now(UTC)
    with engine.begin() as conn:  # make it look like version 9, with an open confirmation
        conn.execute(text("ALTER TABLE confirmations DROP COLUMN name"))
        conn.execute(schema_version.delete().where(schema_version.c.version > 9))
        sid = conn.execute(
            subscribers.insert().values(
                email="old@example.org", email_key="old@example.org", name="Olga",
                attributes={}, status="pending", status_changed_at=at, created_at=at,
                updated_at=at,
            ).returning(subscribers.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(
            confirmations.insert().values(
                nonce="a" * 32, subscriber_id=sid, lists=["news"], source="form",
                created_at=at, expires_at=at + timedelta(hours=1),
            )
        )  # fmt: skip
    engine.dispose()
    engine = open_url(database_url)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("confirmations")}
        version = conn.scalar(select(func.max(schema_version.c.version)))
    assert "name" in columns and version == store.schema.SCHEMA_VERSION
    done = flow.confirm(engine, settings, "a" * 32, at)
    assert (done.outcome, done.name) == ("confirmed", "Olga")
    person = subs.get_by_email(engine, "old@example.org")
    assert person is not None and (person.status, person.name) == ("active", "Olga")
