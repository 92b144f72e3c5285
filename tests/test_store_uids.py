"""Schema 11: an import's new subscribers store no uid (derived from the row
id and the store's nonce, `newsletter.store.uids`) and share one consent
record (`consent_events.last_subscriber_id`); a store of version 10 is upgraded
in place.  Both databases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

import pytest
from sqlalchemy import (
    Engine,
    MetaData,
    UniqueConstraint,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from test_subscribers_common import make_settings, run_import

from newsletter.audience import consent
from newsletter.audience.memberreads import get_by_email, get_by_uid, mailable_members
from newsletter.audience.members import add_subscriber, ensure_lists
from newsletter.config import Settings
from newsletter.email.linktokens import make_preferences_token, verify_preferences_token
from newsletter.store import open_url
from newsletter.store.schema import (
    PG_UID_FUNCTION,
    SCHEMA_VERSION,
    consent_events,
    derived_uid,
    metadata,
    schema_version,
    state,
    subscribers,
)
from newsletter.store.uids import NONCE_KEY, UID

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings("news", "later", base_dir=tmp_path)


@pytest.fixture
def other_url(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty store of the same kind."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/other.db"
        return
    cluster = request.getfixturevalue("pg_cluster")
    role = cluster.create_role()
    try:
        yield cluster.url(role)
    finally:
        cluster.drop_role(role)


def _file(tmp_path: Path, name: str, count: int, start: int = 0) -> Path:
    lines = ["email,name"] + [
        f"reader{i}@example.com,Reader {i}" for i in range(start, start + count)
    ]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _store(url: str, settings: Settings) -> Engine:
    engine = open_url(url)
    ensure_lists(engine, settings)
    return engine


def _uids(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(subscribers.c.id, UID).order_by(subscribers.c.id)).all())


def _stored(engine: Engine) -> list[str | None]:
    with engine.connect() as conn:
        return list(conn.scalars(select(subscribers.c.uid).order_by(subscribers.c.id)))


def test_imported_subscribers_store_no_uid_and_each_reads_its_own(
    database_url: str, other_url: str, settings: Settings, tmp_path: Path
) -> None:
    engine = _store(database_url, settings)
    run_import(engine, settings, _file(tmp_path, "a.csv", 500))
    assert _stored(engine) == [None] * 500  # nothing written per row
    uids = _uids(engine)
    assert len(set(uids.values())) == 500 and all(HEX32.fullmatch(u) for u in uids.values())
    # Each finds its own subscriber, as a link's token names it.
    for sid, uid in list(uids.items())[::50]:
        found = get_by_uid(engine, uid)
        assert found is not None and (found.id, found.uid) == (sid, uid)
        secret = b"k" * 32
        assert verify_preferences_token(secret, make_preferences_token(secret, uid)) == uid
    # As documented: 16 hex digits of the id, then SHA-256("<nonce>:<id>")'s
    # first 16, computed by either database's own function.
    with engine.connect() as conn:
        nonce = conn.scalar(select(state.c.value).where(state.c.key == NONCE_KEY))
    assert all(uids[i] == derived_uid(i, nonce) for i in uids)
    assert (
        derived_uid(300, nonce) == f"{300:016x}" + sha256(f"{nonce}:300".encode()).hexdigest()[:16]
    )
    # Members read for a mailing carry the same uids.
    assert {m.subscriber_id: m.uid for m in mailable_members(engine, "news")} == uids
    # A uid altered in its secret half, or naming an id with its digest of another, finds nobody.
    some = uids[1]
    assert get_by_uid(engine, some[:-1] + ("0" if some[-1] != "0" else "1")) is None
    assert get_by_uid(engine, uids[2][:16] + some[16:]) is None
    assert get_by_uid(engine, "f" * 32) is None  # an id no database holds
    # Another store: the same ids, other uids (its own nonce), never another's reader.
    other = _store(other_url, settings)
    run_import(other, settings, _file(tmp_path, "a.csv", 500))
    theirs = _uids(other)
    assert theirs.keys() == uids.keys()
    assert all(theirs[i] != uids[i] and theirs[i][:16] == uids[i][:16] for i in uids)
    assert all(get_by_uid(engine, u) is None for u in list(theirs.values())[:20])


def test_subscribers_added_otherwise_keep_a_random_stored_uid(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    engine = _store(database_url, settings)
    run_import(engine, settings, _file(tmp_path, "a.csv", 3))
    add_subscriber(engine, "added@example.com", "news", name="Added", source="cli")
    stored = _stored(engine)
    assert stored[:3] == [None] * 3 and stored[3] is not None and HEX32.fullmatch(stored[3])
    added = get_by_email(engine, "added@example.com")
    assert added is not None and added.uid == stored[3]
    assert get_by_uid(engine, stored[3]) == added
    # A second import of new addresses: uids that go on from the first's.
    run_import(engine, settings, _file(tmp_path, "b.csv", 3, start=10))
    uids = _uids(engine)
    assert len(set(uids.values())) == 7


def _duplicate_uid_refused(engine: Engine, uid: str) -> bool:
    at = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                subscribers.insert().values(
                    email="twin@example.com", email_key="twin@example.com", uid=uid, name="",
                    attributes={}, status="active", created_at=at, updated_at=at,
                )
            )  # fmt: skip
    except IntegrityError:
        return True
    return False


def test_stored_uids_stay_unique_and_nulls_take_no_index_entry(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    engine = _store(database_url, settings)
    added = add_subscriber(engine, "added@example.com", "news", name="Added", source="cli")
    run_import(engine, settings, _file(tmp_path, "a.csv", 5))
    assert _duplicate_uid_refused(engine, added.uid)
    with engine.connect() as conn:
        index = {i["name"]: i for i in inspect(conn).get_indexes("subscribers")}[
            "uq_subscribers_uid"
        ]
        if conn.dialect.name == "sqlite":  # a partial index: only the stored uid is in it
            entries = conn.exec_driver_sql(
                "SELECT count(*) FROM subscribers INDEXED BY uq_subscribers_uid"
                " WHERE uid IS NOT NULL"
            ).scalar_one()
            assert entries == 1
    assert index["unique"]


def _history(engine: Engine, email: str) -> list[tuple[str, str, str | None]]:
    row = get_by_email(engine, email)
    assert row is not None
    return [(e.action, e.source, e.list_name) for e in consent.history(engine, row.id)]


def test_an_import_records_one_consent_for_its_new_subscribers(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    engine = _store(database_url, settings)
    add_subscriber(engine, "before@example.com", "news", name="Before", source="cli")
    run_import(engine, settings, _file(tmp_path, "a.csv", 300))
    with engine.connect() as conn:
        ranges = conn.execute(
            select(consent_events.c.subscriber_id, consent_events.c.last_subscriber_id).where(
                consent_events.c.last_subscriber_id.is_not(None)
            )
        ).all()
        total = conn.scalar(select(func.count()).select_from(consent_events))
    assert len(ranges) == 1 and ranges[0][1] - ranges[0][0] + 1 == 300
    assert total == 2  # the one added before, and the import's one record
    for i in (0, 150, 299):  # the first, one inside, the last of the range
        assert _history(engine, f"reader{i}@example.com") == [("subscribe", "import", "news")]
    # The one added before is not in the import's range, nor one added after.
    assert ("subscribe", "import", "news") not in _history(engine, "before@example.com")
    add_subscriber(engine, "after@example.com", "news", name="After", source="cli")
    assert ("subscribe", "import", "news") not in _history(engine, "after@example.com")
    # Joining a second list by a later import: that join is its own record.
    run_import(engine, settings, _file(tmp_path, "b.csv", 2), list_name="later")
    assert _history(engine, "reader1@example.com") == [
        ("subscribe", "import", "news"),
        ("subscribe", "import", "later"),
    ]
    assert _history(engine, "reader2@example.com") == [("subscribe", "import", "news")]


def test_postgresql_ids_with_gaps_get_a_record_each(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Another session drawing ids from the sequence mid-import leaves gaps:
    no range may then cover an id that is not the import's."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's ids of one insert are consecutive (the write lock)")
    engine = _store(database_url, settings)
    with engine.begin() as conn:  # every second id drawn elsewhere
        conn.execute(text("ALTER SEQUENCE subscribers_id_seq INCREMENT BY 2"))
    run_import(engine, settings, _file(tmp_path, "a.csv", 40))
    with engine.connect() as conn:
        rows = conn.execute(select(consent_events.c.last_subscriber_id)).all()
    assert len(rows) == 40 and all(r[0] is None for r in rows)
    for i in (0, 39):
        assert _history(engine, f"reader{i}@example.com") == [("subscribe", "import", "news")]


def _version_10_store(url: str, constraint: str | None = None) -> None:
    """An empty store as a newsletter of schema 10 made it: uid NOT NULL and
    UNIQUE (a table constraint), consent records of one subscriber each."""
    old = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(old)
    people = old.tables["subscribers"]
    people.c.uid.nullable = False
    people.append_constraint(UniqueConstraint("uid", name=constraint))
    people.indexes = {i for i in people.indexes if i.name != "uq_subscribers_uid"}
    events = old.tables["consent_events"]
    events.indexes = {i for i in events.indexes if i.name != "ix_consent_ranges"}
    engine = create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE consent_events DROP COLUMN last_subscriber_id")
        conn.execute(schema_version.insert().values(version=10, applied_at=datetime.now(UTC)))
    engine.dispose()


def _uid_nullable(url: str) -> bool:
    engine = create_engine(url)
    with engine.connect() as conn:
        nullable = {c["name"]: c["nullable"] for c in inspect(conn).get_columns("subscribers")}
    engine.dispose()
    return bool(nullable["uid"])


# A constraint named as the index that replaces it (SQLAlchemy's suggested
# naming convention) must not pass for that index on PostgreSQL.
@pytest.mark.parametrize("constraint", [None, "uq_subscribers_uid"])
def test_a_version_10_store_is_upgraded_in_place(
    database_url: str, settings: Settings, tmp_path: Path, constraint: str | None
) -> None:
    _version_10_store(database_url, constraint)
    assert not _uid_nullable(database_url)
    raw = create_engine(database_url)
    at = datetime.now(UTC).replace(tzinfo=None)
    row = (
        "INSERT INTO subscribers (email, email_key, uid, name, attributes, status,"
        " created_at, updated_at) VALUES (:email, :email, :uid, '', '{}', 'active', :at, :at)"
    )
    with raw.begin() as conn:
        conn.execute(text(row), {"email": "old@example.com", "uid": "ab" * 16, "at": at})
    with pytest.raises(IntegrityError), raw.begin() as conn:  # what version 10 refused
        conn.execute(text(row), {"email": "x@example.com", "uid": None, "at": at})
    raw.dispose()
    engine = _store(database_url, settings)  # opening upgrades
    with engine.connect() as conn:
        version = conn.scalar(select(func.max(schema_version.c.version)))
        columns = {c["name"] for c in inspect(conn).get_columns("consent_events")}
        indexes = {i["name"] for i in inspect(conn).get_indexes("consent_events")}
    assert version == SCHEMA_VERSION == 11
    assert "last_subscriber_id" in columns and "ix_consent_ranges" in indexes
    assert _uid_nullable(database_url)
    run_import(engine, settings, _file(tmp_path, "a.csv", 20))
    assert _stored(engine)[1:] == [None] * 20
    old = get_by_email(engine, "old@example.com")
    assert old is not None and get_by_uid(engine, "ab" * 16) == old
    assert _duplicate_uid_refused(engine, old.uid)  # still unique (SQLite: its old constraint)
    if database_url.startswith("postgresql"):  # the constraint swapped for the partial index
        with engine.connect() as conn:
            constraints = inspect(conn).get_unique_constraints("subscribers")
            indexes = {i["name"] for i in inspect(conn).get_indexes("subscribers")}
        assert all(c["column_names"] != ["uid"] for c in constraints)
        assert "uq_subscribers_uid" in indexes
    assert _history(engine, "reader7@example.com") == [("subscribe", "import", "news")]
    if database_url.startswith("sqlite"):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"


def test_postgresql_gets_its_uid_function_back_inlinable(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """A store whose function is missing, or declared IMMUTABLE (an earlier
    build of version 11: PostgreSQL would not inline it), is given the
    STABLE one the next time it is opened."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's function is registered per connection")
    engine = _store(database_url, settings)
    run_import(engine, settings, _file(tmp_path, "a.csv", 3))
    before = _uids(engine)
    engine.dispose()
    raw = create_engine(database_url)
    with raw.begin() as conn:
        conn.exec_driver_sql(PG_UID_FUNCTION.replace("STABLE", "IMMUTABLE"))
    for broken in ("IMMUTABLE", "missing"):
        if broken == "missing":
            with raw.begin() as conn:
                conn.exec_driver_sql("DROP FUNCTION newsletter_uid(bigint, text)")
        engine = _store(database_url, settings)
        assert _uids(engine) == before, broken
        with engine.connect() as conn:
            volatility = conn.exec_driver_sql(
                "SELECT provolatile FROM pg_proc WHERE proname = 'newsletter_uid'"
            ).scalar_one()
            plan = "\n".join(
                conn.exec_driver_sql(
                    "EXPLAIN VERBOSE SELECT newsletter_uid(id, 'n') FROM subscribers"
                ).scalars()
            )
        assert volatility == "s" and "newsletter_uid(" not in plan, plan
        engine.dispose()
    raw.dispose()
