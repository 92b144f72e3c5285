"""Shared fixtures: a sample site in a temporary folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgcluster import PgCluster, find_bindir
from sample_site import date_the_future_post
from smtpserver import SmtpTestServer
from sqlalchemy import Engine
from watchready import Watched

from newsletter.delivery.transports.logins import LOGINS

ROOT = Path(__file__).resolve().parent.parent


def _theme_from_this_checkout() -> None:
    """Load `newsletter.templates` (the theme) from this checkout's templates/.

    An editable install maps that package to wherever it was installed from,
    so tests run from another worktree would read another theme; with a
    regular install (CI) this loads the same folder the mapping names.
    """
    import importlib.util
    import sys

    theme = ROOT / "templates"
    spec = importlib.util.spec_from_file_location(
        "newsletter.templates", theme / "__init__.py", submodule_search_locations=[str(theme)]
    )
    if spec is None or spec.loader is None or "newsletter.templates" in sys.modules:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["newsletter.templates"] = module
    spec.loader.exec_module(module)


_theme_from_this_checkout()


@pytest.fixture(autouse=True)
def _no_database_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own NEWSLETTER_DATABASE_URL must not leak into the tests.
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)


@pytest.fixture
def sample_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundled sample (config, posts, subscribers) as the cwd,
    its future post dated from today (`SAMPLE_FUTURE_DATE`)."""
    for name in ("newsletter.toml", "posts", "subscribers"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
    date_the_future_post(tmp_path / "posts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A started, plain (no TLS, no AUTH) scriptable SMTP server on 127.0.0.1.

    See tests/smtpserver.py: `server.script(addr, "451 4.3.0 Try later")`,
    `server.received`, `server.settings_overrides()`.
    """
    server = SmtpTestServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- databases: every store, delivery, daemon and web test runs on both -------------

REQUIRE_POSTGRES = os.environ.get("NEWSLETTER_REQUIRE_POSTGRES") == "1"
# NEWSLETTER_TEST_DATABASES=sqlite (or postgresql) narrows a local run to one.
DATABASES = [
    name.strip()
    for name in os.environ.get("NEWSLETTER_TEST_DATABASES", "sqlite,postgresql").split(",")
    if name.strip()
]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (skipped if not installed)."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "postgres").exists():
        if REQUIRE_POSTGRES:
            pytest.fail("NEWSLETTER_REQUIRE_POSTGRES=1 but PostgreSQL's initdb was not found")
        pytest.skip("PostgreSQL (initdb/postgres) is not installed")
    cluster = PgCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (a role and its schema) for this test."""
    role = pg_cluster.create_role()
    try:
        yield pg_cluster.url(role)
    finally:
        pg_cluster.drop_role(role)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's own empty database: SQLite in tmp_path, or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/news.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def database_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every configuration in this test (subprocesses too) uses the test's database."""
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
    return database_url


@pytest.fixture
def break_database(request: pytest.FixtureRequest) -> Callable[[Engine], None]:
    """A function that makes every later connection to this engine's database fail."""

    def breaker(engine: Engine) -> None:
        engine.dispose()
        if engine.dialect.name == "sqlite":
            db_file = Path(str(engine.url.database))
            db_file.unlink()
            db_file.mkdir()  # a folder where the database was: every connect fails
            return
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        cluster.lock_out(str(engine.url.username))

    return breaker


@pytest.fixture(autouse=True)
def _fresh_smtp_logins() -> Iterator[None]:
    """Each test starts with no remembered SMTP login (a port number, user and
    password can come back in a later test against a new server)."""
    LOGINS.forget()
    yield
    LOGINS.forget()


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Watched:
    """Which folders the watchfiles watchers made from now on watch
    (tests/watchready.py): wait for a watch rather than sleep."""
    import watchfiles.main

    seen = Watched()
    monkeypatch.setattr(watchfiles.main, "RustNotify", seen.wrap(watchfiles.main.RustNotify))
    return seen
